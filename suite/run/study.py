"""Run a study: expand it, hand every run to an executor as a ``RunUnit``, mirror the invocation to MLflow and
write the study's tables. ``run_study`` is the whole pipe: study -> runs -> run_one -> records -> tracking.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite import records
from suite.config import RunSpec, Study, StudyError, eval_update_problems, eval_updates, expand
from suite.names import CHECKPOINT, ENVIRONMENT, STUDY_FILE
from suite.run.unit import RunUnit
from suite.tracking import TrackingTarget, close_trackers, tracker_for

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
    """Everything that can be checked before writing anything: expansion and dataset availability (every missing
    dataset is named, with where it was looked for and how to get it)."""
    from suite.data import missing_datasets  # path checks only: no torch

    specs = expand(study, source)
    if problems := missing_datasets(spec.config.dataset for spec in specs):
        raise StudyError(source, [f"dataset: {p}" for p in problems])
    if problems := checkpoint_problems(specs):
        raise StudyError(source, problems)
    return specs


def checkpoint_problems(specs: list[RunSpec]) -> list[str]:
    """Each ``train.init_from: {checkpoint, format}`` tried on the model it would start: a file that is not a state
    dict, missing or unexpected keys, wrong shapes, a format without a key map for the backbone (imports torch, and
    loads a dataset for its shapes, only when some run starts from a file)."""
    todo = [s for s in specs if s.config.init_sha256 is not None]
    if not todo:
        return []
    import torch

    from suite.data import cached_data
    from suite.models import build_model
    from suite.models.convert import CheckpointError, import_checkpoint

    problems: dict[str, None] = {}
    seen: set[str] = set()
    for spec in todo:
        c = spec.config
        key = json.dumps([c.train.init_from.model_dump(), c.model.model_dump(mode="json"), c.dataset.model_dump(
            mode="json")], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        data = cached_data(c.dataset)
        with torch.device("cpu"):
            model = build_model(c.model, c.tokens, c.time, in_channels=data.in_channels, image_size=data.image_size,
                                num_classes=data.num_classes)
        try:
            import_checkpoint(model, c.model, Path(c.train.init_from.checkpoint), c.train.init_from.format)
        except CheckpointError as exc:
            problems[f"train.init_from ({spec.variant}): {exc}"] = None
    return list(problems)


def study_units(study: Study, specs: list[RunSpec], study_dir: Path, results: Path, *, device: str, progress: bool,
                parent: str | None = None, since: float = float("inf"),
                nproc_per_run: int | None = None) -> list[RunUnit]:
    """The study's runs as units of work for any executor (``nproc_per_run``: ranks per run, default the study's
    ``resources.nproc_per_run``)."""
    target = TrackingTarget(study.tracking, study.name, results, parent)
    nproc = nproc_per_run or study.resources.nproc_per_run
    return [RunUnit(spec, study_dir, device=device, progress=progress, oom_retry=study.execution.oom_retry,
                    tracking=target, since=since, nproc_per_run=nproc) for spec in specs]


def with_needs(specs: list[RunSpec], among: list[RunSpec]) -> list[RunSpec]:
    """``specs`` preceded by every run of ``among`` they need, transitively (fine-tuning parents, the runs training
    shared weights), parents first: what an executor must be given to finish ``specs``."""
    by_id = {s.run_id: s for s in among}
    out: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        for need in spec.needs:
            if need in by_id and need not in out:
                add(by_id[need])
        out.setdefault(spec.run_id, spec)

    for spec in specs:
        add(spec)
    return list(out.values())


def device_setting_problems(specs: list[RunSpec], device: str) -> list[str]:
    """The runs' ``model.neuron.backend`` and ``train.amp`` settings that ``device`` cannot run (imports torch)."""
    from suite.models.neurons import resolve_backend
    from suite.train import pick_device
    from suite.train.precision import amp_problem

    dev = pick_device(device)
    problems: dict[str, list[str]] = {}
    for spec in specs:
        cfg = spec.config
        try:
            resolve_backend(cfg.model.neuron.backend, dev)
        except ValueError as exc:
            problems.setdefault(str(exc), []).append(spec.variant)
        if problem := amp_problem(cfg.train.amp, dev):
            problems.setdefault(problem, []).append(spec.variant)
    return [f"{p} (variants: {', '.join(sorted(set(v)))})" for p, v in sorted(problems.items())]


def nproc_problems(specs: list[RunSpec], nproc: int) -> list[str]:
    """Why runs cannot be trained on ``nproc`` ranks each (checked before anything is written)."""
    if nproc <= 1:
        return []
    from suite.run.distributed import batch_problems

    return [f"variants.{s.variant}: {p}" for s in specs for p in batch_problems(s.config.train.batch_size, nproc)]


def plan_study(study: Study, results: Path, *,
               source: str = "<study>") -> tuple[Path, list[tuple[RunSpec, str]], list[str]]:
    """A dry run: the study's directory, each run with its state in the records, and one message per dataset
    missing on this machine (nothing is written). Missing data does not stop a plan: the runs, their ids and
    states do not depend on it, and the message says how to get it; ``run_study`` refuses instead."""
    from suite.data import missing_datasets  # path checks only: a plan imports no torch

    specs = expand(study, source)
    sdir = study_dir_for(results, study.name)
    planned = [(spec, records.run_state(sdir / spec.run_id, spec.run_id)) for spec in specs]
    return sdir, planned, missing_datasets(spec.config.dataset for spec in specs)


