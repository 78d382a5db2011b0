"""Compacted inference: run each block only on its active (token, timestep) entries.

The masked path (``Backbone.forward`` with a ``TokenPolicy``) keeps every token in the
``[T, B, N, C]`` tensor and zeroes the inactive ones, so a halted, merged or dropped token costs as
much wall-clock time as a running one. Here the same policy makes the same decisions (its own
``forward`` is called, with compact blocks in place of the model's blocks), but each block gathers the
entries it must compute into one packed matrix ``[M, C]`` and runs on that:

- Linear and BatchNorm (eval: an affine map per channel) act on each row alone, so the model's own
  ``nn.Linear`` / ``nn.BatchNorm1d`` modules run on the packed rows unchanged.
- LIF neurons carry state over time per (image, token), so each neuron has a dense state buffer
  ``[B * N, C]`` and only the rows computed at a step are read and written (``lif_step``, the same
  arithmetic as spikingjelly's CPU kernel).
- Spiking self-attention has no softmax, so ``(Q K^T) V = Q (K^T V)``: per (timestep, image), sum
  ``w_j k_j v_j^T`` over active keys only (``w`` = merged-token size), then each active query row
  multiplies its segment's sum (``segment_linear_attention``: batched matmuls over segments padded
  to power-of-two lengths). The cost is linear in active tokens, not quadratic in all of them.
- Rows that are not computed keep their residual-stream value, exactly as the masked path's
  zero update leaves them.

Which rows are computed: every active entry, plus any inactive entry that lies *before* a later
active step of the same token in the same block call (a "hole"). The masked path runs the LIF of a
hole (its output is zeroed, its membrane moves on), so the later active step sees that state; the
compacted path must compute the hole too. Block-major halting, 1-D halting, keep masks and
``per: all_steps`` merges only produce prefixes of active steps, so they have no holes and nothing
extra is computed; ``per: timestep`` merges can produce holes and stay exact at a small extra cost.

Timings and token counts are separate numbers: this module only changes how fast the same logits come out.
It is written against the backbone protocol: each block type computes itself on packed rows
(``forward_packed``) with the operations of ``PackedCall``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional, neuron
from torch import Tensor, nn

from suite.models.backbone import Backbone
from suite.models.context import Context
from suite.models.layers import LinearBN, LinearBNLIF
from suite.models.policies.tokens import TokenPolicy

__all__ = [
    "CompactBlock",
    "LIFParams",
    "PackedCall",
    "PackedRows",
    "active_fraction",
    "compact_forward",
    "lif_initial_value",
    "lif_params",
    "lif_step",
    "pack_rows",
    "segment_linear_attention",
]


# ---------------------------------------------------------------------------------------- LIF


@dataclass(frozen=True)
class LIFParams:
    """The constants of one spikingjelly ``LIFNode`` (read off the model, never assumed)."""

    tau: float
    v_threshold: float
    v_reset: float | None  # None: soft reset (subtract the threshold)
    decay_input: bool


def lif_params(node: neuron.LIFNode) -> LIFParams:
    """Read the constants of a spikingjelly LIF neuron (compacted inference reimplements LIF only: a PLIF or IF
    layer, ``model.neuron.type``, is refused rather than run with the wrong dynamics)."""
    if not isinstance(node, neuron.LIFNode):
        raise TypeError(f"compacted inference runs LIF neurons only (model.neuron.type: lif), not {type(node).__name__}")
    return LIFParams(float(node.tau), float(node.v_threshold),
                     None if node.v_reset is None else float(node.v_reset), bool(node.decay_input))


def lif_initial_value(p: LIFParams) -> float:
    """spikingjelly's initial membrane potential: ``v_reset``, or 0 with soft reset."""
    return 0.0 if p.v_reset is None else p.v_reset


def lif_step(x: Tensor, v: Tensor, p: LIFParams) -> tuple[Tensor, Tensor]:
    """One LIF step on explicit state: returns ``(spike, v_next)``, both shaped like ``x``.

    The operations and their order follow spikingjelly 2.0's CPU kernel (``_ops/lif/cpu.py``), so the
    charge ``H`` is bit-identical and a spike at exactly the threshold (``H >= v_th``, spikingjelly's
    ``heaviside(H - v_th)`` with ``heaviside(0) = 1``) is decided the same way."""
    reset_value = 0.0 if p.v_reset is None else p.v_reset
    if p.decay_input:
        h = v + (x - (v - reset_value)) / p.tau
    else:
        h = v - (v - reset_value) / p.tau + x
    spike = (h >= p.v_threshold).to(x.dtype)
    if p.v_reset is None:
        v_next = h - spike * p.v_threshold
    else:
        v_next = spike * p.v_reset + (1 - spike) * h
    return spike, v_next


