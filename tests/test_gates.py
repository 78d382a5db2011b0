"""Every halting gate (``tokens.halting.gate``) on every backbone: the invariants of the token runner, calibration
(``init_fraction``), the gate's parameters and policy overhead, fine-tuning from a dense parent, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import fire_in_eval, parametrize_backbones
from helpers import forward as _run
from helpers import images as _images
from spikingjelly.activation_based import functional
from torch import nn

from suite import cli
from suite.config import HaltingConfig, MergeConfig, ModelConfig, TimeConfig, TimeMaskConfig, TokenConfig
from suite.config.study import run_id
from suite.models import build_model
from suite.models.compact import active_fraction, compact_forward
from suite.models.policies import overhead
from suite.models.policies.calibrate import calibrate_gate
from suite.train.checkpoint import load_parent_weights

CFG = ModelConfig(depth=2, dim=16, heads=2, T=3)
L, T, N = CFG.depth, CFG.T, 16  # 8x8 input -> 4x4 tokens
GATES = ("channel", "linear", "norm_linear")
MODES = {"block_major": {}, "time_major": {"order": "time_major"}, "1d": {"mode": "1d"}}
backbone = parametrize_backbones(__name__, "CFG")


def _build(tokens: TokenConfig | None = None, time: TimeConfig | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(CFG, tokens or TokenConfig(), time or TimeConfig(), in_channels=1, image_size=(8, 8),
                       num_classes=5)


def _gated(gate: str, mode: str = "block_major", fraction: float | None = 0.5, merge: bool = False,
           time: TimeConfig | None = None, **kw) -> nn.Module:
    """A model whose gate scores tokens differently (random head weights) and keeps about ``fraction`` of the
    token-units (calibrated), in eval mode."""
    hc = HaltingConfig(gate=gate, init_fraction=fraction, **MODES[mode], **kw)
    model = _build(TokenConfig(halting=hc, merge=MergeConfig(r=3) if merge else None), time)
    fire_in_eval(model)
    pol = model.token_policy
    if gate != "channel":
        with torch.no_grad():
            pol.gate_weight.copy_(torch.randn(pol.gate_weight.shape, generator=torch.Generator().manual_seed(3)))
    if fraction is not None:
        calibrate_gate(model, _images(16, seed=9), fraction)
    return model.eval()


# ------------------------------------------------------------------------- disabled = dense


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("mode", "train"), [("block_major", True), ("block_major", False), ("1d", True),
                                             ("1d", False), ("time_major", False)])
def test_a_gate_that_cannot_halt_is_the_dense_model(gate: str, mode: str, train: bool) -> None:
    # time_major runs one step per BN call, so only eval-mode BN (running statistics) can match the dense forward
    dense = _build().train(train)
    halt = _build(TokenConfig(halting=HaltingConfig(gate=gate, beta_offset=1e4, readout="carry",
                                                    **MODES[mode]))).train(train)
    halt.load_state_dict(dense.state_dict(), strict=False)
    x = _images()
    a, b = _run(dense, x), _run(halt, x, record_maps=True)
    assert torch.all(b.active_tokens == N) and b.maps.all()
    assert torch.equal(a.logits, b.logits) and torch.equal(a.step_logits, b.step_logits)


# ------------------------------------------------------------------------- halted tokens are invisible


@pytest.mark.parametrize("gate", GATES)
def test_tokens_halted_before_a_block_reach_no_token_and_no_logit(gate: str) -> None:
    """A (token, step) halted before block 1 is inactive there; whatever its block-1 input, no other token and no
    logit changes (its keys/values are zeroed, its update is zero and its ACT weight there is 0)."""
    model = _gated(gate, "block_major", fraction=0.7)  # 0.5 would be exactly block 0 for every token
    x = _images(8)
    base = _run(model, x, record_maps=True)
    halted = ~base.maps[:, 1]  # [B, T, N]
    assert halted.any() and (~halted).any(), "the test needs halted and running tokens at block 1"

    def perturb(mod, args):
        z, ctx, active, size = args
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)) * 5
        return (torch.where(active.unsqueeze(-1) > 0, z, z + noise), ctx, active, size)

    hook = model.blocks[1].register_forward_pre_hook(perturb)
    try:
        moved = _run(model, x, record_maps=True)
    finally:
        hook.remove()
    assert torch.equal(moved.maps, base.maps)
    assert torch.equal(moved.logits, base.logits)


# ------------------------------------------------------------------------- compacted == masked, counts


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("mode", "merge"), [("block_major", False), ("block_major", True), ("time_major", False),
                                             ("1d", False), ("1d", True)])
def test_compacted_equals_masked_and_counts_stay_under_dense(gate: str, mode: str, merge: bool) -> None:
    model = _gated(gate, mode, merge=merge, fraction=0.8 if merge else 0.5)  # merges need tokens running on
    x = _images(8)
    with torch.no_grad():
        out = model(x, count=True, record_maps=True)
    functional.reset_net(model)
    assert torch.all(out.active_tokens <= N) and torch.all(out.token_depth <= L * T)
    units = out.ctx.block_token_units()
    assert float(units.sum()) < 8 * L * T * N, "the test needs halted tokens"
    compact = compact_forward(model, x)
    torch.testing.assert_close(compact, out.logits, atol=1e-4 * max(1.0, float(out.logits.abs().max())), rtol=0)
    # the gate's own work is policy overhead: one score per (token, unit) that ran, except the last unit's
    macs, _ = overhead.halting(1.0, gate, CFG.dim)  # per score: the gate's input and the sigmoid
    ops = {k: v for k, v in out.ctx.policy_ops.items() if k.startswith("policy.halting.")}  # merge has its own
    scored = range(L - 1) if mode == "1d" else range(L)  # a 1-D gate's last block halts everything by rule
    assert set(ops) == {f"policy.halting.block{b}" for b in scored} and all(o.kind == "policy" for o in ops.values())
    total = sum(o.macs for o in ops.values())
    assert 0 < total <= macs * float(out.maps.sum())
    assert all(o.block == b for b, o in enumerate(ops.values()))
    if merge:
        assert out.merged_maps is not None and out.merged_maps.any()
        assert not (out.merged_maps & out.maps).any(), "a merged-away token is never active"


@pytest.mark.parametrize("gate", GATES)
def test_gates_run_with_time_masks_and_train_with_gradients(gate: str) -> None:
    model = _gated(gate, time=TimeConfig(mask=TimeMaskConfig()), fraction=0.6).train()
    out = _run(model, _images(8))
    (out.logits.sum() + sum(out.aux.values())).backward()
    pol = model.token_policy
    params = (pol.gate_weight, pol.gate_bias) if gate != "channel" else ()
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("gate", GATES)
def test_gates_with_the_carry_readout_give_step_logits_for_early_exit(gate: str) -> None:
    from baselines.temporal import early_exit
    from suite.config import ExitConfig

    model = _gated(gate, readout="carry", time=TimeConfig(exit=ExitConfig(threshold=0.0)))
    out = _run(model, _images(8))
    assert out.step_logits is not None and out.step_logits.shape == (T, 8, 5)
    res = early_exit(out.step_logits, ExitConfig(threshold=0.0))
    assert torch.all(res.exit_step == 1)  # a score above 0 at the first step: every image exits there


# ------------------------------------------------------------------------- parameters, calibration, fine-tuning


def test_the_learned_heads_count_in_the_parameter_total() -> None:
    count = {g: sum(p.numel() for p in _gated(g, fraction=None).parameters()) for g in GATES}
    assert count["linear"] - count["channel"] == L * CFG.dim + L == count["norm_linear"] - count["channel"]
    assert "token_policy.gate_shift" not in _gated("linear", fraction=None).state_dict()


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("mode", ["block_major", "1d"])
@pytest.mark.parametrize("fraction", [0.4, 0.8])
def test_calibration_keeps_the_declared_fraction(gate: str, mode: str, fraction: float) -> None:
    model = _gated(gate, mode, fraction=fraction)
    reached = active_fraction(model, _images(16, seed=9))
    step = 1 / (L if mode == "1d" else L * T)  # 1-D: a token's units come T at a time (one block)
    assert abs(reached - fraction) <= (step / 2 if mode == "1d" else 0.05)
    assert model.token_policy.gate_shift.item() != 0.0


@pytest.mark.parametrize("gate", ["linear", "norm_linear"])
def test_fine_tuning_keeps_the_new_head_and_calibrates_it_on_the_parent(gate: str) -> None:
    dense = _build()
    model = _build(TokenConfig(halting=HaltingConfig(gate=gate, init_fraction=0.5)), seed=1)
    fresh = load_parent_weights(model, dense.state_dict(), "parent")
    assert sorted(fresh) == ["token_policy.gate_bias", "token_policy.gate_shift", "token_policy.gate_weight"]
    calibrate_gate(model, _images(16, seed=9), 0.5)
    assert abs(active_fraction(model.eval(), _images(16, seed=9)) - 0.5) <= 0.05


def test_the_default_gate_changes_no_run_id() -> None:
    from suite.config import RunConfig

    base = {"variant": "v", "seed": 0, "dataset": {}, "model": {}, "tokens": {"halting": {}}, "time": {},
            "train": {}, "eval": {}}
    explicit = {**base, "tokens": {"halting": {"gate": "channel", "init_fraction": None}}}
    assert run_id(RunConfig.model_validate(base)) == run_id(RunConfig.model_validate(explicit))
    other = {**base, "tokens": {"halting": {"gate": "linear"}}}
    assert run_id(RunConfig.model_validate(base)) != run_id(RunConfig.model_validate(other))


# ------------------------------------------------------------------------- bad input


BAD = """name: bad
dataset: {name: synthetic}
model: {depth: 1, dim: 16, heads: 2, T: 2}
variants:
  act: {tokens: {halting: HALTING}}
"""


@pytest.mark.parametrize(("halting", "key"), [
    ("{gate: mlp}", "tokens.halting.gate"),
    ("{gate: linear, init_fraction: 0}", "tokens.halting.init_fraction"),
    ("{gate: linear, init_fraction: 1.5}", "tokens.halting.init_fraction"),
    ("{gate: channel, channel: 16}", "tokens.halting.channel"),
    ("{gate: linear, learnable: true}", "learnable"),
])
def test_bad_gate_settings_exit_2_naming_the_key(tmp_path: Path, capsys, halting: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.replace("HALTING", halting))
    results = tmp_path / "results"
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress"]) == 2
    assert key in capsys.readouterr().err
    assert not results.exists()
