"""Spike-driven Transformer v1 (Yao et al., NeurIPS 2023) on spikingjelly 2.0, behind the backbone protocol.

Structure and parameters follow spikingjelly 2.0's ``model.spike_driven_transformer.SpikeDrivenTransformer`` (the
peer a test matches parameter for parameter at the official CIFAR config: 2 blocks, dim 512, 8 heads, mlp 4,
``pooling_stat="0011"``, 10,234,378 parameters):

- stem: 3 x (Conv3x3 -> BN -> LIF -> [MaxPool]) with widths dim/8, dim/4, dim/2, then Conv3x3 -> BN -> [MaxPool] to
  dim (real-valued), plus a relative-position branch ``x + BN(Conv(LIF(x)))``;
- membrane shortcuts: the residual stream stays real-valued; every branch starts with a LIF and adds a BN output;
- spike-driven self-attention (SDSA): ``kv = LIF(sum over tokens of K * V)`` per channel (a spike per head channel),
  ``out = Q * kv``: Hadamard products and a token sum, no matrix product; then Linear -> BN;
- MLP: LIF -> Linear -> BN -> LIF -> Linear -> BN;
- head: LIF on the token mean of each timestep, mean over time, Linear.

Tokens are ``[T, B, N, C]`` and the 1x1 convolutions of the peer are Linear layers on the channel axis (the same
parameters). A token policy's ``active`` zeroes an inactive token's spikes and its residual update (frozen, as in
Spikformer); a merged token of size s counts s times in the token sum.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from suite.config import ModelConfig, NeuronConfig
from suite.models.backbone import Backbone, LIFLayer
from suite.models.context import Context, nonzeros
from suite.models.layers import ConvBN, ConvBNLIF, LinearBN, LinearBNLIF, fire, masked
from suite.models.neurons import make_lif
from suite.models.registry import register_backbone


class SDTStem(nn.Module):
    """The SDT patch embedding on [T', B, C, H, W] -> tokens [T', B, N, C] (real-valued)."""

    def __init__(self, in_channels: int, dim: int, pools: int, neuron: NeuronConfig, pool_after_lif: bool = True):
        super().__init__()
        widths = [dim // 8, dim // 4, dim // 2]
        cins = [in_channels] + widths[:-1]
        self.stages = nn.ModuleList(
            ConvBNLIF(cin, cout, pool=i >= 4 - pools, neuron=neuron, name=f"stem.{i}", analog=i == 0, bias=True,
                      pool_after_lif=pool_after_lif)
            for i, (cin, cout) in enumerate(zip(cins, widths)))
        self.final = ConvBN(widths[-1], dim, pool=pools >= 1, name="stem.3", group="stem.2", bias=True)
        self.rpe_lif = make_lif(neuron)
        self.rpe = ConvBN(dim, dim, pool=False, name="stem.rpe", group="stem.rpe", bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.rest(self.stages[0](x, ctx), ctx)

    def rest(self, x: Tensor, ctx: Context) -> Tensor:
        """Everything after the first stage: [T', B, C, H, W] -> tokens [T', B, N, C]."""
        for stage in self.stages[1:]:
            x = stage(x, ctx)
        x = self.final(x, ctx)
        x = x + self.rpe(ctx.fire("stem.rpe", self.rpe_lif(x), "stem.rpe"), ctx)
        return x.flatten(3).transpose(-1, -2).contiguous()


class SDTBlock(nn.Module):
    """``x = x + SDSA(x); x = x + MLP(x)`` with membrane shortcuts (the LIF opens each branch)."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        d, n, name = cfg.dim, cfg.neuron, f"block{index}"
        hidden = int(d * cfg.mlp_ratio)
        self.shortcut_lif = make_lif(n)
        self.q = LinearBNLIF(d, d, n, f"{name}.q", "attention", index, bias=False)
        self.k = LinearBNLIF(d, d, n, f"{name}.k", "attention", index, bias=False)
        self.v = LinearBNLIF(d, d, n, f"{name}.v", "attention", index, bias=False)
        self.attn_lif = make_lif(n, v_threshold=cfg.attn_v_threshold)
        self.proj = LinearBN(d, d, f"{name}.proj", "attention", index, group=f"{name}.attn")
        self.mlp_lif = make_lif(n)
        self.mlp1 = LinearBNLIF(d, hidden, n, f"{name}.mlp1", "mlp", index, bias=True)
        self.mlp2 = LinearBN(hidden, d, f"{name}.mlp2", "mlp", index, group=f"{name}.mlp1")
        self.heads, self.index, self.name = cfg.heads, index, name

    def forward(self, x: Tensor, ctx: Context, active: Tensor | None = None,
                size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns the new residual stream and the key spikes (the default merge metric)."""
        ctx.observe_block_input(self.name, x)
        s = fire(ctx, f"{self.name}.shortcut", self.shortcut_lif, x, active)
        q, k, v = self.q(s, ctx, active), self.k(s, ctx, active), self.v(s, ctx, active)
        kv_in = k * v if size is None else k * v * size.unsqueeze(-1)  # a merged token counts size times
        kv = ctx.fire(f"{self.name}.attn", self.attn_lif(kv_in.sum(2, keepdim=True)), f"{self.name}.attn")
        if ctx.count:
            self._count_attention(ctx, q, k, v, kv, active)
        x = x + self.proj(q * kv, ctx, active)
        h = self.mlp1(fire(ctx, f"{self.name}.mlp_in", self.mlp_lif, x, active), ctx, active)
        return x + self.mlp2(h, ctx, active), k

    def forward_packed(self, x: Tensor, call) -> tuple[Tensor, Tensor]:
        """The same block on packed rows ``x`` [M, C] (compacted inference, ``suite.models.compact``): the token sum
        runs over the packed (active) rows of each (step, image) only."""
        s = call.lif(f"{self.name}.shortcut", self.shortcut_lif, x)
        q, k, v = call.linear_lif(self.q, s), call.linear_lif(self.k, s), call.linear_lif(self.v, s)
        kv = call.segment_lif(f"{self.name}.attn", self.attn_lif, call.segment_sum(k * v))
        x = x + call.gate(call.linear_bn(self.proj, q * kv[call.rows.segment]))
        h = call.linear_lif(self.mlp1, call.lif(f"{self.name}.mlp_in", self.mlp_lif, x))
        return x + call.gate(call.linear_bn(self.mlp2, h)), k

    @torch.no_grad()
    def _count_attention(self, ctx: Context, q: Tensor, k: Tensor, v: Tensor, kv: Tensor,
                         active: Tensor | None) -> None:
        """Count SDSA's two Hadamard products over active tokens at the steps the attention LIF runs (rule in
        docs/counting.md): ``kv`` = the token sum of K * V (exact: non-zero products added; paper: rate(K) x
        N_a C), ``qkv`` = Q * kv (exact: non-zero products; paper: rate(Q) x N_a C). Dense: N_a C each."""
        m = ctx.time_mask(f"{self.name}.attn")
        steps = (torch.ones(q.shape[0], device=q.device) if m is None else m.detach()).double()
        T, B, N, C = q.shape
        n_act = torch.full((T, B), float(N), device=q.device) if active is None else (active > 0).sum(-1)
        dense = (n_act.double() * C * steps[:, None]).sum()
        # non-zeros per step (exact) weighted by the step's mask: no float64 copy of the activations
        exact_kv, paper_kv, exact_qkv, paper_qkv = (
            (nonzeros(t.flatten(1), 1) * steps).sum() for t in (k * v, k, q * kv, q))
        for tag, ex, pa in (("kv", exact_kv, paper_kv), ("qkv", exact_qkv, paper_qkv)):
            ctx.synapse(f"{self.name}.{tag}", kind="attention", block=self.index, x=q, fan_out=0,
                        active=None, group=None, exact=ex, paper=pa, dense=dense, nonbinary=False)  # spikes


@register_backbone("sdt")
class SDT(Backbone):
    """Spike-driven Transformer v1; ``token_policy`` and ``time_policy`` are optional (None = dense, all steps)."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 token_policy: nn.Module | None = None, time_policy: nn.Module | None = None):
        super().__init__()
        pools = self._setup(cfg, image_size, num_classes)
        self.stem = SDTStem(in_channels, cfg.dim, pools, cfg.neuron, pool_after_lif=cfg.stem_pool != "before_lif")
        self.blocks = nn.ModuleList(SDTBlock(cfg, i) for i in range(cfg.depth))
        self.head_lif = make_lif(cfg.neuron)
        self.head = nn.Linear(cfg.dim, num_classes)
        self.token_policy = token_policy
        self.time_policy = time_policy

    def step_features(self, feats: Tensor, ctx: Context) -> Tensor:
        """The head LIF on each timestep's token mean (the peer's ``head_lif``)."""
        return ctx.fire("head", self.head_lif(feats), "head")

    def pooled_features(self, pooled: Tensor, ctx: Context) -> Tensor:
        """An ACT readout has no time axis: it drives the head LIF at every timestep, and the head reads its firing
        rate (a reconstruction: the peer has no ACT readout)."""
        return self.step_features(pooled.unsqueeze(0).repeat(self.T, 1, 1), ctx).mean(0)

    def lif_layers(self) -> list[LIFLayer]:
        return sdt_lif_layers(self.depth, timed_stem=self.cfg.stem == "per_step")


