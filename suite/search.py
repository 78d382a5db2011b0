"""Optuna searches over a study's ``search:`` block, resumable and shareable by several workers.

``spikesuite search STUDY`` and ``spikesuite worker STUDY --storage URL`` both run
``run_search``: validate the block, open (or resume) the Optuna study ``<study>-<stage>`` in its
storage (``<study>-<stage>-<variant>`` for each variant with ``per_variant``), then reserve and run trials until the study holds ``n_trials`` counted trials or
``timeout_s`` has passed. Two stages:

- ``eval``: a trial re-evaluates the trained checkpoints of the chosen variant's runs (all its seeds)
  with evaluation-time settings changed (``evaluate_override``), records each evaluation beside its
  run (``evals/trial<number>.json``) and returns the objectives averaged over those runs. Missing
  runs are trained first, through the same executor as ``spikesuite run``.
- ``train``: a trial is a full run per seed, built with ``apply_overrides`` and identified by its
  run id, executed with ``execute_run`` under ``results/<study>/`` (a config already finished is
  reused, not retrained) and listed in ``runs.csv`` like any other run.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from suite import records
from suite.study import (
    RunConfig,
    RunSpec,
    SearchConfig,
    SearchParam,
    Study,
    StudyError,
    apply_overrides,
    eval_updates,
    format_errors,
    run_id,
)
from suite.tracking import KIND_TAG, STUDY_TAG, Tracker, process_alive
from suite.train_config import EVAL_TIME_KEYS, is_eval_time_key

log = logging.getLogger("spikesuite")

SEARCH_DIR = "search"
TRIALS_TABLE, PARETO_TABLE = "trials.csv", "pareto.csv"
SEARCH_TAG = "spikesuite.search"
ERROR_ATTR, WORKER_ATTR, VARIANT_ATTR = "error", "worker", "variant"
# Per-epoch validation values that fit() records, by the objective metric they track (median pruning).
EPOCH_METRIC = {"accuracy": "val_acc", "token_pct": "val_token_pct"}
MAX_RETRY = 2  # a trial whose worker died is run again at most this often
# Our lock beside a journal/sqlite file (not "<file>.lock": that is the journal backend's own symlink lock).
LOCK_SUFFIX = ".spikesuite-lock"


class SearchFailed(Exception):
    """The search could not run (for example, the runs an eval-stage search evaluates failed)."""


@dataclass
class SearchSummary:
    study_dir: Path
    optuna_study: str
    storage: str  # the storage URL with any password hidden
    budget: int | None
    ran: list[int] = field(default_factory=list)  # trial numbers this process ran
    failed: dict[int, str] = field(default_factory=dict)  # trial number -> error
    pruned: list[int] = field(default_factory=list)
    n_trials: int = 0  # trials in the study (every state, every worker)
    n_complete: int = 0
    pareto: pd.DataFrame | None = None
    paths: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0


# ---------------------------------------------------------------------------------------------- validation


def applies(key: str, config: RunConfig) -> bool:
    """The matrix rule: a key under ``tokens.<policy>.`` or ``time.<policy>.`` only applies to runs
    that have that policy; every other key applies to every run."""
    from suite.models import TimeConfig, TokenConfig

    parts = key.split(".")
    if parts[0] in ("tokens", "time") and len(parts) > 2 \
            and parts[1] in (TokenConfig if parts[0] == "tokens" else TimeConfig).model_fields:
        return getattr(getattr(config, parts[0]), parts[1]) is not None
    return True


def eval_config(config: RunConfig) -> RunConfig:
    """The config a run's main evaluation uses: its ``eval.apply`` settings on top (an evaluation-only
    policy such as training-free merging). Eval-stage trials start from it, so a trial with no change
    reproduces the run's reported metrics."""
    return apply_overrides(config, config.eval.apply) if config.eval.apply else config


def search_runs(study: Study, specs: list[RunSpec]) -> dict[str, list[RunSpec]]:
    """The study's runs of each search variant (its seeds and other matrix axes), in matrix order."""
    assert study.search is not None
    return {v: [s for s in specs if s.variant == v] for v in study.search.variants}


