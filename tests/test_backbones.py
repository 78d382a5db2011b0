"""The second backbone (Spike-driven Transformer v1, suite/models/backbones/sdt.py) and the stem modes of every
backbone (``model.stem``: per_step | once | integrate); the policy invariants themselves run on both backbones in
test_halting.py and test_compact.py (parametrised)."""

from __future__ import annotations

import pytest
import torch
from helpers import BACKBONES
from helpers import forward as _run
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from torch import Tensor, nn

from suite.config import (
    EnergyConfig,
    HaltingConfig,
    MergeConfig,
    ModelConfig,
    TimeConfig,
    TimeMaskConfig,
    TokenConfig,
)
from suite.metrics import energy_metrics
from suite.models import build_model, sdt_lif_layers
from suite.models.compact import compact_forward

TINY = ModelConfig(backbone="sdt", depth=2, dim=16, heads=2, T=3)


def _build(cfg: ModelConfig = TINY, tokens: TokenConfig | None = None, time: TimeConfig | None = None,
           seed: int = 0, channels: int = 1, image: int = 8, classes: int = 5):
    torch.manual_seed(seed)
    return build_model(cfg, tokens or TokenConfig(), time or TimeConfig(), in_channels=channels,
                       image_size=(image, image), num_classes=classes)


def _firing(model: nn.Module, bias: float = 1.0) -> nn.Module:
    """BN set to ``2 y + bias`` so that random weights fire (a silent network counts and tests nothing)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                mod.weight.fill_(2.0)
                mod.bias.fill_(bias)
    return model.eval()


def _images(b: int = 4, c: int = 1, s: int = 8, seed: int = 1) -> Tensor:
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed)) * 3


# ----------------------------------------------------------------------------------------- the SDT backbone


def test_sdt_parameter_count_matches_spikingjelly_peer() -> None:
    from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer

    ours = _build(ModelConfig(backbone="sdt", depth=2, dim=512, heads=8), channels=3, image=32, classes=10)
    peer = SpikeDrivenTransformer(T=4, in_channels=3, num_classes=10, embed_dims=512, num_heads=8, depths=2,
                                  mlp_ratio=4.0, pooling_stat="0011")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in peer.parameters()) == 10_234_378
    assert ours.num_tokens == 64 and ours.dense_token_units == 2 * 4 * 64


def test_sdt_dense_forward_layout_and_residual_stream() -> None:
    model = _firing(_build())
    streams: list[Tensor] = []
    model.blocks[1].register_forward_pre_hook(lambda m, args: streams.append(args[0].detach()))
    out = _run(model, _images(), count=True)
    assert out.logits.shape == (4, 5) and out.step_logits.shape == (3, 4, 5)
    assert torch.all(out.active_tokens == 16)
    assert not torch.equal(streams[0], streams[0].round()), "membrane shortcuts: the residual stream is real-valued"
    assert set(out.ctx.spikes) == {layer.name for layer in sdt_lif_layers(TINY.depth)}
    assert all(0.0 <= s / c <= 1.0 for s, c in out.ctx.spikes.values())


def test_sdt_spike_driven_attention_has_no_token_mixing_matrix() -> None:
    """SDSA: a token's output depends on the others only through the per-channel token sum of K * V."""
    blk = _firing(_build()).blocks[0]
    from suite.models.context import Context

    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 2
    ctx = Context(T=3, count=True)
    with torch.no_grad():
        y, k = blk(x, ctx)
    functional.reset_net(blk)
    assert ctx.spikes["block0.attn"][0] > 0, "the attention must fire"
    T, B, N, C = x.shape
    dense = T * B * N * C
    assert ctx.ops["block0.kv"].dense_flops == ctx.ops["block0.qkv"].dense_flops == dense
    assert ctx.ops["block0.kv"].sops_exact <= ctx.ops["block0.kv"].sops_paper <= dense


def test_sdt_counts_match_spikingjelly_op_counter_layer_by_layer() -> None:
    """Every synaptic layer of SDT but the first conv sees binary spikes, so our exact SOPs equal spikingjelly's
    SynOpCounter per layer; the first conv's MACs equal its MACCounter."""
    model = _firing(_build(channels=3))
    x = _images(2, 3)
    ops = _run(model, x, count=True).ctx.ops
    syn, mac = SynOpCounter(), MACCounter()
    functional.reset_net(model)
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        model(x)
    functional.reset_net(model)

    def scope(counter, name: str) -> int:
        return sum(counter.get_counts().get(f"SDT.{name}", {}).values())

    assert scope(mac, "stem.stages.0.conv") == ops["stem.0"].macs > 0 and scope(syn, "stem.stages.0.conv") == 0
    convs = {"stem.1": "stem.stages.1.conv", "stem.2": "stem.stages.2.conv", "stem.3": "stem.final.conv",
             "stem.rpe": "stem.rpe.conv"}
    linears = {f"block{b}.{n}": f"blocks.{b}.{n}.fc" for b in range(TINY.depth)
               for n in ("q", "k", "v", "proj", "mlp1", "mlp2")}
    for ours, theirs in {**convs, **linears}.items():
        assert scope(syn, theirs) == ops[ours].sops_exact, ours
        assert scope(mac, theirs) == 0, ours
    assert sum(ops[n].sops_exact for n in linears) > 0


