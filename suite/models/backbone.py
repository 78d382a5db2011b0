"""The backbone protocol: embed (stem) -> blocks -> head, and what policies and counting may ask of a backbone.

A backbone is an ``nn.Module`` subclass of ``Backbone`` that provides

- ``stem``: a module ``stem(x [T', B, C, H, W], ctx) -> [T', B, N, C]`` whose ``stages[0]`` is a ``ConvBNLIF`` and
  ``rest(x, ctx)`` runs everything after it; ``Backbone.embed`` runs it in the ``model.stem`` mode;
- ``blocks``: an ``nn.ModuleList`` whose items are called ``blk(z, ctx, active, size) -> (z, keys)`` with the
  policy's optional ``active`` / ``size`` tensors ``[T, B, N]`` (both ``None``: exactly the dense block), and
  ``blk.forward_packed(x, call) -> (x, keys)`` on packed rows for compacted inference (``compact.py``);
- ``head``: an ``nn.Linear`` on pooled features;
- ``lif_layers()``: every LIF layer in forward order with the metadata time masks and counting need;
- ``grid``: the token grid (rows, cols) of the first stage;
- ``stages``: the blocks, grid and width of each stage (one stage unless the backbone is hierarchical), and
  ``transition(s, z, ctx)``: the patch merging that turns stage ``s - 1``'s tokens into stage ``s``'s (a dense,
  structured downsampling of the whole map, as DynamicViT's hierarchical variants keep it).

Everything a policy does happens here, in ``Backbone.forward``: token and time policies never name a backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from suite.config import ModelConfig
from suite.models.context import Context, LayerShape
from suite.models.policies import overhead

# The stems (Spikformer's SPS, SDT's) have four stages and pool after at most each of them.
MAX_STEM_POOLS = 4


def stem_pool_count(image_size: int) -> int:
    """Max-pools in the stem so the token grid is at most ~8x8: 8x8 digits -> 4x4 (16 tokens),
    28x28 -> 7x7 (49), 32x32 CIFAR -> 8x8 (64, as the official code), 64x64 TinyImageNet -> 8x8; at most the
    stem's four, so 224x224 ImageNet -> 14x14 (196 tokens, as the official ImageNet code)."""
    return min(MAX_STEM_POOLS, max(1, math.ceil(math.log2(image_size / 8)))) if image_size > 8 else 1


def _pooled(size: int, pools: int) -> int:
    for _ in range(pools):
        size = (size + 2 - 3) // 2 + 1  # MaxPool2d(3, stride 2, padding 1)
    return size


@dataclass(frozen=True)
class LIFLayer:
    """One LIF layer of a backbone, as time masks and operation counting see it."""

    name: str  # unique; also its spike and time-mask key (``Context.fire``)
    block: int  # -1 for the stem
    owner: str  # the unit a ``granularity: block`` mask covers ("stem", "block0", ...)
    module: str  # the module type a ``granularity: type`` mask covers ("sps", "ssa", "mlp", ...)
    gates: tuple[str, ...]  # the counted synaptic layers that run only at this neuron's active steps
    timed: bool = True  # runs at every timestep, so a time mask can allocate its steps (not a stem run once)


@dataclass(frozen=True)
class Stage:
    """One stage of a backbone: its blocks (indices into ``blocks``), token grid and width."""

    blocks: range
    grid: tuple[int, int]
    dim: int

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


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
    merged_maps: Tensor | None = None  # [B, L, T, N] bool: merged away (only with record_maps=True and merging)


