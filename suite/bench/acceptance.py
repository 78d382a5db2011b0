"""The GPU acceptance run (``nox -s gpu``; ``python -m suite.bench.acceptance``): everything the suite claims about
a GPU, checked in one command of at most about ten minutes on one GPU, written to ``results/bench/cuda/<hardware>/``.

Steps, each timed and recorded pass/fail with its numbers (``acceptance.json``, ``acceptance.md``):

1. ``doctor``: the ``spikesuite doctor`` screen for ``--device cuda`` (``doctor.txt``); no problem allowed.
2. ``bench``: ``spikesuite bench --device cuda`` (training step, inference, study end to end; ``bench/``).
3. ``study_spikformer_4_384`` and ``study_sdt_2_512``: one epoch of a dense and an ACT variant of CIFAR-shaped
   Spikformer-4-384 and SDT-2-512 on synthetic CIFAR-shaped data (3x32x32, 10 classes), through ``run_study``; the
   runs table is kept (``runs_<study>.csv``) with the LIF kernel and precision each run recorded.
4. ``compacted_equals_masked``: a halting model's compacted logits equal its masked logits on the GPU (fp32, with
   under 90 % of the units active).
5. ``bf16_vs_fp32_spikes``: per-layer spike counts of one fixed batch, fp32 vs bf16 autocast (same weights).
6. ``ddp_nccl``: one run on every visible GPU (``nproc_per_run`` = GPU count) when there are two or more; on one
   GPU, a one-rank NCCL process group training a DDP model (what a single-GPU node can check of NCCL).

Without CUDA it refuses at once (exit 2) and writes nothing. The steps take a device and a shape, so the tests run
them on the CPU with tiny shapes (``TINY``); ``main`` alone insists on CUDA.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Shapes:
    """What the studies and checks run at."""

    train_size: int
    test_size: int
    image_size: int
    batch_size: int
    spikformer: tuple[int, int, int]  # depth, dim, heads
    sdt: tuple[int, int, int]
    T: int


FULL = Shapes(train_size=2048, test_size=512, image_size=32, batch_size=64, spikformer=(4, 384, 12),
              sdt=(2, 512, 8), T=4)
TINY = Shapes(train_size=64, test_size=32, image_size=16, batch_size=32, spikformer=(2, 32, 4), sdt=(1, 16, 2), T=4)


def hardware_name(device: torch.device) -> str:
    """A folder name for the hardware: the GPU's name (CPU model on the CPU), lower case, dashes."""
    from suite.environment import cpu_model

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def study_text(backbone: str, shapes: Shapes) -> str:
    """A one-epoch CIFAR-shaped study of ``backbone`` (dense and ACT) on synthetic data."""
    depth, dim, heads = getattr(shapes, backbone)
    return f"""
name: gpu_{backbone}_{depth}_{dim}
dataset: {{name: synthetic, synthetic: {{num_classes: 10, image_size: {shapes.image_size}, channels: 3,
           train_size: {shapes.train_size}, test_size: {shapes.test_size}}}}}
model: {{backbone: {backbone}, depth: {depth}, dim: {dim}, heads: {heads}, T: {shapes.T}}}
train: {{epochs: 1, batch_size: {shapes.batch_size}, warmup_epochs: 0}}
eval: {{heatmap_images: 0}}
tracking: {{enabled: false}}
variants:
  dense: {{}}
  act: {{tokens: {{halting: {{}}}}}}
"""


def run_study_step(backbone: str, shapes: Shapes, device: torch.device, out: Path, work: Path,
                   nproc: int | None = None) -> dict[str, Any]:
    """Train and evaluate the study; keep its runs table (with how each run ran) in ``out``."""
    import pandas as pd

    from suite.config import parse_study
    from suite.records import read_json
    from suite.run import run_study

    study = parse_study(study_text(backbone, shapes))
    summary = run_study(study, work, progress=False, device=str(device), nproc_per_run=nproc)
    runs = pd.read_csv(summary.study_dir / "runs.csv")
    ran = {rid: read_json(summary.study_dir / rid / "status.json") or {} for rid in runs.run_id}
    runs["neuron_backend"] = [ran[r].get("neuron_backend", "") for r in runs.run_id]
    runs["amp"] = [ran[r].get("amp", "") for r in runs.run_id]
    runs.to_csv(out / f"runs_{study.name}{'_ddp' if nproc else ''}.csv", index=False)
    keep = ["variant", "accuracy", "train_time_s", "neuron_backend", "amp"]  # images/s: spikesuite bench
    return {"ok": not summary.failed and len(summary.done) == len(runs), "failed": summary.failed,
            "runs": runs[[c for c in keep if c in runs]].to_dict("records")}


