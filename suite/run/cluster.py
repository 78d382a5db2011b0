"""Runs past this process: a study's runs as submitit jobs (SLURM job arrays; local subprocesses or this process
for trying it out), watched through the records and the jobs' states.

``spikesuite run STUDY --parallel-config cluster.yml`` loads the site's cluster file (``parse_cluster``: shape,
``slurm_*`` keys submitit knows, YAML's base-60 trap), merges the resources (cluster file < study ``resources:`` <
``--nproc-per-run``) and submits every pending run (not done, not held by a live job) as one task of a job array
(``submit_study``). Each task calls ``run_one`` through ``RunJob``, which submitit requeues after a timeout or a
preemption: the run resumes from its epoch checkpoint on disk, nothing else is pickled. Which job holds a run is
recorded beside it (``results/<study>/<run_id>/job.json``: job id, cluster, folder, git commit at submission), so
a second submission never doubles a run, ``status_rows`` shows each run with its job and ``cancel_study`` stops
them. The records stay the only source of truth: waiting, collecting and reporting read them, never the jobs'
return values.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite import records
from suite.config import ClusterConfig, ResourcesConfig, RunSpec, Study, StudyError
from suite.environment import git_dirty
from suite.names import LOCK, SEARCH_DIR, STUDY_FILE
from suite.run.cluster_file import (
    cluster_name,
    executor_parameters,
    make_executor,
    merged_resources,
    resource_problems,
    submission_folder,
)
from suite.run.study import (
    StudySummary,
    device_setting_problems,
    nproc_problems,
    preflight,
    study_dir_for,
    study_units,
    write_environment,
    write_study_file,
)
from suite.run.unit import RunResult, RunUnit, run_one
from suite.tracking import TrackingTarget, close_trackers, git_commit, tracker_for

log = logging.getLogger("spikesuite")

JOB_FILE = "job.json"  # results/<study>/<run_id>/job.json: the job that holds (or last held) the run
NEEDS_POLL_S = 10.0  # how often a job whose parent run is still training looks again
WORKERS_FILE = "jobs.json"  # results/<study>/search/jobs.json: submitted search workers
# Job states in which a job still holds its run (SLURM's names; QUEUED: a debug job not run yet). UNKNOWN is
# counted live: a job sacct does not list (yet) is never submitted twice; `spikesuite cancel` frees it.
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                         "COMPLETING", "RESIZING", "SUSPENDED", "PREEMPTED", "STAGE_OUT", "SIGNALING", "QUEUED",
                         "READY", "UNKNOWN"})


# ---------------------------------------------------------------------------------------------- the job


class RunJob:
    """What each job runs: ``run_one(unit)``; after a timeout or a preemption submitit calls ``checkpoint`` (on rank
    0) and requeues the same unit, which resumes from the run's last epoch checkpoint on disk."""

    def __init__(self, nproc: int = 1, threads: int | None = None, commit: str = ""):
        self.nproc, self.threads, self.commit = nproc, threads, commit

    def __call__(self, unit: RunUnit) -> RunResult:
        _job_setup(self.nproc, self.threads, self.commit)
        if os.environ.get("RANK", "0") == "0":  # the machine the runs train on (a spikesuite run records its own)
            write_environment(unit.study_dir, unit.device)
        result = run_one(unit)
        if result.outcome == "waiting":  # SLURM starts it after its parents' jobs; other executors start it at once
            log.info("%s: %s; waiting", unit.spec.run_id, result.reason)
        while result.outcome == "waiting":
            time.sleep(NEEDS_POLL_S)
            result = run_one(unit)
        return result

    def checkpoint(self, unit: RunUnit):
        from submitit.helpers import DelayedSubmission

        log.info("%s: requeued; it resumes from its last epoch checkpoint", unit.spec.run_id)
        return DelayedSubmission(self, unit)


