"""``train.amp`` and ``model.neuron.backend``: bf16 autocast training on the CPU end to end, the fp16 GradScaler
path, what the records say ran, run ids kept at the old values, and settings the device lacks refused (exit 2,
nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from suite.cli import main
from suite.config import expand, parse_study
from suite.models.neurons import available_backends, backend_in_use, resolve_backend
from suite.run import run_study
from suite.train.precision import amp_dtype, amp_problem

STUDY = """
name: prec
dataset: {name: digits}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 2, batch_size: 128, warmup_epochs: 0}
eval: {heatmap_images: 0, max_batches: 2}
tracking: {enabled: false}
variants: {dense: {}}
"""


def with_train(**kv: str) -> str:
    return STUDY.replace("warmup_epochs: 0}", "warmup_epochs: 0, " + ", ".join(f"{k}: {v}" for k, v in kv.items())
                         + "}")


def only_run(results: Path, text: str) -> tuple[str, Path]:
    spec, = expand(parse_study(text))
    return spec.run_id, results / "prec" / spec.run_id


def test_bf16_autocast_trains_on_the_cpu_end_to_end_and_the_records_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = {}
    for amp in ("bf16", "off"):
        text = with_train(amp=amp)
        summary = run_study(parse_study(text), tmp_path / amp, progress=False)
        assert not summary.failed and len(summary.done) == 1
        rid, run_dir = only_run(tmp_path / amp, text)
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "done" and status["amp"] == amp and status["neuron_backend"] == "torch"
        runs[amp] = pd.read_csv(run_dir / "history.csv")
        metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
        assert 0 <= metrics["accuracy"] <= 100
    assert runs["bf16"]["train_loss"].notna().all() and (runs["bf16"]["train_loss"] > 0).all()
    # bf16 matmuls round differently: the losses are close to the fp32 run's, not equal (autocast did run)
    assert not runs["bf16"]["train_loss"].equals(runs["off"]["train_loss"])
    assert (runs["bf16"]["train_loss"] - runs["off"]["train_loss"]).abs().max() < 0.1


def test_the_fp16_path_scales_the_loss_and_checkpoints_the_scale(tmp_path, monkeypatch):
    """fp16 is refused on the CPU (``amp_problem``); with that check lifted, the CPU's fp16 autocast runs the same
    GradScaler code CUDA runs: training finishes and the checkpoint keeps the scaler's state for a resume."""
    import suite.train.precision as precision
    from suite.data import load_data
    from suite.train import fit, load_checkpoint

    monkeypatch.setattr(precision, "amp_problem", lambda setting, device: None)
    spec, = expand(parse_study(with_train(amp="fp16", epochs=1)))
    result = fit(spec.config, load_data(spec.config.dataset), tmp_path, device=torch.device("cpu"), progress=False)
    assert result.history[0]["train_loss"] == pytest.approx(result.history[0]["train_loss"])  # finite
    state = load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu"))
    assert state["scaler"]["scale"] > 0


def test_settings_at_their_old_values_keep_their_run_ids():
    base = expand(parse_study(STUDY))[0].run_id
    assert expand(parse_study(with_train(amp="auto")))[0].run_id == base
    auto = STUDY.replace("T: 2}", "T: 2, neuron: {backend: auto}}")
    assert expand(parse_study(auto))[0].run_id == base
    assert expand(parse_study(with_train(amp="bf16")))[0].run_id != base
    assert expand(parse_study(STUDY.replace("T: 2}", "T: 2, neuron: {backend: torch}}")))[0].run_id != base


def test_the_cpu_has_the_torch_backend_and_bf16_only():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch" == resolve_backend("torch", cpu)
    assert available_backends(cpu)["torch"] is None and "CUDA" in available_backends(cpu)["cupy"]
    assert backend_in_use(cpu) == "torch"
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    assert "fp16 needs a CUDA device" in amp_problem("fp16", cpu)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in available_backends(torch.device("cuda"))["triton"]
        assert "CUDA is not available" in amp_problem("bf16", torch.device("cuda"))


@pytest.mark.parametrize("edit, reason", [
    (("T: 2}", "T: 2, neuron: {backend: cupy}}"), "model.neuron.backend: cupy is not available on cpu: needs a CUDA"),
    (("T: 2}", "T: 2, neuron: {backend: triton}}"), "model.neuron.backend: triton is not available on cpu"),
    (("warmup_epochs: 0}", "warmup_epochs: 0, amp: fp16}"), "train.amp: fp16 needs a CUDA device (got cpu)"),
])
@pytest.mark.parametrize("cluster", [None, "debug"])
def test_a_setting_the_device_lacks_exits_2_before_anything_is_written(tmp_path, capsys, edit, reason, cluster):
    study = tmp_path / "prec.yaml"
    study.write_text(STUDY.replace(*edit))
    results = tmp_path / "results"
    args = ["run", str(study), "--results", str(results), "--device", "cpu"]
    if cluster:
        (tmp_path / "cluster.yml").write_text(f"backend: submitit\ncluster: {cluster}\n")
        args += ["--parallel-config", str(tmp_path / "cluster.yml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert reason in err and "(variants: dense)" in err, err
    assert not results.exists()
