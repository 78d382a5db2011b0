"""Part 2: inference images/s at active-token fractions f ~ 1, 0.5, 0.25 for one set of weights.

Cases: dense (no token policy), masked halting (``model(x)``: inactive tokens are zeroed, not removed) and
compacted halting (``compact_forward``: inactive tokens removed). f is driven with the evaluation-time
``beta_offset`` (bisection on ``active_fraction``), not by training. Ratio = speedup vs dense (median over rounds
of dense time / case time), next to the ideal 1/f. The stem (``model.embed``) runs before any token policy and
costs the same in every case, so the end-to-end ideal is Amdahl's ``1 / (s + (1 - s) f)`` with ``s`` the stem's
share of the dense time; the stem alone is timed too, and the *blocks-only* speedup
``(dense - stem) / (case - stem)`` (medians) is reported beside.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from suite.bench.common import (
    INFERENCE,
    TARGET_COMPACT,
    TARGET_MASKED,
    BenchConfig,
    BenchResult,
    BenchShape,
    Log,
    Target,
    autocast,
    interleave,
    iqr,
    ours_model,
    paired_ratio,
    profile_top,
    random_batch,
)
from suite.config import HaltingConfig, TokenConfig
from suite.models import Backbone
from suite.models.compact import active_fraction, compact_forward
from suite.models.context import Context

FRACTIONS = (1.0, 0.5, 0.25)  # target active-token fractions


def bn_running_stats(model: nn.Module, shape: BenchShape, device: torch.device, batches: int = 3) -> None:
    """Set every BatchNorm's running statistics from a few train-mode forwards (a cumulative average), so
    eval-mode BN normalises as after training instead of with the init's mean 0 / var 1."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(batches):
            x, _ = random_batch(shape, device, seed=100 + s)
            model(x)
            functional.reset_net(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    model.eval()


@torch.no_grad()
def residual_values(model: Backbone, x: Tensor) -> Tensor:
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
                  device: torch.device) -> Backbone:
    """A 2-D halting model with the shared weights, in eval mode, at one evaluation-time beta_offset."""
    hc = HaltingConfig(channel=channel, beta_offset=beta_offset)
    model = ours_model(shape, TokenConfig(halting=hc)).to(device)
    model.load_state_dict(state)
    return model.eval()


def find_offset(make: Callable[[float], Backbone], x: Tensor, target: float, device: torch.device,
                lo: float = -30.0, hi: float = 30.0, iters: int = 16, tol: float = 0.01) -> tuple[float, float]:
    """Bisection on beta_offset for ``active_fraction`` ~ ``target`` (f rises with the offset: a larger
    offset lowers every halting score). Returns the best (offset, f) seen."""

    def frac(off: float) -> float:
        with autocast(device):
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


def bench_inference(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Log, profile: bool,
                    fractions: Sequence[float] = FRACTIONS) -> None:
    shape, dev = cfg.shape, str(device)
    torch.manual_seed(1)
    dense = ours_model(shape).to(device)
    bn_running_stats(dense, shape, device)
    state = dense.state_dict()
    x, _ = random_batch(shape, device, seed=7)
    z = residual_values(dense, x)
    channel, dist = halting_channel(z)
    res.calibration.update(halting_channel=channel, channel_values=dist, bn_stats="3 train-mode forwards")
    log(f"[2] halting channel {channel}: residual-stream values entering the blocks "
        + ", ".join(f"{k}: {v:.1%}" for k, v in dist.items()))
    calib = x[: cfg.calib_images]
    models: dict[float, tuple[Backbone, float, float]] = {}
    for target in fractions:
        off, _ = find_offset(lambda o: halting_model(shape, state, channel, o, device), calib, target, device)
        model = halting_model(shape, state, channel, off, device)
        with autocast(device):
            f = active_fraction(model, x)
        models[target] = (model, off, f)
        log(f"[2] target f={target:.2f}: beta_offset {off:+.3f} -> active fraction {f:.3f} on the timed batch")

    @torch.no_grad()
    def run_dense() -> None:
        with autocast(device):
            dense(x)
        functional.reset_net(dense)

    @torch.no_grad()
    def run_stem() -> None:
        with autocast(device):
            dense.embed(x, Context(T=dense.T))
        functional.reset_net(dense)

    def masked(model: Backbone) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            with autocast(device):
                model(x)
            functional.reset_net(model)
        return run

    def compact(model: Backbone) -> Callable[[], None]:
        def run() -> None:
            with autocast(device):
                compact_forward(model, x)
        return run

    cases: dict[str, Callable[[], None]] = {"dense": run_dense, "stem": run_stem}
    for target, (model, _, _) in models.items():
        cases[f"f={target:.2f}/masked"] = masked(model)
        cases[f"f={target:.2f}/compact"] = compact(model)
    # The compacted path must give the masked path's logits (else its timing means nothing).
    for target, (model, _, _) in models.items():
        with torch.no_grad(), autocast(device):
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
    res.add(INFERENCE, "dense", dev, "images_per_s", B / med["dense"], _ips_iqr(times["dense"], B), 1.0,
            cfg.reps_infer)
    res.add(INFERENCE, "stem", dev, "images_per_s", B / med["stem"], _ips_iqr(times["stem"], B),
            paired_ratio(times["dense"], times["stem"]), cfg.reps_infer)
    log(f"[2] dense {B / med['dense']:.1f} images/s; stem alone {B / med['stem']:.1f} images/s "
        f"(the stem is {stem_share:.0%} of the dense time: the end-to-end speedup is at most "
        f"{1 / stem_share:.2f}x whatever f)")
    for target, (_, off, f) in models.items():
        key = f"f={target:.2f}"
        res.calibration[key] = {"beta_offset": off, "active_fraction": f}
        amdahl = 1.0 / (stem_share + (1 - stem_share) * f)
        res.add(INFERENCE, key, dev, "active_fraction", f, 0.0, 1.0 / f, B)  # ratio: the ideal speedup 1/f
        res.add(INFERENCE, key, dev, "amdahl_ideal_speedup", amdahl, 0.0, amdahl, 1)
        line = [f"[2] {key} (measured f={f:.3f}, ideal 1/f={1 / f:.2f}x, Amdahl with the stem {amdahl:.2f}x):"]
        for kind in ("masked", "compact"):
            name = f"{key}/{kind}"
            t = times[name]
            speed = paired_ratio(times["dense"], t)
            res.add(INFERENCE, name, dev, "images_per_s", B / med[name], _ips_iqr(t, B), speed, cfg.reps_infer)
            blocks = _blocks_speedup(med["dense"], med[name], med["stem"])
            if math.isfinite(blocks):
                res.add(INFERENCE, name, dev, "blocks_speedup", blocks, 0.0, blocks, cfg.reps_infer)
            line.append(f"{kind} {B / med[name]:.1f} images/s = {speed:.2f}x dense (blocks only {blocks:.2f}x)")
        log(" ".join(line[:1]) + "\n      " + "; ".join(line[1:]))
        _targets(res, key, f, times, med)
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


def _targets(res: BenchResult, key: str, f: float, times: dict[str, list[float]], med: dict[str, float]) -> None:
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
