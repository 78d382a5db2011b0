"""Optuna searches (suite.search) with real components: sqlite, journal and PostgreSQL storages, the
executor and records of `spikesuite run`, a real MLflow store. Tiny digits subsets, depth 1, 1 epoch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from suite import records, report
from suite.cli import main
from suite.config import expand, parse_study
from suite.search.storage import with_driver

STUDY = """
name: srch
dataset: {name: digits, train_subset: 240, test_subset: 80, val_fraction: 0.1}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 40, lr: 5.0e-3, warmup_epochs: 0, min_lr: 1.0e-4}
eval: {heatmap_images: 0}
execution: {progress: false}
variants:
  act: {tokens: {halting: {}}}
matrix: {seed: [0, 1]}
search:
  variants: [act]
  objectives: [{metric: accuracy, direction: maximize}, {metric: token_pct, direction: minimize}]
  params:
    tokens.halting.beta_offset: {uniform: [-20.0, 0.0]}
    tokens.halting.eps: {log_uniform: [0.001, 0.5]}
  n_trials: 3
  sampler: random
  heartbeat_s: 1
"""
PARAMS = {"tokens.halting.beta_offset": optuna.distributions.FloatDistribution(-20.0, 0.0),
          "tokens.halting.eps": optuna.distributions.FloatDistribution(0.001, 0.5, log=True)}


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each test's store lives under its results


def write(tmp_path: Path, text: str = STUDY) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def mlflow_runs(results: Path, kind: str) -> list:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("srch")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`spikesuite.kind` = '{kind}'",
                              max_results=1000)


def dominates(a: pd.Series, b: pd.Series) -> bool:
    """a is at least as good as b in both objectives and better in one (accuracy max, token_pct min)."""
    return (a.accuracy >= b.accuracy and a.token_pct <= b.token_pct
            and (a.accuracy > b.accuracy or a.token_pct < b.token_pct))


def test_eval_search_pareto_mlflow_and_resume(tmp_path):
    path, results = write(tmp_path), tmp_path / "results"
    assert main(["search", str(path), "--results", str(results)]) == 0
    sdir = results / "srch"
    trials = pd.read_csv(sdir / "search" / "trials.csv")
    assert list(trials.trial) == [0, 1, 2] and set(trials.state) == {"COMPLETE"}
    pareto = pd.read_csv(sdir / "search" / "pareto.csv")
    assert {"trial", "variant", "accuracy", "token_pct", *PARAMS} <= set(pareto.columns)
    front = set(pareto.trial)
    assert front and front <= set(trials.trial)
    for _, t in trials.iterrows():  # exactly the non-dominated trials
        assert (t.trial in front) == (not any(dominates(o, t) for _, o in trials.iterrows()))
    for ext in ("png", "pdf"):
        assert (sdir / "search" / f"pareto.{ext}").stat().st_size > 0
    # each trial evaluated both seeds' checkpoints, recorded beside the runs; objectives are their mean
    evals = pd.read_csv(sdir / records.EVALS_TABLE)
    specs = expand(parse_study(STUDY))
    for _, t in trials.iterrows():
        mine = evals[evals.override == f"trial{t.trial}"]
        assert sorted(mine.run_id) == sorted(s.run_id for s in specs)
        assert mine.accuracy.mean() == pytest.approx(t.accuracy)
        assert mine.token_pct.mean() == pytest.approx(t.token_pct)
        assert json.loads(mine.set.iloc[0])["tokens.halting.eps"] == pytest.approx(t["tokens.halting.eps"])
    assert set(pd.read_csv(sdir / records.RUNS_TABLE).status) == {"done"}
    # the figure's Pareto set is computed from trials.csv alone and equals Optuna's best_trials
    assert set(trials.trial[report.nondominated(trials[["accuracy", "token_pct"]].to_numpy(), [True, False])]) == front
    # trials scored on val; each Pareto trial's settings were also evaluated on test, and only those
    assert set(json.loads(s)["eval.split"] for s in evals[evals.override.str.fullmatch(r"trial\d+")].set) == {"val"}
    tested = evals[evals.override.str.endswith("-test")]
    points = pareto.sort_values("trial").drop_duplicates(["accuracy", "token_pct"]).trial  # ties: the first
    assert set(tested.override) == {f"trial{n}-test" for n in points}
    for name, g in tested.groupby("override"):
        assert sorted(g.run_id) == sorted(s.run_id for s in specs)
        setting = json.loads(g.set.iloc[0])
        val = json.loads(evals[evals.override == name.removesuffix("-test")].set.iloc[0])
        assert setting == {**val, "eval.split": "test"}
    # the report draws the search from its records and keeps val-split numbers out of the test-split table
    report.build_report(sdir, mlflow=False)
    assert (sdir / "report" / "search_pareto.png").stat().st_size > 0
    evals_md = (sdir / "report" / "evals.md").read_text()
    assert "trial0 |" not in evals_md and f"trial{min(front)}-test" in evals_md
    assert f"{len(trials) * 2} evaluation(s) on another split than test" in evals_md

    # MLflow: one invocation parent, one child per trial under it, params and objective values logged
    (parent,) = [r for r in mlflow_runs(results, "invocation") if r.data.tags.get("spikesuite.search")]
    children = mlflow_runs(results, "trial")
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == [0, 1, 2]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    for r in children:
        t = trials.set_index("trial").loc[int(r.data.tags["trial_number"])]
        assert r.data.metrics["accuracy"] == pytest.approx(t.accuracy)
        assert float(r.data.params["tokens.halting.beta_offset"]) == pytest.approx(t["tokens.halting.beta_offset"])
        assert r.info.status == "FINISHED"
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "search")} >= {
        "search/pareto.csv", "search/pareto.png", "search/pareto.pdf"}

    # resume: the study keeps its trials and grows to the new total; the same total again adds nothing
    assert main(["search", str(path), "--results", str(results), "--n-trials", "5"]) == 0
    again = pd.read_csv(sdir / "search" / "trials.csv")
    assert list(again.trial) == [0, 1, 2, 3, 4] and set(again.state) == {"COMPLETE"}
    pd.testing.assert_frame_equal(again.iloc[:3][list(PARAMS)], trials[list(PARAMS)])
    assert again.iloc[3]["tokens.halting.beta_offset"] not in set(trials["tokens.halting.beta_offset"])
    assert main(["search", str(path), "--results", str(results), "--n-trials", "5"]) == 0
    assert len(pd.read_csv(sdir / "search" / "trials.csv")) == 5
    pareto = pd.read_csv(sdir / "search" / "pareto.csv")  # trials that left the front lose their test rows
    points = pareto.sort_values("trial").drop_duplicates(["accuracy", "token_pct"]).trial
    tested = {p.name for p in sdir.glob("*/evals/*-test.json")}
    assert tested == {f"trial{n}-test.json" for n in points}
    parents = [r for r in mlflow_runs(results, "invocation") if r.data.tags.get("spikesuite.search")]
    per_parent = sorted(sum(c.data.tags["mlflow.parentRunId"] == p.info.run_id for c in mlflow_runs(results, "trial"))
                        for p in parents)
    assert per_parent == [0, 2, 3]
    study = optuna.load_study(study_name="srch-eval", storage=f"sqlite:///{sdir / 'optuna.db'}")
    assert study.metric_names == ["accuracy", "token_pct"]


def test_per_variant_search_gives_each_variant_its_own_study(tmp_path):
    text = STUDY.replace("  act: {tokens: {halting: {}}}", "  act: {tokens: {halting: {}}}\n  merge: {tokens: {merge: {r: 1}}}")
    text = text.replace("matrix: {seed: [0, 1]}", "matrix: {seed: [0]}")
    text = text.replace("  variants: [act]", "  variants: [act, merge]\n  per_variant: true")
    text = text.replace("  params:\n", "  params:\n    tokens.merge.r: {int: [0, 3]}\n")
    path, results = write(tmp_path, text), tmp_path / "results"
    assert main(["search", str(path), "--results", str(results)]) == 0
    sdir = results / "srch"
    act = pd.read_csv(sdir / "search" / "act" / "trials.csv")
    merge = pd.read_csv(sdir / "search" / "merge" / "trials.csv")
    assert len(act) == len(merge) == 3 and set(act.variant) == {"act"} and set(merge.variant) == {"merge"}
    assert {"tokens.halting.beta_offset", "tokens.halting.eps"} <= set(act.columns) and "tokens.merge.r" not in act
    assert "tokens.merge.r" in merge and "tokens.halting.eps" not in merge  # only the parameters that apply
    storage = f"sqlite:///{sdir / 'optuna.db'}"
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage)) == ["srch-eval-act", "srch-eval-merge"]
    report.build_report(sdir, mlflow=False)
    for v in ("act", "merge"):
        assert (sdir / "search" / v / "pareto.png").exists()
        assert (sdir / "report" / f"search_pareto_{v}.png").stat().st_size > 0


@pytest.mark.parametrize("edit, expected", [
    (("tokens.halting.eps: {log", "train.lr: {log"), "search.params.train.lr: not an evaluation-time setting"),
    (("variants: [act]", "variants: [nope]"), "search.variants.0: unknown variant 'nope'"),
    (("sampler: random", "sampler: random\n  pruner: median"), "search.pruner: median pruning needs stage: train"),
    (("sampler: random", "sampler: grid"), "search.params.tokens.halting.beta_offset: the grid sampler needs a choice"),
    (("tokens.halting.eps: {log_uniform: [0.001, 0.5]}", "tokens.halting.gamma: {uniform: [1.0, 2.0]}"),
     "search.params.tokens.halting.gamma: not an evaluation-time setting"),
    (("log_uniform: [0.001, 0.5]", "uniform: [-1.0, 0.5]"), "search.params.tokens.halting.eps: -1.0 gives an invalid"),
    (("tokens: {halting: {}}", "time: {mask: {}}"), "search.params.tokens.halting.beta_offset: applies to none"),
    (("metric: token_pct, direction: minimize", "metric: accuracy, direction: minimize"),
     "search.objectives.1.metric: 'accuracy' is already an objective"),
])

def test_bad_search_blocks_exit_2_before_writing(tmp_path, capsys, edit, expected):
    path, results = write(tmp_path, STUDY.replace(*edit)), tmp_path / "results"
    assert main(["search", str(path), "--results", str(results)]) == 2
    assert expected in capsys.readouterr().err
    assert not results.exists()


def test_train_stage_trials_are_runs_and_repeats_reuse_them(tmp_path):
    text = STUDY.replace("matrix: {seed: [0, 1]}", "matrix: {seed: [0]}").replace("""  objectives: [{metric: accuracy, direction: maximize}, {metric: token_pct, direction: minimize}]
  params:
    tokens.halting.beta_offset: {uniform: [-20.0, 0.0]}
    tokens.halting.eps: {log_uniform: [0.001, 0.5]}""", """  stage: train
  objectives: [{metric: accuracy, direction: maximize}]
  pruner: median
  params:
    tokens.halting.ponder_weight: {choice: [0.0005, 0.002]}""")
    path, results = write(tmp_path, text), tmp_path / "results"
    assert main(["search", str(path), "--results", str(results)]) == 0
    sdir = results / "srch"
    study = optuna.load_study(study_name="srch-train", storage=f"sqlite:///{sdir / 'optuna.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3  # 3 trials over 2 choices: at least one config repeats
    run_of = {t.number: t.user_attrs["runs"][0] for t in trials}
    assert len(set(run_of.values())) == len({t.params["tokens.halting.ponder_weight"] for t in trials}) < 3
    runs = pd.read_csv(sdir / records.RUNS_TABLE).set_index("run_id")
    matrix_run = expand(parse_study(text))[0].run_id
    for t in trials:
        rid = run_of[t.number]
        assert runs.loc[rid, "status"] == "done"
        scored = records.read_json(sdir / rid / "evals" / f"trial{t.number}.json")  # on validation, not test
        assert scored["set"]["eval.split"] == "val" and scored["metrics"]["accuracy"] == pytest.approx(t.value)
        cfg = (sdir / rid / records.CONFIG).read_text()
        assert f"ponder_weight: {t.params['tokens.halting.ponder_weight']}" in cfg
        assert json.loads((sdir / rid / records.STATUS).read_text())["attempts"] == 1  # trained once
        # the default ponder weight resolves to the matrix run's config, hence its id
        assert (rid == matrix_run) == (t.params["tokens.halting.ponder_weight"] == 0.0005)
    first = {}
    for t in sorted(trials, key=lambda t: t.number):
        rid = run_of[t.number]
        if rid in first:  # a repeat: reused, not retrained, and nothing reported to the pruner
            assert t.user_attrs["reused"] == [rid] and not t.intermediate_values
        else:
            first[rid] = t.number
            assert t.user_attrs["reused"] == []
            val = pd.read_csv(sdir / rid / records.HISTORY).val_acc.tolist()
            assert [t.intermediate_values[k] for k in sorted(t.intermediate_values)] == pytest.approx(val)
    for rid, number in first.items():  # the trial's runs are rows of runs.csv (the matrix run keeps its axes)
        if rid != matrix_run:
            assert runs.loc[rid, "search"] == "srch-train" and runs.loc[rid, "trial"] == number
    # MLflow: each trained run is nested under the trial that trained it
    trial_runs = {r.info.run_id: int(r.data.tags["trial_number"]) for r in mlflow_runs(results, "trial")}
    nested = mlflow_runs(results, "run")
    assert len(nested) == len(first)
    assert sorted(trial_runs[r.data.tags["mlflow.parentRunId"]] for r in nested) == sorted(first.values())


def test_median_pruning_reports_epochs_and_prunes(tmp_path):
    """The train stage's epoch callback: run_one calls it with each finished epoch's row; it reports the
    validation value to the trial and raises TrialPruned when the pruner says so."""
    from suite.search.stages import PruningCallback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    reporter = PruningCallback(good, "val_acc", offset=0)
    reporter({"epoch": 1, "val_acc": 60.0, "train_loss": 1.0})
    reporter({"accuracy": 61.0})  # final metrics: not an epoch row, not reported
    study.tell(good, 61.0)
    assert good.number == 0 and study.trials[0].intermediate_values == {1: 60.0}
    bad = study.ask()
    reporter = PruningCallback(bad, "val_acc", offset=0)
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        reporter({"epoch": 1, "val_acc": 20.0})
    assert reporter.pruned and study.trials[1].intermediate_values == {1: 20.0}
    second_run = PruningCallback(study.ask(), "val_acc", offset=2)  # a variant's 2nd run: steps 3, 4, ..
    second_run({"epoch": 1, "val_acc": 20.0})  # no trial has step 3 yet: no verdict
    assert study.trials[2].intermediate_values == {3: 20.0} and not second_run.pruned


# ---------------------------------------------------------------------------------------------- workers


def start_workers(study: Path, results: Path, storage: str, n_trials: int, n: int = 2) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "suite", "worker", str(study), "--results", str(results), "--storage", storage,
           "--n-trials", str(n_trials)]
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(n)]


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


def orphan_trial(storage, *, worker: str | None = None, beat: bool = False) -> int:
    """A trial left RUNNING by a worker that died: on this machine (dead pid) or silent (no heartbeat)."""
    study = optuna.create_study(study_name="srch-eval", storage=storage, directions=["maximize", "minimize"],
                                load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Heartbeat of storage is supposed to be used with optimize"
        trial = study.ask(PARAMS)
    if worker:
        trial.set_user_attr("worker", worker)
    if beat:
        study_id = storage.get_study_id_from_name("srch-eval")
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    return trial.number


def check_shared_search(study, results: Path, n_trials: int, orphan: int) -> None:
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n_trials + 1))  # no duplicate numbers
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials  # the workers together ran exactly the budget
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.number == orphan and "error" not in dead.user_attrs  # not a trial error: its worker died
    (retry,) = [t for t in complete if t.system_attrs.get("failed_trial") == orphan]
    assert retry.params == dead.params  # the dead worker's trial was run again, same parameters
    sdir = results / "srch"
    for spec in expand(parse_study(STUDY)):  # the two workers trained the runs once between them
        assert json.loads((sdir / spec.run_id / records.STATUS).read_text())["attempts"] == 1
        assert sorted(p.stem for p in (sdir / spec.run_id / "evals").glob("trial*[0-9].json")) == sorted(
            f"trial{t.number}" for t in complete)  # (plus trial<N>-test of the Pareto trials)
    parents = [r for r in mlflow_runs(results, "invocation") if r.data.tags.get("spikesuite.search")]
    assert len(parents) == 2 and {r.data.tags["search.role"] for r in parents} == {"worker"}
    assert sorted(int(r.data.tags["trial_number"]) for r in mlflow_runs(results, "trial")) == sorted(
        t.number for t in complete)
    assert len(pd.read_csv(sdir / "search" / "trials.csv")) == n_trials + 1


def test_two_workers_share_a_journal_storage(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path, results, journal = write(tmp_path), tmp_path / "results", tmp_path / "j.log"
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id on this machine that no longer runs
    orphan = orphan_trial(JournalStorage(JournalFileBackend(str(journal))), worker=f"{socket.gethostname()}:{gone.pid}")
    wait_all(start_workers(path, results, f"journal:{journal}", n_trials=4))
    check_shared_search(optuna.load_study(study_name="srch-eval", storage=JournalStorage(
        JournalFileBackend(str(journal)))), results, 4, orphan)


def test_two_workers_share_a_postgresql_server(tmp_path, postgres_url):
    from optuna.storages import RDBStorage

    path, results = write(tmp_path), tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(with_driver(postgres_url), heartbeat_interval=1)
    orphan = orphan_trial(storage, beat=True)  # one heartbeat, then silence: stale after 2 s
    storage.engine.dispose()
    time.sleep(2.5)
    wait_all(start_workers(path, results, postgres_url, n_trials=4))
    check_shared_search(optuna.load_study(study_name="srch-eval", storage=with_driver(postgres_url)), results, 4,
                        orphan)