class Backbone(nn.Module):
    """Base class of every backbone: the shared forward with optional token and time policies."""

    T: int
    grid: tuple[int, int]
    blocks: nn.ModuleList
    head: nn.Linear
    token_policy: nn.Module | None
    time_policy: nn.Module | None

    cfg: ModelConfig
    stem: nn.Module

    def embed(self, x: Tensor, ctx: Context) -> Tensor:
        """Images ``[B, C, H, W]`` -> tokens ``[T, B, N, C]`` in the ``model.stem`` mode (direct encoding):

        - ``per_step``: the image is repeated T times and the stem runs at every timestep;
        - ``once``: the stem runs once on the static image and every timestep gets the same tokens;
        - ``integrate`` (STAS's I-SPS, reconstructed): the first stage's convolution runs once, its LIF integrates
          that current over T steps, the spikes are averaged (or summed) over time into one rate map, the rest of
          the stem runs once on it, and every timestep gets the same tokens.

        Event frames ``[B, T, C, H, W]`` (batch first, as a DataLoader stacks them) bring their own time axis: the
        stem runs per step on ``[T, B, C, H, W]``, frame t at timestep t, nothing repeated (``RunConfig`` holds
        ``model.T == dataset.frames`` and refuses the static stem modes for event data)."""
        mode, T = self.cfg.stem, self.T
        if x.dim() == 5:
            if x.shape[1] != T or mode != "per_step":
                raise ValueError(f"event input with {x.shape[1]} frames needs model.T == frames (T={T}) and "
                                 f"stem: per_step (stem: {mode})")
            return self.stem(x.transpose(0, 1), ctx)
        if mode == "per_step":
            return self.stem(x.unsqueeze(0).repeat(T, *([1] * x.dim())), ctx)
        if mode == "once":
            z = self.stem(x.unsqueeze(0), ctx)
        else:
            s = self.stem.stages[0].forward_static(x.unsqueeze(0), T, ctx)
            s = s.mean(0, keepdim=True) if self.cfg.stem_integrate == "mean" else s.sum(0, keepdim=True)
            z = self.stem.rest(s, ctx)
        return z.repeat(T, *([1] * (z.dim() - 1)))

    def step_features(self, feats: Tensor, ctx: Context) -> Tensor:
        """Pooled features per timestep ``[T, B, C]`` -> what the head reads (identity; SDT: its head LIF)."""
        return feats

    def pooled_features(self, pooled: Tensor, ctx: Context) -> Tensor:
        """An ACT readout ``[B, C]`` (no time axis) -> what the head reads (identity; SDT: its head LIF's rate)."""
        return pooled

    def lif_layers(self) -> list[LIFLayer]:
        """Every LIF layer in forward order."""
        raise NotImplementedError

    def _setup(self, cfg: ModelConfig, image_size: tuple[int, int], num_classes: int) -> int:
        """The state every backbone shares (config, T, classes, token grid); returns the stem's max-pool count."""
        pools = cfg.stem_pools if cfg.stem_pools is not None else stem_pool_count(max(image_size))
        self.grid = (_pooled(image_size[0], pools), _pooled(image_size[1], pools))
        self.cfg, self.T, self.num_classes = cfg, cfg.T, num_classes
        return pools

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens of the first stage's grid (the grid maps and token depths are drawn on)."""
        return self.grid[0] * self.grid[1]

    @property
    def stages(self) -> list[Stage]:
        """The stages in forward order; a single-stage backbone has one holding every block."""
        return [Stage(range(self.depth), self.grid, self.cfg.dim)]

    def transition(self, stage: int, z: Tensor, ctx: Context) -> Tensor:
        """Stage ``stage - 1``'s tokens ``[T, B, N, C]`` -> stage ``stage``'s (multi-stage backbones only)."""
        raise NotImplementedError(f"{type(self).__name__} has one stage")

    def stage_kwargs(self) -> dict:
        """What a token policy's run needs to cross stages (``TokenPolicy.forward``): nothing for one stage."""
        stages = self.stages
        return {"stages": stages, "transition": self.transition} if len(stages) > 1 else {}

    def block_tokens(self) -> list[int]:
        """Tokens each block sees in the dense model, in block order."""
        return [st.num_tokens for st in self.stages for _ in st.blocks]

    @property
    def dense_token_units(self) -> int:
        """Token-units per image of the dense model: the sum over blocks of timesteps x that block's tokens."""
        return self.T * sum(self.block_tokens())

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
            T, B = z.shape[:2]
            for s, stage in enumerate(self.stages):
                z = self.transition(s, z, ctx) if s else z
                for i in stage.blocks:
                    z, _ = self.blocks[i](z, ctx)
            feats = self.step_features(z.mean(2), ctx)  # [T, B, C]: mean over tokens, then time (official order)
            active = torch.tensor(self.block_tokens(), dtype=torch.float, device=z.device)
            out = ModelOutput(self.classify(feats.mean(0), ctx), self.head(feats), aux,
                              active.view(1, -1, 1).expand(B, -1, T).contiguous(), ctx,
                              maps=torch.ones(B, self.depth, T, self.num_tokens, dtype=torch.bool, device=z.device)
                              if record_maps else None)
        else:
            run = self.token_policy(self.blocks, z, ctx, record_maps=record_maps, **self.stage_kwargs())
            aux.update(run.aux)
            logits, step_logits = self.readout(run, ctx)
            out = ModelOutput(logits, step_logits, aux, run.active, ctx, run.depth, run.maps, run.unit_halting,
                              merged_maps=run.merged)
        if self.time_policy is not None and not torch.compiler.is_compiling():
            out.active_steps = self.time_policy.active_steps()  # floats read off the masks: a graph break if traced
        if self.time_policy is not None:
            ctx.overhead("policy.time_gates", block=-1,
                         **dict(zip(("macs", "acs"), overhead.time_gates(len(self.time_policy.groups), self.T,
                                                                         x.shape[0]))))
        return out

    def classify(self, pooled: Tensor, ctx: Context) -> Tensor:
        """The head linear on the pooled features ``pooled`` [B, C], counted once per image as MACs (its input is a
        rate, not spikes; the per-step ``head(feats)`` for ``step_logits`` is not counted)."""
        if ctx.count:
            with torch.no_grad():
                cin, cout = self.head.in_features, self.head.out_features
                nz = float(torch.count_nonzero(pooled))
                d = torch.tensor(float(pooled.shape[0] * cin * cout), dtype=torch.float64)
                shape = LayerShape(inputs_nz=nz, outputs=float(pooled.shape[0] * cout), weights=cin * cout,
                                   biases=cout, fan_out=cout, in_size=cin, out_size=cout, synops=nz * cout)
                ctx.synapse("head", kind="head", block=-1, x=pooled, fan_out=0, active=None, group=None,
                            analog=True, exact=d, paper=d, dense=d, memory=shape)
        return self.head(pooled)

    def readout(self, run, ctx: Context) -> tuple[Tensor, Tensor | None]:
        """``(logits, step logits)`` of a token policy's run: pooled per step then mean over time, or the ACT pool
        (no step logits)."""
        if run.feats is not None:
            feats = self.step_features(run.feats, ctx)
            return self.classify(feats.mean(0), ctx), self.head(feats)
        return self.classify(self.pooled_features(run.pooled, ctx), ctx), None
