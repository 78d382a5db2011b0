"""``spikesuite ui``: the MLflow UI over the suite's tracking store, run as a child that never outlives us.

``mlflow ui`` is a tree of processes: the MLflow CLI, the uvicorn server it starts and, with several workers,
uvicorn's worker processes (and, when MLflow's job execution is on, a job runner). Killing only the process we
started leaves the workers holding the port. So the server starts in its own session (its own process group),
SIGINT and SIGTERM received here are forwarded to that whole group, and ``serve`` returns only once every process
of the group (and every descendant seen while it ran) is gone: after a grace period the leftovers get SIGKILL.
The server's own session also keeps a terminal's Ctrl-C from reaching it twice (once from the terminal, once
forwarded).

The child's environment silences deprecation warnings: MLflow imports APIs its own dependencies deprecated
(starlette's WSGI middleware, one warning block per worker), which says nothing to a user of the suite.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import psutil

GRACE_S = 10.0  # uvicorn's graceful shutdown closes idle keep-alive connections well within this
KILL_WAIT_S = 5.0
POLL_S = 0.5
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# First, so that a user's own PYTHONWARNINGS (appended after, hence applied last) still wins.
QUIET_WARNINGS = ("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning", "ignore::FutureWarning",
                  # starlette's StarletteDeprecationWarning is a UserWarning: matched by its message instead
                  "ignore:starlette.middleware.wsgi is deprecated")


def server_command(uri: str, *, host: str, port: int, workers: int, artifact_root: Path | None) -> list[str]:
    """The ``mlflow ui`` command line; ``artifact_root`` is where new experiments keep artifacts (a sqlite store
    needs one, or artifacts would land in the working directory's ./mlruns)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if artifact_root is not None:
        cmd += ["--default-artifact-root", artifact_root.resolve().as_uri()]
    return cmd


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with deprecation warnings silenced and MLflow's job runner off unless asked for: the runner serves
    GenAI jobs (LLM judges, trace scoring) the suite never submits, and costs more processes and start-up time."""
    env = dict(base)
    env["PYTHONWARNINGS"] = ",".join([*QUIET_WARNINGS, *filter(None, [base.get("PYTHONWARNINGS")])])
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port`` (None: it can). Checked before starting it, because MLflow
    reports a taken port only in uvicorn's log and then exits with status 0."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port} ({exc.strerror or exc}); another server there? choose --port"
    return None


def probe_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine (a wildcard bind answers on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


# Probes go straight to the server: an http_proxy in the environment must not answer for it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def base_url(host: str, port: int) -> str:
    host = probe_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def answers(url: str) -> bool:
    """The server answers ``/health`` (the port alone opens before the app is loaded)."""
    try:
        with _DIRECT.open(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def experiment_links(url: str) -> list[tuple[str, str]]:
    """``(study, link)`` for every experiment of the store, most recently updated first. The link opens MLflow's
    training view of the experiment's runs: MLflow 3's UI otherwise opens every experiment in its GenAI view
    (traces, no runs) unless this browser once switched to 'Model training'; the experiment's kind tag does not
    change that."""
    request = urllib.request.Request(f"{url}/ajax-api/2.0/mlflow/experiments/search", method="POST",
                                     data=json.dumps({"max_results": 1000}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with _DIRECT.open(request, timeout=10) as response:
            experiments = json.load(response).get("experiments", [])
    except (OSError, ValueError):
        return []  # a hint only: the UI itself works
    experiments.sort(key=lambda e: -int(e.get("last_update_time") or 0))
    return [(e["name"], f"{url}/#/experiments/{e['experiment_id']}/runs?workflowType=machine_learning")
            for e in experiments if e.get("name") != "Default"]


def say_ready(url: str, seconds: float) -> None:
    """The start-up time and a link per study (a long store lists its 20 latest)."""
    links = experiment_links(url)
    print(f"spikesuite ui: ready ({seconds:.1f} s); " + (
        "each study's runs (MLflow's training view):" if links else "no study in this store yet"), flush=True)
    width = max((len(name) for name, _ in links[:20]), default=0)
    for name, link in links[:20]:
        print(f"  {name:<{width}}  {link}", flush=True)
    if len(links) > 20:
        print(f"  ... and {len(links) - 20} more at {url}/#/experiments?workflowType=machine_learning", flush=True)


def _alive(proc: psutil.Process) -> bool:
    # A zombie has exited (only its exit status is left for its parent): it holds no port.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group(pgid: int) -> list[psutil.Process]:
    """Every live process of process group ``pgid`` (orphans included: once the leader is gone, its children are
    re-parented and no longer its descendants, but they keep the group)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


class ServerTree:
    """The server's processes: its group, plus any descendant seen while it ran (one that left the group)."""

    def __init__(self, leader: subprocess.Popen) -> None:
        self.leader = leader
        self.seen: dict[int, psutil.Process] = {}

    def refresh(self) -> None:
        try:
            for child in psutil.Process(self.leader.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def alive(self) -> list[psutil.Process]:
        procs = {p.pid: p for p in [*self.seen.values(), *_group(self.leader.pid)]}
        return [p for pid, p in procs.items() if pid != os.getpid() and _alive(p)]

    def signal(self, signum: int) -> None:
        """``signum`` to the group and to every process of the tree outside it."""
        try:
            os.killpg(self.leader.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in self.alive():
            try:
                proc.send_signal(signum)
            except psutil.Error:
                pass

    def wait_gone(self, timeout: float) -> bool:
        """Reap the leader and wait until no process of the tree is left; False if some outlived ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.leader.poll()  # reaps our own child, so it does not linger as a zombie
            if self.leader.returncode is not None and not self.alive():
                return True
            time.sleep(0.1)
        return False

    def stop(self, signum: int, grace_s: float) -> None:
        """Forward ``signum``, then SIGKILL whatever is left after ``grace_s``; returns once all of it is gone."""
        self.signal(signum)
        if not self.wait_gone(grace_s):
            print(f"spikesuite ui: the MLflow server did not stop within {grace_s:.0f} s; killing it",
                  file=sys.stderr, flush=True)
            self.signal(signal.SIGKILL)
            self.wait_gone(KILL_WAIT_S)
        self.leader.wait()


def _die_with_us() -> None:
    """In the server's leader, before exec: SIGTERM when our process dies (Linux ``PR_SET_PDEATHSIG``). SIGKILL
    cannot be caught and forwarded; this way even then the leader gets a signal, which MLflow passes to uvicorn."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: SIGINT/SIGTERM are still forwarded
        pass


def serve(cmd: list[str], env: Mapping[str, str], *, host: str, port: int, grace_s: float = GRACE_S) -> int:
    """Run ``cmd`` (the MLflow server) until it exits or SIGINT/SIGTERM arrives here; on a signal, stop the whole
    server tree and return 0 (asked to stop), else the server's exit status (e.g. the port was taken). Says once
    when the server answers, with how long it took."""
    received: list[int] = []
    tree: ServerTree | None = None

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        if tree is not None and len(received) > 1:  # asked twice: stop waiting for a graceful exit
            tree.signal(signal.SIGKILL)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    try:
        leader = subprocess.Popen(cmd, env=dict(env), start_new_session=True, preexec_fn=_die_with_us)
        tree = ServerTree(leader)
        try:
            _wait(leader, tree, received, host, port, t0)
        finally:
            # Asked to stop, the server exited by itself, or something failed here (say stdout's reader left):
            # whichever, none of the server's processes may outlive this function.
            tree.stop(received[0] if received else signal.SIGTERM, grace_s)
        if received:
            return 0
        # MLflow's CLI exits 0 even when uvicorn failed: an exit nobody asked for is a failure.
        print(f"spikesuite ui: the MLflow server exited by itself (status {leader.returncode}); its messages are "
              "above", file=sys.stderr, flush=True)
        return leader.returncode or 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(leader: subprocess.Popen, tree: ServerTree, received: list[int], host: str, port: int, t0: float) -> None:
    """Until a signal arrives or the server exits, keeping track of its processes; says when it first answers."""
    url, ready = base_url(host, port), False
    while not received and leader.poll() is None:
        tree.refresh()
        if not ready and answers(url):
            ready = True
            say_ready(url, time.monotonic() - t0)
        time.sleep(POLL_S)
