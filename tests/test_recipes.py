"""Recipe pieces of the official training code, each shown to act: cutmix (area-weighted labels, timm's switch),
the weights' EMA (evaluated, checkpointed, resumed), warm-up from warmup_lr, cooldown at min_lr, repeated
augmentation (timm RASampler), neurons PLIF (learnt tau) and IF, surrogates triangle and rectangle; bad values exit 2
naming the key."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from suite import cli
from suite.config import NeuronConfig, TrainConfig, expand, parse_study
from suite.data import DataBundle, load_data
from suite.models.neurons import make_lif
from suite.train import fit, load_checkpoint, load_weights
from suite.train.loop import _validate, lr_lambda
from suite.train.recipe import ModelEma, mix_batch, repeated_indices

# ------------------------------------------------------------------------------------------------ mixup / cutmix


def _numbered(b: int = 8, h: int = 12, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i, and its class is i: every pixel says which image it came from."""
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    return x, torch.arange(b)


def test_cutmix_boxes_carry_area_weighted_labels():
    np.random.seed(0)
    torch.manual_seed(0)
    tc = TrainConfig(mixup=0.0, cutmix=1.0)
    x, y = _numbered()
    seen_partial = 0
    for _ in range(40):
        mixed, target = mix_batch(x, y, 8, tc)
        assert torch.allclose(target.sum(1), torch.ones(8))
        for i in range(8):
            values = mixed[i, 0]
            own = float((values == i).float().mean())
            assert set(values.unique().tolist()) <= {float(i), *target[i].nonzero().flatten().float().tolist()}
            assert target[i, i] == pytest.approx(own if target[i].count_nonzero() > 1 else 1.0, abs=1e-6)
            partner = [k for k in target[i].nonzero().flatten().tolist() if k != i]
            if partner:  # the box holds the partner's pixels, weighted by its area
                assert float(target[i, partner[0]]) == pytest.approx(1 - own, abs=1e-6)
                seen_partial += 0 < own < 1
            assert torch.equal(mixed[i, 0], mixed[i, 1])  # one box over every channel
    assert seen_partial > 50


def test_reversed_pairing_is_timms_flip():
    np.random.seed(4)
    x, y = _numbered()
    mixed, target = mix_batch(x, y, 8, TrainConfig(mixup=0.0, cutmix=1.0, mixup_pairing="reversed"))
    for i in range(8):
        assert set(mixed[i, 0].unique().tolist()) <= {float(i), float(7 - i)}
        assert set(target[i].nonzero().flatten().tolist()) <= {i, 7 - i}
    assert (mixed != x).any()


def test_switch_probability_and_mix_probability():
    x, y = _numbered()

    def cutmix_share(**kw) -> float:
        np.random.seed(1)
        torch.manual_seed(1)
        tc = TrainConfig(**kw)
        hits = 0
        for _ in range(300):
            mixed, _ = mix_batch(x, y, 8, tc)
            blended = bool(((mixed - mixed.round()).abs() > 1e-6).any())  # mixup blends values; cutmix pastes
            hits += not blended
        return hits / 300

    assert cutmix_share(mixup=0.8, cutmix=1.0, mixup_switch_prob=0.0) == 0.0
    assert cutmix_share(mixup=0.8, cutmix=1.0, mixup_switch_prob=1.0) == 1.0
    assert 0.4 < cutmix_share(mixup=0.8, cutmix=1.0, mixup_switch_prob=0.5) < 0.6
    np.random.seed(2)
    tc = TrainConfig(mixup=0.8, mixup_prob=0.0)
    mixed, target = mix_batch(x, y, 8, tc)
    assert mixed is x and target is y  # never mixed


def test_mixup_alone_draws_as_before():
    """A mixup-only run (every committed record's recipe) draws lam then the permutation, as the loop did before
    cutmix existed: the same seed mixes the same batch."""
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    np.random.seed(3)
    torch.manual_seed(3)
    got_x, got_t = mix_batch(x, y, 3, TrainConfig(mixup=0.5))
    np.random.seed(3)
    torch.manual_seed(3)
    lam = float(np.random.beta(0.5, 0.5))
    perm = torch.randperm(6)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.equal(got_x, lam * x + (1 - lam) * x[perm])
    assert torch.equal(got_t, lam * onehot + (1 - lam) * onehot[perm])


# ------------------------------------------------------------------------------------------------ LR schedule


def _factors(spe: int = 4, **kw) -> list[float]:
    run = SimpleNamespace(train=TrainConfig(**kw))
    f = lr_lambda(run, spe)
    return [f(s) for s in range(run.train.epochs * spe)]