def sdt_lif_layers(depth: int, timed_stem: bool = True) -> list[LIFLayer]:
    """Every LIF layer of an SDT of ``depth`` blocks, in forward order, with the counted layers each gates. A layer
    followed by a LIF is gated by it (as in Spikformer); one with a real-valued output (stem.3, the relative
    position conv, proj, mlp2) by the LIF whose spikes feed it; the attention LIF gates both SDSA products."""
    layers = [LIFLayer(f"stem.{i}", -1, "stem", "stem", (f"stem.{i}",) + (("stem.3",) if i == 2 else ()),
                       timed_stem) for i in range(3)]
    layers.append(LIFLayer("stem.rpe", -1, "stem", "stem", ("stem.rpe",), timed_stem))
    for b in range(depth):
        o = f"block{b}"
        layers += [LIFLayer(f"{o}.shortcut", b, o, "attention", ()),
                   *(LIFLayer(f"{o}.{n}", b, o, "attention", (f"{o}.{n}",)) for n in ("q", "k", "v")),
                   LIFLayer(f"{o}.attn", b, o, "attention", (f"{o}.kv", f"{o}.qkv", f"{o}.proj")),
                   LIFLayer(f"{o}.mlp_in", b, o, "mlp", ()),
                   LIFLayer(f"{o}.mlp1", b, o, "mlp", (f"{o}.mlp1", f"{o}.mlp2"))]
    layers.append(LIFLayer("head", -1, "head", "head", ()))
    return layers


__all__ = ["SDT", "SDTBlock", "SDTStem", "masked", "sdt_lif_layers"]
