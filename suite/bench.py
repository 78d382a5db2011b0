"""``spikesuite bench``: wall-clock ratios measured side by side in one process.

Three parts, each a ratio of cases timed in the same process, interleaved round by round (so a load
change on a shared machine hits every case alike), after warm-up, reported as the median over rounds:

1. **Training step** (forward + backward + AdamW step + ``reset_net``) of our Spikformer vs spikingjelly
   2.0's ``model.spikformer.Spikformer`` at the same shape (same parameter count and token count, both
   checked). Ratio = median over rounds of ours / spikingjelly (< 1: ours is faster).
2. **Inference images/s** at active-token fractions f ~ 1, 0.5, 0.25 for one set of weights: dense (no
   token policy), masked halting (``model(x)``: inactive tokens are zeroed, not removed) and compacted
   halting (``compact_forward``: inactive tokens removed). f is driven with the evaluation-time
   ``beta_offset`` (bisection on ``active_fraction``), not by training. Ratio = speedup vs dense (median
   over rounds of dense time / case time), next to the ideal 1/f. The stem (4 convolutions on the full
   image) runs before any token policy and costs the same in every case, so the end-to-end ideal is
   Amdahl's ``1 / (s + (1 - s) f)`` with ``s`` the stem's share of the dense time; the stem alone is timed
   too, and the *blocks-only* speedup ``(dense - stem) / (case - stem)`` (medians) is reported beside.
3. **End-to-end** wall time of the smoke study (``studies/smoke.yaml``) in a fresh results directory and of
   its rerun (every run cached), each a ``python -m suite run ... --no-progress`` subprocess (imports,
   data, training, evaluation, MLflow, report). Ratio = time / target.

Outputs under ``out`` (default ``results/bench``): ``bench.csv`` (tidy: part, case, device, metric, median,
iqr, ratio, n), ``bench.png`` / ``bench.pdf`` (no timestamps), ``machine.json`` (CPU, cores, threads,
versions, device), and ``profile.txt`` with the top operators of any case whose target was missed.
On CUDA the forward passes run under bf16 autocast and every timing is bracketed by a synchronize.
"""

from __future__ import annotations

import io
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from suite.environment import environment
from suite.models import ModelConfig, Spikformer, TimeConfig, TokenConfig, build_model
from suite.models.context import Context
from suite.models.halting import HaltingConfig

COLUMNS = ("part", "case", "device", "metric", "median", "iqr", "ratio", "n")
SMOKE_STUDY = Path(__file__).resolve().parent.parent / "studies" / "smoke.yaml"
FRACTIONS = (1.0, 0.5, 0.25)  # target active-token fractions of part 2

# Targets (the brief of this benchmark); the summary table says which are met.
TARGET_STEP_RATIO = 1.0  # ours / spikingjelly training step time, CPU
TARGET_COMPACT = 0.7  # compacted speedup >= 0.7 / f at f = 0.5 and 0.25
TARGET_MASKED = (0.85, 1.15)  # masked halting ~1.0x dense (it zeroes tokens, it does not remove them)
TARGET_SMOKE_S = 180.0  # smoke study < 3 min on 2 CPU cores
TARGET_RERUN_S = 15.0  # rerun (all cached) < 15 s


@dataclass(frozen=True)
class BenchShape:
    """One model/input shape shared by parts 1 and 2."""

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
    reps_train: int  # timed rounds of part 1
    reps_infer: int  # timed rounds of part 2
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
        return f"{self.name:<52} {value:>10}  {self.goal:<18} {'yes' if self.met else 'NO'}"


@dataclass
class BenchResult:
    rows: list[dict] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)  # case -> top-operator table
    notes: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)  # part 2: halting channel, its values, beta_offset per f
    paths: list[Path] = field(default_factory=list)

    def add(self, part: int, case: str, device: str, metric: str, median: float, iqr: float, ratio: float,
            n: int) -> None:
        self.rows.append(dict(zip(COLUMNS, (part, case, device, metric, float(median), float(iqr), float(ratio),
                                            int(n)))))


# ----------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> AbstractContextManager:
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
            _sync(device)
            t0 = time.perf_counter()
            cases[name]()
            _sync(device)
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
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


# ----------------------------------------------------------------------------------------------- models


