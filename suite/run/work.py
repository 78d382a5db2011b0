"""The unit of work and its result as plain data: what every executor (``suite.run.unit.run_one``, the local pool,
the cluster, a distributed launch) hands around. A module of its own, importing nothing of ``suite.run``, so that
``unit`` and ``distributed`` both depend on it and never on each other's types (no import cycle)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from suite.config import RunSpec
from suite.tracking import TrackingTarget

Outcome = Literal["done", "skipped", "busy", "waiting", "failed"]  # waiting: a run it needs is not finished


@dataclass(frozen=True)
class RunUnit:
    """One run to execute: everything ``run_one`` needs, as plain data."""

    spec: RunSpec
    study_dir: Path  # results/<study>: the run's records go to study_dir/<run_id>/
    device: str = "auto"  # auto: cuda when visible, else cpu
    progress: bool = False  # a progress bar per epoch
    oom_retry: bool = True  # retry at half batch size after CUDA out-of-memory
    tracking: TrackingTarget | None = None  # None: records only
    # A run recorded as failed after this moment (time.time()) failed during the current invocation, in another
    # process: it is reported, not retried at once. inf: always retry.
    since: float = math.inf
    nproc_per_run: int = 1  # ranks training this run (DDP); where it executes, never what it computes
    ddp_timeout_s: float = 1800.0  # limit on one collective of a distributed run: a dead peer fails it after this

    @property
    def run_dir(self) -> Path:
        return self.study_dir / self.spec.run_id


@dataclass(frozen=True)
class RunResult:
    run_id: str
    outcome: Outcome
    reason: str = ""  # why it failed
