"""``train.compile: auto | on | off``: whether a run's training forward runs under ``torch.compile``, and the
persistent compile cache a study shares (docs/throughput.md).

``auto`` compiles when the run's estimated eager training time is well above the estimated compile time
(``AUTO_PAYBACK`` times it). Both estimates are deterministic for a given configuration, device type and cache
state: the training time is the model's counted FLOPs per training image (``torch.utils.flop_counter`` on a
two-image forward, x3 for forward + backward) times the images the run trains (all epochs, so a resumed run
decides as its first start did, given the same cache), at a nominal eager rate per
device type; the compile time is a cold or warm constant, warm when this cache holds a marker of the same compiled
shape (written after a compiled run's first epoch). The decision, its reason and both estimates go into the run's
``metrics.json`` (``details.compile``).

Compile is how a run executes, not what it computes (like the thread count): it stays out of run ids
(``suite.config.fields.execution_field``). Compiled kernels reduce floats in another order than eager ones, so a
compiled run's numbers agree with an eager one's within the tolerance ``tests/test_graph_breaks.py`` states, not
bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from spikingjelly.activation_based import functional
from torch import nn

from suite.train.checkpoint import get_rng, set_rng

log = logging.getLogger("spikesuite")

CACHE_ENV = "SPIKESUITE_COMPILE_CACHE"  # the cache directory, when set
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's own variable: a value the user set is used next
# Nominal eager training rates (FLOP/s, as flops_per_image counts them, x3 for a training image): 358 MFLOP per
# training image at 110 images/s on one core of the quiet 2-core CPU host (39 GFLOP/s) at the
# Fashion-MNIST reference configuration (issue 26); a GPU figure far below its peak (small, overhead-bound models).
EAGER_FLOPS = {"cpu": 40e9, "cuda": 2e12}
# Seconds the first compiled step costs: cold (nothing cached; 72 s measured at the Fashion-MNIST reference
# configuration on the CPU host) and warm (the FX graph and AOT autograd caches hit; measured in docs/throughput.md).
COMPILE_S = {"cpu": (75.0, 20.0), "cuda": (60.0, 15.0)}
COMPILE_SPEEDUP = 1.78  # measured compiled / eager step speed on the CPU host (issue 26)
AUTO_PAYBACK = 3.0  # auto compiles when estimated eager training time >= this x the compile time (break-even ~2.3)
# Evaluation's LIF kernels (``suite.models.lif_fused.compiled_kernels``): auto compiles them for an evaluation or
# validation pass of at least this many images (docs/throughput.md: the compile cost against the time they save).
EVAL_COMPILE_MIN_IMAGES = 2000
BACKEND = "inductor"  # tests swap in "aot_eager" to check the plumbing without inductor's compile time


@dataclass(frozen=True)
class CompileDecision:
    """What ``train.compile`` resolved to for one run (recorded as ``details.compile``)."""

    setting: str  # auto | on | off, as configured
    compiled: bool
    reason: str
    train_s_estimate: float | None = None  # eager training time auto estimated (None: not estimated)
    compile_s_estimate: float | None = None
    warm_cache: bool = False  # the cache held this shape when the run started
    cache_dir: str = ""
    shape_key: str = ""

    def record(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    """The persistent compile cache: ``$SPIKESUITE_COMPILE_CACHE`` when set, else a ``$TORCHINDUCTOR_CACHE_DIR`` the
    user set, else ``$XDG_CACHE_HOME/spikesuite/inductor`` (``~/.cache/spikesuite/inductor``). Inductor writes its
    own default (``/tmp/torchinductor_<user>``) into ``$TORCHINDUCTOR_CACHE_DIR`` when it first asks, so that value
    does not count as the user's: /tmp is not kept across reboots and is shared by every user of the host."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    user = os.environ.get(INDUCTOR_ENV)
    if user and os.path.abspath(user) != os.path.abspath(default_cache_dir()):
        return Path(user)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "spikesuite" / "inductor"


