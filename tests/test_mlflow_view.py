"""What a researcher sees in MLflow (suite.mlflow_view, suite.tracking, suite.report.mlflow): the experiment opens
in the model-training view with the study's description, runs are named ``<variant>-s<seed>`` plus their axes,
final metrics are summary values (step 0) named by their split, per-epoch history stays stepped, params leave
out what does not apply, the parent run carries per-variant means and a self-contained report page, and the
mirror of a finished run logs exactly what the live run logged.

Real components: one `spikesuite run` process (warnings on) on a tiny synthetic study with a real sqlite MLflow
store under tmp_path, read back with MlflowClient. OMP_NUM_THREADS=1."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from suite import records
from suite.config import TrackingConfig, expand, parse_study
from suite.mlflow_view import (
    DESCRIPTION_TAG,
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    epoch_metrics,
    flatten,
    override_metrics,
    run_name,
    run_params,
    summary_metrics,
    variant_means,
)
from suite.names import INVOCATION_TAG
from suite.report.mlflow import self_contained
from suite.tracking import Tracker, close_trackers, mirror_run

DESCRIPTION = "Dense vs halting at T = 1 and 2 (MLflow view test)"
STUDY = f"""
name: view
description: {DESCRIPTION}
dataset: {{name: synthetic, synthetic: {{train_size: 64, test_size: 16}}}}
model: {{depth: 1, dim: 16, heads: 2, T: 2}}
train: {{epochs: 2, batch_size: 16, warmup_epochs: 0, lr: 5.0e-3, min_lr: 1.0e-4}}
eval: {{heatmap_images: 0}}
execution: {{progress: false}}
variants:
  dense: {{}}
  act:
    tokens: {{halting: {{}}}}
    eval: {{overrides: [{{name: halt-more, set: {{tokens.halting.eps: 1.0}}}}]}}
matrix:
  seed: [0]
  model.T: [1, 2]
  exclude: [{{variant: act, model.T: 1}}]
"""
RUN_NAMES = {"dense-s0-T=1", "dense-s0-T=2", "act-s0-T=2"}
DIGITS = """
name: dig
dataset: {name: digits}
model: {depth: 2, dim: 64, heads: 4, T: 4}
train: {epochs: 1}
variants:
  dense: {}
  act_merge: {tokens: {halting: {}, merge: {r: 2}}}
