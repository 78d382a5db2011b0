"""Tracking never stops a study (suite.tracking): a store that cannot be opened or dies mid-way gives one warning,
the records are complete, and the next invocation mirrors what the store missed, each run exactly once.

Real components: `spikesuite run` processes, a corrupt and a locked sqlite file, a closed port, and a real
`mlflow server` on 127.0.0.1 with a PostgreSQL backend (started, killed and restarted by the tests). Tiny
synthetic studies, depth 1, OMP_NUM_THREADS=1."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import postgres_database
from mlflow.tracking import MlflowClient

from suite import records
from suite.config import TrackingConfig, expand, parse_study
from suite.report.load import load_records
from suite.report.mlflow import log_to_mlflow
from suite.tracking import DISABLED, Tracker, TrackingTarget, close_trackers, mirror_run, tracker_for

WARNING = DISABLED.split(":", 1)[0]  # "tracking disabled for this invocation"


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each test names its store


def study_text(name: str, seeds: int = 2, epochs: int = 1, uri: str | None = None) -> str:
    tracking = f"tracking: {{uri: '{uri}'}}\n" if uri else ""
    return f"""
name: {name}
dataset: {{name: synthetic, synthetic: {{train_size: 64, test_size: 16}}}}
model: {{depth: 1, dim: 16, heads: 2, T: 2}}
train: {{epochs: {epochs}, batch_size: 16, warmup_epochs: 0, lr: 5.0e-3, min_lr: 1.0e-4}}
eval: {{heatmap_images: 0}}
execution: {{progress: false}}
variants:
  dense: {{}}
matrix: {{seed: {list(range(seeds))}}}
{tracking}"""


def write(tmp_path: Path, text: str) -> tuple[Path, list[str]]:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path, [s.run_id for s in expand(parse_study(text))]


def env(uri: str | None = None) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    e.pop("MLFLOW_TRACKING_URI", None)
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        e.pop(k, None)  # MLflow's own defaults (minutes of retries): the suite must bound them itself
    if uri:
        e["MLFLOW_TRACKING_URI"] = uri
    return e


def spikesuite(*args: str, uri: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "suite", *args], env=env(uri), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen, timeout: float = 150) -> str:
    out = p.communicate(timeout=timeout)[0]
    assert p.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "Retrying" not in out, out[-4000:]
    return out


def run(study: Path, results: Path, *extra: str, uri: str | None = None) -> str:
    return finish(spikesuite("run", str(study), "--results", str(results), "--no-progress", *extra, uri=uri))


def warnings_in(out: str) -> list[str]:
    return [line for line in out.splitlines() if WARNING in line]


def assert_records_complete(results: Path, name: str, ids: list[str]) -> None:
    for rid in ids:
        assert records.run_state(results / name / rid, rid) == "done", rid
    assert len(records.read_json(results / name / ids[0] / records.METRICS)["metrics"]) > 5


def finished_children(client: MlflowClient, experiment: str) -> dict[str, int]:
    """run id -> its number of FINISHED child runs."""
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, int] = {}
    for r in client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'run'", max_results=1000):
        if r.info.status == "FINISHED":
            out[r.data.tags["spikesuite.run_id"]] = out.get(r.data.tags["spikesuite.run_id"], 0) + 1
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- stores that fail


def test_closed_port_one_warning_in_seconds(tmp_path):
    """Nothing listens on the port: one warning at the start, the study and its report go on without tracking
    (MLflow's client alone would retry each call for about 4 minutes)."""
    uri = f"http://127.0.0.1:{free_port()}"
    study, ids = write(tmp_path, study_text("closed", seeds=1, uri=uri))
    t0 = time.monotonic()
    out = run(study, tmp_path / "results")  # with the report, which must not try the store again
    elapsed = time.monotonic() - t0
    (line,) = warnings_in(out)
    assert line == DISABLED.format(store=uri, what="cannot be opened",
                                   reason="ConnectionRefusedError: [Errno 111] Connection refused")
    assert_records_complete(tmp_path / "results", "closed", ids)
    assert (tmp_path / "results" / "closed" / "report.html").exists()
    assert elapsed < 90, elapsed  # process start, a tiny run and the report; the store costs ~2 s of it
    print(f"spikesuite run with the store's port closed: {elapsed:.1f} s")


def test_corrupt_sqlite_store_then_mirrored_once_repaired(tmp_path):
    results = tmp_path / "results"
    study, ids = write(tmp_path, study_text("corrupt", seeds=1))
    results.mkdir()
    (results / "mlflow.db").write_bytes(os.urandom(1) + b"\x00not an sqlite file" * 1000)
    out = run(study, results, "--no-report")
    (line,) = warnings_in(out)
    assert f"MLflow store sqlite:///{(results / 'mlflow.db').resolve()} cannot be opened" in line
    assert "file is not a database" in line
    assert_records_complete(results, "corrupt", ids)
    # the user moves the damaged file away: the next invocation starts a store and mirrors every finished run
    (results / "mlflow.db").rename(results / "mlflow.db.damaged")
    out = run(study, results, "--no-report")
    assert not warnings_in(out) and out.count("done, skipped") == len(ids)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    assert finished_children(client, "corrupt") == {rid: 1 for rid in ids}


def test_locked_sqlite_store_disables_tracking_once(tmp_path, caplog):
    """Another process holds the sqlite file locked: sqlite gives up after its busy timeout, one warning (no
    MLflow error log), and every later call of the invocation does nothing (no second wait)."""
    results = tmp_path / "results"
    results.mkdir()
    cfg = TrackingConfig()
    holder = sqlite3.connect(results / "mlflow.db", isolation_level=None)
    holder.execute("CREATE TABLE busy (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        spec = expand(parse_study(study_text("locked")))[0]
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO):
            tracker = tracker_for(TrackingTarget(cfg, "locked", results))
            assert not tracker.enabled and "database is locked" in tracker.off
            assert tracker.start_parent({}) is None and tracker.start_child(spec, None) is None
            assert not tracker.has_finished(spec.run_id) and not mirror_run(tracker, spec, tmp_path, None)
            # a target made later in the invocation (a spawned worker's) carries the failure: no retry there
            assert TrackingTarget(cfg, "locked", results).off == tracker.off
            assert not Tracker(cfg, "other", results).enabled  # another experiment, same store: not tried again
        assert time.monotonic() - t0 < 30
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            DISABLED.format(store=tracker.uri, what="cannot be opened", reason=tracker.off)]
    finally:
        holder.rollback()
        holder.close()
        close_trackers()
    assert TrackingTarget(cfg, "locked", results).off == ""  # the next invocation tries the store again
    assert tracker_for(TrackingTarget(cfg, "locked", results)).enabled
    close_trackers()


