"""``train.compile: true`` (torch.compile) trains to the same result as eager mode.

Compiling takes ~75 s on this 2-core CPU for a tiny model, so it only pays off on long (GPU) runs;
this test pins that the option works and changes nothing but speed."""

from __future__ import annotations

from pathlib import Path

import torch

from suite.config import expand, parse_study
from suite.data import load_data
from suite.train import fit

STUDY = """
name: c
dataset: {name: synthetic, synthetic: {train_size: 128, test_size: 32}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 32, warmup_epochs: 0, compile: COMPILE}
variants: {dense: {}}
"""


def test_compiled_training_matches_eager(tmp_path: Path):
    losses = {}
    for flag in ("false", "true"):
        spec = expand(parse_study(STUDY.replace("COMPILE", flag)))[0]
        (tmp_path / flag).mkdir()
        result = fit(spec.config, load_data(spec.config.dataset), tmp_path / flag, device=torch.device("cpu"),
                     progress=False)
        losses[flag] = (result.history[-1]["train_loss"], result.history[-1]["train_acc"])
    assert losses["true"] == losses["false"]
