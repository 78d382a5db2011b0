"""``train.compile: auto | on | off``: out of run ids, auto's decision, compiled training (inductor) close to eager,
and the persistent cache: a second run of the same shape does not compile again.

The inductor test compiles one tiny model once (tens of seconds on the 2-core CPU); every policy's graph breaks and
compiled == eager under aot_eager are in ``tests/test_graph_breaks.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from suite.config import StudyError, expand, parse_study
from suite.data import load_data
from suite.train import compiled, fit, make_model

STUDY = """
name: c
dataset: {name: synthetic, synthetic: {train_size: 128, test_size: 32}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: EPOCHS, batch_size: 32, warmup_epochs: 0COMPILE}
variants: {dense: {}}
"""
LOSS_RTOL = 1e-4  # inductor reorders float reductions: compiled and eager losses agree to this, not bit for bit


def _spec(compile_line: str = "", epochs: int = 1):
    return expand(parse_study(STUDY.replace("COMPILE", compile_line).replace("EPOCHS", str(epochs))))[0]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """A fresh compile cache for this test (both variables restored afterwards)."""
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(compiled.INDUCTOR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_compile_setting_stays_out_of_run_ids():
    ids = {c: _spec(f", compile: {c}").run_id for c in ("true", "false", "auto", "on", "off")}
    assert len(set(ids.values())) == 1 and ids["auto"] == _spec().run_id
    assert _spec(", compile: false").config.train.compile == "off"  # what records of schema 1 hold
    assert _spec(", compile: true").config.train.compile == "on"
    assert _spec().config.train.compile == "auto"
    with pytest.raises(StudyError, match="train.compile"):
        _spec(", compile: sometimes")


def test_auto_compiles_long_runs_only(cache: Path):
    spec = _spec()
    data = load_data(spec.config.dataset)
    model = make_model(spec.config, data)
    sample = torch.stack([data.train[0][0], data.train[1][0]])
    batch = (32, *data.train[0][0].shape)
    flops = compiled.flops_per_image(model, sample)
    assert flops > 0
    short = compiled.decide(spec.config, model, sample, 128, batch, torch.device("cpu"))
    assert not short.compiled and short.setting == "auto" and "cold cache" in short.reason
    # enough images that the estimated eager time passes AUTO_PAYBACK x the cold compile time
    cold = compiled.COMPILE_S["cpu"][0]
    n = int(compiled.AUTO_PAYBACK * cold * compiled.EAGER_FLOPS["cpu"] / (3 * flops)) + 1
    long = compiled.decide(spec.config, model, sample, n, batch, torch.device("cpu"))
    assert long.compiled and long.train_s_estimate >= compiled.AUTO_PAYBACK * long.compile_s_estimate
    # a marker of this shape in the cache: auto counts on the warm compile time
    compiled.mark_compiled(long, 1.0)
    warm = compiled.decide(spec.config, model, sample, n, batch, torch.device("cpu"))
    assert warm.warm_cache and warm.compile_s_estimate == compiled.COMPILE_S["cpu"][1]
    assert Path(warm.cache_dir) == cache
    off = compiled.decide(_spec(", compile: off").config, model, sample, n, batch, torch.device("cpu"))
    assert not off.compiled and off.reason == "train.compile: off"


def _fit(spec, run_dir: Path):
    run_dir.mkdir()
    return fit(spec.config, load_data(spec.config.dataset), run_dir, device=torch.device("cpu"), progress=False)


def test_inductor_training_close_to_eager_and_cached(cache: Path, tmp_path: Path):
    eager = _fit(_spec(", compile: off"), tmp_path / "eager")
    assert eager.compile["compiled"] is False
    torch._dynamo.reset()
    before = dict(counters["inductor"])
    first = _fit(_spec(", compile: on"), tmp_path / "first")
    assert first.compile["compiled"] is True and first.compile["cache_dir"] == str(cache)
    assert counters["inductor"]["fxgraph_cache_miss"] > before.get("fxgraph_cache_miss", 0)  # it did compile
    for key in ("train_loss", "train_acc"):
        assert first.history[-1][key] == pytest.approx(eager.history[-1][key], rel=LOSS_RTOL)
    assert (cache / "spikesuite-shapes" / f"{first.compile['shape_key']}.json").exists()
    # a second run of the same shape (a new process would start the same way: dynamo's in-memory state is gone)
    torch._dynamo.reset()
    misses = counters["inductor"]["fxgraph_cache_miss"]
    hits = counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"]
    second = _fit(_spec(", compile: on"), tmp_path / "second")
    assert counters["inductor"]["fxgraph_cache_miss"] == misses  # nothing compiled again
    assert counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"] > hits
    assert second.history[-1]["train_loss"] == first.history[-1]["train_loss"]
    assert json.loads(json.dumps(second.compile))["shape_key"] == first.compile["shape_key"]
