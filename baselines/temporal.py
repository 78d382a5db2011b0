"""Temporal baselines: per-sample early exit (SEENN-I, DT-SNN) and the TET loss.

Early exit is evaluation-only and simulated on the per-timestep logits of a full forward (as the
SEENN code does): a sample exits at the first step whose cumulative prediction is confident enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from suite.config import ExitConfig


@dataclass
class ExitResult:
    pred: Tensor  # [B] prediction at the exit step
    exit_step: Tensor  # [B] long, 1-based timestep at which each sample exits


def exit_scores(step_logits: Tensor, criterion: str) -> Tensor:
    """[T, B] score of the cumulative mean logits after each step (SEENN test_snn.py convention)."""
    T = step_logits.shape[0]
    cum = step_logits.cumsum(0) / torch.arange(1, T + 1, device=step_logits.device).view(T, 1, 1)
    p = F.softmax(cum, -1)
    if criterion == "confidence":
        return p.max(-1).values
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / math.log(p.shape[-1])


def early_exit(step_logits: Tensor, cfg: ExitConfig) -> ExitResult:
    """Exit at the first step with score > threshold, else at the last step."""
    scores = exit_scores(step_logits, cfg.criterion)
    passed = scores > cfg.threshold
    passed[-1] = True
    first = passed.to(torch.int8).argmax(0)  # first True along time
    cum = step_logits.cumsum(0)
    pred = cum.gather(0, first.view(1, -1, 1).expand(1, -1, cum.shape[-1]))[0].argmax(-1)
    return ExitResult(pred=pred, exit_step=first + 1)


def tet_loss(step_logits: Tensor, target: Tensor, *, lam: float, phi: float = 1.0,
             label_smoothing: float = 0.0) -> Tensor:
    """TET (Deng et al., ICLR 2022): mean over steps of CE(O_t, y), plus ``lam`` * MSE(O_t, phi)."""
    T = step_logits.shape[0]
    flat = step_logits.flatten(0, 1)
    tgt = target.repeat(T) if target.dim() == 1 else target.repeat(T, 1)
    ce = F.cross_entropy(flat, tgt, label_smoothing=label_smoothing)
    mse = F.mse_loss(step_logits, torch.full_like(step_logits, phi))
    return (1 - lam) * ce + lam * mse
