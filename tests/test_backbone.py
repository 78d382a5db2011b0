"""The dense Spikformer backbone (suite/models/backbones/spikformer.py): size, token grid, spike layout, state."""

from __future__ import annotations

import pytest
import torch
from helpers import forward as _run
from helpers import images as _images
from helpers import lif_layer_names
from spikingjelly.activation_based import functional, neuron
from torch import Tensor

from suite.config import ModelConfig, TimeConfig, TokenConfig
from suite.models import Spikformer, build_model

TINY = ModelConfig(depth=2, dim=16, heads=2, T=3)


def _tiny(seed: int = 0, cfg: ModelConfig = TINY, image: int = 8, channels: int = 1) -> Spikformer:
    torch.manual_seed(seed)
    return build_model(cfg, TokenConfig(), TimeConfig(), in_channels=channels, image_size=(image, image),
                       num_classes=5)




def test_parameter_count_matches_spikingjelly_peer() -> None:
    from spikingjelly.activation_based.model.spikformer import spikformer_cifar10

    model = build_model(ModelConfig(), TokenConfig(), TimeConfig(), in_channels=3, image_size=(32, 32),
                        num_classes=10)
    ours = sum(p.numel() for p in model.parameters())
    peer = sum(p.numel() for p in spikformer_cifar10().parameters())
    assert ours == peer == 9_310_906


@pytest.mark.parametrize(("size", "tokens"), [(8, 16), (28, 49), (32, 64), (64, 64)])
def test_token_count_per_input_size(size: int, tokens: int) -> None:
    cfg = ModelConfig(depth=1, dim=16, heads=2, T=1)
    model = _tiny(cfg=cfg, image=size, channels=3)
    assert model.num_tokens == tokens
    seen: list[tuple[int, ...]] = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    out = _run(model, _images(2, 3, size))
    assert seen == [(1, 2, tokens, 16)]
    assert out.active_tokens.shape == (2, 1, 1)
    assert torch.all(out.active_tokens == tokens)


def test_every_lif_output_is_binary_with_the_expected_layout() -> None:
    model = _tiny().train()
    lifs = [(n, m) for n, m in model.named_modules() if isinstance(m, neuron.LIFNode)]
    assert len(lifs) == len(lif_layer_names(TINY.depth)) == 5 + 7 * TINY.depth
    outputs: dict[str, Tensor] = {}
    for name, m in lifs:
        m.register_forward_hook(lambda mod, args, out, name=name: outputs.__setitem__(name, out.detach()))
    streams: list[Tensor] = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda m, args: streams.append(args[0].detach()))
    B, T, N, C = 4, TINY.T, 16, TINY.dim
    out = _run(model, _images(B), count=True)
    assert out.logits.shape == (B, 5) and out.step_logits.shape == (T, B, 5)
    assert set(outputs) == {n for n, _ in lifs}
    for name, s in outputs.items():
        assert s.shape[:2] == (T, B), name
        assert torch.all((s == 0) | (s == 1)), f"{name} is not binary"
        if name.startswith("blocks."):
            width = int(C * TINY.mlp_ratio) if name.endswith("mlp1.lif") else C
            assert s.shape == (T, B, N, width), name
    # the residual stream entering each block is [T, B, N, C], integer-valued, and blocks are active
    assert [tuple(z.shape) for z in streams] == [(T, B, N, C)] * TINY.depth
    for z in streams:
        assert torch.equal(z, z.round()) and z.min() >= 0
    for b in range(TINY.depth):
        assert outputs[f"blocks.{b}.mlp1.lif"].sum() > 0, "the test needs spikes inside the blocks"
    # count=True: one firing-rate entry per LIF layer, each a rate in [0, 1]
    assert set(out.ctx.spikes) == set(lif_layer_names(TINY.depth))
    for name, (fired, total) in out.ctx.spikes.items():
        assert total > 0 and 0 <= fired <= total, name


def test_reset_between_batches() -> None:
    model = _tiny().train()
    x = _images()
    first = model(x).logits
    second_without_reset = model(x).logits
    functional.reset_net(model)
    third = model(x).logits
    functional.reset_net(model)
    assert torch.equal(first, third)
    assert not torch.equal(first, second_without_reset)


@pytest.mark.parametrize("train", [True, False])
def test_disabled_policies_are_the_plain_backbone(train: bool) -> None:
    built = _tiny(seed=3)
    assert built.token_policy is None and built.time_policy is None
    torch.manual_seed(3)
    plain = Spikformer(TINY, in_channels=1, image_size=(8, 8), num_classes=5)
    built.train(train)
    plain.train(train)
    x = _images()
    a, b = _run(built, x), _run(plain, x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.step_logits, b.step_logits)
    assert torch.equal(a.active_tokens, b.active_tokens)
    assert torch.all(a.active_tokens == 16)
    assert a.aux == {} and b.aux == {}
    # and the same seed gives the same model
    again = _tiny(seed=3).train(train)
    assert torch.equal(_run(again, x).logits, a.logits)
