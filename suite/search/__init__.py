"""Optuna searches over a study's ``search:`` block, resumable and shareable by several workers.

``spikesuite search STUDY`` and ``spikesuite worker STUDY --storage URL`` both run
``run_search``: validate the block, open (or resume) the Optuna study ``<study>-<stage>`` in its
storage (``<study>-<stage>-<variant>`` for each variant with ``per_variant``), then reserve and run trials until
the study holds ``n_trials`` counted trials or ``timeout_s`` has passed. Two stages:

- ``eval``: a trial re-evaluates the trained checkpoints of the chosen variant's runs (all its seeds)
  with evaluation-time settings changed (``evaluate_checkpoint``), records each evaluation beside its
  run (``evals/trial<number>.json``) and returns the objectives averaged over those runs. Missing
  runs are trained first, as units of work of ``spikesuite run`` (``suite.run.local.wait_for``).
- ``train``: a trial is a full run per seed, built with ``apply_overrides`` and identified by its
  run id, executed by ``run_one`` under ``results/<study>/`` (a config already finished is
  reused, not retrained) and listed in ``runs.csv`` like any other run; its epochs feed the median pruner.

Budget: ``n_trials`` is the study's total, shared by every worker: a trial is reserved (counted and
asked) under a lock, so N workers together run exactly the requested number. Trials that completed,
were pruned, are running or waiting for a retry, or failed in the objective count; a trial whose
worker died does not (it is retried, at most twice). The lock is a file lock for sqlite and journal
files and an advisory lock for PostgreSQL and MySQL.

Records: ``results/<study>/search/{trials.csv, pareto.csv, pareto.png, pareto.pdf}`` (``search/<variant>/`` with
``per_variant``: one Optuna study per variant); an eval-stage search scored on val also evaluates its Pareto
settings on the study's test split (``evals/trial<N>-test.json``). MLflow: a parent
run per invocation, a child per trial (tag ``spikesuite.kind=trial``), runs of train-stage trials
nested under their trial.

Modules: ``space`` (validation, parameters, samplers), ``storage`` (storage URLs and locks), ``runner`` (the
trial loop), ``stages`` (what a trial runs), ``outputs`` (tables, figure, MLflow trial runs), ``part`` (what they
share). Nothing here imports torch at module level.

``submit_workers`` (``spikesuite search STUDY --parallel-config cluster.yml --workers N``) submits N of those worker
loops as one submitit job array; they share the study's journal file or database (never sqlite).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from suite import records
from suite.config import RunSpec, Study, StudyError, axis_applies
from suite.names import SEARCH_DIR, SEARCH_TAG, STUDY_FILE
from suite.run.study import preflight, study_dir_for
from suite.search.budget import budget_parts, budget_problems
from suite.search.outputs import TrialRuns, write_outputs
from suite.search.part import Part, SearchFailed, SearchSummary
from suite.search.runner import SearchRunner
from suite.search.space import trial_base, validate
from suite.search.stages import EvalStage, TrainStage
from suite.search.storage import default_storage, redact
from suite.tracking import TrackingTarget, close_trackers, tracker_for

__all__ = ["SearchFailed", "SearchSummary", "SearchWorkerJob", "WorkerOutcome", "run_search", "search_parts",
           "submit_workers"]

log = logging.getLogger("spikesuite")


def run_search(study: Study, results: Path, *, source: str = "<study>", storage: str | None = None,
               n_trials: int | None = None, worker: bool = False, device: str | None = None,
               progress: bool | None = None) -> list[SearchSummary]:
    """Validate, open or resume the Optuna study (one per variant with ``per_variant``), run trials until the
    budget is used, write the trial and Pareto tables, the figure and the runs table, and mirror to MLflow. Bad
    input raises StudyError before anything is written; a search that cannot run raises SearchFailed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged here, with their metric names
    specs = preflight(study, source)
    problems = validate(study, specs, n_trials) + budget_problems(study, specs)
    if n_trials is not None and n_trials < 1:
        problems.append(f"--n-trials: must be >= 1 (got {n_trials})")
    url = storage or (study.search.storage if study.search else None)
    if worker and not url:
        problems.append("--storage: a worker needs the storage every worker shares (journal:<file> on one "
                        "machine, postgresql://... across machines), or search.storage in the study")
    if problems:
        raise StudyError(source, problems)
    assert study.search is not None
    sdir = study_dir_for(results, study.name)
    url = url or default_storage(sdir)
    if worker and url.startswith("sqlite"):
        log.warning("sqlite storage with several workers: expect 'database is locked' waits (Optuna advises a "
                    "journal file or PostgreSQL for parallel workers)")
    sdir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(sdir / STUDY_FILE, yaml.safe_dump(study.model_dump(mode="json", exclude_none=True),
                                                                sort_keys=False))
    budget = n_trials if n_trials is not None else study.search.n_trials
    dev = device or study.execution.device
    show = study.execution.progress if progress is None else progress
    summaries = []
    try:
        for narrowed, name, out in search_parts(study, specs, sdir):
            t0 = time.perf_counter()
            part = Part(narrowed, specs, results, name=name, out=out, source=source, device=dev, progress=show)
            summary = _run_part(SearchRunner(part, url, budget, worker), worker)
            summary.wall_time_s = time.perf_counter() - t0
            summaries.append(summary)
    finally:
        close_trackers()
    return summaries


