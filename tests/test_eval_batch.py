"""``train.eval_batch_size: auto`` (suite/train/batching.py): the batch an evaluation executes with is chosen per
model and device, stays out of the run id, and changes neither the images evaluated nor what is counted."""

from __future__ import annotations

import pytest
import torch

from suite.config import expand, parse_study
from suite.data import load_data
from suite.evaluate import evaluate
from suite.train import make_model
from suite.train.batching import EVAL_BATCH_ID, MIN_BATCH, auto_eval_batch, prefix_images

STUDY = """
name: eb
dataset: {{name: synthetic, synthetic: {{num_classes: 4, image_size: 16, train_size: 8, test_size: 80}}}}
model: {{depth: 1, dim: 32, heads: 4, T: 2}}
train: {{epochs: 1, batch_size: 8{extra}}}
eval: {{heatmap_images: 0{eval_extra}}}
variants:
  dense: {{}}
  act: {{tokens: {{halting: {{}}}}}}
  merge: {{tokens: {{merge: {{r: 4}}}}}}
"""


def _specs(extra: str = "", eval_extra: str = ""):
    return expand(parse_study(STUDY.format(extra=extra, eval_extra=eval_extra)))


def test_auto_takes_a_cache_sized_power_of_two_on_the_cpu_and_256_elsewhere():
    assert auto_eval_batch(4, 49, 256, 8, "cpu") == 16  # the Fashion-MNIST reference configuration
    assert auto_eval_batch(4, 64, 512, 8, "cpu") == 16  # the CIFAR-shaped bench configuration
    assert auto_eval_batch(4, 196, 1536, 8, "cpu") == MIN_BATCH  # ImageNet-sized: never below the floor
    assert auto_eval_batch(2, 4, 16, 2, "cpu") == EVAL_BATCH_ID  # a toy model: never above 256
    assert auto_eval_batch(4, 49, 256, 8, "cuda") == EVAL_BATCH_ID


def test_the_setting_is_out_of_the_run_id():
    ids = {tuple(s.run_id for s in _specs(extra)) for extra in ("", ", eval_batch_size: auto",
                                                                ", eval_batch_size: 256", ", eval_batch_size: 7")}
    assert len(ids) == 1


@pytest.mark.parametrize("bad", ["0", "70000", "big"])
def test_a_bad_setting_is_refused_naming_the_key(bad):
    from suite.config import StudyError

    with pytest.raises((StudyError, ValueError)) as err:
        _specs(f", eval_batch_size: {bad}")
    assert "eval_batch_size" in str(err.value)


@pytest.mark.parametrize("variant", ["dense", "act", "merge"])
def test_every_batch_size_evaluates_the_same_images_to_the_same_counts(variant):
    results = []
    for batch in (EVAL_BATCH_ID, 16, 3):
        spec = next(s for s in _specs(f", eval_batch_size: {batch}") if s.variant == variant)
        data = load_data(spec.config.dataset)
        torch.manual_seed(0)
        model = make_model(spec.config, data)
        res = evaluate(model, spec.config, data, torch.device("cpu"), maps=False)
        assert res.details["eval_batch_size"] == batch
        results.append(res.metrics)
    for m in results[1:]:
        for key in ("accuracy", "eval_images", "token_units", "sops_exact", "sops_paper", "macs"):
            assert m[key] == pytest.approx(results[0][key], rel=1e-12, abs=1e-9), key


def test_max_batches_counts_batches_of_the_configured_size_whatever_runs():
    assert prefix_images(None, "auto") is None
    assert prefix_images(2, "auto") == 2 * EVAL_BATCH_ID and prefix_images(2, 16) == 32
    spec = next(s for s in _specs(", eval_batch_size: 16", ", max_batches: 2") if s.variant == "dense")
    data = load_data(spec.config.dataset)
    res = evaluate(make_model(spec.config, data), spec.config, data, torch.device("cpu"), maps=False)
    assert res.metrics["eval_images"] == 32.0
    spec = next(s for s in _specs("", ", max_batches: 1") if s.variant == "dense")
    res = evaluate(make_model(spec.config, data), spec.config, data, torch.device("cpu"), maps=False)
    assert res.metrics["eval_images"] == 80.0  # one batch of 256 covers the 80 test images, at any executed batch
