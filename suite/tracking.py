"""MLflow mirror of the records: experiment = study, a parent run per invocation, a child run per
run id. The records stay the source of truth; a finished run already mirrored is never logged twice,
and a run killed mid-way has its MLflow run closed as KILLED and its replacement tagged with it (as is a killed
invocation's parent run, at the next invocation on the same host)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite import records
from suite.config import RunSpec, TrackingConfig
from suite.names import (
    HOST_TAG,
    INVOCATION,
    KIND_TAG,
    MLFLOW_ARTIFACTS,
    MLFLOW_DB,
    PID_TAG,
    REPLACES_TAG,
    RUN_TAG,
    STUDY_TAG,
)

log = logging.getLogger(__name__)


def tracking_uri(cfg: TrackingConfig, results: Path) -> str:
    """MLFLOW_TRACKING_URI, else the study's ``tracking.uri``, else one sqlite store for all studies
    under the results directory (each study is an experiment in it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri or f"sqlite:///{(results / MLFLOW_DB).resolve()}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """Thin wrapper over ``MlflowClient`` (no fluent global state, so several studies can log at once)."""

    def __init__(self, cfg: TrackingConfig, study: str, results: Path):
        self.enabled = cfg.enabled
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg, results)
        name = cfg.experiment or study
        # Several processes may start on one study at once: creating the store's tables and the experiment
        # must not race (sqlite: "duplicate column name", experiment: RESOURCE_ALREADY_EXISTS).
        with records.file_lock(_init_lock_path(self.uri, results)):
            self.client = MlflowClient(self.uri)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                artifacts = (results / MLFLOW_ARTIFACTS / name).resolve().as_uri() if self.uri.startswith("sqlite") \
                    else None
                self.experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
            else:
                self.experiment_id = exp.experiment_id
        self.study = study

    def start_parent(self, tags: dict[str, str]) -> str | None:
        if not self.enabled:
            return None
        self.close_dead_parents()
        run = self.client.create_run(self.experiment_id, run_name=f"{self.study} invocation",
                                     tags={KIND_TAG: INVOCATION, STUDY_TAG: self.study, HOST_TAG: socket.gethostname(),
                                           PID_TAG: str(os.getpid()), **tags})
        return run.info.run_id

    def close_dead_parents(self) -> None:
        """Invocation runs left RUNNING by a process on this host that no longer exists (killed, machine
        restarted) are closed as KILLED, so the MLflow UI does not show them running forever."""
        here = socket.gethostname()
        for r in self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{INVOCATION}' "
                                         "and attributes.status = 'RUNNING'", max_results=1000):
            pid = r.data.tags.get(PID_TAG, "")
            if r.data.tags.get(HOST_TAG) == here and pid.isdigit() and not process_alive(int(pid)):
                self.client.set_terminated(r.info.run_id, "KILLED")

    def finish(self, mlflow_run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and mlflow_run_id:
            self.client.set_terminated(mlflow_run_id, status)

    def children(self, run_id: str) -> list:
        if not self.enabled:
            return []
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'",
                                       max_results=1000)

    def has_finished(self, run_id: str) -> bool:
        return any(r.info.status == "FINISHED" for r in self.children(run_id))

    def start_child(self, spec: RunSpec, parent: str | None) -> str | None:
        """A child run for ``spec``; earlier unfinished ones are closed as KILLED and linked."""
        if not self.enabled:
            return None
        stale = [r.info.run_id for r in self.children(spec.run_id) if r.info.status in ("RUNNING", "SCHEDULED")]
        for rid in stale:
            self.client.set_terminated(rid, "KILLED")
        tags = {RUN_TAG: spec.run_id, STUDY_TAG: spec.study, KIND_TAG: "run", "variant": spec.variant,
                "seed": str(spec.config.seed), "git_commit": git_commit()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        if stale:
            tags[REPLACES_TAG] = ",".join(stale)
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.variant}-s{spec.config.seed}-{spec.run_id}",
                                     tags=tags)
        rid = run.info.run_id
        params = flatten(spec.config.model_dump(mode="json"))
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(rid, params=items[i:i + 100])
        return rid

    def log_metrics(self, mlflow_run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        if not self.enabled or not mlflow_run_id:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and v == v]
        for i in range(0, len(items), 500):
            self.client.log_batch(mlflow_run_id, metrics=items[i:i + 500])

    def log_artifacts(self, mlflow_run_id: str | None, paths: list[Path], artifact_path: str | None = None) -> None:
        if not self.enabled or not mlflow_run_id:
            return
        for p in paths:
            if p.exists():
                self.client.log_artifact(mlflow_run_id, str(p), artifact_path)

    def set_tag(self, mlflow_run_id: str | None, key: str, value: str) -> None:
        if self.enabled and mlflow_run_id:
            self.client.set_tag(mlflow_run_id, key, value)


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


def _key(k: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in k)


@dataclass(frozen=True)
class TrackingTarget:
    """Where a run is mirrored, as plain data (a unit of work carries it to another process or machine):
    the study's tracking settings, its results directory and the MLflow run to nest under."""

    config: TrackingConfig
    study: str
    results: Path
    parent: str | None = None


_TRACKERS: dict[tuple[str, str, str], Tracker] = {}


def tracker_for(target: TrackingTarget) -> Tracker:
    """One ``Tracker`` per store and experiment while an invocation runs (a worker runs many units: the store is
    opened once); ``close_trackers`` ends the invocation, so the next one opens the store afresh."""
    key = (tracking_uri(target.config, target.results), target.config.experiment or target.study,
           str(target.results.resolve()))
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(target.config, target.study, target.results)
    return _TRACKERS[key]


def close_trackers() -> None:
    _TRACKERS.clear()


def mirror_run(tracker: Tracker, spec: RunSpec, run_dir: Path, parent: str | None) -> None:
    """Log a finished run from its records (tracking was off, or the store is new)."""
    child = tracker.start_child(spec, parent)
    hist = run_dir / records.HISTORY
    if hist.exists():
        import pandas as pd

        for row in pd.read_csv(hist).to_dict("records"):
            tracker.log_metrics(child, row, step=int(row.get("epoch", 0)))
    metrics = (records.read_json(run_dir / records.METRICS) or {}).get("metrics", {})
    tracker.log_metrics(child, metrics, step=spec.config.train.epochs)
    tracker.log_artifacts(child, [run_dir / records.CONFIG, run_dir / records.METRICS, hist])
    tracker.finish(child, "FINISHED")
