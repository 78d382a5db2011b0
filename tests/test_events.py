"""Event data (issue 27): the recorded formats through spikingjelly, the simulated saccade source, event frames in
the model, and bad input refused before anything is written.  Every dataset here is written by the test in the real
on-disk format (tests/event_files.py), with ground truth the test constructs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import event_files as ef
import numpy as np
import pytest
import torch
import yaml

from suite import cli
from suite.config.data import DatasetConfig

FRAMES = 2


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict:
    """One small root per recorded format, and its ground truth."""
    base = tmp_path_factory.mktemp("events")
    nm = ef.write_nmnist(base / "nmnist", {"Train": 3, "Test": 2})
    # 13 recordings per class: 0..10 (so string order 0, 1, 10, 2, ... differs from numeric order) and 100, 101.
    ef.write_cifar10_dvs(base / "cifar10_dvs", (*range(11), 100, 101))
    gesture = ef.write_dvs128_gesture(base / "dvs128_gesture", {"user01_fluorescent": list(range(1, 12)),
                                                                "user02_led": [3, 5]},
                                      {"user03_natural": list(range(11, 0, -1))})
    return {"base": base, "nmnist": nm, "dvs128_gesture": gesture}


def _load(roots: dict, name: str, **kw):
    from suite.data import load_data

    return load_data(DatasetConfig(name=name, root=str(roots["base"] / name), frames=FRAMES, val_fraction=0.0, **kw))


def _signature_column(x: torch.Tensor) -> int:
    """The one column a test sample's events sit in."""
    cols = x.sum(dim=(0, 1, 2)).nonzero().flatten().tolist()
    assert len(cols) == 1, cols
    return cols[0]


def test_nmnist_official_split_labels_shapes_and_counts(roots):
    bundle = _load(roots, "nmnist")
    truth = roots["nmnist"]
    assert (len(bundle.train), len(bundle.test)) == (len(truth["Train"]), len(truth["Test"]))
    assert (bundle.in_channels, bundle.image_size, bundle.num_classes) == (2, (34, 34), 10)
    for split, ds in (("Train", bundle.train), ("Test", bundle.test)):
        counts = Counter(int(v) for v in ds.labels)
        assert counts == Counter(d for d, _ in truth[split])
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (FRAMES, 2, 34, 34) and x.dtype == torch.float32
            assert _signature_column(x) == ef.nmnist_signature(y)
            events = int(x.sum())
            assert events in {n for d, n in truth[split] if d == y}
            # split_by number: equal event counts per frame (the last takes the remainder), polarities alternate
            assert x[0].sum() == events // FRAMES and x[:, 1].sum() == events // 2