def ours_model(shape: BenchShape, tokens: TokenConfig = TokenConfig()) -> Spikformer:
    """Our Spikformer at ``shape`` with spikingjelly's patch_size=4 stem (two pools)."""
    cfg = ModelConfig(depth=shape.depth, dim=shape.dim, heads=shape.heads, T=shape.T, stem_pools=2)
    return build_model(cfg, tokens, TimeConfig(), in_channels=shape.channels, image_size=(shape.image, shape.image),
                       num_classes=shape.classes)


def spikingjelly_model(shape: BenchShape) -> nn.Module:
    from spikingjelly.activation_based.model.spikformer import Spikformer as SJSpikformer

    return SJSpikformer(T=shape.T, in_channels=shape.channels, img_size_h=shape.image, img_size_w=shape.image,
                        patch_size=shape.patch, num_classes=shape.classes, embed_dims=shape.dim,
                        num_heads=shape.heads, mlp_ratio=4, depths=shape.depth)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def spikingjelly_tokens(model: nn.Module, shape: BenchShape, device: torch.device) -> int:
    """Tokens after spikingjelly's stem, measured on one image."""
    x = torch.zeros(shape.T, 1, shape.channels, shape.image, shape.image, device=device)
    try:
        z = model.patch_embed(x)
    finally:
        functional.reset_net(model)
    return int(z.shape[-1] * z.shape[-2])


def _batch(shape: BenchShape, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape.batch, shape.channels, shape.image, shape.image, generator=g)
    y = torch.randint(0, shape.classes, (shape.batch,), generator=g)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------------------------- part 1


def train_step_fn(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, *, ours: bool) -> Callable[[], None]:
    """One training step: forward (+ loss) under autocast on CUDA, backward, AdamW step, reset_net."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        with _autocast(device):
            if ours:
                out = model(x)
                loss = F.cross_entropy(out.logits, y) + sum(out.aux.values(), torch.zeros((), device=device))
            else:
                loss = F.cross_entropy(model(x).mean(0), y)  # [T, B, K] per-step logits: mean over T
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        functional.reset_net(model)

    return step


def part1(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Callable[[str], None], profile: bool) -> None:
    shape, dev = cfg.shape, str(device)
    torch.manual_seed(0)
    ours = ours_model(shape).to(device)
    sj = spikingjelly_model(shape).to(device)
    p_ours, p_sj = n_params(ours), n_params(sj)
    t_ours, t_sj = ours.num_tokens, spikingjelly_tokens(sj, shape, device)
    log(f"[1] config: depth {shape.depth}, dim {shape.dim}, heads {shape.heads}, T {shape.T}, batch {shape.batch}, "
        f"{shape.image}x{shape.image}x{shape.channels} input")
    log(f"[1] parameters: ours {p_ours:,}, spikingjelly {p_sj:,} ({'equal' if p_ours == p_sj else 'DIFFERENT'}); "
        f"tokens: ours {t_ours}, spikingjelly {t_sj} ({'equal' if t_ours == t_sj else 'DIFFERENT'})")
    if p_ours != p_sj or t_ours != t_sj:
        res.notes.append(f"part 1: shapes differ (params {p_ours} vs {p_sj}, tokens {t_ours} vs {t_sj})")
    x, y = _batch(shape, device)
    cases = {"ours": train_step_fn(ours, x, y, device, ours=True),
             "spikingjelly": train_step_fn(sj, x, y, device, ours=False)}
    times = interleave(cases, warmup=cfg.warmup, reps=cfg.reps_train, device=device)
    ratio = paired_ratio(times["ours"], times["spikingjelly"])
    for name in cases:
        t = times[name]
        res.add(1, name, dev, "step_time_s", statistics.median(t), iqr(t),
                ratio if name == "ours" else 1.0, len(t))
    res.add(1, "ours", dev, "params", p_ours, 0.0, p_ours / p_sj, 1)
    res.add(1, "spikingjelly", dev, "params", p_sj, 0.0, 1.0, 1)
    res.add(1, "ours", dev, "tokens", t_ours, 0.0, t_ours / t_sj, 1)
    res.add(1, "spikingjelly", dev, "tokens", t_sj, 0.0, 1.0, 1)
    log(f"[1] train step: ours {statistics.median(times['ours']) * 1e3:.1f} ms, spikingjelly "
        f"{statistics.median(times['spikingjelly']) * 1e3:.1f} ms (medians of {cfg.reps_train}); "
        f"ours/spikingjelly = {ratio:.3f}")
    met = ratio <= TARGET_STEP_RATIO
    res.targets.append(Target("train step ours/spikingjelly", ratio, f"<= {TARGET_STEP_RATIO:.2f}", met))
    if profile and not met:
        res.profiles["part 1: ours, one training step"] = profile_top(cases["ours"], device)
        res.profiles["part 1: spikingjelly, one training step"] = profile_top(cases["spikingjelly"], device)


# ----------------------------------------------------------------------------------------------- part 2


def _bn_running_stats(model: nn.Module, shape: BenchShape, device: torch.device, batches: int = 3) -> None:
    """Set every BatchNorm's running statistics from a few train-mode forwards (a cumulative average), so
    eval-mode BN normalises as after training instead of with the init's mean 0 / var 1."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(batches):
            x, _ = _batch(shape, device, seed=100 + s)
            model(x)
            functional.reset_net(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    model.eval()


@torch.no_grad()
def residual_values(model: Spikformer, x: Tensor) -> Tensor:
    """The residual stream entering every block, [L, T, B, N, C] (forward pre-hooks on the blocks)."""
    seen: list[Tensor] = []
    hooks = [blk.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float()))
             for blk in model.blocks]
    try:
        model(x)
    finally:
        functional.reset_net(model)
        for h in hooks:
            h.remove()
    return torch.stack(seen)


