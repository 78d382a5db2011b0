"""QKFormer (Zhou et al., NeurIPS 2024, arXiv 2403.16552) behind the backbone protocol (``backbone.py``): three
stages of widths dim/4, dim/2, dim, each opened by a patch embedding with a shortcut; Q-K attention in stages 1-2,
Spikformer's spiking self-attention in stage 3.

- Q-K token attention: Q and K from Linear -> BN -> LIF; per head Q is summed over its channels, a LIF of
  threshold ``attn_v_threshold`` (0.5) turns the sum into a binary token mask, the output is mask * K, then
  Linear -> BN -> LIF. Channel attention sums Q over tokens instead (a binary channel mask). No V, no N x N map.
- ``model.patch_embed: imagenet`` is spikingjelly 2.0's ``QKFormer`` (stem /4 with a stride-2 shortcut, then /2, /2;
  conv and MLP biases, no attention biases: ``qkformer_10_384`` has 16,472,584 parameters); ``cifar`` is the official
  CIFAR model (zhouchenlin2096/QKFormer ``cifar10/model.py``: no downsampling before stage 1, then /2, /2; no conv
  biases, biased projection and MLP; 6,706,234 parameters at dim 384, depth 4, 10 classes).

Stateless layers run on ``x.flatten(0, 1)``; only LIF neurons carry state. Blocks take the token policy's
optional ``active`` / ``size`` ([T, B, N]); with both ``None`` a block is exactly the dense block.
"""

from __future__ import annotations

from torch import Tensor, nn

from suite.config import ModelConfig, NeuronConfig
from suite.models.backbone import Backbone, LIFLayer, Stage
from suite.models.backbones.spikformer import Block as SSABlock
from suite.models.context import Context, nonzeros
from suite.models.layers import ConvBNLIF, LinearBNLIF, masked
from suite.models.neurons import make_lif
from suite.models.registry import register_backbone


def _down(size: int) -> int:
    """A 3x3 max-pool of stride 2, padding 1 (and a 1x1 stride-2 shortcut): ceil(size / 2)."""
    return (size + 1) // 2


class EmbedInit(nn.Module):
    """The first patch embedding: images [T', B, C, H, W] -> stage-1 tokens [T', B, N, dim/4].

    imagenet (spikingjelly): conv1 (C -> d/2, pool) -> conv2 (d/2 -> d, pool) -> conv3 (d -> d), plus a 1x1
    stride-2 shortcut from conv1's spikes; cifar (official): conv1 (C -> d/2) -> conv2 (d/2 -> d), plus a 1x1
    shortcut from conv1's spikes. ``stages[0]`` is conv1 (``Backbone.embed``'s stem modes)."""

    def __init__(self, in_channels: int, dim: int, imagenet: bool, neuron: NeuronConfig):
        super().__init__()
        half, bias = dim // 2, imagenet
        self.stages = nn.ModuleList([ConvBNLIF(in_channels, half, imagenet, neuron, "stem.0", analog=True, bias=bias)])
        self.conv2 = ConvBNLIF(half, dim, imagenet, neuron, "stem.1", bias=bias)
        self.conv3 = ConvBNLIF(dim, dim, False, neuron, "stem.2", bias=bias) if imagenet else None
        self.res = ConvBNLIF(half, dim, False, neuron, "stem.res", bias=bias, kernel=1, stride=2 if imagenet else 1)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return self.rest(self.stages[0](x, ctx), ctx)

    def rest(self, x: Tensor, ctx: Context) -> Tensor:
        """Everything after conv1: its spikes [T', B, d/2, H, W] -> tokens [T', B, N, d]."""
        y = self.conv2(x, ctx)
        if self.conv3 is not None:
            y = self.conv3(y, ctx)
        return _tokens(y + self.res(x, ctx))


class EmbedStage(nn.Module):
    """The patch embedding between stages: tokens of width d/2 on an H x W grid -> width d on ceil(H/2) x ceil(W/2).

    imagenet (spikingjelly): conv1 (pool) -> conv2; cifar (official): conv1 -> conv2 (pool); both plus a 1x1
    stride-2 shortcut from the input (the residual stream: spike counts, not spikes)."""

    def __init__(self, cin: int, dim: int, imagenet: bool, neuron: NeuronConfig, name: str):
        super().__init__()
        self.conv1 = ConvBNLIF(cin, dim, imagenet, neuron, f"{name}.0", bias=imagenet)
        self.conv2 = ConvBNLIF(dim, dim, not imagenet, neuron, f"{name}.1", bias=imagenet)
        self.res = ConvBNLIF(cin, dim, False, neuron, f"{name}.res", bias=imagenet, kernel=1, stride=2)

    def forward(self, z: Tensor, grid: tuple[int, int], ctx: Context) -> Tensor:
        T, B, N, C = z.shape
        x = z.transpose(-1, -2).reshape(T, B, C, *grid)
        return _tokens(self.conv2(self.conv1(x, ctx), ctx) + self.res(x, ctx))