def lif_packed(y: Tensor, state: Tensor, rows: PackedRows, p: LIFParams) -> Tensor:
    """Run a LIF neuron over packed rows ``y`` [M, C], timestep by timestep.

    ``state`` [B * N, C] holds each (image, token)'s membrane potential and is updated in place for
    the rows computed at each step; all other tokens' states are left untouched."""
    out = torch.empty_like(y)
    for t in range(len(rows.bounds) - 1):
        lo, hi = rows.bounds[t], rows.bounds[t + 1]
        if lo == hi:
            continue
        idx = rows.token[lo:hi]
        spike, v_next = lif_step(y[lo:hi], state.index_select(0, idx), p)
        state.index_copy_(0, idx, v_next)
        out[lo:hi] = spike
    return out


# ------------------------------------------------------------------------------------ packing


@dataclass(frozen=True)
class PackedRows:
    """Which entries of a ``[T', B, N]`` block call are computed, in (t, b, n) order."""

    flat: Tensor  # [M] long: index into the flattened [T' * B * N] entries
    token: Tensor  # [M] long: b * N + n, the row of the LIF state buffers
    segment: Tensor  # [M] long: t * B + b, the attention group (tokens of one image at one step)
    step: Tensor  # [M] long: t
    bounds: list[int]  # rows of step t are [bounds[t], bounds[t + 1])
    on: Tensor  # [M] float: the policy's active value (0 for holes: computed only to carry LIF state)
    computed_last: Tensor  # [B * N] bool: tokens computed at the call's last step

    @property
    def size(self) -> int:
        return self.flat.numel()


def pack_rows(active: Tensor) -> PackedRows:
    """Pack the entries a block call must compute from the policy's ``active`` [T', B, N].

    An entry is computed when the token is active at that step or at any later step of the call
    (holes are filled, see the module docstring). ``nonzero`` returns indices in row-major order, so
    rows come sorted by step and, within a step, by image: each step is one contiguous slice."""
    T, B, N = active.shape
    on = active > 0
    # A suffix "any": computed[t] = any(on[t:]); flip, cumulative count, flip back.
    computed = torch.cumsum(on.flip(0).to(torch.int32), 0).flip(0) > 0
    flat = computed.reshape(-1).nonzero().squeeze(1)
    per_step = computed.reshape(T, -1).sum(1)
    bounds = [0] + torch.cumsum(per_step, 0).tolist()
    return PackedRows(
        flat=flat,
        token=flat % (B * N),
        segment=flat // N,
        step=flat // (B * N),
        bounds=bounds,
        on=active.reshape(-1).index_select(0, flat),
        computed_last=computed[-1].reshape(-1),
    )


def _scatter_rows(dense: Tensor, rows: PackedRows, values: Tensor) -> Tensor:
    """A copy of ``dense`` [T', B, N, C] with the packed rows replaced by ``values`` [M, C]."""
    C = dense.shape[-1]
    return dense.reshape(-1, C).index_copy(0, rows.flat, values).view(dense.shape)


# ---------------------------------------------------------------------------------- attention


def _bucket_widths(counts: Tensor) -> Tensor:
    """Padded length of each segment: its row count rounded up to a power of two (capped at the
    largest count), so padding at most doubles the work and only ~log2(N) distinct widths occur."""
    c = counts.clamp_min(1).to(torch.float32)  # exact: log2 of a power of two is an integer
    pow2 = torch.exp2(torch.ceil(torch.log2(c))).to(counts.dtype)
    return torch.where(counts > 0, pow2.clamp_max(int(counts.max())), 0)


