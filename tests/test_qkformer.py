"""The third backbone, QKFormer (suite/models/backbones/qkformer.py), and token policies across stages
(suite/models/policies/stages.py): the invariants every backbone meets (parameters equal to the peer, spikingjelly's
weights give spikingjelly's logits, disabled policies are the dense model bit for bit, halted tokens are invisible,
merges are size-weighted, compacted == masked, counts never above dense), the stage carry rules, and the Q-K
attention counting convention of docs/counting.md on a hand-counted example."""

from __future__ import annotations

import pytest
import torch
from helpers import fire_in_eval, fire_peer, forward, images
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from suite.config import HaltingConfig, MergeConfig, ModelConfig, TimeConfig, TimeMaskConfig, TokenConfig
from suite.models import build_model, qkformer_lif_layers
from suite.models.backbones.qkformer import QKBlock
from suite.models.compact import compact_forward
from suite.models.context import Context
from suite.models.convert import convert, sj_qkformer
from suite.models.policies.stages import carry, to_first_grid

CFG = ModelConfig(backbone="qkformer", depth=5, depths=(2, 1, 2), dim=32, heads=2, T=3, patch_embed="cifar")
T = CFG.T


def _build(cfg: ModelConfig = CFG, tokens: TokenConfig | None = None, time: TimeConfig | None = None,
           state: dict | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg, tokens or TokenConfig(), time or TimeConfig(), in_channels=1, image_size=(8, 8),
                        num_classes=5)
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model