def halting_channel(z: Tensor) -> tuple[int, dict[str, float]]:
    """The residual channel whose values are spread most evenly (largest entropy of the value histogram),
    so that ``beta_offset`` can select any fraction; and that channel's value distribution."""
    vals = z.round().clamp(0, 8).to(torch.long).reshape(-1, z.shape[-1])  # [*, C] integers 0..8
    counts = torch.zeros(9, z.shape[-1], device=z.device).scatter_add_(0, vals, torch.ones_like(vals, dtype=torch.float))
    p = counts / counts.sum(0, keepdim=True)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(0)
    c = int(entropy.argmax())
    dist = {f"{v}" if v < 8 else ">=8": float(p[v, c]) for v in range(9) if float(p[v, c]) > 0}
    return c, dist


def halting_model(shape: BenchShape, state: dict[str, Tensor], channel: int, beta_offset: float,
                  device: torch.device) -> Spikformer:
    """A 2-D halting model with the shared weights, in eval mode, at one evaluation-time beta_offset."""
    hc = HaltingConfig(channel=channel, beta_offset=beta_offset)
    model = ours_model(shape, TokenConfig(halting=hc)).to(device)
    model.load_state_dict(state)
    return model.eval()


def find_offset(make: Callable[[float], Spikformer], x: Tensor, target: float, device: torch.device,
                lo: float = -30.0, hi: float = 30.0, iters: int = 16, tol: float = 0.01) -> tuple[float, float]:
    """Bisection on beta_offset for ``active_fraction`` ~ ``target`` (f rises with the offset: a larger
    offset lowers every halting score). Returns the best (offset, f) seen."""
    from suite.models.compact import active_fraction

    def frac(off: float) -> float:
        with _autocast(device):
            return active_fraction(make(off), x)

    best = (hi, frac(hi))
    if target >= 1.0:
        return best
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = frac(mid)
        if abs(f - target) < abs(best[1] - target):
            best = (mid, f)
        if abs(f - target) <= tol:
            break
        if f < target:
            lo = mid
        else:
            hi = mid
    return best


