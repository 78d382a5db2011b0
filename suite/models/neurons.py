"""One factory for every spiking neuron in the suite (spikingjelly 2.0 ``LIFNode``, multi-step), and the choice of
the kernel its LIF layers run on (``model.neuron.backend``).

spikingjelly 2.0 removed the ``backend=`` argument that the official Spikformer code passes (``backend='cupy'``):
on CPU its LIF runs one torch implementation; on CUDA it picks one of its own implementations per device, process
wide (``SJ_LIF_CUDA_IMPLEMENTATION``): ``cuda`` (compiled CUDA kernels, the successor of 1.x's CuPy backend; the
suite calls it ``cupy``), ``triton``, or ``torch``, in that order of speed when left to itself. ``use_backend``
sets that choice before a run trains; ``backend_in_use`` reads back what spikingjelly actually selected, which the
run's records keep. Its fast kernels need fp32 membrane potentials (a bf16 potential falls back to the torch
reference), so every LIF here takes its input in fp32 under autocast.
"""

from __future__ import annotations

import importlib

import torch
from spikingjelly.activation_based import neuron, surrogate

from suite.config import NeuronConfig
from suite.models.lif_fused import LIFNode

# the suite's name -> spikingjelly 2.0's implementation name, fastest first (spikingjelly's own CUDA priority)
SJ_NAMES = {"cupy": "cuda", "triton": "triton", "torch": "torch"}
SUITE_NAMES = {v: k for k, v in SJ_NAMES.items()}
_SJ_MODULES = {"cuda": "native", "triton": "triton", "torch": "cpu"}  # spikingjelly._ops.lif.<module>


def _fp32_input(module: neuron.LIFNode, args: tuple) -> tuple | None:
    """Forward pre-hook: a lower-precision input (autocast) reaches the neuron as fp32, so its potential is fp32."""
    x = args[0]
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return (x.float(), *args[1:])
    return None


# model.neuron.surrogate -> spikingjelly's surrogate class (triangle: PiecewiseQuadratic, whose gradient is the
# triangle alpha - alpha^2 |x|; rectangle: Rect, the window alpha * 1{|x| < 0.5 / alpha})
SURROGATES = {"sigmoid": surrogate.Sigmoid, "atan": surrogate.ATan, "triangle": surrogate.PiecewiseQuadratic,
              "rectangle": surrogate.Rect}


def make_lif(cfg: NeuronConfig, *, v_threshold: float | None = None) -> neuron.BaseNode:
    """A multi-step spiking neuron of ``model.neuron.type`` (LIF by default; PLIF with a learnable tau; IF);
    ``v_threshold`` overrides the config (attention LIF uses 0.5)."""
    common = dict(
        v_threshold=cfg.v_threshold if v_threshold is None else v_threshold,
        v_reset=cfg.v_reset,
        surrogate_function=SURROGATES[cfg.surrogate](alpha=cfg.alpha),
        detach_reset=cfg.detach_reset,
        step_mode="m",
    )
    if cfg.type == "plif":
        lif = neuron.ParametricLIFNode(init_tau=cfg.tau, **common)
    elif cfg.type == "if":
        lif = neuron.IFNode(**common)
    else:  # spikingjelly's LIF with a faster forward without gradients (suite.models.lif_fused)
        lif = LIFNode(tau=cfg.tau, **common)
    lif.register_forward_pre_hook(_fp32_input)
    return lif


def _selection():
    from spikingjelly._ops.lif import _selection as selection

    return selection


def available_backends(device: torch.device) -> dict[str, str | None]:
    """Each backend (suite names) on ``device``: None when it can run there, else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        why = f"needs a CUDA device (got {device}); spikingjelly runs its torch implementation on the CPU"
        return {"cupy": why, "triton": why, "torch": None}
    if not torch.cuda.is_available():
        why = "CUDA is not available (torch.cuda.is_available() is False)"
        return {name: why for name in SJ_NAMES}
    out: dict[str, str | None] = {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    for name, sj in SJ_NAMES.items():
        try:
            module = importlib.import_module(f"spikingjelly._ops.lif.{_SJ_MODULES[sj]}")
            if sj == "cuda":
                from spikingjelly._ops.native_loader import _check_native_device

                _check_native_device(module._build_info, index)
            out[name] = None
        except (ImportError, OSError, RuntimeError, AttributeError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def resolve_backend(choice: str, device: torch.device) -> str:
    """The backend ``model.neuron.backend: choice`` runs on ``device``: ``auto`` is the fastest available there.
    Raises ValueError with the reason when an explicit choice is unavailable."""
    avail = available_backends(device)
    if choice == "auto":
        return next(name for name in SJ_NAMES if avail[name] is None) if any(v is None for v in avail.values()) \
            else "torch"
    if avail.get(choice) is not None:
        ok = ", ".join(n for n, why in avail.items() if why is None) or "none"
        raise ValueError(f"model.neuron.backend: {choice} is not available on {device}: {avail[choice]} "
                         f"(available here: {ok}; auto picks the fastest)")
    return choice


def use_backend(choice: str, device: torch.device) -> str:
    """Make spikingjelly's LIF run ``choice`` on ``device`` from now on in this process; returns the backend it
    resolves to (for auto, the fastest available: what spikingjelly's own auto picks)."""
    name = resolve_backend(choice, device)
    if torch.device(device).type == "cuda":
        sel = _selection()
        # auto stays spikingjelly's own auto (same order; it may still fall back where a kernel refuses a shape)
        wanted = "auto" if choice == "auto" else SJ_NAMES[name]
        if sel._requested != wanted:
            sel._requested = wanted
            sel._selections.clear()  # spikingjelly caches its choice per device
            sel._compiled_selections.clear()
    return name


def backend_in_use(device: torch.device) -> str:
    """What spikingjelly's LIF ran on ``device`` in this process, in the suite's names: on CUDA its cached selection
    (``torch (reference fallback)`` where an execution profile needed the reference); on CPU always torch."""
    device = torch.device(device)
    if device.type != "cuda":
        return "torch"
    sel = _selection()
    index = device.index if device.index is not None else torch.cuda.current_device()
    used = [SUITE_NAMES.get(impl.name, impl.name) for key, impl in sel._selections.items()
            if key == index and impl is not None]
    fallback = any(isinstance(key, tuple) and key[0] == index for key in sel._selections)
    if fallback:
        used.append("torch (reference fallback)")
    return " + ".join(used) or f"not run yet ({SUITE_NAMES.get(sel._requested, sel._requested)} requested)"