@pytest.fixture(scope="module", params=["token", "channel"])
def qka(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def state(qka: str) -> dict[str, Tensor]:
    """Dense weights whose eval mode fires at realistic rates (one per Q-K attention kind)."""
    return fire_in_eval(_build(CFG.model_copy(update={"qk_attention": qka}))).state_dict()


def _cfg(qka: str) -> ModelConfig:
    return CFG.model_copy(update={"qk_attention": qka})


def _halting(**kw) -> TokenConfig:
    return TokenConfig(halting=HaltingConfig(readout="carry", **kw))


# ----------------------------------------------------------------------------------------- peer parity


def test_parameter_counts_equal_spikingjelly_and_the_official_cifar_model() -> None:
    from spikingjelly.activation_based.model.qkformer import qkformer_10_384

    def count(cfg: ModelConfig, image: int, classes: int) -> int:
        net = build_model(cfg, TokenConfig(), TimeConfig(), in_channels=3, image_size=(image, image),
                          num_classes=classes)
        return sum(p.numel() for p in net.parameters())

    imagenet = ModelConfig(backbone="qkformer", depth=10, depths=(1, 2, 7), dim=384, heads=6)
    assert count(imagenet, 224, 1000) == sum(p.numel() for p in qkformer_10_384().parameters()) == 16_472_584
    # zhouchenlin2096/QKFormer cifar10 and cifar100 logs: 6,706,234 and 6,740,884 parameters (dim 384, depth 4)
    cifar = ModelConfig(backbone="qkformer", depth=4, dim=384, heads=8, patch_embed="cifar")
    assert count(cifar, 32, 10) == 6_706_234 and count(cifar, 32, 100) == 6_740_884


def _sj_peer(qka: str) -> nn.Module:
    """spikingjelly's QKFormer, small, with BN set so that every stage fires."""
    from spikingjelly.activation_based.model.qkformer import QKFormer

    torch.manual_seed(0)
    return fire_peer(QKFormer(T=2, in_channels=3, num_classes=5, embed_dims=64, num_heads=(4, 4, 4),
                              depths=(1, 1, 1), qka_type=qka))


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_spikingjelly_weights_give_spikingjelly_logits(kind: str) -> None:
    peer = _sj_peer(kind)
    cfg = ModelConfig(backbone="qkformer", depth=3, depths=(1, 1, 1), dim=64, heads=4, T=2, qk_attention=kind)
    ours = build_model(cfg, TokenConfig(), TimeConfig(), in_channels=3, image_size=(16, 16), num_classes=5).eval()
    ours.load_state_dict(convert(sj_qkformer(cfg.stage_depths), peer.state_dict(), ours.state_dict(), "peer"))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        theirs = peer(x)
        functional.reset_net(peer)
        out = forward(ours, x, count=True)
    assert torch.equal(out.logits, theirs)
    rates = {n: s / c for n, (s, c) in out.ctx.spikes.items()}
    assert sum(0 < r < 1 for r in rates.values()) >= len(rates) - 2, rates  # (SSA on one 1x1 token may not fire)


# ----------------------------------------------------------------------------------------- the invariants


@pytest.mark.parametrize("train", [True, False])
def test_disabled_policies_and_policies_that_never_act_are_the_dense_model(qka: str, state, train: bool) -> None:
    x = images()
    dense = _build(_cfg(qka), state=state).train(train)
    ref = forward(dense, x)
    for tokens in (TokenConfig(merge=MergeConfig(r=0)), _halting(beta=1e4), _halting(beta=1e4, mode="1d")):
        out = forward(_build(_cfg(qka), tokens, state=state).train(train), x, record_maps=True)
        assert torch.equal(out.logits, ref.logits) and torch.equal(out.step_logits, ref.step_logits)
        assert out.maps.all() and torch.equal(out.active_tokens, ref.active_tokens)
    assert ref.logits.abs().sum() > 0


@pytest.mark.parametrize("kind", ["token", "channel", "ssa"])
def test_halted_tokens_reach_no_other_token_and_stay_frozen(kind: str) -> None:
    cfg = _cfg("channel" if kind == "channel" else "token")
    model = fire_in_eval(_build(cfg))
    blk = model.blocks[3 if kind == "ssa" else 0]
    N, C, j = 16, blk.q.fc.in_features, 5
    with torch.no_grad():  # make the attention path fire on this input (unit BN statistics, a positive offset)
        for bn in (m for m in blk.modules() if isinstance(m, nn.BatchNorm1d)):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        for lin in (blk.q, blk.k, blk.proj, blk.mlp1, blk.mlp2) + ((blk.v,) if kind == "ssa" else ()):
            lin.bn.bias.add_(1.5)
        if kind == "channel":  # a sparse Q, so that one token decides some channels of the mask
            blk.q.bn.bias.sub_(4.0)
    x = torch.randint(0, 3, (T, 2, N, C), generator=torch.Generator().manual_seed(0)).float()
    x2 = x.clone()
    x2[1:, :, j] += 8.0

    def run(inp: Tensor, active: Tensor) -> Tensor:
        ctx = Context(T=T, count=True)
        with torch.no_grad():
            out, _ = blk(inp, ctx, active)
        functional.reset_net(blk)
        assert ctx.spikes[f"{blk.name}.attn"][0] > 0, "the attention must fire for the test to mean anything"
        return out

    others = torch.arange(N) != j
    dense = torch.ones(T, 2, N)
    if kind != "token":  # token attention mixes no tokens at all: its control is the frozen-state check below
        assert not torch.equal(run(x, dense)[..., others, :], run(x2, dense)[..., others, :])
    active = dense.clone()
    active[1:, :, j] = 0
    y, y2 = run(x, active), run(x2, active)
    assert torch.equal(y[..., others, :], y2[..., others, :])
    assert torch.equal(y2[1:, :, j], x2[1:, :, j])


def test_channel_attention_weights_a_merged_token_by_its_size() -> None:
    """A token of size 2 enters the channel sum as two copies of itself: the other tokens' outputs are those of
    the model with the copy present."""
    model = fire_in_eval(_build(_cfg("channel")))
    blk: QKBlock = model.blocks[0]
    N, C = 6, blk.q.fc.in_features
    x = torch.randint(0, 3, (T, 2, N, C), generator=torch.Generator().manual_seed(2)).float()
    x[:, :, 5] = x[:, :, 4]  # token 5 duplicates token 4
    ones = torch.ones(T, 2, N)
    merged, size = ones.clone(), ones.clone()
    merged[:, :, 5], size[:, :, 4], size[:, :, 5] = 0, 2, 0
    with torch.no_grad():
        a, _ = blk(x, Context(T=T), ones)
        functional.reset_net(blk)
        b, _ = blk(x, Context(T=T), merged, size)
        functional.reset_net(blk)
    assert torch.equal(a[:, :, :5], b[:, :, :5])
    assert not torch.equal(a[:, :, 0], x[:, :, 0]), "the block must act"


TOKENS = {
    "act_2d": _halting(beta=5.0),
    "act_1d+merge": TokenConfig(halting=HaltingConfig(beta=5.0, readout="carry", mode="1d"), merge=MergeConfig(r=2)),
    "act_mean_carry": _halting(beta=8.0, stage_carry="mean"),
    "merge": TokenConfig(merge=MergeConfig(r=3)),
    "merge_per_step": TokenConfig(merge=MergeConfig(r=3, per="timestep")),
    "drop": TokenConfig(drop={"keep_ratio": 0.5, "at_block": 1}),
}


@pytest.mark.parametrize("case", list(TOKENS))
def test_compacted_equals_masked_and_counts_stay_below_dense(qka: str, state, case: str) -> None:
    model = _build(_cfg(qka), TOKENS[case], state=state).eval()
    x = images()
    with torch.no_grad():
        out = forward(model, x, count=True, record_maps=True)
        compact = compact_forward(model, x)
    assert torch.equal(compact, out.logits)
    dense = forward(_build(_cfg(qka), state=state).eval(), x, count=True)
    per_block = torch.tensor(model.block_tokens(), dtype=torch.float).view(1, -1, 1)
    assert torch.all(out.active_tokens <= per_block) and out.active_tokens.sum() < dense.active_tokens.sum()
    assert out.maps.shape == (4, CFG.depth, T, model.num_tokens)
    assert torch.all(out.token_depth <= CFG.depth * T)
    for name, rec in out.ctx.ops.items():
        ref = dense.ctx.ops[name]
        assert rec.dense_flops <= ref.dense_flops + 1e-9 and rec.sops_exact <= rec.dense_flops + 1e-9, name
    units = out.ctx.block_token_units()
    torch.testing.assert_close(units.float(), out.active_tokens, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------- stages


def test_stage_carry_rules_on_a_known_grid() -> None:
    cum = torch.tensor([[0.0, 1.0, 0.5, 0.2, 0.4, 0.9, 1.0, 1.0, 0.3]])  # a 3 x 3 grid
    torch.testing.assert_close(carry(cum, (3, 3), "min"), torch.tensor([[0.0, 0.5, 1.0, 0.3]]))
    torch.testing.assert_close(carry(cum, (3, 3), "mean"), torch.tensor([[(0 + 1 + .2 + .4) / 4, (.5 + .9) / 2,
                                                                          1.0, 0.3]]))
    alive = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert carry(alive, (3, 3), "max").tolist() == [[0.0, 1.0, 0.0, 0.0]]
    up = to_first_grid(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), [(3, 3), (2, 2)], 1)
    assert up.tolist() == [[1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 3.0, 3.0, 4.0]]


def test_min_carry_keeps_a_region_running_while_any_child_runs(state) -> None:
    """A next-stage token runs only where a child ran at the last block before the transition; with
    ``stage_carry: min`` its score is its least advanced child's, so ``mean`` (the children's average) halts more."""
    x = images()
    runs = {c: forward(_build(_cfg("token"), _halting(beta=2.0, gamma=10.0, mode="1d", stage_carry=c), state=state)
                       .eval(), x, record_maps=True) for c in ("min", "mean")}
    first = runs["min"].maps[:, 1, 0]  # [B, N1]: stage-1 tokens running at the last stage-1 block
    assert first.any() and not first.all(), "the test needs some halted and some running tokens"
    parents = to_first_grid(carry(first.float(), (8, 8), "max"), [(8, 8), (4, 4)], 1).bool()
    for c, out in runs.items():
        second = out.maps[:, 2, 0]  # stage-2 tokens drawn on the first grid
        assert not (second & ~parents).any(), c
    assert not (runs["mean"].maps & ~runs["min"].maps).any()
    assert runs["mean"].active_tokens.sum() < runs["min"].active_tokens.sum()


def test_time_masks_act_per_module_and_an_all_ones_mask_is_the_unmasked_model(state) -> None:
    x = images()
    plain = forward(_build(state=state), x)
    for granularity in ("block", "type", "layer"):
        masked = _build(time=TimeConfig(mask=TimeMaskConfig(granularity=granularity)), state=state)
        assert torch.equal(forward(masked, x).logits, plain.logits)
        groups = masked.time_policy.groups
        if granularity == "type":
            assert groups == ["embed", "qka", "mlp", "ssa"]
        if granularity == "block":
            assert groups[:3] == ["stem", "block0", "block1"] and "embed1" in groups and "embed2" in groups
    names = {layer.name for layer in qkformer_lif_layers(CFG.stage_depths, imagenet=False)}
    assert names == set(forward(_build(state=state), x, count=True).ctx.spikes)


def test_counts_are_recorded_per_stage(state) -> None:
    out = forward(_build(state=state).eval(), images(), count=True)
    ops = out.ctx.ops
    for stage, prefix in ((1, "embed1"), (2, "embed2")):
        assert {f"{prefix}.0", f"{prefix}.1", f"{prefix}.res"} <= set(ops), stage
    # dense token-units per block follow each stage's grid: 64, 64 | 16 | 4, 4 tokens
    assert _build().block_tokens() == [64, 64, 16, 4, 4]
    assert torch.all(out.active_tokens == torch.tensor([64, 64, 16, 4, 4.0]).view(1, -1, 1))
    # a 1x1 stride-2 shortcut reads every other row and column: dense = (H/2)(W/2) Cin Cout per step and image
    assert ops["embed1.res"].dense_flops == 4 * T * 4 * 4 * 8 * 16


def test_multi_stage_refusals_name_the_setting() -> None:
    from suite.config.study import stage_refusal

    with pytest.raises(ValueError, match="readout: act"):
        stage_refusal(TokenConfig(halting=HaltingConfig()))
    with pytest.raises(ValueError, match="time_major"):
        stage_refusal(TokenConfig(halting=HaltingConfig(readout="carry", order="time_major")))
    with pytest.raises(ValueError, match="tokens.select"):
        stage_refusal(TokenConfig(select={"keep_ratio": 0.5}))
    with pytest.raises(ValueError, match="model.depths"):
        ModelConfig(backbone="qkformer", depth=4, depths=(1, 1, 1), dim=32, heads=2)
    with pytest.raises(ValueError, match="model.depths"):
        ModelConfig(backbone="spikformer", depths=(1, 1, 2))


# ----------------------------------------------------------------------------------------- Q-K counting


def test_qk_attention_counts_by_hand() -> None:
    """docs/counting.md, "Q-K attention", on one step, one image, 3 tokens, 4 channels, 2 heads:

    Q = [[1,0,1,0],[0,0,0,0],[1,1,0,1]] (5 spikes; per head sums 1,1 | 0,0 | 2,1, so the threshold-0.5 mask is
    1,1 | 0,0 | 1,1), K = [[1,1,0,0],[0,1,1,0],[1,0,0,1]] (6 spikes), mask * K = A = [[1,1,0,0],[0,0,0,0],[1,0,0,1]]
    (4 non-zero): qk exact 5, paper 5; mask exact 4, paper 6; dense N C = 12 each. With token 1 inactive: dense 8
    each (N_a = 2)."""
    cfg = ModelConfig(backbone="qkformer", depth=3, dim=16, heads=2, T=1)
    blk = QKBlock(cfg, 0, 4, False, True)
    q = torch.tensor([[[[1., 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]]]])
    k = torch.tensor([[[[1., 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]]]])
    a = torch.tensor([[[[1., 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]]]])
    ctx = Context(T=1, count=True)
    with torch.no_grad():  # the block itself gives A from Q and K
        mask = blk.attn_lif(q.view(1, 1, 3, 2, 2).sum(-1))
        functional.reset_net(blk)
    assert torch.equal((mask.unsqueeze(-1) * k.view(1, 1, 3, 2, 2)).view(1, 1, 3, 4), a)
    blk._count_attention(ctx, q, k, a, None)
    qk, mask = ctx.ops["block0.qk"], ctx.ops["block0.mask"]
    assert (qk.sops_exact, qk.sops_paper, qk.dense_flops) == (5, 5, 12)
    assert (mask.sops_exact, mask.sops_paper, mask.dense_flops) == (4, 6, 12)
    ctx = Context(T=1, count=True)
    blk._count_attention(ctx, q, k, a, torch.tensor([[[1.0, 0.0, 1.0]]]))
    assert ctx.ops["block0.qk"].dense_flops == ctx.ops["block0.mask"].dense_flops == 8
