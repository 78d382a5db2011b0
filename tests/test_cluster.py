"""Cluster execution through submitit, on CPU without SLURM: ``cluster: debug`` (in this process) and ``cluster:
local`` (subprocesses) give the records a plain ``spikesuite run`` gives; a job signalled before its time limit is
requeued and resumes from its epoch checkpoint; the sbatch scripts for SLURM (``mocked_slurm``); bad cluster
files; status and cancel; search workers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from submitit.slurm.test_slurm import mocked_slurm  # internal test helper: submitit is pinned for it

from suite.cli import main
from suite.config import expand, parse_study
from suite.names import RUNS_TABLE
from suite.run import run_study
from suite.run.cluster import JOB_FILE, cancel_study, status_rows, submit_study
from suite.run.cluster_file import parse_cluster, slurm_minutes

TIMING = ["train_time_s"]  # the wall-clock column: the only one allowed to differ

STUDY = """
name: tiny
dataset: {name: synthetic, synthetic: {train_size: 64, test_size: 32}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 32, warmup_epochs: 0}
eval: {heatmap_images: 2}
tracking: {enabled: false}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
"""

# one run with epochs long enough (about a second each here) to be signalled between two of them
LONG = """
name: long
dataset: {name: synthetic, synthetic: {train_size: 512, test_size: 32}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 4, batch_size: 16, warmup_epochs: 0}
eval: {heatmap_images: 2}
tracking: {enabled: false}
resources: {timeout_min: 2}
variants:
  dense: {}
"""

SEARCH = STUDY.replace("name: tiny", "name: tinysearch") + """
search:
  variants: [dense]
  stage: train
  objectives: [{metric: accuracy, direction: maximize}]
  params: {train.lr: {uniform: [1.0e-3, 1.0e-2]}}
  n_trials: 1
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every process (this one and the jobs it starts) trains on one thread: identical numbers, no contention."""
    before, threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def table(results: Path, study: str = "tiny") -> pd.DataFrame:
    return pd.read_csv(results / study / RUNS_TABLE).drop(columns=TIMING).sort_values("run_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The tiny study run by the local pool (``spikesuite run`` without --parallel-config)."""
    results = tmp_path_factory.mktemp("reference")
    summary = run_study(parse_study(STUDY), results, progress=False)
    assert not summary.failed and len(summary.done) == 2
    return table(results)


@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_submitit_gives_the_records_of_a_local_run(tmp_path, reference, capsys, cluster):
    study = write(tmp_path / "tiny.yaml", STUDY)
    cfg = write(tmp_path / "cluster.yml", f"backend: submitit\ncluster: {cluster}\npoll_s: 0.2\n")
    results = tmp_path / "results"
    cmd = ["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-report"]
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "submitted 2 run(s) as jobs" in out and f"({cluster})" in out
    assert "tiny: 2 runs: 2 run now, 0 already done" in out
    pd.testing.assert_frame_equal(table(results), reference)
    for spec in expand(parse_study(STUDY)):
        rec = json.loads((results / "tiny" / spec.run_id / JOB_FILE).read_text())
        assert rec["cluster"] == cluster and rec["run_id"] == spec.run_id and rec["git_commit"]
    # finished runs are never submitted again
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "submitted" not in out and "tiny: 2 runs: 0 run now, 2 already done" in out