def reevaluate(study: Study, run_id: str, updates: dict[str, Any], results: Path, *, name: str | None = None,
               source: str = "<study>") -> tuple[dict[str, float], Path]:
    """Evaluate a finished run's checkpoint with evaluation-time settings changed, record it as
    ``evals/<name>.json`` beside the run and refresh the study's tables: ``(metrics, path)``."""
    from suite.data import load_data
    from suite.evaluate import evaluate_checkpoint
    from suite.train import load_weights, pick_device

    specs = {s.run_id: s for s in expand(study, source)}
    if run_id not in specs:
        raise StudyError(source, [f"run_id: {run_id!r} is not a run of this study (see spikesuite plan)"])
    spec = specs[run_id]
    if problems := eval_update_problems(spec.config, updates):
        raise StudyError("--set", problems)
    run_dir = study_dir_for(results, study.name) / run_id
    if records.run_state(run_dir, run_id) != "done" or not (run_dir / CHECKPOINT).exists():
        raise StudyError(str(run_dir), ["the run has no finished checkpoint: spikesuite run the study first"])
    device = pick_device(study.execution.device)
    res = evaluate_checkpoint(spec.config, load_weights(run_dir, device), load_data(spec.config.dataset), device,
                              updates)
    name = name or "_".join(f"{k.split('.')[-1]}={v}" for k, v in updates.items()) or "default"
    name = "".join(c if c.isalnum() or c in "_.=+-" else "_" for c in name)[:80]
    path = records.write_eval(run_dir, name, eval_updates(spec.config, updates), res.metrics, res.details)
    records.collect_tables(run_dir.parent, list(specs.values()))
    return res.metrics, path


def run_study(study: Study, results: Path, *, source: str = "<study>", workers: int | None = None,
              progress: bool | None = None, device: str | None = None,
              nproc_per_run: int | None = None) -> StudySummary:
    from suite.run.local import run_local

    t0 = time.perf_counter()
    # Failures recorded after this moment come from this invocation (this process, or another one sharing the
    # study): they are reported, not retried again at once.
    since = time.time()
    specs = preflight(study, source)
    if problems := nproc_problems(specs, nproc_per_run or study.resources.nproc_per_run):
        raise StudyError(source, sorted(set(problems)))
    dev = device or study.execution.device
    if problems := device_setting_problems(specs, dev):
        raise StudyError(source, problems)
    sdir = study_dir_for(results, study.name)
    sdir.mkdir(parents=True, exist_ok=True)
    write_study_file(sdir, study)
    write_environment(sdir, dev)
    tracker = tracker_for(TrackingTarget(study.tracking, study.name, results)) if study.tracking.enabled else None
    if tracker is not None:
        tracker.describe(study.description)
    parent = tracker.start_parent({"source": source, "runs": str(len(specs))}) if tracker is not None else None
    summary = StudySummary(sdir)
    show = study.execution.progress if progress is None else progress
    units = study_units(study, specs, sdir, results, device=dev, progress=show, parent=parent, since=since,
                        nproc_per_run=nproc_per_run)
    try:
        for result in run_local(units, workers or study.execution.workers):
            if result.outcome == "failed":
                summary.failed[result.run_id] = result.reason
            else:
                {"done": summary.done, "skipped": summary.skipped, "busy": summary.busy}[result.outcome].append(
                    result.run_id)
    finally:
        runs, _ = records.collect_tables(sdir, specs)
        summary.failed.update({r.run_id: str(r.get("error", "")) for r in runs.itertuples()
                               if r.status == "failed" and r.run_id not in summary.failed})
        if tracker is not None:
            tracker.log_metrics(parent, {"runs_done": float((runs.status == "done").sum()),
                                         "runs_failed": float((runs.status == "failed").sum())})
            tracker.log_variant_means(parent, runs, specs)  # <variant>.test_accuracy, ... from the runs table
            tracker.log_artifacts(parent, [sdir / records.RUNS_TABLE, sdir / STUDY_FILE])
            tracker.finish(parent, "FAILED" if summary.failed else "FINISHED")
        close_trackers()
    summary.wall_time_s = time.perf_counter() - t0
    return summary


def write_study_file(study_dir: Path, study: Study) -> None:
    """The validated study as run (``study.yaml``: the report reads it back, typed)."""
    import yaml

    records.atomic_write_text(study_dir / STUDY_FILE,
                              yaml.safe_dump(study.model_dump(mode="json", exclude_none=True), sort_keys=False))


def write_environment(study_dir: Path, device: str) -> None:
    """Where the numbers come from (``environment.json``, the latest invocation's), for reports regenerated on
    another machine."""
    from suite.environment import environment
    from suite.train import pick_device

    records.atomic_write_json(study_dir / ENVIRONMENT, environment(pick_device(device)))
