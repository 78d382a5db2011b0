"""Baselines: random drop, learned selector, random merge (baselines/tokens.py), early exit and TET
(baselines/temporal.py)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import forward as _run
from helpers import images as _images

from baselines.temporal import early_exit, tet_loss
from suite.config import (
    DropConfig,
    ExitConfig,
    MergeConfig,
    ModelConfig,
    SelectConfig,
    TimeConfig,
    TokenConfig,
)
from suite.models import Spikformer, build_model

CFG = ModelConfig(depth=2, dim=16, heads=2, T=3)
L, T, N = CFG.depth, CFG.T, 16


def _build(tokens: TokenConfig | None = None, seed: int = 0) -> Spikformer:
    torch.manual_seed(seed)
    return build_model(CFG, tokens or TokenConfig(), TimeConfig(), in_channels=1, image_size=(8, 8),
                       num_classes=5)




# ------------------------------------------------------------------------- token baselines


@pytest.mark.parametrize("at_block", [0, 1])
def test_random_drop_keeping_everything_is_the_dense_model(at_block: int) -> None:
    dense = _build()
    drop = _build(TokenConfig(drop=DropConfig(keep_ratio=1.0, at_block=at_block)))
    x = _images()
    for train in (True, False):
        a, b = _run(dense.train(train), x), _run(drop.train(train), x)
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.step_logits, b.step_logits)
        assert torch.all(b.active_tokens == N)


def test_random_drop_keeps_the_budget_and_is_fixed_at_evaluation() -> None:
    model = _build(TokenConfig(drop=DropConfig(keep_ratio=0.3, at_block=1))).eval()
    x = _images(6)
    a, b = _run(model, x, record_maps=True), _run(model, x, record_maps=True)
    assert torch.all(a.active_tokens[:, 0] == N) and torch.all(a.active_tokens[:, 1] == round(0.3 * N))
    assert torch.equal(a.maps, b.maps) and torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_selector_keeps_round_ratio_n_tokens_at_inference(ratio: float) -> None:
    model = _build(TokenConfig(select=SelectConfig(keep_ratio=ratio, at_block=1))).eval()
    out = _run(model, _images(6), record_maps=True)
    assert torch.all(out.active_tokens[:, 0] == N)
    assert torch.all(out.active_tokens[:, 1] == round(ratio * N))
    # the same tokens at every timestep
    assert torch.equal(out.maps[:, 1], out.maps[:, 1, :1].expand_as(out.maps[:, 1]))
    assert out.aux == {}


def test_selector_trains_with_a_ratio_loss() -> None:
    model = _build(TokenConfig(select=SelectConfig(keep_ratio=0.5, at_block=0))).train()
    out = _run(model, _images(8))
    assert set(out.aux) == {"ratio_loss"}
    loss = out.aux["ratio_loss"]
    assert loss.dim() == 0 and loss >= 0 and loss.requires_grad
    kept = out.active_tokens[:, 0, 0] / N
    torch.testing.assert_close(loss, 2.0 * ((kept - 0.5) ** 2).mean())
    (out.logits.sum() + loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.token_policy.keeper.parameters())


def test_random_merge_is_deterministic_at_evaluation() -> None:
    x = _images(6)
    model = _build(TokenConfig(merge=MergeConfig(r=3, mode="random"))).eval()
    a, b = _run(model, x, record_maps=True), _run(model, x, record_maps=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.maps, b.maps)
    assert torch.all(a.active_tokens[:, 1] == N - 3)
    # the merge is random: another seed merges other tokens, and training draws afresh
    other = _build(TokenConfig(merge=MergeConfig(r=3, mode="random", seed=7))).eval()
    assert not torch.equal(_run(other, x, record_maps=True).maps, a.maps)
    model.train()
    c, d = _run(model, x, record_maps=True), _run(model, x, record_maps=True)
    assert not torch.equal(c.maps, d.maps)


# ------------------------------------------------------------------------- early exit


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_early_exit_thresholds(criterion: str) -> None:
    step_logits = torch.randn(T, 8, 5, generator=torch.Generator().manual_seed(0))
    first = early_exit(step_logits, ExitConfig(criterion=criterion, threshold=0.0))
    assert torch.all(first.exit_step == 1)
    assert torch.equal(first.pred, step_logits[0].argmax(-1))
    never = early_exit(step_logits, ExitConfig(criterion=criterion, threshold=1.01))
    assert torch.all(never.exit_step == T)
    assert torch.equal(never.pred, step_logits.sum(0).argmax(-1))


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_early_exit_on_model_outputs(criterion: str) -> None:
    out = _run(_build().train(), _images(8))
    assert out.step_logits.shape == (T, 8, 5)
    assert torch.all(early_exit(out.step_logits, ExitConfig(criterion=criterion, threshold=0.0)).exit_step == 1)
    assert torch.all(early_exit(out.step_logits, ExitConfig(criterion=criterion, threshold=2.0)).exit_step == T)


def test_early_exit_uses_the_cumulative_mean_prediction() -> None:
    # step 1 is undecided (conf 0.5); the running mean after step 2 is [2, 0]: conf sigmoid(2) = 0.88
    step_logits = torch.tensor([[[0.0, 0.0]], [[4.0, 0.0]], [[0.0, 9.0]]])
    res = early_exit(step_logits, ExitConfig(threshold=0.8))
    assert res.exit_step.tolist() == [2] and res.pred.tolist() == [0]
    res = early_exit(step_logits, ExitConfig(threshold=0.9))
    assert res.exit_step.tolist() == [3] and res.pred.tolist() == [1]


# ------------------------------------------------------------------------- TET


def _hand_tet(logits: list[list[list[float]]], target: list[int], lam: float, phi: float) -> float:
    ce, sq, count = 0.0, 0.0, 0
    for step in logits:
        for row, y in zip(step, target):
            lse = math.log(sum(math.exp(v) for v in row))
            ce += lse - row[y]
            sq += sum((v - phi) ** 2 for v in row)
            count += len(row)
    n = len(logits) * len(target)
    return (1 - lam) * ce / n + lam * sq / count


@pytest.mark.parametrize(("lam", "phi"), [(0.0, 1.0), (0.05, 1.0), (0.5, 0.0)])
def test_tet_loss_matches_hand_computation(lam: float, phi: float) -> None:
    logits = [[[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]],
              [[2.0, 0.0, 0.0], [-1.0, 1.0, 4.0]]]  # T=2, B=2, K=3
    target = [0, 2]
    got = tet_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(target), lam=lam, phi=phi)
    assert got.item() == pytest.approx(_hand_tet(logits, target, lam, phi), rel=1e-12)
