"""The trial loop of one process: open (or resume) the Optuna study, reserve a trial under the storage lock (so
workers together never exceed the budget), suggest its parameters, run it through a stage, tell Optuna the
objective values (or that it was pruned or failed), and keep its heartbeat while it runs."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import warnings
from typing import Any, Protocol

import pandas as pd

from suite.config import StudyError, axis_applies
from suite.search.outputs import TrialRuns
from suite.search.part import (
    ERROR_ATTR,
    VARIANT_ATTR,
    WORKER_ATTR,
    MissingMetric,
    Part,
    SearchSummary,
    TrialFailed,
)
from suite.search.space import describe, make_sampler, suggest, trial_budget
from suite.search.storage import MAX_RETRY, Storage, open_storage, redact
from suite.tracking import process_alive

log = logging.getLogger("spikesuite")


class Stage(Protocol):
    def run(self, trial, variant: str, params: dict[str, Any], child: str | None) -> dict[str, dict[str, float]]:
        """Run one trial: the metrics of each run it used, by run id."""


def open_study(part: Part, storage: Storage, budget: int | None, worker: bool):
    """Create or load the Optuna study ``part.name``; refuse one stored with other objectives. Its sampler is
    seeded for this process (see below)."""
    import optuna

    search = part.search
    pruner = optuna.pruners.MedianPruner() if search.pruner == "median" else optuna.pruners.NopPruner()
    ostudy = optuna.create_study(study_name=part.name, storage=storage.optuna, directions=part.directions,
                                 pruner=pruner, load_if_exists=True)
    have = [d.name.lower() for d in ostudy.directions]
    if have != part.directions or (ostudy.metric_names not in (None, part.metrics)):
        raise StudyError(part.source, [f"search.objectives: the storage {redact(storage.url)} already holds the "
                                       f"study {part.name!r} with objectives {ostudy.metric_names or have} "
                                       f"({', '.join(have)}); use another storage or remove that study"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ostudy.set_metric_names(part.metrics)
    ostudy.set_user_attr("spikesuite", {"stage": search.stage, "variants": search.variants,
                                        "objectives": [o.model_dump() for o in search.objectives]})
    # Resuming with the seed alone would replay the first proposals (a random sampler repeats
    # itself exactly); the trial count keeps a resumed single process reproducible, the process
    # id keeps concurrent workers from proposing the same points.
    n_before = len(ostudy.get_trials(deepcopy=False))
    seed = search.seed + n_before + (os.getpid() if worker else 0)
    ostudy.sampler = make_sampler(search, seed % 2**32, budget)
    return ostudy


def objective_values(trial, per_run: dict[str, dict[str, float]], metrics: list[str]) -> list[float]:
    """Each objective averaged over the trial's runs (its spread recorded as ``<metric>_std`` with several)."""
    values = []
    for i, m in enumerate(metrics):
        have = sorted(next(iter(per_run.values())))
        vals = [r.get(m) for r in per_run.values()]
        if any(v is None for v in vals):
            raise MissingMetric(i, m, have)
        mean = sum(vals) / len(vals)
        if not math.isfinite(mean):
            raise TrialFailed(f"objective {m} is {mean} (not finite)")
        values.append(float(mean))
        if len(vals) > 1:
            trial.set_user_attr(f"{m}_std", float(pd.Series(vals).std(ddof=0)))
    return values