def part2(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Callable[[str], None], profile: bool,
          fractions: Sequence[float] = FRACTIONS) -> None:
    from suite.models.compact import active_fraction, compact_forward

    shape, dev = cfg.shape, str(device)
    torch.manual_seed(1)
    dense = ours_model(shape).to(device)
    _bn_running_stats(dense, shape, device)
    state = dense.state_dict()
    x, _ = _batch(shape, device, seed=7)
    z = residual_values(dense, x)
    channel, dist = halting_channel(z)
    res.calibration.update(halting_channel=channel, channel_values=dist, bn_stats="3 train-mode forwards")
    log(f"[2] halting channel {channel}: residual-stream values entering the blocks "
        + ", ".join(f"{k}: {v:.1%}" for k, v in dist.items()))
    calib = x[: cfg.calib_images]
    models: dict[float, tuple[Spikformer, float, float]] = {}
    for target in fractions:
        off, _ = find_offset(lambda o: halting_model(shape, state, channel, o, device), calib, target, device)
        model = halting_model(shape, state, channel, off, device)
        with _autocast(device):
            f = active_fraction(model, x)
        models[target] = (model, off, f)
        log(f"[2] target f={target:.2f}: beta_offset {off:+.3f} -> active fraction {f:.3f} on the timed batch")

    @torch.no_grad()
    def run_dense() -> None:
        with _autocast(device):
            dense(x)
        functional.reset_net(dense)

    @torch.no_grad()
    def run_stem() -> None:
        with _autocast(device):
            dense.stem(x.unsqueeze(0).repeat(shape.T, 1, 1, 1, 1), Context(T=shape.T))
        functional.reset_net(dense)

    def masked(model: Spikformer) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            with _autocast(device):
                model(x)
            functional.reset_net(model)
        return run

    def compact(model: Spikformer) -> Callable[[], None]:
        def run() -> None:
            with _autocast(device):
                compact_forward(model, x)
        return run

    cases: dict[str, Callable[[], None]] = {"dense": run_dense, "stem": run_stem}
    for target, (model, _, _) in models.items():
        cases[f"f={target:.2f}/masked"] = masked(model)
        cases[f"f={target:.2f}/compact"] = compact(model)
    # The compacted path must give the masked path's logits (else its timing means nothing).
    for target, (model, _, _) in models.items():
        with torch.no_grad(), _autocast(device):
            ref = model(x).logits.float()
            functional.reset_net(model)
            got = compact_forward(model, x).float()
        diff = float((got - ref).abs().max())
        log(f"[2] f={target:.2f}: max |compact - masked| logit difference {diff:.2e}")
        if diff > 1e-3 * max(1.0, float(ref.abs().max())) and device.type == "cpu":
            res.notes.append(f"part 2: compacted logits differ from masked at f={target:.2f} (max {diff:.2e})")
    times = interleave(cases, warmup=cfg.warmup, reps=cfg.reps_infer, device=device)
    med = {k: statistics.median(v) for k, v in times.items()}
    B = shape.batch
    stem_share = med["stem"] / med["dense"]
    res.add(2, "dense", dev, "images_per_s", B / med["dense"], _ips_iqr(times["dense"], B), 1.0, cfg.reps_infer)
    res.add(2, "stem", dev, "images_per_s", B / med["stem"], _ips_iqr(times["stem"], B),
            paired_ratio(times["dense"], times["stem"]), cfg.reps_infer)
    log(f"[2] dense {B / med['dense']:.1f} images/s; stem alone {B / med['stem']:.1f} images/s "
        f"(the stem is {stem_share:.0%} of the dense time: the end-to-end speedup is at most "
        f"{1 / stem_share:.2f}x whatever f)")
    for target, (_, off, f) in models.items():
        key = f"f={target:.2f}"
        res.calibration[key] = {"beta_offset": off, "active_fraction": f}
        amdahl = 1.0 / (stem_share + (1 - stem_share) * f)
        res.add(2, key, dev, "active_fraction", f, 0.0, 1.0 / f, B)  # ratio: the ideal speedup 1/f
        res.add(2, key, dev, "amdahl_ideal_speedup", amdahl, 0.0, amdahl, 1)
        line = [f"[2] {key} (measured f={f:.3f}, ideal 1/f={1 / f:.2f}x, Amdahl with the stem {amdahl:.2f}x):"]
        for kind in ("masked", "compact"):
            name = f"{key}/{kind}"
            t = times[name]
            speed = paired_ratio(times["dense"], t)
            res.add(2, name, dev, "images_per_s", B / med[name], _ips_iqr(t, B), speed, cfg.reps_infer)
            blocks = _blocks_speedup(med["dense"], med[name], med["stem"])
            if math.isfinite(blocks):
                res.add(2, name, dev, "blocks_speedup", blocks, 0.0, blocks, cfg.reps_infer)
            line.append(f"{kind} {B / med[name]:.1f} images/s = {speed:.2f}x dense (blocks only {blocks:.2f}x)")
        log(" ".join(line[:1]) + "\n      " + "; ".join(line[1:]))
        _part2_targets(res, key, f, times, med)
    if profile:
        for tgt in res.targets:
            if tgt.name.startswith("compact") and not tgt.met and "f=" in tgt.name:
                key = tgt.name.split()[1]
                if "part 2: dense forward" not in res.profiles:
                    res.profiles["part 2: dense forward"] = profile_top(run_dense, device)
                label = f"part 2: compact_forward at {key}"
                if label not in res.profiles:
                    target = float(key[2:])
                    res.profiles[label] = profile_top(cases[f"{key}/compact"], device)
                    res.profiles[f"part 2: masked forward at {key}"] = profile_top(
                        masked(models[target][0]), device)