def search_parts(study: Study, specs: list[RunSpec], sdir: Path) -> list[tuple[Study, str, Path]]:
    """The Optuna studies one ``search:`` block runs, as (study narrowed to them, Optuna study name, records
    directory): one over all the variants, or with ``per_variant`` one per variant, each given only the
    parameters that apply to it."""
    s = study.search
    assert s is not None
    if s.mode == "equal_budget":  # one grid over each variant's own knob, the same number of settings each
        return budget_parts(study, specs, sdir)
    if not s.per_variant:
        return [(study, f"{study.name}-{s.stage}", sdir / SEARCH_DIR)]
    parts = []
    for v in s.variants:
        base = trial_base(next(sp.config for sp in specs if sp.variant == v), s.stage)
        narrowed = s.model_copy(update={"variants": [v], "params": {k: p for k, p in s.params.items()
                                                                     if axis_applies(k, base)}})
        parts.append((study.model_copy(update={"search": narrowed}), f"{study.name}-{s.stage}-{v}",
                      sdir / SEARCH_DIR / v))
    return parts


def _run_part(runner: SearchRunner, worker: bool) -> SearchSummary:
    """Run one Optuna study's trials until its budget is used; write its tables and figure, mirror to MLflow."""
    part = runner.part
    study, search = part.study, part.search
    summary = SearchSummary(part.sdir, part.name, redact(runner.storage.url), runner.budget)
    tracker = tracker_for(TrackingTarget(study.tracking, study.name, part.results))  # locks the store's creation
    parent = tracker.start_parent({"source": part.source, SEARCH_TAG: part.name, "search.stage": search.stage,
                                   "search.storage": summary.storage, "search.role": "worker" if worker else "search"})
    stage = EvalStage(part, parent, since=runner.started) if search.stage == "eval" else TrainStage(part)
    status, completed = "FAILED", False
    try:
        if isinstance(stage, EvalStage):
            stage.ensure_trained()
        before = runner.counted()
        if runner.budget is not None and before >= runner.budget:
            log.info("%s: the study already holds %d of %d trials; nothing to run (raise --n-trials to add more)",
                     part.name, before, runner.budget)
        runner.run(stage, TrialRuns(tracker, part, parent), summary, search.timeout_s)
        status, completed = ("FINISHED" if not summary.failed else "FAILED"), True
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            front = stage.evaluate if completed and isinstance(stage, EvalStage) else None
            summary.pareto, summary.paths = write_outputs(part, runner.ostudy, front)
            all_trials = runner.ostudy.get_trials(deepcopy=False)
            summary.n_trials = len(all_trials)
            summary.n_complete = sum(t.state.name == "COMPLETE" for t in all_trials)
            tracker.log_metrics(parent, {"trials_run": float(len(summary.ran)),
                                         "trials_failed": float(len(summary.failed)),
                                         "trials_pruned": float(len(summary.pruned)),
                                         "study_trials": float(summary.n_trials),
                                         "study_trials_complete": float(summary.n_complete)})
            tracker.log_artifacts(parent, summary.paths, artifact_path=str(part.out.relative_to(part.sdir)))
        finally:
            tracker.finish(parent, status)
            runner.storage.close()
    return summary


