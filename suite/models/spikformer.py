"""Spikformer (Zhou et al., ICLR 2023) on spikingjelly 2.0, with hooks for token and time policies.

Tensors are ``[T, B, N, C]`` (tokens) or ``[T, B, C, H, W]`` (images); stateless layers run on
``x.flatten(0, 1)`` and only the LIF neurons carry state, as in spikingjelly's activation_based API.
Blocks take two optional token tensors from a token policy: ``active`` ([T, B, N], 1 = the token is
processed at that step) and ``size`` ([T, B, N], how many input tokens a merged token stands for).
With both ``None`` a block is exactly the official dense block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from suite.models.context import Context
from suite.models.neurons import NeuronConfig, make_lif


class ModelConfig(BaseModel):
    """Backbone shape; defaults are Spikformer-4-384 for CIFAR (ZK-Zhou/spikformer cifar10.yml)."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(4, ge=1, le=64)
    dim: int = Field(384, ge=8, le=4096)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    T: int = Field(4, ge=1, le=64)  # timesteps (direct encoding: the image is repeated T times)
    attn_scale: float = Field(0.125, gt=0)  # fixed 0.125 in the official code, independent of head dim
    attn_v_threshold: float = Field(0.5, gt=0)  # attn_lif threshold in the official code
    stem_pools: int | None = Field(None, ge=0, le=4)  # None: chosen from the input size (see stem_pool_count)
    linear_bias: bool = False  # spikingjelly's spikformer_cifar10 (9.31M params) has none; the official code has
    neuron: NeuronConfig = NeuronConfig()

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.dim % 8:
            raise ValueError(f"dim ({self.dim}) must be divisible by 8 (the stem widths are dim/8, dim/4, dim/2)")
        return self


def stem_pool_count(image_size: int) -> int:
    """Max-pools in the stem so the token grid is at most ~8x8: 8x8 digits -> 4x4 (16 tokens),
    28x28 -> 7x7 (49), 32x32 CIFAR -> 8x8 (64, as the official code), 64x64 TinyImageNet -> 8x8."""
    return max(1, math.ceil(math.log2(image_size / 8))) if image_size > 8 else 1


def _pooled(size: int, pools: int) -> int:
    for _ in range(pools):
        size = (size + 2 - 3) // 2 + 1  # MaxPool2d(3, stride 2, padding 1)
    return size


def lif_layer_names(depth: int) -> list[str]:
    """Every LIF layer of the backbone, in forward order (the time-mask policy keys on these)."""
    names = [f"stem.{i}" for i in range(4)] + ["stem.rpe"]
    for b in range(depth):
        names += [f"block{b}.{n}" for n in ("q", "k", "v", "attn", "proj", "mlp1", "mlp2")]
    return names