@torch.no_grad()
def _halting_model(shapes: Shapes, device: torch.device, seed: int = 0):
    """A Spikformer with ACT halting, its BatchNorm statistics those of the fixed batch (an untrained model with
    BN at its initial statistics hardly spikes), in eval mode."""
    from spikingjelly.activation_based import functional

    from suite.config import ModelConfig, TimeConfig, TokenConfig
    from suite.models import build_model

    depth, dim, heads = shapes.spikformer
    torch.manual_seed(seed)
    tokens = TokenConfig.model_validate({"halting": {"beta": 10.0}})  # halts early: many inactive units
    model = build_model(ModelConfig(depth=depth, dim=dim, heads=heads, T=shapes.T), tokens, TimeConfig(),
                        in_channels=3, image_size=(shapes.image_size, shapes.image_size), num_classes=10).to(device)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average over the calibration passes
    model.train()
    for _ in range(3):
        model(_batch(shapes, device))
        functional.reset_net(model)
    return model.eval()


def _batch(shapes: Shapes, device: torch.device, n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, shapes.image_size, shapes.image_size, generator=g).to(device)


@torch.no_grad()
def compacted_equals_masked(shapes: Shapes, device: torch.device) -> dict[str, Any]:
    """The compacted path's logits equal the masked path's for a halting model (fp32, eval mode)."""
    from spikingjelly.activation_based import functional

    from suite.models.compact import active_fraction, compact_forward

    model = _halting_model(shapes, device)
    x = _batch(shapes, device)
    masked = model(x).logits
    functional.reset_net(model)
    compact = compact_forward(model, x)
    diff = float((compact - masked).abs().max())
    scale = float(masked.abs().max()) or 1.0
    active = active_fraction(model, x)
    # the equality says something only where units are inactive (compact_forward packs the active ones)
    return {"ok": diff <= 1e-4 * scale and active < 0.9, "max_abs_diff": diff, "logit_scale": scale,
            "active_fraction": active}


@torch.no_grad()
def spikes_bf16_vs_fp32(shapes: Shapes, device: torch.device) -> dict[str, Any]:
    """Spike counts per counted layer for one fixed batch, fp32 and under bf16 autocast (same weights)."""
    from spikingjelly.activation_based import functional

    from suite.train.precision import autocast

    model = _halting_model(shapes, device)
    x = _batch(shapes, device)
    counts = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with autocast(dtype, device):
            out = model(x, count=True)
        functional.reset_net(model)
        counts[name] = {k: float(v[0]) if isinstance(v, (list, tuple)) else float(v)
                        for k, v in out.ctx.spikes.items()}
    layers = {k: {"fp32": counts["fp32"][k], "bf16": counts["bf16"].get(k, float("nan")),
                  "rel_diff": abs(counts["bf16"].get(k, 0.0) - counts["fp32"][k]) / max(counts["fp32"][k], 1.0)}
              for k in counts["fp32"]}
    total = {p: sum(c.values()) for p, c in counts.items()}
    rel = abs(total["bf16"] - total["fp32"]) / max(total["fp32"], 1.0)
    # a measurement, not a bound from a source: bf16 rounds membrane inputs, so spikes near threshold flip; the
    # step fails only when the totals differ by more than 5 %, which would make energy comparisons meaningless
    return {"ok": rel <= 0.05, "total_fp32": total["fp32"], "total_bf16": total["bf16"], "total_rel_diff": rel,
            "max_layer_rel_diff": max((v["rel_diff"] for v in layers.values()), default=0.0), "layers": layers}


