"""The compacted inference path (suite/models/compact.py) gives the masked path's logits while
computing only active (token, timestep) entries."""

from __future__ import annotations

import pytest
import torch
from helpers import block_lif_names, fire_in_eval, parametrize_backbones
from spikingjelly.activation_based import functional, neuron
from torch import Tensor

from suite.config import (
    DropConfig,
    HaltingConfig,
    MergeConfig,
    ModelConfig,
    SelectConfig,
    TimeConfig,
    TimeMaskConfig,
    TokenConfig,
)
from suite.models import ModelOutput, Spikformer, build_model
from suite.models.compact import (
    LIFParams,
    active_fraction,
    compact_forward,
    lif_initial_value,
    lif_params,
    lif_step,
    pack_rows,
    segment_linear_attention,
)

TINY = ModelConfig(depth=2, dim=32, heads=4, T=4)
backbone = parametrize_backbones(__name__, "TINY")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: with several OpenMP threads on a busy machine, thread hand-offs cost
    ~100x the arithmetic (15 ms instead of 0.02 ms for a 1024x32 matmul), so run single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ helpers


def _images(b: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 3


def _active_model(tokens: TokenConfig, time: TimeConfig = TimeConfig(), seed: int = 0) -> Spikformer:
    """A tiny model in eval mode whose blocks actually spike (``helpers.fire_in_eval``)."""
    torch.manual_seed(seed)
    model = build_model(TINY, tokens, time, in_channels=1, image_size=(8, 8), num_classes=10)
    return fire_in_eval(model, seed)


def _masked(model: Spikformer, x: Tensor) -> ModelOutput:
    with torch.no_grad():
        out = model(x, count=True)
    functional.reset_net(model)
    return out


def _assert_blocks_spike(out: ModelOutput) -> None:
    for b in range(TINY.depth):
        for layer in block_lif_names(TINY, b):
            fired, seen = out.ctx.spikes[layer]
            assert seen > 0 and fired / seen > 0.005, f"{layer} barely fires: the test would be vacuous"


def _assert_same_logits(compact: Tensor, masked: Tensor) -> float:
    scale = max(1.0, float(masked.abs().max()))
    torch.testing.assert_close(compact, masked, atol=1e-4 * scale, rtol=0)
    return float((compact - masked).abs().max())


def _linear_rows(model: Spikformer) -> tuple[list[list[int]], list]:
    """Forward hooks recording how many rows each block's Q Linear processes."""
    rows: list[list[int]] = [[] for _ in model.blocks]
    hooks = [blk.q.fc.register_forward_hook(lambda m, args, out, i=i: rows[i].append(args[0].shape[0]))
             for i, blk in enumerate(model.blocks)]
    return rows, hooks


# ---------------------------------------------------------------------------------------- LIF


@pytest.mark.parametrize("v_threshold", [1.0, 0.5])
@pytest.mark.parametrize("v_reset", [0.0, None, -0.25])
@pytest.mark.parametrize("decay_input", [True, False])
def test_lif_step_matches_spikingjelly(v_threshold: float, v_reset: float | None, decay_input: bool) -> None:
    g = torch.Generator().manual_seed(0)
    T = 8
    # half random, half on a 0.25 grid so the charge lands exactly on the threshold (spike: H >= v_th)
    x = torch.cat([torch.randn(T, 64, 16, generator=g) * 1.5,
                   torch.randint(-4, 9, (T, 64, 16), generator=g).float() * 0.25], 1)
    node = neuron.LIFNode(tau=2.0, decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
                          detach_reset=True, step_mode="m")
    with torch.no_grad():
        expected = node(x)
    p = lif_params(node)
    assert p == LIFParams(2.0, v_threshold, v_reset, decay_input)
    v = torch.full_like(x[0], lif_initial_value(p))
    spikes = []
    for t in range(T):
        s, v = lif_step(x[t], v, p)
        spikes.append(s)
    got = torch.stack(spikes)
    assert torch.equal(got, expected)
    assert torch.equal(v, node.v)
    assert 0 < float(expected.mean()) < 1
    if decay_input and v_reset == 0.0:
        assert bool(((x[0] == 2 * v_threshold) & (got[0] == 1)).any()), "no input hit the threshold exactly"


# -------------------------------------------------------------------------------- pack, attention


def test_pack_rows_keeps_prefixes_and_fills_holes() -> None:
    # token 0: active at steps 0-1 (a prefix); token 1: never; token 2: 0 and 2 (a hole at step 1)
    active = torch.tensor([[1.0, 0, 1], [1, 0, 0], [0, 0, 1]]).unsqueeze(1)  # [T=3, B=1, N=3]
    rows = pack_rows(active)
    assert rows.bounds == [0, 2, 4, 5]
    assert rows.flat.tolist() == [0, 2, 3, 5, 8]
    assert rows.token.tolist() == [0, 2, 0, 2, 2]
    assert rows.step.tolist() == [0, 0, 1, 1, 2]
    assert rows.on.tolist() == [1, 1, 1, 0, 1]  # the hole is computed (for its LIF state) but silenced
    assert rows.computed_last.tolist() == [False, False, True]


def test_segment_linear_attention_equals_dense_size_weighted_attention() -> None:
    g = torch.Generator().manual_seed(0)
    T, B, N, C, heads, scale = 3, 4, 10, 16, 4, 0.125
    q, k, v = ((torch.rand(T, B, N, C, generator=g) < 0.3).float() for _ in range(3))
    size = torch.randint(1, 4, (T, B, N), generator=g).float()
    active = torch.rand(T, B, N, generator=g) < 0.5
    qa, ka, va = (t * active.unsqueeze(-1) for t in (q, k, v))
    d = C // heads
    qh, kh, vh = (t.view(T, B, N, heads, d).transpose(2, 3) for t in (qa, ka, va))
    dense = ((qh @ kh.transpose(-1, -2) * scale * size[:, :, None, None, :]) @ vh).transpose(2, 3).reshape(T, B, N, C)
    flat = active.reshape(-1).nonzero().squeeze(1)
    got = segment_linear_attention(q.reshape(-1, C)[flat], k.reshape(-1, C)[flat], v.reshape(-1, C)[flat],
                                   flat // N, T * B, heads, scale, size.reshape(-1)[flat])
    torch.testing.assert_close(got, dense.reshape(-1, C)[flat], atol=1e-5, rtol=1e-5)
    assert float(got.abs().sum()) > 0


# ------------------------------------------------------------------------------ whole model


CASES = {
    "halt2d_act": TokenConfig(halting=HaltingConfig(beta=10.0)),
    "halt2d_carry": TokenConfig(halting=HaltingConfig(beta=10.0, readout="carry")),
    "halt1d": TokenConfig(halting=HaltingConfig(mode="1d", beta=-3.0)),
    "merge_r": TokenConfig(merge=MergeConfig(r=4)),
    "act_merge": TokenConfig(halting=HaltingConfig(beta=10.0), merge=MergeConfig(r=3)),
    "drop_0.5": TokenConfig(drop=DropConfig(keep_ratio=0.5)),
    # beyond the brief: the same mechanism covers these without special cases
    "merge_threshold_residual": TokenConfig(merge=MergeConfig(threshold=0.3, metric="residual")),
    "merge_per_timestep": TokenConfig(merge=MergeConfig(r=4, per="timestep")),
    "select_0.5": TokenConfig(select=SelectConfig(keep_ratio=0.5, at_block=1)),
    "halt2d_time_major": TokenConfig(halting=HaltingConfig(beta=10.0, order="time_major")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compact_logits_equal_masked_logits(case: str) -> None:
    model = _active_model(CASES[case])
    x = _images()
    out = _masked(model, x)
    _assert_blocks_spike(out)
    frac = float(out.active_tokens.sum()) / (out.active_tokens.numel() * model.num_tokens)
    assert frac < 0.9, f"only {1 - frac:.0%} of units inactive: too few halted/merged tokens for the test"
    if model.token_policy.cfg.halting is not None:
        assert frac < 0.8
    rows, hooks = _linear_rows(model)
    try:
        logits = compact_forward(model, x)
    finally:
        for h in hooks:
            h.remove()
    _assert_same_logits(logits, out.logits)
    # The Linear layers ran on the active rows only (one call per block, all steps packed together;
    # one call per timestep in time-major order). Per-timestep merges also compute "holes".
    for b, calls in enumerate(rows):
        active = int(out.active_tokens[:, b].sum())
        if case == "merge_per_timestep":  # nothing is merged before block 0
            assert active <= sum(calls) <= x.shape[0] * TINY.T * model.num_tokens
            assert b == 0 or active < x.shape[0] * TINY.T * model.num_tokens
        else:
            assert sum(calls) == active, f"block {b}: {sum(calls)} rows computed, {active} active"


def test_compact_with_time_masks_and_halting() -> None:
    time = TimeConfig(mask=TimeMaskConfig(granularity="layer"))
    model = _active_model(TokenConfig(halting=HaltingConfig(beta=10.0)), time)
    with torch.no_grad():  # switch a quarter of the (layer, step) masks off, keeping step 0 of each on
        scores = torch.rand(model.time_policy.scores.shape, generator=torch.Generator().manual_seed(3)) - 0.25
        scores[:, 0] = 1.0
        model.time_policy.scores.copy_(scores)
    x = _images()
    out = _masked(model, x)
    assert min(out.active_steps.values()) < TINY.T
    _assert_same_logits(compact_forward(model, x), out.logits)


def test_dense_model_and_train_mode() -> None:
    model = _active_model(TokenConfig())
    x = _images(4)
    out = _masked(model, x)
    assert torch.equal(compact_forward(model, x), out.logits)
    assert active_fraction(model, x) == 1.0
    model.train()
    with pytest.raises(ValueError, match="eval"):
        compact_forward(model, x)


def test_active_fraction_matches_active_tokens() -> None:
    model = _active_model(TokenConfig(drop=DropConfig(keep_ratio=0.5, at_block=1)))
    # block 0 runs all 16 tokens, block 1 keeps round(0.5 * 16) = 8: (16 + 8) / 32
    assert active_fraction(model, _images(4)) == pytest.approx(0.75)


def test_compact_block_refuses_a_token_resuming_across_calls() -> None:
    """One call per timestep (time-major order): a token skipped at one call cannot come back,
    because its skipped neuron update cannot be replayed; the guard says so instead of diverging."""
    from suite.models.compact import CompactBlock
    from suite.models.context import Context

    model = _active_model(TokenConfig())
    blk = CompactBlock(model.blocks[0], need_keys=False)
    z = torch.randint(0, 3, (1, 2, model.num_tokens, TINY.dim)).float()
    on, off = torch.ones(1, 2, model.num_tokens), torch.ones(1, 2, model.num_tokens)
    off[0, 1, 5] = 0
    ctx = Context(T=TINY.T)
    with torch.no_grad():
        blk(z, ctx, on)
        blk(z, ctx, off)
        with pytest.raises(NotImplementedError, match="resumed"):
            blk(z, ctx, on)
