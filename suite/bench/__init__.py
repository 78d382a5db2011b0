"""``spikesuite bench``: wall-clock ratios measured side by side in one process.

Three parts, each a ratio of cases timed in the same process, interleaved round by round (so a load
change on a shared machine hits every case alike), after warm-up, reported as the median over rounds:

1. **Training step** (``train_step.py``: forward + backward + AdamW step + ``reset_net``) of ours vs spikingjelly 2.0's
   peer at the same shape (same parameter count and token count, both checked), for each backbone: our Spikformer
   vs ``model.spikformer.Spikformer`` (cases ``ours``, ``spikingjelly``) and our Spike-driven Transformer v1 vs
   ``model.spike_driven_transformer.SpikeDrivenTransformer`` (cases ``sdt/ours``, ``sdt/spikingjelly``). Ratio =
   median over rounds of ours / spikingjelly (< 1: ours is faster).
2. **Inference images/s** (``inference.py``, calibration in ``calibrate.py``) at active-token fractions f ~ 1, 0.5,
   0.25 for one set of weights per configuration (Spikformer and SDT, each with ``stem: per_step`` and ``stem:
   once``; Spikformer per_step keeps the unprefixed case names, the others are prefixed ``sdt/``,
   ``spikformer-once/``, ``sdt-once/``): dense (no token policy), masked halting (``model(x)``: inactive tokens
   are zeroed, not removed) and compacted halting (``compact_forward``: inactive tokens removed). f is driven with
   the evaluation-time ``beta_offset`` (bisection on ``active_fraction``), not by training. Ratio = speedup vs
   dense (median over rounds of dense time / case time), next to the ideal 1/f. The stem (``model.embed``) runs
   before any token policy and costs the same in every case, so the end-to-end ceiling is Amdahl's
   ``1 / (s + (1 - s) f)`` with ``s`` the stem's share of the dense time; the stem alone is timed too, each
   compacted speedup is reported as a fraction of its ceiling, and the *blocks-only* speedup
   ``(dense - stem) / (case - stem)`` (medians) beside.
3. **End-to-end** (``study.py``) wall time of the smoke study (``studies/smoke.yaml``) in a fresh results
   directory and of its rerun (every run cached), each a ``python -m suite run ... --no-progress`` subprocess
   (imports, data, training, evaluation, MLflow, report). Ratio = time / target.

4. **Throughput** (``throughput.py``): the suite's training step eager vs compiled vs the default
   (``train.compile: auto``), evaluation with and without counting, at the Fashion-MNIST reference configuration
   and at part 1's CIFAR shape. Ratios = eager / case step time; counted evaluation images/s / training images/s.

Shapes, timing, the result table and the targets are in ``common.py``; the figure in ``figure.py``.

Outputs under ``out`` (default ``results/bench``): ``bench.csv`` (tidy: part, case, device, metric, median,
iqr, ratio, n; ``part`` is 1 to 4 as above), ``bench.png`` / ``bench.pdf`` (no timestamps), ``machine.json``
(CPU, cores, threads, versions, device), and ``profile.txt`` with the top operators of any case whose target was
missed. On CUDA the forward passes run under bf16 autocast and every timing is bracketed by a synchronize.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from suite.bench.common import (
    COLUMNS,
    FULL,
    INFERENCE,
    PARTS,
    QUICK,
    STUDY,
    THROUGHPUT,
    TRAIN_STEP,
    BenchConfig,
    BenchResult,
    BenchShape,
    machine_info,
    summary_table,
    write_csv,
)
from suite.bench.figure import plot
from suite.bench.inference import bench_inference
from suite.bench.study import bench_study
from suite.bench.throughput import bench_throughput
from suite.bench.train_step import bench_train_step

__all__ = ["COLUMNS", "FULL", "QUICK", "BenchConfig", "BenchResult", "BenchShape", "run_bench", "summary_table"]


def run_bench(out: Path | str = Path("results/bench"), *, quick: bool = False, device: str = "cpu",
              parts: Iterable[int] = PARTS, profile: bool = True, config: BenchConfig | None = None,
              log: Callable[[str], None] = print) -> BenchResult:
    """Run the benchmark parts, print the ratios and a target summary, write CSV, figure and machine.json."""
    parts = tuple(sorted(set(int(p) for p in parts)))
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f"parts must be a subset of {PARTS}, got {parts}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    cfg = config or (QUICK if quick else FULL)
    profile = profile and not quick  # quick shapes say nothing about the targets
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = BenchResult()
    if quick:
        res.notes.append("quick shapes and a tiny study: this checks that everything runs; the targets apply to "
                         "the full benchmark only")
    info = machine_info(dev, cfg, quick)
    log(f"spikesuite bench on {info['device_name']} ({dev}), {info['cpu_cores_usable']} usable cores, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}, spikingjelly {info['spikingjelly']}"
        f"{', bf16 autocast' if dev.type == 'cuda' else ''}")
    if TRAIN_STEP in parts:
        bench_train_step(cfg, dev, res, log, profile)
    if INFERENCE in parts:
        bench_inference(cfg, dev, res, log, profile)
    if STUDY in parts:
        bench_study(quick, dev, res, log, profile)
    if THROUGHPUT in parts:
        bench_throughput(cfg, quick, dev, res, log)
    if hasattr(os, "getloadavg"):  # other jobs on a shared machine: at start (machine_info) and at the end
        info["load_average_1m_at_end"] = os.getloadavg()[0]
    res.paths.append(write_csv(res.rows, out / "bench.csv"))
    res.paths += plot(res.rows, out, str(dev))
    if res.calibration:
        info["part2_calibration"] = res.calibration
    (out / "machine.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    res.paths.append(out / "machine.json")
    prof_path = out / "profile.txt"
    if res.profiles:
        prof_path.write_text("".join(f"== {k}\n{v}\n" for k, v in res.profiles.items()), encoding="utf-8")
        res.paths.append(prof_path)
    elif prof_path.exists():
        prof_path.unlink()
    log("")
    log(summary_table(res))
    for p in res.paths:
        log(f"wrote {p}")
    return res
