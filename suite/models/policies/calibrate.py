"""Calibrating a halting gate (``tokens.halting.init_fraction``): one shift of every gate logit, set by bisection on
a calibration batch so that the model, as built (or as just attached to a parent's weights), keeps a declared
fraction of its dense token-units. Spikformer's spike-count stream and SDT's real-valued one then start from the
same place whatever their gate's scale."""

from __future__ import annotations

import torch
from torch import Tensor

from suite.models.backbone import Backbone
from suite.models.compact import active_fraction

CALIBRATION_IMAGES = 256  # the first images of the training split, in order (no augmentation draw, no shuffle)
SHIFT_BOUND = 64.0  # |shift| searched; beyond it every sigmoid is saturated for any gate in float32
ITERATIONS = 40


@torch.no_grad()
def calibrate_gate(model: Backbone, x: Tensor, fraction: float) -> tuple[float, float]:
    """Set ``model.token_policy.gate_shift`` so the model in evaluation mode keeps ``fraction`` of its dense
    token-units on ``x``; returns ``(shift, fraction reached)``. The kept fraction falls as the shift rises (a
    higher score halts sooner), so bisection finds it; it cannot go below one unit per token (the first unit always
    runs), nor above 1, and the closest reachable value is taken. The model's train/eval mode is restored."""
    policy = model.token_policy
    if policy is None or getattr(policy, "gate_shift", None) is None:
        raise ValueError("calibrate_gate needs tokens.halting.init_fraction (a gate_shift buffer)")
    was_training = model.training
    model.eval()

    def kept(shift: float) -> float:
        policy.gate_shift.fill_(shift)
        return active_fraction(model, x)

    try:
        lo, hi = -SHIFT_BOUND, SHIFT_BOUND  # kept(lo) >= fraction >= kept(hi) when reachable
        k_lo, k_hi = kept(lo), kept(hi)
        for _ in range(ITERATIONS):
            if k_lo <= fraction or k_hi >= fraction:
                break
            mid = (lo + hi) / 2
            k_mid = kept(mid)
            if k_mid > fraction:
                lo, k_lo = mid, k_mid
            else:
                hi, k_hi = mid, k_mid
        shift, reached = (lo, k_lo) if abs(k_lo - fraction) <= abs(k_hi - fraction) else (hi, k_hi)
        policy.gate_shift.fill_(shift)
    finally:
        model.train(was_training)
    return shift, reached