def _job_setup(nproc: int, threads: int | None, commit: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if nproc > 1 and _job_tasks() > 1:
        # submitit started one task per rank: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT as torchrun sets them,
        # and every rank calls run_one (suite.run.distributed.joined_rank). One task (cluster: debug): run_one
        # spawns the ranks itself.
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        log.info("rank %d of %d (local rank %d), master %s:%d", env.rank, env.world_size, env.local_rank,
                 env.master_addr, env.master_port)
    if threads and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(threads)
    now = git_commit()
    if commit and now != commit:
        log.warning("the code changed between submission (%s) and the job's start (%s): the job runs the new code",
                    commit, now)


def _job_tasks() -> int:
    import submitit

    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        return 1


# ---------------------------------------------------------------------------------------------- job states


def read_job(run_dir: Path) -> dict | None:
    rec = records.read_json(run_dir / JOB_FILE)
    return rec if rec is not None and "job_id" in rec and "cluster" in rec else None


def _slurm_job(rec: dict):
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=rec["folder"], job_id=rec["job_id"])


def _result_exists(rec: dict) -> bool:
    from submitit.core.utils import JobPaths

    return JobPaths(rec["folder"], job_id=rec["job_id"], task_id=0).result_pickle.exists()


def _local_process(rec: dict):
    """The local job's controller process while it runs (its pid is the job id), else None."""
    import psutil

    try:
        proc = psutil.Process(int(rec["job_id"]))
        if proc.status() == psutil.STATUS_ZOMBIE or "submitit.local._local" not in " ".join(proc.cmdline()):
            return None
        started = rec.get("started")
        if isinstance(started, int | float) and abs(proc.create_time() - started) > 2:
            return None  # the pid was reused by another controller
        return proc
    except (psutil.Error, ValueError):
        return None


def job_states(items: Sequence[tuple[dict | None, Any]]) -> list[str]:
    """The state of each (job record, submitit job or None) pair: SLURM's state names, "" without a record;
    FINISHED / ENDED for local jobs that are over, GONE for a debug job of another process."""
    slurm = {i: (job if job is not None else _slurm_job(rec)) for i, (rec, job) in enumerate(items)
             if rec is not None and rec["cluster"] == "slurm" and not rec.get("cancelled")}  # one sacct for all
    out = []
    for i, (rec, job) in enumerate(items):
        if rec is None:
            out.append("")
        elif rec.get("cancelled"):
            out.append("CANCELLED")
        elif rec["cluster"] == "slurm":
            state = str(slurm[i].state).split()[0].upper() if slurm[i].state else "UNKNOWN"
            out.append("COMPLETED" if state == "UNKNOWN" and _result_exists(rec) else state)
        elif rec["cluster"] == "local":
            if job is not None and job.state == "RUNNING":
                out.append("RUNNING")
            elif job is None and _local_process(rec) is not None:
                out.append("RUNNING")
            else:
                out.append("FINISHED" if _result_exists(rec) else "ENDED")
        else:
            out.append(str(job.state).upper() if job is not None else "GONE")
    return out


def is_live(state: str) -> bool:
    return state in LIVE_STATES


# ---------------------------------------------------------------------------------------------- submit + watch


@dataclass
class Tracked:
    spec: RunSpec
    run_dir: Path
    record: dict | None  # job.json
    job: Any = None  # the submitit job, when this process submitted it
    before: str = "pending"  # the run's record state before this submission


@dataclass
class ClusterRun:
    study_dir: Path
    cluster: str
    submitted: dict[str, str] = field(default_factory=dict)  # run id -> job id
    held: dict[str, str] = field(default_factory=dict)  # run id -> live job (of an earlier submission)
    already_done: list[str] = field(default_factory=list)
    jobs: dict[str, Any] = field(default_factory=dict)  # run id -> the submitit job (this process's submissions)
    summary: StudySummary | None = None  # once waited for


