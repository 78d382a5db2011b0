"""Dataset-level diagnostics of a token policy (docs/halting_gates.md): which tokens it keeps, over a whole
evaluation split rather than a few images.

- **Foreground vs background**: a token is *foreground* when the mean input intensity of its patch exceeds
  ``FOREGROUND_LEVEL`` of the way from the image's darkest to its brightest pixel (patches: the image split into the
  token grid stretched over the image by nearest-neighbour scaling; channels averaged). The rule depends only on the image, is
  invariant to the dataset's normalisation, and on digits and Fashion-MNIST (constant black background) marks the
  strokes and the garment. Per block and timestep: the share of foreground and of background tokens still active.
- **Occlusion importance**: on the first ``OCCLUSION_IMAGES`` images of the evaluation split, a token's importance
  is the drop of the true-class logit when its patch is set to the image's darkest value (its background: zero
  intensity before normalisation on those datasets); its *units* are the (block, timestep) units the policy
  processed it for. The Spearman rank correlation of the two within each image, averaged over the images where both
  vary (n reported), says whether the policy spends its units on the tokens the model's decision depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from spikingjelly.activation_based import functional
from torch import Tensor

FOREGROUND_LEVEL = 0.1  # fraction of the image's [min, max] range a patch mean must exceed to be foreground
OCCLUSION_IMAGES = 64  # the fixed subset: the first images of the evaluation split, in order
BACKGROUND_DATASETS = ("digits", "fashion_mnist")  # datasets whose images have a constant background
FOREGROUND_RULE = (f"foreground token: patch mean intensity > min + {FOREGROUND_LEVEL} x (max - min) of its image "
                   "(patches: the token grid stretched over the image, channels averaged)")
OCCLUSION_RULE = ("importance: drop of the true-class logit when the token's patch is set to the image's minimum; "
                  "units: (block, timestep) units that processed the token; Spearman within each image, mean over "
                  "the images where both vary (n)")


def patch_owner(grid: tuple[int, int], size: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """``[H, W]`` long: the token whose patch each pixel belongs to (the token grid stretched over the image by
    nearest-neighbour scaling, so every pixel has exactly one token)."""
    n = grid[0] * grid[1]
    owner = F.interpolate(torch.arange(n, dtype=torch.float32).view(1, 1, *grid), size=size, mode="nearest")
    return owner.view(*size).long().to(device)


def patch_means(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean intensity of each token's patch ``[B, N]`` of images ``x`` [B, C, H, W] (channels averaged)."""
    owner = F.one_hot(patch_owner(grid, tuple(x.shape[-2:]), x.device).flatten(), grid[0] * grid[1]).float()
    return (x.float().mean(1).flatten(1) @ owner) / owner.sum(0).clamp_min(1)


def foreground(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, N]`` bool: the foreground tokens of images ``x`` under ``FOREGROUND_RULE``."""
    flat = x.float().mean(1).flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return patch_means(x, grid) > lo + FOREGROUND_LEVEL * (hi - lo)


@dataclass
class ActiveShares:
    """Sums over an evaluation of active foreground / background tokens per block and timestep."""

    fg_active: Tensor | None = None  # [L, T] float64
    bg_active: Tensor | None = None
    fg_tokens: float = 0.0  # token positions seen (each counted once per image)
    bg_tokens: float = 0.0

    def add(self, maps: Tensor, fg: Tensor) -> None:
        """``maps`` [B, L, T, N] bool (active tokens), ``fg`` [B, N] bool."""
        m = maps.to(torch.float64).cpu()
        f = fg.to(torch.float64).cpu()[:, None, None, :]
        fg_a, bg_a = (m * f).sum((0, 3)), (m * (1 - f)).sum((0, 3))
        self.fg_active = fg_a if self.fg_active is None else self.fg_active + fg_a
        self.bg_active = bg_a if self.bg_active is None else self.bg_active + bg_a
        self.fg_tokens += float(f.sum())
        self.bg_tokens += float((1 - f).sum())

    def record(self) -> tuple[dict[str, float], dict]:
        """``(metrics, details)``: mean shares in % over blocks and steps, and the per-unit tables."""
        fg = (self.fg_active / max(self.fg_tokens, 1.0) * 100).tolist()
        bg = (self.bg_active / max(self.bg_tokens, 1.0) * 100).tolist()
        metrics = {}  # a kind of token no image had has no share (left out, not NaN)
        if self.fg_tokens:
            metrics["fg_active_pct"] = float(np.mean(fg))
        if self.bg_tokens:
            metrics["bg_active_pct"] = float(np.mean(bg))
        return metrics, {"rule": FOREGROUND_RULE, "fg_active_pct": fg, "bg_active_pct": bg,
                         "fg_tokens": self.fg_tokens, "bg_tokens": self.bg_tokens}


@dataclass
class Occlusion:
    """Per-image Spearman correlations of token units and occlusion importance."""

    rhos: list[float] = field(default_factory=list)
    images: int = 0  # images examined (some may have constant units or importance: no rank correlation)

    def record(self) -> tuple[dict[str, float], dict]:
        metrics = {"occlusion_n": float(len(self.rhos))}
        if self.rhos:  # no image where both vary: no correlation (left out, not NaN)
            metrics["occlusion_spearman"] = float(np.mean(self.rhos))
        return (metrics,
                {"rule": OCCLUSION_RULE, "spearman": self.rhos, "images": self.images, "n": len(self.rhos)})


@torch.no_grad()
def occlusion(model, x: Tensor, y: Tensor, acc: Occlusion) -> None:
    """Add images ``x`` [B, C, H, W] (or event frames [B, T, C, H, W]) with labels ``y`` to ``acc``: each token's
    patch occluded in turn (on every frame of an event sample: its events there removed, as the minimum is 0)."""
    grid = model.grid
    B, N = x.shape[0], grid[0] * grid[1]
    out = model(x, record_maps=True)
    functional.reset_net(model)
    units = out.maps.sum((1, 2)).double().cpu()  # [B, N]
    base = out.logits.float().gather(1, y[:, None]).squeeze(1)
    owner = patch_owner(grid, tuple(x.shape[-2:]), x.device)
    lo = x.flatten(1).min(1).values.view(B, *([1] * (x.dim() - 1)))
    drops = torch.zeros(B, N, dtype=torch.float64)
    for k in range(N):
        xk = torch.where(owner == k, lo, x)
        o = model(xk)
        functional.reset_net(model)
        drops[:, k] = (base - o.logits.float().gather(1, y[:, None]).squeeze(1)).double().cpu()
    for b in range(B):
        acc.images += 1
        u, d = units[b].numpy(), drops[b].numpy()
        if np.ptp(u) > 0 and np.ptp(d) > 0:
            acc.rhos.append(float(spearmanr(u, d).statistic))
