"""One run on several processes (DDP): where its ranks come from.

``run_one`` trains a unit with ``nproc_per_run > 1`` on that many ranks (``suite.train.fit(distributed=True)`` does
the training side). The ranks come to exist in one of two ways:

- **spawned** (``launch``): the process running ``run_one`` (the claim, the records, tracking and the final
  evaluation) starts ``nproc_per_run`` rank processes on this machine with torchrun's environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``). It
  never joins their process group: it watches them, receives rank 0's epoch rows (and runs the callbacks on
  them), and as soon as one rank ends badly it ends the others and fails the run with that rank's reason (a rank
  killed by a signal is named with the signal), so nothing waits on a collective that cannot complete. A rank
  dies with the process that started it (``PR_SET_PDEATHSIG`` and a watch thread), so a killed ``spikesuite run``
  leaves no rank behind to write into a run that the next invocation resumes.
- **joined** (``joined_rank``): the environment already says this process is a rank (``RANK`` and ``WORLD_SIZE``
  set by ``torchrun`` or by submitit's ``TorchDistributedEnvironment().export()`` in a SLURM job). Every rank
  calls ``run_one`` on the same unit; rank 0 claims the run, tells the others whether to train it, trains as one
  of them and writes everything; the others train and return. A dead peer surfaces as a collective that times
  out after ``RunUnit.ddp_timeout_s``: with gloo the run is then recorded as failed with that error; with NCCL
  torch's watchdog ends the process (the run stays ``running`` and resumes from its checkpoint next time).

Backend: NCCL on CUDA (rank r on ``cuda:LOCAL_RANK``), gloo on CPU. torch is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from suite.run.work import RunUnit

log = logging.getLogger("spikesuite")

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailed(RuntimeError):
    """A rank of a spawned run ended badly; the message names the rank and why (its error or the signal)."""

    def __init__(self, reason: str, tb: str = ""):
        super().__init__(reason)
        self.tb = tb


@dataclass(frozen=True)
class Rank:
    """This process's place in a run's process group."""

    rank: int
    world: int
    local_rank: int
    device: Any  # torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def batch_problems(batch_size: int, nproc: int) -> list[str]:
    """Why ``nproc`` ranks cannot share a global batch of ``batch_size`` (empty: they can); for preflight checks."""
    if nproc > 1 and batch_size % nproc:
        return [f"train.batch_size {batch_size} is not divisible by nproc_per_run {nproc}: each rank takes "
                f"batch_size / nproc_per_run images per step"]
    return []


def device_problems(device: str, nproc: int) -> list[str]:
    """Why ``nproc`` ranks cannot run on ``device`` (``auto``, ``cpu``, ``cuda``) on this machine."""
    import torch

    kind = _device_type(device)
    if kind == "cuda" and torch.cuda.device_count() < nproc:
        return [f"nproc_per_run {nproc} needs {nproc} visible GPUs (one per rank), "
                f"{torch.cuda.device_count()} visible"]
    if kind not in ("cuda", "cpu"):
        return [f"device {device!r}: distributed runs train on cuda (NCCL) or cpu (gloo)"]
    return []


def _device_type(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def env_world() -> int | None:
    """``WORLD_SIZE`` when the environment makes this process a rank (``RANK`` and ``WORLD_SIZE`` set), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


def joined_rank(unit: RunUnit) -> Rank | None:
    """This process as a rank of the environment's process group (initialised on first use and kept for the
    next units), or None when the environment does not make it one (``run_one`` then spawns the ranks)."""
    world = env_world()
    if world is None:
        return None
    if world != unit.nproc_per_run:
        raise ValueError(f"WORLD_SIZE={world} in the environment, but the run asks for nproc_per_run "
                         f"{unit.nproc_per_run}: start one process per rank of one run")
    return init_group(unit.device, unit.ddp_timeout_s)


def init_group(device: str, timeout_s: float) -> Rank:
    """Join (or reuse) the default process group from the ``env://`` variables: NCCL on CUDA, gloo on CPU, with
    ``timeout_s`` on every collective."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    kind = _device_type(device)
    dev = torch.device("cuda", local) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # torch._dynamo imported after the group exists keeps ten references to it (its distributed variables), so
        # destroy_process_group no longer frees it and gloo's threads live into interpreter shutdown, where they
        # abort the process now and then ("terminate called without an active exception", exit -6, after all the
        # work was done). Imported first, nothing holds the group and leave_group ends its threads.
        import torch._dynamo  # noqa: F401

        dist.init_process_group("nccl" if kind == "cuda" else "gloo", init_method="env://", rank=rank,
                                world_size=world, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": dev} if kind == "cuda" else {}))
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(f"a process group of {dist.get_world_size()} ranks is already initialised here, the "
                           f"environment says rank {rank} of {world}")
    return Rank(rank, world, local, dev)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank of the default group."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave_group() -> None:
    """End this process's part in a joined group (after its last unit): ``destroy_process_group``."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the rank-0 store binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ spawned ranks


