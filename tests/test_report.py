"""The report from a synthetic records directory: files, table numbers, skipped figures, determinism, MLflow, HTML.

No model is trained and torch is never needed: the records (runs.csv, evals.csv, metrics.json details,
maps.npz, study.yaml) are written here by hand, shaped like the ones ``spikesuite run`` writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from suite import report
from suite.report.content import Table
from suite.report.figures import layers, temporal

L, T, GRID = 2, 2, (4, 4)
N = GRID[0] * GRID[1]
DENSE_UNITS = L * T * N
LAYERS = ["stem.0", "stem.1", "stem.rpe", "block0.q", "block0.k", "block0.attn", "block0.mlp1", "block1.q",
          "block1.k", "block1.attn", "block1.mlp1"]
STUDY = {
    "name": "synth",
    "description": "synthetic records for the report tests",
    "dataset": {"name": "digits"},
    "model": {"depth": L, "T": T},
    "eval": {"e_mac_pj": 4.6, "e_ac_pj": 0.9, "split": "test"},
    "variants": {"dense": {}, "act_merge": {"tokens": {"halting": {}, "merge": {"r": 2}}},
                 "tmask": {"time": {"mask": {"penalty": 0.005}}}},
    "matrix": {"seed": [0, 1]},
}
FIGURES = ("accuracy_vs_tokens", "accuracy_vs_timesteps", "accuracy_vs_energy", "token_heatmap_act_merge",
           "halting_depth", "timestep_allocation", "firing_rates", "temporal_similarity", "ablation",
           "energy_breakdown")


def _run_row(rid: str, variant: str, seed: int, rng: np.random.Generator) -> dict:
    pct = {"dense": 100.0, "act_merge": 70.0 + 5 * rng.random(), "tmask": 100.0}[variant]
    steps = T - (0.5 + 0.1 * seed if variant == "tmask" else 0.0)
    energy = 2.0 * pct / 100 * steps / T + 0.01 * seed
    kinds = {"stem": 0.4 * energy, "attention": 0.25 * energy, "mlp": 0.34 * energy, "head": 0.01 * energy}
    return {"run_id": rid, "status": "done", "variant": variant, "seed": seed, "T": T,
            "accuracy": 90 + 5 * rng.random(), "loss": 0.3 + rng.random() / 10, "token_units": pct / 100 * DENSE_UNITS,
            "token_pct": pct, "dense_token_units": float(DENSE_UNITS), "tokens_per_block_step": pct / 100 * N,
            "timesteps_mean": steps, "timesteps_weighted": steps, "energy_exact_uj": energy,
            "energy_paper_uj": 1.3 * energy, **{f"energy_exact_uj_{k}": v for k, v in kinds.items()},
            "firing_rate_mean": 0.1, "images_per_s": 1000 + 100 * rng.random(), "params": 16000.0}


def _details(variant: str, seed: int, rng: np.random.Generator) -> dict:
    det: dict = {"firing_rates": {layer: float(0.05 + 0.1 * rng.random()) for layer in LAYERS},
                 "active_tokens_block_step": [[float(N)] * T for _ in range(L)], "ops": {}}
    if variant == "act_merge":
        hist = rng.random(L * T + 1)
        det["depth_histogram"] = (hist / hist.sum()).tolist()
    if variant == "tmask":
        det["active_steps"] = {layer: float(T - (i % 2) * 0.5 - 0.1 * seed) for i, layer in enumerate(LAYERS)}
    det["temporal_similarity"] = {f"block{b}": float(0.3 + 0.2 * b + 0.1 * rng.random()) for b in range(L)}
    return det


def write_records(root: Path, study: dict | None = STUDY, evals: bool = True, maps: bool = True,
                  details: bool = True) -> Path:
    """A study directory with 3 variants x 2 seeds (act_merge seed 1 failed); returns it."""
    rng = np.random.default_rng(0)
    sdir = root / "synth"
    sdir.mkdir(parents=True)
    rows = []
    for variant in ("dense", "act_merge", "tmask"):
        for seed in (0, 1):
            rid = f"{variant[:4]}{seed}abcdef"[:12]
            if variant == "act_merge" and seed == 1:
                rows.append({"run_id": rid, "status": "failed", "variant": variant, "seed": seed, "T": T,
                             "error": "RuntimeError: injected failure"})
                continue
            rows.append(_run_row(rid, variant, seed, rng))
            (sdir / rid).mkdir()
            (sdir / rid / "status.json").write_text(json.dumps({"state": "done", "host": "testhost"}))
            if details:
                doc = {"run_id": rid, "metrics": rows[-1], "details": _details(variant, seed, rng)}
                (sdir / rid / "metrics.json").write_text(json.dumps(doc))
            if maps and variant == "act_merge":
                masks = rng.random((5, L, T, N)) < 0.7
                np.savez_compressed(sdir / rid / "maps.npz", images=rng.normal(size=(5, 1, 8, 8)).astype(np.float32),
                                    maps=masks, labels=np.arange(5), pred=np.arange(5)[::-1].copy(),
                                    grid=np.array(GRID))
    pd.DataFrame(rows).to_csv(sdir / "runs.csv", index=False)
    if evals:
        done = [r for r in rows if r["status"] == "done" and r["variant"] != "dense"]
        ev = []
        for r in done:
            for name, off in (("beta-2", -2), ("beta-4", -4)):
                ev.append({**{k: r[k] for k in ("run_id", "variant", "seed", "T")}, "override": name,
                           "set": json.dumps({"tokens.halting.beta_offset": off}),
                           "accuracy": r["accuracy"] + off / 2, "token_units": r["token_units"] + 4 * off,
                           "token_pct": (r["token_units"] + 4 * off) / DENSE_UNITS * 100,
                           "timesteps_mean": r["timesteps_mean"], "energy_exact_uj": r["energy_exact_uj"] + off / 10})
        pd.DataFrame(ev).to_csv(sdir / "evals.csv", index=False)
    if study is not None:
        (sdir / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return sdir


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[Path]]:
    sdir = write_records(tmp_path_factory.mktemp("records"))
    return sdir, report.build_report(sdir)


def parse_table(path: Path, index: int = 0) -> tuple[list[str], list[list[str]]]:
    """The ``index``-th markdown table of a file (table.md holds the results, then the paired differences)."""
    blocks = re.findall(r"(?:^\|.*\n)+", path.read_text(), flags=re.M)
    lines = blocks[index].splitlines()
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return cells[0], cells[2:]


def parse_pm(cell: str) -> tuple[float, float | None]:
    m = re.match(r"^(-?[\d.]+)(?: ± ([\d.]+))?", cell)
    assert m, cell
    return float(m.group(1)), (float(m.group(2)) if m.group(2) else None)


def places(cell: str) -> int:
    number = cell.split(" ")[0]
    return len(number.split(".")[1]) if "." in number else 0


def test_every_file_written(built):
    sdir, paths = built
    out = sdir / "report"
    for stem in FIGURES:
        assert (out / f"{stem}.png").stat().st_size > 1000, stem
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
    for name in ("table.md", "table.tex", "evals.md"):
        assert (out / name).is_file(), name
    assert (sdir / "report.html").is_file()
    assert set(paths) == {p for p in out.iterdir()} | {sdir / "report.html"}
    assert not (out / "early_exit.png").exists()  # no early-exit variant: skipped ...
    page = (sdir / "report.html").read_text()
    assert "Early-exit histogram</b>: skipped" in page  # ... and the page says so
    for stem in FIGURES:
        assert f'src="report/{stem}.png"' in page
    # the report never needs a checkpoint: none exists anywhere in these records
    assert not list(sdir.rglob("checkpoint.pt"))


def test_main_table_numbers_equal_the_records(built):
    sdir, _ = built
    runs = pd.read_csv(sdir / "runs.csv")
    done = runs[runs.status == "done"]
    headers, rows = parse_table(sdir / "report" / "table.md")
    assert headers == list(report.MAIN_HEADERS)
    assert [r[0] for r in rows] == ["dense", "act_merge", "tmask"]  # study order; the failed seed is left out
    for row in rows:
        g = done[done.variant == row[0]]
        assert int(row[1]) == len(g)
        for col, metric in ((2, "accuracy"), (3, "token_units"), (4, "timesteps_mean"), (5, "energy_exact_uj")):
            mean, std = parse_pm(row[col])
            tol = 0.5 * 10 ** -places(row[col]) + 1e-12
            assert mean == pytest.approx(g[metric].mean(), abs=tol), (row[0], metric)
            if len(g) > 1:
                assert std == pytest.approx(g[metric].std(), abs=tol), (row[0], metric)  # pandas: ddof=1
            else:
                assert std is None
        pct = float(re.search(r"\(([\d.]+) %\)", row[3]).group(1))
        assert pct == pytest.approx(g.token_pct.mean(), abs=0.05)
    # images/s measured inside a study is the machine's load, not the method: no study table carries it
    assert len(headers) == 6 and not any("images/s" in h for h in headers)
    text = (sdir / "report" / "table.md").read_text()
    assert "failed: act_1abcdef (act_merge, seed 1)" in text
    assert "E_MAC 4.6 pJ, E_AC 0.9 pJ" in text and "ddof=1" in text


def test_latex_and_evals_tables(built):
    sdir, _ = built
    tex = (sdir / "report" / "table.tex").read_text()
    # no throughput column (see spikesuite bench); headers are name over unit
    assert r"\begin{tabular}{lrrrrr}" in tex and r"act\_merge" in tex and r"$\pm$" in tex and r"($\mu$J, exact)" in tex
    first = tex.split(r"\end{table}")[0]  # the results; the paired differences follow in their own table
    assert first.count(r" \\") == 2 + 3  # two header rows + one row per variant
    assert "images/s" not in tex
    evals = pd.read_csv(sdir / "evals.csv")
    headers, rows = parse_table(sdir / "report" / "evals.md")
    assert headers[:4] == ["variant", "override", "set", "n seeds"]
    trained = [r for r in rows if r[1] == "(as trained)"]
    assert [r[0] for r in trained] == ["act_merge", "tmask"]
    for row in rows:
        if row[1] == "(as trained)":
            continue
        g = evals[(evals.variant == row[0]) & (evals.override == row[1])]
        assert int(row[3]) == len(g)
        mean, _ = parse_pm(row[4])
        assert mean == pytest.approx(g.accuracy.mean(), abs=0.005)


def test_pareto_front_and_helpers():
    pts = [(10.0, 90.0), (5.0, 80.0), (7.0, 79.0), (12.0, 89.0), (5.0, 85.0), (20.0, 95.0)]
    assert report.pareto_front(pts) == [(5.0, 85.0), (10.0, 90.0), (20.0, 95.0)]
    assert report.fmt_pm(report.Stat(2, 1.23456, 0.1), 2) == "1.23 ± 0.10"
    assert report.fmt_pm(report.Stat(1, 1.23456, float("nan")), 2) == "1.23"
    assert report.decimals([1.9, 1.5]) == 2 and report.decimals([1500.0]) == 0
    assert sorted(["block1.q", "head", "block0.mlp2", "stem.rpe", "block0.q", "stem.0", "block10.q", "block2.attn"],
                  key=report.layer_key) == ["stem.0", "stem.rpe", "block0.q", "block0.mlp2", "block1.q",
                                            "block2.attn", "block10.q", "head"]
    mask = np.zeros(4, dtype=bool)
    mask[1] = True  # token (0, 1) of a 2x2 grid
    up = report.upsample_mask(mask, (2, 2), (4, 6))
    assert up.shape == (4, 6) and up[:2, 3:].all() and up.sum() == 6
    table = Table("t", ("variant", "a_b"), (("x_y", "1.0 ± 0.1"),))
    assert r"x\_y & 1.0 $\pm$ 0.1 \\" in report.table_latex(table, "tab:t")


def test_matrix_axes_split_a_variant():
    runs = pd.DataFrame({"variant": ["dense", "dense", "dense", "act"], "seed": [0, 1, 0, 0], "T": [2, 2, 4, 4],
                         "train.lr": [0.1, 0.1, 0.1, 0.1]})
    study = {"variants": {"dense": {}, "act": {}}, "matrix": {"seed": [0, 1], "model.T": [2, 4], "train.lr": [0.1]}}
    axes = report.axis_columns(runs, study["matrix"])
    assert axes == ["T"]  # train.lr takes one value: it splits nothing
    runs["config"] = report.config_labels(runs, axes)
    assert runs.config.tolist() == ["dense (T=2)", "dense (T=2)", "dense (T=4)", "act (T=4)"]
    assert report.config_order(runs, study["variants"], axes) == ("dense (T=2)", "dense (T=4)", "act (T=4)")


def test_published_markers_only_for_the_same_dataset():
    frame, note = report.published_for("digits")
    assert frame is None and "none for dataset 'digits'" in note
    frame, note = report.published_for("cifar10")
    assert frame is not None and (frame.dataset == "cifar10").all() and (frame.kind == "published").all()
    done = pd.DataFrame({"dense_token_units": [1024.0, 1024.0]})
    energy = report.published_points(frame, "energy_exact_uj", done)
    with_energy = frame.dropna(subset=["energy_mj", "accuracy"])
    assert len(energy) == len(with_energy)
    assert energy.x.tolist() == pytest.approx((with_energy.energy_mj * 1000).tolist())  # mJ -> uJ
    tokens = report.published_points(frame, "token_units", done)
    assert ((tokens.x >= 0) & (tokens.x <= 1024)).all()


def test_early_exit_histogram(built, tmp_path):
    import dataclasses

    sdir, _ = built
    rec = report.load_records(sdir)
    details = {rid: {**d, "exit_histogram": [30, 50 + i]} for i, (rid, d) in enumerate(sorted(rec.details.items()))}
    fig = report.exit_figure(dataclasses.replace(rec, details=details), tmp_path)
    assert fig.skipped is None and [p.name for p in fig.paths] == ["early_exit.png", "early_exit.pdf"]
    assert report.exit_figure(rec, tmp_path).skipped  # the fixture's records have none


def test_absent_data_skips_figures(tmp_path):
    # runs.csv only: no study.yaml, no evals, no metrics.json details, no maps
    sdir = write_records(tmp_path, study=None, evals=False, maps=False, details=False)
    (sdir / "report").mkdir()
    (sdir / "report" / "halting_depth.png").write_bytes(b"stale")  # from an earlier report: must go
    paths = report.build_report(sdir)
    names = {p.name for p in paths}
    assert {"accuracy_vs_tokens.png", "ablation.pdf", "table.md", "table.tex", "report.html"} <= names
    assert "evals.md" not in names and not (sdir / "report" / "halting_depth.png").exists()
    page = (sdir / "report.html").read_text()
    for title in ("Active-token heatmaps", "Halting depth histogram", "Timestep allocation per module",
                  "Firing rate per layer", "Early-exit histogram"):
        assert f"{title}</b>: skipped" in page, title
    assert "no study.yaml in the records" in page


def test_a_figure_that_does_not_apply_is_said_only_with_verbose(tmp_path):
    """No early-exit variant: the early-exit figure does not apply, which a normal report keeps to itself."""
    sdir = write_records(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    said = []
    for extra in ([], ["--verbose"]):
        proc = subprocess.run([sys.executable, "-m", "suite", "report", str(sdir), *extra], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        said.append(proc.stdout + proc.stderr)
    assert "skipped" not in said[0]
    assert "figure early_exit skipped: no run recorded an exit_histogram" in said[1]


def test_no_finished_run(tmp_path):
    sdir = tmp_path / "empty"
    sdir.mkdir()
    pd.DataFrame([{"run_id": "a", "status": "failed", "variant": "dense", "seed": 0, "T": 4, "error": "boom"},
                  {"run_id": "b", "status": "pending", "variant": "act", "seed": 0, "T": 4}]).to_csv(
        sdir / "runs.csv", index=False)
    paths = report.build_report(sdir)
    assert not [p for p in paths if p.suffix == ".png"]
    _, rows = parse_table(sdir / "report" / "table.md")
    assert rows == []
    text = (sdir / "report" / "table.md").read_text()
    assert "failed: a (dense, seed 0)" in text and "pending: b (act, seed 0)" in text
    with pytest.raises(FileNotFoundError):
        report.build_report(tmp_path / "missing")


def test_deterministic_bytes(built, tmp_path):
    sdir, paths = built
    again = write_records(tmp_path)
    second = report.build_report(again)
    assert [p.relative_to(again) for p in second] == [p.relative_to(sdir) for p in paths]
    for first, other in zip(paths, second):
        assert first.read_bytes() == other.read_bytes(), first.name  # PNG, PDF, tables and page


def test_figures_logged_to_latest_parent_run(built):
    from mlflow.tracking import MlflowClient

    sdir, paths = built
    rec = report.load_records(sdir)
    assert report.mlflow_store(rec) is None  # no store beside the records: nothing is logged, none is created
    assert not (sdir.parent / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{sdir.parent / 'mlflow.db'}")
    exp = client.create_experiment("synth", artifact_location=(sdir.parent / "mlartifacts").as_uri())
    old = client.create_run(exp, tags={"spikesuite.kind": "invocation"}).info.run_id
    client.set_terminated(old)
    child = client.create_run(exp, tags={"spikesuite.kind": "run"}).info.run_id
    latest = client.create_run(exp, tags={"spikesuite.kind": "invocation"}).info.run_id
    assert report.log_to_mlflow(rec, paths[:-1], paths[-1]) == latest
    logged = {a.path for a in client.list_artifacts(latest, "report")}
    assert {"report/accuracy_vs_tokens.png", "report/accuracy_vs_tokens.pdf", "report/table.md"} <= logged
    assert "report.html" in {a.path for a in client.list_artifacts(latest)}
    assert not client.list_artifacts(old) and not client.list_artifacts(child)


def test_report_never_imports_torch():
    code = "import sys, suite.report; sys.exit('torch' in sys.modules or 'spikingjelly' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_report_imports_neither_torch_nor_mlflow():
    code = ("import sys, suite.report; "
            "print(' '.join(m for m in ('torch', 'mlflow', 'spikingjelly') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"suite.report imported {proc.stdout.strip()}"


def _firing_layers(rec, out: Path, monkeypatch) -> list[str]:
    """The x tick labels (layer names) of the firing-rate figure drawn from ``rec``."""
    seen: list[list[str]] = []
    real = layers.save

    def capture(fig, where, stem):
        seen.append([t.get_text() for t in fig.axes[0].get_xticklabels()])
        return real(fig, where, stem)

    monkeypatch.setattr(layers, "save", capture)
    assert layers.firing_figure(rec, out).skipped is None
    return seen[0]


def test_recorded_layer_order_is_honoured(tmp_path, monkeypatch):
    sdir = write_records(tmp_path)
    assert _firing_layers(report.load_records(sdir), tmp_path / "a", monkeypatch) == LAYERS  # parsed from names
    # a forward order the names alone do not give, naming a layer no run measured (head) and leaving two out
    order = ["block0.k", "block0.q", "stem.rpe", "stem.0", "block0.attn", "block0.mlp1", "block1.attn", "block1.k",
             "block1.q", "head"]
    for metrics in sorted(sdir.glob("*/metrics.json")):
        doc = json.loads(metrics.read_text())
        doc["details"]["layer_order"] = order
        metrics.write_text(json.dumps(doc))
    rec = report.load_records(sdir)
    expected = [name for name in order if name in LAYERS] + ["stem.1", "block1.mlp1"]  # the rest by layer_key
    assert report.ordered_layers([rec.details[r]["firing_rates"] for r in sorted(rec.details)],
                                 layers.recorded_layer_order(rec.details.values())) == expected
    assert _firing_layers(rec, tmp_path / "b", monkeypatch) == expected


def _temporal_lines(rec, out: Path, monkeypatch) -> tuple[list[str], dict[str, list[float]]]:
    """(x tick labels, legend label -> y values) of the temporal-similarity figure drawn from ``rec``."""
    seen: list = []
    real = temporal.save

    def capture(fig, where, stem):
        ax = fig.axes[0]
        seen.append(([t.get_text() for t in ax.get_xticklabels()],
                     {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}))
        return real(fig, where, stem)

    monkeypatch.setattr(temporal, "save", capture)
    fig = temporal.temporal_figure(rec, out)
    assert fig is not None and fig.skipped is None and [p.name for p in fig.paths] == [
        "temporal_similarity.png", "temporal_similarity.pdf"]
    assert "all zero" in fig.caption and "STAS" in fig.caption
    return seen[0]


def test_temporal_similarity_figure_is_the_mean_over_seeds(built, tmp_path, monkeypatch):
    sdir, _ = built
    rec = report.load_records(sdir)
    ticks, lines = _temporal_lines(rec, tmp_path, monkeypatch)
    assert ticks == [f"block{b}" for b in range(L)]
    runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
    done = runs[runs.status == "done"]
    expected = {}
    for variant in ("dense", "act_merge", "tmask"):  # study order; act_merge's failed seed recorded nothing
        ids = done[done.variant == variant].run_id
        sims = [json.loads((sdir / r / "metrics.json").read_text())["details"]["temporal_similarity"] for r in ids]
        expected[f"{variant} (n={len(sims)})"] = [np.mean([s[f"block{b}"] for s in sims]) for b in range(L)]
    assert list(lines) == list(expected)
    for label, ys in expected.items():
        assert lines[label] == pytest.approx(ys)
    page = (sdir / "report.html").read_text()
    assert 'src="report/temporal_similarity.png"' in page


def test_temporal_similarity_left_off_the_page_when_no_run_recorded_it(tmp_path):
    """Records from before the diagnostic (as the committed reference studies): the page does not list the figure,
    not even as skipped, and the summary counts only the figures it lists."""
    with_it = write_records(tmp_path / "new")
    without = write_records(tmp_path / "old")
    for metrics in without.glob("*/metrics.json"):
        doc = json.loads(metrics.read_text())
        del doc["details"]["temporal_similarity"]
        metrics.write_text(json.dumps(doc))
    report.build_report(with_it, mlflow=False)
    paths = report.build_report(without, mlflow=False)
    assert not any(p.stem == "temporal_similarity" for p in paths)
    old, new = (without / "report.html").read_text(), (with_it / "report.html").read_text()
    assert "emporal similarity" not in old and "Temporal similarity of block inputs" in new

    def counts(page: str) -> tuple[int, int]:
        m = re.search(r"<td>figures</td><td>(\d+) written, (\d+) skipped</td>", page)
        return int(m.group(1)), int(m.group(2))

    assert counts(new) == (counts(old)[0] + 1, counts(old)[1])
    # a variant whose seeds did not record it (T = 1) is simply not drawn; the others are
    rec = report.load_records(with_it)
    details = {rid: ({k: v for k, v in d.items() if k != "temporal_similarity"} if rid.startswith("tmas") else d)
               for rid, d in rec.details.items()}
    import dataclasses

    fig = temporal.temporal_figure(dataclasses.replace(rec, details=details), tmp_path / "partial")
    assert fig is not None and fig.skipped is None


AXES_STUDY = {
    "name": "axes", "dataset": {"name": "cifar10"}, "model": {"backbone": "spikformer", "depth": L, "T": T},
    "variants": {"dense": {}, "act": {"tokens": {"halting": {}}}},
    "matrix": {"model.backbone": ["spikformer", "sdt"], "model.stem": ["per_step", "once"], "seed": [0, 1]},
}


def test_backbone_and_stem_axes_give_distinct_readable_labels(tmp_path, monkeypatch):
    """A study crossing variants with ``model.backbone`` and ``model.stem`` (as runs.csv names the axis columns):
    every (variant, backbone, stem) is its own labelled point, in study order (variants, then the matrix's value
    order), with its own colour, table row and line."""
    sdir = tmp_path / "axes"
    sdir.mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for variant in AXES_STUDY["variants"]:
        for backbone in ("sdt", "spikformer"):  # runs.csv order need not be the study's
            for stem in ("once", "per_step"):
                for seed in (0, 1):
                    rid = f"{variant[:3]}{backbone[:3]}{stem[:3]}{seed}"
                    row = _run_row(rid, "dense" if variant == "dense" else "act_merge", seed, rng)
                    row.update({"variant": variant, "model.backbone": backbone, "model.stem": stem})
                    rows.append(row)
                    (sdir / rid).mkdir()
                    sims = {f"block{b}": 1.0 if stem == "once" and b == 0 else float(0.4 + 0.1 * rng.random())
                            for b in range(L)}
                    doc = {"run_id": rid, "metrics": row,
                           "details": {"temporal_similarity": sims, "firing_rates": {"block0.q": 0.1}}}
                    (sdir / rid / "metrics.json").write_text(json.dumps(doc))
    pd.DataFrame(rows).to_csv(sdir / "runs.csv", index=False)
    (sdir / "study.yaml").write_text(yaml.safe_dump(AXES_STUDY, sort_keys=False))
    rec = report.load_records(sdir)
    expected = tuple(f"{v} (backbone={b}, stem={s})" for v in ("dense", "act") for b in ("spikformer", "sdt")
                     for s in ("per_step", "once"))
    assert rec.order == expected
    from suite.report.style import style

    assert len({style(rec, c) for c in rec.order}) == len(expected)  # colour and marker pairs differ
    assert set(rec.runs.groupby("config").size()) == {2}  # two seeds behind every label
    _, lines = _temporal_lines(rec, tmp_path / "fig", monkeypatch)
    assert list(lines) == [f"{c} (n=2)" for c in expected]
    assert all(lines[f"{c} (n=2)"][0] == 1.0 for c in expected if "stem=once" in c)
    report.build_report(sdir, mlflow=False)
    _, table_rows = parse_table(sdir / "report" / "table.md")
    assert [r[0] for r in table_rows] == list(expected)
    # axis names shorten to the last dotted part only where that stays unambiguous
    assert report.config_labels(pd.DataFrame({"variant": ["v"], "tokens.merge.r": [2], "x.r": [3], "T": [4]}),
                                ["T", "tokens.merge.r", "x.r"]).tolist() == ["v (T=4, tokens.merge.r=2, x.r=3)"]


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(built, tmp_path):
    from matplotlib.image import imread

    sdir, _ = built
    shot = tmp_path / "page.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,4800",
           (sdir / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4800, 1200)  # tall enough to reach the figures under both tables
    # figures drew: the variants' colours (saturated pixels) cover part of the page; a page of text and broken
    # image icons has almost none
    saturation = pixels.max(-1) - pixels.min(-1)
    assert (saturation > 0.3).mean() > 0.002, "no coloured figure pixels in the screenshot"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
