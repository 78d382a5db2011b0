"""The pieces of timm's training recipe that the official spiking-transformer code uses, each behind a ``train.*``
key: mixup / cutmix with timm's switch (``mix_batch``), the weights' EMA (``ModelEma``) and repeated augmentation
(``repeated_indices``), and timm's per-epoch cosine schedule (``timm_epoch_lambda``, ``train.lr_schedule: timm_epoch``;
the suite's own per-step schedule, with ``warmup_lr`` and the cooldown at ``min_lr``, is ``loop.lr_lambda``).

Random draws come from numpy's and torch's global generators, which the checkpoint restores (``get_rng``), so a
resumed run mixes exactly as an uninterrupted one."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn


def mixing(tc, epoch: int) -> bool:
    """Whether epoch ``epoch`` mixes batches at all: mixup or cutmix is on and ``mixup_off_epoch`` not reached
    (timm's ``mixup_off_epoch`` turns both off)."""
    return (tc.mixup > 0 or tc.cutmix > 0) and (tc.mixup_off_epoch is None or epoch < tc.mixup_off_epoch)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of side ``sqrt(1 - lam)`` of the image's, centred uniformly and clipped to the
    image; returns ``(top, bottom, left, right)`` (bottom/right exclusive)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(np.random.randint(0, height)), int(np.random.randint(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return top, bottom, left, right


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, tc) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Mixup`` in batch mode: ``(images, soft targets)``, or ``(x, y)`` unchanged when this batch is not
    mixed (probability ``1 - mixup_prob``). Each image is paired with the image ``perm`` puts beside it (a random
    permutation, or the reversed batch as timm: ``mixup_pairing``). Mixup blends
    whole images with ``lam ~ Beta(mixup, mixup)``; cutmix pastes the partner's pixels inside ``cutmix_box`` and
    weighs the two labels by area, ``lam = 1 - box area / image area`` (timm ``correct_lam``). With both on, cutmix
    is taken with probability ``mixup_switch_prob``. Label smoothing is applied by the loss (``task_loss``), which
    on a soft target equals timm's smoothed mixed targets."""
    if tc.mixup_prob < 1 and np.random.rand() >= tc.mixup_prob:  # no draw at 1: mixup-only runs keep their stream
        return x, y
    use_cutmix = tc.cutmix > 0 and (tc.mixup <= 0 or np.random.rand() < tc.mixup_switch_prob)
    lam = float(np.random.beta(tc.cutmix, tc.cutmix) if use_cutmix else np.random.beta(tc.mixup, tc.mixup))
    if tc.mixup_pairing == "reversed":  # timm: x.flip(0); no draw
        perm = torch.arange(x.shape[0] - 1, -1, -1, device=x.device)
    else:
        perm = torch.randperm(x.shape[0], device=x.device)
    if use_cutmix:
        top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
    else:
        x = lam * x + (1 - lam) * x[perm]
    onehot = F.one_hot(y, num_classes).float()
    return x, lam * onehot + (1 - lam) * onehot[perm]


class ModelEma:
    """timm's ``ModelEmaV2``: a copy of the model whose every floating-point tensor of the state dict (parameters
    and buffers such as BN statistics) follows ``ema = decay * ema + (1 - decay) * w`` after each optimizer step;
    integer buffers are copied. The copy never trains (no gradients) and is what validation evaluates."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        functional.reset_net(self.module)  # a copy of neurons mid-sequence would start from a stale potential
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (the same architecture: state dicts align)."""
        for ema, new in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema.is_floating_point():
                ema.lerp_(new.to(ema.dtype), 1.0 - self.decay)
            else:
                ema.copy_(new)


def repeated_indices(n: int, *, world: int, rank: int, seed: int, repeats: int) -> list[int]:
    """timm's ``RASampler`` (DeiT): one permutation of ``range(n)`` drawn from ``seed``, each index repeated
    ``repeats`` times in a row, padded to a multiple of ``world``; rank ``r`` takes positions ``r, r + world, ...``,
    so the copies of an image land on consecutive ranks (one rank: in one batch), each augmented apart. Each rank
    keeps its first ``ceil(n / world)`` indices, so an epoch has as many steps as without repeats. (timm also rounds
    the epoch down to a multiple of 256 images; not done here, so that small sets keep every step.)"""
    g = torch.Generator()
    g.manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    rep = [i for i in perm for _ in range(repeats)]
    total = math.ceil(len(rep) / world) * world
    rep += rep[: total - len(rep)]
    return rep[rank:total:world][: math.ceil(n / world)]


def timm_epoch_lambda(tc, steps_per_epoch: int):
    """timm's ``CosineLRScheduler`` (``t_in_epochs=True``, ``warmup_prefix=False``, one cycle) as the official
    train.py scripts step it, once per epoch, as a factor of ``lr`` per optimizer step: epoch ``e`` takes
    ``warmup_lr + e (lr - warmup_lr) / warmup_epochs`` while ``e < warmup_epochs``, then
    ``min_lr + (lr - min_lr) (1 + cos(pi e / t)) / 2`` with ``t = epochs - cooldown_epochs`` (counted from epoch 0:
    the warm-up replaces the cosine's start), then ``min_lr`` for the cooldown. ``warmup_lr`` unset: ``min_lr``."""
    start = tc.min_lr if tc.warmup_lr is None else tc.warmup_lr
    cycle = tc.epochs - tc.cooldown_epochs

    def factor(step: int) -> float:
        epoch = step // max(1, steps_per_epoch)
        if epoch < tc.warmup_epochs:
            lr = start + epoch * (tc.lr - start) / tc.warmup_epochs
        elif epoch < cycle:
            lr = tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * epoch / cycle))
        else:
            lr = tc.min_lr
        return lr / tc.lr

    return factor
