"""``spikesuite doctor`` on the CPU: with the SLURM commands on PATH (where ``.ci/slurm.sh up`` ran) and without
them, with a SLURM that does not answer, and with a study or a store that would fail (exit 1, each problem saying
what to do). It reads only: nothing is written under --results."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
from pathlib import Path

import pytest

from suite.cli import main

STUDY = """
name: doc
dataset: {name: digits}
model: {depth: 1, dim: 16, heads: 2, T: 2}
tracking: {enabled: false}
variants: {dense: {}}
"""


def doctor(capsys, *args: str) -> tuple[int, str]:
    code = main(["doctor", *args])
    return code, capsys.readouterr().out


def path_without_slurm(tmp_path: Path, fake: dict[str, str] | None = None) -> str:
    """A PATH with python and, in ``fake``, stand-in SLURM commands (name -> shell script body), nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    os.symlink(sys.executable, bin_dir / "python")
    for name, body in (fake or {}).items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(bin_dir)


def test_the_screen_lists_versions_devices_backends_and_stores(tmp_path, capsys):
    results = tmp_path / "results"
    code, out = doctor(capsys, "--results", str(results))
    for line in ("torch ", "spikingjelly ", "mlflow ", "optuna ", "submitit ", "cuDNN", "train.amp: bf16",
                 "cpu spikformer", "cpu sdt", "LIF layers ran on torch", "gloo (CPU ranks)", "NCCL (GPU ranks)",
                 "digits ", "found", "MLflow store", "(created by the first run)", "Optuna storage", "slurm:"):
        assert line in out, line
    assert code == (1 if "problem(s) that would make a study fail" in out else 0)
    assert not results.exists()  # reads only


def test_without_slurm_commands_slurm_is_reported_absent_not_a_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", path_without_slurm(tmp_path))
    code, out = doctor(capsys, "--results", str(tmp_path / "r"))
    assert "none of sbatch, srun, squeue, sacct, scancel, sinfo, scontrol on PATH" in out
    assert code == 0 and "no problems found" in out, out
    # a cluster file that asks for SLURM here is a problem, with what to do
    cfg = tmp_path / "cluster.yml"
    cfg.write_text("backend: submitit\ncluster: slurm\nresources: {timeout_min: 10}\n")
    study = tmp_path / "doc.yaml"
    study.write_text(STUDY)
    code, out = doctor(capsys, str(study), "--parallel-config", str(cfg), "--results", str(tmp_path / "r"))
    assert code == 1 and "cluster: slurm: no srun on this machine; submit from a SLURM login node" in out


def test_a_slurm_that_does_not_answer_is_a_problem(tmp_path, capsys, monkeypatch):
    fake = {name: "exit 0" for name in ("sbatch", "srun", "squeue", "scancel", "scontrol")}
    fake["sinfo"] = "echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2; exit 1"
    fake["sacct"] = "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1"
    monkeypatch.setenv("PATH", path_without_slurm(tmp_path, fake))
    code, out = doctor(capsys, "--results", str(tmp_path / "r"))
    assert code == 1
    assert "slurm / sinfo: sinfo: slurm_load_partitions: Unable to contact slurm controller" in out
    assert "slurmctld is not reachable" in out
    assert "slurm / sacct (accounting)" in out and "every job reads UNKNOWN" in out


@pytest.mark.skipif(shutil.which("sinfo") is None, reason="no SLURM commands on PATH (.ci/slurm.sh up adds them)")
def test_with_slurm_the_partitions_and_accounting_are_shown(tmp_path, capsys):
    code, out = doctor(capsys, "--results", str(tmp_path / "r"))
    if "slurmctld is not reachable" in out:
        pytest.skip("SLURM commands are installed but no controller answers here")
    assert "sinfo " in out and " up " in out and "sacct (accounting)  answers" in out
    assert code == 0, out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("edit, problem", [
    (("name: digits", "name: cifar10, root: /nonexistent/cifar"), "datasets / cifar10: the study needs it"),
    (("T: 2}", "T: 2, neuron: {backend: triton}}"), "model.neuron.backend: triton is not available on cpu"),
    (("tracking: {enabled: false}", "tracking: {uri: 'http://127.0.0.1:PORT'}"), "MLflow store: "),
    (("variants:", "search: {variants: [dense], objectives: [{metric: accuracy, direction: maximize}], "
                   "params: {train.lr: {uniform: [0.001, 0.01]}}, storage: 'postgresql://u@127.0.0.1:PORT/x'}\n"
                   "variants:"), "search / Optuna storage: "),
])
def test_a_study_that_would_fail_exits_1_saying_what_to_do(tmp_path, capsys, edit, problem):
    port = str(_closed_port())
    study = tmp_path / "doc.yaml"
    study.write_text(STUDY.replace(edit[0], edit[1].replace("PORT", port)))
    code, out = doctor(capsys, str(study), "--device", "cpu", "--results", str(tmp_path / "r"))
    assert code == 1 and problem in out, out
    assert "problem(s) that would make a study fail" in out
