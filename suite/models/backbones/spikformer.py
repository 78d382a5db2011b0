"""Spikformer (Zhou et al., ICLR 2023) on spikingjelly 2.0, behind the backbone protocol (``backbone.py``).

Tensors are ``[T, B, N, C]`` (tokens) or ``[T, B, C, H, W]`` (images); stateless layers run on
``x.flatten(0, 1)`` and only the LIF neurons carry state, as in spikingjelly's activation_based API.
Blocks take two optional token tensors from a token policy: ``active`` ([T, B, N], 1 = the token is
processed at that step) and ``size`` ([T, B, N], how many input tokens a merged token stands for).
With both ``None`` a block is exactly the official dense block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from suite.config import ModelConfig, NeuronConfig
from suite.models.backbone import Backbone, LIFLayer
from suite.models.context import Context, nonzeros, outside_unit
from suite.models.layers import ConvBNLIF, LinearBNLIF, masked
from suite.models.neurons import make_lif
from suite.models.registry import register_backbone


class SPS(nn.Module):
    """Spiking Patch Splitting: 4 conv stages (dim/8, dim/4, dim/2, dim), pools on the last stages (before each
    stage's LIF as the official CIFAR code, or after it as the official ImageNet code: ``pool_after_lif``), then a
    relative-position conv whose spikes are added to the stage-4 spikes (values 0..2)."""

    def __init__(self, in_channels: int, dim: int, pools: int, neuron: NeuronConfig, pool_after_lif: bool = False):
        super().__init__()
        widths = [dim // 8, dim // 4, dim // 2, dim]
        cins = [in_channels] + widths[:-1]
        self.stages = nn.ModuleList(
            ConvBNLIF(cin, cout, pool=i >= 4 - pools, neuron=neuron, name=f"stem.{i}", analog=i == 0,
                      pool_after_lif=pool_after_lif)
            for i, (cin, cout) in enumerate(zip(cins, widths))
        )
        self.rpe = ConvBNLIF(dim, dim, pool=False, neuron=neuron, name="stem.rpe")

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.rest(self.stages[0](x, ctx), ctx)

    def rest(self, x: Tensor, ctx: Context) -> Tensor:
        """Everything after the first stage: [T', B, C, H, W] -> tokens [T', B, N, C]."""
        for stage in self.stages[1:]:
            x = stage(x, ctx)
        x = x + self.rpe(x, ctx)
        return x.flatten(3).transpose(-1, -2).contiguous()  # [T, B, N, C]


class Block(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` with spiking self-attention (no softmax, fixed scale)."""

    def __init__(self, cfg: ModelConfig, index: int, *, dim: int | None = None,
                 biases: tuple[bool, bool, bool] | None = None):
        """``dim`` (default ``cfg.dim``) and ``biases`` (Q/K/V, projection, MLP; default ``cfg.linear_bias`` for
        all) let a multi-stage backbone use this block in one of its stages (QKFormer's last stage)."""
        super().__init__()
        d, n = cfg.dim if dim is None else dim, cfg.neuron
        bq, bp, bm = (cfg.linear_bias,) * 3 if biases is None else biases
        name = f"block{index}"
        self.q = LinearBNLIF(d, d, n, f"{name}.q", "attention", index, bq)
        self.k = LinearBNLIF(d, d, n, f"{name}.k", "attention", index, bq)
        self.v = LinearBNLIF(d, d, n, f"{name}.v", "attention", index, bq)
        self.attn_lif = make_lif(n, v_threshold=cfg.attn_v_threshold)
        self.proj = LinearBNLIF(d, d, n, f"{name}.proj", "attention", index, bp)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp1 = LinearBNLIF(d, hidden, n, f"{name}.mlp1", "mlp", index, bm)
        self.mlp2 = LinearBNLIF(hidden, d, n, f"{name}.mlp2", "mlp", index, bm)
        self.heads, self.scale, self.index, self.name = cfg.heads, cfg.attn_scale, index, name

    def forward(self, x: Tensor, ctx: Context, active: Tensor | None = None,
                size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns the new residual stream and the key spikes (the default merge metric)."""
        ctx.observe_block_input(self.name, x)
        q, k, v = self.q(x, ctx, active), self.k(x, ctx, active), self.v(x, ctx, active)
        T, B, N, C = q.shape
        h = self.heads
        qh, kh, vh = (t.view(T, B, N, h, C // h).transpose(2, 3) for t in (q, k, v))
        if ctx.count:
            # Counting reads the attention map itself, (Q K^T) of the official CIFAR code; the output below does not.
            # A power-of-two scale applied to Q's few entries gives the same floats as on the N x N map: one pass less.
            pow2 = math.frexp(self.scale)[0] == 0.5
            attn = (qh * self.scale if pow2 else qh) @ kh.transpose(-1, -2)  # [T, B, h, N, N]
            attn = attn if pow2 else attn * self.scale
            if size is not None:
                # No softmax, so a merged key of size s counts s times by weighting its column.
                attn = attn * size[:, :, None, None, :]
            self._count_attention(ctx, q, k, vh, attn, active)
        # (Q K^T) V computed as Q (K^T V): linear in N. Spikes and sizes are small integers and the default scale is a
        # power of two, so both orders give the same floats. Size weighting moves onto V's rows.
        vw = vh if size is None else vh * size[:, :, None, :, None]
        a = qh @ (kh.transpose(-1, -2) @ vw) * self.scale
        a = a.transpose(2, 3).reshape(T, B, N, C)
        a = ctx.fire(f"{self.name}.attn", masked(self.attn_lif(a), active), f"{self.name}.attn", active)
        x = x + self.proj(a, ctx, active)
        x = x + self.mlp2(self.mlp1(x, ctx, active), ctx, active)
        return x, k

    def forward_packed(self, x: Tensor, call) -> tuple[Tensor, Tensor]:
        """The same block on packed rows ``x`` [M, C] (compacted inference, ``suite.models.compact``):
        returns the new rows and the key spikes. Attention runs as ``Q (K^T V)`` within each (step, image)."""
        q, k, v = call.linear_lif(self.q, x), call.linear_lif(self.k, x), call.linear_lif(self.v, x)
        a = call.lif(f"{self.name}.attn", self.attn_lif, call.attention(q, k, v, self.heads, self.scale))
        x = x + call.linear_lif(self.proj, a)
        x = x + call.linear_lif(self.mlp2, call.linear_lif(self.mlp1, x))
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
        st = steps.view(-1, 1, 1)
        # Q K^T: products q_ic * k_jc that are both 1 = sum_c (sum_i q_ic)(sum_j k_jc); heads split channels.
        exact_qk = ((q.sum(2).double() * st) * k.sum(2).double()).sum()  # token sums of spikes: exact in fp32
        paper_qk = (nonzeros(q, (2, 3)) * (steps != 0)[:, None] * n_act).sum()  # rate(Q) x N_a^2 C = nnz(Q) N_a
        # (Q K^T) V: non-zero attention entries times non-zero value entries sharing the index j.
        nz_col = nonzeros(attn, -2)  # [T, B, h, N]
        nz_v = nonzeros(vh, -1)  # [T, B, h, N]
        exact_av = ((nz_col * nz_v).sum((2, 3)) * steps[:, None]).sum()
        paper_av = (nz_v.sum((2, 3)) * n_act).sum()
        # Q and K are spikes; the map Q K^T holds integer coincidence counts (NeuroBench's rule: MACs)
        integer_map = outside_unit(attn, nz_col.sum())
        for tag, ex, pa, nb in (("qk", exact_qk, paper_qk, False), ("av", exact_av, paper_av, integer_map)):
            ctx.synapse(f"{self.name}.{tag}", kind="attention", block=self.index, x=q, fan_out=0,
                        active=None, group=None, exact=ex, paper=pa, dense=dense, nonbinary=nb)


@register_backbone("spikformer")
class Spikformer(Backbone):
    """Spikformer backbone; ``token_policy`` and ``time_policy`` are optional (None = dense, all steps)."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 token_policy: nn.Module | None = None, time_policy: nn.Module | None = None):
        super().__init__()
        pools = self._setup(cfg, image_size, num_classes)
        self.stem = SPS(in_channels, cfg.dim, pools, cfg.neuron, pool_after_lif=cfg.stem_pool == "after_lif")
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.head = nn.Linear(cfg.dim, num_classes)
        self.token_policy = token_policy
        self.time_policy = time_policy

    def lif_layers(self) -> list[LIFLayer]:
        return spikformer_lif_layers(self.depth, timed_stem=self.cfg.stem == "per_step")


def spikformer_lif_layers(depth: int, timed_stem: bool = True) -> list[LIFLayer]:
    """Every LIF layer of a Spikformer of ``depth`` blocks, in forward order. Each layer's synaptic layer has its
    name; the attention LIF gates both attention products (``Block._count_attention`` counts them at its steps).
    ``timed_stem``: the stem runs at every timestep (``model.stem: per_step``), so time masks can allocate it."""
    layers = [LIFLayer(f"stem.{i}", -1, "stem", "sps", (f"stem.{i}",), timed_stem) for i in range(4)]
    layers.append(LIFLayer("stem.rpe", -1, "stem", "sps", ("stem.rpe",), timed_stem))
    for b in range(depth):
        owner = f"block{b}"
        for n in ("q", "k", "v", "attn", "proj", "mlp1", "mlp2"):
            gates = (f"{owner}.qk", f"{owner}.av") if n == "attn" else (f"{owner}.{n}",)
            layers.append(LIFLayer(f"{owner}.{n}", b, owner, "mlp" if n.startswith("mlp") else "ssa", gates))
    return layers
