"""Trainable per-module binary timestep masks (Datta et al., arXiv 2311.16456, reconstructed).

Each module group holds one real score per timestep. Forward: ``m[t] = 1[score[t] > threshold]``;
backward: a straight-through estimator. The mask multiplies the spikes of every LIF layer in the
group, so a masked step of a module contributes nothing downstream and costs nothing in the counts.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class TimeMaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    granularity: Literal["block", "layer", "type"] = "block"  # one mask per block | per LIF layer | per SPS/SSA/MLP
    threshold: float = 0.0  # mask = score > threshold; overridable at evaluation
    ste: Literal["identity", "sigmoid"] = "identity"  # backward of the hard mask
    penalty: float = Field(1e-3, ge=0)  # lambda (reconstruction: the paper's value is unknown)
    penalty_on: Literal["sigmoid", "mask"] = "sigmoid"  # lambda * sum sigmoid(scores) | lambda * sum mask (STE)
    init: float = 1.0  # initial score of every step (> threshold: all steps start on)


def group_of(layer: str, granularity: str) -> str:
    """The mask group a LIF layer belongs to (layer names from ``lif_layer_names``)."""
    if granularity == "layer":
        return layer
    owner, kind = layer.split(".", 1)
    if granularity == "block":
        return owner  # "stem" or "block<i>"
    if owner == "stem":
        return "sps"
    return "ssa" if kind in ("q", "k", "v", "attn", "proj") else "mlp"


class TimeMask(nn.Module):
    """Scores ``[G, T]`` for G groups; ``layer_masks`` maps every LIF layer to its group's mask."""

    def __init__(self, cfg: TimeMaskConfig, layers: list[str], T: int):
        super().__init__()
        self.cfg = cfg
        self.layer_group = {name: group_of(name, cfg.granularity) for name in layers}
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
