"""Token baselines as keep-mask policies on the shared Spikformer: random drop (the control at a
matched budget) and a learned token selector (SparseSpikformer / DynamicViT style).

A policy is called once, before block ``at_block``, with the time-averaged residual stream and the
tokens still alive; it returns a keep mask [B, N] used for that block and every later one, the same
for all timesteps. Dropped tokens keep their last representation in the readout (they are skipped,
not deleted), so the pooled features keep their scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from suite.config import DropConfig, SelectConfig


def keep_count(alive: Tensor, ratio: float) -> Tensor:
    """Tokens to keep per image: ``round(ratio * alive)``, at least one."""
    return (alive.sum(-1) * ratio).round().clamp_min(1).long()


def top_k_mask(scores: Tensor, alive: Tensor, k: Tensor) -> Tensor:
    """[B, N] 0/1 mask of the ``k[b]`` highest scores among alive tokens (vectorised over b)."""
    scores = scores.masked_fill(~alive, float("-inf"))
    order = scores.argsort(-1, descending=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                                              .expand_as(order))
    return ((ranks < k.unsqueeze(-1)) & alive).to(torch.float32)


class RandomDrop(nn.Module):
    def __init__(self, cfg: DropConfig, dim: int):
        super().__init__()
        self.cfg, self.at_block = cfg, cfg.at_block

    def forward(self, z_mean: Tensor, alive: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        gen = None
        if not self.training:
            gen = torch.Generator(device=z_mean.device).manual_seed(self.cfg.seed)
        scores = torch.rand(alive.shape, generator=gen, device=z_mean.device)
        return top_k_mask(scores, alive, keep_count(alive, self.cfg.keep_ratio)).to(z_mean.dtype), {}


class TokenSelector(nn.Module):
    """A light MLP on each token's time-averaged features and the image's mean feature scores
    keep/drop; Gumbel hard sampling (straight-through) in training, top-k at inference."""

    def __init__(self, cfg: SelectConfig, dim: int):
        super().__init__()
        hidden = max(1, int(dim * cfg.hidden))
        self.cfg, self.at_block = cfg, cfg.at_block
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, z_mean: Tensor, alive: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        a = alive.to(z_mean.dtype).unsqueeze(-1)
        image = (z_mean * a).sum(1, keepdim=True) / a.sum(1, keepdim=True).clamp_min(1)
        logits = self.net(torch.cat([z_mean, image.expand_as(z_mean)], -1))  # [B, N, 2]: keep, drop
        if self.training:
            keep = F.gumbel_softmax(logits, tau=self.cfg.tau, hard=True)[..., 0] * alive.to(z_mean.dtype)
            kept = keep.sum(-1) / alive.sum(-1).clamp_min(1)
            loss = self.cfg.ratio_weight * ((kept - self.cfg.keep_ratio) ** 2).mean()
            return keep, {"ratio_loss": loss}
        score = logits[..., 0] - logits[..., 1]
        return top_k_mask(score, alive, keep_count(alive, self.cfg.keep_ratio)).to(z_mean.dtype), {}