def test_a_signalled_job_is_requeued_and_resumes_from_its_epoch_checkpoint(tmp_path):
    import psutil

    study = parse_study(LONG)
    ref = tmp_path / "reference"
    assert not run_study(study, ref, progress=False).failed
    # timeout_min 2 with max_requeues 1: a USR2 (what the local controller and SLURM send signal_delay_s before the
    # time limit) counts as a timeout, and one timeout may be requeued
    cluster = parse_cluster("backend: submitit\ncluster: local\npoll_s: 0.2\nmax_requeues: 1\n")
    results = tmp_path / "results"
    run = submit_study(study, cluster, results, wait=False, out=lambda line: None)
    (rid, job), = run.jobs.items()
    history = results / "long" / rid / "history.csv"
    deadline = time.time() + 120
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):  # epoch 1 is checkpointed
        assert time.time() < deadline and job.state == "RUNNING", job.stderr()
        time.sleep(0.05)
    task, = psutil.Process(int(job.job_id)).children()
    os.kill(task.pid, signal.SIGUSR2)
    lines: list[str] = []
    again = submit_study(study, cluster, results, out=lines.append)  # waits for the live job, submits nothing
    assert again.held == {rid: job.job_id} and not again.submitted
    assert again.summary is not None and again.summary.done == [rid] and not again.summary.failed
    log = job.stderr()
    assert "timed-out" in log and f"Requeued job {job.job_id} (0 remaining timeouts)" in log
    assert "running (resuming)" in log  # the second attempt loaded the epoch checkpoint
    assert any("attempt 2: resumed" in line for line in lines)
    status = json.loads((results / "long" / rid / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    pd.testing.assert_frame_equal(table(results, "long"), table(ref, "long"))
    a, b = (pd.read_csv(d / "long" / rid / "history.csv").drop(columns="epoch_time_s") for d in (results, ref))
    pd.testing.assert_frame_equal(a, b)


def test_a_run_on_two_ranks_is_one_job_with_two_tasks(tmp_path, capsys):
    """``--nproc-per-run 2`` on cluster: local: submitit starts two tasks, TorchDistributedEnvironment makes them
    ranks 0 and 1 of the run (gloo on CPU), rank 0 writes the records."""
    text = STUDY.replace("  act: {tokens: {halting: {}}}\n", "")
    study = write(tmp_path / "tiny.yaml", text)
    cfg = write(tmp_path / "cluster.yml", "backend: submitit\ncluster: local\npoll_s: 0.2\n")
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-report",
                 "--nproc-per-run", "2"]) == 0
    assert "tiny: 1 runs: 1 run now" in capsys.readouterr().out
    spec, = expand(parse_study(text))
    rec = json.loads((results / "tiny" / spec.run_id / JOB_FILE).read_text())
    assert rec["parameters"]["tasks_per_node"] == 2 and rec["resources"]["nproc_per_run"] == 2
    status = json.loads((results / "tiny" / spec.run_id / "status.json").read_text())
    assert status["state"] == "done" and status["world_size"] == 2
    logs = [(results / "tiny" / "submitit" / rec["job_id"] / f"{rec['job_id']}_{k}_log.err").read_text()
            for k in (0, 1)]
    assert "rank 0 of 2" in logs[0] and "running on 2 ranks" in logs[0] and "rank 1 of 2" in logs[1]


MATRIX = STUDY.replace("  act: {tokens: {halting: {}}}\n", "") + """
matrix: {seed: [0, 1, 2, 3, 4]}
resources: {nproc_per_run: 2, gpus_per_run: 2, cpus_per_task: 4, mem_gb: 16, timeout_min: 90}
"""


def sbatch_scripts(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.rglob("*_submission.sh")) if not p.is_symlink()}


def test_sbatch_scripts_for_slurm(tmp_path, capsys):
    study = write(tmp_path / "matrix.yaml", MATRIX)
    cfg = write(tmp_path / "cluster.yml", f"""
backend: submitit
cluster: slurm
folder: {tmp_path}/submitit/%j
max_array_size: 2
slurm_partition: gpu
slurm_array_parallelism: 1
slurm_signal_delay_s: 120
slurm_setup: ["module load cuda/12.4"]
resources: {{timeout_min: 30, mem_gb: 8}}
""")
    results = tmp_path / "results"
    with mocked_slurm():
        assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-wait"]) == 0
        out = capsys.readouterr().out
        assert out.count("submitted 2 run(s) as job array") == 2 and "submitted 1 run(s) as job 14 " in out
        scripts = sbatch_scripts(tmp_path / "submitit")
        assert sorted(scripts) == ["12_submission.sh", "13_submission.sh", "14_submission.sh"]
        for name, text in scripts.items():
            # study resources win over the cluster file's (timeout 90 > 30, mem 16 > 8); DDP ranks = tasks per node
            for flag in ("--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=4", "--mem=16GB", "--time=90",
                         "--partition=gpu", "--signal=USR2@120", "--nodes=1", "--job-name=spikesuite-tiny"):
                assert f"#SBATCH {flag}\n" in text, (name, flag)
            assert "module load cuda/12.4" in text
            assert ("#SBATCH --array=0-1%1\n" in text) == (name != "14_submission.sh")  # split at max_array_size
        specs = expand(parse_study(MATRIX))
        ids = sorted(json.loads((results / "tiny" / s.run_id / JOB_FILE).read_text())["job_id"] for s in specs)
        assert ids == ["12_0", "12_1", "13_0", "13_1", "14"]

        # the jobs are live: a second submission submits nothing; status shows them; cancel scancels them
        assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-wait"]) == 0
        assert "0 runs submitted (slurm), 0 already done, 5 held by live jobs" in capsys.readouterr().out
        assert main(["status", str(study), "--results", str(results)]) == 0
        out = capsys.readouterr().out
        assert out.count(" RUNNING") == 5 and "12_1" in out
        assert main(["cancel", str(study), "--results", str(results)]) == 0
        assert capsys.readouterr().out.count("cancelled job") == 5
        _, rows, _ = status_rows(parse_study(MATRIX), results)
        assert {r.job_state for r in rows} == {"CANCELLED"}

        # --nproc-per-run beats the study's resources; cancelled runs are submitted again
        assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-wait",
                     "--nproc-per-run", "4"]) == 0
        assert "5 runs submitted (slurm)" in capsys.readouterr().out
        assert all("#SBATCH --ntasks-per-node=4\n" in t for n, t in sbatch_scripts(tmp_path / "submitit").items()
                   if n[:2] in ("15", "16", "17"))