def validate(study: Study, specs: list[RunSpec], n_trials: int | None = None) -> list[str]:
    """Problems with the ``search:`` block, as ``key.path: what is wrong`` lines (empty when it is sound)."""
    s = study.search
    if s is None:
        return ["search: the study has no search section (see docs/search.md)"]
    problems: list[str] = []
    by_variant = {}
    for i, v in enumerate(s.variants):
        if v not in study.variants:
            problems.append(f"search.variants.{i}: unknown variant {v!r} (have {sorted(study.variants)})")
        elif s.variants.index(v) != i:
            problems.append(f"search.variants.{i}: {v!r} is listed twice")
        elif not any(sp.variant == v for sp in specs):
            problems.append(f"search.variants.{i}: the matrix has no run of variant {v!r} (check exclude)")
        else:
            by_variant[v] = next(sp for sp in specs if sp.variant == v)
            if s.stage == "eval":
                by_variant[v] = RunSpec(study.name, by_variant[v].run_id, eval_config(by_variant[v].config), {})
    metrics = [o.metric for o in s.objectives]
    for i, m in enumerate(metrics):
        if metrics.index(m) != i:
            problems.append(f"search.objectives.{i}.metric: {m!r} is already an objective")
    if s.n_trials is None and n_trials is None and s.timeout_s is None:
        problems.append("search.n_trials: give n_trials or timeout_s (a search with neither never stops)")
    for key, p in s.params.items():
        where = f"search.params.{key}"
        if key == "variant":
            problems.append(f"{where}: reserved (the variant is chosen from search.variants)")
            continue
        if s.stage == "eval" and not is_eval_time_key(key):
            problems.append(f"{where}: not an evaluation-time setting, so an eval-stage search cannot change it "
                            f"(allowed: {', '.join(EVAL_TIME_KEYS)}; use stage: train to search training settings)")
            continue
        if s.sampler == "grid" and p.choice is None:
            problems.append(f"{where}: the grid sampler needs a choice list")
        usable = [v for v, sp in by_variant.items() if applies(key, sp.config)]
        if by_variant and not usable:
            problems.append(f"{where}: applies to none of the search variants {sorted(by_variant)} "
                            f"(none has a {'.'.join(key.split('.')[:2])} policy)")
        for v in usable:
            bad = _probe(key, p, by_variant[v].config)
            if bad:
                problems.append(f"{where}: {bad}")
                break
    if s.pruner == "median":
        if s.stage != "train":
            problems.append("search.pruner: median pruning needs stage: train (an eval-stage trial has no epochs)")
        elif len(s.objectives) > 1:
            problems.append("search.pruner: Optuna cannot prune a multi-objective search (trial.report raises "
                            "for several objectives); use pruner: none or a single objective")
        elif s.objectives[0].metric not in EPOCH_METRIC:
            problems.append(f"search.pruner: median pruning compares per-epoch validation values, which exist "
                            f"for the objectives {sorted(EPOCH_METRIC)} only, not {s.objectives[0].metric!r}")
        elif any(sp.config.dataset.val_fraction <= 0 for sp in by_variant.values()):
            problems.append("search.pruner: median pruning needs a validation split (dataset.val_fraction > 0)")
    return problems


def _probe(key: str, p: SearchParam, config: RunConfig) -> str | None:
    """Apply the range's ends (or every choice) to a run config; the first validation error, if any."""
    values = p.choice if p.choice is not None else list(p.uniform or p.log_uniform or p.int or ())
    for value in values:
        try:
            apply_overrides(config, {key: value})
        except ValidationError as exc:
            return f"{value!r} gives an invalid run config: {format_errors(exc)[0]}"
        except (AttributeError, TypeError) as exc:
            return f"{value!r} cannot be set here ({exc})"
    return None


# ---------------------------------------------------------------------------------------------- storage


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{study_dir / 'optuna.db'}"


