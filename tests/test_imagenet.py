"""imagenet: the ImageFolder layout on a tiny tree of real JPEGs, its transforms, the 196-token stem at 224, the
refusals (missing root, flat val), and one ``spikesuite run`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from suite import cli
from suite.config import DatasetConfig, ModelConfig, TimeConfig, TokenConfig
from suite.data import DatasetNotFoundError, check_available, load_data
from suite.models import build_model
from suite.models.backbone import stem_pool_count

# class colour per wnid; deliberately not in sorted order, so the label order must come from sorting
COLORS = {"n02124075": (0, 0, 255), "n01443537": (255, 0, 0), "n01629819": (0, 255, 0)}
WNIDS = sorted(COLORS)
SIZES = [(48, 36), (40, 56), (64, 48), (36, 36), (50, 40), (44, 60)]  # (width, height): ImageNet sizes vary


def write_imagefolder(root: Path, train: int = 6, val: int = 2) -> None:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``: flat colour images of varying sizes."""
    for wnid, color in COLORS.items():
        for split, n in (("train", train), ("val", val)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", SIZES[k % len(SIZES)], color).save(folder / f"{wnid}_{k}.JPEG", quality=95)
    (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")  # ignored, as ImageFolder does


def test_imagefolder_classes_labels_and_transforms(tmp_path: Path):
    write_imagefolder(tmp_path / "in1k")
    cfg = DatasetConfig(name="imagenet", root=str(tmp_path / "in1k"), val_fraction=0.25, normalize=False)
    check_available(cfg)
    data = load_data(cfg)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, (224, 224))  # the published size
    assert (len(data.train), len(data.val), len(data.test)) == (14, 4, 6)  # 18 train images, 25 % held out
    test_labels = data.test.labels.tolist()
    assert sorted(test_labels) == [0, 0, 1, 1, 2, 2]
    for path, label in zip(data.test.paths, test_labels):
        assert path.parent.name == WNIDS[label]  # label = index of the sorted wnid
    for ds in (data.train, data.val, data.test):
        for i in range(len(ds)):
            image, label = ds[i]
            assert image.shape == (3, 224, 224)
            want = torch.tensor(COLORS[WNIDS[label]], dtype=torch.float32) / 255
            assert torch.allclose(image.mean((1, 2)), want, atol=0.03), (i, label)
    counts = torch.bincount(torch.tensor([data.train[i][1] for i in range(len(data.train))]), minlength=3)
    assert counts.tolist() in ([5, 5, 4], [5, 4, 5], [4, 5, 5])  # a stratified hold-out

    normed = load_data(DatasetConfig(name="imagenet", root=str(tmp_path / "in1k"), image_size=32,
                                     augment={"random_resized_crop_min": 0.08, "horizontal_flip": True,
                                              "randaugment": True}))
    assert normed.mean == pytest.approx((0.485, 0.456, 0.406)) and normed.image_size == (32, 32)
    assert normed.train[0][0].shape == normed.test[0][0].shape == (3, 32, 32)
    steps = {type(t).__name__: t for t in normed.train.transform.transforms}
    assert steps["RandomResizedCrop"].scale == (0.08, 1.0) and "RandomHorizontalFlip" in steps
    assert (steps["RandAugment"].num_ops, steps["RandAugment"].magnitude) == (1, 9)  # what randaugment: true ran
    assert steps["RandAugment"].num_magnitude_bins == 31
    assert steps["RandAugment"].interpolation.value == "nearest"  # torchvision's default, as before
    assert steps["RandomResizedCrop"].interpolation.value == "bilinear"
    assert [type(t).__name__ for t in normed.test.transform.transforms] == ["Resize", "CenterCrop", "Normalize"]
    assert normed.test.transform.transforms[0].size == [36]  # floor(32 / 0.875): timm's default crop_pct

    # the official Spikformer ImageNet recipe: crop_pct 1.0, scale (1, 1), timm's rand-m9 with its default n = 2
    official = load_data(DatasetConfig(name="imagenet", root=str(tmp_path / "in1k"), image_size=32, crop_pct=1.0,
                                       augment={"random_resized_crop_min": 1.0, "randaugment": True,
                                                "randaugment_ops": 2, "randaugment_scale": "timm"},
                                       interpolation="bicubic"))
    steps = {type(t).__name__: t for t in official.train.transform.transforms}
    assert steps["RandomResizedCrop"].scale == (1.0, 1.0)
    ra = steps["RandAugment"]
    assert (ra.num_ops, ra.magnitude, ra.num_magnitude_bins) == (2, 9, 11)  # 9 / 10 of each op's range, as timm
    assert steps["RandomResizedCrop"].interpolation.value == "bicubic"
    assert ra.interpolation.value == "bilinear"  # torchvision's affine ops refuse bicubic on tensors
    assert official.test.transform.transforms[0].interpolation.value == "bicubic"
    assert official.test.transform.transforms[0].size == [32]
    assert official.train[0][0].shape == official.test[0][0].shape == (3, 32, 32)


def test_stems_give_196_tokens_at_224():
    assert stem_pool_count(224) == 4 and stem_pool_count(32) == 2 and stem_pool_count(64) == 3  # CIFAR/TIN unchanged
    # (backbone, model.stem_pool) -> the side of the first stem LIF's spikes: pooled before the LIF or after it
    cases = {("spikformer", None): 112, ("spikformer", "after_lif"): 224, ("sdt", None): 224, ("sdt", "before_lif"): 112}
    for (backbone, order), side in cases.items():
        cfg = ModelConfig(backbone=backbone, depth=1, dim=16, heads=2, T=1, stem_pool=order)
        model = build_model(cfg, TokenConfig(), TimeConfig(), in_channels=3, image_size=(224, 224), num_classes=5).eval()
        assert model.num_tokens == 196 and model.grid == (14, 14)
        shapes = []
        model.stem.stages[0].lif.register_forward_hook(lambda m, i, o, seen=shapes: seen.append(tuple(o.shape)))
        with torch.no_grad():
            out = model(torch.rand(1, 3, 224, 224))
        assert out.logits.shape == (1, 5) and out.active_tokens.shape[-1] == 1
        assert shapes == [(1, 1, 2, side, side)], (backbone, order)


STUDY = """
name: in1k
dataset:
  name: imagenet
  root: {root}
  image_size: 32
  val_fraction: 0.25
  augment: {{random_resized_crop_min: 0.08, horizontal_flip: true, randaugment: true}}
model: {{depth: 1, dim: 16, heads: 2, T: 1}}
train: {{epochs: 1, batch_size: 7, warmup_epochs: 0, num_workers: 0}}
eval: {{heatmap_images: 0}}
variants: {{dense: {{}}}}
tracking: {{enabled: false}}
"""


def test_spikesuite_run_on_an_imagefolder(tmp_path: Path, capsys):
    write_imagefolder(tmp_path / "in1k")
    study = tmp_path / "in1k.yaml"
    study.write_text(STUDY.format(root=tmp_path / "in1k"))
    results = tmp_path / "res"
    assert cli.main(["run", str(study), "--results", str(results), "--no-progress", "--no-report"]) == 0
    (metrics,) = list((results / "in1k").glob("*/metrics.json"))
    doc = json.loads(metrics.read_text())
    ds = doc["details"]["dataset"]
    assert ds["name"] == "imagenet" and ds["num_classes"] == 3 and ds["image_size"] == [32, 32]
    assert (ds["train_size"], ds["val_size"], ds["test_size"]) == (14, 4, 6)
    assert 0.0 <= doc["metrics"]["accuracy"] <= 100.0


@pytest.mark.parametrize("layout", ["missing", "flat_val", "no_val"])
def test_bad_root_exits_2_naming_the_key_and_writes_nothing(tmp_path: Path, capsys, layout: str):
    root = tmp_path / "in1k"
    if layout != "missing":
        write_imagefolder(root)
        for p in (root / "val").rglob("*.JPEG"):  # the raw ILSVRC2012 val archive: flat files
            p.rename(root / "val" / p.name)
        for d in [p for p in (root / "val").iterdir() if p.is_dir()]:
            d.rmdir()
        if layout == "no_val":
            for p in (root / "val").iterdir():
                p.unlink()
            (root / "val").rmdir()
    with pytest.raises(DatasetNotFoundError):
        check_available(DatasetConfig(name="imagenet", root=str(root)))
    study = tmp_path / "s.yaml"
    study.write_text(STUDY.format(root=root))
    results = tmp_path / "res"
    assert cli.main(["run", str(study), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "imagenet not found" in err and "dataset.root" in err and "image-net.org" in err
    why = {"missing": "directory does not exist", "flat_val": "val/ has no class folders",
           "no_val": "missing val/"}[layout]
    assert why in err
    assert not results.exists()