def segment_linear_attention(q: Tensor, k: Tensor, v: Tensor, segment: Tensor, num_segments: int, heads: int,
                             scale: float, key_weight: Tensor | None = None) -> Tensor:
    """Softmax-free multi-head attention within segments of packed rows.

    ``out[m] = scale * q[m] @ sum_{j : segment[j] = segment[m]} key_weight[j] * k[j]^T v[j]`` per head,
    which equals ``(Q K^T * scale * size) V`` of the dense block restricted to the segment's rows.
    ``q``, ``k``, ``v`` are [M, C] with C = heads * d; ``segment`` [M] long in [0, num_segments), and
    the rows must be grouped by segment in ascending order (``pack_rows`` produces that order).

    Segments are scattered into zero-padded batches and multiplied with ``bmm``: one batch per
    power-of-two width, so the padded size is at most 2M and the loop runs over ~log2(N) widths.
    (Summing outer products ``k_j v_j^T`` with ``index_add_`` is also linear in M but materialises
    M * C * d values and runs without BLAS: 2-2.5x slower on CPU at 49 tokens, dim 128, 8 heads.)"""
    M, C = q.shape
    d = C // heads
    if key_weight is not None:
        k = k * key_weight.to(k.dtype).unsqueeze(1)
    counts = torch.bincount(segment, minlength=num_segments)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(M, device=q.device) - start[segment]  # position of each row in its segment
    row_width = _bucket_widths(counts)[segment]
    out = torch.empty_like(q)
    for width in torch.unique(row_width).tolist():
        rows = (row_width == width).nonzero().squeeze(1)
        local = torch.unique_consecutive(segment[rows], return_inverse=True)[1]  # segments renumbered 0..S'-1
        n_seg = int(local[-1]) + 1
        padded = q.new_zeros(3, n_seg, width, C)
        padded[:, local, rank[rows]] = torch.stack([q[rows], k[rows], v[rows]])
        qp, kp, vp = padded.view(3, n_seg, width, heads, d).transpose(2, 3)  # each [S', h, width, d]
        o = qp @ (kp.transpose(-1, -2) @ vp)  # [S', h, width, d]: Q (K^T V), padded rows are zero
        out[rows] = o.transpose(1, 2)[local, rank[rows]].reshape(-1, C)
    return out * scale


# ------------------------------------------------------------------------------------ blocks


class CompactBlock:
    """Stands in for one backbone block inside ``TokenPolicy.forward``: same call signature and return
    values (dense residual stream and dense key spikes), but only the packed rows are computed, by the
    block's own ``forward_packed`` (the backbone protocol, ``backbone.py``).

    One instance lives for one forward pass: its LIF state buffers persist between calls, which is
    what time-major halting (one call per timestep) needs."""

    def __init__(self, block: nn.Module, *, need_keys: bool):
        if not hasattr(block, "forward_packed"):
            raise NotImplementedError(f"compacted path: {type(block).__name__} has no forward_packed")
        self.block, self.need_keys = block, need_keys
        self._state: dict[str, Tensor] = {}
        self._skipped: Tensor | None = None  # [B * N] bool: tokens left uncomputed at some earlier step

    def __call__(self, z: Tensor, ctx: Context, active: Tensor | None = None,
                 size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        T, B, N, C = z.shape
        if active is None:
            active = z.new_ones(T, B, N)
        rows = pack_rows(active)
        self._check_state_is_exact(rows)
        if rows.size == 0:
            return z, z.new_zeros(()).expand_as(z)
        x = z.reshape(-1, C).index_select(0, rows.flat)
        weight = None if size is None else size.reshape(-1).index_select(0, rows.flat)
        x, k = self.block.forward_packed(x, PackedCall(rows, ctx, self._state, weight, T * B))
        keys = _scatter_rows(torch.zeros_like(z), rows, k) if self.need_keys else z.new_zeros(()).expand_as(z)
        return _scatter_rows(z, rows, x), keys

    def _check_state_is_exact(self, rows: PackedRows) -> None:
        """Across calls (time-major halting) a token left out at one step must stay out: its skipped
        LIF update cannot be replayed. Halting is monotone, so this never fires for the policies in
        ``policies/tokens.py``; it guards against a future policy silently giving different logits."""
        if self._skipped is not None and rows.size and bool(self._skipped.index_select(0, rows.token).any()):
            raise NotImplementedError("compacted path: a token resumed after being skipped in an earlier "
                                      "call; its neuron state would differ from the masked path")
        skipped = ~rows.computed_last
        self._skipped = skipped if self._skipped is None else self._skipped | skipped


@dataclass
class PackedCall:
    """What a block's ``forward_packed`` computes with: the packed rows of one block call, and the operations
    that differ from the dense block on them (LIF with per-token state, attention within segments)."""

    rows: PackedRows
    ctx: Context
    state: dict[str, Tensor]  # LIF layer name -> [B * N, C] membrane potentials (persist across calls)
    key_weight: Tensor | None  # [M] merged-token sizes of the packed rows, or None
    num_segments: int  # T' * B: one attention segment per (step, image)

    def linear_lif(self, layer: LinearBNLIF, x: Tensor) -> Tensor:
        """``LinearBNLIF`` on packed rows: the model's own Linear and (eval) BN, then the LIF."""
        return self.lif(layer.name, layer.lif, layer.bn(layer.fc(x)))

    def lif(self, name: str, node: neuron.LIFNode, y: Tensor) -> Tensor:
        """LIF on packed rows, then the masks of the masked path: the policy's active value (0 for
        holes) and the layer's time mask (``Context.fire`` uses the layer name as its group)."""
        p = lif_params(node)
        state = self.state.get(name)
        if state is None:  # first call of this forward: one row per (image, token)
            state = y.new_full((int(self.rows.computed_last.numel()), y.shape[1]), lif_initial_value(p))
            self.state[name] = state
        spikes = lif_packed(y, state, self.rows, p)
        gate = self.rows.on.to(y.dtype)
        m = self.ctx.time_mask(name)
        if m is not None:
            gate = gate * m.to(y.dtype).index_select(0, self.rows.step)
        return spikes * gate.unsqueeze(1)

    def linear_bn(self, layer: LinearBN, x: Tensor) -> Tensor:
        """``LinearBN`` on packed rows (its update is gated by the caller: ``gate``)."""
        return layer.bn(layer.fc(x))

    def gate(self, y: Tensor) -> Tensor:
        """A real-valued residual update on packed rows, zero for holes (as the masked path's inactive tokens)."""
        return y * self.rows.on.to(y.dtype).unsqueeze(1)

    def segment_sum(self, y: Tensor) -> Tensor:
        """``[num_segments, C]``: the sum of ``y`` [M, C] over each (step, image)'s rows, merged tokens weighted by
        their size (an empty segment sums to zero, as the masked path's all-inactive step)."""
        if self.key_weight is not None:
            y = y * self.key_weight.to(y.dtype).unsqueeze(1)
        return y.new_zeros(self.num_segments, y.shape[1]).index_add_(0, self.rows.segment, y)

    def segment_lif(self, name: str, node: neuron.LIFNode, y: Tensor) -> Tensor:
        """A LIF on one value per (step, image) ``y`` [T' * B, C] (state per image, persisting across calls),
        time-masked like ``Context.fire``."""
        p = lif_params(node)
        B = self.num_segments // (len(self.rows.bounds) - 1)
        state = self.state.get(name)
        if state is None:
            state = y.new_full((B, y.shape[1]), lif_initial_value(p))
            self.state[name] = state
        m = self.ctx.time_mask(name)
        out = []
        for t, yt in enumerate(y.view(-1, B, y.shape[1])):
            spike, state = lif_step(yt, state, p)
            out.append(spike if m is None else spike * m[t].to(y.dtype))
        self.state[name] = state
        return torch.cat(out)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float) -> Tensor:
        """Softmax-free attention within each (step, image), keys weighted by merged-token size."""
        return segment_linear_attention(q, k, v, self.rows.segment, self.num_segments, heads, scale, self.key_weight)


