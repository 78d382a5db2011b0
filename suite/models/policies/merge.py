"""Fixed-length token merging for spiking transformers.

Bipartite soft matching in the spirit of ToMe (Bolya et al., 2023), with one
difference: the token count ``N`` never changes. A merged-away ("source") token
stays in the tensor as a *dead* token (its ``size`` becomes 0) while its value
is absorbed into its destination. Keeping every position alive in the tensor
preserves per-position neuron state and lets the caller mask dead tokens.

Shapes: ``*B`` are arbitrary leading batch dims (e.g. ``[B]`` or ``[T, B]``)
before the token dim ``N``. ``size[*B, N]`` is a float count of how many
original tokens each token stands for (0 = dead).

The matching is computed once under ``torch.no_grad()`` and returned as a
:class:`MergePlan`, whose ``merge`` closure can be applied (differentiably) to
any tensor laid out like the tokens, e.g. the block input and the membrane
state, or to a ``[T, *B, N, C]`` tensor when the plan was made on ``[*B, N]``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MergeFn",
    "MergePlan",
    "bipartite_soft_matching",
    "parse_r",
    "size_weighted_mean",
]

MergeFn = Callable[[Tensor], Tensor]

_NORM_EPS = 1e-6


@dataclass(frozen=True)
class MergePlan:
    """One round of token merging, with ``N`` fixed.

    Attributes:
        merge: ``x[..., *B, N, C] -> x'`` of the same shape. Each destination row
            becomes the size-weighted average (sizes before the merge) of itself
            and all of its sources; every other row, sources included, is
            returned unchanged. Extra leading dims of ``x`` broadcast.
            Differentiable w.r.t. ``x``.
        size: ``[*B, N]`` sizes after the merge (destinations gain their
            sources' sizes, sources drop to 0, all others unchanged).
        merged: ``[*B, N]`` bool, True for the tokens merged away in this plan.
        num_merged: ``[*B]`` long, number of sources per batch element.
    """

    merge: MergeFn
    size: Tensor
    merged: Tensor
    num_merged: Tensor


def parse_r(r: int | Sequence[int], num_blocks: int) -> list[int]:
    """Expand a per-block merge count into one non-negative int per block.

    Args:
        r: a single count used for every block, or one count per block.
        num_blocks: number of transformer blocks.

    Returns:
        A list of ``num_blocks`` ints.

    Raises:
        ValueError: if ``num_blocks`` or any count is negative, or a sequence
            does not have exactly ``num_blocks`` entries.
        TypeError: if ``r`` is neither an int nor a sequence of ints.
    """
    num_blocks = operator.index(num_blocks)
    if num_blocks < 0:
        raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    if isinstance(r, str | bytes):
        raise TypeError(f"r must be an int or a sequence of ints, got {r!r}")
    if isinstance(r, Sequence):
        values = [operator.index(v) for v in r]
        if len(values) != num_blocks:
            raise ValueError(
                f"r has {len(values)} entries but num_blocks is {num_blocks}: "
                f"expected length {num_blocks}, got {len(values)}"
            )
    else:
        values = [operator.index(r)] * num_blocks
    negative = [v for v in values if v < 0]
    if negative:
        raise ValueError(f"r must be >= 0, got {negative[0]}")
    return values


def size_weighted_mean(x: Tensor, size: Tensor) -> Tensor:
    """Pool tokens by their sizes: ``sum_k size_k x_k / sum_k size_k``.

    Dead tokens (size 0) contribute nothing, which makes this the readout that
    a merge leaves invariant.

    Args:
        x: ``[..., *B, N, C]`` token values.
        size: ``[*B, N]`` token sizes (>= 0).

    Returns:
        ``[..., *B, C]``. A batch element whose sizes are all 0 gives zeros.
    """
    w = size.to(x.dtype).unsqueeze(-1)  # [*B, N, 1]
    total = w.sum(dim=-2).clamp_min(torch.finfo(x.dtype).tiny)  # [*B, 1]
    return (x * w).sum(dim=-2) / total


def _cosine_scores(metric: Tensor, a_idx: Tensor, b_idx: Tensor) -> Tensor:
    """Cosine similarity ``[*B, Na, Nb]`` between A rows and B rows of ``metric``.

    Rows are L2-normalised with a small eps, so an all-zero row scores 0
    against everything. Values are clamped to ``[-1, 1]`` against rounding.
    """
    if not metric.is_floating_point() or metric.dtype in (torch.float16, torch.bfloat16):
        metric = metric.float()
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    unit_a = unit.index_select(-2, a_idx)
    unit_b = unit.index_select(-2, b_idx)
    return (unit_a @ unit_b.transpose(-1, -2)).clamp_(-1.0, 1.0)


def _random_scores(
    batch_shape: torch.Size, na: int, nb: int, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """I.i.d. uniform ``[0, 1)`` scores ``[*B, Na, Nb]`` (random-merge control)."""
    return torch.rand(*batch_shape, na, nb, generator=generator, device=device)


def _select_sources(best: Tensor, n: int, r: int | None, threshold: float | None) -> Tensor:
    """Choose which A tokens merge, from their best scores ``[*B, Na]``.

    With ``r``: the top-``min(r, n // 2)`` A tokens per batch element (stable
    order, ties go to the lower position). With ``threshold``: every A token
    scoring at least ``threshold``. A token whose best score is ``-inf`` is
    never chosen.
    """
    finite = best > float("-inf")
    if threshold is not None:
        return finite & (best >= threshold)
    assert r is not None
    k = min(r, n // 2, best.shape[-1])
    chosen = torch.zeros_like(finite)
    if k > 0:
        order = best.argsort(dim=-1, descending=True, stable=True)[..., :k]
        chosen.scatter_(-1, order, True)
    return chosen & finite


def _make_merge(target: Tensor, size: Tensor, is_dst: Tensor, new_size: Tensor) -> MergeFn:
    """Build the differentiable closure applying a plan to ``x[..., *B, N, C]``.

    ``target[*B, N]`` maps each token to where its mass goes (its destination
    for sources, itself otherwise); ``size`` holds the pre-merge sizes.
    """
    plan_shape = tuple(target.shape)
    nd = len(plan_shape)
    dst_mask = is_dst.unsqueeze(-1)  # [*B, N, 1]
    denom = torch.where(is_dst, new_size, torch.ones_like(new_size)).unsqueeze(-1)

    def merge(x: Tensor) -> Tensor:
        """Replace destination rows by the size-weighted mean of their group."""
        if x.dim() < nd + 1 or tuple(x.shape[-nd - 1 : -1]) != plan_shape:
            raise ValueError(
                f"merge expects x[..., {', '.join(map(str, plan_shape))}, C], got {tuple(x.shape)}"
            )
        w = size.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        index = target.to(x.device).unsqueeze(-1).expand(x.shape)
        pooled = torch.zeros_like(x).scatter_add(-2, index, x * w)
        averaged = pooled / denom.to(device=x.device, dtype=x.dtype)
        return torch.where(dst_mask.to(x.device), averaged, x)

    return merge


def bipartite_soft_matching(
    metric: Tensor,
    size: Tensor,
    *,
    r: int | None = None,
    threshold: float | None = None,
    eligible: Tensor | None = None,
    generator: torch.Generator | None = None,
    random: bool = False,
) -> MergePlan:
    """Plan one round of fixed-length bipartite token merging.

    Tokens at even positions form set A, odd positions set B. Each A token
    picks its most similar eligible B token (cosine similarity of ``metric``,
    or i.i.d. uniform random scores when ``random=True``); pairs where either
    side is ineligible score ``-inf`` and are never merged. The chosen A tokens
    become sources: dead after the merge, their value and size absorbed into
    their destination. Several sources may share a destination.

    Args:
        metric: ``[*B, N, C]`` features used for similarity (e.g. keys).
        size: ``[*B, N]`` float sizes, ``>= 0``; 0 marks a dead token.
        r: merge the ``r`` best-scoring A tokens per batch element, capped at
            ``N // 2`` and at the number of A tokens with a finite score.
            Exclusive with ``threshold``.
        threshold: merge every A token whose best score is ``>= threshold``.
            Random scores lie in ``[0, 1)``.
        eligible: ``[*B, N]`` bool, tokens allowed to take part; always
            intersected with ``size > 0``. Defaults to ``size > 0``.
        generator: RNG for ``random=True``; same state gives the same plan.
        random: use random scores instead of similarity (control baseline).

    Returns:
        A :class:`MergePlan`.

    Raises:
        ValueError: unless exactly one of ``r`` / ``threshold`` is given, if
            ``r < 0``, or on mismatched shapes.
    """
    if (r is None) == (threshold is None):
        raise ValueError("exactly one of r or threshold must be given")
    if r is not None:
        r = operator.index(r)
        if r < 0:
            raise ValueError(f"r must be >= 0, got {r}")
    if metric.dim() < 2:
        raise ValueError(f"metric must be [*B, N, C], got shape {tuple(metric.shape)}")
    if tuple(size.shape) != tuple(metric.shape[:-1]):
        raise ValueError(f"size shape {tuple(size.shape)} != metric shape[:-1] {tuple(metric.shape[:-1])}")
    if eligible is not None and tuple(eligible.shape) != tuple(size.shape):
        raise ValueError(f"eligible shape {tuple(eligible.shape)} != size shape {tuple(size.shape)}")

    with torch.no_grad():
        size = size.detach()
        n = size.shape[-1]
        batch_shape = size.shape[:-1]
        device = size.device

        ok = size > 0
        if eligible is not None:
            ok = ok & eligible.to(device=device, dtype=torch.bool)

        a_idx = torch.arange(0, n, 2, device=device)
        b_idx = torch.arange(1, n, 2, device=device)
        na, nb = a_idx.numel(), b_idx.numel()

        if na > 0 and nb > 0:
            if random:
                scores = _random_scores(batch_shape, na, nb, device, generator)
            else:
                scores = _cosine_scores(metric.detach().to(device), a_idx, b_idx)
            valid = ok.index_select(-1, a_idx).unsqueeze(-1) & ok.index_select(-1, b_idx).unsqueeze(-2)
            scores = scores.masked_fill(~valid, float("-inf"))
            best, best_j = scores.max(dim=-1)  # [*B, Na]
            chosen = _select_sources(best, n, r, threshold)
            dst_of_a = b_idx[best_j]  # [*B, Na] global index of each A token's pick
        else:
            chosen = torch.zeros(*batch_shape, na, dtype=torch.bool, device=device)
            dst_of_a = a_idx.expand(*batch_shape, na)

        # target[k]: where token k's mass goes (its destination if it is a source, else itself).
        target = torch.arange(n, device=device).expand(*batch_shape, n).clone()
        target[..., a_idx] = torch.where(chosen, dst_of_a, a_idx.expand_as(dst_of_a))
        merged = torch.zeros(*batch_shape, n, dtype=torch.bool, device=device)
        merged[..., a_idx] = chosen

        # New sizes: each token collects the sizes of everything that targets it.
        new_size = torch.zeros_like(size).scatter_add(-1, target, size)
        incoming = torch.zeros(*batch_shape, n, dtype=torch.long, device=device)
        incoming.scatter_add_(-1, target, merged.long())
        is_dst = incoming > 0
        num_merged = merged.sum(dim=-1, dtype=torch.long)

    return MergePlan(
        merge=_make_merge(target, size, is_dst, new_size),
        size=new_size,
        merged=merged,
        num_merged=num_merged,
    )