def use_cache() -> Path:
    """Point inductor's on-disk caches (FX graph cache, AOT autograd cache) at ``cache_dir()`` for this process,
    so later runs and processes reuse what one run compiled."""
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[INDUCTOR_ENV] = str(path)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        torch._functorch.config.enable_autograd_cache = True
    return path


def shape_key(run, in_shape: tuple[int, ...], device: torch.device) -> str:
    """What a compiled training graph depends on: the model, token and time settings, the loss, the precision, the
    input batch shape, the device type and the torch version (16 hex chars)."""
    parts = {"model": run.model.model_dump(mode="json"), "tokens": run.tokens.model_dump(mode="json"),
             "time": run.time.model_dump(mode="json"), "loss": run.train.loss, "amp": run.train.amp,
             "shape": list(in_shape), "device": device.type, "torch": torch.__version__, "backend": BACKEND}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _marker(key: str) -> Path:
    return cache_dir() / "spikesuite-shapes" / f"{key}.json"


def mark_compiled(decision: CompileDecision, first_epoch_s: float) -> None:
    """Note in the cache that this shape is compiled (auto then counts on a warm cache for it)."""
    if not decision.compiled or not decision.shape_key:
        return
    path = _marker(decision.shape_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"first_epoch_s": first_epoch_s}))
    tmp.replace(path)


@torch.no_grad()
def flops_per_image(model: nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs per image of ``model`` on the images ``x`` (eval mode, random state and neuron state restored):
    the matmuls and convolutions ``torch.utils.flop_counter`` counts."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training, rng = model.training, get_rng()
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        functional.reset_net(model)
        model.train(was_training)
        set_rng(rng)
    return counter.get_total_flops() / x.shape[0]


def decide(run, model: nn.Module, sample: torch.Tensor | None, images: int, batch: tuple[int, ...] | None,
           device: torch.device) -> CompileDecision:
    """Resolve ``run.train.compile`` for a run that trains ``images`` images (all epochs) of batch shape ``batch``;
    ``sample`` holds two training images for the FLOP count (auto only). ``off`` needs neither (both may be None)."""
    setting = run.train.compile
    key = shape_key(run, batch, device) if batch is not None else ""
    where = str(cache_dir())
    if setting != "auto":
        return CompileDecision(setting, setting == "on", f"train.compile: {setting}", cache_dir=where, shape_key=key)
    if images <= 0:
        return CompileDecision(setting, False, "auto: nothing left to train", cache_dir=where, shape_key=key)
    kind = device.type if device.type in EAGER_FLOPS else "cpu"
    warm = _marker(key).exists()
    compile_s = COMPILE_S[kind][1 if warm else 0]
    train_s = 3 * flops_per_image(model, sample) * images / EAGER_FLOPS[kind]
    compiled = train_s >= AUTO_PAYBACK * compile_s
    reason = (f"auto: estimated eager training {train_s:.0f} s {'>=' if compiled else '<'} {AUTO_PAYBACK:g} x "
              f"estimated compile {compile_s:.0f} s ({'warm' if warm else 'cold'} cache)")
    return CompileDecision(setting, compiled, reason, train_s, compile_s, warm, where, key)


def eval_kernels(setting: str, images: int, device: torch.device) -> bool:
    """Whether a no-gradient pass over ``images`` images runs the LIF as compiled kernels (the CPU only, where
    ``suite.models.lif_fused`` applies): ``on`` always, ``off`` never, ``auto`` from ``EVAL_COMPILE_MIN_IMAGES``.
    Bit for bit the eager loop's spikes, so unlike the training forward it changes no number."""
    compiled = device.type == "cpu" and (setting == "on" or (setting == "auto" and images >= EVAL_COMPILE_MIN_IMAGES))
    if compiled:
        use_cache()
    return compiled


def compile_model(module: nn.Module, backend: str | None = None) -> nn.Module:
    """``torch.compile(module)`` on the persistent cache (static shapes: a run's last, smaller batch runs eager);
    ``backend`` defaults to ``BACKEND``."""
    use_cache()
    return torch.compile(module, backend=backend or BACKEND, dynamic=False)
