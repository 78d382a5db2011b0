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

from suite.run.unit import RunResult, RunUnit, run_one

log = logging.getLogger("spikesuite")


def work_through(units: Sequence[RunUnit]) -> list[RunResult]:
    """Run every unit in this process, in order, logging progress; returns each unit's result."""
    out = []
    for i, unit in enumerate(units, 1):
        spec = unit.spec
        label = f"[{i}/{len(units)}] {spec.variant} seed={spec.config.seed} {spec.run_id}"
        result = run_one(unit)
        out.append(result)
        if result.outcome == "skipped":
            log.info("%s done, skipped", label)
        elif result.outcome == "busy":
            log.info("%s claimed by another process, skipped", label)
        elif result.outcome == "failed":
            log.error("%s FAILED: %s", label, result.reason)
    return out


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
        done = work_through(todo)
        results += [r for r in done if r.outcome != "busy"]
        busy = {r.run_id for r in done if r.outcome == "busy"}
        todo = [u for u in todo if u.spec.run_id in busy]
        if todo:
            time.sleep(poll_s)  # another worker is training these: wait for it
    return results
