"""Subprocess helpers shared by the CLI tests: one environment for every child, a background ``spikesuite run``
and a run's status. A plain module beside the tests (pytest puts tests/ on sys.path), so any test file that imports
it also runs on its own (``pytest tests/test_ui.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from suite import records


def child_env(*drop: str) -> dict[str, str]:
    """The environment of every subprocess a test starts: one thread, unbuffered, no inherited tracking URI
    (nor the variables in ``drop``)."""
    gone = {"MLFLOW_TRACKING_URI", *drop}
    env = {k: v for k, v in os.environ.items() if k not in gone}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


class Background:
    """A command in the background with its output in ``log``'s ``.out`` and ``.err`` files."""

    def __init__(self, cmd: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None):
        self.log = log
        self.out_path, self.err_path = log.with_suffix(".out"), log.with_suffix(".err")
        self.out, self.err = open(self.out_path, "w"), open(self.err_path, "w")
        self.p = subprocess.Popen(cmd, stdout=self.out, stderr=self.err, env=env or child_env(), cwd=cwd)

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.p.wait(timeout)
        finally:
            self.out.close(), self.err.close()

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        assert self.wait() == -signal.SIGKILL

    @property
    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return self.err_path.read_text()

    def wait_until(self, cond, what: str, timeout: float = 120) -> None:
        t0 = time.monotonic()
        while not cond():
            if self.p.poll() is not None:
                raise AssertionError(f"ended (rc {self.p.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.02)


class Proc(Background):
    """``python -m suite run STUDY --results DIR --no-progress`` in the background, output to files."""

    def __init__(self, study: Path, results: Path, log: Path, *args: str):
        super().__init__([sys.executable, "-m", "suite", "run", str(study), "--results", str(results),
                          "--no-progress", *args], log, cwd=study.parent)


def status(run_dir: Path) -> dict:
    return records.read_json(run_dir / records.STATUS) or {}
