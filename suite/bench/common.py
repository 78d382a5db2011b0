"""What every benchmark part shares: shapes and configs, interleaved timing, the tidy result table, targets.

Parts import this module (never ``suite.bench`` itself, which imports them).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from suite.config import ModelConfig, TimeConfig, TokenConfig
from suite.environment import environment
from suite.models import Backbone, build_model

COLUMNS = ("part", "case", "device", "metric", "median", "iqr", "ratio", "n")

# The ``part`` column of bench.csv (and ``--parts``): integers, as in every committed bench.csv.
TRAIN_STEP, INFERENCE, STUDY, THROUGHPUT = 1, 2, 3, 4
PARTS = (TRAIN_STEP, INFERENCE, STUDY, THROUGHPUT)

# Targets (the brief of this benchmark); the summary table says which are met.
TARGET_STEP_RATIO = 1.0  # ours / spikingjelly training step time, CPU
TARGET_COMPACT = 0.7  # compacted speedup >= 0.7 / f at f = 0.5 and 0.25
TARGET_CEILING = 0.9  # compacted speedup end to end >= 0.9 x Amdahl's ceiling 1 / (s + (1 - s) f)
TARGET_MASKED = (0.85, 1.15)  # masked halting ~1.0x dense (it zeroes tokens, it does not remove them)
TARGET_SMOKE_S = 120.0  # smoke study < 2 min on 2 CPU cores (issue 26; 180 s before)
TARGET_RERUN_S = 15.0  # rerun (all cached) < 15 s


@dataclass(frozen=True)
class BenchShape:
    """One model/input shape shared by the training-step and inference parts."""

    depth: int
    dim: int
    heads: int
    T: int
    batch: int
    image: int  # square input, image x image pixels
    channels: int = 3
    classes: int = 10
    patch: int = 4  # spikingjelly's patch_size=4 stem pools twice (the CIFAR stem); ours: stem_pools=2

    @property
    def tokens(self) -> int:
        side = self.image
        for _ in range(2):
            side = (side + 2 - 3) // 2 + 1
        return side * side


@dataclass(frozen=True)
class BenchConfig:
    shape: BenchShape
    warmup: int  # untimed rounds before the timed ones
    reps_train: int  # timed rounds of part 1 (training step)
    reps_infer: int  # timed rounds of part 2 (inference)
    calib_images: int  # images used by the beta_offset bisection (the final f is measured on the full batch)


FULL = BenchConfig(BenchShape(depth=2, dim=128, heads=8, T=4, batch=32, image=32), warmup=2, reps_train=9,
                   reps_infer=7, calib_images=8)
QUICK = BenchConfig(BenchShape(depth=2, dim=32, heads=4, T=4, batch=8, image=16), warmup=1, reps_train=3,
                    reps_infer=3, calib_images=8)


@dataclass
class Target:
    name: str
    measured: float
    goal: str
    met: bool
    unit: str = "x"

    def row(self) -> str:
        value = f"{self.measured:.1f} s" if self.unit == "s" else f"{self.measured:.2f}{self.unit}"
        return f"{self.name:<68} {value:>10}  {self.goal:<24} {'yes' if self.met else 'NO'}"


@dataclass
class BenchResult:
    rows: list[dict] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)  # case -> top-operator table
    notes: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # part 2: halting channel, its values, beta_offset per f
    tables: list[str] = field(default_factory=list)  # extra tables printed under the target summary
    paths: list[Path] = field(default_factory=list)

    def add(self, part: int, case: str, device: str, metric: str, median: float, iqr: float, ratio: float,
            n: int) -> None:
        self.rows.append(dict(zip(COLUMNS, (part, case, device, metric, float(median), float(iqr), float(ratio),
                                            int(n)))))


Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (as training and evaluation do), fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def interleave(cases: dict[str, Callable[[], object]], *, warmup: int, reps: int,
               device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each case, timed round by round: every round runs every case once, the order
    reversed every other round (A B C, C B A, ...) so neither drift nor position favours a case."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            sync(device)
            t0 = time.perf_counter()
            cases[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[r] / den[r] (the two cases ran next to each other in round r)."""
    return statistics.median(a / b for a, b in zip(num, den))


def profile_top(fn: Callable[[], object], device: torch.device, rows: int = 12) -> str:
    """The top operators of one call of ``fn`` by self time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


# ----------------------------------------------------------------------------------------------- models


def ours_model(shape: BenchShape, tokens: TokenConfig = TokenConfig(), *, backbone: str = "spikformer",
               stem: str = "per_step") -> Backbone:
    """Our ``backbone`` at ``shape`` with two stem pools (spikingjelly's Spikformer patch_size=4 stem; SDT's
    ``pooling_stat="0011"``), the stem in mode ``stem``."""
    depth = qkformer_depth(shape) if backbone == "qkformer" else shape.depth
    cfg = ModelConfig(backbone=backbone, stem=stem, depth=depth, dim=shape.dim, heads=shape.heads, T=shape.T,
                      stem_pools=2)
    return build_model(cfg, tokens, TimeConfig(), in_channels=shape.channels, image_size=(shape.image, shape.image),
                       num_classes=shape.classes)


def qkformer_depth(shape: BenchShape) -> int:
    """QKFormer's blocks at ``shape``: one per stage at least (its stages hold 1, 1 and depth - 2 blocks)."""
    return max(3, shape.depth)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_batch(shape: BenchShape, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape.batch, shape.channels, shape.image, shape.image, generator=g)
    y = torch.randint(0, shape.classes, (shape.batch,), generator=g)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------------------------- outputs


def machine_info(device: torch.device, cfg: BenchConfig, quick: bool) -> dict:
    return {
        **environment(device),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "autocast": "bf16" if device.type == "cuda" else "off (fp32)",
        "quick": quick,
        "config": asdict(cfg),
    }


def write_csv(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False, float_format="%.6g")
    return path


def summary_table(res: BenchResult) -> str:
    lines = [f"{'target':<68} {'measured':>10}  {'goal':<24} met", "-" * 110]
    lines += [t.row() for t in res.targets] or ["(no targets: quick mode checks only that everything runs)"]
    for table in res.tables:
        lines += ["", table]
    lines += [f"note: {n}" for n in res.notes]
    if res.profiles:
        lines.append("missed targets were profiled: " + "; ".join(res.profiles))
    return "\n".join(lines)
