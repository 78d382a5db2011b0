"""Against a real SLURM scheduler (slurmctld, slurmd, slurmdbd on MariaDB; ``.ci/slurm.sh up`` as root, or
``nox -s slurm``): job arrays split at ``max_array_size``, fine-tuning children held by ``afterany`` dependencies,
a requeued job (``scontrol requeue``, then the ``--signal`` path) resuming from its epoch checkpoint to the records
of an uninterrupted run, ``status`` from sacct, ``cancel`` through scancel, two search workers on a journal, MLflow
tracking from inside jobs to a server on PostgreSQL, and a partition that does not exist refused before anything is
submitted. Skipped where ``sinfo`` does not answer with a usable node."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from suite.cli import main
from suite.config import expand, parse_study
from suite.names import KIND_TAG, RUN_TAG, RUNS_TABLE
from suite.run import run_study
from suite.run.cluster import JOB_FILE, cancel_study

TIMING = ["train_time_s"]  # the wall-clock column: the only one allowed to differ


def _slurm_reason() -> str | None:
    """Why the tests cannot run here (None: sinfo lists a node that can take jobs)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM commands (sinfo, sbatch) on PATH: start one with `sudo .ci/slurm.sh up` or `nox -s slurm`"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo did not answer: {exc}"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()} (is slurmctld running? `sudo .ci/slurm.sh up`)"
    if not re.search(r"^(idle|mixed|allocated)", out.stdout, re.M):
        return f"no SLURM node takes jobs (sinfo: {out.stdout.split()})"
    return None


REASON = _slurm_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=str(REASON)), pytest.mark.timeout(600)]

BASE = """
dataset: {name: digits}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 64, warmup_epochs: 0}
eval: {heatmap_images: 0}
tracking: {enabled: false}
"""
MATRIX = "name: arr\n" + BASE + "variants: {dense: {}}\nmatrix: {seed: [0, 1, 2]}\n"
FINETUNE = "name: ft\n" + BASE + """variants:
  dense: {}
  act_ft: {tokens: {halting: {}}, train: {init_from: dense, epochs: 1}}
  tome: {eval: {apply: {tokens.merge: {r: 2}}}}
"""
# one run whose epochs (about a second each) leave time to requeue and signal it between two of them
# Long enough that each attempt still has epochs left when the next interruption comes, on an idle machine too
# (512 images x 8 epochs finished in 8 s there, before the requeued attempt started: nothing left to resume)
LONG = """
name: long
dataset: {name: synthetic, synthetic: {train_size: 2048, test_size: 32}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 12, batch_size: 16, warmup_epochs: 0}
eval: {heatmap_images: 0}
tracking: {enabled: false}
variants: {dense: {}}
"""
SEARCH = "name: srch\n" + BASE + """variants: {dense: {}}
search:
  variants: [dense]
  stage: train
  objectives: [{metric: accuracy, direction: maximize}]
  params: {train.lr: {uniform: [1.0e-3, 1.0e-2]}}
  n_trials: 2
"""


@pytest.fixture(autouse=True)
def one_thread_and_fresh_sacct(monkeypatch):
    """Jobs inherit the environment (sbatch --export=ALL): one thread each, two jobs share the two cores. submitit
    caches sacct for up to half the time since its last submission (at most 10 minutes): 1 s here."""
    from submitit.slurm.slurm import SlurmJob

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(SlurmJob.watcher, "_delay_s", 1)


