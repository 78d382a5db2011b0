"""The local executor: this process plus ``workers - 1`` spawned processes on one machine.

Every process works through the same list of units and ``run_one`` claims each run by lock, so the work spreads
by itself and a run is never trained twice. A worker gets its units as arguments (spawned, not forked: CUDA and
OpenMP state never cross a fork); with several GPUs, worker i sees only GPU i, on CPU the cores are shared.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence

from suite import records
from suite.run.unit import RunResult, RunUnit, run_one

log = logging.getLogger("spikesuite")


def work_through(units: Sequence[RunUnit], poll_s: float = 2.0) -> list[RunResult]:
    """Run every unit in this process, in order, logging progress; returns each unit's result. A unit waiting for
    a run it needs (a fine-tuning parent, the run training its weights) is tried again after the others, with the
    needed units another process held, until it can start or fails with its parent."""
    out: list[RunResult] = []
    todo, n = list(units), len(units)
    known = {u.spec.run_id for u in units}
    while todo:
        waiting, busy = [], []
        for unit in todo:
            spec = unit.spec
            label = f"[{len(out) + 1}/{n}] {spec.variant} seed={spec.config.seed} {spec.run_id}"
            result = run_one(unit)
            if result.outcome == "waiting":
                waiting.append(unit)
                continue
            out.append(result)
            if result.outcome == "skipped":
                log.info("%s done, skipped", label)
            elif result.outcome == "busy":
                busy.append(unit)
                log.info("%s being run by another process (a worker of this study or another invocation)", label)
            elif result.outcome == "failed":
                log.error("%s FAILED: %s", label, result.reason)
        orphans = [u for u in waiting if _needs_elsewhere(u, known)]
        for u in orphans:  # nothing here or elsewhere will ever finish what it needs
            out.append(RunResult(u.spec.run_id, "failed", f"needs run(s) {', '.join(u.spec.needs)}, which no process "
                                                          f"is running and this invocation does not include"))
            log.error("%s %s FAILED: %s", u.spec.variant, u.spec.run_id, out[-1].reason)
        waiting = [u for u in waiting if u not in orphans]
        if not waiting:
            break
        needed = {r for u in waiting for r in u.spec.needs}
        retry = [u for u in busy if u.spec.run_id in needed]
        out = [r for r in out if r.run_id not in {u.spec.run_id for u in retry}]
        if len(waiting) == len(todo) or retry:  # nothing could start here: the needed runs are elsewhere
            time.sleep(poll_s)
        todo = retry + waiting
    return out


def _needs_elsewhere(unit: RunUnit, known: set[str]) -> bool:
    """A needed run outside this list that is not running anywhere (so waiting for it would never end)."""
    for r in unit.spec.needs:
        if r in known or records.run_state(unit.study_dir / r, r) == "done":
            continue
        with records.claim(unit.study_dir / r) as free:  # free: no live process holds the run
            if free:
                return True
    return False


def run_local(units: Sequence[RunUnit], workers: int = 1) -> list[RunResult]:
    """Run ``units`` here and in ``workers - 1`` helper processes; returns this process's results once every
    helper has finished (their outcomes are in the records)."""
    if workers <= 1 or not units:
        return work_through(units)
    import torch

    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // workers)
    if gpus <= 1 and "OMP_NUM_THREADS" not in os.environ:
        # CPU workers share the cores: oversubscribed OpenMP threads spin and run many times slower.
        torch.set_num_threads(threads)
    quiet = [dataclasses.replace(u, progress=False) for u in units]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(quiet, i % gpus if gpus > 1 else None, threads), daemon=False,
                         name=f"spikesuite-worker-{i}") for i in range(1, workers)]
    for p in procs:
        p.start()
    try:
        return work_through(units)
    finally:
        for p in procs:
            p.join()
            if p.exitcode:
                log.error("worker %s exited with code %s; its claimed runs are free again", p.name, p.exitcode)


def _worker(units: Sequence[RunUnit], gpu: int | None, threads: int) -> None:
    """A helper process: pin it to its GPU or its share of the cores, then work through the units."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before CUDA initialises in this process
    elif "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work_through(units)


def wait_for(units: Sequence[RunUnit], poll_s: float = 2.0) -> list[RunResult]:
    """Run ``units`` here until none is claimed by another process (those are waited for, then read from records):
    for callers that need every run finished before they go on (a search's eval stage)."""
    todo, results = list(units), []
    while todo:
        done = work_through(todo, poll_s)
        results += [r for r in done if r.outcome != "busy"]
        busy = {r.run_id for r in done if r.outcome == "busy"}
        todo = [u for u in todo if u.spec.run_id in busy]
        if todo:
            time.sleep(poll_s)  # another worker is training these: wait for it
    return results
