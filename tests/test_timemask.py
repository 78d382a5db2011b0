"""Trainable per-module timestep masks (suite/models/policies/timemask.py, Datta et al. reconstruction)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import forward as _run
from helpers import images as _images
from helpers import lif_layer_names
from torch import Tensor

from suite.config import ModelConfig, TimeConfig, TimeMaskConfig, TokenConfig
from suite.models import Spikformer, build_model

CFG = ModelConfig(depth=2, dim=16, heads=2, T=3)
T = CFG.T


def _build(mask: TimeMaskConfig | None = None, seed: int = 0) -> Spikformer:
    torch.manual_seed(seed)
    return build_model(CFG, TokenConfig(), TimeConfig(mask=mask), in_channels=1, image_size=(8, 8),
                       num_classes=5)




def _set_score(model: Spikformer, group: str, step: int, value: float) -> None:
    pol = model.time_policy
    with torch.no_grad():
        pol.scores[pol.groups.index(group), step] = value


@pytest.mark.parametrize("granularity", ["block", "layer", "type"])
@pytest.mark.parametrize("ste", ["identity", "sigmoid"])
def test_all_ones_mask_is_the_unmasked_model(granularity: str, ste: str) -> None:
    masked = _build(TimeMaskConfig(granularity=granularity, ste=ste))
    plain = _build()
    assert plain.time_policy is None
    missing, unexpected = plain.load_state_dict(masked.state_dict(), strict=False)
    assert missing == [] and unexpected == ["time_policy.scores"]
    x = _images()
    for train in (True, False):
        a, b = _run(masked.train(train), x), _run(plain.train(train), x)
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.step_logits, b.step_logits)
        assert a.active_steps == dict.fromkeys(lif_layer_names(CFG.depth), float(T))
        assert set(a.aux) == {"timestep_penalty"}


@pytest.mark.parametrize(("granularity", "groups"), [
    ("block", ["stem", "block0", "block1"]),
    ("type", ["sps", "ssa", "mlp"]),
    ("layer", lif_layer_names(CFG.depth)),
])
def test_granularity_gives_the_expected_groups(granularity: str, groups: list[str]) -> None:
    pol = _build(TimeMaskConfig(granularity=granularity)).time_policy
    assert pol.groups == groups
    assert pol.scores.shape == (len(groups), T)
    if granularity == "layer":
        assert len(groups) == 5 + 7 * CFG.depth
    assert set(pol.layer_masks()) == set(lif_layer_names(CFG.depth))
    assert set(pol.layer_group.values()) == set(groups)


def test_masked_step_zeroes_the_module_output() -> None:
    model = _build(TimeMaskConfig(granularity="layer")).train()
    seen: dict[str, Tensor] = {}
    model.blocks[0].mlp2.register_forward_pre_hook(lambda m, args: seen.__setitem__("mlp1", args[0].detach()))
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("stem", args[0].detach()))
    x = _images()
    _run(model, x)
    assert seen["mlp1"][1].sum() > 0 and seen["mlp1"][2].sum() > 0, "the test needs spikes at steps 1, 2"
    _set_score(model, "block0.mlp1", 1, -1.0)
    out = _run(model, x, count=True)
    assert torch.all(seen["mlp1"][1] == 0)
    assert seen["mlp1"][2].sum() > 0
    assert out.active_steps["block0.mlp1"] == T - 1 and out.active_steps["block0.mlp2"] == T
    # the firing statistics count only the steps the layer runs
    fired, total = out.ctx.spikes["block0.mlp1"]
    assert total == (T - 1) * 4 * 16 * int(CFG.dim * CFG.mlp_ratio)
    assert fired == float(seen["mlp1"].sum())

    # block granularity: masking the stem at a step silences the whole residual stream there
    model = _build(TimeMaskConfig(granularity="block")).train()
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("stem", args[0].detach()))
    _run(model, x)
    assert seen["stem"][2].sum() > 0
    _set_score(model, "stem", 2, -1.0)
    _run(model, x)
    assert torch.all(seen["stem"][2] == 0) and seen["stem"][:2].sum() > 0


@pytest.mark.parametrize("mask", [TimeMaskConfig(init=-1.0), TimeMaskConfig(threshold=5.0)],
                         ids=["scores_below", "threshold_above"])
def test_at_least_one_step_stays_active(mask: TimeMaskConfig) -> None:
    model = _build(mask).train()
    _set_score(model, "block0", 0, -3.0)
    _set_score(model, "block0", 2, -2.0)  # block0 keeps its best step, t = 1
    masks = model.time_policy.group_masks().detach()
    assert torch.all(masks.sum(-1) == 1)
    assert masks[model.time_policy.groups.index("block0")].tolist() == [0.0, 1.0, 0.0]
    out = _run(model, _images())
    assert set(out.active_steps.values()) == {1.0}
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("ste", ["identity", "sigmoid"])
def test_scores_get_gradient_through_the_straight_through_estimator(ste: str) -> None:
    model = _build(TimeMaskConfig(ste=ste, penalty=0.0)).train()
    out = _run(model, _images(8))
    assert out.aux == {}  # no penalty: the task loss is the only path to the scores
    F.cross_entropy(out.logits, torch.arange(8) % 5).backward()
    g = model.time_policy.scores.grad
    assert g is not None and torch.isfinite(g).all()
    assert torch.all(g.abs().sum(-1) > 0), "every group (stem, block0, block1) gets a gradient"


def test_penalty_is_lambda_times_sum_of_sigmoid_scores() -> None:
    model = _build(TimeMaskConfig(penalty=0.3, init=0.5))
    _set_score(model, "block1", 0, -2.0)
    pen = _run(model, _images()).aux["timestep_penalty"]
    torch.testing.assert_close(pen, 0.3 * torch.sigmoid(model.time_policy.scores.detach()).sum())


def _train(penalty: float, steps: int = 10) -> float:
    """Mean active timesteps over LIF layers after a short seeded AdamW run on synthetic data."""
    model = _build(TimeMaskConfig(penalty=penalty)).train()
    g = torch.Generator().manual_seed(0)
    X, Y = torch.rand(32, 1, 8, 8, generator=g) * 3, torch.randint(0, 5, (32,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    for i in range(steps):
        idx = torch.arange(8) + (8 * i) % 32
        out = _run(model, X[idx])
        loss = F.cross_entropy(out.logits, Y[idx]) + sum(out.aux.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    steps_used = _run(model, X[:4]).active_steps
    return sum(steps_used.values()) / len(steps_used)


def test_penalty_lowers_the_mean_active_timesteps() -> None:
    free, penalised = _train(0.0), _train(1.0)
    assert penalised < free
    assert penalised >= 1.0  # never below one step per module
