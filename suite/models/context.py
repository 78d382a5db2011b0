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
                xv = x if m is None and active is None else x * valid
                nz = torch.count_nonzero(xv)  # int64: exact, and no float64 copy of x
                exact = nz * fan_out
                # Spikformer-family convention: SOP = firing rate x FLOPs, with the rate taken as the
                # mean input value, so a residual-stream value of 2 counts as two spikes.
                paper = sum64(xv) * fan_out
                if block >= 0:
                    self._record_tokens(name, block, valid.expand(*x.shape[:-1], 1), cin * fan_out)
                n_out = tokens * fan_out
                nonbinary = outside_unit(xv, nz) if nonbinary is None else nonbinary
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


def _valid(x: Tensor, active: Tensor | None, m: Tensor | None) -> Tensor:
    """A broadcastable 0/1 float tensor marking processed entries of ``x`` ([T', B, ...])."""
    v = torch.ones((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    if m is not None:
        v = v * m.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    if active is not None:
        a = active.to(x.dtype)
        v = v * a.view(*a.shape, *([1] * (x.dim() - a.dim())))
    return v


# Counting runs on every evaluation batch, so its reductions avoid full-size float64 copies of activations (a
# ``sum(dtype=torch.float64)`` on a float32 tensor converts all of it first): counts of non-zeros are int64
# (exact), and value sums take a partial sum in the tensor's own dtype over the last dimension (exact for the
# spikes and small-integer residual streams counted here) before the float64 total.


def sum64(x: Tensor) -> Tensor:
    """The float64 sum of ``x``: partial sums over the last dimension in ``x``'s dtype, then a float64 total."""
    return x.sum(-1).sum(dtype=torch.float64) if x.dim() else x.double()


def broadcast_sum(v: Tensor, shape: tuple[int, ...]) -> float:
    """``float(v.expand(shape).sum())`` without materialising the expansion (``v`` broadcasts to ``shape``)."""
    full = math.prod(shape)
    return float(v.sum(dtype=torch.float64)) * (full / v.numel()) if v.numel() else 0.0


def outside_unit(x: Tensor, nonzero: Tensor | None = None) -> bool:
    """Whether ``x`` holds a value outside {-1, 0, 1} (NeuroBench's rule for MACs): fewer entries of magnitude 1
    than non-zero entries. ``nonzero``: ``count_nonzero(x)`` when the caller has it."""
    lo, hi = torch.aminmax(x)
    if lo < -1 or hi > 1:  # the common non-binary case (a residual stream holding a 2) decided in one pass
        return True
    nz = torch.count_nonzero(x) if nonzero is None else nonzero
    ones = torch.count_nonzero(x == 1) + (torch.count_nonzero(x == -1) if lo < 0 else 0)
    return bool(nz != ones)
