"""Dataset settings: which dataset, where its files are, how it is split, subset, resized and augmented.

The loaders live in ``suite.data`` (one module per source, one registry); this schema imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suite.config.fields import added_field

DatasetName = Literal["digits", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet", "synthetic"]

TINYIMAGENET_DEFAULT_ROOT = Path("data/tiny-imagenet-200")
TINYIMAGENET_HINT = (
    "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that "
    "<root>/wnids.txt, <root>/train/ and <root>/val/val_annotations.txt exist "
    f"(default root {TINYIMAGENET_DEFAULT_ROOT}); torchvision cannot download it."
)

IMAGENET_DEFAULT_ROOT = Path("data/imagenet")
IMAGENET_HINT = (
    "Set dataset.root to the ImageNet-1k folder. ImageNet-1k (ILSVRC2012) cannot be downloaded automatically: register at https://image-net.org/download.php, "
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, and extract them in the ImageFolder layout "
    "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (the val archive is flat: sort it into class folders, "
    "e.g. with imagenet/extract_ILSVRC.sh of github.com/pytorch/examples) "
    f"(default root {IMAGENET_DEFAULT_ROOT})."
)
IMAGENET_SIZE = 224  # the published resolution of Spikformer/SDT/QKFormer ImageNet results (no image_size: 224)


# Images in each dataset's training pool before any subset (the pool the validation split is carved from): known
# without loading, so a study's validation size can be checked by ``spikesuite plan``. digits: 1797 images less
# the 20 % test split sklearn's set lacks (suite/data/digits.py).
TRAIN_POOL = {"digits": 1797 - round(0.2 * 1797), "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
              "tinyimagenet": 100_000, "imagenet": 1_281_167}


def val_count(pool: int, val_fraction: float) -> int:
    """Images held out for validation from a training pool of ``pool`` (``suite.data.base`` carves exactly these):
    ``val_fraction`` of it rounded, at least one, and never the whole pool; 0 without a fraction."""
    if val_fraction <= 0.0 or pool < 2:
        return 0
    return min(max(1, round(val_fraction * pool)), pool - 1)


class AugmentConfig(BaseModel):
    """Training-time augmentation; never applied to validation or test data."""

    model_config = ConfigDict(extra="forbid")

    random_crop_padding: int = Field(default=0, ge=0)  # RandomCrop(size, padding=p) when > 0
    horizontal_flip: bool = False
    randaugment: bool = False  # RandAugment(num_ops=1, magnitude=9): Spikformer's rand-m9-n1
    # RandAugment's ops per image (timm's n: rand-m9-n1 -> 1; timm's default when n is absent: 2) and magnitude, on
    # torchvision's scale (magnitude / 30 of each op's range: the default 9 is what randaugment: true always ran) or
    # timm's (magnitude / 10: timm's m9 is 90 % of the range). timm's mstd/inc options have no torchvision peer.
    randaugment_ops: int = added_field(1, ge=1, le=14)
    randaugment_magnitude: int = added_field(9, ge=0, le=30)
    randaugment_scale: Literal["torchvision", "timm"] = added_field("torchvision")
    random_erasing: float = Field(default=0.0, ge=0.0, le=1.0)  # probability of v2.RandomErasing
    # RandomResizedCrop(size, scale=(random_resized_crop_min, 1), ratio=(3/4, 4/3)) as timm's ImageNet training
    # transform (imagenet: instead of its resize-and-centre-crop; other sets: after their resize); 0 = off.
    random_resized_crop_min: float = added_field(0.0, ge=0.0, le=1.0)  # timm default scale (0.08, 1.0): 0.08


class SyntheticConfig(BaseModel):
    """Shape of the generated prototype-plus-noise dataset used by fast tests."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(default=4, ge=2)
    image_size: int = Field(default=8, ge=4)
    channels: int = Field(default=1, ge=1)
    train_size: int = Field(default=256, ge=1)
    test_size: int = Field(default=128, ge=1)
    noise: float = Field(default=0.3, ge=0.0)


class DatasetConfig(BaseModel):
    """Which dataset to load and how to split, subset, resize, normalise and augment it."""

    model_config = ConfigDict(extra="forbid")

    name: DatasetName = "digits"
    root: str | None = None  # None -> per-dataset default root
    download: bool = False  # only fashion_mnist, cifar10 and cifar100 can be downloaded
    image_size: int | None = Field(default=None, ge=1)  # square resize target; None keeps native size
    val_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)  # of the (possibly subset) train split
    split_seed: int = 0
    train_subset: int | None = Field(default=None, ge=1)
    test_subset: int | None = Field(default=None, ge=1)
    normalize: bool = True
    # imagenet's evaluation: resize the shorter side to floor(size / crop_pct), centre-crop size (timm's crop_pct;
    # 0.875 is timm's default, 256 -> 224; 1.0 resizes straight to the crop). Other sets have one native size.
    crop_pct: float = added_field(0.875, gt=0.0, le=1.0)
    # How images are resampled: bilinear (what the suite always did: bilinear resizes and crops, RandAugment's
    # geometric ops nearest, torchvision's defaults) or bicubic (timm's interpolation / train_interpolation bicubic,
    # as the official Spikformer and SDT configs: resizes and crops; RandAugment's geometric ops bilinear, since
    # torchvision's affine ops refuse bicubic on tensors).
    interpolation: Literal["bilinear", "bicubic"] = added_field("bilinear")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    def full_pool(self) -> int:
        """Images in the dataset's whole training pool (no subset)."""
        return self.synthetic.train_size if self.name == "synthetic" else TRAIN_POOL[self.name]

    def train_pool(self) -> int:
        """Images in the training pool this config draws from (its train_subset, when smaller)."""
        full = self.full_pool()
        return min(full, self.train_subset) if self.train_subset is not None else full

    def val_images(self) -> int:
        """Images in this config's validation split, without loading it."""
        return val_count(self.train_pool(), self.val_fraction)

    @model_validator(mode="after")
    def _download_only_where_possible(self) -> DatasetConfig:
        # Tiny-ImageNet is the one set where `download: true` would silently do nothing useful; failing at
        # validation time is clearer than failing later with "not found". Digits and synthetic data need
        # no download, so the flag is harmless there.
        if self.download and self.name == "tinyimagenet":
            raise ValueError("dataset.download is not supported for tinyimagenet. " + TINYIMAGENET_HINT)
        aug = self.augment
        if aug.randaugment_scale == "timm" and aug.randaugment_magnitude > 10:
            raise ValueError(f"dataset.augment.randaugment_magnitude ({aug.randaugment_magnitude}) must be at most 10 "
                             "on timm's scale (randaugment_scale: timm)")
        if self.crop_pct != 0.875 and self.name != "imagenet":
            raise ValueError(f"dataset.crop_pct is for imagenet (images of varying size) only, not {self.name}")
        if self.download and self.name == "imagenet":
            raise ValueError("dataset.download is not supported for imagenet. " + IMAGENET_HINT)
        return self