class ConvBNLIF(nn.Module):
    """Conv3x3 -> BN2d -> (MaxPool) -> LIF on [T, B, C, H, W], with exact and paper op counts."""

    def __init__(self, cin: int, cout: int, pool: bool, neuron: NeuronConfig, name: str, analog: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else None
        self.lif = make_lif(neuron)
        self.name, self.analog = name, analog

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        T, B = x.shape[:2]
        if ctx.count:
            self._count(x, ctx)
        # channels_last: the NCHW max-pool is the slowest stem op on CPU (measured by spikesuite bench).
        y = self.bn(self.conv(x.flatten(0, 1).contiguous(memory_format=torch.channels_last)))
        if self.pool is not None:
            y = self.pool(y)
        return ctx.fire(self.name, self.lif(y.reshape(T, B, *y.shape[1:])), self.name)

    @torch.no_grad()
    def _count(self, x: Tensor, ctx: Context) -> None:
        m = ctx.time_mask(self.name)
        steps = torch.ones(x.shape[0], device=x.device) if m is None else m.detach()
        B, cin, H, W = x.shape[1:]
        cout = self.conv.out_channels
        per_step_dense = float(H * W * cin * 9 * cout)  # stride 1, padding 1: one 3x3 window per output
        dense = per_step_dense * B * float(steps.sum())
        if self.analog:
            d = torch.tensor(dense, dtype=torch.float64)
            ctx.synapse(self.name, kind="stem", block=-1, x=x, fan_out=cout, active=None, group=self.name,
                        analog=True, exact=d, paper=d, dense=d)
            return
        # An input pixel feeds every output window that covers it (4 at corners, 6 at edges, 9 inside).
        cover = F.conv2d(torch.ones(1, 1, H, W, device=x.device, dtype=x.dtype),
                         torch.ones(1, 1, 3, 3, device=x.device, dtype=x.dtype), padding=1)[0, 0]
        xs = x * steps.view(-1, 1, 1, 1, 1)
        exact = ((xs != 0).to(x.dtype) * cover).sum(dtype=torch.float64) * cout
        # rate over the active steps only (as for linears), times dense FLOPs over the active steps
        paper = xs.sum(dtype=torch.float64) / (float(steps.sum()) * B * cin * H * W) * per_step_dense * B \
            * float(steps.sum()) if float(steps.sum()) else torch.tensor(0.0)
        ctx.synapse(self.name, kind="stem", block=-1, x=x, fan_out=cout, active=None, group=self.name,
                    exact=exact, paper=paper, dense=torch.tensor(dense, dtype=torch.float64))


class SPS(nn.Module):
    """Spiking Patch Splitting: 4 conv stages (dim/8, dim/4, dim/2, dim), pools on the last stages,
    then a relative-position conv whose spikes are added to the stage-4 spikes (values 0..2)."""

    def __init__(self, in_channels: int, dim: int, pools: int, neuron: NeuronConfig):
        super().__init__()
        widths = [dim // 8, dim // 4, dim // 2, dim]
        cins = [in_channels] + widths[:-1]
        self.stages = nn.ModuleList(
            ConvBNLIF(cin, cout, pool=i >= 4 - pools, neuron=neuron, name=f"stem.{i}", analog=i == 0)
            for i, (cin, cout) in enumerate(zip(cins, widths))
        )
        self.rpe = ConvBNLIF(dim, dim, pool=False, neuron=neuron, name="stem.rpe")

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        for stage in self.stages:
            x = stage(x, ctx)
        x = x + self.rpe(x, ctx)
        return x.flatten(3).transpose(-1, -2).contiguous()  # [T, B, N, C]


class LinearBNLIF(nn.Module):
    """Linear -> BN1d -> LIF on tokens [T, B, N, C]; zero the rows of inactive tokens."""

    def __init__(self, cin: int, cout: int, neuron: NeuronConfig, name: str, kind: str, block: int,
                 bias: bool, v_threshold: float | None = None):
        super().__init__()
        self.fc = nn.Linear(cin, cout, bias=bias)
        self.bn = nn.BatchNorm1d(cout)
        self.lif = make_lif(neuron, v_threshold=v_threshold)
        self.name, self.kind, self.block = name, kind, block

    def forward(self, x: Tensor, ctx: Context, active: Tensor | None) -> Tensor:
        ctx.synapse(self.name, kind=self.kind, block=self.block, x=x, fan_out=self.fc.out_features,
                    active=active, group=self.name)
        y = self.bn(self.fc(x).flatten(0, -2)).view(*x.shape[:-1], -1)
        return ctx.fire(self.name, _masked(self.lif(y), active), self.name, active)


def _masked(x: Tensor, active: Tensor | None) -> Tensor:
    return x if active is None else x * active.unsqueeze(-1)


class Block(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` with spiking self-attention (no softmax, fixed scale)."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        d, n, b = cfg.dim, cfg.neuron, cfg.linear_bias
        name = f"block{index}"
        self.q = LinearBNLIF(d, d, n, f"{name}.q", "attention", index, b)
        self.k = LinearBNLIF(d, d, n, f"{name}.k", "attention", index, b)
        self.v = LinearBNLIF(d, d, n, f"{name}.v", "attention", index, b)
        self.attn_lif = make_lif(n, v_threshold=cfg.attn_v_threshold)
        self.proj = LinearBNLIF(d, d, n, f"{name}.proj", "attention", index, b)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp1 = LinearBNLIF(d, hidden, n, f"{name}.mlp1", "mlp", index, b)
        self.mlp2 = LinearBNLIF(hidden, d, n, f"{name}.mlp2", "mlp", index, b)
        self.heads, self.scale, self.index, self.name = cfg.heads, cfg.attn_scale, index, name

    def forward(self, x: Tensor, ctx: Context, active: Tensor | None = None,
                size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns the new residual stream and the key spikes (the default merge metric)."""
        q, k, v = self.q(x, ctx, active), self.k(x, ctx, active), self.v(x, ctx, active)
        T, B, N, C = q.shape
        h = self.heads
        qh, kh, vh = (t.view(T, B, N, h, C // h).transpose(2, 3) for t in (q, k, v))
        if ctx.count:
            # Counting needs the attention map itself: (Q K^T) V, as the official CIFAR code.
            attn = qh @ kh.transpose(-1, -2) * self.scale  # [T, B, h, N, N]
            if size is not None:
                # No softmax, so a merged key of size s counts s times by weighting its column.
                attn = attn * size[:, :, None, None, :]
            self._count_attention(ctx, q, k, vh, attn, active)
            a = attn @ vh
        else:
            # Same product without the N x N map: Q (K^T V) (linear in N; spikes and sizes are small
            # integers, so both orders give the same floats). Size weighting moves onto V's rows.
            vw = vh if size is None else vh * size[:, :, None, :, None]
            a = qh @ (kh.transpose(-1, -2) @ vw) * self.scale
        a = a.transpose(2, 3).reshape(T, B, N, C)
        a = ctx.fire(f"{self.name}.attn", _masked(self.attn_lif(a), active), f"{self.name}.attn", active)
        x = x + self.proj(a, ctx, active)
        x = x + self.mlp2(self.mlp1(x, ctx, active), ctx, active)
        return x, k

    @torch.no_grad()
    def _count_attention(self, ctx: Context, q: Tensor, k: Tensor, vh: Tensor, attn: Tensor,
                         active: Tensor | None) -> None:
        """Count ``Q K^T`` and ``(Q K^T) V`` over active tokens at the steps attn_lif runs."""
        m = ctx.time_mask(f"{self.name}.attn")
        # float64 throughout: bf16 (autocast) or float32 totals would round large counts
        steps = (torch.ones(q.shape[0], device=q.device) if m is None else m.detach()).double()
        T, B, N, C = q.shape
        n_act = torch.full((T, B), float(N), device=q.device) if active is None else (active > 0).sum(-1)
        n_act = n_act.double()
        n_act = n_act * steps[:, None]
        dense = (n_act**2 * C).sum()
        st = steps.view(-1, 1, 1, 1)
        # Q K^T: products q_ic * k_jc that are both 1 = sum_c (sum_i q_ic)(sum_j k_jc); heads split channels.
        exact_qk = ((q * st).sum(2) * k.sum(2, dtype=torch.float64)).sum()
        paper_qk = (((q * st) != 0).sum((2, 3)) * n_act).sum()  # rate(Q) x N_a^2 C = nnz(Q) N_a
        # (Q K^T) V: non-zero attention entries times non-zero value entries sharing the index j.
        nz_col = (attn != 0).sum(-2).double()  # [T, B, h, N]
        nz_v = (vh != 0).sum(-1).double()  # [T, B, h, N]
        exact_av = ((nz_col * nz_v).sum((2, 3)) * steps[:, None]).sum()
        paper_av = ((vh != 0).sum((2, 3, 4)).double() * n_act).sum()
        for tag, ex, pa in (("qk", exact_qk, paper_qk), ("av", exact_av, paper_av)):
            ctx.synapse(f"{self.name}.{tag}", kind="attention", block=self.index, x=q, fan_out=0,
                        active=None, group=None, exact=ex, paper=pa, dense=dense)


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


class Spikformer(nn.Module):
    """Spikformer backbone; ``tokens`` and ``time`` are optional policies (None = dense, all steps)."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 token_policy: nn.Module | None = None, time_policy: nn.Module | None = None):
        super().__init__()
        pools = cfg.stem_pools if cfg.stem_pools is not None else stem_pool_count(max(image_size))
        self.grid = (_pooled(image_size[0], pools), _pooled(image_size[1], pools))
        self.cfg, self.T, self.num_classes = cfg, cfg.T, num_classes
        self.stem = SPS(in_channels, cfg.dim, pools, cfg.neuron)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.dim, num_classes)
        self.token_policy = token_policy
        self.time_policy = time_policy

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, x: Tensor, *, count: bool = False, record_maps: bool = False) -> ModelOutput:
        masks = self.time_policy.layer_masks() if self.time_policy is not None else None
        ctx = Context(T=self.T, time_masks=masks, count=count)
        z = self.stem(x.unsqueeze(0).repeat(self.T, *([1] * x.dim())), ctx)
        aux: dict[str, Tensor] = {}
        if self.time_policy is not None:
            aux.update(self.time_policy.aux_losses())
        if self.token_policy is None:
            for blk in self.blocks:
                z, _ = blk(z, ctx)
            feats = z.mean(2)  # [T, B, C]: mean over tokens, then time (official readout order)
            T, B, N = z.shape[:3]
            active = torch.full((B, len(self.blocks), T), float(N), device=z.device)
            out = ModelOutput(self.head(feats.mean(0)), self.head(feats), aux, active, ctx,
                              maps=torch.ones(B, len(self.blocks), T, N, dtype=torch.bool, device=z.device)
                              if record_maps else None)
        else:
            run = self.token_policy(self.blocks, z, ctx, record_maps=record_maps)
            aux.update(run.aux)
            if run.feats is not None:
                out = ModelOutput(self.head(run.feats.mean(0)), self.head(run.feats), aux, run.active, ctx,
                                  run.depth, run.maps, run.unit_halting)
            else:
                out = ModelOutput(self.head(run.pooled), None, aux, run.active, ctx, run.depth, run.maps,
                                  run.unit_halting)
        if count:
            ctx.synapse("head", kind="head", block=-1, x=z, fan_out=0, active=None, group=None, analog=True,
                        exact=torch.tensor(0.0), paper=torch.tensor(0.0),
                        dense=torch.tensor(float(x.shape[0] * self.cfg.dim * self.num_classes),
                                          dtype=torch.float64))
        if self.time_policy is not None:
            out.active_steps = self.time_policy.active_steps()
        return out