"""


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each test names its store


# ---------------------------------------------------------------------------------------------- names, params


def test_run_names_carry_variant_seed_and_axes_uncut():
    specs = expand(parse_study(STUDY))
    assert {run_name(s) for s in specs} == RUN_NAMES
    # two axes sharing a last part are named by their whole paths; a name MLflow cannot store falls back to the id
    spec = specs[0]
    two = type(spec)(spec.study, spec.run_id, spec.config, {"variant": "dense", "seed": 0, "model.T": 2,
                                                            "search": "s", "tokens.halting.T": 1.5, "x.T": 2.0})
    assert run_name(two) == "dense-s0-model.T=2-search=s-tokens.halting.T=1.5-x.T=2"
    long = type(spec)(spec.study, spec.run_id, spec.config, {"variant": "dense", "seed": 0, "a": "v" * 300})
    assert run_name(long) == f"dense-s0-{spec.run_id}"


def test_params_leave_out_what_does_not_apply():
    """A digits run logs no synthetic-data shape, no dataset root/download and no absent policy; a synthetic run
    keeps its data shape; a policy the run uses is logged whole."""
    by_variant = {s.variant: s for s in expand(parse_study(DIGITS))}
    dense, merge = by_variant["dense"], by_variant["act_merge"]
    before, after = flatten(dense.config.model_dump(mode="json")), run_params(dense.config)
    assert not [k for k in after if k.startswith(("dataset.synthetic", "dataset.simulated", "tokens.", "time."))]
    assert {"dataset.root", "dataset.download", "train.tet_lambda", "train.init_from", "init_run", "dataset.frames",
            "dataset.split_by", "dataset.dvs_split"}.isdisjoint(after)
    assert {"dataset.name", "model.depth", "train.lr", "eval.split", "seed", "variant"} <= set(after)
    assert all(after[k] == before[k] for k in after)  # nothing renamed, only left out
    merged = run_params(merge.config)
    assert merged["tokens.merge.r"] == "2" and "tokens.halting.eps" in merged and "tokens.drop" not in merged
    print(f"digits params: dense {len(before)} -> {len(after)}, act_merge "
          f"{len(flatten(merge.config.model_dump(mode='json')))} -> {len(merged)}")
    synthetic = run_params(expand(parse_study(STUDY))[0].config)
    assert synthetic["dataset.synthetic.train_size"] == "64" and "eval.overrides" not in synthetic
    act = next(s for s in expand(parse_study(STUDY)) if s.variant == "act")
    assert "halt-more" in run_params(act.config)["eval.overrides"]


def test_metric_names_say_their_split():
    assert epoch_metrics({"epoch": 1, "train_acc": 50.0, "val_acc": 40.0, "train_loss": 1.0}) == {
        "epoch": 1, "train_accuracy": 50.0, "val_accuracy": 40.0, "train_loss": 1.0}
    final = {"accuracy": 90.0, "accuracy_dense_readout": 91.0, "token_pct": 80.0, "loss": 0.3}
    assert summary_metrics(final) == {"test_accuracy": 90.0, "test_accuracy_dense_readout": 91.0,
                                      "token_pct": 80.0, "loss": 0.3}
    # on the validation split the final number must not join the per-epoch val_accuracy history
    assert summary_metrics(final, "val")["val_accuracy_final"] == 90.0
    assert override_metrics("r1", {**final, "macs": 5.0}) == {"override.r1.test_accuracy": 90.0,
                                                              "override.r1.token_pct": 80.0}


def test_variant_means_from_the_runs_table():
    specs = expand(parse_study(STUDY))
    ids = {run_name(s): s.run_id for s in specs}
    runs = pd.DataFrame([
        {"run_id": ids["dense-s0-T=1"], "status": "done", "accuracy": 80.0, "token_pct": 50.0,
         "timesteps_mean": 1.0, "energy_exact_uj": 0.5},
        {"run_id": ids["dense-s0-T=2"], "status": "done", "accuracy": 90.0, "token_pct": 100.0,
         "timesteps_mean": 2.0, "energy_exact_uj": float("nan")},
        {"run_id": ids["act-s0-T=2"], "status": "failed", "accuracy": float("nan")},
    ])
    assert variant_means(runs, specs) == {
        "dense-T_1.test_accuracy": 80.0, "dense-T_1.token_pct": 50.0, "dense-T_1.timesteps_mean": 1.0,
        "dense-T_1.energy_exact_uj": 0.5,
        "dense-T_2.test_accuracy": 90.0, "dense-T_2.token_pct": 100.0, "dense-T_2.timesteps_mean": 2.0}
    assert variant_means(pd.DataFrame(), specs) == {}


def test_report_page_inlined_for_mlflow(tmp_path):
    """Images beside the page become data: URIs; URLs, missing files and files outside stay as written; the page
    on disk is not changed."""
    (tmp_path / "report").mkdir()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    (tmp_path / "report" / "a b.png").write_bytes(png)
    (tmp_path.parent / "outside.png").write_bytes(png)
    page = tmp_path / "report.html"
    text = ('<p><img src="report/a b.png" alt="A"></p><img alt="x" src="https://example.org/b.png">'
            '<img src="report/missing.png"><img src="../outside.png"><a href="report/a b.png">PNG</a>')
    page.write_text(text)
    out = self_contained(page)
    assert f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="A">' in out
    assert 'src="https://example.org/b.png"' in out and 'src="report/missing.png"' in out
    assert 'src="../outside.png"' in out and '<a href="report/a b.png">' in out
    assert page.read_text() == text


# ---------------------------------------------------------------------------------------------- a real store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """`spikesuite run` (with its report) on the study, warnings shown as a user's ``-W default`` would."""
    root = tmp_path_factory.mktemp("view")
    (root / "view.yaml").write_text(STUDY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    env.pop("MLFLOW_TRACKING_URI", None)
    p = subprocess.run([sys.executable, "-m", "suite", "run", str(root / "view.yaml"), "--results",
                        str(root / "results"), "--no-progress"], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("view")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return root, client, exp, runs, p.stdout + p.stderr


def kind(runs, k: str) -> list:
    return [r for r in runs if r.data.tags.get("spikesuite.kind") == k]


def test_experiment_opens_in_training_view_with_description(store):
    _, _, exp, _, _ = store
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT and exp.tags[DESCRIPTION_TAG] == DESCRIPTION


def test_children_named_with_summary_metrics_and_stepped_history(store):
    root, client, _, runs, _ = store
    children = kind(runs, "run")
    assert {r.info.run_name for r in children} == RUN_NAMES
    for r in children:
        m, rid = r.data.metrics, r.info.run_id
        assert {"test_accuracy", "token_pct", "energy_exact_uj", "val_accuracy", "train_accuracy"} <= set(m)
        assert not {"accuracy", "val_acc", "train_acc"} & set(m)
        (final,) = client.get_metric_history(rid, "test_accuracy")
        assert final.step == 0  # a summary value: MLflow offers bar and scatter charts for it
        assert [h.step for h in client.get_metric_history(rid, "val_accuracy")] == [1, 2]
        assert [h.step for h in client.get_metric_history(rid, "train_accuracy")] == [1, 2]
        # the records keep their own names
        run_dir = root / "results" / "view" / r.data.tags["spikesuite.run_id"]
        assert records.read_json(run_dir / records.METRICS)["metrics"]["accuracy"] == pytest.approx(
            m["test_accuracy"])
        assert {"train_acc", "val_acc"} <= set(pd.read_csv(run_dir / records.HISTORY).columns)
        assert not [k for k in r.data.params if k.startswith("dataset.root") or k == "tokens.merge"]
    act = next(r for r in children if r.info.run_name == "act-s0-T=2")
    assert {"override.halt-more.test_accuracy", "override.halt-more.token_pct"} <= set(act.data.metrics)
    assert "tokens.halting.eps" in act.data.params
    dense = next(r for r in children if r.info.run_name == "dense-s0-T=1")
    assert not [k for k in dense.data.params if k.startswith("tokens.")]


def test_parent_named_with_variant_means_and_self_contained_report(store, tmp_path):
    root, client, _, runs, _ = store
    (parent,) = kind(runs, "invocation")
    assert parent.info.run_name.startswith("view 20")  # study name and local start time
    table = pd.read_csv(root / "results" / "view" / records.RUNS_TABLE)
    for label, rows in (("dense-T_1", table[(table.variant == "dense") & (table["model.T"] == 1)]),
                        ("act-T_2", table[table.variant == "act"])):
        assert parent.data.metrics[f"{label}.test_accuracy"] == pytest.approx(rows.accuracy.mean())
        assert parent.data.metrics[f"{label}.token_pct"] == pytest.approx(rows.token_pct.mean())
        assert parent.data.metrics[f"{label}.timesteps_mean"] == pytest.approx(rows.timesteps_mean.mean())
        assert parent.data.metrics[f"{label}.energy_exact_uj"] == pytest.approx(rows.energy_exact_uj.mean())
    page = Path(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))).read_text()
    assert page.count('src="data:image/png;base64,') >= 3 and 'src="report/' not in page
    assert 'src="report/' in (root / "results" / "view" / "report.html").read_text()  # the page on disk as written


