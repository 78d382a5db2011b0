"""One definition of the work a method skips (docs/counting.md): token-units count a (token, block, timestep) unit
when the block processes the token at that step, whatever skips it (halting, merging, keep masks, time masks, early
exit); ``token_pct`` is against the dense model at the study's reference T; the per-kind energies add up to the
energy of every method; committed records recount from their stored counts (suite/records_migrate.py)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import forward, images
from torch import nn

from suite import records
from suite.config import ModelConfig, TimeConfig, TimeMaskConfig, TokenConfig, expand, parse_study, run_id
from suite.data import DataBundle, TensorImageDataset
from suite.evaluate import evaluate
from suite.models import build_model
from suite.names import ENERGY_KINDS
from suite.records_migrate import block_units_from_ops, exit_step_units, migrate_study

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
N = 16  # tokens of an 8x8 image
BASE = {
    "name": "units",
    "dataset": {"name": "synthetic", "synthetic": {"train_size": 32, "test_size": 48}},
    "model": {"depth": 2, "dim": 16, "heads": 2, "T": 4},
    "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 24, "warmup_epochs": 0},
    "eval": {"heatmap_images": 0},
    "tracking": {"enabled": False},
}
KINDS = {  # one variant per way of skipping work, evaluated for real on an untrained tiny model
    "dense": {},
    "static_t2": {"model": {"T": 2}},
    "act": {"tokens": {"halting": {"beta": 8.0}}},
    "act_merge": {"tokens": {"halting": {"beta": 8.0}, "merge": {"r": 3}}},
    "drop": {"tokens": {"drop": {"keep_ratio": 0.5}}},
    "tmask": {"time": {"mask": {"init": -1.0}}},  # every module keeps only step 0 (the top score of a tie)
    "tmask_layer": {"time": {"mask": {"granularity": "layer", "init": -1.0}}},
    "exit": {"time": {"exit": {"threshold": 0.0}}},  # every image exits after step 1
    "exit_late": {"time": {"exit": {"threshold": 0.3}}},  # images exit after step 2 or 3
}
LAYER_STEPS = {"block0.mlp1": 1, "block1.q": 2}  # tmask_layer: these layers also run this step (share of a block)


def _specs(variants: dict, **extra) -> list:
    return expand(parse_study(yaml.safe_dump({**BASE, "variants": variants, **extra})))


def _data() -> DataBundle:
    """48 random 8x8 images strong enough to make an untrained model's blocks fire (``helpers.images``)."""
    ds = TensorImageDataset(images(48, seed=3), torch.arange(48) % 5)
    return DataBundle(ds, None, ds, num_classes=5, in_channels=1, image_size=(8, 8), name="synthetic")


def _evaluate(spec, backbone: str = "spikformer"):
    cfg = spec.config.model_copy(update={"model": spec.config.model.model_copy(update={"backbone": backbone})})
    data = _data()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.tokens, cfg.time, in_channels=data.in_channels, image_size=data.image_size,
                        num_classes=data.num_classes)
    with torch.no_grad():  # every BN as 2 y + 1, so that random weights fire (a silent network counts nothing)
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                mod.weight.fill_(2.0)
                mod.bias.fill_(1.0)
        if cfg.time.mask is not None and cfg.time.mask.granularity == "layer":
            pol = model.time_policy
            for layer, step in LAYER_STEPS.items():
                pol.scores[pol.groups.index(layer), [0, step]] = 1.0
    return cfg, evaluate(model, cfg, data, torch.device("cpu"), maps=False)


@pytest.fixture(scope="module")
def evaluated() -> dict:
    return {s.variant: (s, *_evaluate(s)) for s in _specs(KINDS)}


# ------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("backbone", ["spikformer", "sdt"])
@pytest.mark.parametrize("tokens", [TokenConfig(), TokenConfig(halting={"beta": 2.0}),
                                    TokenConfig(halting={"beta": 2.0, "order": "time_major"}),
                                    TokenConfig(halting={"beta": 2.0}, merge={"r": 3}),
                                    TokenConfig(drop={"keep_ratio": 0.5})], ids=str)
def test_without_time_masks_token_units_are_the_token_policys_active_tokens(backbone, tokens) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, depth=2, dim=16, heads=2, T=3), tokens, TimeConfig(),
                        in_channels=1, image_size=(8, 8), num_classes=5).eval()
    out = forward(model, images(), count=True)
    assert torch.equal(out.ctx.block_token_units().float(), out.active_tokens.float())


