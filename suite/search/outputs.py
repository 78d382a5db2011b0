"""What a search leaves behind: the trials and Pareto tables (``trials.csv``, ``pareto.csv``) and figure, the
Pareto trials of an eval-stage search evaluated on the study's own split, the study's runs table (trial runs
included), and an MLflow run per trial (``TrialRuns``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from suite import records
from suite.config import RunSpec
from suite.names import ERROR_TAG, EVALS, KIND_TAG, PARETO_TABLE, SEARCH_TAG, STUDY_TAG, TRIALS_TABLE
from suite.search.part import ERROR_ATTR, VARIANT_ATTR, WORKER_ATTR, Part
from suite.search.space import trial_params
from suite.tracking import Tracker

log = logging.getLogger("spikesuite")

# EvalStage.evaluate: a run's checkpoint evaluated with a trial's settings on a split, recorded under a name
Evaluate = Callable[[RunSpec, str, dict[str, Any], str], dict[str, float]]


class TrialRuns:
    """A child MLflow run per trial under the invocation's run (tag ``spikesuite.kind=trial``): its parameters at
    the start, its state, objective values and error at the end. Does nothing with tracking off."""

    def __init__(self, tracker: Tracker, part: Part, parent: str | None):
        self.tracker, self.part, self.parent = tracker, part, parent

    def start(self, trial, variant: str, params: dict[str, Any]) -> str | None:
        if not self.tracker.enabled:
            return None
        tags = {KIND_TAG: "trial", STUDY_TAG: self.part.study.name, SEARCH_TAG: self.part.name,
                "trial_number": str(trial.number), "variant": variant, "stage": self.part.search.stage}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        # through the Tracker: a store that fails mid-search warns once and switches tracking off, it never
        # fails the trials
        return self.tracker.create_run(f"trial-{trial.number}", tags, {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in {"variant": variant, **params}.items()})

    def finish(self, child: str | None, state: str, values: dict[str, float] | None, error: str | None,
               status: str | None = None) -> None:
        if child is None:
            return
        if values:
            self.tracker.log_metrics(child, values)
        self.tracker.set_tag(child, "state", state)
        if error:
            self.tracker.set_tag(child, ERROR_TAG, error[:4000])
        self.tracker.finish(child, status or ("FAILED" if state == "FAIL" else "FINISHED"))


# ---------------------------------------------------------------------------------------------- tables


def trials_frame(ostudy, metrics: list[str]) -> pd.DataFrame:
    """One row per trial of the study, every state: params, objective values (named by metric), error."""
    rows = []
    for t in ostudy.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name,
                               "variant": t.user_attrs.get(VARIANT_ATTR, t.params.get("variant", ""))}
        row.update({k: v for k, v in t.params.items() if k != "variant"})
        for i, m in enumerate(metrics):
            row[m] = t.values[i] if t.values is not None else None
            if f"{m}_std" in t.user_attrs:
                row[f"{m}_std"] = t.user_attrs[f"{m}_std"]
        error = t.user_attrs.get(ERROR_ATTR, "")
        if t.state.name == "FAIL" and not error:
            error = "interrupted" if t.user_attrs.get("interrupted") else "its worker died (retried)"
        row.update(error=error, runs=" ".join(t.user_attrs.get("runs", [])),
                   retry_of=t.system_attrs.get("failed_trial", ""), worker=t.user_attrs.get(WORKER_ATTR, ""),
                   duration_s=t.duration.total_seconds() if t.duration is not None else None)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial", "state", "variant", *metrics, "error"])


def pareto_frame(ostudy, metrics: list[str]) -> pd.DataFrame:
    """The non-dominated complete trials (``study.best_trials``): trial number, variant, params, objectives."""
    from optuna.trial import TrialState

    best = ostudy.best_trials if ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else []
    rows = []
    for t in sorted(best, key=lambda t: t.number):
        row: dict[str, Any] = {"trial": t.number, "variant": t.user_attrs.get(VARIANT_ATTR, t.params.get("variant"))}
        row.update({k: v for k, v in t.params.items() if k != "variant"})
        row.update(dict(zip(metrics, t.values)))
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else ["trial", "variant", *metrics])
    if rows:
        df = df.sort_values(metrics[0], ascending=ostudy.directions[0].name == "MINIMIZE", kind="stable")
    return df.reset_index(drop=True)


def trial_specs(part: Part) -> list[RunSpec]:
    """The runs of the part's train-stage trials (any worker, any invocation), from their records."""
    return [s for s in records.read_specs(part.sdir) if s.axes.get("search") == part.name]


def evaluate_front(part: Part, ostudy, pareto: pd.DataFrame, evaluate: Evaluate) -> None:
    """Eval stage, trials scored on another split than the study's: evaluate each Pareto trial's settings
    on the study's split too (``evals/trial<N>-<split>.json``, beside the runs), so the chosen operating
    points get honest held-out numbers in evals.csv and the report. Trials with equal objective values
    are one point: only the lowest-numbered is evaluated. Files of trials that left the front
    are removed; existing ones are kept (same checkpoint and settings give the same numbers)."""
    split = part.study.eval.split
    if part.search.stage != "eval" or part.search.split == split:
        return
    # trials that tie on every objective are one operating point: the first of them stands for it
    front = {int(r.trial): r.variant for r in pareto.sort_values("trial").drop_duplicates(
        ["variant", *part.metrics]).itertuples()}
    trials = {t.number: t for t in ostudy.get_trials(deepcopy=False)}
    for variant, specs in part.by_variant.items():
        for spec in specs:
            evals = part.sdir / spec.run_id / EVALS
            for old in evals.glob(f"trial*-{split}.json") if evals.is_dir() else []:
                number = old.name[len("trial"):-len(f"-{split}.json")]
                if number.isdigit() and front.get(int(number)) != variant:
                    old.unlink()
            for number in sorted(n for n, v in front.items() if v == variant):
                name = f"trial{number}-{split}"
                if (evals / f"{name}.json").exists():
                    continue
                m = evaluate(spec, name, trial_params(trials[number], part.search), split)
                log.info("%s: Pareto trial %d on the %s split: %s", spec.run_id, number, split,
                         ", ".join(f"{k}={m[k]:.4g}" for k in part.metrics if k in m))


def write_outputs(part: Part, ostudy, evaluate: Evaluate | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """Write the part's trials and Pareto tables and figure, evaluate its Pareto trials on the study's split
    (when given ``evaluate``: an eval-stage search that completed) and rewrite the study's tables."""
    from suite.report.figures.search import search_figure, search_title

    out = part.out
    out.mkdir(parents=True, exist_ok=True)
    trials = trials_frame(ostudy, part.metrics)
    records.atomic_write_text(out / TRIALS_TABLE, trials.to_csv(index=False))
    pareto = pareto_frame(ostudy, part.metrics)
    records.atomic_write_text(out / PARETO_TABLE, pareto.to_csv(index=False))
    if evaluate is not None:
        evaluate_front(part, ostudy, pareto, evaluate)
    paths = [out / TRIALS_TABLE, out / PARETO_TABLE,
             *search_figure(trials, part.metrics, part.directions, search_title(part.name), out, "pareto",
                           split=part.search.split)]
    seen = {s.run_id for s in part.specs}
    specs = part.specs + [s for s in trial_specs(part) if s.run_id not in seen]
    records.collect_tables(part.sdir, specs)
    return pareto, paths