def test_each_run_logs_the_data_it_read_as_its_dataset_input(store):
    """The runs table's Dataset column: name and digest of what the run read, split sizes in the profile; the
    column's filter (``dataset.name``) finds every run of the study."""
    root, client, exp, runs, _ = store
    children = kind(runs, "run")
    for r in children:
        (inp,) = client.get_run(r.info.run_id).inputs.dataset_inputs
        recorded = records.read_json(root / "results" / "view" / r.data.tags["spikesuite.run_id"] / records.METRICS)
        read = recorded["details"]["dataset"]
        assert (inp.dataset.name, inp.dataset.digest) == ("synthetic", read["digest"])
        assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}
        profile = json.loads(inp.dataset.profile)
        assert (profile["train_size"], profile["val_size"], profile["test_size"]) == (58, 6, 16)  # 64 = 58 + 6 val
        assert profile["split_digests"] == read["split_digests"]
    assert len({inp.dataset.digest for r in children
                for inp in client.get_run(r.info.run_id).inputs.dataset_inputs}) == 1  # one dataset config
    found = client.search_runs([exp.experiment_id], "dataset.name = 'synthetic'", max_results=100)
    assert {r.info.run_id for r in found} == {r.info.run_id for r in children}


def test_no_mlflow_deprecation_noise(store):
    out = store[-1]
    noise = [line for line in out.splitlines() if "Warning" in line and ("mlflow" in line.lower()
                                                                           or "sqlalchemy" in line.lower())]
    assert not noise, "\n".join(noise)
    assert "View run" not in out


