"""Trainable per-module binary timestep masks (Datta et al., arXiv 2311.16456, reconstructed).

Each module group holds one real score per timestep. Forward: ``m[t] = 1[score[t] > threshold]``;
backward: a straight-through estimator. The mask multiplies the spikes of every LIF layer in the
group, so a masked step of a module contributes nothing downstream and costs nothing in the counts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from suite.config import TimeMaskConfig
from suite.models.backbone import LIFLayer


def group_of(layer: LIFLayer, granularity: str) -> str:
    """The mask group a LIF layer belongs to, from the backbone's layer metadata."""
    if granularity == "layer":
        return layer.name
    return layer.owner if granularity == "block" else layer.module


class TimeMask(nn.Module):
    """Scores ``[G, T]`` for G groups; ``layer_masks`` maps every LIF layer to its group's mask."""

    def __init__(self, cfg: TimeMaskConfig, layers: list[LIFLayer], T: int):
        super().__init__()
        self.cfg = cfg
        self.layer_group = {layer.name: group_of(layer, cfg.granularity) for layer in layers}
        self.groups = list(dict.fromkeys(self.layer_group.values()))
        self.scores = nn.Parameter(torch.full((len(self.groups), T), float(cfg.init)))

    def group_masks(self) -> Tensor:
        """Binary ``[G, T]`` masks with a straight-through gradient to the scores.

        The highest-scoring step of each group is always kept, so every module runs at least one
        step (an all-zero mask would silence the module and cut the gradient path through it)."""
        s = self.scores
        hard = (s > self.cfg.threshold).to(s.dtype)
        hard = torch.maximum(hard, nn.functional.one_hot(s.argmax(-1), s.shape[-1]).to(s.dtype))
        soft = s if self.cfg.ste == "identity" else torch.sigmoid(s)
        return hard + (soft - soft.detach())  # exactly 0/1 forward, gradient of soft backward

    def layer_masks(self) -> dict[str, Tensor]:
        masks = self.group_masks()
        index = {g: i for i, g in enumerate(self.groups)}
        return {layer: masks[index[g]] for layer, g in self.layer_group.items()}

    def aux_losses(self) -> dict[str, Tensor]:
        if self.cfg.penalty == 0:
            return {}
        term = torch.sigmoid(self.scores) if self.cfg.penalty_on == "sigmoid" else self.group_masks()
        return {"timestep_penalty": self.cfg.penalty * term.sum()}

    @torch.no_grad()
    def active_steps(self) -> dict[str, float]:
        """Active timesteps per LIF layer (the allocation vector stored with the run)."""
        per_group = self.group_masks().detach().sum(-1)
        index = {g: i for i, g in enumerate(self.groups)}
        return {layer: float(per_group[index[g]]) for layer, g in self.layer_group.items()}
