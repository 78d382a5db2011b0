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


BACKBONES = ("spikformer", "sdt")  # every invariant test of the policies runs on each


def parametrize_backbones(module_name: str, global_name: str):
    """An autouse fixture that runs every test of a module once per backbone, with the module's model config
    ``global_name`` switched to that backbone (``CFG.model_copy(update={"backbone": ...})``)."""
    import sys

    import pytest

    @pytest.fixture(autouse=True, params=BACKBONES)
    def backbone(request, monkeypatch):
        module = sys.modules[module_name]
        cfg = getattr(module, global_name)
        monkeypatch.setattr(module, global_name, cfg.model_copy(update={"backbone": request.param}))
        return request.param

    return backbone


def block_lif_names(cfg, block: int = 0) -> list[str]:
    """The LIF layers of one block of ``cfg``'s backbone, in forward order."""
    from suite.models import sdt_lif_layers, spikformer_lif_layers

    layers = (sdt_lif_layers if cfg.backbone == "sdt" else spikformer_lif_layers)(block + 1)
    return [layer.name for layer in layers if layer.block == block]


def block_class(cfg):
    """The block class of ``cfg``'s backbone."""
    from suite.models.backbones.sdt import SDTBlock
    from suite.models.backbones.spikformer import Block

    return SDTBlock if cfg.backbone == "sdt" else Block


def fire_in_eval(model: nn.Module, seed: int = 0) -> nn.Module:
    """An untrained model in eval mode whose blocks actually spike, returned in eval mode.

    BN running statistics are set from train-mode forwards (momentum None: a cumulative average), so eval-mode BN
    normalises like training would; then the BN1d affine parameters are drawn with a gain and offset so the block
    neurons fire at realistic rates (10-50%) rather than almost never."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for s in range(2):
            forward(model, images(16, seed=10 + s))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.copy_(3.0 * (0.5 + torch.rand(m.weight.shape, generator=g)))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


def fire_peer(peer: nn.Module, seed: int = 0) -> nn.Module:
    """A peer model (spikingjelly's) in eval mode whose every layer fires: BN gains in [0, 3), offsets ~ N(1.2, 1),
    running variances in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in peer.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.copy_(3 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) + 1.2)
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return peer.eval()
