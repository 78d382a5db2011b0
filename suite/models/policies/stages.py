"""Token-policy state across the stages of a hierarchical backbone (docs/models.md, "Stages").

A stage transition re-tokenises the whole map with the backbone's patch embedding (a dense, structured
downsampling, as DynamicViT's hierarchical variants keep it): halted, dropped and merged-away tokens enter it
with their frozen values. What a policy knows about a token then passes to the next stage's tokens by one
partition: next-stage token (i, j) has the children (2i, 2j), (2i+1, 2j), (2i, 2j+1), (2i+1, 2j+1) that exist.

- alive (not dropped): a next token is alive while any child is alive or was merged away (it was running);
- cumulative halting score: the children's minimum (``tokens.halting.stage_carry: min``, the default: the next
  token runs while any child runs) or their mean (``mean``: the region's average progress, which halts a region
  once its children are halted on average);
- ponder (units used so far): the children's mean, so the ponder loss stays a per-position mean;
- sizes restart at 1 (merging acts within a stage).

Maps and token depths are reported on the first stage's grid: a next-stage token's state is drawn on every
first-stage position it covers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def next_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """The grid after a stride-2 transition: ceil(H / 2) x ceil(W / 2)."""
    return (grid[0] + 1) // 2, (grid[1] + 1) // 2


def carry(x: Tensor, grid: tuple[int, int], how: str) -> Tensor:
    """``x`` [..., N] on ``grid`` -> [..., N'] on ``next_grid(grid)``: each next token from its 2x2 children by
    ``how``: max (any), min, or mean (over the children that exist)."""
    lead = x.shape[:-1]
    m = x.reshape(-1, 1, *grid)
    if how == "max":
        y = F.max_pool2d(m, 2, 2, ceil_mode=True)
    elif how == "min":
        y = -F.max_pool2d(-m, 2, 2, ceil_mode=True)
    elif how == "mean":
        y = F.avg_pool2d(m, 2, 2, ceil_mode=True)  # a partial window at an odd edge divides by its own size
    else:
        raise ValueError(f"unknown carry rule {how!r}")
    return y.reshape(*lead, -1)


def to_first_grid(x: Tensor, grids: list[tuple[int, int]], stage: int) -> Tensor:
    """``x`` [..., N_stage] -> [..., N_1]: each first-stage position takes the value of the stage token covering it."""
    lead = x.shape[:-1]
    m = x.reshape(-1, *grids[stage])
    for s in range(stage, 0, -1):
        h, w = grids[s - 1]
        m = m.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]
    return m.reshape(*lead, -1)