def _ips_iqr(times: Sequence[float], batch: int) -> float:
    return iqr([batch / t for t in times])


def _blocks_speedup(dense: float, case: float, stem: float) -> float:
    """(dense - stem) / (case - stem) from medians: the speedup of everything after the stem."""
    den = case - stem
    return (dense - stem) / den if den > 0 and dense > stem else math.nan


def _part2_targets(res: BenchResult, key: str, f: float, times: dict[str, list[float]],
                   med: dict[str, float]) -> None:
    masked = paired_ratio(times["dense"], times[f"{key}/masked"])
    lo, hi = TARGET_MASKED
    res.targets.append(Target(f"masked {key} speedup", masked, f"~1.0 ({lo}-{hi})", lo <= masked <= hi))
    if f > 0.75:
        return
    need = TARGET_COMPACT / f
    comp = paired_ratio(times["dense"], times[f"{key}/compact"])
    res.targets.append(Target(f"compact {key} speedup, end to end", comp, f">= {need:.2f} (0.7/f)", comp >= need))
    blocks = _blocks_speedup(med["dense"], med[f"{key}/compact"], med["stem"])
    res.targets.append(Target(f"compact {key} speedup, blocks only (stem excluded)", blocks,
                              f">= {need:.2f} (0.7/f)", math.isfinite(blocks) and blocks >= need))


# ----------------------------------------------------------------------------------------------- part 3

QUICK_STUDY = """\
name: bench_quick
description: tiny study timed by spikesuite bench --quick
dataset: {name: digits}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 128, lr: 5.0e-3, min_lr: 1.0e-4, warmup_epochs: 0}
eval: {heatmap_images: 2}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
"""


def _suite_run(study: Path, results: Path, device: torch.device, profile_to: Path | None = None) -> tuple[float, str]:
    cmd = [sys.executable]
    if profile_to is not None:
        cmd += ["-m", "cProfile", "-o", str(profile_to)]
    cmd += ["-m", "suite", "run", str(study), "--results", str(results), "--no-progress", "--device", device.type]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return wall, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def part3(quick: bool, device: torch.device, res: BenchResult, log: Callable[[str], None], profile: bool) -> None:
    dev = str(device)
    with tempfile.TemporaryDirectory(prefix="spikesuite-bench-") as tmp:
        tmp_path = Path(tmp)
        if quick:
            study = tmp_path / "bench_quick.yaml"
            study.write_text(QUICK_STUDY, encoding="utf-8")
        else:
            study = SMOKE_STUDY
        results = tmp_path / "results"
        name = "smoke" if not quick else "quick_study"
        first, summary = _suite_run(study, results, device)
        log(f"[3] {name}: {first:.1f} s ({summary})")
        rerun, summary = _suite_run(study, results, device)
        log(f"[3] {name} rerun: {rerun:.1f} s ({summary})")
        res.add(3, name, dev, "wall_s", first, 0.0, first / TARGET_SMOKE_S, 1)
        res.add(3, f"{name}_rerun", dev, "wall_s", rerun, 0.0, rerun / TARGET_RERUN_S, 1)
        runs_csv = results / ("smoke" if not quick else "bench_quick") / "runs.csv"
        if runs_csv.exists():
            import pandas as pd

            runs = pd.read_csv(runs_csv)
            if "train_time_s" in runs:
                train = float(runs["train_time_s"].sum())
                log(f"[3] training inside the study: {train:.1f} s over {len(runs)} runs "
                    f"({train / first:.0%} of the first run's wall time)")
                res.add(3, name, dev, "train_time_s", train, 0.0, train / first, len(runs))
        smoke_met = first < TARGET_SMOKE_S
        rerun_met = rerun < TARGET_RERUN_S
        if not quick:
            res.targets.append(Target("smoke study, fresh results dir", first, f"< {TARGET_SMOKE_S:.0f} s",
                                      smoke_met, "s"))
            res.targets.append(Target("smoke study rerun (all cached)", rerun, f"< {TARGET_RERUN_S:.0f} s",
                                      rerun_met, "s"))
        if profile and not quick and not rerun_met:
            prof = tmp_path / "rerun.prof"
            _suite_run(study, results, device, profile_to=prof)
            res.profiles["part 3: smoke rerun (cProfile, cumulative)"] = _pstats_top(prof, "cumulative")
        if profile and not quick and not smoke_met:
            res.profiles["part 3: smoke study, per-run training time (records)"] = _epoch_breakdown(
                results / "smoke", first)


