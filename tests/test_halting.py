"""AT-SNN / A-ViT halting on every backbone (suite/models/policies/halting.py, suite/models/policies/tokens.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import block_class, parametrize_backbones
from helpers import forward as _run
from helpers import images as _images
from spikingjelly.activation_based import functional
from torch import Tensor, nn

import suite.models.policies.tokens as tokens_mod
from suite.config import HaltingConfig, MergeConfig, ModelConfig, TimeConfig, TokenConfig
from suite.models import Spikformer, build_model
from suite.models.context import Context
from suite.models.policies.merge import MergePlan, size_weighted_mean

CFG = ModelConfig(depth=2, dim=16, heads=2, T=3)
L, T, N = CFG.depth, CFG.T, 16  # 8x8 input -> 4x4 tokens
backbone = parametrize_backbones(__name__, "CFG")


def _build(tokens: TokenConfig | None = None, state: dict | None = None, seed: int = 0) -> Spikformer:
    torch.manual_seed(seed)
    model = build_model(CFG, tokens or TokenConfig(), TimeConfig(), in_channels=1, image_size=(8, 8),
                        num_classes=5)
    if state is not None:
        model.load_state_dict(state)
    return model


def _halting(**kw) -> TokenConfig:
    return TokenConfig(halting=HaltingConfig(**kw))




def _calibrate(model: nn.Module, run) -> None:
    """Set every BN's running statistics to the batch statistics of its actual eval-mode input, so an
    untrained model is active in eval mode (``run`` is one forward)."""

    def pre(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        inp = args[0]
        dims = [0, *range(2, inp.dim())]
        mod.running_mean.copy_(inp.mean(dims))
        mod.running_var.copy_(inp.var(dims, unbiased=False))

    model.eval()
    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        run()
    functional.reset_net(model)
    for h in hooks:
        h.remove()


_STATES: dict[str, dict[str, Tensor]] = {}


@pytest.fixture
def state(backbone: str) -> dict[str, Tensor]:
    """Weights of the dense model with BN statistics under which eval mode fires (one per backbone)."""
    if backbone not in _STATES:
        model = _build()
        _calibrate(model, lambda: model(_images(16, seed=5)))
        _STATES[backbone] = model.state_dict()
    return _STATES[backbone]


def _units(maps: Tensor, order: str) -> Tensor:
    """[B, L, T, N] -> [B, U, N] in processing order."""
    if order == "time_major":
        maps = maps.transpose(1, 2)
    return maps.flatten(1, 2)


def _assert_monotone(units: Tensor) -> None:
    """Once a token is off it stays off along the unit axis."""
    u = units.to(torch.int8)
    assert torch.all(u[:, 1:] <= u[:, :-1])


# ------------------------------------------------------------------------- disabled = dense


@pytest.mark.parametrize(("order", "train"), [("block_major", True), ("block_major", False),
                                              ("time_major", False), ("1d", True)])
def test_carry_readout_that_cannot_halt_is_the_dense_model(state, order: str, train: bool) -> None:
    # time_major runs one step per call, so only eval-mode BN (running statistics) can match exactly
    kw = {"mode": "1d"} if order == "1d" else {"order": order}
    dense = _build(state=state).train(train)
    halt = _build(_halting(beta=1e4, readout="carry", **kw), state=state).train(train)
    x = _images()
    a, b = _run(dense, x), _run(halt, x, record_maps=True)
    assert torch.all(b.active_tokens == N) and b.maps.all()
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.step_logits, b.step_logits)
    assert a.logits.abs().sum() > 0


def test_disabled_token_policies_are_the_dense_model(state) -> None:
    assert _build(TokenConfig()).token_policy is None
    x = _images()
    for train in (True, False):
        dense = _build(state=state).train(train)
        no_merge = _build(TokenConfig(merge=MergeConfig(r=0)), state=state).train(train)
        a, b = _run(dense, x), _run(no_merge, x)
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.step_logits, b.step_logits)
        assert torch.all(b.active_tokens == N)


# ------------------------------------------------------------------------- halting bookkeeping


@pytest.mark.parametrize("order", ["block_major", "time_major"])
def test_halted_tokens_never_return(order: str) -> None:
    model = _build(_halting(beta=10.0, order=order)).train()
    out = _run(model, _images(8), record_maps=True)
    units = _units(out.maps, order)
    assert units[:, 0].all(), "every token runs its first unit"
    assert not units[:, -1].all(), "the test needs halted tokens"
    _assert_monotone(units)
    assert torch.equal(out.active_tokens, out.maps.sum(-1).float())
    assert torch.equal(out.token_depth, out.maps.sum((1, 2)).float())


def test_1d_halting_shares_the_mask_across_timesteps() -> None:
    model = _build(_halting(mode="1d", beta=3.0)).train()
    out = _run(model, _images(8), record_maps=True)
    assert torch.equal(out.maps, out.maps[:, :, :1].expand_as(out.maps))
    assert not out.maps.all(), "the test needs halted tokens"
    _assert_monotone(out.maps[:, :, 0])
    assert out.step_logits is not None and out.step_logits.shape == (T, 8, 5)


def test_halted_token_keys_and_values_reach_no_other_token() -> None:
    torch.manual_seed(0)
    blk = block_class(CFG)(CFG, 0)
    B, C, j = 4, CFG.dim, 5
    x = torch.randint(0, 3, (T, B, N, C), generator=torch.Generator().manual_seed(0)).float()
    _calibrate(blk, lambda: blk(x, Context(T=T)))
    with torch.no_grad():  # make the attention path fire (an untrained block barely does)
        for lin in (blk.q, blk.k, blk.v, blk.mlp1):
            lin.bn.bias.add_(1.5)
    x2 = x.clone()
    x2[1:, :, j] += torch.randint(1, 3, (T - 1, B, C), generator=torch.Generator().manual_seed(1)).float()
    others = torch.arange(N) != j

    def run(inp: Tensor, active: Tensor | None) -> Tensor:
        ctx = Context(T=T, count=True)
        with torch.no_grad():
            out, _ = blk(inp, ctx, active)
        functional.reset_net(blk)
        assert ctx.spikes["block0.attn"][0] > 0, "the attention must fire for the test to mean anything"
        return out

    # control: while token j is active, changing it changes the other tokens through attention
    dense = torch.ones(T, B, N)
    assert not torch.equal(run(x, dense)[..., others, :], run(x2, dense)[..., others, :])
    # token j halted after its first step: its later rows reach no other token, and its state is frozen
    active = dense.clone()
    active[1:, :, j] = 0
    y, y2 = run(x, active), run(x2, active)
    assert torch.equal(y[..., others, :], y2[..., others, :])
    assert torch.equal(y2[1:, :, j], x2[1:, :, j])
    assert not torch.equal(y[0, :, j], x[0, :, j]), "an active token is updated"


@pytest.mark.parametrize("tokens", [
    _halting(beta=5.0), _halting(beta=5.0, order="time_major"), _halting(beta=5.0, mode="1d"),
    TokenConfig(merge=MergeConfig(r=4)), TokenConfig(halting=HaltingConfig(beta=5.0), merge=MergeConfig(r=4)),
], ids=["block_major", "time_major", "1d", "merge", "act+merge"])
def test_counts_never_exceed_dense(tokens: TokenConfig) -> None:
    out = _run(_build(tokens).train(), _images(8), record_maps=True)
    assert out.active_tokens.shape == (8, L, T)
    assert torch.all(out.active_tokens <= N) and torch.all(out.active_tokens >= 0)
    assert out.active_tokens.sum() < 8 * L * T * N, "the test needs some saving"
    assert torch.all(out.token_depth <= L * T)


@pytest.mark.parametrize("eps", [1.0, 3.0])
@pytest.mark.parametrize("mode", ["block_major", "time_major", "1d"])
def test_eps_of_one_halts_every_token_at_its_first_unit(eps: float, mode: str) -> None:
    kw = {"mode": "1d"} if mode == "1d" else {"order": mode}
    out = _run(_build(_halting(eps=eps, **kw)).train(), _images())
    expect = torch.zeros(4, L, T)
    if mode == "1d":
        expect[:, 0, :] = N  # the unit is a whole block, all timesteps
    else:
        expect[:, 0, 0] = N
    assert torch.equal(out.active_tokens, expect)
    assert torch.all(out.active_tokens.sum((1, 2)) == N * (T if mode == "1d" else 1))
    assert torch.all(out.token_depth == (T if mode == "1d" else 1))
    assert torch.isfinite(out.logits).all() and out.logits.abs().sum() > 0


# ------------------------------------------------------------------------- losses and gradients


@pytest.mark.parametrize("kw", [{}, {"order": "time_major"}, {"mode": "1d"}, {"readout": "carry"}])
def test_ponder_and_prior_losses_are_present_and_positive(kw: dict) -> None:
    out = _run(_build(_halting(beta=10.0, **kw)).train(), _images())
    assert set(out.aux) == {"ponder", "halting_prior"}
    for v in out.aux.values():
        assert v.dim() == 0 and torch.isfinite(v) and v > 0
    assert out.unit_halting is not None and out.unit_halting.numel() == (L if kw.get("mode") == "1d" else L * T)


def test_halting_gradient_flows_through_the_halting_channel_only() -> None:
    c = 3
    model = _build(_halting(beta=10.0, channel=c, readout="carry")).train()
    out = _run(model, _images(8))
    sum(out.aux.values()).backward()
    # with the carry readout only ponder/prior see the halting scores; the last residual write before
    # block 1 reads its score is block 0's mlp2, whose row c alone produces channel c
    g = model.blocks[0].mlp2.fc.weight.grad
    assert g is not None and g[c].abs().sum() > 0
    assert torch.all(g[torch.arange(CFG.dim) != c] == 0)
    assert model.stem.rpe.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.blocks[1].parameters())
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.head.parameters())


@pytest.mark.parametrize("order", ["block_major", "time_major"])
def test_learnable_gate_receives_gradient(order: str) -> None:
    model = _build(_halting(beta=10.0, learnable=True, order=order)).train()
    out = _run(model, _images(8))
    (out.logits.sum() + sum(out.aux.values())).backward()
    pol = model.token_policy
    for p in (pol.gamma, pol.beta):
        assert p.grad is not None and torch.all(p.grad != 0)


# ------------------------------------------------------------------------- orders, merge, overrides


def test_time_major_and_block_major_give_different_valid_counts(state) -> None:
    x = _images(8)
    outs = {}
    for order in ("block_major", "time_major"):
        model = _build(_halting(beta=10.0, order=order), state=state).eval()
        out = _run(model, x, record_maps=True)
        _assert_monotone(_units(out.maps, order))
        assert _units(out.maps, order)[:, 0].all()
        assert torch.all(out.active_tokens <= N)
        outs[order] = out.active_tokens
    assert not torch.equal(outs["block_major"], outs["time_major"])
    assert outs["block_major"].sum() < 8 * L * T * N and outs["time_major"].sum() < 8 * L * T * N


def test_merge_counts_and_preserves_the_size_weighted_mean(monkeypatch) -> None:
    r = 3
    seen: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    original = tokens_mod.bipartite_soft_matching

    def spy(metric: Tensor, size: Tensor, **kw) -> MergePlan:
        plan = original(metric, size, **kw)

        def merge(x: Tensor) -> Tensor:
            y = plan.merge(x)
            if x.shape[-1] == CFG.dim and x.dim() == 4:  # the residual stream [T, B, N, C]
                seen.append((x.detach(), y.detach(), size.clone(), plan.size.clone()))
            return y

        return MergePlan(merge, plan.size, plan.merged, plan.num_merged)

    monkeypatch.setattr(tokens_mod, "bipartite_soft_matching", spy)
    out = _run(_build(TokenConfig(merge=MergeConfig(r=r))).train(), _images(8))
    assert len(seen) == L - 1  # merges happen between blocks
    x, y, before, after = seen[0]
    assert torch.all(before == 1) and torch.all(after.sum(-1) == N)
    assert torch.all((after == 0).sum(-1) == r)
    assert not torch.equal(x, y)
    torch.testing.assert_close(size_weighted_mean(y, after), size_weighted_mean(x, before))
    assert torch.all(out.active_tokens[:, 0] == N)
    assert torch.all(out.active_tokens[:, 1] == N - r)


def test_act_plus_merge_uses_fewer_token_units_than_act(state) -> None:
    x = _images(8)
    act = _run(_build(_halting(beta=15.0), state=state).eval(), x).active_tokens.sum((1, 2))
    both = _run(_build(TokenConfig(halting=HaltingConfig(beta=15.0), merge=MergeConfig(r=3)), state=state)
                .eval(), x).active_tokens.sum((1, 2))
    assert torch.all(both < act)


@pytest.mark.parametrize("learnable", [False, True])
def test_lower_beta_at_evaluation_halts_more(state, learnable: bool) -> None:
    trained = _build(_halting(beta=15.0, learnable=learnable))
    trained.load_state_dict(state, strict=False)
    sd = trained.state_dict()
    x = _images(8)
    units = {}
    for offset in (0.0, -5.0):
        model = _build(_halting(beta=15.0, learnable=learnable, beta_offset=offset), state=sd).eval()
        units[offset] = _run(model, x).active_tokens.sum((1, 2))
    assert torch.all(units[-5.0] <= units[0.0]) and units[-5.0].sum() < units[0.0].sum()
