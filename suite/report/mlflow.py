"""Attach a written report to the study's MLflow store, when one exists, after mirroring the study's finished runs
the store lacks (mlflow is imported only inside ``suite.tracking.Tracker``, and only when logging). The records
stay the source of truth: a tracking failure never stops the report (one warning, as for a run: the same
``Tracker`` with its bounded calls).

The page logged to MLflow is a self-contained copy (``self_contained``): MLflow's artifact viewer shows an HTML
artifact on its own, so the figures it links beside it would be broken images there. The page on disk is left as
``suite.report.page`` wrote it."""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from suite.names import REPORT_DIR
from suite.report.load import StudyRecords
from suite.tracking import Tracker, mirror_missing, tracking_uri

log = logging.getLogger(__name__)
SQLITE = "sqlite:///"
IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]*)(")', re.IGNORECASE)  # page.py writes src="..." (escaped)


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
    with tempfile.TemporaryDirectory(prefix="spikesuite-report-") as tmp:
        tracker.log_artifacts(parent, [inlined_copy(page, Path(tmp))])
    return parent if tracker.enabled else None


def self_contained(page: Path) -> str:
    """The HTML of ``page`` with each ``<img src>`` that names an image file beside it (in its directory or below)
    replaced by a ``data:`` URI of that file; other sources (URLs, missing files, files outside) are left as
    they are."""
    base = page.parent.resolve()

    def inline(m: re.Match[str]) -> str:
        src = html.unescape(m.group(2))
        parts = urlsplit(src)
        if parts.scheme or parts.netloc or not parts.path:
            return m.group(0)
        path = (base / parts.path).resolve()
        mime = mimetypes.guess_type(path.name)[0] or ""
        if not path.is_relative_to(base) or not path.is_file() or not mime.startswith("image/"):
            return m.group(0)
        return f"{m.group(1)}data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}{m.group(3)}"

    return IMG_SRC.sub(inline, page.read_text(encoding="utf-8"))


def inlined_copy(page: Path, into: Path) -> Path:
    """``self_contained(page)`` written as ``into/<page name>`` (what MLflow gets); the page itself when it cannot
    be read (logging then does what it did before: the records stay complete either way)."""
    copy = into / page.name
    try:
        copy.write_text(self_contained(page), encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("report page %s not inlined for MLflow (%s): logged as written", page, exc)
        return page
    return copy
