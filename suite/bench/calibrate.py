"""Part 2's calibration: BatchNorm statistics, the halting channel and the ``beta_offset`` that gives a fraction f.

f is *not* obtained by training: an eval-mode 2-D halting model is driven to a target active-token fraction by a
bisection on its evaluation-time ``beta_offset`` against ``compact.active_fraction``. The halting score reads one
residual-stream channel (``sigmoid(gamma * z[c] - beta - beta_offset)``); Spikformer's residual stream is
integer-valued (sums of spikes), Spike-driven Transformer's is real-valued (membrane shortcuts add BN outputs), so
the channel is chosen by the spread of its values and the bisection widens its bracket until it holds the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from suite.bench.common import BenchShape, autocast, ours_model, random_batch
from suite.config import HaltingConfig, TokenConfig
from suite.models import Backbone
from suite.models.compact import active_fraction


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
    so that ``beta_offset`` can select any fraction; and that channel's value distribution.

    Integer-valued streams (Spikformer: sums of spikes): the histogram of the values 0..8 (>= 8 in one bin), and
    the distribution is the share of each value. Real-valued streams (SDT): 32 equal-width bins over the 0.5 %..
    99.5 % range of all channels (outliers in the end bins), and the distribution is the channel's quantiles."""
    flat = z.reshape(-1, z.shape[-1])  # [*, C]
    if bool((flat == flat.round()).all()):
        vals = flat.round().clamp(0, 8).to(torch.long)  # integers 0..8
        bins = 9
    else:
        sample = flat.flatten()[:: max(1, flat.numel() // 1_000_000)]
        q = torch.quantile(sample, torch.tensor([0.005, 0.995], device=flat.device, dtype=flat.dtype))
        lo, hi = float(q[0]), float(q[1])
        bins = 32
        vals = ((flat - lo) / max(hi - lo, 1e-12) * bins).floor().clamp(0, bins - 1).to(torch.long)
    counts = torch.zeros(bins, z.shape[-1], device=z.device).scatter_add_(
        0, vals, torch.ones_like(vals, dtype=torch.float))
    p = counts / counts.sum(0, keepdim=True)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(0)
    c = int(entropy.argmax())
    if bins == 9:
        return c, {f"{v}" if v < 8 else ">=8": float(p[v, c]) for v in range(9) if float(p[v, c]) > 0}
    levels = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
    qs = torch.quantile(flat[:, c], torch.tensor(levels, device=flat.device, dtype=flat.dtype))
    return c, {f"q{round(lv * 100)}": float(v) for lv, v in zip(levels, qs)}


def describe_values(dist: dict[str, float]) -> str:
    """The log line of ``halting_channel``'s distribution: shares of integer values, or quantiles."""
    if all(k.startswith("q") for k in dist):
        return "real-valued, quantiles " + ", ".join(f"{k} {v:+.2f}" for k, v in dist.items())
    return ", ".join(f"{k}: {v:.1%}" for k, v in dist.items())


def halting_model(shape: BenchShape, state: dict[str, Tensor], channel: int, beta_offset: float,
                  device: torch.device, backbone: str = "spikformer", stem: str = "per_step") -> Backbone:
    """A 2-D halting model with the shared weights, in eval mode, at one evaluation-time beta_offset."""
    hc = HaltingConfig(channel=channel, beta_offset=beta_offset)
    model = ours_model(shape, TokenConfig(halting=hc), backbone=backbone, stem=stem).to(device)
    model.load_state_dict(state)
    return model.eval()


def find_offset(make: Callable[[float], Backbone], x: Tensor, target: float, device: torch.device,
                lo: float = -30.0, hi: float = 30.0, iters: int = 16, tol: float = 0.01,
                widen: int = 6) -> tuple[float, float]:
    """Bisection on beta_offset for ``active_fraction`` ~ ``target`` (f rises with the offset: a larger
    offset lowers every halting score). The bracket [lo, hi] is first shifted outwards (f(hi) too small:
    [hi, hi + 2 (hi - lo)]; f(lo) too large: [lo - 2 (hi - lo), lo]; at most ``widen`` times each) until
    f(hi) >= target >= f(lo): a real-valued residual stream (SDT) can need offsets beyond +-30 (f = 1: +150
    in the committed run). Returns the best (offset, f) seen."""

    def frac(off: float) -> float:
        with autocast(device):
            return active_fraction(make(off), x)

    f_hi = frac(hi)
    for _ in range(widen):
        if f_hi >= min(target, 1.0) - (0.0 if target >= 1.0 else tol):
            break
        lo, hi = hi, hi + 2 * (hi - lo)
        f_hi = frac(hi)
    best = (hi, f_hi)
    if target >= 1.0:
        return best
    f_lo = frac(lo)
    for _ in range(widen):
        if f_lo <= target:
            break
        lo, hi, f_hi = lo - 2 * (hi - lo), lo, f_lo
        f_lo = frac(lo)
    for cand in ((lo, f_lo), (hi, f_hi)):
        if abs(cand[1] - target) < abs(best[1] - target):
            best = cand
    for _ in range(iters):
        if abs(best[1] - target) <= tol:
            break
        mid = 0.5 * (lo + hi)
        f = frac(mid)
        if abs(f - target) < abs(best[1] - target):
            best = (mid, f)
        if f < target:
            lo = mid
        else:
            hi = mid
    if not math.isfinite(best[1]):
        raise RuntimeError(f"beta_offset bisection: no finite active fraction near {target}")
    return best
