"""Adaptive computation time over blocks and timesteps (AT-SNN, reconstructed on A-ViT's bookkeeping).

A *unit* is one (block, timestep) pair in 2-D mode or one block in 1-D mode (A-ViT, tokens shared
across timesteps). Token k's halting score at a unit is ``h = sigmoid(gamma * z[k, c] - beta)``,
read from channel ``c`` of the residual stream *entering* the unit. A token is processed at a unit
while its cumulative score before the unit is below ``1 - eps``; the unit where the sum crosses it
is its last, weighted by the remainder ``R``. Reading the score on entry (A-ViT reads it on exit,
which is the same rule shifted by one unit) lets a block-major model decide a whole block's masks
over all timesteps before running it, so blocks keep running all timesteps at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class UnitStep:
    """Bookkeeping of one unit for a batch of tokens (all [..., B, N])."""

    active: Tensor  # bool: processed at this unit
    weight: Tensor  # float: ACT weight of the unit's output (h, or the remainder at the halting unit)
    cum_delta: Tensor  # float: added to the cumulative score
    ponder: Tensor  # float: units used (+ remainder at the halting unit)


def halting_score(z: Tensor, channel: int, gamma: Tensor | float, beta: Tensor | float) -> Tensor:
    """``sigmoid(gamma * z[..., channel] - beta)`` for a residual stream ``z`` [..., N, C]."""
    return torch.sigmoid(gamma * z[..., channel] - beta)


def gate_features(z: Tensor, gate: str) -> Tensor:
    """What a learned gate's head reads from the residual stream ``z`` [..., C] entering a unit: ``z`` itself
    (``linear``), or ``z`` normalised over its channels to zero mean and unit variance (``norm_linear``: the
    head then sees the same scale on Spikformer's spike counts and SDT's real-valued stream)."""
    if gate == "norm_linear":
        return torch.nn.functional.layer_norm(z, z.shape[-1:], eps=1e-5)
    return z


def gate_cost(gate: str, dim: int) -> tuple[float, float]:
    """``(MACs, ACs)`` of one halting score of a token over ``dim`` channels (docs/halting_gates.md):
    channel: one multiply-add (gamma * z - beta); linear: ``dim`` MACs (w . z, the bias folded in);
    norm_linear: the mean (``dim`` ACs), centring (``dim`` ACs), the variance (``dim`` MACs), the scaling
    (``dim`` MACs) and the head (``dim`` MACs). The sigmoid is not counted for any gate."""
    if gate == "channel":
        return 1.0, 0.0
    if gate == "linear":
        return float(dim), 0.0
    return 3.0 * dim, 2.0 * dim


def unit_step(cum: Tensor, h: Tensor, threshold: float, first: bool | Tensor = False) -> UnitStep:
    """One ACT unit: tokens with ``cum < threshold`` run; those whose sum crosses it halt here
    and their output is weighted by the remainder ``1 - cum`` (so weights of a token sum to 1).
    ``first`` marks a token's first unit, which always runs (as A-ViT's first block), so that
    ``eps >= 1`` (threshold <= 0) halts every token at its first unit instead of running none."""
    active = (cum < threshold) | first
    halts = active & (cum + h >= threshold)
    a = active.to(h.dtype)
    remainder = 1.0 - cum
    weight = torch.where(halts, remainder, h) * a
    ponder = a + halts.to(h.dtype) * remainder
    return UnitStep(active, weight, h * a, ponder)


def block_units(cum: Tensor, h: Tensor, threshold: float, first: bool = False) -> tuple[UnitStep, Tensor]:
    """All timesteps of one block in block-major order: ``h`` is [T, B, N] and units run t = 0..T-1.

    Returns the stacked step ([T, B, N] fields) and the cumulative score after the block. Vectorised
    with an exclusive cumulative sum: a token's score before (l, t) is ``cum + sum_{t' < t} h``.
    ``first``: this block holds the tokens' first unit (t = 0), which always runs."""
    before = cum.unsqueeze(0) + torch.cumsum(h, 0) - h
    is_first = torch.zeros((h.shape[0],) + (1,) * (h.dim() - 1), dtype=torch.bool, device=h.device)
    is_first[0] = first
    step = unit_step(before, h, threshold, is_first)
    return step, cum + step.cum_delta.sum(0)


def prior_loss(unit_h: Tensor, target: float, std: float) -> Tensor:
    """KL(target || p) where p is the per-unit mean halting score normalised over units (clamped to
    [0.01, 0.99] as A-ViT) and the target a Gaussian over unit index centred at ``target * U``."""
    U = unit_h.numel()
    p = unit_h / unit_h.sum().clamp_min(1e-8)
    p = p.clamp(0.01, 0.99)
    idx = torch.arange(U, dtype=unit_h.dtype, device=unit_h.device)
    centre = target * U - 1
    q = torch.exp(-0.5 * ((idx - centre) / std) ** 2)
    q = q / q.sum()
    return (q * (q.clamp_min(1e-12).log() - p.log())).sum()