def test_mirror_logs_what_the_live_run_logged(store, tmp_path):
    """The finished runs mirrored into a fresh store carry the live children's names, metric keys with their
    steps, params and tags."""
    root, client, _, runs, _ = store
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mirror.db'}"), "view", tmp_path)
    try:
        for spec in expand(parse_study(STUDY)):
            assert mirror_run(tracker, spec, root / "results" / "view" / spec.run_id, None)
    finally:
        close_trackers()
    mirror = MlflowClient(f"sqlite:///{tmp_path / 'mirror.db'}")
    mexp = mirror.get_experiment_by_name("view")
    assert mexp.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    mirrored = {r.info.run_name: r for r in mirror.search_runs([mexp.experiment_id])}
    live = {r.info.run_name: r for r in kind(runs, "run")}
    assert set(mirrored) == set(live) == RUN_NAMES
    for name, r in live.items():
        m = mirrored[name]
        assert m.data.params == r.data.params
        assert m.data.metrics.keys() == r.data.metrics.keys(), name
        for key in r.data.metrics:
            steps = sorted(h.step for h in client.get_metric_history(r.info.run_id, key))
            assert sorted(h.step for h in mirror.get_metric_history(m.info.run_id, key)) == steps, (name, key)
        # the same tags, apart from the link to the invocation (the mirror here is done outside any invocation)
        assert {k: v for k, v in m.data.tags.items() if k.startswith("spikesuite.")} == {
            k: v for k, v in r.data.tags.items() if k.startswith("spikesuite.") and k != INVOCATION_TAG}
        assert r.data.tags[INVOCATION_TAG] and "mlflow.parentRunId" not in r.data.tags  # linked, listed flat
        (live_input,) = client.get_run(r.info.run_id).inputs.dataset_inputs
        (mirrored_input,) = mirror.get_run(m.info.run_id).inputs.dataset_inputs
        assert mirrored_input.dataset.to_dictionary() == live_input.dataset.to_dictionary()


def test_old_experiment_gets_its_kind_and_description(tmp_path):
    """An experiment created before the suite tagged it (MLflow then guesses its view) is tagged when a run opens
    it; the report, which only reads the store, leaves it alone; an empty description keeps the old one."""
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("old", artifact_location=tmp_path.as_uri(), tags={DESCRIPTION_TAG: "kept"})
    Tracker(TrackingConfig(uri=uri), "old", tmp_path, create=False)
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(exp).tags
    tracker = Tracker(TrackingConfig(uri=uri), "old", tmp_path)
    tracker.describe("")
    assert client.get_experiment(exp).tags == {EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT, DESCRIPTION_TAG: "kept"}
    tracker.describe("new words")
    assert client.get_experiment(exp).tags[DESCRIPTION_TAG] == "new words"
    close_trackers()