def test_database_store_down_fails_in_seconds(tmp_path, caplog):
    """A postgresql:// tracking URI whose server is down: one attempt (MLflow alone retries the engine 10 times
    over ~100 s, warning each time), the password kept out of the warning."""
    port = free_port()
    cfg = TrackingConfig(uri=f"postgresql+psycopg2://spike:secret@127.0.0.1:{port}/mlflow")
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        tracker = Tracker(cfg, "pgdown", tmp_path)
    assert not tracker.enabled and time.monotonic() - t0 < 15
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith(f"{WARNING}: MLflow store postgresql+psycopg2://spike:***@127.0.0.1:{port}/mlflow "
                           "cannot be opened (OperationalError: ") and "secret" not in caplog.text


def test_failure_mid_way_warns_once_and_never_raises(tmp_path, caplog):
    """A store that breaks after opening (as a killed server does): the call that meets it warns, every later
    call does nothing; no exception reaches the caller."""
    results = tmp_path / "results"
    tracker = Tracker(TrackingConfig(), "mid", results)
    assert tracker.enabled
    parent = tracker.start_parent({})
    spec = expand(parse_study(study_text("mid")))[0]

    def broken(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    for name in ("create_run", "search_runs", "log_batch", "set_terminated", "log_artifact", "set_tag"):
        setattr(tracker.client, name, broken)
    with caplog.at_level(logging.WARNING):
        assert tracker.start_child(spec, parent) is None
        tracker.log_metrics(parent, {"a": 1.0})
        tracker.log_artifacts(parent, [Path(__file__)])
        tracker.set_tag(parent, "k", "v")
        tracker.finish(parent)
        assert not tracker.has_finished(spec.run_id)
    (line,) = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert "failed while logging (ConnectionResetError: [Errno 104] Connection reset by peer)" in line
    close_trackers()


# ---------------------------------------------------------------------------------------- an MLflow server


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a PostgreSQL backend, in its own process group (killed whole)."""

    def __init__(self, db_url: str, root: Path):
        from suite.search.storage import with_driver

        self.db, self.root, self.port = with_driver(db_url), root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.p: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        log = open(self.root / "server.log", "a")
        e = env()
        e.pop("OMP_NUM_THREADS")
        self.p = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.db,
                                   "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                                   "--port", str(self.port), "--workers", "1"],
                                  stdout=log, stderr=subprocess.STDOUT, env=e, start_new_session=True)
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                if self.p.poll() is not None or time.monotonic() - t0 > timeout:
                    self.kill()
                    raise AssertionError((self.root / "server.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(30)
        self.p = None

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


@pytest.fixture(scope="module")
def server():
    with postgres_database("mlflow") as url:
        root = Path(tempfile.mkdtemp(prefix="spikesuite-mlflow-"))
        srv = MlflowServer(url, root)
        try:
            srv.start()
            yield srv
        finally:
            srv.kill()
            shutil.rmtree(root, ignore_errors=True)


def test_two_processes_on_one_study_log_every_run_once(tmp_path, server):
    study, ids = write(tmp_path, study_text("pair", seeds=3, uri=server.uri))
    results = tmp_path / "results"
    procs = [spikesuite("run", str(study), "--results", str(results), "--no-progress", "--no-report")
             for _ in range(2)]
    outs = [finish(p) for p in procs]
    assert not any(warnings_in(o) for o in outs)
    assert not any("View run" in o for o in outs)  # MLflow's per-run URL lines (http stores) stay off stdout
    assert_records_complete(results, "pair", ids)
    assert finished_children(server.client(), "pair") == {rid: 1 for rid in ids}
    exp = server.client().get_experiment_by_name("pair")
    parents = server.client().search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'invocation'")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED"]


def test_server_killed_mid_study_loses_nothing(tmp_path, server, monkeypatch, caplog):
    """The server dies once the first run is done: one warning, the study finishes with complete records. With the
    server back, the report mirrors the runs the store missed, and the next `spikesuite run` adds none twice."""
    study, ids = write(tmp_path, study_text("killed", seeds=3))
    results = tmp_path / "results"
    p = spikesuite("run", str(study), "--results", str(results), "--no-progress", "--no-report", uri=server.uri)
    t0 = time.monotonic()
    while not any(records.run_state(results / "killed" / rid, rid) == "done" for rid in ids):
        assert p.poll() is None and time.monotonic() - t0 < 120, p.communicate()[0][-3000:]
        time.sleep(0.02)
    server.kill()
    killed_at = sum(records.run_state(results / "killed" / rid, rid) == "done" for rid in ids)
    out = finish(p)
    (line,) = warnings_in(out)
    assert f"MLflow store {server.uri} failed while logging" in line
    assert_records_complete(results, "killed", ids)
    assert killed_at < len(ids)

    server.start()
    client = server.client()
    before = finished_children(client, "killed")
    assert set(before) < set(ids) and all(n == 1 for n in before.values())  # the store missed some runs
    # what `spikesuite report` does after writing its files (here without drawing them)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    with caplog.at_level(logging.INFO):
        assert log_to_mlflow(load_records(results / "killed"), [], results / "killed" / records.RUNS_TABLE)
    assert f"mirrored {len(ids) - len(before)} finished run" in caplog.text and WARNING not in caplog.text
    assert finished_children(client, "killed") == {rid: 1 for rid in ids}
    out = run(study, results, "--no-report", uri=server.uri)
    assert not warnings_in(out) and out.count("done, skipped") == len(ids)
    assert finished_children(client, "killed") == {rid: 1 for rid in ids}
    # children the dead server left RUNNING were closed as KILLED by the mirror, which names them
    exp = client.get_experiment_by_name("killed")
    runs = client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'run'", max_results=1000)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    killed = {r.info.run_id for r in runs if r.info.status == "KILLED"}
    replaced = {rid for r in runs for rid in r.data.tags.get("spikesuite.replaces", "").split(",") if rid}
    assert killed == replaced
    # the children mirrored from the records log what the live ones logged (tests/test_mlflow_view.py compares
    # them value by value): the same names, summary values under their MLflow names
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len({frozenset(r.data.metrics) for r in finished}) == 1
    assert {"test_accuracy", "val_accuracy", "train_accuracy"} <= set(finished[0].data.metrics)
    assert sorted(r.info.run_name for r in finished) == ["dense-s0", "dense-s1", "dense-s2"]
    # the dead invocation's parent run was closed as KILLED by the next invocation (its process is gone)
    parents = client.search_runs([exp.experiment_id], "tags.`spikesuite.kind` = 'invocation'")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]


def test_a_dataset_row_lost_to_another_process_is_linked_not_fatal(tmp_path, monkeypatch):
    """Two processes starting runs on the same data race on the store's one dataset row: the loser's insert is
    refused (as PostgreSQL refused it in test_two_processes_on_one_study_log_every_run_once); logging again links
    the run to the row the winner wrote, and tracking stays on. Any other refusal still disables tracking."""
    from mlflow.exceptions import MlflowException

    spec = expand(parse_study(study_text("race", seeds=1)))[0]
    described = {"name": "synthetic", "digest": "0123456789abcdef", "train_size": 58, "val_size": 6,
                 "test_size": 16}
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'race.db'}"), "race", tmp_path)
    try:
        real = tracker.client.log_inputs
        refusals = iter([MlflowException('(psycopg2.errors.UniqueViolation) duplicate key value violates unique '
                                         'constraint "dataset_pk" DETAIL: Key (experiment_id, name, digest)')])

        def racing(*args, **kwargs):
            for exc in refusals:
                real(*args, **kwargs)  # the winner's row ...
                raise exc  # ... and the loser's refused insert
            return real(*args, **kwargs)

        monkeypatch.setattr(tracker.client, "log_inputs", racing)
        child = tracker.start_child(spec, None)
        tracker.log_dataset(child, spec, described)
        assert tracker.enabled
        (inp,) = tracker.client.get_run(child).inputs.dataset_inputs
        assert (inp.dataset.name, inp.dataset.digest) == ("synthetic", "0123456789abcdef")
        monkeypatch.setattr(tracker.client, "log_inputs", lambda *a, **k: (_ for _ in ()).throw(
            MlflowException("RESOURCE_DOES_NOT_EXIST: run gone")))
        tracker.log_dataset(child, spec, described)
        assert not tracker.enabled
    finally:
        close_trackers()
