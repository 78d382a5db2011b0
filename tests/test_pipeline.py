"""The spine end to end on a tiny real study: records, runs table, MLflow child runs, resume, report."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from suite import environment as machine
from suite import records
from suite.config import expand, parse_study
from suite.report.load import load_records
from suite.report.page import environment
from suite.run import run_study

STUDY = """
name: tiny
dataset: {name: digits, train_subset: 300, test_subset: 100, val_fraction: 0.1}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 50, lr: 5.0e-3, warmup_epochs: 0, min_lr: 1.0e-4}
eval:
  heatmap_images: 2
  overrides:
    - {name: halt-more, set: {tokens.halting.eps: 1.0}}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
matrix:
  seed: [0, 1]
  exclude: [{variant: act, seed: 1}]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    study = parse_study(STUDY)
    summary = run_study(study, results, progress=False)
    return study, results, summary


def test_records_and_table(finished):
    study, results, summary = finished
    assert not summary.failed and len(summary.done) == 3
    sdir = results / "tiny"
    runs = pd.read_csv(sdir / records.RUNS_TABLE)
    specs = expand(study)
    assert sorted(runs.run_id) == sorted(s.run_id for s in specs)
    assert set(runs.status) == {"done"}
    for spec in specs:
        d = sdir / spec.run_id
        for name in (records.CONFIG, records.STATUS, records.METRICS, records.HISTORY, "checkpoint.pt"):
            assert (d / name).is_file(), name
        assert len(pd.read_csv(d / records.HISTORY)) == 2
        # every run says which code computed it (this checkout: a commit hash and whether it was edited)
        status = json.loads((d / records.STATUS).read_text())
        assert re.fullmatch(r"[0-9a-f]{40}", status["git_commit"]) and isinstance(status["git_dirty"], bool)
        assert status["spikesuite_version"] == importlib.metadata.version("spikesuite")
        m = json.loads((d / records.METRICS).read_text())["metrics"]
        assert 0 <= m["accuracy"] <= 100 and m["token_units"] <= m["dense_token_units"]
    dense = runs[runs.variant == "dense"]
    assert (dense.token_pct == 100).all() and (dense.timesteps_mean == 2).all()
    # the act run recorded its evaluation override beside it: eps 1 halts every token at its first unit
    evals = pd.read_csv(sdir / records.EVALS_TABLE)
    act = runs[runs.variant == "act"].iloc[0]
    ev = evals[evals.run_id == act.run_id].iloc[0]
    assert ev.override == "halt-more" and ev.token_units == 16 < act.token_units
    assert (sdir / act.run_id / records.MAPS).is_file()
    # the machine is recorded beside the results, so a report built elsewhere still names it
    env = json.loads((sdir / "environment.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["cpu_cores_logical"] >= 1
    assert env["git_commit"] == status["git_commit"]
    assert environment(load_records(sdir))[0]["torch"] == torch.__version__


def test_code_version_is_null_outside_a_git_checkout(tmp_path, monkeypatch):
    """Code run from a copy without .git records null for the commit and the dirty flag, and never fails."""
    monkeypatch.setattr(machine, "SUITE_DIR", tmp_path)
    assert machine.git_commit() is None and machine.git_dirty() is None
    monkeypatch.setattr(machine, "SUITE_DIR", tmp_path / "missing")  # git cannot even start there
    assert machine.git_commit() is None and machine.git_dirty() is None


def test_mlflow_children_and_resume(finished):
    study, results, _ = finished
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    children = client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'run'")
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    parent_ids = {c.data.tags["spikesuite.invocation"] for c in children}  # linked, listed flat (not nested)
    assert not any("mlflow.parentRunId" in c.data.tags for c in children)
    parents = client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'invocation'")
    assert parent_ids <= {p.info.run_id for p in parents}
    one = children[0]
    assert one.data.params["model.depth"] == "1" and "test_accuracy" in one.data.metrics
    assert len(client.get_metric_history(one.info.run_id, "train_loss")) == 2  # per-epoch metrics
    # a second invocation skips every run and adds no child run
    before = {p.name: p.stat().st_mtime_ns for p in (results / "tiny").rglob("metrics.json")}
    summary = run_study(study, results, progress=False)
    assert len(summary.skipped) == 3 and not summary.done
    after = {p.name: p.stat().st_mtime_ns for p in (results / "tiny").rglob("metrics.json")}
    assert before == after
    assert len(client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'run'")) == 3


def test_cli_plan_report(finished, tmp_path):
    study, results, _ = finished
    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY)
    plan = subprocess.run([sys.executable, "-m", "suite", "plan", str(path), "--results", str(results)],
                          capture_output=True, text=True, check=True).stdout
    assert plan.count(" done ") == 3
    rep = subprocess.run([sys.executable, "-m", "suite", "report", str(results / "tiny")],
                         capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    assert (results / "tiny" / "report" / "accuracy_vs_tokens.png").is_file()



def test_eval_apply_evaluates_the_trained_weights_with_an_evaluation_only_policy(tmp_path):
    """Training-free ToMe: a dense model, trained without merging, is evaluated with merging applied."""
    text = STUDY.replace("name: tiny", "name: tome").replace("depth: 1", "depth: 2").replace(
        "  act: {tokens: {halting: {}}}", "  tome: {eval: {apply: {tokens.merge: {r: 3}}, overrides: "
        "[{name: residual, set: {tokens.merge.metric: residual}}]}}").replace(
        "  exclude: [{variant: act, seed: 1}]", "  exclude: [{seed: 1}]")
    summary = run_study(parse_study(text), tmp_path, progress=False)
    assert not summary.failed and len(summary.done) == 2
    runs = pd.read_csv(tmp_path / "tome" / records.RUNS_TABLE).set_index("variant")
    # merging after block 0 removes 3 of 16 tokens from block 1 at every timestep: 2 * 16 + 2 * 13 per image
    assert runs.loc["dense", "token_units"] == 64 and runs.loc["tome", "token_units"] == 58
    # the policy was applied at evaluation only: training was the dense model's, epoch for epoch
    hist = {v: pd.read_csv(tmp_path / "tome" / runs.loc[v, "run_id"] / records.HISTORY) for v in ("dense", "tome")}
    assert hist["dense"].train_loss.tolist() == hist["tome"].train_loss.tolist()
    # an override is layered on eval.apply: it changes the merge metric and keeps r = 3 (alone it would
    # be a merge policy with no r, an invalid config)
    ev = pd.read_csv(tmp_path / "tome" / records.EVALS_TABLE)
    ev = ev[ev.override == "residual"]
    assert ev.variant.tolist() == ["tome"] and ev.token_units.tolist() == [58]
    assert json.loads(ev.set.iloc[0]) == {"tokens.merge": {"r": 3}, "tokens.merge.metric": "residual"}
