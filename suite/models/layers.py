"""Spiking layers shared by backbones: synapse -> BatchNorm -> LIF, counting their own operations.

Stateless parts run on ``x.flatten(0, 1)``; only the LIF neuron carries state (spikingjelly activation_based API).
Every layer reports its spikes to ``Context.fire`` and its operations to ``Context.synapse`` under its own name,
which is also its time-mask group (``Context.time_mask``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from suite.config import NeuronConfig
from suite.models.context import Context, LayerShape, nonzeros, sum64
from suite.models.neurons import make_lif


@torch.no_grad()
def count_conv3x3(ctx: Context, name: str, x: Tensor, cout: int, group: str | None, analog: bool) -> None:
    """Count a 3x3, stride-1, padding-1 convolution on ``x`` [T', B, Cin, H, W] at the unmasked steps of
    ``group``: MACs on analog input, else SOPs (exact: every non-zero input times the windows covering it;
    paper: rate x dense FLOPs over the active steps)."""
    m = ctx.time_mask(group)
    steps = torch.ones(x.shape[0], device=x.device) if m is None else m.detach()
    B, cin, H, W = x.shape[1:]
    per_step_dense = float(H * W * cin * 9 * cout)  # stride 1, padding 1: one 3x3 window per output
    dense = per_step_dense * B * float(steps.sum())
    xs = x if m is None else x * steps.view(-1, 1, 1, 1, 1)
    nz, windows = _covered_nonzeros(xs)
    exact = windows * cout
    memory = LayerShape(inputs_nz=float(nz), outputs=float(steps.sum()) * B * cout * H * W,
                        weights=cin * cout * 9, biases=cout, fan_out=cout * 9, in_size=cin * H * W,
                        out_size=cout * H * W, synops=float(exact))
    if analog:
        d = torch.tensor(dense, dtype=torch.float64)
        ctx.synapse(name, kind="stem", block=-1, x=x, fan_out=cout, active=None, group=group,
                    analog=True, exact=d, paper=d, dense=d, memory=memory)
        return
    # rate over the active steps only (as for linears), times dense FLOPs over the active steps
    paper = sum64(xs) / (float(steps.sum()) * B * cin * H * W) * per_step_dense * B \
        * float(steps.sum()) if float(steps.sum()) else torch.tensor(0.0)
    ctx.synapse(name, kind="stem", block=-1, x=xs, fan_out=cout, active=None, group=group,
                exact=exact, paper=paper, dense=torch.tensor(dense, dtype=torch.float64), memory=memory)


def _covered_nonzeros(x: Tensor) -> tuple[Tensor, Tensor]:
    """Non-zeros of ``x`` [..., H, W] and the sum over them of the 3x3 windows (padding 1) covering each: 9 inside,
    6 on an edge, 4 in a corner, i.e. 9 per non-zero, less 3 per non-zero on each border row and column, plus 1
    per non-zero corner (counted on two borders). float64, exact; the borders are thin slices, so this reads ``x``
    about once (a per-pixel count would sum a full-size int64 copy)."""
    H, W = x.shape[-2:]
    nz = nonzeros(x)
    if H < 2 or W < 2:  # one row or column: every pixel is on both borders of that axis; count per pixel
        cover = F.conv2d(torch.ones(1, 1, H, W, device=x.device), torch.ones(1, 1, 3, 3, device=x.device),
                         padding=1)[0, 0].double()
        return nz, (nonzeros(x, tuple(range(x.dim() - 2))) * cover).sum()
    border = sum(nonzeros(e) for e in (x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]))
    corners = sum(nonzeros(x[..., i, j]) for i in (0, -1) for j in (0, -1))
    return nz, 9 * nz - 3 * border + corners


@torch.no_grad()
def count_conv1x1(ctx: Context, name: str, x: Tensor, cout: int, stride: int, group: str | None) -> None:
    """Count a 1x1 convolution of stride ``stride`` on spikes or spike counts ``x`` [T', B, Cin, H, W] (QKFormer's
    patch-embedding shortcuts) at the unmasked steps of ``group``: exact = the non-zero inputs it reads (every
    ``stride``-th row and column) x Cout; paper = rate(x) x dense FLOPs; dense = Hout Wout Cin Cout per step."""
    m = ctx.time_mask(group)
    steps = torch.ones(x.shape[0], device=x.device) if m is None else m.detach()
    xs = x * steps.view(-1, 1, 1, 1, 1)
    read = xs[..., ::stride, ::stride]
    B, cin, H, W = x.shape[1:]
    h, w = read.shape[-2:]
    active_steps = float(steps.sum())
    dense = float(h * w * cin * cout) * B * active_steps
    nz = nonzeros(read)
    exact = nz * cout
    paper = xs.sum(dtype=torch.float64) / (active_steps * B * cin * H * W) * dense if active_steps else \
        torch.tensor(0.0, dtype=torch.float64)
    memory = LayerShape(inputs_nz=float(nz), outputs=active_steps * B * cout * h * w,
                        weights=cin * cout, biases=cout, fan_out=cout, in_size=cin * H * W, out_size=cout * h * w,
                        synops=float(exact))
    ctx.synapse(name, kind="stem", block=-1, x=read, fan_out=cout, active=None, group=group, exact=exact,
                paper=paper, dense=torch.tensor(dense, dtype=torch.float64), memory=memory)


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Conv -> BN on [T', B, C, H, W] flattened to [T' * B, C, H, W]."""
    # channels_last: the NCHW max-pool is the slowest stem op on CPU (measured by spikesuite bench).
    return bn(conv(x.flatten(0, 1).contiguous(memory_format=torch.channels_last)))


class ConvBNLIF(nn.Module):
    """Conv3x3 -> BN2d -> (MaxPool) -> LIF on [T, B, C, H, W], with exact and paper op counts.
    ``pool_after_lif``: Conv -> BN -> LIF -> MaxPool (Spike-driven Transformer's stem order). ``kernel=1`` with
    ``stride``: a 1x1 convolution (QKFormer's patch-embedding shortcuts, counted by ``count_conv1x1``)."""

    def __init__(self, cin: int, cout: int, pool: bool, neuron: NeuronConfig, name: str, analog: bool = False,
                 bias: bool = False, pool_after_lif: bool = False, kernel: int = 3, stride: int = 1):
        super().__init__()
        if kernel != 3 and (analog or kernel != 1):
            raise ValueError(f"{name}: a ConvBNLIF is 3x3, or 1x1 on spikes")
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else None
        self.lif = make_lif(neuron)
        self.name, self.analog, self.pool_after_lif = name, analog, pool_after_lif

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        if ctx.count and self.conv.kernel_size[0] == 1:
            count_conv1x1(ctx, self.name, x, self.conv.out_channels, self.conv.stride[0], self.name)
        elif ctx.count:
            count_conv3x3(ctx, self.name, x, self.conv.out_channels, self.name, self.analog)
        return self.fire(_conv_bn(self.conv, self.bn, x), x.shape[0], ctx)

    def fire(self, y: Tensor, T: int, ctx: Context) -> Tensor:
        """The layer after its convolution: ``y`` [T * B, C, H, W] (BN output) -> spikes [T, B, C, H', W']."""
        if self.pool is not None and not self.pool_after_lif:
            y = self.pool(y)
        s = ctx.fire(self.name, self.lif(y.reshape(T, -1, *y.shape[1:])), self.name)
        if self.pool is not None and self.pool_after_lif:
            p = self.pool(s.flatten(0, 1))
            s = p.reshape(T, -1, *p.shape[1:])
        return s

    def forward_static(self, x: Tensor, T: int, ctx: Context) -> Tensor:
        """On a static input ``x`` [1, B, C, H, W]: the convolution and BN once (counted once), the LIF over
        ``T`` steps of that same current (the integrated stem's first stage)."""
        if ctx.count:
            count_conv3x3(ctx, self.name, x, self.conv.out_channels, None, self.analog)
        y = _conv_bn(self.conv, self.bn, x)
        return self.fire(y.unsqueeze(0).expand(T, *y.shape).flatten(0, 1), T, ctx)


class ConvBN(nn.Module):
    """Conv3x3 -> BN2d (-> MaxPool) on [T, B, C, H, W] with no neuron after it (real-valued output), counted at
    the unmasked steps of ``group``, the LIF layer whose spikes feed it."""

    def __init__(self, cin: int, cout: int, pool: bool, name: str, group: str | None, bias: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else None
        self.name, self.group = name, group

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        if ctx.count:
            count_conv3x3(ctx, self.name, x, self.conv.out_channels, self.group, False)
        y = _conv_bn(self.conv, self.bn, x)
        if self.pool is not None:
            y = self.pool(y)
        return y.reshape(x.shape[0], -1, *y.shape[1:])


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
        return ctx.fire(self.name, masked(self.lif(y), active), self.name, active)


def masked(x: Tensor, active: Tensor | None) -> Tensor:
    return x if active is None else x * active.unsqueeze(-1)


class LinearBN(nn.Module):
    """Linear -> BN1d on tokens [T, B, N, C] with no neuron after it: a real-valued update of the residual stream
    (Spike-driven Transformer's membrane shortcut), zero for inactive tokens; counted at the unmasked steps of
    ``group``, the LIF layer whose spikes feed it."""

    def __init__(self, cin: int, cout: int, name: str, kind: str, block: int, group: str, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(cin, cout, bias=bias)
        self.bn = nn.BatchNorm1d(cout)
        self.name, self.kind, self.block, self.group = name, kind, block, group

    def forward(self, x: Tensor, ctx: Context, active: Tensor | None) -> Tensor:
        ctx.synapse(self.name, kind=self.kind, block=self.block, x=x, fan_out=self.fc.out_features,
                    active=active, group=self.group)
        return masked(self.bn(self.fc(x).flatten(0, -2)).view(*x.shape[:-1], -1), active)


def fire(ctx: Context, name: str, node: nn.Module, x: Tensor, active: Tensor | None = None) -> Tensor:
    """A stand-alone LIF layer: spikes of ``node`` on ``x``, zero for inactive tokens, time-masked and recorded
    under ``name`` (its own mask group)."""
    return ctx.fire(name, masked(node(x), active), name, active)
