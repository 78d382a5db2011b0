"""`spikesuite ui` starts a real MLflow server on 127.0.0.1 over the suite's store, says when it answers and where
each study's runs are, stops with every process it started, and a real browser (headless Chromium) shows a
study's runs in MLflow's training view."""

from __future__ import annotations

import html
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from processes import child_env

TINY = """
name: uitiny
dataset: {name: synthetic, synthetic: {train_size: 32, test_size: 16}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 16, warmup_epochs: 0}
eval: {heatmap_images: 1}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
"""
VARIANTS = ("dense", "act")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UI:
    """``spikesuite ui`` in the background; its output (the server's included) collected line by line."""

    def __init__(self, results: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "suite", "ui", "--results", str(results), "--port",
                                      str(self.port), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=child_env(), start_new_session=True)
        self.lines: list[str] = []
        # A reader thread, so a server that says nothing cannot block the test on readline.
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match:
        """The first match of ``pattern`` in the output (the first start creates the store's tables: ~20 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.output):
                return m
            assert self.proc.poll() is None, f"the UI exited early:\n{self.output[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output[-3000:]}")

    def health(self) -> bytes:
        with DIRECT.open(f"{self.url}/health", timeout=5) as r:
            return r.read()

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        """Best effort for a failed test: SIGTERM (the UI stops its server), then SIGKILL anything left."""
        left = self.tree() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for p in left:
            if p.is_running():
                p.kill()
        self.reader.join(timeout=10)


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_ui_serves_the_store_on_loopback(tmp_path):
    ui = UI(tmp_path)
    try:
        ui.wait_for(r"\n")
        assert f"http://127.0.0.1:{ui.port}" in ui.lines[0]
        ui.wait_for(r"spikesuite ui: ready \(\d+\.\d s\); no study in this store yet")
        assert ui.health().strip() == b"OK"
        if shutil.which("ss"):  # bound to loopback only (iproute2's ss lists the listening sockets)
            listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
            lines = [ln for ln in listening.splitlines() if f":{ui.port} " in ln]
            assert lines and all("127.0.0.1" in ln for ln in lines), lines
        assert (tmp_path / "mlflow.db").exists()
    finally:
        ui.close()


def test_sigterm_stops_the_server_and_all_its_workers(tmp_path):
    """SIGTERM to the spikesuite process (not its group): it forwards it to the server it started and exits only
    once the server, uvicorn's supervisor and every worker are gone; the port is free. No deprecation noise."""
    ui = UI(tmp_path, "--workers", "2")
    try:
        ui.wait_for(r"spikesuite ui: ready")
        assert ui.health().strip() == b"OK"
        tree = ui.tree()
        assert len(tree) >= 4, tree  # the MLflow CLI, uvicorn's supervisor and its 2 workers
        ui.proc.send_signal(signal.SIGTERM)
        assert ui.proc.wait(timeout=60) == 0
        assert _refused(ui.port), "the port still answers: a server process outlived spikesuite ui"
        assert [p.pid for p in tree if not _gone(p)] == []
        ui.reader.join(timeout=10)
        noise = [ln for ln in ui.lines if "DeprecationWarning" in ln or "FutureWarning" in ln]
        assert noise == [], noise
    finally:
        ui.close()


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "suite", "ui", "--results", str(tmp_path), "--port", str(port)],
                           capture_output=True, text=True, timeout=60, env=child_env())
    assert p.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []


# A stand-in for the MLflow server: a leader whose child ignores SIGTERM and outlives it (as a stuck worker would).
STUBBORN = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('up', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""
SERVE = """
import sys
from suite.ui import serve
sys.exit(serve([sys.executable, "-c", sys.argv[1], sys.argv[2]], {}, host="127.0.0.1", port=9, grace_s=2))
"""


def test_serve_kills_what_outlives_the_forwarded_signal(tmp_path):
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", SERVE, STUBBORN, str(pids)], env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and pids.read_text().count(" ") == 1):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        tree = [psutil.Process(int(pid)) for pid in pids.read_text().split()]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert [p.pid for p in tree if not _gone(p)] == []  # the orphan that ignored SIGTERM was killed too
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_reports_a_server_that_exits_by_itself(tmp_path, capsys):
    from suite.ui import serve

    assert serve([sys.executable, "-c", "pass"], child_env(), host="127.0.0.1", port=9) == 1
    assert "exited by itself (status 0)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _dom(url: str, profile: Path) -> str:
    """The DOM once the page's scripts have run (virtual time lets the app fetch and render its runs)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-proxy-server",
           f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False).stdout


def _text(dom: str) -> str:
    visible = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", visible)).split())


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """A real study run: 2 variants, 1 epoch each, mirrored to the sqlite store under the results."""
    root = tmp_path_factory.mktemp("ui")
    (root / "uitiny.yaml").write_text(TINY)
    proc = subprocess.run([sys.executable, "-m", "suite", "run", "uitiny.yaml", "--results", "results", "--no-progress",
                           "--no-report"], cwd=root, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "results"


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_experiment_opens_in_training_view_with_its_variant_runs(tiny_results, tmp_path):
    ui = UI(tiny_results)
    try:
        link = ui.wait_for(r"uitiny\s+(http://\S+)").group(1)
        assert link.startswith(ui.url)
        dom = _dom(link, tmp_path / "profile")
        text = _text(dom)
        title = _text(m.group(1)) if (m := re.search(r"<title>(.*?)</title>", dom, re.S)) else ""
        # MLflow's training view lists runs; its GenAI view opens on an overview of traces and token usage.
        assert title.startswith("Runs - Experiment"), (title, text[:1500])
        assert "Run Name" in text and "Token Usage" not in text, text[:1500]
        assert "uitiny" in text
        # the variant runs are listed in the runs table itself (linked to their invocation, not nested under it)
        missing = [v for v in VARIANTS if not re.search(rf"\b{v}-s0\b", text)]
        assert missing == [], (missing, text[:3000])
    finally:
        ui.close()