def test_warmup_starts_at_warmup_lr_and_cooldown_holds_min_lr():
    lr, lo, wlr = 1e-3, 1e-5, 1e-6
    f = _factors(epochs=10, lr=lr, min_lr=lo, warmup_epochs=2, warmup_lr=wlr, cooldown_epochs=3)
    assert f[0] * lr == pytest.approx(wlr)  # the first step takes warmup_lr (timm's first warm-up epoch)
    assert f[4] * lr == pytest.approx(wlr + (lr - wlr) * 4 / 8)  # linear towards lr
    assert f[8] == pytest.approx(1.0)  # warm-up done
    cos = f[8:28]
    assert all(a > b for a, b in zip(cos, cos[1:]))  # cosine decay over epochs 2..7
    assert [v * lr for v in f[28:]] == pytest.approx([lo] * 12)  # the last 3 epochs (12 steps) at min_lr
    assert f[27] * lr > lo
    # defaults keep the suite's first rule: warm-up from min_lr with the step's rise, cosine to the last step
    old = _factors(epochs=10, lr=lr, min_lr=lo, warmup_epochs=2)
    floor = lo / lr
    assert old[0] == pytest.approx(floor + (1 - floor) / 8)
    assert old[-1] * lr > lo and old[8] == pytest.approx(1.0)


def test_timm_epoch_schedule_is_timms_cosine_per_epoch():
    """train.lr_schedule: timm_epoch, timm's CosineLRScheduler as train.py steps it (checked against timm 0.5.4 and
    1.0.31 to 1e-16 outside CI, where timm is not installed): one value per epoch, warm-up from warmup_lr, the cosine
    over epochs - cooldown counted from epoch 0, min_lr in the cooldown."""
    lr, lo, wlr, spe = 5e-4, 1e-5, 1e-6, 3
    f = _factors(spe, epochs=31, cooldown_epochs=1, warmup_epochs=2, lr=lr, min_lr=lo, warmup_lr=wlr,
                 lr_schedule="timm_epoch")
    per_epoch = [f[e * spe] * lr for e in range(31)]
    assert all(f[e * spe + s] == f[e * spe] for e in range(31) for s in range(spe))  # constant within an epoch
    assert per_epoch[0] == pytest.approx(wlr) and per_epoch[1] == pytest.approx(wlr + (lr - wlr) / 2)
    for e in range(2, 30):  # the cosine at epoch e of 30, not of 28: the warm-up overrode its start
        assert per_epoch[e] == pytest.approx(lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * e / 30)))
    assert per_epoch[30] == pytest.approx(lo)


# ------------------------------------------------------------------------------------------------ repeated aug


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_repeated_indices_follow_timm_rasampler(world: int):
    n, k = 10, 3
    ranks = [repeated_indices(n, world=world, rank=r, seed=5, repeats=k) for r in range(world)]
    assert all(len(r) == math.ceil(n / world) for r in ranks)  # as many steps as without repeats
    # rank r takes positions r, r + world, ... of the permutation with every image repeated k times in a row
    interleaved = [i for step in zip(*ranks) for i in step]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    expect = [i for i in perm for _ in range(k)]
    assert interleaved == expect[: len(interleaved)]
    if world == 1:  # one rank: the copies of an image come in a row (one batch)
        assert ranks[0][:3] == [perm[0]] * 3 and ranks[0][3:6] == [perm[1]] * 3
    if world >= k:  # the copies of an image land on k different ranks
        assert len({ranks[r][0] for r in range(k)}) == 1


class _Recording(Dataset):
    """A training split that records which items the loader asked for."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.asked = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        self.asked.append(i)
        return self.inner[i]


# ------------------------------------------------------------------------------------------------ one training run

STUDY = """
name: r
dataset: {name: synthetic, synthetic: {train_size: 48, test_size: 16, image_size: 8}, val_fraction: 0.25}
model: {depth: 1, dim: 16, heads: 2, T: 2, neuron: {type: plif, surrogate: triangle, alpha: 1.0}}
train:
  epochs: 3
  batch_size: 12
  lr: 5.0e-3
  warmup_epochs: 1
  warmup_lr: 1.0e-6
  cooldown_epochs: 1
  mixup: 0.8
  cutmix: 1.0
  ema: 0.5
  repeated_aug: 3
  compile: off            # auto reads two training images for its FLOP estimate: the loader's asks alone are counted