# ---------------------------------------------------------------------------------------------- cluster workers


class SearchWorkerJob:
    """What each submitted search worker runs: ``run_search(..., worker=True)`` on the shared storage. After a
    timeout or a preemption submitit requeues it; the new worker goes on reserving trials from the storage."""

    def __init__(self, study: Study, results: Path, source: str, storage: str, n_trials: int | None,
                 device: str | None, threads: int | None = None, commit: str = ""):
        self.study, self.results, self.source, self.storage = study, results, source, storage
        self.n_trials, self.device, self.threads, self.commit = n_trials, device, threads, commit

    def __call__(self, index: int) -> list[str]:
        from suite.run.cluster import _job_setup

        _job_setup(1, self.threads, self.commit)
        summaries = run_search(self.study, self.results, source=self.source, storage=self.storage,
                               n_trials=self.n_trials, worker=True, device=self.device, progress=False)
        return [f"{s.optuna_study}: {len(s.ran)} trials completed by this worker, {len(s.pruned)} pruned, "
                f"{len(s.failed)} failed; the study holds {s.n_trials} trials ({s.n_complete} complete)"
                for s in summaries]

    def checkpoint(self, index: int):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, index)


@dataclass
class WorkerOutcome:
    index: int
    job_id: str
    text: str = ""  # what the worker did
    error: str = ""  # why its job failed


def submit_workers(study: Study, results: Path, cluster, *, source: str = "<study>", storage: str | None = None,
                   n_trials: int | None = None, workers: int = 1, device: str | None = None, wait: bool = True,
                   out: Callable[[str], None] = print) -> list[WorkerOutcome]:
    """Submit ``workers`` search workers through ``cluster`` (a ``ClusterConfig`` with backend submitit) on the
    study's shared storage; with ``wait``, wait for them and return what each did. Bad input (a bad search
    block, no shared storage, sqlite) raises StudyError before anything is written or submitted."""
    from suite.run.cluster import submit_workers as submit
    from suite.run.cluster_file import cluster_name, merged_resources
    from suite.tracking import git_commit

    specs = preflight(study, source)
    problems = validate(study, specs, n_trials) + budget_problems(study, specs)
    if n_trials is not None and n_trials < 1:
        problems.append(f"--n-trials: must be >= 1 (got {n_trials})")
    url = storage or (study.search.storage if study.search else None)
    where = "--storage" if storage else "search.storage"
    if not url or url.startswith("sqlite"):
        got = url or f"the default {default_storage(study_dir_for(results, study.name))}"
        problems.append(f"{where}: workers on a cluster need one storage they all reach, and {got} is sqlite: it "
                        "does not take parallel writers and does not work on a network filesystem (Optuna FAQ). "
                        "Give journal:<file on the shared filesystem> or postgresql://user@host/db "
                        "(--storage or search.storage)")
    elif url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not str(path) or str(path) == ".":
            problems.append(f"{where}: {url!r}: give a file, e.g. journal:results/x/optuna.journal")
        url = f"journal:{path.resolve()}"  # workers may start in another directory
    if problems:
        raise StudyError(source, problems)
    local = cluster_name(cluster) == "local"
    cpus = os.cpu_count() or 1
    threads = merged_resources(cluster, study).cpus_per_task or (max(1, cpus // max(1, min(workers, cpus))) if local else None)
    job = SearchWorkerJob(study, results.resolve(), source, url, n_trials, device, threads, git_commit())
    pairs = submit(job, workers, study, cluster, results, source=source, wait=wait, out=out, storage=redact(url))
    outcomes = []
    for rec, j in pairs:
        o = WorkerOutcome(rec["index"], rec["job_id"])
        if wait:
            try:
                o.text = "; ".join(j.result())
            except Exception as exc:  # noqa: BLE001 - the job's failure, with its traceback from the job
                o.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        outcomes.append(o)
    return outcomes
