"""``run_one``: the one entry to training a run, and the unit of work every executor hands out.

A ``RunUnit`` is plain, picklable data (a resolved ``RunSpec``, the study's records directory, the device and where
to mirror): the local process pool, a search's eval stage and cluster executors all send one to ``run_one``, which

1. skips a run whose records say it is done (mirroring it to tracking when the store lacks it),
2. claims the run by lock (a run claimed by another live process is reported ``busy``, not run twice),
3. fits it (resuming from its last epoch checkpoint), evaluates it and every evaluation override,
4. writes its records; a failure of the run itself is recorded with its reason, never raised.

Nothing a worker needs travels outside its arguments: no environment variables, no hidden flags. The one
exception is a run on several processes (``nproc_per_run > 1``, see ``suite.run.distributed``): when torchrun or
a SLURM job has already made this process a rank (``RANK``/``WORLD_SIZE`` set), every rank calls ``run_one``
with the same unit and rank 0 does steps 1-4 while the others only train; otherwise ``run_one`` spawns the ranks
itself and keeps steps 1, 2 and 4 (and the evaluation: rank 0's weights, the whole split, in this process).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from suite import records
from suite.config import RunSpec, eval_updates
from suite.names import CHECKPOINT, ERROR_TAG
from suite.run.work import RunResult, RunUnit
from suite.tracking import Tracker, mirror_run, override_metrics, tracker_for

log = logging.getLogger("spikesuite")


def run_one(unit: RunUnit, *, callbacks: Sequence[Callable[[dict[str, float]], None]] = ()) -> RunResult:
    """Execute ``unit`` (see the module docstring). ``callbacks`` get every finished epoch's row; one that raises
    stops the run, which is then recorded as failed with that reason (a search prunes a trial this way)."""
    group = None
    if unit.nproc_per_run > 1:
        from suite.run.distributed import joined_rank

        group = joined_rank(unit)  # None: this process spawns the ranks
        if group is not None and not group.main:
            return _follow(unit, group)
    spec, run_dir = unit.spec, unit.run_dir
    tracker = tracker_for(unit.tracking) if unit.tracking is not None and unit.tracking.config.enabled else None
    parent = unit.tracking.parent if unit.tracking is not None else None
    if records.run_state(run_dir, spec.run_id) == "done":
        if tracker is not None and not tracker.has_finished(spec.run_id):
            mirror_run(tracker, spec, run_dir, parent)  # MLflow mirrors the records
        return _tell(group, RunResult(spec.run_id, "skipped"))
    blocked = _needs(unit)
    if blocked is not None and blocked.outcome == "waiting":
        return _tell(group, blocked)
    with records.claim(run_dir) as mine:
        if not mine:
            return _tell(group, RunResult(spec.run_id, "busy"))
        if records.run_state(run_dir, spec.run_id) == "done":  # finished while we waited
            return _tell(group, RunResult(spec.run_id, "skipped"))
        if blocked is not None:  # a run it needs failed: so does this one, without running
            run_dir.mkdir(parents=True, exist_ok=True)
            records.write_config(run_dir, spec)
            records.write_status(run_dir, "failed", reason=blocked.reason, blocked_by=list(spec.needs))
            return _tell(group, blocked)
        status = records.read_json(run_dir / records.STATUS) or {}
        if _failed_since(status, unit.since):  # another process failed it during this invocation
            return _tell(group, RunResult(spec.run_id, "failed", str(status.get("reason", ""))))
        log.info("%s seed=%d %s running%s%s%s", spec.variant, spec.config.seed, spec.run_id,
                 " (resuming)" if (run_dir / CHECKPOINT).exists() and not spec.trained_by else "",
                 f" (weights of {spec.trained_by})" if spec.trained_by else
                 f" (fine-tuning {spec.parent})" if spec.parent else "",
                 f" on {unit.nproc_per_run} ranks" if unit.nproc_per_run > 1 else "")
        ok, reason = _execute(unit, tracker, parent, callbacks, group)
    return RunResult(spec.run_id, "done" if ok else "failed", reason)


def _failed_since(status: dict, since: float) -> bool:
    """A run's status says it failed at or after ``since`` (during this invocation, in this or another process)."""
    return status.get("state") == "failed" and isinstance(status.get("time"), (int, float)) and status["time"] >= since


def _needs(unit: RunUnit) -> RunResult | None:
    """None when every run ``unit`` needs (its fine-tuning parent, the run training its weights) is finished;
    ``waiting`` while one is not; ``failed`` with the reason when one failed during this invocation (a failure
    older than ``unit.since`` is retried by this invocation first, parents come before their children)."""
    for need in unit.spec.needs:
        need_dir = unit.study_dir / need
        state = records.run_state(need_dir, need)
        if state == "done":
            continue
        status = records.read_json(need_dir / records.STATUS) or {}
        if _failed_since(status, unit.since):
            role = "parent run" if need == unit.spec.parent else "run training its weights"
            return RunResult(unit.spec.run_id, "failed", f"{role} {need} failed: {status.get('reason', '')}")
        return RunResult(unit.spec.run_id, "waiting", f"needs run {need} ({state})")
    return None


