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
from suite.models.context import Context
from suite.models.neurons import make_lif


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