variants: {dense: {}}
"""


class _Stop(Exception):
    """Raised by a callback after an epoch: the run is interrupted there, its checkpoint written."""


def _run(tmp: Path, name: str, data: DataBundle | None = None, stop_after: int | None = None):
    spec = expand(parse_study(STUDY))[0]
    data = data or load_data(spec.config.dataset)
    (tmp / name).mkdir(exist_ok=True)

    def stop(row: dict) -> None:
        if row["epoch"] == stop_after:
            raise _Stop

    return spec, fit(spec.config, data, tmp / name, device=torch.device("cpu"), progress=False, callbacks=[stop])


def test_a_recipe_run_ema_plif_repeated_aug_and_resume(tmp_path: Path):
    base = load_data(expand(parse_study(STUDY))[0].config.dataset)
    rec = _Recording(base.train)
    data = DataBundle(rec, base.val, base.test, base.num_classes, base.in_channels, base.image_size, base.name,
                      base.mean, base.std)
    spec, res = _run(tmp_path, "whole", data)

    # repeated augmentation acted in the loop: every epoch (36 images) took its images three at a time
    assert len(rec.asked) == 3 * 36
    for j in range(0, len(rec.asked), 3):
        assert rec.asked[j] == rec.asked[j + 1] == rec.asked[j + 2]
    assert len(set(rec.asked[:36])) == 12  # 12 distinct images, each three times

    ckpt = load_checkpoint(tmp_path / "whole" / "checkpoint.pt", "cpu")
    raw, ema = ckpt["model"], ckpt["ema"]
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())  # EMA differs
    weights = res.model.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)  # the run's model is the EMA
    assert all(torch.equal(v, ema[k]) for k, v in load_weights(tmp_path / "whole", "cpu").items())
    # validation evaluated the EMA weights
    assert res.history[-1]["val_acc"] == _validate(res.model, data, torch.device("cpu"), None, 256)["val_acc"]

    # PLIF learnt its time constants: w moved from its initialisation (tau = 2 -> w = 0)
    taus = {k: v for k, v in raw.items() if k.endswith(".w")}
    assert taus and any(abs(float(v)) > 1e-4 for v in taus.values())

    # the schedule ended in its cooldown epoch at min_lr
    assert res.history[-1]["lr"] == pytest.approx(spec.config.train.min_lr)

    # resume: interrupted after epoch 2, then resumed from the checkpoint, equals 3 straight epochs (EMA included)
    with pytest.raises(_Stop):
        _run(tmp_path, "split", base, stop_after=2)
    assert "ema" in load_checkpoint(tmp_path / "split" / "checkpoint.pt", "cpu")
    resumed = _run(tmp_path, "split", base)[1]
    assert resumed.resumed_from_epoch == 2
    straight = _run(tmp_path, "straight", base)[1]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_ema_update_rule():
    lin = torch.nn.Linear(2, 2)
    ema = ModelEma(lin, 0.9)
    start = ema.module.weight.clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.module.weight, 0.9 * start + 0.1 * lin.weight)
    assert not ema.module.weight.requires_grad


# ------------------------------------------------------------------------------------------------ neurons


def test_if_integrates_without_leak_and_plif_learns_tau():
    x = torch.full((4, 1, 1), 0.4)
    lif = make_lif(NeuronConfig(type="lif", tau=2.0))
    iff = make_lif(NeuronConfig(type="if"))
    assert lif(x).flatten().tolist() == [0, 0, 0, 0]  # leaks towards 0.4: never reaches 1
    assert iff(x).flatten().tolist() == [0, 0, 1, 0]  # 0.4, 0.8, 1.2 -> spike, reset, 0.4
    plif = make_lif(NeuronConfig(type="plif", tau=3.0))
    (w,) = plif.parameters()
    assert 1 / torch.sigmoid(w).item() == pytest.approx(3.0)  # init_tau = model.neuron.tau
    opt = torch.optim.SGD(plif.parameters(), lr=1.0)
    for _ in range(3):
        plif.reset()
        loss = (plif(torch.full((6, 1, 1), 0.8)) - 1.0).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert 1 / torch.sigmoid(w).item() != pytest.approx(3.0)  # tau changed in training


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_triangle_and_rectangle_surrogates(alpha: float):
    """One IF step from rest: spike = H(x - 1), so d spike / dx is the surrogate's gradient at x - 1: spikingjelly's
    PiecewiseQuadratic (a triangle) and Rect (a rectangle)."""
    u = torch.linspace(-3, 3, 241) + 0.0123  # off the windows' edges, where rounding of (u + 1) - 1 decides
    want = {"triangle": torch.clamp(alpha - alpha**2 * u.abs(), min=0),
            "rectangle": alpha * (u.abs() < 0.5 / alpha).float()}
    for name, grad in want.items():
        node = make_lif(NeuronConfig(type="if", surrogate=name, alpha=alpha))
        x = (u + 1.0).clone().view(1, -1).requires_grad_(True)
        spikes = node(x)
        assert torch.equal(spikes.detach().flatten(), (u >= 0).float())
        spikes.sum().backward()
        assert torch.allclose(x.grad.flatten(), grad, atol=1e-6), name


# ------------------------------------------------------------------------------------------------ bad values

BAD = """
name: bad
dataset: {name: synthetic}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 4, batch_size: 16, warmup_epochs: 1}
variants: {dense: {}}
"""


@pytest.mark.parametrize(("section", "setting", "key"), [
    ("train", "cutmix: -1", "train.cutmix"),
    ("train", "mixup_switch_prob: 1.5", "train.mixup_switch_prob"),
    ("train", "mixup_prob: -0.1", "train.mixup_prob"),
    ("train", "ema: 1.0", "train.ema"),
    ("train", "cooldown_epochs: 3", "cooldown_epochs"),
    ("train", "warmup_lr: 1.0", "warmup_lr"),
    ("train", "repeated_aug: 0", "train.repeated_aug"),
    ("train", "lr_schedule: step", "train.lr_schedule"),
    ("dataset", "interpolation: lanczos", "dataset.interpolation"),
    ("model", "neuron: {type: alif}", "model.neuron.type"),
    ("model", "neuron: {surrogate: erf}", "model.neuron.surrogate"),
    ("dataset", "augment: {random_resized_crop_min: 1.5}", "dataset.augment.random_resized_crop_min"),
    ("dataset", "augment: {randaugment_scale: timm, randaugment_magnitude: 11}", "randaugment_magnitude"),
    ("dataset", "crop_pct: 0.9", "dataset.crop_pct"),
])
def test_bad_recipe_values_exit_2_naming_the_key(tmp_path: Path, capsys, section: str, setting: str, key: str):
    text = BAD
    prefix = {"train": "train: {", "model": "model: {", "dataset": "dataset: {"}[section]
    text = text.replace(prefix, prefix + setting + ", ", 1)
    study = tmp_path / "bad.yaml"
    study.write_text(text)
    results = tmp_path / "res"
    assert cli.main(["run", str(study), "--results", str(results), "--no-progress"]) == 2
    assert key in capsys.readouterr().err
    assert not results.exists()


def test_if_neurons_are_charged_no_leak_multiply():
    """The neuron_updates and lemaire2022 conventions add a leak MAC per neuron update; an IF neuron has none."""
    from suite.config.train import EnergyConfig
    from suite.energy import Counts, convention_uj

    cfg = EnergyConfig()
    lif = Counts({}, 1.0, 4, policy_ops={}, neuron_updates=1000.0)
    iff = Counts({}, 1.0, 4, policy_ops={}, neuron_updates=1000.0, leaky=False)
    saved = convention_uj("neuron_updates", lif, cfg) - convention_uj("neuron_updates", iff, cfg)
    assert saved == pytest.approx(cfg.e_mac_pj * 1000.0 * 1e-6)
    assert convention_uj("neuron_updates", iff, cfg) == pytest.approx(cfg.e_ac_pj * 1000.0 * 1e-6)


DDP_STUDY = """
name: rddp
dataset: {name: synthetic, synthetic: {train_size: 40, test_size: 16}, val_fraction: 0.2}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 3, batch_size: 8, warmup_epochs: 1, warmup_lr: 1.0e-5, cooldown_epochs: 1, cutmix: 1.0,
        ema: 0.5, repeated_aug: 3}
eval: {heatmap_images: 0}
tracking: {enabled: false}
variants: {dense: {}}
"""


def test_recipe_on_two_ranks(tmp_path: Path):
    """Repeated augmentation, cutmix and the EMA on 2 spawned DDP ranks: every rank takes as many steps (else the
    collectives would hang), rank 0 keeps the EMA, the checkpoint has it and the run's weights are it."""
    from suite.run.unit import RunUnit, run_one

    spec = expand(parse_study(DDP_STUDY))[0]
    res = run_one(RunUnit(spec, tmp_path / "rddp", device="cpu", progress=False, nproc_per_run=2))
    assert res.outcome == "done", res.reason
    ckpt = load_checkpoint(tmp_path / "rddp" / spec.run_id / "checkpoint.pt", "cpu")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 3 and "ema" in ckpt
    assert any(not torch.equal(ckpt["model"][k], v) for k, v in ckpt["ema"].items() if v.is_floating_point())
    assert ckpt["history"][-1]["lr"] == pytest.approx(spec.config.train.min_lr)
