"""Small helpers shared by the model tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional
from torch import Tensor, nn


def images(b: int = 4, c: int = 1, s: int = 8, seed: int = 1) -> Tensor:
    """Deterministic random images in [0, 3) (strong enough to make an untrained stem fire)."""
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed)) * 3


def forward(model: nn.Module, x: Tensor, **kw):
    """One forward pass, then ``reset_net``: every call starts from resting neurons."""
    out = model(x, **kw)
    functional.reset_net(model)
    return out


def lif_layer_names(depth: int) -> list[str]:
    """Names of a Spikformer's LIF layers in forward order (from the backbone's layer metadata)."""
    from suite.models import spikformer_lif_layers

    return [layer.name for layer in spikformer_lif_layers(depth)]


def lif_gates(depth: int) -> dict[str, tuple[str, ...]]:
    """LIF layer -> the counted synaptic layers it gates, for a Spikformer of ``depth`` blocks."""
    from suite.models import spikformer_lif_layers

    return {layer.name: layer.gates for layer in spikformer_lif_layers(depth)}
