"""Robustness, for real: SIGKILL and resume (bit-identical tables), isolated failures, corrupt records,
two processes on one study, a corpus of malformed study files, fuzzed study dicts, and security checks.

The CLI tests run ``python -m suite run STUDY --results DIR --no-progress`` as subprocesses on tiny studies
(synthetic data, depth 1, dim 16, T 2) so the whole file stays well under 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import Proc, child_env, status

from suite import cli, records
from suite.config import StudyError, expand, load_study, parse_study
from suite.names import NAME_PATTERN
from suite.run import study_dir_for

MALFORMED = Path(__file__).parent / "malformed"
# Columns of runs.csv that measure time and so differ between two otherwise identical runs.
TIME_COLUMNS = ["train_time_s"]  # evaluation no longer times itself (images/s: spikesuite bench)
HISTORY_TIME_COLUMNS = ["epoch_time_s"]


def mlflow_children(results: Path, experiment: str) -> dict[str, list]:
    """run id -> its MLflow child runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'run'", max_results=1000):
        out.setdefault(r.data.tags["spikesuite.run_id"], []).append(r)
    return out


# ------------------------------------------------------------------------------------- 1. kill and resume

EPOCHS = 6
KILL_STUDY = f"""
name: kr
dataset: {{name: synthetic, synthetic: {{train_size: 96, test_size: 32}}}}
model: {{depth: 1, dim: 16, heads: 2, T: 2}}
train: {{epochs: {EPOCHS}, batch_size: 16, warmup_epochs: 1, lr: 5.0e-3, min_lr: 1.0e-4}}
eval: {{heatmap_images: 2}}
variants:
  dense: {{}}
  act: {{tokens: {{halting: {{}}}}}}
matrix:
  seed: [0, 1]
  exclude: [{{variant: act, seed: 1}}]
"""


def test_sigkill_at_three_points_resumes_to_identical_records(tmp_path: Path):
    study = tmp_path / "kr.yaml"
    study.write_text(KILL_STUDY)
    ids = [s.run_id for s in expand(load_study(study))]
    assert len(ids) == 3
    ref, res = tmp_path / "reference", tmp_path / "resumed"
    reference = Proc(study, ref, tmp_path / "reference.log")  # uninterrupted, alongside
    rd = [res / "kr" / rid for rid in ids]

    # kill 1: mid-way through the first run, once its first checkpoint exists
    p = Proc(study, res, tmp_path / "inv1.log")
    p.wait_until(lambda: (rd[0] / "checkpoint.pt").exists(), "the first checkpoint of run 1")
    p.kill()
    ck = torch.load(rd[0] / "checkpoint.pt", weights_only=True)
    assert 1 <= ck["epoch"] < EPOCHS and status(rd[0])["state"] == "running"
    assert not (rd[1]).exists()

    # kill 2: between runs: run 1 finished (resumed), run 2 just claimed and marked running
    p = Proc(study, res, tmp_path / "inv2.log")
    p.wait_until(lambda: records.run_state(rd[0], ids[0]) == "done" and status(rd[1]).get("state") == "running",
                 "run 1 done and run 2 started")
    p.kill()
    assert f"{ids[0]} running (resuming)" in p.stderr
    done_mtime = (rd[0] / records.METRICS).stat().st_mtime_ns

    # kill 3: mid-way through the last run
    p = Proc(study, res, tmp_path / "inv3.log")
    p.wait_until(lambda: (rd[2] / "checkpoint.pt").exists(), "the first checkpoint of run 3")
    p.kill()
    assert torch.load(rd[2] / "checkpoint.pt", weights_only=True)["epoch"] < EPOCHS
    assert f"{ids[0]} done, skipped" in p.stderr and records.run_state(rd[1], ids[1]) == "done"

    # run to completion
    p = Proc(study, res, tmp_path / "inv4.log")
    assert p.wait() == 0, p.stderr
    assert f"{ids[0]} done, skipped" in p.stderr and f"{ids[1]} done, skipped" in p.stderr
    assert f"{ids[2]} running (resuming)" in p.stderr
    assert (rd[0] / records.METRICS).stat().st_mtime_ns == done_mtime  # finished runs are never redone
    assert reference.wait() == 0, reference.stderr

    # identical records: every column but the timing ones, bit for bit
    a, b = pd.read_csv(ref / "kr" / records.RUNS_TABLE), pd.read_csv(res / "kr" / records.RUNS_TABLE)
    assert list(a.columns) == list(b.columns) and list(a.run_id) == ids and (a.status == "done").all()
    timed = [c for c in a.columns if c.endswith("_s") or "time" in c.split("_")]  # seconds, rates, clocks
    assert sorted(timed) == sorted(TIME_COLUMNS), timed  # the list of excluded columns is complete
    pd.testing.assert_frame_equal(a.drop(columns=TIME_COLUMNS), b.drop(columns=TIME_COLUMNS), check_exact=True)
    for rid, run_dir in zip(ids, rd):
        ha = pd.read_csv(ref / "kr" / rid / records.HISTORY).drop(columns=HISTORY_TIME_COLUMNS)
        hb = pd.read_csv(run_dir / records.HISTORY).drop(columns=HISTORY_TIME_COLUMNS)
        assert list(hb.epoch) == list(range(1, EPOCHS + 1))  # the resumed history has every epoch
        pd.testing.assert_frame_equal(ha, hb, check_exact=True)
        assert status(run_dir)["attempts"] == 2 and status(ref / "kr" / rid)["attempts"] == 1
        ma = records.read_json(ref / "kr" / rid / records.METRICS)["details"]
        mb = records.read_json(run_dir / records.METRICS)["details"]
        assert ma == mb

    # MLflow: one FINISHED child per run; the killed child closed as KILLED and named by its replacement
    for rid, children in mlflow_children(res, "kr").items():
        by = {}
        for r in children:
            by.setdefault(r.info.status, []).append(r)
        assert set(by) == {"FINISHED", "KILLED"}, (rid, {k: len(v) for k, v in by.items()})
        assert len(by["FINISHED"]) == 1 and len(by["KILLED"]) == 1
        assert by["FINISHED"][0].data.tags.get("spikesuite.replaces") == by["KILLED"][0].info.run_id
    assert sorted(mlflow_children(res, "kr")) == sorted(ids)
    # the three killed invocations' parent runs were closed as KILLED by the next invocation, not left RUNNING
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{res / 'mlflow.db'}")
    parents = client.search_runs([client.get_experiment_by_name("kr").experiment_id],
                                 filter_string="tags.`spikesuite.kind` = 'invocation'")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED", "KILLED", "KILLED"]
    assert all(len(c) == 1 and c[0].info.status == "FINISHED" for c in mlflow_children(ref, "kr").values())