class _Heartbeat:
    """Records the trial's heartbeat every interval while it runs (RDB storages with heartbeats), so
    other workers can tell a live trial from the trial of a killed worker."""

    def __init__(self, storage: Storage, study_id: int, number: int):
        self.storage = storage
        self.trial_id = storage.optuna.get_trial_id_from_study_id_trial_number(study_id, number) \
            if storage.heartbeat_s else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self.trial_id is not None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")
            self._thread.start()
        return self

    def _beat(self) -> None:
        while True:
            try:
                self.storage.optuna.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a lost beat is retried at the next interval
                log.warning("heartbeat failed: %s", exc)
            if self._stop.wait(self.storage.heartbeat_s):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class SearchRunner:
    """One process's share of a part: reserve a trial, run it, record it, until the budget is used."""

    def __init__(self, part: Part, storage_url: str, budget: int | None, worker: bool):
        self.part = part
        self.budget = trial_budget(part.search, budget)
        self.storage = open_storage(storage_url, part.name, part.search.heartbeat_s)
        self.ostudy = open_study(part, self.storage, self.budget, worker)
        self.study_id = self.storage.optuna.get_study_id_from_name(part.name)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = time.time()

    # -- budget -------------------------------------------------------------------------------------

    def counted(self) -> int:
        """Trials that use the budget: complete, pruned, running, waiting (a retry) or failed in the
        objective. A trial failed because its worker died (no error attribute) does not count."""
        from optuna.trial import TrialState as S

        return sum(1 for t in self.ostudy.get_trials(deepcopy=False)
                   if t.state in (S.COMPLETE, S.PRUNED, S.RUNNING, S.WAITING)
                   or (t.state == S.FAIL and ERROR_ATTR in t.user_attrs))

    def reserve(self):
        """Count and ask under the storage lock, so concurrent workers never exceed the budget."""
        import optuna

        with self.storage.lock.hold():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # ask() warns that heartbeats are meant for optimize(); _Heartbeat sends them here
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                if self.storage.heartbeat_s:
                    optuna.storages.fail_stale_trials(self.ostudy)
                elif self.storage.local:
                    self._fail_dead_local_trials()
                if self.budget is not None and self.counted() >= self.budget:
                    return None
                trial = self.ostudy.ask()
            trial.set_user_attr(WORKER_ATTR, f"{self.host}:{self.pid}")
            return trial

    def _fail_dead_local_trials(self) -> None:
        """Local storages have no heartbeat: a RUNNING trial whose worker process on this machine is
        gone is failed and retried (as the RDB heartbeat callback does)."""
        import optuna
        from optuna.trial import TrialState

        for t in self.ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            host, _, pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
            if host != self.host or not pid.isdigit() or process_alive(int(pid)):
                continue
            log.warning("trial %d: its worker (pid %s) is gone; failing it and queueing a retry", t.number, pid)
            self.ostudy.tell(t.number, state=TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(self.ostudy,
                                                                                    self.ostudy.trials[t.number])

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stage: Stage, runs: TrialRuns, summary: SearchSummary, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            trial = self.reserve()
            if trial is None:
                break
            self.run_trial(trial, stage, runs, summary)

    def run_trial(self, trial, stage: Stage, runs: TrialRuns, summary: SearchSummary) -> None:
        import optuna
        from optuna.trial import TrialState

        search, metrics = self.part.search, self.part.metrics
        t0 = time.perf_counter()
        child = None
        variant, params = None, {}
        try:
            variant = (trial.suggest_categorical("variant", list(search.variants))
                       if len(search.variants) > 1 else search.variants[0])
            base = self.part.base_config(variant)
            params = {k: suggest(trial, k, p) for k, p in search.params.items() if axis_applies(k, base)}
            trial.set_user_attr(VARIANT_ATTR, variant)
            child = runs.start(trial, variant, params)
            with _Heartbeat(self.storage, self.study_id, trial.number):
                per_run = stage.run(trial, variant, params, child)
            values = objective_values(trial, per_run, metrics)
            trial.set_user_attr("runs", list(per_run))
        except optuna.TrialPruned as exc:
            self.ostudy.tell(trial, state=TrialState.PRUNED)
            summary.pruned.append(trial.number)
            runs.finish(child, "PRUNED", None, str(exc))
            log.info("trial %d [%s] pruned: %s", trial.number, variant, exc)
            return
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            self.ostudy.tell(trial, state=TrialState.FAIL)
            runs.finish(child, "FAIL", None, "interrupted", status="KILLED")
            raise
        except Exception as exc:  # noqa: BLE001 - a failed trial is recorded; the search goes on
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TrialFailed) else str(exc)
            trial.set_user_attr(ERROR_ATTR, error[:4000])
            self.ostudy.tell(trial, state=TrialState.FAIL)
            summary.failed[trial.number] = error
            runs.finish(child, "FAIL", None, error)
            log.error("trial %d [%s] %s FAILED: %s", trial.number, variant, describe(params), error,
                      exc_info=not isinstance(exc, TrialFailed))
            if isinstance(exc, MissingMetric):
                raise StudyError(self.part.source, [f"search.objectives.{exc.index}.metric: {exc.metric!r} is not "
                                                    f"a metric of the runs (have: {', '.join(exc.have)})"]) from None
            return
        self.ostudy.tell(trial, values)
        summary.ran.append(trial.number)
        runs.finish(child, "COMPLETE", dict(zip(metrics, values)), None)
        log.info("trial %d [%s] %s -> %s (%d run%s, %.1f s)", trial.number, variant, describe(params),
                 ", ".join(f"{m}={v:.4g}" for m, v in zip(metrics, values)), len(per_run),
                 "" if len(per_run) == 1 else "s", time.perf_counter() - t0)