def cluster_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cluster.yml"
    path.write_text(f"backend: submitit\ncluster: slurm\nfolder: {tmp_path}/submitit/%j\npoll_s: 1\n"
                    f"slurm_partition: debug\nresources: {{timeout_min: 10, cpus_per_task: 1}}\n{extra}")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sacct(job_ids: list[str], fields: str = "JobID,JobName,Partition,State,ExitCode") -> list[dict[str, str]]:
    """sacct's allocation lines (-X: one per array task) for the jobs, as dicts."""
    out = subprocess.run(["sacct", "-X", "-n", "--parsable2", "-o", fields, "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    keys = fields.split(",")
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]


def state(job: str) -> str:
    """The job's state in sacct ("" while sacct does not list it yet, just after sbatch)."""
    lines = sacct([job], "JobID,State")
    return lines[0]["State"] if lines else ""


def until(what: str, check: Callable[[], object], timeout_s: float = 180, every: float = 0.2):
    deadline = time.time() + timeout_s
    while not (value := check()):
        assert time.time() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(every)
    return value


def table(results: Path, study: str) -> pd.DataFrame:
    return pd.read_csv(results / study / RUNS_TABLE).drop(columns=TIMING).sort_values("run_id").reset_index(drop=True)


def job_of(results: Path, study: str, run_id: str) -> str:
    return json.loads((results / study / run_id / JOB_FILE).read_text())["job_id"]


def test_a_study_is_job_arrays_split_at_max_array_size_and_status_reads_sacct(tmp_path, capsys, mlflow_server):
    study = write(tmp_path / "arr.yaml", MATRIX)
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cluster_file(tmp_path, "max_array_size: 2\n")),
                 "--results", str(results), "--no-report"]) == 0
    out = capsys.readouterr().out
    arrays = re.findall(r"submitted 2 run\(s\) as job array (\d+) \(2 tasks\) \(slurm\)", out)
    single = re.findall(r"submitted 1 run\(s\) as job (\d+) \(slurm\)", out)
    assert len(arrays) == 1 and len(single) == 1, out
    assert "arr: 3 runs: 3 run now, 0 already done" in out
    lines = sacct([arrays[0], single[0]])
    print("\n".join("|".join(line.values()) for line in lines), file=sys.stderr)  # for the closing note (-s)
    # submitit submits a one-run chunk as a plain job
    assert sorted(line["JobID"] for line in lines) == sorted([f"{arrays[0]}_0", f"{arrays[0]}_1", single[0]])
    assert {(line["State"], line["ExitCode"], line["Partition"], line["JobName"]) for line in lines} == \
        {("COMPLETED", "0:0", "debug", "spikesuite-arr")}
    specs = expand(parse_study(MATRIX))
    assert sorted(job_of(results, "arr", s.run_id) for s in specs) == sorted(line["JobID"] for line in lines)
    # the records equal those of a plain local run
    reference = tmp_path / "reference"
    assert not run_study(parse_study(MATRIX), reference, progress=False).failed
    pd.testing.assert_frame_equal(table(results, "arr"), table(reference, "arr"))
    # status: the jobs are out of the queue (squeue no longer lists them); their state comes from sacct
    assert subprocess.run(["squeue", "-h", "-j", arrays[0]], capture_output=True, text=True).stdout.strip() == ""
    assert main(["status", str(study), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count(" COMPLETED") == 3 and f"{arrays[0]}_1" in out, out


def test_fine_tuning_children_wait_for_their_parents_job_through_afterany(tmp_path, capsys):
    study = write(tmp_path / "ft.yaml", FINETUNE)
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cluster_file(tmp_path)), "--results", str(results),
                 "--no-report"]) == 0
    assert "ft: 4 runs: 4 run now" in capsys.readouterr().out  # dense, act_ft, tome and act_ft's control dense_ft
    runs = {s.variant: s for s in expand(parse_study(FINETUNE))}
    jobs = {v: job_of(results, "ft", s.run_id) for v, s in runs.items()}
    parent = jobs["dense"].split("_")[0]
    child = jobs["act_ft"].split("_")[0]
    # every child (act_ft, tome, the control dense_ft): one array, submitted after the parent
    assert child == jobs["tome"].split("_")[0] == jobs["dense_ft"].split("_")[0] != parent
    script = (tmp_path / "submitit" / child / f"{child}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterany:{parent}\n" in script
    times = {line["JobID"]: line for line in sacct([parent, child], "JobID,State,Start,End")}
    assert {line["State"] for line in times.values()} == {"COMPLETED"}
    for task in (jobs["act_ft"], jobs["tome"], jobs["dense_ft"]):  # SLURM started the children after the parent
        assert times[task]["Start"] >= times[jobs["dense"]]["End"], times
    status = {v: json.loads((results / "ft" / s.run_id / "status.json").read_text()) for v, s in runs.items()}
    assert {s["state"] for s in status.values()} == {"done"}
    assert status["tome"]["trained_by"] == runs["dense"].run_id


def test_a_requeued_and_a_signalled_job_resume_to_the_records_of_an_uninterrupted_run(tmp_path, capsys):
    study = write(tmp_path / "long.yaml", LONG)
    cfg = cluster_file(tmp_path, "max_requeues: 3\n")
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    for results in (interrupted, uninterrupted):  # both at once: one core each
        assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-wait"]) == 0
    capsys.readouterr()
    rid, = (s.run_id for s in expand(parse_study(LONG)))
    job = job_of(interrupted, "long", rid)
    run_dir = interrupted / "long" / rid

    def epochs() -> int:
        history = run_dir / "history.csv"
        return max(0, len(history.read_text().splitlines()) - 1) if history.exists() else 0

    def status() -> dict:
        try:
            return json.loads((run_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    until("epoch 1's checkpoint", lambda: epochs() >= 1)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)  # as an admin or a preemption does
    until("the requeued job's second attempt", lambda: status().get("attempts") == 2, timeout_s=240)
    resumed_at = epochs()
    assert resumed_at >= 1
    until("an epoch of the second attempt", lambda: epochs() > resumed_at)
    # the --signal path: what SLURM sends signal_delay_s before the time limit; submitit requeues the job itself
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    lines: list[str] = []
    from suite.config import load_study
    from suite.run.cluster import submit_study
    from suite.run.cluster_file import load_cluster

    for results in (interrupted, uninterrupted):  # waits for the live jobs; submits nothing
        again = submit_study(load_study(study), load_cluster(cfg), results, out=lines.append)
        assert not again.submitted and again.summary is not None and not again.summary.failed
    assert status()["state"] == "done" and status()["attempts"] == 3
    attempts = subprocess.run(["sacct", "-D", "-X", "-n", "--parsable2", "-o", "State", "-j", job], check=True,
                              capture_output=True, text=True, timeout=30).stdout.split()
    assert attempts == ["REQUEUED", "REQUEUED", "COMPLETED"]  # sacct -D: every attempt of the job
    log = next((tmp_path / "submitit" / job.split("_")[0]).glob(f"{job}_0_log.err")).read_text()
    assert log.count("running (resuming)") == 2  # both later attempts loaded the epoch checkpoint
    assert "Requeued job" in log or "requeued" in log
    pd.testing.assert_frame_equal(table(interrupted, "long"), table(uninterrupted, "long"))
    a, b = (pd.read_csv(d / "long" / rid / "history.csv").drop(columns="epoch_time_s")
            for d in (interrupted, uninterrupted))
    pd.testing.assert_frame_equal(a, b)
    print(f"requeued job {job}: history after 3 attempts equals the uninterrupted run's:\n{a.to_string()}",
          file=sys.stderr)


def test_cancel_uses_scancel(tmp_path, capsys):
    text = LONG.replace("epochs: 8", "epochs: 200")  # still running when cancelled
    study = write(tmp_path / "long.yaml", text)
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cluster_file(tmp_path)), "--results", str(results),
                 "--no-wait"]) == 0
    rid, = (s.run_id for s in expand(parse_study(text)))
    job = job_of(results, "long", rid)
    try:
        until("the job to run", lambda: state(job) == "RUNNING")
        capsys.readouterr()
        assert main(["cancel", str(study), "--results", str(results)]) == 0
        assert f"cancelled job {job} (run {rid}, was RUNNING)" in capsys.readouterr().out
        until("sacct to say CANCELLED", lambda: state(job).startswith("CANCELLED"), timeout_s=60)
        assert main(["status", str(study), "--results", str(results)]) == 0
        assert f"{job:<14} CANCELLED" in capsys.readouterr().out
    finally:
        cancel_study(parse_study(text), results)


