"""Per-forward context: what a forward pass needs to know (time masks, which timesteps it runs)
and what it observed (spike statistics, operation counts, processed token-units).

A new ``Context`` is made by every ``Spikformer.forward`` and returned inside its output, so no
statistic is ever read off a module by the training loop (A-ViT's ``model.module.rho_token``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerCounts:
    """Sums over the batch for one synaptic layer (divide by the number of images for per-image values)."""

    kind: str  # stem | attention | mlp | head: the breakdown in the report
    block: int  # -1 for the stem and the head
    macs: float = 0.0  # multiply-accumulates on analog inputs (first conv, head)
    sops_exact: float = 0.0  # non-zero operand products (exact counting)
    sops_paper: float = 0.0  # firing rate x dense FLOPs over active tokens and steps (Spikformer-family convention)
    dense_flops: float = 0.0  # FLOPs over active tokens and active steps, ignoring sparsity
    # --- for the energy conventions (suite.energy) and NeuroBench's names; absent from records counted before them
    sops_nonbinary: float = 0.0  # the exact SOPs of calls whose input held a value outside {-1, 0, 1}
    synops: float = 0.0  # NeuroBench's effective synaptic operations: non-zero inputs x their connections (analog too)
    synops_nonbinary: float = 0.0  # those of calls whose input held a value outside {-1, 0, 1}: NeuroBench's MACs
    inputs_nz: float = 0.0  # non-zero input values read (Lemaire's theta_in)
    outputs: float = 0.0  # output values the layer computed (processed output positions x channels)
    out_spikes: float = 0.0  # spikes of the layer's own LIF (fired after it, under its name): Lemaire's theta_out
    out_elements: float = 0.0  # elements that LIF updated (its membrane updates)
    weights: float = 0.0  # weights of the layer (static: not summed over batches)
    biases: float = 0.0  # biases (output channels, BN folded) (static)
    fan_out: float = 0.0  # weights read per non-zero input: Cout x 9 for a 3x3 conv, Nout for a linear (static)
    in_size: float = 0.0  # input values per step and image (static)
    out_size: float = 0.0  # output values per step and image (static)


@dataclass
class LayerShape:
    """What one counted call of a synaptic layer read and wrote (Lemaire's memory model) and its static sizes."""

    inputs_nz: float  # non-zero input values read
    outputs: float  # output values computed
    weights: float
    biases: float
    fan_out: float  # weights read per non-zero input
    in_size: float  # input values per step and image
    out_size: float  # output values per step and image
    synops: float  # NeuroBench's effective synaptic operations

    def add_to(self, rec: LayerCounts) -> None:
        """Add the call's reads and writes to ``rec`` and set its static sizes."""
        rec.inputs_nz += self.inputs_nz
        rec.outputs += self.outputs
        rec.synops += self.synops
        rec.weights, rec.biases, rec.fan_out = self.weights, self.biases, self.fan_out
        rec.in_size, rec.out_size = self.in_size, self.out_size


@dataclass
class TokenWork:
    """What one token-wise synaptic layer of a block (a Linear on each token) processed in a forward pass."""

    block: int
    per_token: float  # FLOPs per processed (token, step): C_in x C_out
    processed: Tensor  # [T, B] float64: tokens this layer processed at each step of each image


@dataclass
class Context:
    """State of one forward pass. ``step`` selects the timesteps the current call processes
    (all of them in layer-wise execution, one at a time in time-major halting)."""

    T: int
    time_masks: dict[str, Tensor] | None = None  # group name -> [T] float mask (straight-through)
    count: bool = False  # collect firing rates and operation counts (evaluation)
    step: slice = field(default_factory=lambda: slice(None))
    spikes: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))
    ops: dict[str, LayerCounts] = field(default_factory=dict)
    # token-wise layer -> what it processed: the source of token-units (``block_token_units``)
    token_work: dict[str, TokenWork] = field(default_factory=dict)
    # block name -> [sum, count] of the cosine similarity of each token's block input at consecutive timesteps
    similarity: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))
    # a token or time policy's own work (halting scores and heads, merge matching, selector MLP, exit confidence),
    # kept apart from ``ops`` so that each energy convention decides whether it counts (``Context.overhead``)
    policy_ops: dict[str, LayerCounts] = field(default_factory=dict)
    _last_input: dict[str, Tensor] = field(default_factory=dict)
    _last_stats: tuple | None = None  # the last synapse input's reading (``_input_stats``)

    def observe_block_input(self, block: str, x: Tensor) -> None:
        """Record the temporal similarity of a block's input ``x`` [T', B, N, C] (STAS's diagnostic: ACT assumes
        consecutive timesteps see similar tokens): the cosine of each token's vector at step t and t + 1. Every
        token counts, halted ones included, except a token that is all zero at both steps (no direction); across
        calls (one timestep at a time) the previous call's last step is the predecessor."""
        if not self.count:
            return
        with torch.no_grad():
            prev = self._last_input.get(block)
            seq = x if prev is None else torch.cat([prev.unsqueeze(0), x])
            if seq.shape[0] > 1:
                a, b = seq[1:].double(), seq[:-1].double()
                cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
                # two all-zero tokens have no direction: left out (one zero token against another is 0)
                defined = (a != 0).any(-1) | (b != 0).any(-1)
                acc = self.similarity[block]
                acc[0] += float(cos[defined].sum())
                acc[1] += float(defined.sum())
            self._last_input[block] = x[-1]

    def _input_stats(self, x: Tensor, valid: Tensor, active: Tensor | None, m: Tensor | None
                     ) -> tuple[Tensor, Tensor, bool]:
        """Non-zeros, float64 sum and ``outside_unit`` of ``x`` at its processed entries. Layers reading the same input
        one after another (Q, K and V) share one reading: the last is kept, with the tensors it was taken from (held,
        so that their ids cannot be reused) and their versions (an in-place change invalidates it)."""
        key = (x, x._version, active, None if active is None else active._version, m)
        last = self._last_stats
        if last is not None and all(_same(a, b) for a, b in zip(last[0], key)):
            return last[1]
        xv = x if m is None and active is None else x * valid
        nz = nonzeros(xv)
        stats = (nz, sum64(xv), outside_unit(xv, nz))
        self._last_stats = (key, stats)
        return stats

    def time_mask(self, group: str | None) -> Tensor | None:
        """The [T'] mask of ``group`` for the timesteps being processed, or None when unmasked."""
        if self.time_masks is None or group is None or group not in self.time_masks:
            return None
        return self.time_masks[group][self.step]

    def fire(self, name: str, spikes: Tensor, group: str | None, active: Tensor | None = None) -> Tensor:
        """Apply the time mask of ``group`` to a neuron's output ``[T', B, ...]`` and record its firing.

        ``active`` ([T', B, N] float) marks the tokens being processed; the firing rate is taken
        over active tokens at active timesteps only (halted tokens and masked steps do not run)."""
        m = self.time_mask(group)
        if m is not None:
            spikes = spikes * m.view(-1, *([1] * (spikes.dim() - 1)))
        if self.count:
            with torch.no_grad():
                valid = _valid(spikes, active, m)
                fired = float(sum64(spikes if m is None and active is None else spikes * valid))
                elements = broadcast_sum(valid, spikes.shape)
                self.spikes[name][0] += fired
                self.spikes[name][1] += elements
                self._fired_after(name, fired, elements)
        return spikes

    def synapse(
        self,
        name: str,
        *,
        kind: str,
        block: int,
        x: Tensor,
        fan_out: int,
        active: Tensor | None,
        group: str | None,
        analog: bool = False,
        exact: Tensor | None = None,
        paper: Tensor | None = None,
        dense: Tensor | None = None,
        memory: LayerShape | None = None,
        nonbinary: bool | None = None,
    ) -> None:
        """Count the operations of a token-wise synaptic layer (Linear) fed by ``x`` [T', B, N, Cin].

        A layer whose neuron's output is time-masked at a step would not run at that step, so its
        operations count only at unmasked steps; likewise only active tokens count. Convolutions and
        attention products pass their own ``exact``/``paper``/``dense`` totals (and, for convolutions, ``memory``:
        what Lemaire's memory model reads). A block's token-wise layers (``block >= 0``, no totals passed) also
        record the tokens they processed: ``block_token_units``. ``nonbinary`` says whether the operand held a value
        outside {-1, 0, 1} (NeuroBench's rule for MACs); unset, it is read off ``x`` at the processed entries."""
        if not self.count:
            return
        with torch.no_grad():
            m = self.time_mask(group)
            valid = _valid(x, active, m)
            rec = self.ops.setdefault(name, LayerCounts(kind=kind, block=block))
            if dense is None:
                cin = x.shape[-1]
                tokens = broadcast_sum(valid, (*x.shape[:-1], 1))
                dense = torch.tensor(tokens * cin * fan_out, dtype=torch.float64)
                nz, total, outside = self._input_stats(x, valid, active, m)
                exact = nz * fan_out
                # Spikformer-family convention: SOP = firing rate x FLOPs, with the rate taken as the
                # mean input value, so a residual-stream value of 2 counts as two spikes.
                paper = total * fan_out
                if block >= 0:
                    self._record_tokens(name, block, valid.expand(*x.shape[:-1], 1), cin * fan_out)
                n_out = tokens * fan_out
                nonbinary = outside if nonbinary is None else nonbinary
                memory = LayerShape(inputs_nz=float(nz), outputs=n_out,
                                    weights=cin * fan_out, biases=fan_out, fan_out=fan_out,
                                    in_size=x.shape[-2] * cin, out_size=x.shape[-2] * fan_out, synops=float(exact))
            if nonbinary is None:
                nonbinary = outside_unit(x) if x.numel() else False
            if analog:
                rec.macs += float(dense)
            else:
                rec.sops_exact += float(exact)
                rec.sops_paper += float(paper)
                if nonbinary:
                    rec.sops_nonbinary += float(exact)
            rec.dense_flops += float(dense)
            if memory is not None:
                memory.add_to(rec)
                if nonbinary:
                    rec.synops_nonbinary += memory.synops


    def _fired_after(self, name: str, spikes: float, elements: float) -> None:
        """Record a LIF's spikes as the output of the synaptic layer of the same name counted earlier in this forward
        (Conv/Linear -> BN -> LIF): Lemaire's output writes (theta_out) and that LIF's membrane updates. A LIF that
        fires before the layer of its name (SDT's ``stem.rpe`` and head LIFs) feeds it instead: not recorded."""
        rec = self.ops.get(name)
        if rec is not None:
            rec.out_spikes += spikes
            rec.out_elements += elements

    def overhead(self, name: str, *, block: int, macs: float = 0.0, acs: float = 0.0) -> None:
        """Count a policy's own work over the batch: ``macs`` multiply-accumulates on real values, ``acs``
        accumulates (binary operands). Recorded under ``policy_ops[name]`` (kind ``policy``), never in ``ops``."""
        if not self.count:
            return
        rec = self.policy_ops.setdefault(name, LayerCounts(kind="policy", block=block))
        rec.macs += float(macs)
        rec.sops_exact += float(acs)
        rec.sops_paper += float(acs)
        rec.dense_flops += float(macs + acs)

    def _record_tokens(self, name: str, block: int, valid: Tensor, per_token: float) -> None:
        """Add the tokens a token-wise layer processed at each step (``valid`` [T', B, N, 1]) of the current call."""
        work = self.token_work.get(name)
        if work is None:
            zeros = torch.zeros(self.T, valid.shape[1], dtype=torch.float64, device=valid.device)
            work = self.token_work[name] = TokenWork(block, float(per_token), zeros)
        # a processed token counts once whatever its weight (a merged token of size s is one token)
        work.processed[self.step] += (valid != 0).flatten(2).sum(-1, dtype=torch.float64)

    def block_token_units(self) -> Tensor | None:
        """``[B, L, T]`` token-units of each block at each step (None before any counted forward).

        The one rule of docs/counting.md: a (token, block, step) unit counts when the block processes the token at
        that step. Each block's token-wise layers say what it processed, so a halted, dropped or merged-away token
        and a step the block's time mask drops all lower it alike. A block whose layers run at different steps
        (``granularity: layer`` or ``type`` masks) counts each unit by the share of its per-token FLOPs that ran."""
        if not self.token_work:
            return None
        by_block: dict[int, list[TokenWork]] = defaultdict(list)
        for work in self.token_work.values():
            by_block[work.block].append(work)
        units = []
        for block in sorted(by_block):
            works = by_block[block]
            flops = sum(w.processed * w.per_token for w in works)
            units.append(flops / sum(w.per_token for w in works))  # [T, B]
        return torch.stack(units).permute(2, 0, 1)