def _epoch_breakdown(study_dir: Path, wall: float) -> str:
    """Where the first run's time went, from the records (no second 3-minute run under a profiler): each
    run's training time and its per-epoch times (a load spike on a shared machine shows as outliers)."""
    import pandas as pd

    lines = [f"{'run':<14}{'variant':<11}{'seed':>5}{'train s':>9}{'epoch s (median, min, max)':>30}"]
    total = 0.0
    runs = pd.read_csv(study_dir / "runs.csv")
    for r in runs.itertuples():
        hist = study_dir / str(r.run_id) / "history.csv"
        ep = pd.read_csv(hist)["epoch_time_s"] if hist.exists() else pd.Series(dtype=float)
        total += float(getattr(r, "train_time_s", 0.0) or 0.0)
        lines.append(f"{r.run_id:<14}{r.variant:<11}{int(r.seed):>5}{float(getattr(r, 'train_time_s', 0.0)):>9.1f}"
                     f"{ep.median():>12.1f}{ep.min():>9.1f}{ep.max():>9.1f}")
    lines.append(f"training {total:.1f} s of {wall:.1f} s wall; the rest: imports, data, evaluation, MLflow, report")
    return "\n".join(lines) + "\n"


def _pstats_top(path: Path, key: str, rows: int = 25) -> str:
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats(key).print_stats(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- outputs


def machine_info(device: torch.device, cfg: BenchConfig, quick: bool) -> dict:
    info = {
        **environment(device),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "niceness": os.nice(0) if hasattr(os, "nice") else None,
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "autocast": "bf16" if device.type == "cuda" else "off (fp32)",
        "quick": quick,
        "config": asdict(cfg),
    }
    return info


def write_csv(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False, float_format="%.6g")
    return path


def plot(rows: list[dict], out: Path, device: str) -> list[Path]:
    """bench.png / bench.pdf: one panel per part that ran; no timestamps in either file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    parts = sorted(df.part.unique())
    style = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
             "ytick.labelsize": 7, "axes.grid": True, "axes.axisbelow": True, "grid.alpha": 0.3,
             "svg.hashsalt": "spikesuite"}
    with plt.rc_context(style):
        fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.0), squeeze=False)
        for ax, part in zip(axes[0], parts):
            {1: _plot_train, 2: _plot_infer, 3: _plot_e2e}[part](ax, df[df.part == part])
        fig.suptitle(f"spikesuite bench ({device}; medians of interleaved rounds, bars: IQR)", fontsize=9)
        fig.tight_layout()
        paths = [out / "bench.png", out / "bench.pdf"]
        fig.savefig(paths[0], dpi=150, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
        plt.close(fig)
    return paths


def _plot_train(ax, d) -> None:
    d = d[d.metric == "step_time_s"]
    names = list(d.case)
    ax.bar(names, d["median"] * 1e3, yerr=d["iqr"] * 1e3 / 2, color=["C0", "C7"][: len(names)], capsize=3)
    ratio = float(d[d.case == "ours"].ratio.iloc[0])
    ax.set_title(f"1. training step (ours/sj = {ratio:.2f})")
    ax.set_ylabel("ms per step (fwd+bwd+AdamW+reset)")


def _plot_infer(ax, d) -> None:
    fr = d[d.metric == "active_fraction"]
    f = fr["median"].to_numpy()
    order = f.argsort()
    keys = list(fr.case.to_numpy()[order])
    f = f[order]
    for kind, color, marker in (("masked", "C1", "s"), ("compact", "C0", "o")):
        sp = [float(d[(d.case == f"{k}/{kind}") & (d.metric == "images_per_s")].ratio.iloc[0]) for k in keys]
        ax.plot(f, sp, marker=marker, color=color, label=f"{kind} (end to end)")
        bl = d[(d.metric == "blocks_speedup") & d.case.isin([f"{k}/{kind}" for k in keys])]
        if kind == "compact" and len(bl) == len(keys):
            ax.plot(f, bl["median"].to_numpy()[[list(bl.case).index(f"{k}/compact") for k in keys]], marker=marker,
                    color=color, linestyle=":", label="compact (blocks only)")
    grid = torch.linspace(float(f.min()) * 0.95, 1.0, 50).numpy()
    ax.plot(grid, 1 / grid, color="k", lw=0.8, label="ideal 1/f")
    ax.plot(grid, 0.7 / grid, color="k", lw=0.8, linestyle="--", label="target 0.7/f")
    am = d[d.metric == "amdahl_ideal_speedup"].set_index("case").loc[keys, "median"].to_numpy()
    ax.plot(f, am, color="C2", lw=0.8, linestyle="-.", label="ideal with the stem (Amdahl)")
    ax.set_xlabel("active-token fraction f")
    ax.set_ylabel("speedup vs dense (images/s ratio)")
    ax.set_title("2. inference speedup vs dense")
    ax.legend(loc="upper right")


def _plot_e2e(ax, d) -> None:
    d = d[d.metric == "wall_s"]
    targets = [TARGET_RERUN_S if c.endswith("_rerun") else TARGET_SMOKE_S for c in d.case]
    ax.bar(list(d.case), d["median"], color="C0")
    ax.scatter(list(d.case), targets, marker="_", s=400, color="C3", label="target", zorder=3)
    ax.set_ylabel("wall time (s)")
    ax.set_title("3. study end to end")
    ax.legend()


# ----------------------------------------------------------------------------------------------- entry


def run_bench(out: Path | str = Path("results/bench"), *, quick: bool = False, device: str = "cpu",
              parts: Iterable[int] = (1, 2, 3), profile: bool = True, config: BenchConfig | None = None,
              log: Callable[[str], None] = print) -> BenchResult:
    """Run the benchmark parts, print the ratios and a target summary, write CSV, figure and machine.json."""
    parts = tuple(sorted(set(int(p) for p in parts)))
    if not parts or any(p not in (1, 2, 3) for p in parts):
        raise ValueError(f"parts must be a subset of (1, 2, 3), got {parts}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    cfg = config or (QUICK if quick else FULL)
    profile = profile and not quick  # quick shapes say nothing about the targets
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = BenchResult()
    if quick:
        res.notes.append("quick shapes and a tiny study: this checks that everything runs; the targets apply to "
                         "the full benchmark only")
    info = machine_info(dev, cfg, quick)
    log(f"spikesuite bench on {info['device_name']} ({dev}), {info['cpu_cores_usable']} usable cores, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}, spikingjelly {info['spikingjelly']}"
        f"{', bf16 autocast' if dev.type == 'cuda' else ''}")
    if 1 in parts:
        part1(cfg, dev, res, log, profile)
    if 2 in parts:
        part2(cfg, dev, res, log, profile)
    if 3 in parts:
        part3(quick, dev, res, log, profile)
    res.paths.append(write_csv(res.rows, out / "bench.csv"))
    res.paths += plot(res.rows, out, str(dev))
    if res.calibration:
        info["part2_calibration"] = res.calibration
    (out / "machine.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    res.paths.append(out / "machine.json")
    prof_path = out / "profile.txt"
    if res.profiles:
        prof_path.write_text("".join(f"== {k}\n{v}\n" for k, v in res.profiles.items()), encoding="utf-8")
        res.paths.append(prof_path)
    elif prof_path.exists():
        prof_path.unlink()
    log("")
    log(summary_table(res))
    for p in res.paths:
        log(f"wrote {p}")
    return res


def summary_table(res: BenchResult) -> str:
    lines = [f"{'target':<52} {'measured':>10}  {'goal':<18} met", "-" * 88]
    lines += [t.row() for t in res.targets] or ["(no targets: quick mode checks only that everything runs)"]
    lines += [f"note: {n}" for n in res.notes]
    if res.profiles:
        lines.append("missed targets were profiled: " + "; ".join(res.profiles))
    return "\n".join(lines)
