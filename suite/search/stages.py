"""What a trial runs. ``EvalStage``: the trained checkpoints of the chosen variant's runs (all seeds), evaluated
with the trial's evaluation-time settings (runs not trained yet are trained first, through ``wait_for``).
``TrainStage``: one full run per seed through ``run_one``, its epochs reported to the trial (``PruningCallback``),
then scored like an eval-stage trial on ``search.split``.
Torch is imported only inside the functions that evaluate."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from suite import records
from suite.config import RunSpec, StudyError, apply_overrides, eval_updates, run_id
from suite.names import CHECKPOINT, METRICS, STATUS
from suite.run.local import wait_for
from suite.run.study import study_units, with_needs
from suite.run.unit import RunUnit, run_one
from suite.search.part import Part, SearchFailed, TrialFailed
from suite.search.space import EPOCH_METRIC
from suite.tracking import TrackingTarget

log = logging.getLogger("spikesuite")


def train_first(part: Part, specs: list[RunSpec], what: str, *, parent: str | None = None,
                since: float = math.inf) -> dict[str, str]:
    """Train the runs of ``specs`` not finished yet and the runs they need, by the executor of ``spikesuite run``
    (``wait_for``: claimed by lock, concurrent workers share the work and wait for each other); ``what`` is logged
    with their count. Returns the reasons of those that failed, by run id."""
    todo = [s for s in with_needs(specs, part.specs) if records.run_state(part.sdir / s.run_id, s.run_id) != "done"]
    if not todo:
        return {}
    log.info(what, len(todo))
    units = study_units(part.study, todo, part.sdir, part.results, device=part.device, progress=part.progress,
                        parent=parent, since=since)
    return {r.run_id: r.reason for r in wait_for(units) if r.outcome == "failed"}


class EvalStage:
    """Eval-stage trials: re-evaluate trained checkpoints (loaded once each, datasets once per config)."""

    def __init__(self, part: Part, parent: str | None = None, since: float = float("inf")):
        self.part = part
        self.parent = parent  # the invocation's MLflow run: runs trained here nest under it
        self.since = since  # a run recorded as failed after this moment failed during this search: not retried
        self._states: dict[str, Any] = {}

    def ensure_trained(self) -> None:
        """The search variants' runs must be finished with a checkpoint. Missing ones are trained here by the
        executor of ``spikesuite run`` (claimed by lock: concurrent workers share the work and wait for each
        other); failed ones stop the search."""
        part = self.part
        specs = [s for runs in part.by_variant.values() for s in runs]
        failed = train_first(part, specs, f"eval-stage search: training %d run(s) of {', '.join(part.search.variants)}"
                             " first", parent=self.parent, since=self.since)
        failed.update({s.run_id: (records.read_json(part.sdir / s.run_id / STATUS) or {}).get("reason", "")
                       for s in specs if records.run_state(part.sdir / s.run_id, s.run_id) == "failed"})
        if failed:
            raise SearchFailed("the runs an eval-stage search evaluates failed to train:\n" + "\n".join(
                f"  {rid}: {why}" for rid, why in failed.items()))
        missing = [s.run_id for s in specs if not (part.sdir / s.run_id / CHECKPOINT).exists()]
        if missing:
            raise SearchFailed(f"runs {', '.join(missing)} are finished but have no {CHECKPOINT}; delete their "
                               f"directories under {part.sdir} and search again to retrain them")
        have = sorted((records.read_json(part.sdir / specs[0].run_id / METRICS) or {}).get("metrics", {}))
        bad = [f"search.objectives.{i}.metric: {m!r} is not a metric of the runs (have: {', '.join(have)})"
               for i, m in enumerate(part.metrics) if m not in have]
        if bad:
            raise StudyError(part.source, bad)

    def run(self, trial, variant: str, params: dict[str, Any], child: str | None) -> dict[str, dict[str, float]]:
        # Score on search.split (val by default) so the Pareto set is not chosen on the test images.
        return {spec.run_id: self.evaluate(spec, f"trial{trial.number}", params, self.part.search.split)
                for spec in self.part.by_variant[variant]}

    def evaluate(self, spec: RunSpec, name: str, params: dict[str, Any], split: str) -> dict[str, float]:
        """The run's checkpoint evaluated on ``split`` with a trial's settings, recorded as ``evals/<name>.json``."""
        from suite.evaluate import evaluate_checkpoint
        from suite.train import pick_device

        run_dir = self.part.sdir / spec.run_id
        updates = eval_updates(spec.config, {**params, "eval.split": split})
        res = evaluate_checkpoint(spec.config, self._weights(spec), self._dataset(spec.config.dataset, split),
                                  pick_device(self.part.device), updates)
        records.write_eval(run_dir, name, updates, res.metrics, res.details)
        return res.metrics

    def forget(self, run_id: str) -> None:
        """Drop a run's loaded weights (a train-stage trial's run is scored once)."""
        self._states.pop(run_id, None)

    def _weights(self, spec: RunSpec):
        if spec.run_id not in self._states:
            from suite.train import load_weights, pick_device

            self._states[spec.run_id] = load_weights(self.part.sdir / spec.run_id, pick_device(self.part.device))
        return self._states[spec.run_id]

    def _dataset(self, cfg, split: str):
        """The run's data; on the validation split, its first ``search.val_images`` images when set (the split is
        in class-stratified order, so every prefix is close to class-balanced)."""
        import dataclasses

        from torch.utils.data import Subset

        from suite.data import cached_data

        data = cached_data(cfg)
        n = self.part.search.val_images
        if split != "val" or n is None or data.val is None or len(data.val) <= n:
            return data
        return dataclasses.replace(data, val=Subset(data.val, range(n)))


class PruningCallback:
    """A train-stage run's epoch callback: reports each epoch's validation value ``key`` to the trial at step
    ``offset + epoch`` (a variant's runs follow each other) and raises TrialPruned when the median pruner says so;
    ``run_one`` then records the run as failed with that reason (it resumes from its checkpoint if a later trial
    asks for it). ``pruned`` keeps why."""

    def __init__(self, trial, key: str | None, offset: int):
        self.trial, self.key, self.offset = trial, key, offset
        self.pruned: str | None = None

    def __call__(self, row: dict[str, float]) -> None:
        if self.key is None or "epoch" not in row or self.key not in row:
            return
        import optuna

        value = float(row[self.key])
        self.trial.report(value, self.offset + int(row["epoch"]))
        if self.trial.should_prune():
            self.pruned = f"pruned by the median pruner at epoch {int(row['epoch'])} ({self.key}={value:.4g})"
            raise optuna.TrialPruned(self.pruned)


class TrainStage:
    """Train-stage trials: a full run per seed with the trial's settings, identified by its run id (a config
    already finished is reused, not retrained), nested in MLflow under the trial's run. A variant that fine-tunes
    (``train.init_from``) has its trials start from the study's parent runs, trained first when missing."""

    def __init__(self, part: Part):
        self.part = part
        self.scorer = EvalStage(part)

    def score(self, spec: RunSpec, number: int) -> dict[str, float]:
        """A trained trial run evaluated on ``search.split`` (val by default: the recipe is chosen on validation
        images; the run's own metrics.json keeps its test numbers), recorded as ``evals/trial<n>.json``."""
        try:
            return self.scorer.evaluate(spec, f"trial{number}", {}, self.part.search.split)
        finally:
            self.scorer.forget(spec.run_id)  # one checkpoint per trial run: do not keep them all

    def ensure_parents(self, variant: str) -> None:
        part = self.part
        runs = part.by_variant[variant]
        parents = [s for s in with_needs(runs, part.specs) if s not in runs]
        failed = train_first(part, parents, f"train-stage search: training the %d run(s) {variant} fine-tunes from "
                                            "first")
        if failed:
            raise SearchFailed(f"the runs {variant} fine-tunes from failed to train:\n  " + "\n  ".join(
                f"{rid}: {why}" for rid, why in failed.items()))

    def run(self, trial, variant: str, params: dict[str, Any], child: str | None) -> dict[str, dict[str, float]]:
        part, study = self.part, self.part.study
        key = EPOCH_METRIC.get(part.metrics[0]) if part.search.pruner == "median" else None
        tracking = TrackingTarget(study.tracking, study.name, part.results, child)
        per_run, reused = {}, []
        self.ensure_parents(variant)
        for i, base in enumerate(part.by_variant[variant]):
            cfg = apply_overrides(base.config, params)
            spec = RunSpec(study.name, run_id(cfg), cfg,
                           {**base.axes, **params, "search": part.name, "trial": trial.number})
            unit = RunUnit(spec, part.sdir, device=part.device, progress=part.progress,
                           oom_retry=study.execution.oom_retry, tracking=tracking)
            pruning = PruningCallback(trial, key, i * cfg.train.epochs)
            if records.run_state(unit.run_dir, spec.run_id) != "done":
                log.info("trial %d: run %s (%s seed %d)", trial.number, spec.run_id, variant, cfg.seed)
            while records.run_state(unit.run_dir, spec.run_id) != "done":
                result = run_one(unit, callbacks=[pruning])
                if pruning.pruned:
                    import optuna

                    raise optuna.TrialPruned(pruning.pruned)
                if result.outcome == "busy":  # another worker runs this config: wait for its result
                    time.sleep(1)
                    continue
                if result.outcome == "failed":
                    raise TrialFailed(f"run {spec.run_id} failed: {result.reason}")
                break  # trained now (or finished by another process while we waited for its lock)
            else:  # finished before this trial asked for it (by an earlier trial, or another worker)
                reused.append(spec.run_id)
            per_run[spec.run_id] = self.score(spec, trial.number)
        trial.set_user_attr("reused", reused)
        return per_run
