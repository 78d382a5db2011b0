"""The machine and software a study ran on, recorded beside its results (``environment.json``) so that a report
regenerated elsewhere still says where the numbers came from. Imports torch only when asked for a device."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

SUITE_DIR = Path(__file__).parent  # git is asked about the checkout the running code comes from


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str | None:
    """``git args`` run in the suite's own folder: its stdout, or None outside a git checkout (or without git)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=SUITE_DIR)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """The full commit hash of the running code; None when it is not a git checkout."""
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit; None when it is not a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return bool(out.strip()) if out is not None else None


@functools.cache
def code_version() -> dict[str, Any]:
    """What code computed a record: ``git_commit``, ``git_dirty`` (null outside a git checkout, never an error) and
    the suite's package version. Asked once per process: a run records the code its process started with."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty(), "spikesuite_version": version("spikesuite")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: Any) -> dict[str, Any]:
    """Stable facts only (no load, no time): the same machine and install give the same dict."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "spikingjelly": version("spikingjelly"),
        "numpy": version("numpy"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "cuda": torch.version.cuda if cuda else None,
        **code_version(),
    }