def test_cifar10_dvs_first90_in_file_order_and_tebn(roots):
    first90 = _load(roots, "cifar10_dvs")
    # ceil(0.9 * 13) = 12 train per class in spikingjelly's string order 0, 1, 10, 100, 101, 2, ..., 9: test is 9
    assert (len(first90.train), len(first90.test)) == (120, 10)
    assert {p.name.rsplit("_", 1)[1] for p in first90.test.paths} == {"9.npz"}
    tebn = _load(roots, "cifar10_dvs", dvs_split="tebn")  # recordings 0-99 of each class are the test split
    assert (len(tebn.train), len(tebn.test)) == (20, 110)
    assert {p.name.rsplit("_", 1)[1] for p in tebn.train.paths} == {"100.npz", "101.npz"}
    for ds in (first90.train, first90.test):
        assert Counter(int(v) for v in ds.labels) == Counter({c: len(ds) // 10 for c in range(10)})
    for i in range(0, len(first90.test)):
        x, y = first90.test[i]
        assert x.shape == (FRAMES, 2, 128, 128)
        assert _signature_column(x) == ef.cifar10_dvs_signature(y)
        assert first90.test.paths[i].parent.name == ef.CIFAR10_CLASSES[y]


def test_dvs128_gesture_trials_cut_by_their_labels(roots):
    bundle = _load(roots, "dvs128_gesture", image_size=32)
    truth = roots["dvs128_gesture"]
    assert Counter(int(v) for v in bundle.train.labels) == Counter(truth["train"])
    assert Counter(int(v) for v in bundle.test.labels) == Counter(truth["test"])
    assert bundle.image_size == (32, 32)
    full = _load(roots, "dvs128_gesture")
    for ds in (full.train, full.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (FRAMES, 2, 128, 128)
            assert _signature_column(x) == ef.gesture_signature(y + 1)  # the stray event outside every window is gone
    assert bundle.train[0][0].shape == (FRAMES, 2, 32, 32)


def test_event_augmentations_move_all_frames_together():
    from suite.data.base import _build_transforms

    cfg = DatasetConfig(name="nmnist", frames=3, augment={"event_roll": 3, "horizontal_flip": True})
    train_tf, eval_tf = _build_transforms(cfg, (8, 8), None, None)
    assert eval_tf is None
    x = torch.zeros(3, 2, 8, 8)
    x[:, :, 2, 1] = torch.arange(1.0, 4.0).view(3, 1)
    torch.manual_seed(0)
    moved = [train_tf(x) for _ in range(20)]
    assert all(float(m.sum()) == float(x.sum()) for m in moved)  # a roll loses nothing
    spots = {tuple(m[0, 0].nonzero()[0].tolist()) for m in moved}
    assert len(spots) > 1
    for m in moved:  # every frame moved by the same (dy, dx)
        assert len({tuple(m[t, 0].nonzero()[0].tolist()) for t in range(3)}) == 1


# ------------------------------------------------------------------------------------------------ simulated


def test_simulated_events_are_deterministic_cached_and_move(tmp_path):
    from suite.data import load_data
    from suite.data.simulated_events import cache_key

    kw = {"name": "simulated_events", "frames": 3, "root": str(tmp_path), "train_subset": 40, "test_subset": 20}
    a = load_data(DatasetConfig(**kw))
    cached = sorted(tmp_path.glob("digits_*.pt"))
    assert [p.name for p in cached] == [f"digits_{cache_key(DatasetConfig(**kw))}.pt"]
    b = load_data(DatasetConfig(**kw))  # read back from the cache
    assert torch.equal(a.train.images, b.train.images) and a.describe()["digest"] == b.describe()["digest"]
    other = load_data(DatasetConfig(**kw, simulated={"seed": 1}))
    assert not torch.equal(a.train.images, other.train.images)
    assert torch.equal(a.train.labels, other.train.labels)  # same images, other saccade start points
    x = a.train.images
    assert x.shape[1:] == (3, 2, 12, 12) and a.in_channels == 2 and a.image_size == (12, 12)
    assert (x >= 0).all() and (x.sum(dim=(1, 2, 3, 4)) > 0).all()
    assert not torch.equal(x[:, 0], x[:, 1])  # each stroke shows other edges: not one image repeated
    static = load_data(DatasetConfig(**{**kw, "frames": None}, simulated={"representation": "static"}))
    assert static.train.images.shape[1:] == (1, 12, 12)
    assert torch.equal(static.train.labels, a.train.labels)
    assert torch.equal(static.train.source_indices, a.train.source_indices)


def test_dvs_pixel_model_counts_threshold_crossings():
    from suite.data.simulated_events import LOG_EPS, dvs_counts

    # one pixel: dark -> bright -> dark; ON events on the rise, as many OFF on the fall
    frames = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    counts = dvs_counts(frames, threshold=0.2)
    rise = int((torch.log(torch.tensor(1.0 + LOG_EPS)) - torch.log(torch.tensor(LOG_EPS))) / 0.2)
    assert counts[0, 0, 1].item() == rise and counts[0, 0, 0].item() == 0  # ON channel 1
    assert counts[0, 1, 0].item() == rise and counts[0, 1, 1].item() == 0  # OFF channel 0


# ------------------------------------------------------------------------------------------------ the model


def test_event_frames_reach_the_stem_one_per_step():
    from helpers import forward

    from suite.config import ModelConfig, TimeConfig, TokenConfig
    from suite.models import build_model

    cfg = ModelConfig(depth=1, dim=16, heads=2, T=3)
    model = build_model(cfg, TokenConfig(), TimeConfig(), in_channels=2, image_size=(8, 8), num_classes=4).eval()
    frames = torch.rand(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    seen = []
    hook = model.stem.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    out = forward(model, frames, count=True)
    hook.remove()
    assert seen == [torch.Size([3, 2, 2, 8, 8])] and out.logits.shape == (2, 4)
    # the same frame at every step is the repeated static image: event input differs from it
    still = forward(model, frames[:, :1].expand(-1, 3, -1, -1, -1).contiguous())
    assert torch.allclose(still.logits, forward(model, frames[:, 0]).logits, atol=1e-5)
    with pytest.raises(ValueError, match="model.T"):
        forward(model, torch.rand(2, 4, 2, 8, 8))


# ------------------------------------------------------------------------------------------------ end to end


def _study(path: Path, dataset: dict, *, include: list | None = None, model: dict | None = None) -> Path:
    text = {"name": "events_e2e", "dataset": dataset,
            "model": {"depth": 1, "dim": 16, "heads": 2, "T": FRAMES, **(model or {})},
            "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0},
            "execution": {"workers": 1}, "variants": {"dense": {}},
            "matrix": {"seed": [0], **({"include": include} if include else {})}}
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return path


def test_every_format_runs_one_epoch_through_spikesuite_run(roots, tmp_path, capsys):
    base = roots["base"]
    common = {"frames": FRAMES, "image_size": 8, "val_fraction": 0.0}
    include = [{"variant": "dense", "dataset.name": n, "dataset.root": str(base / n)}
               for n in ("cifar10_dvs", "dvs128_gesture")]
    include.append({"variant": "dense", "dataset.name": "simulated_events", "dataset.root": str(tmp_path / "sim"),
                    "dataset.image_size": None, "dataset.train_subset": 32, "dataset.test_subset": 16,
                    "dataset.simulated.pad": 0})
    path = _study(tmp_path / "e2e.yaml", {"name": "nmnist", "root": str(base / "nmnist"), **common}, include=include)
    results = tmp_path / "results"
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress", "--no-report"]) == 0, \
        capsys.readouterr().err
    described = {}
    for run in (results / "events_e2e").iterdir():
        if (run / "metrics.json").is_file():
            d = json.loads((run / "metrics.json").read_text())["details"]["dataset"]
            described[d["name"]] = d
    expect = {"nmnist": (12, 8, [8, 8]), "cifar10_dvs": (120, 10, [8, 8]), "dvs128_gesture": (13, 11, [8, 8]),
              "simulated_events": (32, 16, [8, 8])}
    assert {n: (d["train_size"], d["test_size"], d["image_size"]) for n, d in described.items()} == expect
    assert all(d["in_channels"] == 2 and d["mean"] is None for d in described.values())
    assert (base / "nmnist" / f"frames_number_{FRAMES}_split_by_number").is_dir()  # spikingjelly's frame cache


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["missing", "truncated_bin", "truncated_aedat3", "frames0", "T", "stem"])
def test_bad_input_exits_2_naming_the_key_or_file_and_writes_nothing(case, tmp_path, capsys):
    root = tmp_path / "nm"
    dataset: dict = {"name": "nmnist", "root": str(root), "frames": FRAMES}
    model: dict = {}
    expect = ""
    if case != "missing":
        ef.write_nmnist(root, {"Train": 1, "Test": 1}, digits=(0,))
    if case == "missing":
        expect = "garrickorchard.com"
    elif case == "truncated_bin":
        bad = root / "extract" / "Train" / "0" / "00000.bin"
        bad.write_bytes(bad.read_bytes()[:-2])
        expect = f"{bad}: truncated"
    elif case == "truncated_aedat3":
        ef.write_dvs128_gesture(tmp_path / "g", {"user01_led": [1, 2]}, {"user02_led": [1, 2]})
        bad = tmp_path / "g" / "extract" / "DvsGesture" / "user02_led.aedat"
        bad.write_bytes(bad.read_bytes()[:-3])
        dataset = {"name": "dvs128_gesture", "root": str(tmp_path / "g"), "frames": FRAMES}
        expect = f"{bad}: truncated packet"
    elif case == "frames0":
        dataset["frames"], expect = 0, "dataset.frames"
    elif case == "T":
        model, expect = {"T": FRAMES + 1}, "model.T"
    else:
        model, expect = {"stem": "once"}, "model.stem"
    before = sorted(p for p in tmp_path.rglob("*"))
    path = _study(tmp_path / "bad.yaml", dataset, model=model)
    results = tmp_path / "results"
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress", "--no-report"]) == 2
    assert expect in capsys.readouterr().err
    assert not results.exists()
    assert sorted(p for p in tmp_path.rglob("*") if p != path) == before  # no events_np, no frames


@pytest.mark.parametrize(("kw", "key"), [
    ({"name": "nmnist"}, "dataset.frames"),                                                  # event data needs frames
    ({"name": "digits", "frames": 4}, "dataset.frames"),
    ({"name": "digits", "augment": {"event_roll": 2}}, "dataset.augment.event_roll"),
    ({"name": "nmnist", "frames": 4, "augment": {"randaugment": True}}, "dataset.augment.randaugment"),
    ({"name": "digits", "simulated": {"saccades": 2}}, "dataset.simulated"),
    ({"name": "nmnist", "frames": 4, "dvs_split": "tebn"}, "dataset.dvs_split"),
])
def test_event_keys_only_where_they_mean_something(kw, key):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=key.replace(".", r"\.")):
        DatasetConfig(**kw)
    assert DatasetConfig().model_dump() == DatasetConfig(frames=None).model_dump()  # the defaults stay valid


def test_heatmap_draws_each_step_over_its_own_frame():
    from suite.report.figures.heatmaps import mosaic

    grid, steps = (2, 2), np.stack([np.eye(4), np.flipud(np.eye(4))])  # two different frames
    maps = np.ones((1, 2, 4), dtype=bool)  # one block, two steps, every token active
    still = mosaic(np.zeros((4, 4)), maps, grid)
    moving = mosaic(np.zeros((4, 4)), maps, grid, steps=steps)
    t1, t2 = moving[:, 5:9], moving[:, 10:14]  # columns: image, gap, t=1, gap, t=2
    assert not np.array_equal(t1, t2) and np.array_equal(still[:, :4], moving[:, :4])
    assert np.array_equal(t1.mean(-1) > still[:, 5:9].mean(-1), steps[0] > 0)  # bright where frame 1 has events