def _tokens(x: Tensor) -> Tensor:
    """[T, B, C, H, W] -> [T, B, N, C]."""
    return x.flatten(3).transpose(-1, -2).contiguous()


class QKBlock(nn.Module):
    """``x = x + QKA(x); x = x + MLP(x)`` with Q-K attention (token or channel)."""

    def __init__(self, cfg: ModelConfig, index: int, dim: int, proj_bias: bool, mlp_bias: bool):
        super().__init__()
        n, name = cfg.neuron, f"block{index}"
        self.q = LinearBNLIF(dim, dim, n, f"{name}.q", "attention", index, False)
        self.k = LinearBNLIF(dim, dim, n, f"{name}.k", "attention", index, False)
        self.attn_lif = make_lif(n, v_threshold=cfg.attn_v_threshold)
        self.proj = LinearBNLIF(dim, dim, n, f"{name}.proj", "attention", index, proj_bias)
        hidden = int(dim * cfg.mlp_ratio)
        self.mlp1 = LinearBNLIF(dim, hidden, n, f"{name}.mlp1", "mlp", index, mlp_bias)
        self.mlp2 = LinearBNLIF(hidden, dim, n, f"{name}.mlp2", "mlp", index, mlp_bias)
        self.heads, self.index, self.name, self.token = cfg.heads, index, name, cfg.qk_attention == "token"

    def forward(self, x: Tensor, ctx: Context, active: Tensor | None = None,
                size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns the new residual stream and the key spikes (the default merge metric)."""
        ctx.observe_block_input(self.name, x)
        q, k = self.q(x, ctx, active), self.k(x, ctx, active)
        T, B, N, C = q.shape
        h = self.heads
        qh = q.view(T, B, N, h, C // h)
        if self.token:
            # a token mask per head: the token's Q spikes summed over the head's channels (no token mixing, so
            # a merged token's size does not enter)
            mask = ctx.fire(f"{self.name}.attn", masked(self.attn_lif(qh.sum(-1)), active), f"{self.name}.attn",
                            active)  # [T, B, N, h]
            a = (mask.unsqueeze(-1) * k.view(T, B, N, h, C // h)).view(T, B, N, C)
        else:
            # a channel mask: Q summed over tokens, a merged token counted size times
            qs = qh if size is None else qh * size[..., None, None]
            mask = ctx.fire(f"{self.name}.attn", self.attn_lif(qs.sum(2)), f"{self.name}.attn")  # [T, B, h, C/h]
            a = k * mask.reshape(T, B, 1, C)
        if ctx.count:
            self._count_attention(ctx, q, k, a, active)
        x = x + self.proj(a, ctx, active)
        x = x + self.mlp2(self.mlp1(x, ctx, active), ctx, active)
        return x, k

    def forward_packed(self, x: Tensor, call) -> tuple[Tensor, Tensor]:
        """The same block on packed rows ``x`` [M, C] (compacted inference, ``suite.models.compact``): the token
        mask is per row; the channel mask sums Q over each (step, image)'s packed rows, merged tokens by size."""
        q, k = call.linear_lif(self.q, x), call.linear_lif(self.k, x)
        M, C = q.shape
        h = self.heads
        if self.token:
            mask = call.lif(f"{self.name}.attn", self.attn_lif, q.view(M, h, C // h).sum(-1))  # [M, h]
            a = (mask.unsqueeze(-1) * k.view(M, h, C // h)).view(M, C)
        else:
            a = k * call.segment_lif(f"{self.name}.attn", self.attn_lif, call.segment_sum(q))[call.rows.segment]
        x = x + call.linear_lif(self.proj, a)
        x = x + call.linear_lif(self.mlp2, call.linear_lif(self.mlp1, x))
        return x, k

    def _count_attention(self, ctx: Context, q: Tensor, k: Tensor, a: Tensor, active: Tensor | None) -> None:
        """docs/counting.md, "Q-K attention": ``qk`` = Q summed into the mask (exact: every Q spike added once;
        paper: rate(Q) x N_a C, the same for spikes), ``mask`` = mask * K (exact: the non-zero products; paper:
        rate(K) x N_a C); dense N_a C each, at the steps the attention LIF runs."""
        m = ctx.time_mask(f"{self.name}.attn")
        steps = (q.new_ones(q.shape[0]) if m is None else m.detach()).double()
        T, B, N, C = q.shape
        n_act = q.new_full((T, B), float(N)) if active is None else (active > 0).sum(-1)
        dense = (n_act.double() * steps.view(-1, 1)).sum() * C
        nz_q, nz_a, nz_k = ((nonzeros(t.flatten(1), 1) * steps).sum() for t in (q, a, k))  # masked steps weighed
        for tag, ex, pa in (("qk", nz_q, nz_q), ("mask", nz_a, nz_k)):
            ctx.synapse(f"{self.name}.{tag}", kind="attention", block=self.index, x=q, fan_out=0, active=None,
                        group=None, exact=ex, paper=pa, dense=dense, nonbinary=False)


@register_backbone("qkformer")
class QKFormer(Backbone):
    """QKFormer backbone; ``token_policy`` and ``time_policy`` are optional (None = dense, all steps)."""

    def __init__(self, cfg: ModelConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int,
                 token_policy: nn.Module | None = None, time_policy: nn.Module | None = None):
        super().__init__()
        self.cfg, self.T, self.num_classes = cfg, cfg.T, num_classes
        imagenet = cfg.patch_embed == "imagenet"
        dims, depths = cfg.stage_dims, cfg.stage_depths
        grid = tuple(_down(_down(s)) for s in image_size) if imagenet else tuple(image_size)
        self.grid = grid
        grids = [grid, tuple(_down(s) for s in grid), tuple(_down(_down(s)) for s in grid)]
        self.stem = EmbedInit(in_channels, dims[0], imagenet, cfg.neuron)
        self.embeds = nn.ModuleList(EmbedStage(dims[s - 1], dims[s], imagenet, cfg.neuron, f"embed{s}")
                                    for s in (1, 2))
        # spikingjelly: no bias in attention convs, biased MLP; official CIFAR: biased projection and MLP
        proj_bias = not imagenet
        blocks, start, self._stages = [], 0, []
        for s, (d, n) in enumerate(zip(dims, depths)):
            for i in range(start, start + n):
                blocks.append(SSABlock(cfg, i, dim=d, biases=(False, proj_bias, True)) if s == 2
                              else QKBlock(cfg, i, d, proj_bias, True))
            self._stages.append(Stage(range(start, start + n), grids[s], d))
            start += n
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cfg.dim, num_classes)
        self.token_policy = token_policy
        self.time_policy = time_policy

    @property
    def stages(self) -> list[Stage]:
        return list(self._stages)

    def transition(self, stage: int, z: Tensor, ctx: Context) -> Tensor:
        return self.embeds[stage - 1](z, self._stages[stage - 1].grid, ctx)

    def lif_layers(self) -> list[LIFLayer]:
        return qkformer_lif_layers(self.cfg.stage_depths, imagenet=self.cfg.patch_embed == "imagenet",
                                   timed_stem=self.cfg.stem == "per_step")


def qkformer_lif_layers(depths: tuple[int, ...], imagenet: bool = True, timed_stem: bool = True) -> list[LIFLayer]:
    """Every LIF layer of a QKFormer with ``depths`` blocks per stage, in forward order. The patch embeddings
    between stages belong to the stage they open (owner ``embed1`` / ``embed2``, module type ``embed``); the
    Q-K attention LIF gates its two products (``qk``, ``mask``), the SSA one its two (``qk``, ``av``)."""
    stem = ["stem.0", "stem.1"] + (["stem.2"] if imagenet else []) + ["stem.res"]
    layers = [LIFLayer(n, -1, "stem", "embed", (n,), timed_stem) for n in stem]
    b = 0
    for s, n in enumerate(depths):
        if s:
            layers += [LIFLayer(f"embed{s}.{p}", -1, f"embed{s}", "embed", (f"embed{s}.{p}",))
                       for p in ("0", "1", "res")]
        for _ in range(n):
            o = f"block{b}"
            names = ("q", "k", "v", "attn", "proj", "mlp1", "mlp2") if s == 2 else ("q", "k", "attn", "proj", "mlp1",
                                                                                   "mlp2")
            products = (f"{o}.qk", f"{o}.av") if s == 2 else (f"{o}.qk", f"{o}.mask")
            layers += [LIFLayer(f"{o}.{x}", b, o, "mlp" if x.startswith("mlp") else ("ssa" if s == 2 else "qka"),
                                products if x == "attn" else (f"{o}.{x}",)) for x in names]
            b += 1
    return layers
