"""Attach a written report to the study's MLflow store, when one exists (mlflow is imported only here, and
only when logging). The records stay the source of truth: a tracking failure never stops the report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from suite.names import INVOCATION, KIND_TAG, REPORT_DIR
from suite.report.load import StudyRecords
from suite.tracking import tracking_uri

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
    """Attach the report to the study's latest invocation (parent) run; returns its id, None when there is none.
    A tracking failure is logged and ignored: the records stay the source of truth."""
    store = mlflow_store(rec)
    if store is None:
        return None
    uri, experiment = store
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{INVOCATION}'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            return None
        rid = parents[0].info.run_id
        for path in artifacts:
            client.log_artifact(rid, str(path), REPORT_DIR)
        client.log_artifact(rid, str(page))
        return rid
    except Exception as exc:  # noqa: BLE001 - any tracking error: warn, keep the files
        log.warning("report not logged to MLflow (%s): %s", uri, exc)
        return None