def _same(a: object, b: object) -> bool:
    """Key equality for ``Context._input_stats``: tensors by identity, except time masks (a new slice per call) by
    value; versions by ``==``."""
    if a is None or b is None:
        return a is b
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a is b or (a.dim() == 1 and b.dim() == 1 and torch.equal(a, b))
    return a == b


def _valid(x: Tensor, active: Tensor | None, m: Tensor | None) -> Tensor:
    """A broadcastable 0/1 float tensor marking processed entries of ``x`` ([T', B, ...])."""
    v = torch.ones((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    if m is not None:
        v = v * m.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    if active is not None:
        a = active.to(x.dtype)
        v = v * a.view(*a.shape, *([1] * (x.dim() - a.dim())))
    return v


# Counting runs on every evaluation batch, so its reductions avoid full-size float64 or int64 copies of activations
# (a ``sum(dtype=torch.float64)`` on a float32 tensor converts all of it first): counts of non-zeros sum float32
# flags (exact, ``nonzeros``), and value sums take a partial sum in the tensor's own dtype over the last dimension
# (exact for the spikes and small-integer residual streams counted here) before the float64 total.


# Largest count a float32 partial sum of 0/1 flags holds exactly.
EXACT_FP32_COUNT = 2**24


def nonzeros(x: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """float64 count of ``x``'s non-zero entries, in all of ``x`` or along ``dim``: 0/1 flags written as float32 in one
    pass and summed (over the last dimension first when counting all), exact while each float32 partial count stays
    below 2^24 (else counted in int64). On the CPU 3-7x faster than ``torch.count_nonzero`` of a float tensor or
    a bool sum, both of which convert every element to int64 first."""
    if dim is None:
        return _count_flags(x, torch.ne, 0.0)
    dims = (dim,) if isinstance(dim, int) else dim
    if math.prod(x.shape[d] for d in dims) >= EXACT_FP32_COUNT:
        return (x != 0).sum(dim, dtype=torch.int64).double()
    return torch.ne(x, 0, out=_scratch(x)).sum(dim).double()


def _count_flags(x: Tensor, compare, value: float) -> Tensor:
    """float64 count of the entries of ``x`` where ``compare(x, value)`` holds (``torch.ne``, ``torch.eq``): float32
    flags summed over the last dimension, then in float64; int64 where a row reaches 2^24 entries."""
    if x.dim() and x.shape[-1] >= EXACT_FP32_COUNT:
        return torch.count_nonzero(compare(x, value)).double()
    return sum64(compare(x, value, out=_scratch(x)))

_SCRATCH: dict[torch.device, Tensor] = {}


def _scratch(x: Tensor) -> Tensor:
    """A float32 buffer shaped like ``x`` for one-pass 0/1 flags, reused: a fresh tensor of this size per call would
    be mapped, page-faulted in and unmapped again by the allocator (glibc's mmap threshold, docs/throughput.md), which
    cost more than the comparison itself. It holds the largest counted tensor per device (tens of MB)."""
    buf = _SCRATCH.get(x.device)
    if buf is None or buf.numel() < x.numel():
        buf = _SCRATCH[x.device] = torch.empty(x.numel(), dtype=torch.float32, device=x.device)
    return buf[:x.numel()].view(x.shape)


def release_scratch() -> None:
    """Free the flags buffer (``evaluate`` calls it when done: it may hold a large attention map's worth)."""
    _SCRATCH.clear()


def sum64(x: Tensor) -> Tensor:
    """The float64 sum of ``x``: partial sums over the last dimension in ``x``'s dtype, then a float64 total."""
    return x.sum(-1).sum(dtype=torch.float64) if x.dim() else x.double()


def broadcast_sum(v: Tensor, shape: tuple[int, ...]) -> float:
    """``float(v.expand(shape).sum())`` without materialising the expansion (``v`` broadcasts to ``shape``)."""
    full = math.prod(shape)
    return float(v.sum(dtype=torch.float64)) * (full / v.numel()) if v.numel() else 0.0


def outside_unit(x: Tensor, nonzero: Tensor | None = None) -> bool:
    """Whether ``x`` holds a value outside {-1, 0, 1} (NeuroBench's rule for MACs): fewer entries of magnitude 1
    than non-zero entries. ``nonzero``: ``nonzeros(x)`` when the caller has it."""
    lo, hi = torch.aminmax(x)
    if lo < -1 or hi > 1:  # the common non-binary case (a residual stream holding a 2) decided in one pass
        return True
    nz = nonzeros(x) if nonzero is None else nonzero
    ones = _count_flags(x, torch.eq, 1.0) + (_count_flags(x, torch.eq, -1.0) if lo < 0 else 0)
    return bool(nz != ones)