def redact(url: str) -> str:
    """The storage URL with any password hidden (it goes into logs and MLflow tags)."""
    if "://" in url and not url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        try:
            return make_url(url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unparsable URL is reported by the storage itself
            return url.split("@")[-1]
    return url


def with_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 picks psycopg 3 for it; where only psycopg2
    is installed (``psycopg2-binary``), use that one."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return url


class _FileLock:
    """An exclusive ``flock`` on a file beside a local storage (released by the OS if we die)."""

    def __init__(self, path: Path):
        self.path = path

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return records.file_lock(self.path)


class _DbLock:
    """A session-level advisory lock on a database server (PostgreSQL or MySQL), keyed by study name.
    One connection per process, kept open; the server releases the lock if the process dies."""

    def __init__(self, url: str, name: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.dialect = sqlalchemy.engine.make_url(url).get_backend_name()
        self.key = int.from_bytes(hashlib.sha256(f"spikesuite:{name}".encode()).digest()[:8], "big", signed=True)
        self.name = f"spikesuite:{hashlib.sha256(name.encode()).hexdigest()[:40]}"
        self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self._conn = None
        self._text = sqlalchemy.text

    def _sql(self, sql: str, **params: Any) -> None:
        if self._conn is None:
            self._conn = self._engine.connect()
        self._conn.execute(self._text(sql), params)
        self._conn.commit()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.dialect == "postgresql":
            self._sql("SELECT pg_advisory_lock(:k)", k=self.key)
            try:
                yield
            finally:
                self._sql("SELECT pg_advisory_unlock(:k)", k=self.key)
        else:  # mysql / mariadb
            self._sql("SELECT GET_LOCK(:n, 600)", n=self.name)
            try:
                yield
            finally:
                self._sql("SELECT RELEASE_LOCK(:n)", n=self.name)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._engine.dispose()


class _NoLock:
    """Other databases: no cross-process lock (two workers may then each start the last trial)."""

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        yield


@dataclass
class Storage:
    url: str  # as given (journal:..., sqlite:///..., postgresql://...)
    optuna: Any  # the optuna storage object
    lock: Any  # reserves trials atomically across workers
    local: bool  # a file on this machine: dead workers are found by process id (no heartbeat)
    heartbeat_s: int | None  # RDB servers: trials send heartbeats; stale ones are failed and retried

    def close(self) -> None:
        if isinstance(self.lock, _DbLock):
            self.lock.close()
        engine = getattr(self.optuna, "engine", None)
        if engine is not None:
            engine.dispose()


def open_storage(url: str, study_name: str, heartbeat_s: int) -> Storage:
    """``journal:<path>`` -> JournalStorage(JournalFileBackend) for several local processes (or a shared
    file system); ``sqlite:///<path>`` -> RDBStorage for one process (several work, slowly); any other
    database URL -> RDBStorage with heartbeats, so the trial of a killed worker is failed and retried."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not str(path) or str(path) == ".":
            raise StudyError("--storage", [f"{url!r}: give a file, e.g. journal:results/x/optuna.journal"])
        path = path.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _FileLock(path.with_name(path.name + LOCK_SUFFIX))
        with lock.hold():
            storage = JournalStorage(JournalFileBackend(str(path)))
        return Storage(url, storage, lock, True, None)
    if url.startswith("sqlite:"):
        db = url.split(":///", 1)[-1] if ":///" in url else ""
        if not db or db == ":memory:":
            raise StudyError("--storage", [f"{url!r}: an in-memory database cannot be resumed or shared; "
                                           "give a file, sqlite:////abs/path/optuna.db"])
        path = Path(db).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _FileLock(path.with_name(path.name + LOCK_SUFFIX))
        with lock.hold():  # table creation by two processes at once fails
            storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return Storage(url, storage, lock, True, None)
    if "://" not in url:
        raise StudyError("--storage", [f"{url!r}: expected journal:<path>, sqlite:///<path> or a database URL "
                                       "such as postgresql://user@host/db"])
    url = with_driver(url)
    try:
        lock: Any = _DbLock(url, study_name)
        if lock.dialect not in ("postgresql", "mysql", "mariadb"):
            lock.close()
            lock = _NoLock()
            log.warning("storage %s: no cross-process lock for this database; concurrent workers may run "
                        "one trial more than n_trials", redact(url))
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver is bad input
        raise StudyError("--storage", [f"{redact(url)}: {type(exc).__name__}: {exc}"]) from None
    with warnings.catch_warnings(), lock.hold():  # serialise table creation between workers
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(url, heartbeat_interval=heartbeat_s,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    return Storage(url, storage, lock, False, heartbeat_s)


# ---------------------------------------------------------------------------------------------- samplers


def _label(value: Any) -> Any:
    """Optuna categorical choices must be None/bool/int/float/str; others travel as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def _unlabel(label: Any, choices: list[Any]) -> Any:
    for c in choices:
        if _label(c) == label:
            return c
    return label


def grid_space(search: SearchConfig) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {k: [_label(c) for c in p.choice or []] for k, p in search.params.items()}
    if len(search.variants) > 1:
        space["variant"] = list(search.variants)
    return space


def make_sampler(search: SearchConfig, seed: int, budget: int | None):
    """TPE (default; Optuna 5: multivariate with constant liar), NSGA-II, random, or grid over the
    ``choice`` lists. Small budgets get proportionally fewer random start-up trials / a smaller population."""
    import optuna

    if search.sampler == "tpe":
        startup = 10 if budget is None else min(10, max(2, budget // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if search.sampler == "nsga2":
        pop = 50 if budget is None else min(50, max(4, budget // 3))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(grid_space(search), seed=seed)


def suggest(trial, key: str, p: SearchParam) -> Any:
    if p.uniform is not None:
        return trial.suggest_float(key, *p.uniform)
    if p.log_uniform is not None:
        return trial.suggest_float(key, *p.log_uniform, log=True)
    if p.int is not None:
        return trial.suggest_int(key, *p.int)
    return _unlabel(trial.suggest_categorical(key, [_label(c) for c in p.choice or []]), p.choice or [])


# ---------------------------------------------------------------------------------------------- trials


class _TrialFailed(Exception):
    """A trial's own failure (recorded as the trial's error; the search goes on)."""


class _MissingMetric(_TrialFailed):
    def __init__(self, index: int, metric: str, have: list[str]):
        self.index, self.metric, self.have = index, metric, have
        super().__init__(f"objective metric {metric!r} is not among the run's metrics ({', '.join(have)})")


class _EpochReporter:
    """The Tracker as seen by one train-stage trial's runs: forwards everything, and reports each
    epoch's validation value (fit's on_epoch row, which execute_run logs with its epoch as step) to
    the Optuna trial; raises TrialPruned when the median pruner says so. execute_run then records
    the run as failed with that reason (it resumes from its checkpoint if a later trial asks for it)."""

    def __init__(self, tracker: Tracker, trial, key: str | None, offset: int):
        self._tracker, self._trial, self._key, self._offset = tracker, trial, key, offset
        self.pruned: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)

    def log_metrics(self, mlflow_run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        self._tracker.log_metrics(mlflow_run_id, metrics, step)
        if self._key is None or "epoch" not in metrics or self._key not in metrics:
            return
        import optuna

        value = float(metrics[self._key])
        self._trial.report(value, self._offset + int(metrics["epoch"]))
        if self._trial.should_prune():
            self.pruned = f"pruned by the median pruner at epoch {int(metrics['epoch'])} ({self._key}={value:.4g})"
            raise optuna.TrialPruned(self.pruned)


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
    """One process's share of a search: reserve a trial, run it, record it, until the budget is used."""

    def __init__(self, study: Study, specs: list[RunSpec], results: Path, *, name: str, out: Path, source: str,
                 storage_url: str, budget: int | None, worker: bool, device: str, progress: bool):
        import optuna

        assert study.search is not None
        self.study, self.search, self.specs, self.source = study, study.search, specs, source
        self.sdir = records_dir(results, study.name)
        self.results, self.name, self.out = results, name, out
        self.by_variant = search_runs(study, specs)
        self.metrics = [o.metric for o in self.search.objectives]
        self.directions = [o.direction for o in self.search.objectives]
        self.budget = budget
        if self.search.sampler == "grid":
            size = math.prod(len(v) for v in grid_space(self.search).values())
            self.budget = size if budget is None else min(budget, size)
        self.worker, self.device, self.progress = worker, device, progress
        self.storage = open_storage(storage_url, self.name, self.search.heartbeat_s)
        pruner = optuna.pruners.MedianPruner() if self.search.pruner == "median" else optuna.pruners.NopPruner()
        self.ostudy = optuna.create_study(study_name=self.name, storage=self.storage.optuna, directions=self.directions,
                                          pruner=pruner, load_if_exists=True)
        have = [d.name.lower() for d in self.ostudy.directions]
        if have != self.directions or (self.ostudy.metric_names not in (None, self.metrics)):
            raise StudyError(source, [f"search.objectives: the storage {redact(storage_url)} already holds the "
                                      f"study {self.name!r} with objectives {self.ostudy.metric_names or have} "
                                      f"({', '.join(have)}); use another storage or remove that study"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.ostudy.set_metric_names(self.metrics)
        self.ostudy.set_user_attr("spikesuite", {"stage": self.search.stage, "variants": self.search.variants,
                                                 "objectives": [o.model_dump() for o in self.search.objectives]})
        # Resuming with the seed alone would replay the first proposals (a random sampler repeats
        # itself exactly); the trial count keeps a resumed single process reproducible, the process
        # id keeps concurrent workers from proposing the same points.
        n_before = len(self.ostudy.get_trials(deepcopy=False))
        seed = self.search.seed + n_before + (os.getpid() if worker else 0)
        self.ostudy.sampler = make_sampler(self.search, seed % 2**32, self.budget)
        self.study_id = self.storage.optuna.get_study_id_from_name(self.name)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started = time.time()
        from suite.execute import DataCache

        self.cache = DataCache()
        self._states: dict[str, Any] = {}
        self.tracker: Tracker | None = None
        self.parent: str | None = None

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

    def run(self, summary: SearchSummary, timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            trial = self.reserve()
            if trial is None:
                break
            self.run_trial(trial, summary)

    def run_trial(self, trial, summary: SearchSummary) -> None:
        import optuna
        from optuna.trial import TrialState

        t0 = time.perf_counter()
        child = None
        variant, params = None, {}
        try:
            variant = (trial.suggest_categorical("variant", list(self.search.variants))
                       if len(self.search.variants) > 1 else self.search.variants[0])
            base = self.by_variant[variant][0].config
            base = eval_config(base) if self.search.stage == "eval" else base
            params = {k: suggest(trial, k, p) for k, p in self.search.params.items() if applies(k, base)}
            trial.set_user_attr(VARIANT_ATTR, variant)
            child = self._start_trial_run(trial, variant, params)
            with _Heartbeat(self.storage, self.study_id, trial.number):
                per_run = (self._eval_trial(trial, variant, params) if self.search.stage == "eval"
                           else self._train_trial(trial, variant, params, child))
            values = []
            for i, m in enumerate(self.metrics):
                have = sorted(next(iter(per_run.values())))
                vals = [r.get(m) for r in per_run.values()]
                if any(v is None for v in vals):
                    raise _MissingMetric(i, m, have)
                mean = sum(vals) / len(vals)
                if not math.isfinite(mean):
                    raise _TrialFailed(f"objective {m} is {mean} (not finite)")
                values.append(float(mean))
                if len(vals) > 1:
                    trial.set_user_attr(f"{m}_std", float(pd.Series(vals).std(ddof=0)))
            trial.set_user_attr("runs", list(per_run))
        except optuna.TrialPruned as exc:
            self.ostudy.tell(trial, state=TrialState.PRUNED)
            summary.pruned.append(trial.number)
            self._finish_trial_run(child, "PRUNED", None, str(exc))
            log.info("trial %d [%s] pruned: %s", trial.number, variant, exc)
            return
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            self.ostudy.tell(trial, state=TrialState.FAIL)
            self._finish_trial_run(child, "FAIL", None, "interrupted", status="KILLED")
            raise
        except Exception as exc:  # noqa: BLE001 - a failed trial is recorded; the search goes on
            error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _TrialFailed) else str(exc)
            trial.set_user_attr(ERROR_ATTR, error[:4000])
            self.ostudy.tell(trial, state=TrialState.FAIL)
            summary.failed[trial.number] = error
            self._finish_trial_run(child, "FAIL", None, error)
            log.error("trial %d [%s] %s FAILED: %s", trial.number, variant, _fmt(params), error,
                      exc_info=not isinstance(exc, _TrialFailed))
            if isinstance(exc, _MissingMetric):
                raise StudyError(self.source, [f"search.objectives.{exc.index}.metric: {exc.metric!r} is not a "
                                               f"metric of the runs (have: {', '.join(exc.have)})"]) from None
            return
        self.ostudy.tell(trial, values)
        summary.ran.append(trial.number)
        self._finish_trial_run(child, "COMPLETE", dict(zip(self.metrics, values)), None)
        log.info("trial %d [%s] %s -> %s (%d run%s, %.1f s)", trial.number, variant, _fmt(params),
                 ", ".join(f"{m}={v:.4g}" for m, v in zip(self.metrics, values)), len(per_run),
                 "" if len(per_run) == 1 else "s", time.perf_counter() - t0)

    # -- eval stage ---------------------------------------------------------------------------------

    def ensure_trained(self) -> None:
        """Eval stage: the search variants' runs must be finished with a checkpoint. Missing ones are
        trained here by the executor of ``spikesuite run`` (claimed by lock: concurrent workers share
        the work and wait for each other); failed ones stop the search."""
        from suite.execute import StudySummary, _run_all
        from suite.train import CHECKPOINT

        specs = [s for runs in self.by_variant.values() for s in runs]
        todo = [s for s in specs if records.run_state(self.sdir / s.run_id, s.run_id) != "done"]
        if todo:
            log.info("eval-stage search: training %d run(s) of %s first", len(todo), ", ".join(self.search.variants))
        summary = StudySummary(self.sdir)
        while todo:
            summary.busy = []
            _run_all(self.study, todo, self.sdir, self.tracker, self.parent, summary, self.progress, self.device,
                     since=self.started)  # a run another worker failed during this search is not retried
            todo = [s for s in todo if s.run_id in summary.busy]
            if todo:
                time.sleep(2)  # another worker is training these: wait for it
        failed = {rid: why for rid, why in summary.failed.items()}
        failed.update({s.run_id: (records.read_json(self.sdir / s.run_id / records.STATUS) or {}).get("reason", "")
                       for s in specs if records.run_state(self.sdir / s.run_id, s.run_id) == "failed"})
        if failed:
            raise SearchFailed("the runs an eval-stage search evaluates failed to train:\n" + "\n".join(
                f"  {rid}: {why}" for rid, why in failed.items()))
        missing = [s.run_id for s in specs if not (self.sdir / s.run_id / CHECKPOINT).exists()]
        if missing:
            raise SearchFailed(f"runs {', '.join(missing)} are finished but have no {CHECKPOINT}; delete their "
                               f"directories under {self.sdir} and search again to retrain them")
        have = sorted((records.read_json(self.sdir / specs[0].run_id / records.METRICS) or {}).get("metrics", {}))
        bad = [f"search.objectives.{i}.metric: {m!r} is not a metric of the runs (have: {', '.join(have)})"
               for i, m in enumerate(self.metrics) if m not in have]
        if bad:
            raise StudyError(self.source, bad)

    def _state(self, spec: RunSpec):
        if spec.run_id not in self._states:
            import torch

            from suite.train import CHECKPOINT, pick_device

            ckpt = torch.load(self.sdir / spec.run_id / CHECKPOINT, map_location=pick_device(self.device),
                              weights_only=True)
            self._states[spec.run_id] = ckpt["model"]
        return self._states[spec.run_id]

    def _evaluate(self, spec: RunSpec, name: str, params: dict[str, Any], split: str) -> dict[str, float]:
        """The run's checkpoint evaluated on ``split`` with a trial's settings, recorded as ``evals/<name>.json``."""
        from suite.execute import evaluate_override
        from suite.train import pick_device

        updates = eval_updates(spec.config, {**params, "eval.split": split})
        m, d = evaluate_override(spec.config, self._state(spec), self.cache.get(spec.config.dataset),
                                 pick_device(self.device), updates)
        records.write_eval(self.sdir / spec.run_id, name, updates, m, d)
        return m

    def _eval_trial(self, trial, variant: str, params: dict[str, Any]) -> dict[str, dict[str, float]]:
        # Score on search.split (val by default) so the Pareto set is not chosen on the test images.
        return {spec.run_id: self._evaluate(spec, f"trial{trial.number}", params, self.search.split)
                for spec in self.by_variant[variant]}

    # -- train stage --------------------------------------------------------------------------------

    def _train_trial(self, trial, variant: str, params: dict[str, Any], child: str | None
                     ) -> dict[str, dict[str, float]]:
        from suite.execute import execute_run

        key = EPOCH_METRIC.get(self.metrics[0]) if self.search.pruner == "median" else None
        per_run, reused = {}, []
        for i, base in enumerate(self.by_variant[variant]):
            cfg = apply_overrides(base.config, params)
            spec = RunSpec(self.study.name, run_id(cfg), cfg,
                           {**base.axes, **params, "search": self.name, "trial": trial.number})
            run_dir = self.sdir / spec.run_id
            reporter = _EpochReporter(self.tracker, trial, key, i * cfg.train.epochs)
            while records.run_state(run_dir, spec.run_id) != "done":
                with records.claim(run_dir) as mine:
                    if not mine:  # another worker runs this config: wait for its result
                        time.sleep(1)
                        continue
                    if records.run_state(run_dir, spec.run_id) == "done":
                        break
                    log.info("trial %d: run %s (%s seed %d)", trial.number, spec.run_id, variant, cfg.seed)
                    ok, reason = execute_run(spec, run_dir, reporter, child, self.cache, self.progress, self.device,
                                             self.study.execution.oom_retry)
                    if reporter.pruned:
                        import optuna

                        raise optuna.TrialPruned(reporter.pruned)
                    if not ok:
                        raise _TrialFailed(f"run {spec.run_id} failed: {reason}")
                    break
            else:
                reused.append(spec.run_id)
            per_run[spec.run_id] = (records.read_json(run_dir / records.METRICS) or {})["metrics"]
        trial.set_user_attr("reused", reused)
        return per_run

    # -- MLflow -------------------------------------------------------------------------------------

    def _start_trial_run(self, trial, variant: str, params: dict[str, Any]) -> str | None:
        if self.tracker is None or not self.tracker.enabled:
            return None
        from mlflow.entities import Param

        tags = {KIND_TAG: "trial", STUDY_TAG: self.study.name, SEARCH_TAG: self.name, "trial_number": str(trial.number),
                "variant": variant, "stage": self.search.stage}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        run = self.tracker.client.create_run(self.tracker.experiment_id, run_name=f"trial-{trial.number}", tags=tags)
        items = [Param(k[:250], (v if isinstance(v, str) else json.dumps(v))[:6000]) for k, v in
                 {"variant": variant, **params}.items()]
        if items:
            self.tracker.client.log_batch(run.info.run_id, params=items)
        return run.info.run_id

    def _finish_trial_run(self, child: str | None, state: str, values: dict[str, float] | None, error: str | None,
                          status: str | None = None) -> None:
        if child is None or self.tracker is None:
            return
        if values:
            self.tracker.log_metrics(child, values)
        self.tracker.set_tag(child, "state", state)
        if error:
            self.tracker.set_tag(child, "spikesuite.error", error[:4000])
        self.tracker.finish(child, status or ("FAILED" if state == "FAIL" else "FINISHED"))

    # -- tables -------------------------------------------------------------------------------------

    def trial_specs(self) -> list[RunSpec]:
        """The runs of this search's train-stage trials (any worker, any invocation), from their records."""
        out = []
        for cfg_path in sorted(self.sdir.glob(f"*/{records.CONFIG}")):
            try:
                doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
                if doc.get("axes", {}).get("search") != self.name:
                    continue
                out.append(RunSpec(self.study.name, doc["run_id"], RunConfig.model_validate(doc["config"]), doc["axes"]))
            except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValidationError):
                continue  # a half-written or foreign record: not a trial run
        return out

    def evaluate_front(self, pareto: pd.DataFrame) -> None:
        """Eval stage, trials scored on another split than the study's: evaluate each Pareto trial's settings
        on the study's split too (``evals/trial<N>-<split>.json``, beside the runs), so the chosen operating
        points get honest held-out numbers in evals.csv and the report. Trials with equal objective values
        are one point: only the lowest-numbered is evaluated. Files of trials that left the front
        are removed; existing ones are kept (same checkpoint and settings give the same numbers)."""
        split = self.study.eval.split
        if self.search.stage != "eval" or self.search.split == split:
            return
        # trials that tie on every objective are one operating point: the first of them stands for it
        front = {int(r.trial): r.variant for r in pareto.sort_values("trial").drop_duplicates(
            ["variant", *self.metrics]).itertuples()}
        trials = {t.number: t for t in self.ostudy.get_trials(deepcopy=False)}
        for variant, specs in self.by_variant.items():
            for spec in specs:
                evals = self.sdir / spec.run_id / records.EVALS
                for old in evals.glob(f"trial*-{split}.json") if evals.is_dir() else []:
                    number = old.name[len("trial"):-len(f"-{split}.json")]
                    if number.isdigit() and front.get(int(number)) != variant:
                        old.unlink()
                for number in sorted(n for n, v in front.items() if v == variant):
                    name = f"trial{number}-{split}"
                    if (evals / f"{name}.json").exists():
                        continue
                    m = self._evaluate(spec, name, trial_params(trials[number], self.search), split)
                    log.info("%s: Pareto trial %d on the %s split: %s", spec.run_id, number, split,
                             ", ".join(f"{k}={m[k]:.4g}" for k in self.metrics if k in m))

    def write_outputs(self, evaluate_front: bool = False) -> tuple[pd.DataFrame, list[Path]]:
        from suite.report import search_figure, search_title

        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        trials = trials_frame(self.ostudy, self.metrics)
        records.atomic_write_text(out / TRIALS_TABLE, trials.to_csv(index=False))
        pareto = pareto_frame(self.ostudy, self.metrics)
        records.atomic_write_text(out / PARETO_TABLE, pareto.to_csv(index=False))
        if evaluate_front:
            self.evaluate_front(pareto)
        paths = [out / TRIALS_TABLE, out / PARETO_TABLE,
                 *search_figure(trials, self.metrics, self.directions, search_title(self.name), out, "pareto")]
        seen = {s.run_id for s in self.specs}
        specs = self.specs + [s for s in self.trial_specs() if s.run_id not in seen]
        records.collect_tables(self.sdir, specs)
        return pareto, paths


def records_dir(results: Path, name: str) -> Path:
    from suite.execute import study_dir_for

    return study_dir_for(results, name)


def trial_params(trial, search: SearchConfig) -> dict[str, Any]:
    """A trial's config updates (its parameters less the variant, choices decoded)."""
    return {k: _unlabel(v, search.params[k].choice) if search.params[k].choice is not None else v
            for k, v in trial.params.items() if k != "variant"}


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                    for k, v in params.items())


# ---------------------------------------------------------------------------------------------- outputs


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


# ---------------------------------------------------------------------------------------------- entry


def run_search(study: Study, results: Path, *, source: str = "<study>", storage: str | None = None,
               n_trials: int | None = None, worker: bool = False, device: str | None = None,
               progress: bool | None = None) -> list[SearchSummary]:
    """Validate, open or resume the Optuna study (one per variant with ``per_variant``), run trials until the
    budget is used, write the trial and Pareto tables, the figure and the runs table, and mirror to MLflow. Bad
    input raises StudyError before anything is written; a search that cannot run raises SearchFailed."""
    import optuna

    from suite.execute import preflight

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged here, with their metric names
    specs = preflight(study, source)
    problems = validate(study, specs, n_trials)
    if n_trials is not None and n_trials < 1:
        problems.append(f"--n-trials: must be >= 1 (got {n_trials})")
    url = storage or (study.search.storage if study.search else None)
    if worker and not url:
        problems.append("--storage: a worker needs the storage every worker shares (journal:<file> on one "
                        "machine, postgresql://... across machines), or search.storage in the study")
    if problems:
        raise StudyError(source, problems)
    assert study.search is not None
    sdir = records_dir(results, study.name)
    url = url or default_storage(sdir)
    if worker and url.startswith("sqlite"):
        log.warning("sqlite storage with several workers: expect 'database is locked' waits (Optuna advises a "
                    "journal file or PostgreSQL for parallel workers)")
    sdir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(sdir / "study.yaml", yaml.safe_dump(study.model_dump(mode="json", exclude_none=True),
                                                                  sort_keys=False))
    budget = n_trials if n_trials is not None else study.search.n_trials
    options = dict(source=source, storage_url=url, budget=budget, worker=worker,
                   device=device or study.execution.device,
                   progress=study.execution.progress if progress is None else progress)
    summaries = []
    for part, name, out in search_parts(study, specs, sdir):
        t0 = time.perf_counter()
        summary = _run_part(SearchRunner(part, specs, results, name=name, out=out, **options))
        summary.wall_time_s = time.perf_counter() - t0
        summaries.append(summary)
    return summaries


def search_parts(study: Study, specs: list[RunSpec], sdir: Path) -> list[tuple[Study, str, Path]]:
    """The Optuna studies one ``search:`` block runs, as (study narrowed to them, Optuna study name, records
    directory): one over all the variants, or with ``per_variant`` one per variant, each given only the
    parameters that apply to it."""
    s = study.search
    assert s is not None
    if not s.per_variant:
        return [(study, f"{study.name}-{s.stage}", sdir / SEARCH_DIR)]
    parts = []
    for v in s.variants:
        base = next(sp.config for sp in specs if sp.variant == v)
        base = eval_config(base) if s.stage == "eval" else base
        narrowed = s.model_copy(update={"variants": [v], "params": {k: p for k, p in s.params.items()
                                                                     if applies(k, base)}})
        parts.append((study.model_copy(update={"search": narrowed}), f"{study.name}-{s.stage}-{v}",
                      sdir / SEARCH_DIR / v))
    return parts


def _run_part(runner: SearchRunner) -> SearchSummary:
    """Run one Optuna study's trials until its budget is used; write its tables and figure, mirror to MLflow."""
    study, search = runner.study, runner.search
    summary = SearchSummary(runner.sdir, runner.name, redact(runner.storage.url), runner.budget)
    runner.tracker = Tracker(study.tracking, study.name, runner.results)  # locks the store's creation itself
    tracker = runner.tracker
    runner.parent = tracker.start_parent({"source": runner.source, SEARCH_TAG: runner.name,
                                          "search.stage": search.stage, "search.storage": summary.storage,
                                          "search.role": "worker" if runner.worker else "search"})
    status, completed = "FAILED", False
    try:
        if search.stage == "eval":
            runner.ensure_trained()
        before = runner.counted()
        if runner.budget is not None and before >= runner.budget:
            log.info("%s: the study already holds %d of %d trials; nothing to run (raise --n-trials to add more)",
                     runner.name, before, runner.budget)
        runner.run(summary, search.timeout_s)
        status, completed = ("FINISHED" if not summary.failed else "FAILED"), True
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            summary.pareto, summary.paths = runner.write_outputs(evaluate_front=completed)
            all_trials = runner.ostudy.get_trials(deepcopy=False)
            summary.n_trials = len(all_trials)
            summary.n_complete = sum(t.state.name == "COMPLETE" for t in all_trials)
            tracker.log_metrics(runner.parent, {"trials_run": float(len(summary.ran)),
                                                "trials_failed": float(len(summary.failed)),
                                                "trials_pruned": float(len(summary.pruned)),
                                                "study_trials": float(summary.n_trials),
                                                "study_trials_complete": float(summary.n_complete)})
            tracker.log_artifacts(runner.parent, summary.paths, artifact_path=str(runner.out.relative_to(runner.sdir)))
        finally:
            tracker.finish(runner.parent, status)
            runner.storage.close()
    return summary