def launch(unit: RunUnit, *, batch_size: int, on_row: Callable[[dict[str, float]], None],
           on_start: Callable[[list[int]], None] = lambda pids: None, poll_s: float = 0.2) -> list[int]:
    """Train ``unit`` on ``unit.nproc_per_run`` spawned ranks of this machine and wait for them.

    ``on_row`` runs here for every epoch rank 0 finishes (after its checkpoint is written); if it raises, the ranks
    are ended and the exception propagates. ``on_start`` gets the ranks' pids. A rank that fails raises
    ``RankFailed`` here (``torch.cuda.OutOfMemoryError`` for an out-of-memory rank, so the caller may retry at a
    smaller batch) once every other rank is ended. Returns the ranks' pids."""
    import multiprocessing

    import torch

    world = unit.nproc_per_run
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    port = free_port()
    level = logging.getLogger("spikesuite").getEffectiveLevel()
    procs = [ctx.Process(target=_rank_main, args=(unit, r, port, batch_size, messages, level, os.getpid()),
                         name=f"spikesuite-rank-{r}", daemon=False) for r in range(world)]
    for p in procs:
        p.start()
    pids = [p.pid for p in procs]
    log.debug("%s: %d ranks started (pids %s, port %d)", unit.spec.run_id, world, pids, port)
    try:
        on_start(pids)
        done: set[int] = set()
        quiet_since: float | None = None
        while len(done) < world:
            msg = _next(messages, poll_s)
            if msg is not None and msg[0] == "row":
                on_row(msg[1])
                continue
            if msg is not None and msg[0] == "done":
                done.add(msg[1])
                continue
            if msg is None and not any(p.exitcode not in (None, 0) for p in procs):
                if all(p.exitcode == 0 for p in procs):  # every rank ended well: wait for their last messages
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since < 3.0:
                        continue
                else:
                    continue
            errors = ([msg] if msg is not None else []) + _gather_errors(messages, procs, done)
            reason, tb, oom = _failure(errors, procs)
            _end(procs)
            if oom:
                raise torch.cuda.OutOfMemoryError(reason)
            raise RankFailed(reason, tb)
        return pids
    finally:
        _end(procs)
        messages.close()


def _next(q, timeout: float):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


def _gather_errors(q, procs, done: set[int], grace_s: float = 1.5) -> list:
    """Collect the ranks' error messages for a moment after the first sign of failure: a rank killed by a signal
    sends none, while its peers report the broken connection it left; both are named."""
    out = []
    t_end = time.monotonic() + grace_s
    while time.monotonic() < t_end:
        msg = _next(q, 0.05)
        if msg is not None:
            if msg[0] == "error":
                out.append(msg)
            elif msg[0] == "done":
                done.add(msg[1])
        elif all(p.exitcode is not None for p in procs):
            break
    return out


def _failure(errors: list, procs) -> tuple[str, str, bool]:
    """``(reason, traceback, out of memory)``: ranks ended by a signal first (the cause), then the first error."""
    world = len(procs)
    parts, tb, oom = [], "", False
    for r, p in enumerate(procs):
        code = p.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            parts.append(f"rank {r} of {world} (pid {p.pid}) was killed by {name}")
        elif code not in (None, 0) and not any(e[0] == "error" and e[1] == r for e in errors):
            parts.append(f"rank {r} of {world} (pid {p.pid}) exited with code {code}")
    errs = [e for e in errors if e[0] == "error"]
    # the root cause first: a rank's own failure, not a peer's report of the connection it broke
    errs.sort(key=lambda e: e[4])
    if errs:
        _, r, reason, tb, _, oom = errs[0]
        parts.append(f"{reason} (rank {r} of {world})")
    return "; ".join(parts) or f"the {world} ranks ended without finishing", tb, oom


def _end(procs, grace_s: float = 5.0) -> None:
    """End every rank still running: SIGTERM, then SIGKILL after ``grace_s``."""
    for p in procs:
        if p.exitcode is None:
            p.terminate()
    t_end = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, t_end - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def _die_with_parent(parent: int) -> None:
    """End this rank when the process that spawned it dies (SIGKILL cannot be caught there to end us)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:  # elsewhere (and as a second line): notice the re-parenting
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="spikesuite-parent-watch", daemon=True).start()


def _is_peer_error(exc: BaseException) -> bool:
    """A collective that failed because another rank went away (reported after the cause, not as it)."""
    import torch.distributed as dist

    from suite.train.loop import StoppedByRankZero

    return isinstance(exc, (StoppedByRankZero, dist.DistError)) or "gloo" in str(exc).lower() \
        or "connection" in str(exc).lower()


def _rank_main(unit: RunUnit, rank: int, port: int, batch_size: int, messages, level: int, parent: int) -> None:
    """A spawned rank: torchrun's environment, the process group, ``fit(distributed=True)``; rank 0 sends every
    epoch's row to the watching process. Errors go to the watcher as messages, then the rank exits with 1."""
    _die_with_parent(parent)
    world = unit.nproc_per_run
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("spikesuite").setLevel(level)  # the watcher's verbosity (DEBUG: per-epoch state digests)
    import torch
    from tqdm.auto import tqdm

    # tqdm's default lock is a multiprocessing semaphore that no one frees: at exit the resource tracker the ranks
    # share with the watcher warns about it ("leaked semaphore objects"). A rank's bars need a thread lock only.
    tqdm.set_lock(threading.RLock())
    if _device_type(unit.device) == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the ranks share the cores
    code = 0
    try:
        import torch.distributed as dist

        from suite.data import cached_data
        from suite.train import fit

        me = init_group(unit.device, unit.ddp_timeout_s)
        data = cached_data(unit.spec.config.dataset)
        send = [lambda row: messages.put(("row", row))] if me.main else []
        fit(unit.spec.config, data, unit.run_dir, device=me.device, progress=unit.progress and me.main,
            callbacks=send, batch_size=batch_size, distributed=True)
        dist.destroy_process_group()
        messages.put(("done", rank))
    except BaseException as exc:  # noqa: BLE001 - reported to the watcher, which fails the run
        from suite.train import NonFiniteLoss

        reason = f"non-finite loss: {exc}" if isinstance(exc, NonFiniteLoss) else f"{type(exc).__name__}: {exc}"
        messages.put(("error", rank, reason, traceback.format_exc(), _is_peer_error(exc),
                      isinstance(exc, torch.cuda.OutOfMemoryError)))
        code = 1
    messages.close()
    messages.join_thread()  # the message is out before the process ends
    if code:
        os._exit(code)