@pytest.mark.parametrize("backbone", ["spikformer", "sdt"])
def test_a_block_masked_at_a_step_processes_no_token_there(backbone) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, depth=2, dim=16, heads=2, T=3),
                        TokenConfig(halting={"beta": 2.0}), TimeConfig(mask=TimeMaskConfig(granularity="block")),
                        in_channels=1, image_size=(8, 8), num_classes=5).eval()
    pol = model.time_policy
    with torch.no_grad():
        pol.scores[pol.groups.index("block1"), 1] = -1.0  # block 1 skips step 1
    out = forward(model, images(), count=True)
    units = out.ctx.block_token_units().float()
    expect = out.active_tokens.float().clone()
    expect[:, 1, 1] = 0
    assert torch.equal(units, expect) and units[:, 1, 1].sum() == 0 < out.active_tokens[:, 1, 1].sum()


def test_a_layer_mask_counts_the_share_of_the_blocks_per_token_flops() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(depth=1, dim=16, heads=2, T=2)
    model = build_model(cfg, TokenConfig(), TimeConfig(mask=TimeMaskConfig(granularity="layer")), in_channels=1,
                        image_size=(8, 8), num_classes=5).eval()
    pol = model.time_policy
    with torch.no_grad():
        pol.scores[pol.groups.index("block0.mlp1"), 1] = -1.0  # mlp1 (16 x 64 per token) skips step 1
    units = forward(model, images(), count=True).ctx.block_token_units()
    share = 1 - 16 * 64 / (4 * 16 * 16 + 2 * 16 * 64)  # q, k, v, proj: 16 x 16; mlp1, mlp2: 16 x 64
    assert torch.allclose(units[:, 0, 0], torch.tensor(float(N), dtype=torch.float64))
    assert torch.allclose(units[:, 0, 1], torch.tensor(N * share, dtype=torch.float64))


def test_a_time_mask_dropping_steps_lowers_token_units_as_early_exit_does(evaluated) -> None:
    _, _, masked = evaluated["tmask"]
    _, _, exited = evaluated["exit"]
    dense = evaluated["dense"][2]
    assert exited.metrics["exit_step_mean"] == 1 and masked.metrics["timesteps_mean"] == 1
    for res in (masked, exited):  # both run each block at step 0 only: a quarter of the dense units
        assert res.metrics["token_units"] == 2 * N == dense.metrics["token_units"] / 4
        assert res.metrics["token_pct"] == 25.0
        assert res.details["active_tokens_block_step"] == [[N, 0, 0, 0]] * 2
    late = evaluated["exit_late"][2]
    hist = late.details["exit_histogram"]
    assert late.details["active_tokens_block_step"] == exit_step_units(hist, N, 2)
    assert late.metrics["token_units"] == pytest.approx(2 * N * late.metrics["exit_step_mean"])


# ------------------------------------------------------------------------------------------- token_pct


def test_static_t2_is_half_of_dense_t4_in_the_study_tables(tmp_path, evaluated) -> None:
    for spec, _, res in evaluated.values():
        run_dir = tmp_path / spec.run_id
        run_dir.mkdir()
        records.write_config(run_dir, spec)
        records.write_result(run_dir, spec.run_id, res.metrics, res.details, None)
        records.write_status(run_dir, "done")
    specs = [s for s, _, _ in evaluated.values()]
    assert records.reference_T(specs) == 4
    runs = records.collect_tables(tmp_path, specs)[0].set_index("variant")
    assert evaluated["static_t2"][2].metrics["token_pct"] == 100.0  # against its own T in metrics.json
    assert runs.loc["static_t2", "token_pct"] == 50.0 and runs.loc["dense", "token_pct"] == 100.0
    assert runs.loc["static_t2", "reference_token_units"] == 2 * 4 * N
    assert (runs.reference_T == 4).all()
    assert runs.loc["tmask", "token_pct"] == runs.loc["exit", "token_pct"] == 25.0


