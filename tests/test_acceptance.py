"""The GPU acceptance run (``nox -s gpu``): it refuses without CUDA, writing nothing; its steps are device-agnostic
and run here on the CPU with tiny shapes (the one-rank group uses gloo instead of NCCL). It has not run on a GPU in
this repository's CI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from suite.bench.acceptance import TINY, hardware_name, main, run_acceptance


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the run would start")
def test_without_cuda_it_refuses_and_writes_nothing(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cuda")]) == 2
    err = capsys.readouterr().err
    assert "the GPU acceptance run needs CUDA" in err and "nothing was written" in err
    assert not (tmp_path / "cuda").exists()


def test_every_step_runs_on_the_cpu_with_tiny_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lines: list[str] = []
    out, results = run_acceptance(tmp_path / "cpu", torch.device("cpu"), TINY, bench=False, log=lines.append)
    assert out == tmp_path / "cpu" / hardware_name(torch.device("cpu"))
    steps = results["steps"]
    assert sorted(steps) == ["bf16_vs_fp32_spikes", "compacted_equals_masked", "ddp_nccl", "doctor",
                             "study_sdt_1_16", "study_spikformer_2_32"]
    assert results["passed"], {k: s.get("error", s) for k, s in steps.items() if not s["ok"]}
    assert steps["compacted_equals_masked"]["max_abs_diff"] <= 1e-4 * steps["compacted_equals_masked"]["logit_scale"]
    spikes = steps["bf16_vs_fp32_spikes"]
    assert spikes["total_fp32"] > 0 and spikes["total_bf16"] > 0 and spikes["layers"]
    assert steps["ddp_nccl"]["backend"] == "gloo" and steps["ddp_nccl"]["world_size"] == 1
    for name in ("acceptance.json", "acceptance.md", "doctor.txt", "machine.json"):
        assert (out / name).is_file(), name
    runs = pd.read_csv(out / "runs_gpu_sdt_1_16.csv")
    assert sorted(runs.variant) == ["act", "dense"] and set(runs.neuron_backend) == {"torch"}
    assert set(runs.amp) == {"off"}  # train.amp: auto is fp32 on the CPU
    assert json.loads((out / "acceptance.json").read_text())["passed"]
    assert all(line.startswith("PASS") for line in lines), lines