# ----------------------------------------------------------------------------------------- stem modes


@pytest.mark.parametrize("backbone", (*BACKBONES, "qkformer"))
@pytest.mark.parametrize("stem", ["once", "integrate"])
def test_stem_run_once_feeds_identical_tokens_to_every_step(backbone: str, stem: str) -> None:
    shape = {"depth": 3, "patch_embed": "cifar"} if backbone == "qkformer" else {"depth": 2}
    per_step = ModelConfig(backbone=backbone, dim=16, heads=2, T=3, **shape)
    # a LIF that sees one step from rest fires only at twice its threshold: a stronger BN offset
    model = _firing(_build(per_step.model_copy(update={"stem": stem})), bias=2.5)
    dense = _firing(_build(per_step), bias=2.5)
    seen: list[Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    x = _images()
    out, ref = _run(model, x, count=True), _run(dense, x, count=True)
    z = seen[0]
    assert torch.equal(z, z[:1].expand_as(z)), "every timestep gets the same tokens"
    first, base = out.ctx.similarity["block0"], ref.ctx.similarity["block0"]
    assert first[1] > 0 and first[0] / first[1] == pytest.approx(1.0) and base[0] / base[1] < 1.0
    # the analog first convolution runs once instead of T times
    assert out.ctx.ops["stem.0"].macs * 3 == ref.ctx.ops["stem.0"].macs
    if stem == "integrate":  # its LIF integrates the one current over T steps
        assert out.ctx.spikes["stem.0"][1] == ref.ctx.spikes["stem.0"][1]
    else:
        assert out.ctx.spikes["stem.0"][1] * 3 == ref.ctx.spikes["stem.0"][1]
    m, d = energy_metrics(out.ctx.ops, 4, EnergyConfig()), energy_metrics(ref.ctx.ops, 4, EnergyConfig())
    assert m["energy_exact_uj_stem"] < d["energy_exact_uj_stem"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_default_stem_is_per_step_and_keeps_run_ids(backbone: str) -> None:
    cfg = ModelConfig(backbone=backbone)
    assert cfg.stem == "per_step" and cfg.stem_integrate == "mean"


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("stem", ["once", "integrate"])
def test_policies_work_with_a_stem_run_once(backbone: str, stem: str) -> None:
    cfg = ModelConfig(backbone=backbone, depth=2, dim=16, heads=2, T=3, stem=stem)
    tokens = TokenConfig(halting=HaltingConfig(beta=5.0), merge=MergeConfig(r=2))
    model = _firing(_build(cfg, tokens))
    x = _images()
    masked = _run(model, x)
    assert masked.active_tokens.sum() < 4 * model.dense_token_units, "the test needs halted tokens"
    with torch.no_grad():
        compact = compact_forward(model, x)
    torch.testing.assert_close(compact, masked.logits, atol=1e-4 * max(1.0, float(masked.logits.detach().abs().max())), rtol=0)
    # time masks allocate the blocks' steps; a stem that runs once has no steps to allocate
    timed = _build(cfg, time=TimeConfig(mask=TimeMaskConfig(granularity="layer")))
    assert not any(g.startswith("stem") for g in timed.time_policy.groups)
    out = _run(timed.train(), x)
    out.logits.sum().backward()
    assert timed.time_policy.scores.grad is not None


@pytest.mark.parametrize("granularity", ["block", "layer", "type"])
def test_sdt_all_ones_time_mask_is_the_unmasked_model(granularity: str) -> None:
    masked = _build(time=TimeConfig(mask=TimeMaskConfig(granularity=granularity)))
    plain = _build()
    plain.load_state_dict(masked.state_dict(), strict=False)
    x = _images()
    for train in (True, False):
        a, b = _run(masked.train(train), x), _run(plain.train(train), x)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.step_logits, b.step_logits)
    groups = masked.time_policy.groups
    expected = {"block": ["stem", "block0", "block1", "head"], "type": ["stem", "attention", "mlp", "head"],
                "layer": [layer.name for layer in sdt_lif_layers(TINY.depth)]}
    assert groups == expected[granularity]