def ddp_nccl(shapes: Shapes, device: torch.device, out: Path, work: Path) -> dict[str, Any]:
    """Every visible GPU on one run (>= 2 GPUs); else a one-rank NCCL group training a DDP model."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus >= 2:
        res = run_study_step("spikformer", shapes, device, out, work / "ddp", nproc=gpus)
        return {**res, "world_size": gpus, "backend": "nccl"}
    return _one_rank_group("nccl" if device.type == "cuda" else "gloo", device)


def _one_rank_group(backend: str, device: torch.device) -> dict[str, Any]:
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(torch.nn.Linear(8, 2).to(device),
                                        device_ids=[device.index or 0] if device.type == "cuda" else None)
        loss = model(torch.ones(4, 8, device=device)).sum()
        loss.backward()
        t = torch.ones(1, device=device)
        dist.all_reduce(t)
        return {"ok": float(t) == 1.0 and model.module.weight.grad is not None, "world_size": 1,
                "backend": dist.get_backend(), "note": "one GPU: a one-rank group (several ranks need several GPUs)"}
    finally:
        dist.destroy_process_group()


def timed(name: str, fn: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """Run one step; an exception is a failed step with its traceback, not the end of the run."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as exc:  # noqa: BLE001 - recorded; the other steps still run
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"{'PASS' if res['ok'] else 'FAIL'} {name} ({res['seconds']} s)"
        + (f": {res['error']}" if "error" in res else ""))
    return res


def run_acceptance(out_root: Path, device: torch.device, shapes: Shapes = FULL, *, bench: bool = True,
                   bench_quick: bool = False, log: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Every step on ``device``; returns the hardware's folder and the results (also written there)."""
    from suite.doctor import render, run_doctor
    from suite.environment import environment

    out = out_root / hardware_name(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(json.dumps(environment(device), indent=2) + "\n")
    steps: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="spikesuite-acceptance-") as tmp:
        work = Path(tmp)

        def doctor() -> dict[str, Any]:
            checks = run_doctor(work / "results", device=str(device))
            (out / "doctor.txt").write_text(render(checks) + "\n")
            return {"ok": not any(c.problem for c in checks), "problems": [c.problem for c in checks if c.problem]}

        steps["doctor"] = timed("doctor", doctor, log)
        if bench:
            from suite.bench import run_bench

            steps["bench"] = timed("bench", lambda: {"ok": True, "targets_missed": [  # reported, not a failure
                t.name for t in run_bench(out / "bench", quick=bench_quick, device=str(device), log=log).targets
                if not t.met]}, log)
        for backbone in ("spikformer", "sdt"):
            depth, dim, _ = getattr(shapes, backbone)
            steps[f"study_{backbone}_{depth}_{dim}"] = timed(
                f"study {backbone}-{depth}-{dim}", lambda b=backbone: run_study_step(b, shapes, device, out, work),
                log)
        steps["compacted_equals_masked"] = timed("compacted == masked", lambda: compacted_equals_masked(shapes,
                                                                                                      device), log)
        steps["bf16_vs_fp32_spikes"] = timed("bf16 vs fp32 spike counts", lambda: spikes_bf16_vs_fp32(shapes, device),
                                             log)
        steps["ddp_nccl"] = timed("DDP over NCCL", lambda: ddp_nccl(shapes, device, out, work), log)
    results = {"device": str(device), "hardware": hardware_name(device), "shapes": shapes.__dict__,
               "passed": all(s["ok"] for s in steps.values()), "steps": steps}
    (out / "acceptance.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [f"# GPU acceptance on {hardware_name(device)}", "", "| step | result | seconds |", "| --- | --- | --- |"]
    lines += [f"| {k} | {'pass' if s['ok'] else 'FAIL: ' + s.get('error', 'see acceptance.json')} | {s['seconds']} |"
              for k, s in steps.items()]
    (out / "acceptance.md").write_text("\n".join(lines) + "\n")
    return out, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m suite.bench.acceptance", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/bench/cuda"), help="parent of the hardware's folder")
    p.add_argument("--no-bench", action="store_true", help="skip spikesuite bench (the longest step)")
    p.add_argument("--bench-quick", action="store_true", help="spikesuite bench --quick shapes")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"error: the GPU acceptance run needs CUDA: torch {torch.__version__} (CUDA build "
              f"{torch.version.cuda or 'none'}) sees no GPU (torch.cuda.is_available() is False). Run it on a GPU "
              "node (check nvidia-smi and CUDA_VISIBLE_DEVICES); nothing was written.", file=sys.stderr)
        return 2
    out, results = run_acceptance(args.out, torch.device("cuda"), FULL, bench=not args.no_bench,
                                  bench_quick=args.bench_quick)
    print(f"{'passed' if results['passed'] else 'FAILED'}: {out}/acceptance.md")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
