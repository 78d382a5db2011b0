"""MLflow mirror of the records: experiment = study, a parent run per invocation, a (linked, not nested) run per
run id. The records stay the source of truth; a finished run already mirrored is never logged twice,
and a run killed mid-way has its MLflow run closed as KILLED and its replacement tagged with it (as is a killed
invocation's parent run, at the next invocation on the same host).

Tracking never stops a study. A store that cannot be opened or fails mid-way (server down or killed, connection
refused, a corrupt or locked sqlite file, a timeout) gives one warning naming it, and tracking is off for the rest
of the invocation: training and records go on. Every call is bounded in seconds (``bounded``: MLflow's HTTP client
otherwise retries for minutes). What the store missed is filled from the records by the next ``spikesuite run``
(``run_one`` mirrors a done run that has no FINISHED child) or ``spikesuite report`` (``mirror_missing``), each run
once: ``mirror_run`` holds the run's claim, so a run another process is still finishing is left to it.

What MLflow shows (``suite.mlflow_view``): the experiment tagged as model development with the study's description,
runs named ``<variant>-s<seed>`` plus their matrix axes, per-epoch rows stepped by epoch, final metrics as summary
values (step 0) under names that say their split (``test_accuracy``; the records keep ``accuracy``), params without
the settings that do not apply, per-variant means on the invocation's run. A live run (``log_epoch``,
``log_result``, ``override_metrics``) and ``mirror_run`` log through the same functions, so they log the same
names."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from suite import environment, records
from suite.config import RunSpec, TrackingConfig
from suite.mlflow_view import (
    DATASET_CONTEXT,
    DESCRIPTION_TAG,
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    dataset_input,
    epoch_metrics,
    metric_key,
    override_metrics,
    parent_name,
    run_name,
    run_params,
    summary_metrics,
    variant_means,
)
from suite.names import (
    EVALS,
    HOST_TAG,
    INVOCATION,
    INVOCATION_TAG,
    KIND_TAG,
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    PID_TAG,
    REPLACES_TAG,
    RUN_TAG,
    STUDY_TAG,
)

log = logging.getLogger(__name__)

# MLflow's client defaults retry a refused connection for about 4 minutes (7 retries, backoff factor 2) and wait
# 120 s for a reply; around our calls these apply instead, unless the user set them (PGCONNECT_TIMEOUT: a
# postgresql:// store's connect timeout). Worst case per call: 3 attempts x 10 s, plus 2-4 s of backoff.
CLIENT_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "PGCONNECT_TIMEOUT": "10",
}
DB_ENGINE_ATTEMPTS = 1  # MLflow retries creating a database engine 10 times over ~100 s: once is enough here
# With an http(s) store MLflow prints "View run ... at: <url>" on stdout for every run it closes: one line per run
# of a study between our own lines. Unless the user set it, it is off around our calls.
CLIENT_QUIET = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
DISABLED = ("tracking disabled for this invocation: MLflow store {store} {what} ({reason}); the records are "
            "complete; the next `spikesuite run` or `spikesuite report` mirrors the missing runs")

T = TypeVar("T")


def tracking_uri(cfg: TrackingConfig, results: Path) -> str:
    """MLFLOW_TRACKING_URI, else the study's ``tracking.uri``, else one sqlite store for all studies
    under the results directory (each study is an experiment in it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{(results / MLFLOW_DB).resolve()}"


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for messages)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class _DropNotes(logging.Filter):
    """Drops what urllib3 and MLflow log about a failure they then raise (a warning per retried request, an
    error with a traceback per failed database session): the one warning a failed store gets is ours."""

    NOTES = {"urllib3.connectionpool": ("Retrying",),
             "mlflow.store.db.utils": ("SQLAlchemy database error", "SQLAlchemy engine could not be created")}

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """MLflow client calls inside are bounded in seconds: ``CLIENT_LIMITS`` for the environment variables the user
    did not set (restored after), one attempt at creating a database engine, no log lines about the failure
    (the caller warns once)."""
    env = {**CLIENT_LIMITS, **CLIENT_QUIET}
    added = [k for k in env if k not in os.environ]
    for k in added:
        os.environ[k] = env[k]
    quiet = [(logging.getLogger(name), _DropNotes(prefixes)) for name, prefixes in _DropNotes.NOTES.items()]
    for logger, note in quiet:
        logger.addFilter(note)
    db_utils = sys.modules.get("mlflow.store.db.utils")  # imported by MLflow with any database store
    attempts = getattr(db_utils, "MAX_RETRY_COUNT", None)
    if isinstance(attempts, int) and attempts > DB_ENGINE_ATTEMPTS:
        db_utils.MAX_RETRY_COUNT = DB_ENGINE_ATTEMPTS
    try:
        yield
    finally:
        if isinstance(attempts, int) and attempts > DB_ENGINE_ATTEMPTS:
            db_utils.MAX_RETRY_COUNT = attempts
        for logger, note in quiet:
            logger.removeFilter(note)
        for k in added:
            os.environ.pop(k, None)


