"""`spikesuite ui` starts a real MLflow server on 127.0.0.1 over the suite's store."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store_on_loopback(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "suite", "ui", "--results", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        deadline = time.time() + 120  # first start creates the tables (~20 s here)
        body = b""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read()
                    break
            except OSError:
                assert proc.poll() is None, "the UI exited early"
                time.sleep(1)
        assert body.strip() == b"OK"
        if shutil.which("ss"):  # bound to loopback only (iproute2's ss lists the listening sockets)
            listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
            lines = [ln for ln in listening.splitlines() if f":{port} " in ln]
            assert lines and all("127.0.0.1" in ln for ln in lines), lines
        assert (tmp_path / "mlflow.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
