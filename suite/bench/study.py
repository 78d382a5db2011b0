"""Part 3: end-to-end wall time of the smoke study (``studies/smoke.yaml``) in a fresh results directory and of
its rerun (every run cached), each a ``python -m suite run ... --no-progress`` subprocess (imports, data,
training, evaluation, MLflow, report). Ratio = time / target. ``--quick`` times a tiny study instead.
"""

from __future__ import annotations

import io
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from suite.bench.common import STUDY, TARGET_RERUN_S, TARGET_SMOKE_S, BenchResult, Log, Target

ROOT = Path(__file__).resolve().parents[2]  # the repository: suite/bench/study.py -> .
SMOKE_STUDY = ROOT / "studies" / "smoke.yaml"

QUICK_STUDY = """\
name: bench_quick
description: tiny study timed by spikesuite bench --quick
dataset: {name: digits}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 128, lr: 5.0e-3, min_lr: 1.0e-4, warmup_epochs: 0}
eval: {heatmap_images: 2}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
"""


def _suite_run(study: Path, results: Path, device: torch.device, profile_to: Path | None = None) -> tuple[float, str]:
    cmd = [sys.executable]
    if profile_to is not None:
        cmd += ["-m", "cProfile", "-o", str(profile_to)]
    cmd += ["-m", "suite", "run", str(study), "--results", str(results), "--no-progress", "--device", device.type]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return wall, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def bench_study(quick: bool, device: torch.device, res: BenchResult, log: Log, profile: bool) -> None:
    dev = str(device)
    with tempfile.TemporaryDirectory(prefix="spikesuite-bench-") as tmp:
        tmp_path = Path(tmp)
        if quick:
            study = tmp_path / "bench_quick.yaml"
            study.write_text(QUICK_STUDY, encoding="utf-8")
        else:
            study = SMOKE_STUDY
        results = tmp_path / "results"
        name = "smoke" if not quick else "quick_study"
        first, summary = _suite_run(study, results, device)
        log(f"[3] {name}: {first:.1f} s ({summary})")
        rerun, summary = _suite_run(study, results, device)
        log(f"[3] {name} rerun: {rerun:.1f} s ({summary})")
        res.add(STUDY, name, dev, "wall_s", first, 0.0, first / TARGET_SMOKE_S, 1)
        res.add(STUDY, f"{name}_rerun", dev, "wall_s", rerun, 0.0, rerun / TARGET_RERUN_S, 1)
        runs_csv = results / ("smoke" if not quick else "bench_quick") / "runs.csv"
        if runs_csv.exists():
            import pandas as pd

            runs = pd.read_csv(runs_csv)
            if "train_time_s" in runs:
                train = float(runs["train_time_s"].sum())
                log(f"[3] training inside the study: {train:.1f} s over {len(runs)} runs "
                    f"({train / first:.0%} of the first run's wall time)")
                res.add(STUDY, name, dev, "train_time_s", train, 0.0, train / first, len(runs))
        smoke_met = first < TARGET_SMOKE_S
        rerun_met = rerun < TARGET_RERUN_S
        if not quick:
            res.targets.append(Target("smoke study, fresh results dir", first, f"< {TARGET_SMOKE_S:.0f} s",
                                      smoke_met, "s"))
            res.targets.append(Target("smoke study rerun (all cached)", rerun, f"< {TARGET_RERUN_S:.0f} s",
                                      rerun_met, "s"))
        if profile and not quick and not rerun_met:
            prof = tmp_path / "rerun.prof"
            _suite_run(study, results, device, profile_to=prof)
            res.profiles["part 3: smoke rerun (cProfile, cumulative)"] = _pstats_top(prof, "cumulative")
        if profile and not quick and not smoke_met:
            res.profiles["part 3: smoke study, per-run training time (records)"] = _epoch_breakdown(
                results / "smoke", first)


def _epoch_breakdown(study_dir: Path, wall: float) -> str:
    """Where the first run's time went, from the records (no second 3-minute run under a profiler): each
    run's training time and its per-epoch times (a load spike on a shared machine shows as outliers)."""
    import pandas as pd

    lines = [f"{'run':<14}{'variant':<11}{'seed':>5}{'train s':>9}{'epoch s (median, min, max)':>30}"]
    total = 0.0
    runs = pd.read_csv(study_dir / "runs.csv")
    for r in runs.itertuples():
        hist = study_dir / str(r.run_id) / "history.csv"
        ep = pd.read_csv(hist)["epoch_time_s"] if hist.exists() else pd.Series(dtype=float)
        total += float(getattr(r, "train_time_s", 0.0) or 0.0)
        lines.append(f"{r.run_id:<14}{r.variant:<11}{int(r.seed):>5}{float(getattr(r, 'train_time_s', 0.0)):>9.1f}"
                     f"{ep.median():>12.1f}{ep.min():>9.1f}{ep.max():>9.1f}")
    lines.append(f"training {total:.1f} s of {wall:.1f} s wall; the rest: imports, data, evaluation, MLflow, report")
    return "\n".join(lines) + "\n"


def _pstats_top(path: Path, key: str, rows: int = 25) -> str:
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats(key).print_stats(rows)
    return buf.getvalue()
