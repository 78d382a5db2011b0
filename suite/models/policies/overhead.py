"""A token or time policy's own work, as MACs (real operands) and ACs (additions, comparisons), for
``Context.overhead`` (docs/counting.md, "Policy overhead"). Each function returns ``(macs, acs)`` summed over the
batch for what one call computes; an operation the policy would not need for a token (a halted token's score,
an ineligible merge pair) is not counted, so the counts are a lower bound of what an implementation must do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from suite.models.policies.halting import gate_cost

# One halting score sigmoid(gate(z)): the gate's own input (halting.gate_cost: one MAC for channel's gamma * z_c -
# beta), the sigmoid (one MAC, a lower bound), then the cumulative sum and the threshold test (one AC each).
SIGMOID_MACS, HALT_UPDATE_ACS = 1, 2
# One exit test per image and step: softmax over K classes (one MAC per class: exp and normalise) and the running
# mean of the logits, the max (or entropy sum) and the threshold test (2 ACs per class).
EXIT_MACS_PER_CLASS, EXIT_ACS_PER_CLASS = 1, 2


def halting(scored: float, gate: str = "channel", dim: int = 1, mean_steps: int = 0) -> tuple[float, float]:
    """``scored`` halting scores of a ``gate`` over ``dim`` channels (``tokens.halting.gate``); with ``mean_steps``
    > 0 (1-D halting on the time-averaged stream) each first reads the mean of what its gate reads over that many
    steps: one AC per step and channel read (one channel for ``channel``, all ``dim`` for the heads). A token's
    last unit has the score 1 by rule, never computed: callers leave it out of ``scored``."""
    gate_macs, gate_acs = gate_cost(gate, dim)
    read = 1 if gate == "channel" else dim
    return (gate_macs + SIGMOID_MACS) * scored, (gate_acs + HALT_UPDATE_ACS + read * mean_steps) * scored


def selector(alive: float, dim: int, hidden: int, steps: int) -> tuple[float, float]:
    """The learned selector on ``alive`` tokens: the time mean of each token (C ACs per step), the image mean
    (C ACs per token), ``Linear(2C, h)``, GELU (one MAC per unit), ``Linear(h, 2)`` and the keep score (one AC)."""
    return alive * (2 * dim * hidden + hidden + hidden * 2), alive * (dim * steps + dim + 1)


@torch.no_grad()
def merge(eligible: Tensor, dim: int, merged: float, random: bool, time_mean_steps: int = 0) -> tuple[float, float]:
    """Bipartite matching among ``eligible`` tokens ([*B, N] bool; A = even positions, B = odd): L2 norms and
    normalisation (2 C MACs per token), the A x B cosine similarities (C MACs each; none for random scores), the best
    B per A (one comparison per pair); then ``merged`` sources averaged into their destinations (2 C MACs each:
    weight and divide). ``time_mean_steps`` > 0: the metric is first averaged over that many steps (C ACs per token
    and step)."""
    e = eligible.flatten(0, -2).double()
    na, nb = e[:, 0::2].sum(-1), e[:, 1::2].sum(-1)
    pairs, tokens = float((na * nb).sum()), float(e.sum())
    macs = (0.0 if random else 2 * dim * tokens + dim * pairs) + 2 * dim * merged
    acs = pairs + dim * tokens * time_mean_steps
    return macs, acs


def exit_test(steps_evaluated: float, classes: int, dim: int) -> tuple[float, float]:
    """Early exit's confidence test at ``steps_evaluated`` (image, step) pairs: the head on that step's features
    (C x K MACs) and the test on its K logits."""
    return steps_evaluated * (dim * classes + EXIT_MACS_PER_CLASS * classes), \
        steps_evaluated * EXIT_ACS_PER_CLASS * classes


def time_gates(groups: int, T: int, images: int) -> tuple[float, float]:
    """A time mask's gates: one threshold test per group and step, charged to every image (the mask is fixed after
    training, so this is an upper bound of its per-image cost)."""
    return 0.0, float(groups * T * images)