# ------------------------------------------------------------------------------------- model


def _need_keys(policy: TokenPolicy) -> bool:
    mc = policy.cfg.merge
    return mc is not None and mc.metric == "keys"


@torch.no_grad()
def compact_forward(model: Backbone, x: Tensor) -> Tensor:
    """Logits [B, K] of ``model(x).logits`` computed on active (token, timestep) entries only.

    Requires ``model.eval()``: BatchNorm must use its running statistics, so that each token's rows
    are independent of which other rows are in the packed batch (and the policies are deterministic).
    Supports every ``TokenPolicy`` setting (2-D halting in either order, 1-D halting, ACT or carry
    readout, merges by r or threshold, per all_steps or timestep, any metric or mode, drop/select
    keep masks) and time masks; without a token policy it runs the model itself. The policy's own
    ``forward`` makes every decision, so they are those of the masked path by construction.

    Resets all neuron states (spikingjelly ``reset_net``) before and after."""
    training = [name for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"compact_forward needs model.eval() (BatchNorm must use running statistics); "
                         f"in training mode: {training[0] or 'model'}")
    policy = model.token_policy
    functional.reset_net(model)
    try:
        if policy is None:
            return model(x).logits
        if not isinstance(policy, TokenPolicy):
            raise NotImplementedError(f"compact_forward: unsupported token policy {type(policy).__name__}")
        masks = model.time_policy.layer_masks() if model.time_policy is not None else None
        ctx = Context(T=model.T, time_masks=masks)
        z = model.embed(x, ctx)
        blocks = [CompactBlock(b, need_keys=_need_keys(policy)) for b in model.blocks]
        # a multi-stage backbone's transitions run on the dense map, halted and merged-away tokens included (as in
        # the masked path); only the blocks are packed
        return model.readout(policy(blocks, z, ctx, **model.stage_kwargs()), ctx)[0]  # Backbone.forward's readout
    finally:
        functional.reset_net(model)


@torch.no_grad()
def active_fraction(model: Backbone, x: Tensor) -> float:
    """Mean fraction of (block, timestep, token) units the masked path processes on ``x``:
    ``ModelOutput.active_tokens`` [B, L, T] summed over everything / (B * L * T * N); a merged token
    counts once. Runs the model in its current mode and resets its neurons afterwards."""
    try:
        out = model(x)
    finally:
        functional.reset_net(model)
    return float(out.active_tokens.sum()) / (out.active_tokens.shape[0] * model.dense_token_units)
