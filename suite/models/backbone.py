"""The backbone protocol: embed (stem) -> blocks -> head, and what policies and counting may ask of a backbone.

A backbone is an ``nn.Module`` subclass of ``Backbone`` that provides

- ``embed(x, ctx)``: images ``[B, C, H, W]`` -> tokens ``[T, B, N, C]`` (the stem, run for every timestep);
- ``blocks``: an ``nn.ModuleList`` whose items are called ``blk(z, ctx, active, size) -> (z, keys)`` with the
  policy's optional ``active`` / ``size`` tensors ``[T, B, N]`` (both ``None``: exactly the dense block), and
  ``blk.forward_packed(x, call) -> (x, keys)`` on packed rows for compacted inference (``compact.py``);
- ``head``: an ``nn.Linear`` on pooled features;
- ``lif_layers()``: every LIF layer in forward order with the metadata time masks and counting need;
- ``grid``: the token grid (rows, cols).

Everything a policy does happens here, in ``Backbone.forward``: token and time policies never name a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from suite.models.context import Context


@dataclass(frozen=True)
class LIFLayer:
    """One LIF layer of a backbone, as time masks and operation counting see it."""

    name: str  # unique; also its spike and time-mask key (``Context.fire``)
    block: int  # -1 for the stem
    owner: str  # the unit a ``granularity: block`` mask covers ("stem", "block0", ...)
    module: str  # the module type a ``granularity: type`` mask covers ("sps", "ssa", "mlp", ...)
    gates: tuple[str, ...]  # the counted synaptic layers that run only at this neuron's active steps


@dataclass
class ModelOutput:
    """Everything a forward pass produces; nothing else is read off the model."""

    logits: Tensor  # [B, K]
    step_logits: Tensor | None  # [T, B, K] logits of each timestep's pooled features (None for ACT readout)
    aux: dict[str, Tensor]  # weighted auxiliary losses, added to the task loss
    active_tokens: Tensor  # [B, L, T] tokens processed per block and timestep (a merged token counts once)
    ctx: Context  # firing and operation counts when the forward ran with count=True
    token_depth: Tensor | None = None  # [B, N] units each token position was processed for
    maps: Tensor | None = None  # [B, L, T, N] bool: active tokens (only with record_maps=True)
    unit_halting: Tensor | None = None  # [U] mean halting score per unit (for the report)
    active_steps: dict[str, float] | None = None  # LIF layer -> active timesteps (time masks)


class Backbone(nn.Module):
    """Base class of every backbone: the shared forward with optional token and time policies."""

    T: int
    grid: tuple[int, int]
    blocks: nn.ModuleList
    head: nn.Linear
    token_policy: nn.Module | None
    time_policy: nn.Module | None

    def embed(self, x: Tensor, ctx: Context) -> Tensor:
        """Images ``[B, C, H, W]`` -> tokens ``[T, B, N, C]``."""
        raise NotImplementedError

    def lif_layers(self) -> list[LIFLayer]:
        """Every LIF layer in forward order."""
        raise NotImplementedError

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def dense_token_units(self) -> int:
        """Token-units per image of the dense model: blocks x timesteps x tokens."""
        return self.depth * self.T * self.num_tokens

    def layer_order(self) -> list[str]:
        """Names of every LIF layer and counted synaptic layer in forward order (for tables and figures)."""
        names: list[str] = []
        for layer in self.lif_layers():
            names += [g for g in layer.gates if g not in names and g != layer.name]
            names.append(layer.name)
        return names + ["head"]

    def forward(self, x: Tensor, *, count: bool = False, record_maps: bool = False) -> ModelOutput:
        masks = self.time_policy.layer_masks() if self.time_policy is not None else None
        ctx = Context(T=self.T, time_masks=masks, count=count)
        z = self.embed(x, ctx)
        aux: dict[str, Tensor] = {}
        if self.time_policy is not None:
            aux.update(self.time_policy.aux_losses())
        if self.token_policy is None:
            for blk in self.blocks:
                z, _ = blk(z, ctx)
            feats = z.mean(2)  # [T, B, C]: mean over tokens, then time (official readout order)
            T, B, N = z.shape[:3]
            active = torch.full((B, self.depth, T), float(N), device=z.device)
            out = ModelOutput(self.head(feats.mean(0)), self.head(feats), aux, active, ctx,
                              maps=torch.ones(B, self.depth, T, N, dtype=torch.bool, device=z.device)
                              if record_maps else None)
        else:
            run = self.token_policy(self.blocks, z, ctx, record_maps=record_maps)
            aux.update(run.aux)
            step_logits = self.head(run.feats) if run.feats is not None else None
            out = ModelOutput(self.readout(run), step_logits, aux, run.active, ctx, run.depth, run.maps,
                              run.unit_halting)
        if count:
            ctx.synapse("head", kind="head", block=-1, x=z, fan_out=0, active=None, group=None, analog=True,
                        exact=torch.tensor(0.0), paper=torch.tensor(0.0),
                        dense=torch.tensor(float(x.shape[0] * self.head.in_features * self.head.out_features),
                                           dtype=torch.float64))
        if self.time_policy is not None:
            out.active_steps = self.time_policy.active_steps()
        return out

    def readout(self, run) -> Tensor:
        """Logits of a token policy's run: pooled per step then mean over time, or the ACT pool."""
        return self.head(run.feats.mean(0) if run.feats is not None else run.pooled)
