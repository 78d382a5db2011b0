"""Attach a written report to the study's MLflow store, when one exists, after mirroring the study's finished runs
the store lacks (mlflow is imported only inside ``suite.tracking.Tracker``, and only when logging). The records
stay the source of truth: a tracking failure never stops the report (one warning, as for a run: the same
``Tracker`` with its bounded calls)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from suite.names import REPORT_DIR
from suite.report.load import StudyRecords
from suite.tracking import Tracker, mirror_missing, tracking_uri

log = logging.getLogger(__name__)
SQLITE = "sqlite:///"


def mlflow_store(rec: StudyRecords) -> tuple[str, str] | None:
    """(tracking URI, experiment) of the study's existing store, or None when tracking is off or there is no
    store: ``suite.tracking.tracking_uri`` (MLFLOW_TRACKING_URI, else tracking.uri, else ``<results>/mlflow.db``);
    a sqlite store must already exist (the report never creates one)."""
    tracking = rec.tracking
    if not tracking.enabled:
        return None
    uri = tracking_uri(tracking, rec.study_dir.resolve().parent)
    if uri.startswith(SQLITE) and not Path(uri[len(SQLITE):]).is_file():
        return None
    return uri, tracking.experiment or rec.name


def log_to_mlflow(rec: StudyRecords, artifacts: Sequence[Path], page: Path) -> str | None:
    """Mirror the study's done runs that the store lacks (a run whose tracking failed or was off), then attach the
    report to the study's latest invocation (parent) run; returns its id, None when there is none, the store has
    no such experiment (the report never creates one) or tracking failed (one warning, never an exception)."""
    if mlflow_store(rec) is None:
        return None
    tracker = Tracker(rec.tracking, rec.name, rec.study_dir.resolve().parent, create=False)
    if not tracker.enabled or tracker.experiment_id is None:
        return None
    parent = tracker.latest_parent()
    mirrored = mirror_missing(tracker, rec.study_dir, parent)
    if mirrored:
        log.info("mirrored %d finished run%s missing from MLflow (%s)", len(mirrored),
                 "" if len(mirrored) == 1 else "s", " ".join(mirrored))
    if parent is None:
        return None
    tracker.log_artifacts(parent, list(artifacts), REPORT_DIR)
    tracker.log_artifacts(parent, [page])
    return parent if tracker.enabled else None
