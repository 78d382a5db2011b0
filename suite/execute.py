"""Run a study: expand it, skip finished runs, execute the rest (claiming each by lock, so several
processes can share a study), record failures with their reasons, mirror to MLflow, write the table.

``run_study`` is the whole pipe: study -> runs -> fit/evaluate -> records -> tracking/report.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from suite import records
from suite.data import DataBundle, check_available, load_data
from suite.environment import ENVIRONMENT, environment
from suite.study import RunSpec, Study, StudyError, apply_overrides, eval_updates, expand
from suite.tracking import Tracker

log = logging.getLogger("spikesuite")


@dataclass
class StudySummary:
    study_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> reason
    busy: list[str] = field(default_factory=list)  # claimed by another process
    wall_time_s: float = 0.0


def study_dir_for(results: Path, name: str) -> Path:
    """``results/<name>``, refusing anything that would land outside ``results``."""
    root = results.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise StudyError(name, [f"name: {name!r} would escape the results directory {root}"])
    return target


def preflight(study: Study, source: str) -> list[RunSpec]:
    """Everything that can be checked before writing anything: expansion and dataset availability."""
    specs = expand(study, source)
    seen = set()
    for spec in specs:
        key = spec.config.dataset.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            check_available(spec.config.dataset)
        except FileNotFoundError as exc:
            raise StudyError(source, [f"dataset: {exc}"]) from None
    return specs


class DataCache:
    """Datasets loaded once per process and dataset config."""

    def __init__(self) -> None:
        self._cache: dict[str, DataBundle] = {}

    def get(self, cfg) -> DataBundle:
        key = cfg.model_dump_json()
        if key not in self._cache:
            self._cache[key] = load_data(cfg)
        return self._cache[key]


def run_study(study: Study, results: Path, *, source: str = "<study>", study_file: Path | None = None,
              workers: int | None = None, parent_run: str | None = None, progress: bool | None = None,
              device: str | None = None) -> StudySummary:
    t0 = time.perf_counter()
    # Failures recorded after this moment come from this invocation (this process, or another one sharing the
    # study): they are reported, not retried again at once. Spawned workers inherit the parent's moment.
    since = float(os.environ.get("SPIKESUITE_SINCE", time.time()))
    specs = preflight(study, source)
    sdir = study_dir_for(results, study.name)
    sdir.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(sdir / "study.yaml", _study_yaml(study))
    dev = device or study.execution.device
    # where the numbers come from, for reports regenerated on another machine (the latest invocation's)
    from suite.train import pick_device

    records.atomic_write_json(sdir / ENVIRONMENT, environment(pick_device(dev)))
    tracker = Tracker(study.tracking, study.name, results)
    own_parent = parent_run is None
    if own_parent:
        parent_run = tracker.start_parent({"source": source, "runs": str(len(specs))})
    summary = StudySummary(sdir)
    n_workers = workers or study.execution.workers
    show = study.execution.progress if progress is None else progress
    procs: list[subprocess.Popen] = []
    try:
        if n_workers > 1 and study_file is not None:
            procs = _spawn_workers(study_file, results, n_workers, parent_run, dev, since)
        _run_all(study, specs, sdir, tracker, parent_run, summary, show, dev, since)
    finally:
        for p in procs:
            p.wait()
        runs, _ = records.collect_tables(sdir, specs)
        summary.failed.update({r.run_id: str(r.get("error", "")) for r in runs.itertuples()
                               if r.status == "failed" and r.run_id not in summary.failed})
        if own_parent:
            tracker.log_metrics(parent_run, {"runs_done": float((runs.status == "done").sum()),
                                             "runs_failed": float((runs.status == "failed").sum())})
            tracker.log_artifacts(parent_run, [sdir / records.RUNS_TABLE, sdir / "study.yaml"])
            tracker.finish(parent_run, "FAILED" if summary.failed else "FINISHED")
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def _study_yaml(study: Study) -> str:
    import yaml

    return yaml.safe_dump(study.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _spawn_workers(study_file: Path, results: Path, n: int, parent: str | None,
                   device: str, since: float | None = None) -> list[subprocess.Popen]:
    """n-1 extra processes on the same study (the caller is the n-th); each claims runs by lock.
    With GPUs, worker i sees only GPU i."""
    gpus = torch.cuda.device_count()
    if gpus <= 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    procs = []
    for i in range(1, n):
        env = dict(os.environ)
        if since is not None:
            env["SPIKESUITE_SINCE"] = repr(since)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        elif "OMP_NUM_THREADS" not in env:
            # CPU workers share the cores: oversubscribed OpenMP threads spin and run many times slower.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        cmd = [sys.executable, "-m", "suite", "run", str(study_file), "--results", str(results), "--workers", "1",
               "--no-progress", "--device", device]
        if parent:
            cmd += ["--parent-run", parent]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs  # the caller works too, and waits for these before writing the table


def _run_all(study: Study, specs: list[RunSpec], sdir: Path, tracker: Tracker, parent: str | None,
             summary: StudySummary, progress: bool, device: str, since: float = float("inf")) -> None:
    cache = DataCache()
    for i, spec in enumerate(specs, 1):
        run_dir = sdir / spec.run_id
        label = f"[{i}/{len(specs)}] {spec.variant} seed={spec.config.seed} {spec.run_id}"
        state = records.run_state(run_dir, spec.run_id)
        if state == "done":
            if tracker.enabled and not tracker.has_finished(spec.run_id):
                mirror_run(tracker, spec, run_dir, parent)  # MLflow mirrors the records
            summary.skipped.append(spec.run_id)
            log.info("%s done, skipped", label)
            continue
        with records.claim(run_dir) as mine:
            if not mine:
                summary.busy.append(spec.run_id)
                log.info("%s claimed by another process, skipped", label)
                continue
            if records.run_state(run_dir, spec.run_id) == "done":  # finished while we waited
                summary.skipped.append(spec.run_id)
                continue
            status = records.read_json(run_dir / records.STATUS) or {}
            if status.get("state") == "failed" and isinstance(status.get("time"), (int, float)) \
                    and status["time"] >= since:  # another process failed it during this invocation
                summary.failed[spec.run_id] = str(status.get("reason", ""))
                log.info("%s failed in another process just now, not retried", label)
                continue
            log.info("%s running%s", label, " (resuming)" if (run_dir / "checkpoint.pt").exists() else "")
            ok, reason = execute_run(spec, run_dir, tracker, parent, cache, progress, device,
                                     study.execution.oom_retry)
            if ok:
                summary.done.append(spec.run_id)
            else:
                summary.failed[spec.run_id] = reason
                log.error("%s FAILED: %s", label, reason)


def execute_run(spec: RunSpec, run_dir: Path, tracker: Tracker, parent: str | None, cache: DataCache,
                progress: bool, device: str, oom_retry: bool = True) -> tuple[bool, str]:
    """Fit and evaluate one run and write its records; never raises for a failure of the run itself."""
    from suite.train import NonFiniteLoss, fit, pick_device

    run_dir.mkdir(parents=True, exist_ok=True)
    records.write_config(run_dir, spec)
    prev = records.read_json(run_dir / records.STATUS) or {}
    attempts = int(prev.get("attempts", 0)) + 1
    child = tracker.start_child(spec, parent)
    records.write_status(run_dir, "running", attempts=attempts, mlflow_run_id=child or "",
                         replaces=prev.get("mlflow_run_id", ""))
    dev = pick_device(device)
    batch = spec.config.train.batch_size
    try:
        data = cache.get(spec.config.dataset)

        def on_epoch(row: dict[str, float]) -> None:
            history.append(row)
            records.write_history(run_dir, history)
            tracker.log_metrics(child, row, step=int(row["epoch"]))

        while True:
            history: list[dict[str, float]] = []
            try:
                result = fit(spec.config, data, run_dir, device=dev, progress=progress, on_epoch=on_epoch,
                             batch_size=batch)
                break
            except torch.cuda.OutOfMemoryError:
                if not oom_retry or batch <= 1:
                    raise
                batch //= 2
                log.warning("CUDA out of memory: retrying %s at batch size %d", spec.run_id, batch)
                (run_dir / "checkpoint.pt").unlink(missing_ok=True)
                torch.cuda.empty_cache()
        records.write_history(run_dir, result.history)
        metrics, details = finish_run(spec, result, data, dev, run_dir, tracker, child)
        metrics.update(train_time_s=result.train_time_s, batch_size_used=float(batch))
        records.write_result(run_dir, spec.run_id, metrics, details, details.pop("_maps", None))
        records.write_status(run_dir, "done", attempts=attempts, mlflow_run_id=child or "")
        tracker.log_metrics(child, metrics, step=spec.config.train.epochs)
        tracker.log_artifacts(child, [run_dir / records.CONFIG, run_dir / records.METRICS,
                                      run_dir / records.HISTORY])
        tracker.finish(child, "FINISHED")
        return True, ""
    except NonFiniteLoss as exc:
        reason = f"non-finite loss: {exc}"
        tb = traceback.format_exc()
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded; the study goes on
        reason = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc()
    records.write_status(run_dir, "failed", reason=reason, traceback=tb, attempts=attempts,
                         mlflow_run_id=child or "")
    tracker.set_tag(child, "spikesuite.error", reason[:4000])
    tracker.finish(child, "FAILED")
    return False, reason


def finish_run(spec: RunSpec, result, data: DataBundle, device: torch.device, run_dir: Path, tracker: Tracker,
               child: str | None) -> tuple[dict[str, float], dict[str, Any]]:
    """Evaluate the trained model, then every evaluation override of the run."""
    from suite.evaluate import evaluate

    state = result.model.state_dict()
    cfg, model = spec.config, result.model
    if cfg.eval.apply:  # an evaluation-only policy on the trained weights (e.g. training-free ToMe)
        cfg, model = rebuilt_model(cfg, state, data, device, cfg.eval.apply)
    ev = evaluate(model, cfg, data, device)
    details = dict(ev.details)
    details["_maps"] = ev.maps
    for ov in spec.config.eval.overrides:
        m, d = evaluate_override(spec.config, state, data, device, ov.set)
        records.write_eval(run_dir, ov.name, eval_updates(spec.config, ov.set), m, d)
        tracker.log_metrics(child, {f"override.{ov.name}.{k}": v for k, v in m.items()
                                    if k in ("accuracy", "token_pct", "energy_exact_uj", "timesteps_mean")})
    return dict(ev.metrics), details


def rebuilt_model(config, state: dict[str, torch.Tensor], data: DataBundle, device: torch.device,
                  updates: dict[str, Any]):
    """The run's model rebuilt with evaluation-time settings changed and the trained weights loaded:
    ``(resolved config, model)``."""
    from suite.train import make_model

    cfg = apply_overrides(config, updates)
    model = make_model(cfg, data).to(device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"override {json.dumps(updates)} changes the model's parameters (missing {missing}, "
                         f"unexpected {unexpected}); only evaluation-time settings can be overridden")
    return cfg, model


def evaluate_override(config, state: dict[str, torch.Tensor], data: DataBundle, device: torch.device,
                      updates: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Rebuild the model with evaluation-time settings changed (on top of ``eval.apply``), load the trained
    weights, evaluate."""
    from suite.evaluate import evaluate

    cfg, model = rebuilt_model(config, state, data, device, eval_updates(config, updates))
    ev = evaluate(model, cfg, data, device, maps=False)
    return ev.metrics, ev.details


def mirror_run(tracker: Tracker, spec: RunSpec, run_dir: Path, parent: str | None) -> None:
    """Log a finished run from its records (tracking was off, or the store is new)."""
    child = tracker.start_child(spec, parent)
    hist = run_dir / records.HISTORY
    if hist.exists():
        import pandas as pd

        for row in pd.read_csv(hist).to_dict("records"):
            tracker.log_metrics(child, row, step=int(row.get("epoch", 0)))
    metrics = (records.read_json(run_dir / records.METRICS) or {}).get("metrics", {})
    tracker.log_metrics(child, metrics, step=spec.config.train.epochs)
    tracker.log_artifacts(child, [run_dir / records.CONFIG, run_dir / records.METRICS, hist])
    tracker.finish(child, "FINISHED")