_QUIETED = False


def quiet_mlflow_warnings() -> None:
    """Silence the deprecation warnings MLflow's own code raises and we cannot act on (once per process).
    Precise: only these messages, only from MLflow's modules; anything else still shows.

    MLflow 3.17's sqlite/SQL store configures its ORM mappers with SQLAlchemy's deprecated ``noload`` loader
    (an ``SADeprecationWarning`` printed at every store opening under ``-W default``, ``PYTHONWARNINGS`` or
    ``python -X dev``)."""
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated",
                            category=DeprecationWarning, module=r"mlflow\.")


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of the chain, on one line: ``ConnectionRefusedError: [Errno 111] ...``."""
    seen = {id(exc)}
    while (nxt := exc.__cause__ or exc.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        exc = nxt
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


# Stores that failed during the current invocation (URI -> why): a store is tried once per invocation and
# warned about once. ``close_trackers`` ends the invocation but keeps them, for the report that follows a run in
# the same command; the next ``tracker_for`` begins a new invocation, which tries every store again.
_FAILED: dict[str, str] = {}
_ENDED = True


def git_commit() -> str:
    """The running code's commit for tags and job records ("unknown" outside a git checkout)."""
    return environment.git_commit() or "unknown"


def _guarded(default: Any = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A ``Tracker`` method that does nothing (returns ``default``) with tracking off, runs bounded, and turns any
    failure into one warning and tracking off for the rest of the invocation: it never raises."""

    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def guarded(self: Tracker, *args: Any, **kwargs: Any) -> T:
            if not self.enabled:
                return default
            try:
                with bounded():
                    return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the records are the source of truth: warn, go on
                self._fail(exc, "failed while logging")
                return default

        return guarded

    return wrap


class Tracker:
    """Thin wrapper over ``MlflowClient`` (no fluent global state, so several studies can log at once).

    ``enabled`` is False with tracking off in the study, and becomes False when the store fails (``off`` says
    why): every method then does nothing and returns None, [] or False. No method raises for a tracking failure.
    ``create=False`` opens the store without creating the experiment (``experiment_id`` stays None without it).
    ``off``: the store already failed in this invocation (warned there): the tracker starts disabled, silently."""

    def __init__(self, cfg: TrackingConfig, study: str, results: Path, *, create: bool = True, off: str = ""):
        self.enabled = cfg.enabled
        self.study = study
        self.experiment_id: str | None = None
        self.experiment_tags: dict[str, str] = {}
        self._kinds: dict[str, str] = {}
        self.off = ""
        if not self.enabled:
            return
        self.uri = tracking_uri(cfg, results)
        if off or self.uri in _FAILED:
            self.enabled, self.off = False, off or _FAILED[self.uri]
            return
        name = cfg.experiment or study
        quiet_mlflow_warnings()
        try:
            if not self.uri.startswith(("http:", "https:", "databricks")):
                import mlflow.store.db.utils  # noqa: F401 - a database store: loaded first, so ``bounded`` applies
            with bounded():
                self._open(name, results, create)
        except Exception as exc:  # noqa: BLE001 - any failure to open the store: warn once, records go on
            self._fail(exc, "cannot be opened")

    def _open(self, name: str, results: Path, create: bool) -> None:
        from mlflow.tracking import MlflowClient

        # Several processes may start on one study at once: creating the store's tables and the experiment
        # must not race (sqlite: "duplicate column name", experiment: RESOURCE_ALREADY_EXISTS).
        with records.file_lock(_init_lock_path(self.uri, results)):
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                self.experiment_id, self.experiment_tags = exp.experiment_id, dict(exp.tags)
            elif create:
                artifacts = (results / MLFLOW_ARTIFACTS / name).resolve().as_uri() \
                    if self.uri.startswith("sqlite") else None
                kind = {EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT}
                try:
                    self.experiment_id = self.client.create_experiment(name, artifact_location=artifacts, tags=kind)
                    self.experiment_tags = kind
                except Exception:
                    # another machine created it meanwhile (the lock is per results directory)
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
                    self.experiment_id, self.experiment_tags = exp.experiment_id, dict(exp.tags)
            if create and self.experiment_id is not None:
                # an experiment created before the suite tagged its kind opens in MLflow's GenAI view: tag it now
                self._tag_experiment(EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)

    def _tag_experiment(self, key: str, value: str) -> None:
        if self.experiment_tags.get(key) != value:
            self.client.set_experiment_tag(self.experiment_id, key, value)
            self.experiment_tags[key] = value

    @_guarded()
    def describe(self, description: str) -> None:
        """The study's ``description`` as the experiment's description in the MLflow UI (an empty one leaves
        whatever the experiment had)."""
        if description.strip() and self.experiment_id is not None:
            self._tag_experiment(DESCRIPTION_TAG, description.strip())

    def _fail(self, exc: BaseException, what: str) -> None:
        self.enabled, self.off = False, _root_cause(exc)
        if self.uri not in _FAILED:
            _FAILED[self.uri] = self.off
            log.warning(DISABLED.format(store=redact(self.uri), what=what, reason=self.off))
        log.debug("tracking failure", exc_info=exc)

    @_guarded()
    def start_parent(self, tags: dict[str, str]) -> str | None:
        self.close_dead_parents()
        return self.create_run(parent_name(self.study, tags, time.time()), {
            KIND_TAG: INVOCATION, STUDY_TAG: self.study, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            **tags})

    @_guarded()
    def close_dead_parents(self) -> None:
        """Invocation runs left RUNNING by a process on this host that no longer exists (killed, machine
        restarted) are closed as KILLED, so the MLflow UI does not show them running forever."""
        here = socket.gethostname()
        for r in self._search(f"tags.`{KIND_TAG}` = '{INVOCATION}' and attributes.status = 'RUNNING'"):
            pid = r.data.tags.get(PID_TAG, "")
            if r.data.tags.get(HOST_TAG) == here and pid.isdigit() and not process_alive(int(pid)):
                self.client.set_terminated(r.info.run_id, "KILLED")

    @_guarded()
    def latest_parent(self) -> str | None:
        """The study's latest invocation run, None when there is none."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{INVOCATION}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    @_guarded()
    def create_run(self, name: str, tags: dict[str, str], params: dict[str, str] | None = None) -> str | None:
        """A new run named ``name`` in the experiment with ``tags`` and ``params``; its id (None with tracking
        off)."""
        from mlflow.entities import Param

        rid = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        items = [Param(k[:250], v[:6000]) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(rid, params=items[i:i + 100])
        return rid

    @_guarded()
    def finish(self, mlflow_run_id: str | None, status: str = "FINISHED") -> None:
        if mlflow_run_id:
            self.client.set_terminated(mlflow_run_id, status)

    def _search(self, filter_string: str) -> list:
        """Every run of the experiment matching ``filter_string`` (all pages)."""
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    @_guarded(default=[])
    def children(self, run_id: str) -> list:
        return self._search(f"tags.`{RUN_TAG}` = '{run_id}'")

    @_guarded(default=False)
    def has_finished(self, run_id: str) -> bool:
        return any(r.info.status == "FINISHED" for r in self.children(run_id))

    @_guarded(default=frozenset())
    def finished_run_ids(self) -> frozenset[str]:
        """The run ids that have a FINISHED child run (one query for the whole experiment)."""
        return frozenset(r.data.tags.get(RUN_TAG, "") for r in self._search(
            f"tags.`{KIND_TAG}` = 'run' and attributes.status = 'FINISHED'"))

    def _kind(self, mlflow_run_id: str) -> str:
        """The ``spikesuite.kind`` tag of a run of this store (cached: a study asks once per run)."""
        if mlflow_run_id not in self._kinds:
            self._kinds[mlflow_run_id] = self.client.get_run(mlflow_run_id).data.tags.get(KIND_TAG, "")
        return self._kinds[mlflow_run_id]

    @_guarded()
    def start_child(self, spec: RunSpec, parent: str | None) -> str | None:
        """A child run for ``spec``; earlier unfinished ones are closed as KILLED and linked."""
        stale = [r.info.run_id for r in self.children(spec.run_id) if r.info.status in ("RUNNING", "SCHEDULED")]
        for rid in stale:
            self.client.set_terminated(rid, "KILLED")
        tags = {RUN_TAG: spec.run_id, STUDY_TAG: spec.study, KIND_TAG: "run", "variant": spec.variant,
                "seed": str(spec.config.seed), "git_commit": git_commit()}
        if parent and self._kind(parent) == INVOCATION:
            # linked, not nested: MLflow collapses nested runs under their parent's row, and the runs table
            # should list the variant runs themselves for comparing them
            tags[INVOCATION_TAG] = parent
        elif parent:
            tags["mlflow.parentRunId"] = parent  # a train-stage trial's runs stay nested under the trial
        if stale:
            tags[REPLACES_TAG] = ",".join(stale)
        return self.create_run(run_name(spec), tags, run_params(spec.config))

    @_guarded()
    def log_metrics(self, mlflow_run_id: str | None, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Numbers of ``metrics`` (NaN and non-numbers left out) at ``step``; step 0 is a summary value, which
        MLflow's chart view draws as bar and scatter charts (a metric at step >= 1 gets a line chart)."""
        if not mlflow_run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and v == v]
        for i in range(0, len(items), 500):
            self.client.log_batch(mlflow_run_id, metrics=items[i:i + 500])

    @_guarded()
    def log_epoch(self, mlflow_run_id: str | None, row: Mapping[str, Any]) -> None:
        """One history row (an epoch) of a run, stepped by its epoch, under the MLflow names."""
        self.log_metrics(mlflow_run_id, epoch_metrics(row), step=int(row.get("epoch", 0)))

    @_guarded()
    def log_result(self, mlflow_run_id: str | None, metrics: Mapping[str, Any], split: str) -> None:
        """A run's final metrics (evaluated on ``split``) as summary values, under the MLflow names."""
        self.log_metrics(mlflow_run_id, summary_metrics(metrics, split))

    @_guarded()
    def log_variant_means(self, mlflow_run_id: str | None, runs: Any, specs: Sequence[RunSpec]) -> None:
        """Per-variant means of the study's runs table (``runs.csv``) on an invocation's run (``variant_means``)."""
        self.log_metrics(mlflow_run_id, variant_means(runs, specs))

    @_guarded()
    def log_artifacts(self, mlflow_run_id: str | None, paths: list[Path], artifact_path: str | None = None) -> None:
        if not mlflow_run_id:
            return
        for p in paths:
            if p.exists():
                self.client.log_artifact(mlflow_run_id, str(p), artifact_path)

    @_guarded()
    def log_dataset(self, mlflow_run_id: str | None, spec: RunSpec, described: Mapping[str, Any]) -> None:
        """The data a run read as its MLflow dataset input (``mlflow_view.dataset_input``)."""
        if not mlflow_run_id:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        fields = dataset_input(described, spec.config.dataset.model_dump(mode="json", exclude_none=True))
        inputs = [DatasetInput(Dataset(**fields), tags=[InputTag(key="mlflow.data.context", value=DATASET_CONTEXT)])]
        try:
            self.client.log_inputs(mlflow_run_id, datasets=inputs)
        except MlflowException as exc:
            # The store keeps one row per (experiment, name, digest) and inserts it when no run has logged it yet:
            # two processes starting runs on the same data race on that insert, and the loser is refused. The row
            # now exists, so logging again only links this run to it.
            if not _DUPLICATE_DATASET.search(str(exc)):
                raise
            self.client.log_inputs(mlflow_run_id, datasets=inputs)

    @_guarded()
    def set_tag(self, mlflow_run_id: str | None, key: str, value: str) -> None:
        if mlflow_run_id:
            self.client.set_tag(mlflow_run_id, key, value)


# How a SQL store (PostgreSQL, SQLite, MySQL) refuses a second insert of one dataset row (``log_dataset``)
_DUPLICATE_DATASET = re.compile(r"(duplicate key|UNIQUE constraint failed|Duplicate entry).*(dataset|datasets)",
                                re.IGNORECASE | re.DOTALL)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _init_lock_path(uri: str, results: Path) -> Path:
    """Where processes serialise store creation: next to a sqlite store, else in the results directory."""
    return Path(uri[len("sqlite:///"):] + ".lock") if uri.startswith("sqlite:///") else results / ".mlflow.lock"


@dataclass(frozen=True)
class TrackingTarget:
    """Where a run is mirrored, as plain data (a unit of work carries it to another process or machine):
    the study's tracking settings, its results directory and the MLflow run to nest under.

    ``off`` is filled in when the target is made during an invocation whose store already failed: a worker
    process given it then neither tries the store again nor repeats the warning."""

    config: TrackingConfig
    study: str
    results: Path
    parent: str | None = None
    off: str = ""

    def __post_init__(self) -> None:
        if not self.off and not _ENDED and self.config.enabled:
            object.__setattr__(self, "off", _FAILED.get(tracking_uri(self.config, self.results), ""))


_TRACKERS: dict[tuple[str, str, str], Tracker] = {}


def tracker_for(target: TrackingTarget) -> Tracker:
    """One ``Tracker`` per store and experiment while an invocation runs (a worker runs many units: the store is
    opened once); ``close_trackers`` ends the invocation, so the next one opens the store afresh (a store that
    failed is tried again then)."""
    global _ENDED
    if _ENDED:
        _FAILED.clear()
        _ENDED = False
    key = (tracking_uri(target.config, target.results), target.config.experiment or target.study,
           str(target.results.resolve()))
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(target.config, target.study, target.results, off=target.off)
    return _TRACKERS[key]


def close_trackers() -> None:
    global _ENDED
    _TRACKERS.clear()
    _ENDED = True


def mirror_run(tracker: Tracker, spec: RunSpec, run_dir: Path, parent: str | None) -> bool:
    """Log a finished run from its records (tracking was off or failed, or the store is new); True when it did.

    Holds the run's claim while it logs: a run that another process holds (finishing it, and logging it itself)
    is left to that process, so no run gets two FINISHED children."""
    if not tracker.enabled:
        return False
    with records.claim(run_dir) as mine:
        if not mine or tracker.has_finished(spec.run_id) or not tracker.enabled:
            return False
        child = tracker.start_child(spec, parent)
        if child is None:
            return False
        result = records.read_json(run_dir / records.METRICS) or {}
        if "dataset" in result.get("details", {}):  # records from before datasets were recorded have none
            tracker.log_dataset(child, spec, result["details"]["dataset"])
        hist = run_dir / records.HISTORY
        if hist.exists():
            import pandas as pd

            for row in pd.read_csv(hist).to_dict("records"):
                tracker.log_epoch(child, row)
        split = spec.config.eval.split
        for ov in spec.config.eval.overrides:  # as run_one logs them while it evaluates
            ev = records.read_json(run_dir / EVALS / f"{ov.name}.json") or {}
            tracker.log_metrics(child, override_metrics(ov.name, ev.get("metrics", {}), split))
        tracker.log_result(child, result.get("metrics", {}), split)
        tracker.log_artifacts(child, [run_dir / records.CONFIG, run_dir / records.METRICS, hist])
        tracker.finish(child, "FINISHED")
        return tracker.enabled


def recorded_specs(study_dir: Path) -> list[RunSpec]:
    """The runs of a study whose records say they are done."""
    return [s for s in records.read_specs(study_dir) if records.run_state(study_dir / s.run_id, s.run_id) == "done"]


def mirror_missing(tracker: Tracker, study_dir: Path, parent: str | None) -> list[str]:
    """Mirror every done run of ``study_dir`` that has no FINISHED child in the store; returns their run ids."""
    if not tracker.enabled or tracker.experiment_id is None:
        return []
    have = tracker.finished_run_ids()
    return [spec.run_id for spec in recorded_specs(study_dir)
            if spec.run_id not in have and mirror_run(tracker, spec, study_dir / spec.run_id, parent)]