# ------------------------------------------------------------------------------------- 2. failures isolated

FAIL_STUDY = """
name: flt
dataset: {name: synthetic, synthetic: {train_size: 32, test_size: 16}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 16, warmup_epochs: 0}
eval: {heatmap_images: 1}
variants:
  healthy: {}
  nanloss: {train: {inject_fault: nan}}
  boom: {train: {inject_fault: error}}
"""


def _files(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_failures_are_isolated_reported_and_retried_alone(tmp_path: Path):
    study = tmp_path / "flt.yaml"
    study.write_text(FAIL_STUDY)
    ids = {s.variant: s.run_id for s in expand(load_study(study))}
    sdir = tmp_path / "res" / "flt"
    p = Proc(study, tmp_path / "res", tmp_path / "first.log")
    assert p.wait() == 1, p.stderr
    summary = p.stderr.split("failed runs", 1)[1]
    assert ids["nanloss"] in summary and ids["boom"] in summary and ids["healthy"] not in summary
    nan = status(sdir / ids["nanloss"])
    assert nan["state"] == "failed" and nan["reason"].startswith("non-finite loss"), nan
    boom = status(sdir / ids["boom"])
    assert boom["state"] == "failed" and "InjectedFault" in boom["reason"]
    assert "Traceback (most recent call last)" in boom["traceback"] and "raise InjectedFault" in boom["traceback"]
    assert status(sdir / ids["healthy"])["state"] == "done"
    table = pd.read_csv(sdir / records.RUNS_TABLE).set_index("variant")
    assert table.status.to_dict() == {"healthy": "done", "nanloss": "failed", "boom": "failed"}
    healthy_files = _files(sdir / ids["healthy"])

    p = Proc(study, tmp_path / "res", tmp_path / "second.log")
    assert p.wait() == 1, p.stderr
    assert f"{ids['healthy']} done, skipped" in p.stderr
    assert f"{ids['nanloss']} running" in p.stderr and f"{ids['boom']} running" in p.stderr
    assert _files(sdir / ids["healthy"]) == healthy_files  # nothing of the done run was touched
    for v in ("nanloss", "boom"):
        assert status(sdir / ids[v])["state"] == "failed" and status(sdir / ids[v])["attempts"] == 2


# ------------------------------------------------------------------------------------- 3. atomic records

ATOM_STUDY = """
name: atom
dataset: {name: synthetic, synthetic: {train_size: 32, test_size: 16}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 16, warmup_epochs: 0}
eval: {heatmap_images: 1}
variants: {dense: {}}
tracking: {enabled: false}
"""


def _plan_state(study: Path, results: Path, rid: str, capsys) -> str:
    capsys.readouterr()
    assert cli.main(["plan", str(study), "--results", str(results)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(rid))
    return line.split()[1]


@pytest.mark.parametrize("damage", ["metrics_truncated", "metrics_garbage", "metrics_other_run",
                                    "status_truncated", "status_garbage", "status_not_object"])
def test_corrupt_record_means_pending_and_redo(tmp_path: Path, capsys, damage: str):
    study = tmp_path / "atom.yaml"
    study.write_text(ATOM_STUDY)
    results = tmp_path / "res"
    rid = expand(load_study(study))[0].run_id
    run = ["run", str(study), "--results", str(results), "--no-progress", "--no-report"]
    assert cli.main(run) == 0
    run_dir = results / "atom" / rid
    assert _plan_state(study, results, rid, capsys) == "done"
    before = records.read_json(run_dir / records.METRICS)["metrics"]
    target = run_dir / (records.METRICS if damage.startswith("metrics") else records.STATUS)
    text = target.read_text()
    target.write_text({"truncated": text[: len(text) // 2], "garbage": "\x00\x01 not json {",
                       "other_run": json.dumps({"run_id": "0123456789ab", "metrics": {}}),
                       "not_object": "[1, 2, 3]"}[damage.split("_", 1)[1]])
    assert records.run_state(run_dir, rid) == "pending"
    assert _plan_state(study, results, rid, capsys) == "pending"
    assert cli.main(run) == 0
    assert _plan_state(study, results, rid, capsys) == "done"
    after = records.read_json(run_dir / records.METRICS)["metrics"]
    assert {k: v for k, v in after.items() if k not in TIME_COLUMNS} == \
        {k: v for k, v in before.items() if k not in TIME_COLUMNS}  # redone from the final checkpoint
    assert status(run_dir)["attempts"] == (2 if damage.startswith("metrics") else 1)
    assert pd.read_csv(results / "atom" / records.RUNS_TABLE).status.tolist() == ["done"]


# ------------------------------------------------------------------------------------- 4. concurrency

CONC_STUDY = """
name: cc
dataset: {name: synthetic, synthetic: {train_size: 32, test_size: 16}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 16, warmup_epochs: 0}
eval: {heatmap_images: 1}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
matrix: {seed: [0, 1]}
"""


def test_two_processes_on_one_study_run_each_run_once(tmp_path: Path):
    study = tmp_path / "cc.yaml"
    study.write_text(CONC_STUDY)
    ids = [s.run_id for s in expand(load_study(study))]
    results = tmp_path / "res"  # fresh: both processes also race to create the MLflow store
    procs = [Proc(study, results, tmp_path / f"p{i}.log") for i in range(2)]
    rcs = [p.wait() for p in procs]
    assert rcs == [0, 0], [p.stderr[-3000:] for p in procs]
    for rid in ids:
        ran = [p for p in procs if f"{rid} running" in p.stderr]
        assert len(ran) == 1, (rid, [p.stderr for p in procs])
        assert status(results / "cc" / rid)["attempts"] == 1
    assert (pd.read_csv(results / "cc" / records.RUNS_TABLE).status == "done").all()
    children = mlflow_children(results, "cc")
    assert sorted(children) == sorted(ids)
    assert all(len(c) == 1 and c[0].info.status == "FINISHED" for c in children.values())


def test_workers_share_one_study_and_run_each_run_once(tmp_path: Path):
    """``--workers 2``: this process and one spawned worker (its units passed as arguments, no hidden CLI flag
    or environment variable) claim the runs between them; every run is trained once and mirrored once."""
    study = tmp_path / "cc.yaml"
    study.write_text(CONC_STUDY)
    ids = [s.run_id for s in expand(load_study(study))]
    results = tmp_path / "res"
    p = Proc(study, results, tmp_path / "w.log", "--workers", "2")
    assert p.wait() == 0, p.stderr[-3000:]
    for rid in ids:
        assert p.stderr.count(f"{rid} running") == 1, (rid, p.stderr)
        assert status(results / "cc" / rid)["attempts"] == 1
        assert p.stderr.count(rid) >= 2  # both processes went through every run (one trained it)
    assert "exited with code" not in p.stderr
    assert (pd.read_csv(results / "cc" / records.RUNS_TABLE).status == "done").all()
    children = mlflow_children(results, "cc")
    assert sorted(children) == sorted(ids)
    assert all(len(c) == 1 and c[0].info.status == "FINISHED" for c in children.values())


def test_failure_recorded_by_another_process_during_this_invocation_is_not_retried(tmp_path, monkeypatch):
    """Two processes on one study: once one of them has failed a run, the other must not run it again
    straight away (a later invocation retries it). Simulated: the failure lands just before our claim."""
    import contextlib

    from suite.run import run_study, unit

    study = parse_study(ATOM_STUDY)
    rid = expand(study)[0].run_id
    calls: list[str] = []
    real_claim = records.claim

    @contextlib.contextmanager
    def claim_after_other_process_failed(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        records.write_status(run_dir, "failed", reason="RuntimeError: elsewhere", attempts=1)
        with real_claim(run_dir) as mine:
            yield mine

    def fake_execute(u, *a, **k):
        calls.append(u.spec.run_id)
        return False, "RuntimeError: again"

    monkeypatch.setattr(unit, "_execute", fake_execute)
    monkeypatch.setattr(unit.records, "claim", claim_after_other_process_failed)
    summary = run_study(study, tmp_path, progress=False)
    assert calls == [] and summary.failed == {rid: "RuntimeError: elsewhere"}
    monkeypatch.setattr(unit.records, "claim", real_claim)
    summary = run_study(study, tmp_path, progress=False)  # a new invocation retries it
    assert calls == [rid] and summary.failed == {rid: "RuntimeError: again"}


# ------------------------------------------------------------------------------------- 5. malformed input

CORPUS = sorted(MALFORMED.glob("*.yaml"))
NO_COMMENT = {"empty.yaml": ["the study file is empty"]}  # a 0-byte file cannot carry its expectation


def _expectations(path: Path) -> tuple[list[str], bool]:
    head = path.read_bytes().decode("utf-8", "replace").splitlines()
    expect = [ln.split(":", 1)[1].strip() for ln in head if ln.startswith("# expect:")] or NO_COMMENT[path.name]
    return expect, any(ln.strip() == "# stage: preflight" for ln in head)


def test_corpus_covers_the_brief():
    assert len(CORPUS) >= 20
    expected = " ".join(e for p in CORPUS for e in _expectations(p)[0])
    for path in ("nmae", "dataset.", "model.", "model.neuron.", "train.", "eval.", "variants.act.tokenz",
                 "tokens.halting.", "tokens.merge.", "time.mask.", "search.", "tracking.", "execution."):
        assert f"{path}" in expected and "unknown key" in expected, path


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_study_is_rejected_with_its_key_path(path: Path, tmp_path: Path, monkeypatch, capsys):
    expect, preflight_only = _expectations(path)
    monkeypatch.chdir(tmp_path)  # a YAML tag that ran os.system would leave its file here
    if preflight_only:
        load_study(path)  # the schema accepts it; the run refuses it before writing anything
    else:
        with pytest.raises(StudyError) as exc:
            load_study(path)
        for e in expect:
            assert e in str(exc.value), (e, exc.value.problems)
    results = tmp_path / "results"
    capsys.readouterr()
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    for e in expect:
        assert e in err, (e, err)
    assert not results.exists() and list(tmp_path.iterdir()) == []  # nothing written, no MLflow store


def test_malformed_studies_via_the_cli(tmp_path: Path):
    names = ["unknown_halting", "python_tag", "non_utf8", "dataset_missing_root"]
    procs = []
    for name in names:
        cwd = tmp_path / name
        cwd.mkdir()
        procs.append((name, cwd, subprocess.Popen(
            [sys.executable, "-m", "suite", "run", str(MALFORMED / f"{name}.yaml"), "--results", str(cwd / "results")],
            cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for name, cwd, p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (name, err)
        assert "Traceback" not in err, err
        for e in _expectations(MALFORMED / f"{name}.yaml")[0]:
            assert e in err, (name, e, err)
        assert list(cwd.iterdir()) == [], (name, list(cwd.iterdir()))  # no results, no store, no tag side effect


VALID = {
    "name": "fuzz",
    "dataset": {"name": "synthetic", "synthetic": {"train_size": 32, "test_size": 16}, "augment": {}},
    "model": {"depth": 1, "dim": 16, "heads": 2, "T": 2, "neuron": {"tau": 2.0}},
    "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "lr": 1.0e-3},
    "eval": {"heatmap_images": 1, "overrides": [{"name": "b", "set": {"tokens.halting.beta_offset": -1.0}}]},
    "variants": {
        "dense": {},
        "act": {"tokens": {"halting": {"eps": 0.01}}, "model": {"T": 2}},
        "merge": {"tokens": {"merge": {"r": 1}}, "train": {"epochs": 1}},
        "tmask": {"time": {"mask": {"granularity": "block", "penalty": 1.0e-3}}},
    },
    "matrix": {"seed": [0, 1], "model.T": [2], "tokens.halting.beta": [5.0, 10.0],
               "exclude": [{"variant": "merge", "seed": 1}], "include": [{"variant": "act", "seed": 7}]},
    "search": {"variants": ["act"], "objectives": [{"metric": "accuracy", "direction": "maximize"}],
               "params": {"tokens.halting.eps": {"uniform": [0.0, 0.5]}}},
    "tracking": {"enabled": False},
    "execution": {"workers": 1},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["dense", "act", "seed", "variant", "tokens.halting.eps", "model.depth",
                                     "../x", "a/b", "", "1e30"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6) | st.sampled_from(
                                                           ["variant", "seed", "model.T", "r", "halting"]),
                                                           inner, max_size=3)), max_leaves=6)


def _paths(node, prefix=()) -> list[tuple]:
    out = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


def _get(node, path):
    for p in path:
        node = node[p]
    return node


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_study_parses_or_raises_study_error(data):
    doc = json.loads(json.dumps(VALID))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(doc)), label="path")
        if data.draw(st.booleans(), label="insert") and isinstance(_get(doc, path), dict):
            key = data.draw(st.text(min_size=1, max_size=8) | st.sampled_from(["epz", "widht", "x.y"]), label="key")
            _get(doc, path)[key] = data.draw(values, label="value")
        elif path:
            _get(doc, path[:-1])[path[-1]] = data.draw(values, label="value")
        else:
            doc = data.draw(values, label="document")
            break
    try:
        text = yaml.safe_dump(doc, allow_unicode=False)
    except yaml.YAMLError:
        return
    try:
        parse_study(text, "fuzz.yaml")
    except StudyError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


# ------------------------------------------------------------------------------------- 6. security

def _touch(path: str) -> None:  # what a malicious pickle in a checkpoint would run on load
    Path(path).write_text("pwned")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path):
    from suite.data import load_data
    from suite.train import fit

    spec = expand(parse_study(ATOM_STUDY))[0]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "executed"
    torch.save({"model": {}, "epoch": 1, "payload": _Payload(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        fit(spec.config, load_data(spec.config.dataset), run_dir, device=torch.device("cpu"), progress=False)
    assert not marker.exists()
    torch.load(run_dir / "checkpoint.pt", weights_only=False)  # the payload is live: a plain load runs it
    assert marker.exists()


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch pwned']",
    "!!python/object/new:builtins.exec ['open(\"pwned\", \"w\")']",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_yaml_tags_never_build_objects(tag: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match="invalid YAML"):
        parse_study(f"name: x\nvariants: {{dense: {{}}}}\ndescription: {tag}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "../x", "/etc", "a/../../x", "x/y", "", "..\\x", "~root"])
def test_no_study_name_escapes_the_results_directory(name: str, tmp_path: Path):
    with pytest.raises(StudyError):
        parse_study(f"name: {json.dumps(name)}\nvariants: {{dense: {{}}}}\n")
    results = tmp_path / "results"
    results.mkdir()
    try:
        target = study_dir_for(results, name)
    except StudyError:
        return
    assert target.parent == results.resolve()  # whatever the schema let through still lands inside


@pytest.mark.parametrize("variant", ["a/b", "..", "../x", "/abs", ".hidden"])
def test_variant_names_with_separators_are_rejected(variant: str):
    import re

    assert not re.match(NAME_PATTERN, variant)
    with pytest.raises(StudyError, match="variant name"):
        parse_study(f"name: x\nvariants: {{{json.dumps(variant)}: {{}}}}\n")


def test_ui_binds_to_localhost_by_default(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["ui", "--help"])
    assert exc.value.code == 0
    assert "127.0.0.1" in capsys.readouterr().out
    assert cli._parser().parse_args(["ui"]).host == "127.0.0.1"


def test_nan_and_inf_never_reach_training():
    for bad in (".nan", ".inf", "-.inf"):
        with pytest.raises(StudyError, match="must be a finite number"):
            parse_study(f"name: x\ntrain: {{warmup_epochs: {bad}}}\nvariants: {{dense: {{}}}}\n")
    assert math.isfinite(parse_study("name: x\nvariants: {dense: {}}\n").train.lr)