def test_two_slurm_search_workers_share_a_journal(tmp_path, capsys):
    study = write(tmp_path / "srch.yaml", SEARCH)
    results = tmp_path / "results"
    journal = f"journal:{tmp_path / 'optuna.journal'}"
    assert main(["search", str(study), "--parallel-config", str(cluster_file(tmp_path)), "--storage", journal,
                 "--workers", "2", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    array, = re.findall(r"submitted 2 search worker\(s\) as job array (\d+) \(2 tasks\) \(slurm\)", out)
    assert {line["State"] for line in sacct([array])} == {"COMPLETED"}
    trials = pd.read_csv(results / "srch" / "search" / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"COMPLETE"}, trials


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An ``mlflow server`` on a throwaway PostgreSQL (tests/conftest.py), started when the module's first test
    asks for it: its start-up (a minute or two of migrations on a busy machine) overlaps the jobs of the tests
    before the one that uses it. Yields (URI, a function that waits until it answers)."""
    import urllib.request

    from conftest import _postgres_bindir, postgres_database

    from suite.search.storage import with_driver
    from suite.ui import server_env

    if _postgres_bindir() is None:
        yield None  # its test skips; the others do not need it
        return
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    with postgres_database("mlflow") as url, open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", with_driver(url),
                                   "--default-artifact-root", (tmp / "artifacts").as_uri(), "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1"], env=server_env(os.environ),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
            except OSError:
                return False

        try:
            yield uri, lambda: until("the MLflow server", healthy, timeout_s=400, every=1)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, 15)
                server.wait(timeout=60)


def test_mlflow_tracking_from_jobs_to_a_server_on_postgresql(tmp_path, mlflow_server, capsys):
    from mlflow import MlflowClient

    if mlflow_server is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    uri, wait = mlflow_server
    wait()
    text = MATRIX.replace("name: arr", "name: tracked").replace("tracking: {enabled: false}",
                                                                f"tracking: {{uri: '{uri}'}}") \
        .replace("seed: [0, 1, 2]", "seed: [0]")
    study = write(tmp_path / "tracked.yaml", text)
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cluster_file(tmp_path)), "--results", str(results),
                 "--no-report"]) == 0
    assert "tracking disabled" not in capsys.readouterr().err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'run'")
    spec, = expand(parse_study(text))
    assert [r.data.tags[RUN_TAG] for r in runs] == [spec.run_id]
    metrics = runs[0].data.metrics  # per-epoch rows and the result, logged from inside the job
    assert runs[0].info.status == "FINISHED" and {"train_loss", "val_accuracy", "energy_exact_uj"} <= set(metrics)
    job = job_of(results, "tracked", spec.run_id)
    log = next((tmp_path / "submitit" / job).glob(f"{job}_0_log.err")).read_text()
    assert "tracking disabled" not in log  # the job itself reached the server


def test_a_partition_that_does_not_exist_is_refused_before_anything_is_submitted(tmp_path, capsys):
    study = write(tmp_path / "arr.yaml", MATRIX)
    cfg = write(tmp_path / "cluster.yml", "backend: submitit\ncluster: slurm\nslurm_partition: gpu-a100\n"
                                          "resources: {timeout_min: 10}\n")
    results = tmp_path / "results"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "slurm_partition: no partition 'gpu-a100' on this cluster (sinfo lists debug)" in err, err
    assert not results.exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