def test_the_reference_t_is_the_largest_dense_t_and_can_be_set() -> None:
    specs = _specs({"dense": {}, "t8": {"model": {"T": 8}}, "act16": {"model": {"T": 16}, "tokens": {"halting": {}}},
                    "tome": {"eval": {"apply": {"tokens.merge": {"r": 1}}}}})
    assert records.reference_T(specs) == 8  # neither a policy's T nor a training-free policy's dense model counts
    dense = next(s for s in specs if s.variant == "dense")
    assert records.reference_T([s for s in specs if s.variant == "act16"]) is None
    row = {"token_units": 64.0, "dense_token_units": 128.0}
    records.restate_token_pct(row, dense.config, 8)
    assert row["token_pct"] == 25.0 and row["reference_T"] == 8
    set_ref = _specs({"dense": {}}, eval={"heatmap_images": 0, "reference_T": 2})[0]
    records.restate_token_pct(row, set_ref.config, 8)
    assert row["token_pct"] == 100.0 and row["reference_T"] == 2
    # a setting added after schema 1: absent from every existing run id, a new id when set
    assert set_ref.run_id != dense.run_id == run_id(dense.config)


def test_eval_reference_t_sets_token_pct_at_evaluation() -> None:
    spec = _specs({"static_t2": {"model": {"T": 2}, "eval": {"reference_T": 8}}},
                  eval={"heatmap_images": 0, "max_batches": 1})[0]
    res = _evaluate(spec)[1]
    assert res.metrics["reference_T"] == 8 and res.metrics["token_pct"] == 25.0


# ------------------------------------------------------------------------------------------- energy


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_energy_breakdown_sums_to_the_energy(evaluated, kind) -> None:
    m = evaluated[kind][2].metrics
    for conv in ("exact", "paper"):
        parts = sum(m[f"energy_{conv}_uj_{k}"] for k in ENERGY_KINDS)
        assert parts == pytest.approx(m[f"energy_{conv}_uj"], rel=1e-12)
        assert sum(m[f"sops_{conv}_{k}"] for k in ENERGY_KINDS) == pytest.approx(m[f"sops_{conv}"], rel=1e-12)


def test_early_exit_scales_the_per_step_layers_only(evaluated) -> None:
    dense, exited = evaluated["dense"][2].metrics, evaluated["exit"][2].metrics
    assert exited["energy_exact_uj_head"] == dense["energy_exact_uj_head"]  # the head runs once per image
    for kind in ("stem", "attention", "mlp"):  # same weights and images: a quarter of the steps
        assert exited[f"energy_exact_uj_{kind}"] == pytest.approx(dense[f"energy_exact_uj_{kind}"] / 4, rel=1e-12)
    assert exited["energy_exact_uj"] < dense["energy_exact_uj"] / 3


# ------------------------------------------------------------------------------------------- stored counts


@pytest.mark.parametrize("kind", ["dense", "act_merge", "drop", "tmask", "tmask_layer"])
def test_stored_counts_give_the_token_units_of_the_rule(evaluated, kind) -> None:
    _, cfg, res = evaluated[kind]
    blocks = block_units_from_ops(res.details["ops"], cfg.model, res.metrics["eval_images"])
    assert blocks == pytest.approx(res.details["token_units_block"], rel=1e-12)
    assert sum(blocks) == pytest.approx(res.metrics["token_units"], rel=1e-12)


def test_migrating_a_recounted_study_changes_nothing(tmp_path) -> None:
    src, dst = REFERENCE / "atsnn_fashion_mnist", tmp_path / "atsnn_fashion_mnist"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", "report.html", "maps.npz", "search"))
    out = migrate_study(dst)
    assert not out.changed and not out.mismatched
    for name in ("runs.csv", "evals.csv"):
        assert (dst / name).read_text() == (src / name).read_text()
    runs = pd.read_csv(dst / "runs.csv").set_index("variant")
    assert runs.loc["static_t2", "token_pct"] == 50.0 and runs.loc["tmask_init0.1", "token_pct"] < 100
    assert not math.isnan(runs.loc["dense", "reference_T"])


def test_migration_refuses_a_directory_without_study_records_and_writes_nothing(tmp_path, capsys) -> None:
    from suite.records_migrate import main

    good = tmp_path / "atsnn_fashion_mnist"
    shutil.copytree(REFERENCE / "atsnn_fashion_mnist", good, ignore=shutil.ignore_patterns("report", "report.html",
                                                                                            "maps.npz", "search"))
    before = {p: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    assert main([str(good), str(tmp_path / "typo")]) == 2
    assert f"{tmp_path / 'typo'}: not a study's records directory (no study.yaml)" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in good.rglob("*") if p.is_file()} == before  # the good one untouched too