def _job_record(job, cluster: str, folder: Path, res: ResourcesConfig, params: dict[str, Any], commit: str,
                dirty: bool | None, **extra: Any) -> dict[str, Any]:
    rec = {"job_id": str(job.job_id), "cluster": cluster, "folder": str(folder), "submitted": time.time(),
           "submit_host": socket.gethostname(), "git_commit": commit, "git_dirty": dirty,
           "resources": res.model_dump(), "parameters": params, **extra}
    if cluster == "local" and getattr(job, "_process", None) is not None:
        import psutil

        try:  # with the pid, this tells the job's controller from a later process that reuses its pid
            rec["started"] = psutil.Process(job._process.pid).create_time()
        except psutil.Error:
            pass
    return rec


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def submit_study(study: Study, cluster: ClusterConfig, results: Path, *, source: str = "<study>",
                 nproc_per_run: int | None = None, device: str | None = None, wait: bool = True,
                 out: Callable[[str], None] = print) -> ClusterRun:
    """Submit the study's pending runs as job arrays and, with ``wait``, watch them until every job has ended,
    then write the study's tables. Bad input raises StudyError before anything is written or submitted."""
    res = merged_resources(cluster, study, nproc_per_run)
    problems = resource_problems(cluster, res)
    name = cluster_name(cluster)
    if name == "debug" and not wait:
        problems.append("--no-wait: cluster: debug runs the jobs inside this process while it waits; without "
                        "waiting nothing would run")
    if problems:
        raise StudyError(source, problems)
    specs = preflight(study, source)
    if problems := nproc_problems(specs, res.nproc_per_run):
        raise StudyError(source, sorted(set(problems)))
    if name != "slurm" and (problems := device_setting_problems(specs, device or study.execution.device)):
        raise StudyError(source, problems)  # jobs run here (on SLURM the node's device is known inside the job)
    sdir = study_dir_for(results, study.name)
    results = results.resolve()
    run = ClusterRun(sdir, name)
    tracked = []
    for spec in specs:
        run_dir = sdir / spec.run_id
        tracked.append(Tracked(spec, run_dir, read_job(run_dir), before=records.run_state(run_dir, spec.run_id)))
    states = job_states([(t.record, None) for t in tracked])
    pending = []
    for t, state in zip(tracked, states):
        if t.before == "done":
            run.already_done.append(t.spec.run_id)
        elif is_live(state):
            run.held[t.spec.run_id] = t.record["job_id"]
        elif _held_here(t.run_dir):
            run.held[t.spec.run_id] = "local process"
        else:
            pending.append(t)

    folder = submission_folder(cluster, sdir)
    sdir.mkdir(parents=True, exist_ok=True)
    write_study_file(sdir, study)
    tracker = parent = None
    if wait and study.tracking.enabled and (pending or run.held):
        tracker = tracker_for(TrackingTarget(study.tracking, study.name, results))
        tracker.describe(study.description)
        parent = tracker.start_parent({"source": source, "runs": str(len(specs)), "executor": f"submitit/{name}"})
    commit, dirty = git_commit(), git_dirty()
    if pending and dirty:
        log.warning("the working tree has uncommitted changes: jobs run the code as it is when they start "
                    "(job.json records commit %s)", commit)
    since = time.time()
    units = study_units(study, [t.spec for t in pending], sdir, results, device=device or study.execution.device,
                        progress=False, parent=parent, since=since, nproc_per_run=res.nproc_per_run)
    params = executor_parameters(cluster, res, f"spikesuite-{study.name}")
    threads = res.cpus_per_task or (max(1, (os.cpu_count() or 1) // max(1, min(len(units), os.cpu_count() or 1)))
                                    if name == "local" else None)
    groups: dict[tuple[int, str], list[tuple[Tracked, RunUnit]]] = {}
    levels = _levels([t.spec for t in pending])
    for t, unit in zip(pending, units):  # one resources block per study today: one group per dependency level
        groups.setdefault((levels[t.spec.run_id], res.model_dump_json()), []).append((t, unit))
    try:
        for _, group in sorted(groups.items(), key=lambda kv: kv[0][0]):
            executor = make_executor(cluster, res, folder, f"spikesuite-{study.name}")
            jobs_of = {**run.held, **run.submitted}
            after = sorted({jobs_of[n].split("_")[0] for t, _ in group for n in t.spec.needs
                            if jobs_of.get(n, "")[:1].isdigit()})  # array task 123_4 -> job 123
            if after and name == "slurm":  # start once the parents' jobs ended (the job then checks how)
                extra = dict(executor_parameters(cluster, res, "").get("slurm_additional_parameters") or {})
                executor.update_parameters(slurm_additional_parameters={
                    **extra, "dependency": "afterany:" + ":".join(after)})
            for chunk in _chunks(group, cluster.max_array_size):
                jobs = executor.map_array(RunJob(res.nproc_per_run, threads, commit), [u for _, u in chunk])
                for (t, _), job in zip(chunk, jobs):
                    t.job, t.record = job, _job_record(job, name, folder, res, params, commit, dirty,
                                                       run_id=t.spec.run_id)
                    t.run_dir.mkdir(parents=True, exist_ok=True)
                    records.atomic_write_json(t.run_dir / JOB_FILE, t.record)
                    run.submitted[t.spec.run_id] = t.record["job_id"]
                    run.jobs[t.spec.run_id] = job
                out(f"submitted {len(chunk)} run(s) as {_array_label(jobs, name)} ({name})")
        if not wait:
            return run
        watched = [t for t in tracked if t.spec.run_id in run.submitted or t.spec.run_id in run.held]
        t0 = time.perf_counter()
        watch(watched, cluster.poll_s, out)
        run.summary = _summarise(run, tracked, specs, sdir, time.perf_counter() - t0)
    finally:
        if tracker is not None:
            tables = records.collect_tables(sdir, specs)[0]
            tracker.log_metrics(parent, {"runs_done": float((tables.status == "done").sum()),
                                         "runs_failed": float((tables.status == "failed").sum())})
            tracker.log_variant_means(parent, tables, specs)
            tracker.log_artifacts(parent, [sdir / records.RUNS_TABLE, sdir / STUDY_FILE])
            tracker.finish(parent, "FAILED" if run.summary is None or run.summary.failed else "FINISHED")
        close_trackers()
    return run


def _levels(specs: Sequence[RunSpec]) -> dict[str, int]:
    """Each run's dependency level among ``specs`` (0: needs no run of the list), so parents are submitted first."""
    level: dict[str, int] = {}
    for spec in specs:  # parents precede their children (expand orders them)
        level[spec.run_id] = 1 + max((level[n] for n in spec.needs if n in level), default=-1)
    return level


def _held_here(run_dir: Path) -> bool:
    """The run is being trained right now by a process on this machine (a plain ``spikesuite run``)."""
    from suite.tracking import process_alive

    status = records.read_json(run_dir / records.STATUS) or {}
    return status.get("state") == "running" and status.get("host") == socket.gethostname() \
        and isinstance(status.get("pid"), int) and status["pid"] != os.getpid() and process_alive(status["pid"]) \
        and _holds_lock(status["pid"], run_dir)


def _holds_lock(pid: int, run_dir: Path) -> bool:
    """Whether process ``pid`` has the run's lock file open (a pid reused by an unrelated process has not)."""
    import psutil

    lock = str((run_dir / LOCK).resolve())
    try:
        return any(f.path == lock for f in psutil.Process(pid).open_files())
    except psutil.Error:
        return True  # cannot tell (another user's process): assume it does


def _array_label(jobs: list, cluster: str) -> str:
    ids = [str(j.job_id) for j in jobs]
    mains = sorted({i.split("_")[0] for i in ids})
    if cluster == "slurm" and len(ids) > 1 and len(mains) == 1 and all("_" in i for i in ids):
        return f"job array {mains[0]} ({len(ids)} tasks)"
    return f"job{'s' if len(ids) > 1 else ''} {', '.join(ids)}"


def _record_line(t: Tracked) -> str:
    state = records.run_state(t.run_dir, t.spec.run_id)
    status = records.read_json(t.run_dir / records.STATUS) or {}
    attempts = status.get("attempts")
    if state == "running" and isinstance(attempts, int) and attempts > 1:
        return f"running (attempt {attempts}: resumed)"
    return state


def watch(tracked: Sequence[Tracked], poll_s: float, out: Callable[[str], None] = print) -> None:
    """Poll the runs' records and their jobs' states until no job holds any of them, printing a line whenever a
    run's state or its job's state changes. Jobs of ``cluster: debug`` are run here, one per poll."""
    last: dict[str, tuple[str, str]] = {}
    n = len(tracked)
    while True:
        states = job_states([(t.record, t.job) for t in tracked])
        ndone = sum(records.run_state(t.run_dir, t.spec.run_id) == "done" for t in tracked)
        for t, state in zip(tracked, states):
            now = (_record_line(t), state)
            if last.get(t.spec.run_id) != now:
                last[t.spec.run_id] = now
                job = f"job {t.record['job_id']} {state}" if t.record else "no job"
                out(f"{time.strftime('%H:%M:%S')} {t.spec.run_id} {t.spec.variant} seed={t.spec.config.seed}: "
                    f"{now[0]} | {job}  [{ndone}/{n} done]")
        if not any(is_live(s) for s in states):
            return
        debug = [t.job for t in tracked if t.job is not None and t.record and t.record["cluster"] == "debug"
                 and not t.job._submission.done()]
        if debug:
            debug[0].result()  # runs it here (run_one records its own failures)
        else:
            time.sleep(poll_s)


def _summarise(run: ClusterRun, tracked: list[Tracked], specs: list[RunSpec], sdir: Path, wall: float) -> StudySummary:
    summary = StudySummary(sdir, wall_time_s=wall)
    for t in tracked:
        rid = t.spec.run_id
        state = records.run_state(t.run_dir, rid)
        if rid in run.already_done:
            summary.skipped.append(rid)
        elif state == "done":
            summary.done.append(rid)
        elif state == "failed":
            summary.failed[rid] = str((records.read_json(t.run_dir / records.STATUS) or {}).get("reason", ""))
        else:
            rec = t.record or {}
            log_path = _log_path(rec, "stderr")
            summary.failed[rid] = (f"job {rec.get('job_id', '?')} ended before the run finished (run state "
                                   f"{state}); its log: {log_path}")
    records.collect_tables(sdir, specs)
    return summary


def _log_path(rec: dict, kind: str) -> str:
    if not rec.get("folder"):
        return "?"
    from submitit.core.utils import JobPaths

    return str(getattr(JobPaths(rec["folder"], job_id=rec["job_id"], task_id=0), kind))


# ---------------------------------------------------------------------------------------------- status, cancel


@dataclass
class StatusRow:
    spec: RunSpec
    state: str  # the records' state (done | failed | running | pending; stopped: running, but its job ended)
    attempts: int | None
    job_id: str
    job_state: str
    git_commit: str


def status_rows(study: Study, results: Path, *, source: str = "<study>") -> tuple[Path, list[StatusRow], list[dict]]:
    """Each run's state from the records with its job and the job's state; and the search workers'
    (records with their job state). Reads only."""
    from suite.config import expand

    specs = expand(study, source)
    sdir = study_dir_for(results, study.name)
    recs = [read_job(sdir / s.run_id) for s in specs]
    states = job_states([(r, None) for r in recs])
    rows = []
    for spec, rec, jstate in zip(specs, recs, states):
        run_dir = sdir / spec.run_id
        state = records.run_state(run_dir, spec.run_id)
        if state == "running" and rec is not None and not is_live(jstate) and not _held_here(run_dir):
            state = "stopped"  # its job ended mid-run: the next submission resumes it from its checkpoint
        attempts = (records.read_json(run_dir / records.STATUS) or {}).get("attempts")
        rows.append(StatusRow(spec, state, attempts if isinstance(attempts, int) else None,
                              rec["job_id"] if rec else "", jstate, rec.get("git_commit", "") if rec else ""))
    workers = _read_workers(sdir)
    for w, st in zip(workers, job_states([(w, None) for w in workers])):
        w["state"] = st
    return sdir, rows, workers


def cancel_study(study: Study, results: Path, *, source: str = "<study>") -> list[tuple[str, str, str]]:
    """Cancel the live jobs holding the study's runs and its search workers: (what, job id, state it was in)."""
    sdir, rows, workers = status_rows(study, results, source=source)
    targets: list[tuple[str, dict, str, Path | None]] = []  # what, job record, its state, where it is kept
    for row in rows:
        run_dir = sdir / row.spec.run_id
        rec = read_job(run_dir)
        if rec is not None and is_live(row.job_state) and row.state != "done":
            targets.append((f"run {row.spec.run_id}", rec, row.job_state, run_dir / JOB_FILE))
    targets += [(f"search worker {w.get('index', '?')}", {k: v for k, v in w.items() if k != "state"}, w["state"],
                 None) for w in workers if is_live(w["state"])]
    slurm_ids = [rec["job_id"] for _, rec, _, _ in targets if rec["cluster"] == "slurm"]
    if slurm_ids:
        subprocess.check_call(["scancel", *slurm_ids])
    done = []
    for what, rec, state, path in targets:
        if rec["cluster"] == "debug":
            continue  # it ran inside the process that submitted it
        if rec["cluster"] == "local":
            proc = _local_process(rec)
            if proc is not None:
                _stop_local(proc, 15.0)
        if path is not None:
            records.atomic_write_json(path, {**rec, "cancelled": time.time()})
        done.append((what, rec["job_id"], state))
    if workers:
        cancelled = {rec["job_id"] for _, rec, _, p in targets if p is None}
        _write_workers(sdir, [{**{k: v for k, v in w.items() if k != "state"},
                               **({"cancelled": time.time()} if w["job_id"] in cancelled else {})} for w in workers])
    return done


def _stop_local(proc, grace_s: float) -> None:
    """Stop a local job's controller: SIGINT (it stops its tasks), then, if it is still there after ``grace_s``
    (a loaded machine), SIGKILL for it and its tasks: a cancelled job never keeps running."""
    import psutil

    try:
        tasks = proc.children(recursive=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=grace_s)
    except psutil.TimeoutExpired:
        log.warning("job %s still running %.0f s after SIGINT: killing it and its tasks", proc.pid, grace_s)
        for p in [proc, *tasks]:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs([proc, *tasks], timeout=10)
    except psutil.Error:
        pass


# ---------------------------------------------------------------------------------------------- search workers


def _read_workers(sdir: Path) -> list[dict]:
    doc = records.read_json(sdir / SEARCH_DIR / WORKERS_FILE) or {}
    return [w for w in doc.get("workers", []) if isinstance(w, dict) and "job_id" in w and "cluster" in w]


def _write_workers(sdir: Path, workers: list[dict]) -> None:
    (sdir / SEARCH_DIR).mkdir(parents=True, exist_ok=True)
    records.atomic_write_json(sdir / SEARCH_DIR / WORKERS_FILE, {"workers": workers})


def submit_workers(job, n: int, study: Study, cluster: ClusterConfig, results: Path, *, source: str,
                   wait: bool = True, out: Callable[[str], None] = print, **extra: Any) -> list[tuple[dict, Any]]:
    """Submit ``n`` search workers (``job(index)`` each, one array) and, with ``wait``, wait until they end,
    printing their job states as they change. Returns (job record, submitit job) per worker."""
    res = merged_resources(cluster, study).model_copy(update={"nproc_per_run": 1})  # a worker is one process
    problems = resource_problems(cluster, res)
    name = cluster_name(cluster)
    if name == "debug" and not wait:
        problems.append("--no-wait: cluster: debug runs the workers inside this process while it waits")
    if n < 1:
        problems.append(f"--workers: must be >= 1 (got {n})")
    if problems:
        raise StudyError(source, problems)
    sdir = study_dir_for(results, study.name)
    folder = submission_folder(cluster, sdir)
    params = executor_parameters(cluster, res, f"spikesuite-{study.name}-search")
    commit, dirty = git_commit(), git_dirty()
    previous = [w for w, st in zip(_read_workers(sdir), job_states([(w, None) for w in _read_workers(sdir)]))
                if is_live(st)]
    executor = make_executor(cluster, res, folder, params["name"])
    pairs = []
    for chunk in _chunks(list(range(n)), cluster.max_array_size):
        jobs = executor.map_array(job, chunk)
        for i, j in zip(chunk, jobs):
            pairs.append((_job_record(j, name, folder, res, params, commit, dirty, index=i, **extra), j))
        out(f"submitted {len(chunk)} search worker(s) as {_array_label(jobs, name)} ({name})")
    _write_workers(sdir, previous + [rec for rec, _ in pairs])
    if not wait:
        return pairs
    last: dict[int, str] = {}
    while True:
        states = job_states(pairs)
        for (rec, _), st in zip(pairs, states):
            if last.get(rec["index"]) != st:
                last[rec["index"]] = st
                out(f"{time.strftime('%H:%M:%S')} search worker {rec['index']}: job {rec['job_id']} {st}")
        if not any(is_live(s) for s in states):
            return pairs
        debug = [j for rec, j in pairs if rec["cluster"] == "debug" and not j._submission.done()]
        if debug:
            debug[0].result()
        else:
            time.sleep(cluster.poll_s)