@pytest.mark.parametrize("text, key", [
    ("- backend: submitit\n", "mapping"),
    ("backend: dask\n", "backend"),
    ("backend: submitit\nslurm_partitoin: gpu\n", "slurm_partitoin: submitit's SLURM executor has no parameter"),
    ("backend: submitit\nslurm_time: 10:30\n", 'slurm_time: 10:30 is read by YAML as the number 630 (base 60); '
                                               'quote it: slurm_time: "10:30"'),
    ("backend: submitit\nresources: {nproc_per_run: 0}\n", "resources.nproc_per_run"),
    ("backend: submitit\nresources: {timeout_min: 1:00:00}\n", "resources.timeout_min: 1:00:00 is read by YAML"),
    ("backend: submitit\nslurm_mem: 10G\n", "slurm_mem: set resources.mem_gb instead"),
    ("backend: submitit\nslurm_additional_parameters: {time: 60}\n", "slurm_additional_parameters.time"),
    ("backend: submitit\nslurm_setup: module load cuda\n", "slurm_setup: submitit rejects"),
    ("backend: submitit\nbackned: local\n", "backned: unknown key"),
    ("backend: submitit\ncluster: slurm\nresources: {timeout_min: 60}\n", "cluster: slurm: no srun on this machine"),
    ("backend: submitit\nresources: {nproc_per_run: 3}\n", "train.batch_size 32 is not divisible by nproc_per_run 3"),
    ("backend: local\nresources: {nproc_per_run: 3}\n", "train.batch_size 32 is not divisible by nproc_per_run 3"),
])
def test_bad_cluster_file_exits_2_naming_the_key_and_writes_nothing(tmp_path, capsys, monkeypatch, text, key):
    # no SLURM commands, even where .ci/slurm.sh installed them: "cluster:" unset means local here, as expected
    monkeypatch.setenv("PATH", str(tmp_path))
    study = write(tmp_path / "tiny.yaml", STUDY)
    cfg = write(tmp_path / "cluster.yml", text)
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert key in err, err
    assert not results.exists()


@pytest.mark.parametrize("args, study_text, key", [
    (["--nproc-per-run", "0"], STUDY, "--nproc-per-run"),
    (["--no-wait"], STUDY, "--no-wait"),  # cluster: debug runs jobs while it waits
    ([], STUDY + "resources: {nproc_per_run: 0}\n", "resources.nproc_per_run"),
])
def test_bad_command_line_or_study_resources_exit_2(tmp_path, capsys, args, study_text, key):
    study = write(tmp_path / "tiny.yaml", study_text)
    cfg = write(tmp_path / "cluster.yml", "backend: submitit\ncluster: debug\n")
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), *args]) == 2
    assert key in capsys.readouterr().err
    assert not results.exists()
    assert main(["run", str(study), "--no-wait", "--results", str(results)]) == 2  # needs --parallel-config
    assert not results.exists()


def test_slurm_times_are_minutes():
    assert [slurm_minutes(v) for v in (90, "90", "1:30", "2:00:00", "1-0", "2-00:00:00", "0-1:30")] == \
        [90, 90, 2, 120, 1440, 2880, 90]
    for bad in ("10:30:00:00", "soon", True, 0):
        with pytest.raises(ValueError):
            slurm_minutes(bad)
    # a quoted SLURM time becomes the cluster file's resources.timeout_min (submitit's requeue logic reads it)
    assert parse_cluster('backend: submitit\nslurm_time: "1-00:00:00"\n').resources.timeout_min == 1440


def test_status_and_cancel_of_a_local_submission(tmp_path, capsys):
    import psutil

    text = LONG.replace("epochs: 4", "epochs: 50")  # still running when cancelled
    study = write(tmp_path / "long.yaml", text)
    cfg = write(tmp_path / "cluster.yml", "backend: submitit\ncluster: local\n")
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-wait"]) == 0
    assert "1 runs submitted (local)" in capsys.readouterr().out
    try:
        spec, = expand(parse_study(text))
        job_id = json.loads((results / "long" / spec.run_id / JOB_FILE).read_text())["job_id"]
        controller = psutil.Process(int(job_id))
        assert main(["status", str(study), "--results", str(results)]) == 0
        out = capsys.readouterr().out
        assert f"{job_id:<14} RUNNING" in out and spec.run_id in out
        assert main(["cancel", str(study), "--results", str(results)]) == 0
        assert f"cancelled job {job_id} (run {spec.run_id}, was RUNNING)" in capsys.readouterr().out
        assert not controller.is_running() or controller.status() == psutil.STATUS_ZOMBIE
        assert main(["status", str(study), "--results", str(results)]) == 0
        assert f"{job_id:<14} CANCELLED" in capsys.readouterr().out
        assert main(["cancel", str(study), "--results", str(results)]) == 0
        assert "no pending or running job to cancel" in capsys.readouterr().out
    finally:
        cancel_study(parse_study(text), results)  # never leave a job running when an assertion fails


