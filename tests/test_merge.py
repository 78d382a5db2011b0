"""Tests for fixed-length bipartite token merging (suite/models/policies/merge.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.models.policies.merge import (
    MergePlan,
    bipartite_soft_matching,
    parse_r,
    size_weighted_mean,
)

ATOL = 1e-5


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _check_bookkeeping(plan: MergePlan, size: torch.Tensor) -> None:
    """Invariants every plan must satisfy relative to the sizes it was built from."""
    n = size.shape[-1]
    # mass is conserved
    torch.testing.assert_close(plan.size.sum(-1), size.sum(-1))
    # dead stay dead, sources die, merged count matches
    assert torch.all(plan.size[size == 0] == 0)
    assert torch.all(plan.size[plan.merged] == 0)
    assert not torch.any(plan.merged & (size == 0))
    assert torch.equal(plan.num_merged, plan.merged.sum(-1))
    assert plan.num_merged.dtype == torch.long
    # sources only at even positions (set A)
    assert not torch.any(plan.merged[..., 1::2])
    assert torch.all(plan.num_merged <= (n + 1) // 2)
    # every non-source keeps at least its own size; growth equals the sources' mass
    alive = ~plan.merged
    assert torch.all(plan.size[alive] >= size[alive])
    growth = (plan.size - size)[alive].sum()
    torch.testing.assert_close(growth, size[plan.merged].sum())


# ---------------------------------------------------------------- hand example


def test_hand_built_destination_average() -> None:
    # N=4: A = {0, 2}, B = {1, 3}. Token 0 matches 1 exactly, token 2 matches 3 better.
    metric = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.3, 1.0]])
    size = torch.tensor([1.0, 2.0, 1.0, 1.0])
    x = torch.tensor([[3.0, 0.0], [6.0, 3.0], [1.0, 1.0], [5.0, -1.0]])

    plan = bipartite_soft_matching(metric, size, r=1)
    assert plan.merged.tolist() == [True, False, False, False]
    assert plan.num_merged.item() == 1
    assert plan.size.tolist() == [0.0, 3.0, 1.0, 1.0]

    out = plan.merge(x)
    expected_dst = (1.0 * x[0] + 2.0 * x[1]) / 3.0  # [5, 2]
    torch.testing.assert_close(out[1], expected_dst)
    torch.testing.assert_close(out[1], torch.tensor([5.0, 2.0]))
    # sources and untouched tokens are returned unchanged
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[2:], x[2:])

    # r=2: both A tokens merge; 2 -> 3
    plan2 = bipartite_soft_matching(metric, size, r=2)
    assert plan2.merged.tolist() == [True, False, True, False]
    assert plan2.size.tolist() == [0.0, 3.0, 0.0, 2.0]
    out2 = plan2.merge(x)
    torch.testing.assert_close(out2[3], (x[2] + x[3]) / 2.0)


def test_several_sources_share_a_destination() -> None:
    # A = {0, 2, 4}; all point the same way as B token 1, B token 3/5 are orthogonal.
    metric = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.5, 0.0], [0.0, 2.0]])
    size = torch.tensor([1.0, 2.0, 3.0, 1.0, 4.0, 1.0])
    x = _rand(6, 3)
    plan = bipartite_soft_matching(metric, size, r=3)
    assert plan.merged.tolist() == [True, False, True, False, True, False]
    assert plan.size.tolist() == [0.0, 10.0, 0.0, 1.0, 0.0, 1.0]
    out = plan.merge(x)
    expected = (1 * x[0] + 2 * x[1] + 3 * x[2] + 4 * x[4]) / 10.0
    torch.testing.assert_close(out[1], expected)
    for i in (0, 2, 3, 4, 5):
        assert torch.equal(out[i], x[i])


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("mode", [{"r": 3}, {"threshold": 0.0}, {"threshold": -1.0}])
def test_weighted_mean_preserved_over_rounds(mode: dict) -> None:
    b, n, c = 3, 16, 8
    x = _rand(b, n, c, seed=1)
    size = torch.ones(b, n)
    mean0 = size_weighted_mean(x, size)
    for round_ in range(5):
        metric = x + 0.1 * _rand(b, n, c, seed=10 + round_)
        plan = bipartite_soft_matching(metric, size, **mode)
        _check_bookkeeping(plan, size)
        x = plan.merge(x)
        size = plan.size
        torch.testing.assert_close(size_weighted_mean(x, size), mean0, atol=ATOL, rtol=1e-5)
        assert torch.all(size.sum(-1) == n)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    b=st.integers(1, 3),
    rounds=st.integers(1, 4),
    r=st.integers(0, 8),
    use_threshold=st.booleans(),
    threshold=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_invariants(
    n: int, b: int, rounds: int, r: int, use_threshold: bool, threshold: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 4, generator=g)
    # integer-valued sizes with some dead tokens
    size = torch.randint(0, 4, (b, n), generator=g).float()
    n_total = size.sum(-1)
    mean0 = size_weighted_mean(x, size)
    kw = {"threshold": threshold} if use_threshold else {"r": r}
    for _ in range(rounds):
        metric = torch.randn(b, n, 4, generator=g)
        plan = bipartite_soft_matching(metric, size, **kw)
        _check_bookkeeping(plan, size)
        if not use_threshold:
            assert torch.all(plan.num_merged <= min(r, n // 2))
        new_x = plan.merge(x)
        # exact per-destination bookkeeping: sizes are integers, so float sums are exact
        assert torch.equal(plan.size.sum(-1), n_total)
        untouched = plan.merged | (plan.size == size)  # sources and non-destinations
        assert torch.equal(new_x[untouched], x[untouched])
        x, size = new_x, plan.size
        torch.testing.assert_close(size_weighted_mean(x, size), mean0, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 2**16), random=st.booleans())
def test_property_destination_growth_exact(n: int, seed: int, random: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(2, n, 3, generator=g)
    size = torch.randint(0, 5, (2, n), generator=g).float()
    plan = bipartite_soft_matching(metric, size, r=n, random=random, generator=g)
    # recover each source's destination by merging one-hot indicators
    eye = torch.eye(n).expand(2, n, n)
    mixed = plan.merge(eye * size.unsqueeze(-1))  # row d = weighted mix; nonzero cols = group members
    for bi in range(2):
        for d in range(n):
            if plan.merged[bi, d] or plan.size[bi, d] == size[bi, d]:
                continue
            members = torch.nonzero(mixed[bi, d]).flatten().tolist()
            srcs = [k for k in members if k != d]
            assert srcs and all(plan.merged[bi, k] for k in srcs)
            assert plan.size[bi, d] - size[bi, d] == size[bi, srcs].sum()


# ---------------------------------------------------------------- r caps / eligibility


def test_r_zero_is_identity() -> None:
    x = _rand(2, 9, 5)
    size = torch.ones(2, 9)
    plan = bipartite_soft_matching(x, size, r=0)
    assert not plan.merged.any()
    assert torch.equal(plan.num_merged, torch.zeros(2, dtype=torch.long))
    assert torch.equal(plan.size, size)
    assert torch.equal(plan.merge(x), x)


@pytest.mark.parametrize("n", [1, 2, 7, 8])
def test_r_capped_at_half(n: int) -> None:
    x = _rand(2, n, 4)
    size = torch.ones(2, n)
    plan = bipartite_soft_matching(x, size, r=100)
    expected = n // 2  # every A token with a B partner merges when all are eligible
    assert torch.equal(plan.num_merged, torch.full((2,), expected))
    _check_bookkeeping(plan, size)


def test_ineligible_and_dead_tokens_never_chosen() -> None:
    b, n = 4, 12
    metric = _rand(b, n, 6, seed=3)
    size = torch.ones(b, n)
    size[:, 5] = 0.0  # dead
    eligible = torch.ones(b, n, dtype=torch.bool)
    eligible[:, [0, 3, 8]] = False
    plan = bipartite_soft_matching(metric, size, r=100, eligible=eligible)
    assert not plan.merged[:, [0, 3, 5, 8]].any()
    # ineligible/dead tokens are not destinations either: sizes unchanged
    assert torch.equal(plan.size[:, [0, 3, 5, 8]], size[:, [0, 3, 5, 8]])
    # fewer than r merges: every remaining eligible A token (2, 4, 6, 10) merges
    assert torch.equal(plan.num_merged, torch.full((b,), 4))


def test_too_few_eligible_pairs_merges_fewer_than_r() -> None:
    size = torch.tensor([[1.0, 1.0, 1.0, 0.0, 1.0, 0.0]])  # only B token 1 alive
    eligible = torch.tensor([[True, True, False, True, True, True]])
    plan = bipartite_soft_matching(_rand(1, 6, 3), size, r=3, eligible=eligible)
    assert plan.merged.tolist() == [[True, False, False, False, True, False]]
    assert plan.size.tolist() == [[0.0, 3.0, 1.0, 0.0, 0.0, 0.0]]
    none = bipartite_soft_matching(_rand(1, 6, 3), torch.zeros(1, 6), r=3)
    assert not none.merged.any()


# ---------------------------------------------------------------- threshold


def test_threshold_one_merges_only_identical_directions() -> None:
    # exactly representable unit directions so cosine is exactly 1 for identical ones
    metric = torch.tensor(
        [
            [2.0, 0.0, 0.0],  # 0 (A) same direction as 1
            [4.0, 0.0, 0.0],  # 1 (B)
            [0.0, 1.0, 0.0],  # 2 (A) close to 3 but not identical
            [0.0, 1.0, 0.01],  # 3 (B)
            [0.0, 0.0, 0.5],  # 4 (A) same direction as 5
            [0.0, 0.0, 8.0],  # 5 (B)
        ]
    )
    size = torch.ones(6)
    plan = bipartite_soft_matching(metric, size, threshold=1.0)
    assert plan.merged.tolist() == [True, False, False, False, True, False]
    over = bipartite_soft_matching(metric, size, threshold=1.5)
    assert not over.merged.any()


def test_threshold_minus_one_merges_every_eligible_a() -> None:
    b, n = 3, 11
    metric = _rand(b, n, 5, seed=4)
    size = torch.ones(b, n)
    size[0, 2] = 0.0
    eligible = torch.ones(b, n, dtype=torch.bool)
    eligible[1, 4] = False
    plan = bipartite_soft_matching(metric, size, threshold=-1.0, eligible=eligible)
    expected = torch.zeros(b, n, dtype=torch.bool)
    expected[:, 0::2] = True
    expected[0, 2] = False
    expected[1, 4] = False
    # N is odd: position N-1 is in A, so ceil(N/2) tokens can merge, more than N//2
    assert expected[:, n - 1].all()
    assert torch.equal(plan.merged, expected)


def test_zero_metric_rows_are_not_nan() -> None:
    metric = torch.zeros(1, 4, 3)
    metric[0, 2] = torch.tensor([1.0, 0.0, 0.0])
    metric[0, 3] = torch.tensor([1.0, 0.0, 0.0])
    size = torch.ones(1, 4)
    # zero rows score 0 with everything: threshold 0 merges them, threshold 0.5 does not
    plan = bipartite_soft_matching(metric, size, threshold=0.5)
    assert plan.merged.tolist() == [[False, False, True, False]]
    plan0 = bipartite_soft_matching(metric, size, threshold=0.0)
    assert plan0.merged.tolist() == [[True, False, True, False]]
    assert not torch.isnan(plan0.merge(metric)).any()


# ---------------------------------------------------------------- ordering / random


def test_identical_tokens_preferred() -> None:
    # A tokens 0, 2, 4, 6. Only token 4 has an identical partner (5); r=1 must pick it.
    metric = _rand(8, 16, seed=5)
    metric[5] = 3.0 * metric[4]
    plan = bipartite_soft_matching(metric, torch.ones(8), r=1)
    assert plan.merged.nonzero().flatten().tolist() == [4]
    out = plan.merge(metric)
    torch.testing.assert_close(out[5], (metric[4] + metric[5]) / 2)
    # with two candidates the more similar one wins
    metric[1] = metric[0] + 0.5 * _rand(16, seed=6)
    plan2 = bipartite_soft_matching(metric, torch.ones(8), r=2)
    assert plan2.merged.nonzero().flatten().tolist() == [0, 4]


def test_random_is_deterministic_and_differs_from_similarity() -> None:
    b, n = 4, 32
    metric = _rand(b, n, 8, seed=7)
    size = torch.ones(b, n)
    p1 = bipartite_soft_matching(metric, size, r=5, random=True, generator=torch.Generator().manual_seed(0))
    p2 = bipartite_soft_matching(metric, size, r=5, random=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(p1.merged, p2.merged)
    assert torch.equal(p1.size, p2.size)
    x = _rand(b, n, 8, seed=8)
    assert torch.equal(p1.merge(x), p2.merge(x))
    _check_bookkeeping(p1, size)
    assert torch.equal(p1.num_merged, torch.full((b,), 5))

    sim = bipartite_soft_matching(metric, size, r=5)
    assert not torch.equal(p1.merged, sim.merged)
    p3 = bipartite_soft_matching(metric, size, r=5, random=True, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(p1.merged, p3.merged)


def test_random_threshold_and_eligibility() -> None:
    n = 10
    size = torch.ones(2, n)
    eligible = torch.ones(2, n, dtype=torch.bool)
    eligible[:, 1::2] = False  # no B token eligible -> nothing can merge
    gen = torch.Generator().manual_seed(0)
    plan = bipartite_soft_matching(
        _rand(2, n, 3), size, threshold=0.0, random=True, eligible=eligible, generator=gen
    )
    assert not plan.merged.any()
    # scores lie in [0, 1): threshold 0 merges every A token, threshold 1 none
    all_a = bipartite_soft_matching(_rand(2, n, 3), size, threshold=0.0, random=True, generator=gen)
    assert torch.equal(all_a.num_merged, torch.full((2,), n // 2))
    none = bipartite_soft_matching(_rand(2, n, 3), size, threshold=1.0, random=True, generator=gen)
    assert not none.merged.any()


# ---------------------------------------------------------------- shapes / autograd


def test_leading_time_dim_broadcasts() -> None:
    t, b, n, c = 3, 2, 10, 4
    metric = _rand(b, n, c, seed=9)
    size = torch.ones(b, n)
    plan = bipartite_soft_matching(metric, size, r=3)
    x = _rand(t, b, n, c, seed=10)
    out = plan.merge(x)
    assert out.shape == x.shape
    for ti in range(t):
        torch.testing.assert_close(out[ti], plan.merge(x[ti]), rtol=0, atol=0)


def test_multi_batch_dims_and_unbatched() -> None:
    metric = _rand(3, 2, 8, 4, seed=11)  # [T, B, N, C] as *B = [3, 2]
    size = torch.ones(3, 2, 8)
    plan = bipartite_soft_matching(metric, size, r=2)
    assert plan.size.shape == (3, 2, 8) and plan.num_merged.shape == (3, 2)
    assert plan.merge(metric).shape == metric.shape
    flat = bipartite_soft_matching(metric[1, 0], size[1, 0], r=2)
    assert torch.equal(flat.merged, plan.merged[1, 0])
    assert flat.num_merged.shape == ()
    with pytest.raises(ValueError):
        plan.merge(_rand(2, 8, 4))


def test_gradients_flow() -> None:
    b, n, c = 2, 8, 4
    metric = _rand(b, n, c, seed=12)
    size = torch.tensor([[1.0, 2.0, 1.0, 0.0, 3.0, 1.0, 1.0, 1.0]] * b)  # token 3 is dead
    plan = bipartite_soft_matching(metric, size, r=2)
    x = _rand(b, n, c, seed=13).requires_grad_(True)
    out = plan.merge(x)
    (out * torch.arange(c, dtype=torch.float)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # a dead token passes through unchanged, so its gradient is the upstream gradient
    assert torch.equal(x.grad[:, 3], torch.arange(c, dtype=torch.float).expand(b, c))
    # every source feeds its destination, so its gradient is nonzero
    src_grad = x.grad[plan.merged]
    assert (src_grad.abs().sum(-1) > 0).all()
    torch.autograd.gradcheck(
        lambda y: plan.merge(y), (x.detach().double().requires_grad_(True),), eps=1e-6, atol=1e-4
    )


def test_matching_is_not_differentiable() -> None:
    metric = _rand(2, 6, 3).requires_grad_(True)
    plan = bipartite_soft_matching(metric, torch.ones(2, 6), r=2)
    assert not plan.size.requires_grad and not plan.merged.requires_grad


# ---------------------------------------------------------------- argument validation


def test_argument_errors() -> None:
    metric, size = _rand(1, 4, 2), torch.ones(1, 4)
    with pytest.raises(ValueError, match="exactly one"):
        bipartite_soft_matching(metric, size)
    with pytest.raises(ValueError, match="exactly one"):
        bipartite_soft_matching(metric, size, r=1, threshold=0.5)
    with pytest.raises(ValueError, match="r must be >= 0"):
        bipartite_soft_matching(metric, size, r=-1)
    with pytest.raises(ValueError):
        bipartite_soft_matching(metric, torch.ones(1, 5), r=1)


def test_size_weighted_mean() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    size = torch.tensor([[1.0, 3.0, 0.0]])
    torch.testing.assert_close(size_weighted_mean(x, size), torch.tensor([[2.5]]))
    assert torch.equal(size_weighted_mean(x, torch.zeros(1, 3)), torch.zeros(1, 1))
    # extra leading dim broadcasts
    xt = torch.stack([x, 2 * x])
    torch.testing.assert_close(size_weighted_mean(xt, size), torch.tensor([[[2.5]], [[5.0]]]))


@pytest.mark.parametrize(
    ("r", "blocks", "expected"),
    [(3, 4, [3, 3, 3, 3]), (0, 2, [0, 0]), ([1, 2, 3], 3, [1, 2, 3]), ((0, 5), 2, [0, 5]), (2, 0, [])],
)
def test_parse_r(r, blocks: int, expected: list[int]) -> None:
    assert parse_r(r, blocks) == expected


def test_parse_r_errors() -> None:
    with pytest.raises(ValueError, match="expected length 3, got 2"):
        parse_r([1, 2], 3)
    with pytest.raises(ValueError, match=">= 0"):
        parse_r(-1, 3)
    with pytest.raises(ValueError, match=">= 0"):
        parse_r([1, -2], 2)
