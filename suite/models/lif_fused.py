"""The multi-step LIF without autograd (evaluation, validation) in fewer passes than spikingjelly's reference loop.

On the CPU, spikingjelly 2.0's ``LIFNode`` runs its torch reference loop even without gradients: per step it
computes the charge, the surrogate's spike through an autograd function, the reset as ``s * v_reset + (1 - s) * h``
(three passes) and stacks spikes, potentials and charges. In a counted evaluation forward at the Fashion-MNIST
reference configuration that loop is ~40 % of the time (docs/throughput.md). ``LIFNode`` here (a subclass) keeps
spikingjelly's forward whenever a gradient may be needed, under ``torch.compile``, off the CPU, and for anything
but the hard-reset, ``decay_input`` LIF without a stored potential sequence; otherwise it runs the same arithmetic
with the reset as one ``where`` and spikes written in place: spikes and final potentials equal spikingjelly's bit
for bit (``tests/test_lif_fused.py``; for a finite ``h``, ``s * r + (1 - s) * h`` is exactly ``r`` or ``h``).

Inside ``compiled_kernels(True)`` (evaluation and validation decide it: ``suite.train.compiled.eval_kernels``) the
same loop runs as an inductor kernel, one per input shape, compiled once per process and cached on disk: one pass
over the input per step instead of ~6, 2-6x faster at the reference shapes, and still spikingjelly's spikes bit for
bit (the loop holds no reduction to reorder; ``tests/test_lif_fused.py``). Where compiling fails (no C++ compiler)
the eager loop runs and a warning says so once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from spikingjelly.activation_based import neuron
from torch import Tensor


def lif_inference(x_seq: Tensor, v: Tensor, tau: float, threshold: float, reset: float) -> tuple[Tensor, Tensor]:
    """Spikes ``[T, ...]`` and the final potential of a hard-reset, decay-input LIF (no autograd)."""
    spikes = torch.empty_like(x_seq)
    for t in range(x_seq.shape[0]):
        h = v + (x_seq[t] - (v - reset)) / tau  # spikingjelly's charge, term for term
        fired = h >= threshold  # its surrogate's forward: (h - threshold) >= 0, the same comparison
        spikes[t] = fired
        v = torch.where(fired, torch.tensor(reset, dtype=h.dtype), h)
    return spikes, v


log = logging.getLogger("spikesuite")
# One kernel per (shape, tau, threshold, reset): a model has a few LIF shapes, times the last batch's and the
# time-major halting's one-step shapes; dynamo's default limit of 8 recompiles per function is too few.
RECOMPILE_LIMIT = 64
_kernel: dict[str, Callable | bool | None] = {"enabled": False, "fn": None, "failed": False}


@contextlib.contextmanager
def compiled_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, no-gradient LIF forwards run ``lif_inference`` compiled (when ``enabled``)."""
    before = _kernel["enabled"]
    _kernel["enabled"] = enabled
    try:
        yield
    finally:
        _kernel["enabled"] = before


def _run(x_seq: Tensor, v: Tensor, tau: float, threshold: float, reset: float) -> tuple[Tensor, Tensor]:
    if not _kernel["enabled"] or _kernel["failed"]:
        return lif_inference(x_seq, v, tau, threshold, reset)
    if _kernel["fn"] is None:
        _kernel["fn"] = torch.compile(lif_inference, dynamic=False)
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return _kernel["fn"](x_seq, v, tau, threshold, reset)
    except Exception as e:  # noqa: BLE001 - inductor's failures (no compiler, a broken toolchain) vary by host
        _kernel["failed"] = True
        log.warning("evaluation LIF kernel not compiled (%s: %s); running it eagerly", type(e).__name__, e)
        return lif_inference(x_seq, v, tau, threshold, reset)


class LIFNode(neuron.LIFNode):
    """spikingjelly's multi-step ``LIFNode``; without gradients on the CPU its forward is ``lif_inference``."""

    def _fast(self, x_seq: Tensor) -> bool:
        return (not torch.is_grad_enabled() and x_seq.device.type == "cpu" and x_seq.dtype == torch.float32
                and self.decay_input and self.v_reset is not None and not self.store_v_seq
                and self._neuron_precision is None and not torch.compiler.is_compiling())

    def multi_step_forward(self, x_seq: Tensor, *args: Tensor, **kwargs: object) -> Tensor:
        if args or kwargs or not self._fast(x_seq):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        (v,) = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
        if not isinstance(v, Tensor) or v.dtype != torch.float32 or v.shape != x_seq.shape[1:]:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        spikes, v_final = _run(x_seq, v, float(self.tau), float(self.v_threshold), float(self.v_reset))
        self._memories["v"] = v_final
        self.v_seq = None
        return spikes
