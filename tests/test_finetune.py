"""Run dependencies: fine-tuning from another variant (``train.init_from``), shared training for runs that differ
only in evaluation-time settings, the halting-loss warm-up, and a train-stage search over a fine-tuned recipe.

Tiny synthetic studies (depth 1, dim 16, T 2) keep the file within about a minute on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from processes import Proc, status

from suite import cli, records
from suite.config import StudyError, expand, parse_study
from suite.models.policies.tokens import loss_warmup
from suite.names import CHECKPOINT, HISTORY
from suite.run import run_study
from suite.train import load_weights

BASE = {
    "name": "ft",
    "dataset": {"name": "synthetic", "synthetic": {"train_size": 64, "test_size": 32}},
    "model": {"depth": 1, "dim": 16, "heads": 2, "T": 2},
    "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0, "lr": 5.0e-3, "min_lr": 0.0},
    "eval": {"heatmap_images": 0},
    "tracking": {"enabled": False},
}


def history_rows(run_dir: Path) -> list[dict]:
    import pandas as pd

    path = run_dir / HISTORY
    return pd.read_csv(path).to_dict("records") if path.exists() and path.stat().st_size else []


def study(variants: dict, **extra):
    return parse_study(yaml.safe_dump({**BASE, "variants": variants, **extra}))


def by_variant(specs) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in specs:
        out.setdefault(s.variant, []).append(s)
    return out


# ------------------------------------------------------------------------------------------- the graph


def test_init_from_resolves_to_the_parent_run_of_the_same_seed_and_point():
    st = study({"dense": {}, "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense"}}},
               matrix={"seed": [0, 1], "model.T": [2, 3]})
    runs = by_variant(expand(st))
    assert [s.variant for s in expand(st)][:4] == ["dense"] * 4  # parents first
    dense = {(s.config.seed, s.config.model.T): s.run_id for s in runs["dense"]}
    for child in runs["act_ft"]:
        assert child.parent == dense[(child.config.seed, child.config.model.T)]
        assert child.needs == (child.parent,)


def test_retraining_a_parent_changes_its_childrens_ids():
    variants = {"dense": {}, "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense"}}}
    before = by_variant(expand(study(variants)))
    variants["dense"] = {"train": {"epochs": 2}}  # the parent trains differently: a new parent id
    after = by_variant(expand(study(variants)))
    assert before["dense"][0].run_id != after["dense"][0].run_id
    assert before["act_ft"][0].run_id != after["act_ft"][0].run_id
    assert after["act_ft"][0].parent == after["dense"][0].run_id
    # the child's own settings are unchanged: only the parent's id moved it
    assert before["act_ft"][0].config.train == after["act_ft"][0].config.train


def test_settings_at_their_defaults_keep_every_existing_run_id():
    plain = expand(study({"act": {"tokens": {"halting": {}}}}))[0].run_id
    ramp0 = expand(study({"act": {"tokens": {"halting": {"loss_warmup_epochs": 0}}}}))[0].run_id
    ramp2 = expand(study({"act": {"tokens": {"halting": {"loss_warmup_epochs": 2}}}}))[0].run_id
    assert plain == ramp0 != ramp2


@pytest.mark.parametrize("variants, where, what", [
    ({"a": {"train": {"init_from": "nope"}}}, "variants.a.train.init_from", "unknown variant 'nope'"),
    ({"a": {"train": {"init_from": "b"}}, "b": {"train": {"init_from": "a"}}}, "variants.", "cycle"),
    ({"a": {"train": {"init_from": "a"}}}, "variants.a.train.init_from", "cycle a -> a"),
    ({"a": {"train": {"init_from": "bad name!"}}}, "variants.a.train.init_from", "unknown variant 'bad name!'"),
])
def test_bad_init_from_is_an_error_naming_the_key(variants, where, what):
    with pytest.raises(StudyError) as exc:
        study(variants)
    text = "\n".join(exc.value.problems)
    assert where in text and what in text, text


def test_a_parent_without_a_matching_run_is_an_error():
    with pytest.raises(StudyError) as exc:  # act_ft has a seed dense lacks
        study({"dense": {}, "act_ft": {"train": {"init_from": "dense"}}},
              matrix={"seed": [0, 1], "exclude": [{"variant": "dense", "seed": 1}]})
    assert any(p.startswith("variants.act_ft.train.init_from: no run of variant 'dense'") for p in exc.value.problems)


def test_bad_init_from_exits_2_from_the_cli_and_writes_nothing(tmp_path: Path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "variants": {"a": {"train": {"init_from": "ghost"}}}}))
    assert cli.main(["run", str(path), "--results", str(tmp_path / "res"), "--no-progress"]) == 2
    assert "variants.a.train.init_from" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_evaluation_only_variants_share_the_training_of_their_twin():
    specs = by_variant(expand(study({
        "dense": {}, "tome": {"eval": {"apply": {"tokens.merge": {"r": 2}}}},
        "act": {"tokens": {"halting": {}}}, "act_thr": {"tokens": {"halting": {}}, "eval": {"overrides": [
            {"name": "b", "set": {"tokens.halting.beta_offset": -2}}]}}})))
    assert specs["tome"][0].trained_by == specs["dense"][0].run_id
    assert specs["act_thr"][0].trained_by == specs["act"][0].run_id
    assert specs["dense"][0].trained_by is None and specs["act"][0].trained_by is None


# ------------------------------------------------------------------------------------------- training


def test_child_starts_from_its_parents_weights_and_shared_runs_train_once(tmp_path: Path):
    # lr ~ 0: what the child ends with is what it started from
    two = {"depth": 2}  # merging after the first of two blocks saves work in the second
    st = study({"dense": {"model": two}, "tome": {"model": two, "eval": {"apply": {"tokens.merge": {"r": 2}}}},
                "act_ft": {"model": two, "tokens": {"halting": {"learnable": True}},
                           "train": {"init_from": "dense", "lr": 1.0e-12, "weight_decay": 0.0}}})
    summary = run_study(st, tmp_path, progress=False)
    assert not summary.failed and len(summary.done) == 4  # with dense_ft, act_ft's compute-matched control
    runs = by_variant(expand(st))
    sdir = summary.study_dir
    dense, tome, child = (sdir / runs[v][0].run_id for v in ("dense", "tome", "act_ft"))
    parent_w, child_w = load_weights(dense, "cpu"), load_weights(child, "cpu")
    shared = [k for k in parent_w if k in child_w and parent_w[k].is_floating_point()
              and "running_" not in k]  # parameters: BN statistics move with every training batch, whatever lr
    assert shared and all(torch.allclose(parent_w[k], child_w[k], atol=1e-6) for k in shared)
    own = [k for k in child_w if k not in parent_w]  # the halting gate, new to the child: initialised, not copied
    assert own, "a learnable halting gate adds parameters the dense parent lacks"
    # tome trained nothing: the dense run's checkpoint (one file on disk), its history, 0 s of training
    assert os.path.samefile(dense / CHECKPOINT, tome / CHECKPOINT) or \
        (dense / CHECKPOINT).read_bytes() == (tome / CHECKPOINT).read_bytes()
    assert status(tome)["trained_by"] == dense.name
    metrics = records.read_json(tome / records.METRICS)
    assert metrics["metrics"]["train_time_s"] == 0.0 and metrics["details"]["trained_by"] == dense.name
    assert (tome / HISTORY).read_text() == (dense / HISTORY).read_text()
    merged = records.read_json(dense / records.METRICS)["metrics"]["token_pct"]
    assert metrics["metrics"]["token_pct"] < merged  # evaluated with its own (merging) settings


def test_a_failed_parent_fails_its_children_with_the_reason(tmp_path: Path):
    st = study({"dense": {"train": {"epochs": 2, "inject_fault": "error"}},
                "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense"}},
                "act_ft2": {"tokens": {"halting": {}}, "train": {"init_from": "act_ft"}},
                "other": {"tokens": {"drop": {"keep_ratio": 0.5}}}})
    summary = run_study(st, tmp_path, progress=False)
    runs = {s.variant: s for s in expand(st)}
    # the compute-matched controls (dense_ft, act_ft_ft) fine-tune from the failed chain too
    assert set(summary.failed) == {runs[v].run_id for v in ("dense", "act_ft", "act_ft2", "dense_ft", "act_ft_ft")}
    assert summary.done == [runs["other"].run_id]
    reason = summary.failed[runs["act_ft"].run_id]
    assert f"parent run {runs['dense'].run_id} failed: InjectedFault" in reason
    child_dir = summary.study_dir / runs["act_ft"].run_id
    assert not (child_dir / CHECKPOINT).exists() and status(child_dir)["state"] == "failed"
    assert f"parent run {runs['act_ft'].run_id} failed" in summary.failed[runs["act_ft2"].run_id]


def test_two_workers_run_parents_before_children(tmp_path: Path):
    st = study({"dense": {}, "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense"}},
                "drop_ft": {"tokens": {"drop": {"keep_ratio": 0.5}}, "train": {"init_from": "dense"}}},
               matrix={"seed": [0, 1]})
    summary = run_study(st, tmp_path, progress=False, workers=2)
    assert not summary.failed
    for spec in expand(st):
        run_dir = summary.study_dir / spec.run_id
        assert records.run_state(run_dir, spec.run_id) == "done"
        if spec.parent:  # the child started after its parent had finished
            assert status(summary.study_dir / spec.parent)["time"] < (run_dir / HISTORY).stat().st_mtime


def test_kill_9_during_a_child_resumes_it(tmp_path: Path):
    epochs = 5
    raw = {**BASE, "train": {**BASE["train"], "epochs": 1},
           "variants": {"dense": {}, "act_ft": {"tokens": {"halting": {}},
                                                "train": {"init_from": "dense", "epochs": epochs}}}}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = {s.variant: s for s in expand(parse_study(path.read_text()))}
    child = tmp_path / "res" / "ft" / runs["act_ft"].run_id
    p = Proc(path, tmp_path / "res", tmp_path / "first")
    p.wait_until(lambda: len(history_rows(child)) >= 2, "the child's second epoch", timeout=600)  # a loaded CI box
    p.kill()
    assert records.run_state(child, runs["act_ft"].run_id) == "running"
    again = Proc(path, tmp_path / "res", tmp_path / "second")
    assert again.wait() == 0, again.stderr[-3000:]
    # its own checkpoint, not the parent's (dense_ft, act_ft's compute-matched control, starts from the parent)
    assert "(resuming)" in again.stderr and "act_ft starts from run" not in again.stderr
    assert len(history_rows(child)) == epochs
    assert records.run_state(child, runs["act_ft"].run_id) == "done"


# ------------------------------------------------------------------------------------------- schedules


def test_loss_warmup_ramps_linearly_then_holds():
    from suite.config import HaltingConfig

    assert loss_warmup(None, 0.0) == loss_warmup(HaltingConfig(), 0.0) == 1.0
    hc = HaltingConfig(loss_warmup_epochs=2)
    assert [loss_warmup(hc, e) for e in (0.0, 0.5, 1.0, 2.0, 5.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]


def test_a_warmed_up_ponder_loss_is_smaller_in_the_first_epoch(tmp_path: Path):
    halting = {"ponder_weight": 0.05}
    st = study({"act": {"tokens": {"halting": halting}},
                "act_ramp": {"tokens": {"halting": {**halting, "loss_warmup_epochs": 2}}}})
    summary = run_study(st, tmp_path, progress=False)
    rows = {s.variant: history_rows(summary.study_dir / s.run_id)[0] for s in expand(st)}
    # the ramp averages 0..0.5 over the first epoch: a quarter of the full weight on the same kind of model
    assert float(rows["act_ramp"]["train_ponder"]) < 0.5 * float(rows["act"]["train_ponder"])


def test_train_stage_search_over_a_fine_tuned_recipe(tmp_path: Path):
    from suite.search import run_search

    st = study({"dense": {}, "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense"}}},
               search={"variants": ["act_ft"], "stage": "train", "n_trials": 2, "seed": 0,
                       "objectives": [{"metric": "accuracy", "direction": "maximize"}],
                       "params": {"tokens.halting.ponder_weight": {"log_uniform": [1.0e-4, 1.0e-2]},
                                  "tokens.halting.prior_weight": {"log_uniform": [1.0e-4, 1.0e-2]},
                                  "tokens.halting.beta": {"uniform": [4.0, 12.0]},
                                  "train.epochs": {"choice": [1, 2]}}})
    run_search(st, tmp_path, progress=False)
    parent = by_variant(expand(st))["dense"][0]
    sdir = tmp_path / "ft"
    assert records.run_state(sdir / parent.run_id, parent.run_id) == "done"  # trained first, for the trials
    trial_runs = [s for s in records.read_specs(sdir) if "trial" in s.axes]
    assert len(trial_runs) == 2 and all(s.parent == parent.run_id for s in trial_runs)
    for spec in trial_runs:  # scored on the validation split, recorded beside the run
        ev = records.read_json(sdir / spec.run_id / "evals" / f"trial{spec.axes['trial']}.json")
        assert ev["set"]["eval.split"] == "val"