def _tell(group, result: RunResult) -> RunResult:
    """Rank 0 of a joined group tells the other ranks what became of the run before they would train it."""
    if group is not None:
        from suite.run.distributed import broadcast_object

        broadcast_object(result)
    return result


def _follow(unit: RunUnit, group) -> RunResult:
    """A joined rank other than 0: wait for rank 0's decision, then train with it. Records, tracking and the
    evaluation are rank 0's; this rank's result says how its own part went."""
    from suite.run.distributed import broadcast_object

    told = broadcast_object(None)
    if isinstance(told, RunResult):
        return told
    try:
        from suite.data import cached_data
        from suite.train import fit

        fit(unit.spec.config, cached_data(unit.spec.config.dataset), unit.run_dir, device=group.device,
            progress=False, batch_size=int(told), distributed=True)
        return RunResult(unit.spec.run_id, "done")
    except Exception as exc:  # noqa: BLE001 - rank 0 records the run's failure
        return RunResult(unit.spec.run_id, "failed", f"{type(exc).__name__}: {exc} (rank {group.rank})")


def _execute(unit: RunUnit, tracker: Tracker | None, parent: str | None,
             callbacks: Sequence[Callable[[dict[str, float]], None]], group=None) -> tuple[bool, str]:
    """Fit and evaluate one claimed run and write its records; never raises for a failure of the run itself.
    ``group``: this process is rank 0 of a joined process group (the other ranks wait for its word)."""
    import torch

    from suite.train import NonFiniteLoss, fit, pick_device

    spec, run_dir = unit.spec, unit.run_dir
    world = unit.nproc_per_run
    spread = {"world_size": world} if world > 1 else {}  # how the run executed (never in its id)
    log_metrics = tracker.log_metrics if tracker is not None else (lambda *a, **k: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    records.write_config(run_dir, spec)
    prev = records.read_json(run_dir / records.STATUS) or {}
    attempts = int(prev.get("attempts", 0)) + 1
    child = tracker.start_child(spec, parent) if tracker is not None else None
    records.write_status(run_dir, "running", attempts=attempts, mlflow_run_id=child or "",
                         replaces=prev.get("mlflow_run_id", ""), **spread)
    dev = pick_device(unit.device)
    batch = spec.config.train.batch_size
    told = group is None
    tb = ""
    try:
        if world > 1:
            from suite.run.distributed import batch_problems, device_problems

            if problems := batch_problems(batch, world) + ([] if group else device_problems(unit.device, world)):
                raise ValueError("; ".join(problems))
        if group is not None:
            from suite.run.distributed import broadcast_object

            # the others train now, with this global batch (nothing to train: another run's weights are this one's)
            broadcast_object(batch if spec.trained_by is None else RunResult(spec.run_id, "done"))
            told = True
            dev = group.device
        from suite.data import cached_data

        data = cached_data(spec.config.dataset)
        dataset = data.describe()  # what the run reads, digests included: its records and MLflow's Dataset column
        if tracker is not None:
            tracker.log_dataset(child, spec, dataset)
        history: list[dict[str, float]] = []

        def on_epoch(row: dict[str, float]) -> None:
            history.append(row)
            records.write_history(run_dir, history)
            if tracker is not None:
                tracker.log_epoch(child, row)  # stepped by epoch, under the MLflow names

        while True:
            history.clear()  # a retry at half batch size starts again from epoch 0
            try:
                if spec.trained_by is not None:
                    result = _shared_fit(unit, data, dev)
                elif world > 1 and group is None:
                    result = _fit_spawned(unit, batch, [on_epoch, *callbacks], data, dev, attempts, child)
                else:
                    result = fit(spec.config, data, run_dir, device=dev, progress=unit.progress,
                                 callbacks=[on_epoch, *callbacks], batch_size=batch, distributed=group is not None)
                break
            except torch.cuda.OutOfMemoryError:
                # a joined group cannot agree on a retry: only this process (or the spawned ranks) retry
                if not unit.oom_retry or batch <= 1 or group is not None or (batch // 2) % world:
                    raise
                batch //= 2
                log.warning("CUDA out of memory: retrying %s at batch size %d", spec.run_id, batch)
                (run_dir / CHECKPOINT).unlink(missing_ok=True)
                torch.cuda.empty_cache()
        records.write_history(run_dir, result.history)
        metrics, details, maps = _evaluate_all(spec, result.model, data, dev, run_dir, log_metrics, child)
        metrics.update(train_time_s=result.train_time_s, batch_size_used=float(batch))
        if world > 1:
            metrics.update(world_size=float(world), batch_size_per_rank=float(batch // world))
        shared = {"trained_by": spec.trained_by} if spec.trained_by else {}
        ran = {"compile": result.compile} if result.compile is not None else {}  # how train.compile resolved
        records.write_result(run_dir, spec.run_id, metrics, {**details, **shared, **ran, "dataset": dataset}, maps)
        records.write_status(run_dir, "done", attempts=attempts, mlflow_run_id=child or "", **spread, **shared,
                             **_how_it_ran(spec.config, dev))
        if tracker is not None:
            tracker.log_result(child, metrics, spec.config.eval.split)  # summary values, no step
            tracker.log_artifacts(child, [run_dir / records.CONFIG, run_dir / records.METRICS,
                                          run_dir / records.HISTORY])
            tracker.finish(child, "FINISHED")
        return True, ""
    except NonFiniteLoss as exc:
        reason = f"non-finite loss: {exc}"
        tb = traceback.format_exc()
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded; the study goes on
        from suite.run.distributed import RankFailed

        reason = str(exc) if isinstance(exc, RankFailed) else f"{type(exc).__name__}: {exc}"
        tb = (exc.tb or traceback.format_exc()) if isinstance(exc, RankFailed) else traceback.format_exc()
    if not told:  # the other ranks are waiting for word from rank 0
        _tell(group, RunResult(spec.run_id, "failed", reason))
    records.write_status(run_dir, "failed", reason=reason, traceback=tb, attempts=attempts,
                         mlflow_run_id=child or "", **spread)
    if tracker is not None:
        tracker.set_tag(child, ERROR_TAG, reason[:4000])
        tracker.finish(child, "FAILED")
    return False, reason


def _shared_fit(unit: RunUnit, data, device):
    """A run whose weights another run trained (``spec.trained_by``): its checkpoint, linked beside this run (a
    hard link where the filesystem allows, else a copy) so evaluation, ``spikesuite evaluate`` and searches find
    it as usual. Nothing is trained: ``train_time_s`` is 0, the history is the trainer's."""
    import os
    import shutil

    from suite.train import FitResult, load_checkpoint, make_model
    from suite.train.checkpoint import eval_weights

    src, dst = unit.study_dir / unit.spec.trained_by / CHECKPOINT, unit.run_dir / CHECKPOINT
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    state = load_checkpoint(dst, device)
    model = make_model(unit.spec.config, data).to(device)
    model.load_state_dict(eval_weights(state))
    return FitResult(model, state["history"], 0.0, 0)


def _how_it_ran(config, device) -> dict[str, str]:
    """The kernel spikingjelly's LIF layers ran on and the training precision (recorded in status.json)."""
    from suite.models.neurons import backend_in_use
    from suite.train.precision import AMP_NAMES, amp_dtype

    return {"neuron_backend": backend_in_use(device), "amp": AMP_NAMES[amp_dtype(config.train.amp, device)]}


def _fit_spawned(unit: RunUnit, batch: int, callbacks, data, device, attempts: int, child: str | None):
    """Train on ``unit.nproc_per_run`` spawned ranks (``suite.run.distributed.launch``); rank 0's epoch rows come
    back here for ``callbacks``; the result is read from the run's checkpoint (rank 0's weights)."""
    from suite.run.distributed import launch
    from suite.train import FitResult, load_checkpoint, make_model
    from suite.train.checkpoint import eval_weights

    def started(pids: list[int]) -> None:  # the ranks' pids beside the run's state (ps, kill, debugging)
        now = records.read_json(unit.run_dir / records.STATUS) or {}
        keep = {k: v for k, v in now.items() if k not in ("state", "time", "host", "pid")}
        records.write_status(unit.run_dir, "running", **{**keep, "attempts": attempts, "mlflow_run_id": child or "",
                                                         "world_size": unit.nproc_per_run, "rank_pids": pids})

    def on_row(row: dict[str, float]) -> None:
        for callback in callbacks:
            callback(row)

    launch(unit, batch_size=batch, on_row=on_row, on_start=started)
    state = load_checkpoint(unit.run_dir / CHECKPOINT, device)
    model = make_model(unit.spec.config, data).to(device)
    model.load_state_dict(eval_weights(state))
    return FitResult(model, state["history"], state["train_time_s"], 0)


def _evaluate_all(spec: RunSpec, model, data, device, run_dir: Path, log_metrics, child: str | None):
    """The trained model's main evaluation, then every evaluation override of the run (each recorded)."""
    from suite.evaluate import evaluate_checkpoint, evaluate_trained

    ev = evaluate_trained(spec.config, model, data, device)
    state = model.state_dict()
    for ov in spec.config.eval.overrides:
        res = evaluate_checkpoint(spec.config, state, data, device, ov.set)
        records.write_eval(run_dir, ov.name, eval_updates(spec.config, ov.set), res.metrics, res.details)
        log_metrics(child, override_metrics(ov.name, res.metrics, spec.config.eval.split))
    return dict(ev.metrics), dict(ev.details), ev.maps