def test_search_workers(tmp_path, capsys):
    study = write(tmp_path / "search.yaml", SEARCH)
    results = tmp_path / "results"
    debug = write(tmp_path / "debug.yml", "backend: submitit\ncluster: debug\npoll_s: 0.2\n")
    # the default sqlite storage cannot be shared by workers: refused before anything is written
    assert main(["search", str(study), "--parallel-config", str(debug), "--workers", "2", "--results",
                 str(results)]) == 2
    err = capsys.readouterr().err
    assert "sqlite" in err and "journal:" in err and "postgresql://" in err
    assert not results.exists()
    journal = f"journal:{tmp_path / 'optuna.journal'}"
    # a worker on a journal file, run by the debug executor here: today's worker loop, one trial
    assert main(["search", str(study), "--parallel-config", str(debug), "--storage", journal, "--results",
                 str(results)]) == 0
    out = capsys.readouterr().out
    assert "search worker 0 (job DEBUG_" in out and "1 trials completed by this worker" in out
    assert pd.read_csv(results / "tinysearch" / "search" / "trials.csv").shape[0] == 1
    # N workers are one array on SLURM
    slurm = write(tmp_path / "slurm.yml", f"backend: submitit\ncluster: slurm\nfolder: {tmp_path}/sub/%j\n"
                                          "resources: {timeout_min: 60}\n")
    with mocked_slurm():
        assert main(["search", str(study), "--parallel-config", str(slurm), "--storage", journal, "--workers", "3",
                     "--no-wait", "--results", str(results)]) == 0
        assert "submitted 3 search worker(s) as job array 12 (3 tasks)" in capsys.readouterr().out
        script, = sbatch_scripts(tmp_path / "sub").values()
        assert "#SBATCH --array=0-2%3\n" in script and "#SBATCH --ntasks-per-node=1\n" in script
        assert main(["status", str(study), "--results", str(results)]) == 0
        assert "search worker 2: job 12_2 RUNNING (slurm)" in capsys.readouterr().out


FINETUNE = STUDY.replace("name: tiny", "name: ft").replace(
    "  act: {tokens: {halting: {}}}\n",
    "  act_ft: {tokens: {halting: {}}, train: {init_from: dense, epochs: 1}}\n"
    "  tome: {eval: {apply: {tokens.merge: {r: 2}}}}\n")


def test_local_jobs_wait_for_their_parents(tmp_path, capsys):
    """Every run is submitted at once to submitit's local executor; a child's job waits until its parent's run is
    done (no SLURM dependencies there), then fine-tunes from it."""
    study = write(tmp_path / "ft.yaml", FINETUNE)
    cfg = write(tmp_path / "cluster.yml", "backend: submitit\ncluster: local\npoll_s: 0.2\n")
    results = tmp_path / "results"
    assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(results), "--no-report"]) == 0
    assert "ft: 4 runs: 4 run now" in capsys.readouterr().out  # with dense_ft, act_ft's compute-matched control
    runs = {s.variant: s for s in expand(parse_study(FINETUNE))}
    sdir = results / "ft"
    done_at = {v: json.loads((sdir / s.run_id / "status.json").read_text())["time"] for v, s in runs.items()}
    assert done_at["dense"] < min(done_at["act_ft"], done_at["tome"], done_at["dense_ft"])
    assert json.loads((sdir / runs["tome"].run_id / "status.json").read_text())["trained_by"] == runs["dense"].run_id


def test_slurm_children_depend_on_their_parents_jobs(tmp_path, capsys):
    study = write(tmp_path / "ft.yaml", FINETUNE)
    cfg = write(tmp_path / "cluster.yml", f"backend: submitit\ncluster: slurm\nfolder: {tmp_path}/submitit/%j\n"
                                          "resources: {timeout_min: 30}\n")
    with mocked_slurm():
        assert main(["run", str(study), "--parallel-config", str(cfg), "--results", str(tmp_path / "r"),
                     "--no-wait"]) == 0
        scripts = sbatch_scripts(tmp_path / "submitit")
    parents, children = sorted(scripts)  # the parents' job first, then one array for the dependent runs
    assert "--dependency" not in scripts[parents]
    assert f"#SBATCH --dependency=afterany:{parents.split('_')[0]}\n" in scripts[children]
    assert "#SBATCH --array=0-2" in scripts[children]  # act_ft, tome and dense_ft (act_ft's control)
