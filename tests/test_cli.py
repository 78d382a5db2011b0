"""What a researcher sees from the CLI: help for everything, --version, a plan that imports no torch and lists
runs even without the data, closing lines that name report.html and the UI command, clear report errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from suite import cli
from suite.config import DatasetConfig

ROOT = Path(__file__).resolve().parents[1]

MISSING_DATA = """
name: nodata
dataset: {name: cifar10, root: /nonexistent/cifar}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 16, warmup_epochs: 0}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
"""


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------------- help


def test_every_command_and_argument_has_help_with_its_default():
    parser = cli._parser()
    commands = _subparsers(parser)
    listed = {a.dest for a in next(a for a in parser._actions
                                   if isinstance(a, argparse._SubParsersAction))._choices_actions if a.help}
    assert listed == set(commands), "a command without a one-line help"
    for name, sub in commands.items():
        text = _flat(sub.format_help())
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if any(action.default is v for v in (None, False)) or not action.option_strings:
                continue  # 'from the study' defaults and flags say so in words; positionals have none
            shown = f"(default: {action.default})" in text or "default" in _flat(action.help)
            assert shown, f"{name} {action.option_strings}: default {action.default!r} not shown"


def test_help_is_plain_text(capsys):
    for argv in (["--help"], *([c, "--help"] for c in _subparsers(cli._parser()))):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "`" not in out and ":func:" not in out, (argv, out)
    assert cli.plain("``spikesuite`` runs :func:`run_study` and `this` (see :class:`~suite.Study <x>`)") == \
        "spikesuite runs run_study and this (see suite.Study)"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"spikesuite {metadata.version('spikesuite')}\n"


# ------------------------------------------------------------------------------------------------------- plan

PLAN_PROBE = """
import json, sys, time
from suite.cli import main
t0 = time.perf_counter()
rc = main(["plan", sys.argv[1], "--results", sys.argv[2]])
heavy = [m for m in ("torch", "torchvision", "mlflow", "sklearn") if m in sys.modules]
print(json.dumps({"rc": rc, "heavy": heavy, "s": time.perf_counter() - t0}), file=sys.stderr)
"""


@pytest.mark.parametrize("study", ["baselines_digits", "atsnn_fashion_mnist", "nodata"])
def test_plan_imports_neither_torch_nor_mlflow(study: str, tmp_path: Path):
    path = ROOT / "studies" / f"{study}.yaml"
    if study == "nodata":
        path = tmp_path / "nodata.yaml"
        path.write_text(MISSING_DATA)
    proc = subprocess.run([sys.executable, "-c", PLAN_PROBE, str(path), str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    assert probe["rc"] == 0 and probe["heavy"] == [], proc.stderr
    assert " pending " in proc.stdout
    assert not (tmp_path / "results").exists()


def test_plan_lists_the_runs_without_the_data_and_run_refuses(tmp_path: Path, capsys):
    path = tmp_path / "nodata.yaml"
    path.write_text(MISSING_DATA)
    results = tmp_path / "results"
    assert cli.main(["plan", str(path), "--results", str(results)]) == 0
    out, err = capsys.readouterr()
    assert out.count(" pending ") == 2 and "nodata: 2 runs" in out
    assert err.startswith("warning: dataset: cifar10 not found") and "/nonexistent/cifar" in err
    assert "cifar-10-python.tar.gz" in err and "download: true" in err  # how to get it
    assert "spikesuite run refuses" in err
    # run still refuses before writing anything
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress"]) == 2
    assert "dataset: cifar10 not found" in capsys.readouterr().err
    assert not results.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["nodata.yaml"]


def _layouts(tmp: Path) -> list[DatasetConfig]:
    """Dataset configs over present, partial and missing layouts of every file-based source."""
    def touch(*paths: Path) -> None:
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")

    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    touch(*(tmp / "fm_gz" / f"{s}.gz" for s in stems))
    touch(*(tmp / "fm_raw" / "FashionMNIST" / "raw" / s for s in stems))
    touch(*(tmp / "fm_part" / f"{s}.gz" for s in stems[:3]))
    touch(*(tmp / "c10" / "cifar-10-batches-py" / n for n in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")))
    touch(*(tmp / "c10_flat" / n for n in (*(f"data_batch_{i}" for i in range(1, 6)),)))
    touch(tmp / "c100" / "train", tmp / "c100" / "test")
    tin = tmp / "tin" / "tiny-imagenet-200"
    touch(tin / "wnids.txt", tin / "val" / "val_annotations.txt")
    (tin / "train").mkdir()
    (tin / "val" / "images").mkdir()
    touch(tmp / "tin_part" / "wnids.txt")
    cfgs = [DatasetConfig(name="fashion_mnist", root=str(tmp / r)) for r in ("fm_gz", "fm_raw", "fm_part", "none")]
    cfgs += [DatasetConfig(name="fashion_mnist", root=str(tmp / "none"), download=True)]
    cfgs += [DatasetConfig(name=n, root=str(tmp / r)) for n in ("cifar10", "cifar100")
             for r in ("c10", "c10_flat", "c100", "none")]
    cfgs += [DatasetConfig(name="cifar10", root=str(tmp / "none"), download=True)]
    cfgs += [DatasetConfig(name="tinyimagenet", root=str(tmp / r)) for r in ("tin", str(tin), "tin_part", "none")]
    cfgs += [DatasetConfig(name=n) for n in ("digits", "synthetic", "fashion_mnist", "cifar10", "cifar100",
                                             "tinyimagenet")]  # default roots, relative to the cwd
    return cfgs


def _outcome(check, cfg: DatasetConfig) -> str:
    try:
        check(cfg)
    except FileNotFoundError as exc:
        return str(exc)
    return "available"


def test_torch_free_checks_agree_with_the_sources(tmp_path: Path, monkeypatch):
    """check_available runs the registry's torch-free copies of the sources' path checks: same answer, same
    message, on every layout (a drift between the copies fails here)."""
    from suite.data import get_source, registry

    monkeypatch.chdir(tmp_path)
    cfgs = _layouts(tmp_path)
    outcomes = {_outcome(registry.check_available, c) for c in cfgs}
    assert "available" in outcomes and len(outcomes) > 5  # both branches are exercised
    for cfg in cfgs:
        assert _outcome(registry.check_available, cfg) == _outcome(get_source(cfg.name).check, cfg), cfg
    assert set(registry._AVAILABILITY) == set(registry.names())


# ------------------------------------------------------------------------------------- run and report endings


@pytest.fixture()
def fake_report(monkeypatch):
    """A report writer that writes nothing and records its keyword arguments (``style`` or none)."""
    calls: list[dict] = []

    def install(*, with_style: bool) -> list[dict]:
        def pages(study_dir: Path) -> list[Path]:
            return [Path(study_dir) / "report" / "accuracy_vs_tokens.png", Path(study_dir) / "report.html"]

        if with_style:
            def build_report(study_dir: Path, mlflow: bool = True, style: str = "default") -> list[Path]:
                calls.append({"style": style})
                return pages(study_dir)
        else:
            def build_report(study_dir: Path, mlflow: bool = True) -> list[Path]:  # before styles existed
                calls.append({})
                return pages(study_dir)
        monkeypatch.setattr("suite.report.build_report", build_report)
        return calls

    return install


@pytest.mark.parametrize("with_style", [True, False])
def test_report_passes_style_when_the_writer_takes_it(tmp_path: Path, capsys, fake_report, with_style: bool):
    calls = fake_report(with_style=with_style)
    sdir = tmp_path / "results" / "tiny"
    sdir.mkdir(parents=True)
    assert cli.main(["report", str(sdir), "--style", "paper"]) == 0
    out, err = capsys.readouterr()
    assert calls == ([{"style": "paper"}] if with_style else [{}])
    assert ("--style paper ignored" in err) is not with_style
    assert "wrote" not in out
    assert out.strip().splitlines()[-1] == (f"report: {sdir / 'report.html'}; browse the runs: "
                                            f"spikesuite ui --results {tmp_path / 'results'}")
    assert cli.main(["report", str(sdir), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {sdir / 'report' / 'accuracy_vs_tokens.png'}" in out and out.count("wrote ") == 2


def test_report_on_a_missing_directory_says_so(tmp_path: Path, capsys):
    target = tmp_path / "results" / "nonexistent"
    assert cli.main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert "records directory does not exist" in err and str(target) in err and "study file" in err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["report", str(tmp_path / "nothere.yaml")]) == 2  # a study file keeps its own message
    assert "no such study file" in capsys.readouterr().err


def test_run_ends_with_the_report_and_the_ui_command(tmp_path: Path, capsys, monkeypatch, fake_report):
    fake_report(with_style=True)
    path = tmp_path / "s.yaml"
    path.write_text(MISSING_DATA.replace("cifar10, root: /nonexistent/cifar", "synthetic"))
    results = tmp_path / "my results"

    def run_study(study, results_dir, **_):
        return SimpleNamespace(study_dir=results_dir / study.name, done=["a", "b"], skipped=[], failed={}, busy=[],
                               wall_time_s=1.0)

    monkeypatch.setattr("suite.run.run_study", run_study)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["run", str(path), "--results", str(results)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not any(ln.startswith("wrote ") for ln in lines)
    assert lines[-1] == (f"report: {results / 'nodata' / 'report.html'}; browse the runs: "
                         f"spikesuite ui --results '{results}'")  # quoted: the path has a space
    assert cli.main(["run", str(path), "--results", str(results), "--no-report", "--verbose"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"no report written (write it with: spikesuite report '{results / 'nodata'}')")
    assert cli.main(["run", str(path), "--results", str(results), "--verbose"]) == 0
    assert capsys.readouterr().out.count("wrote ") == 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
