"""Dataset settings: which dataset, where its files are, how it is split, subset, resized and augmented.

The loaders live in ``suite.data`` (one module per source, one registry); this schema imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suite.config.fields import added_field

DatasetName = Literal["digits", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet", "synthetic",
                      "cifar10_dvs", "dvs128_gesture", "nmnist", "simulated_events"]

# Recorded event-camera sets, read through spikingjelly.datasets (suite/data/dvs.py), and every source whose items
# are frame sequences [T, 2, H, W] rather than one image (docs/data.md, "Event data").
RECORDED_EVENT_DATASETS = ("cifar10_dvs", "dvs128_gesture", "nmnist")
EVENT_DATASETS = (*RECORDED_EVENT_DATASETS, "simulated_events")
# Where each recorded set is looked for without dataset.root (spikingjelly's layout inside it; docs/data.md).
EVENT_DEFAULT_ROOTS = {"cifar10_dvs": Path("data/CIFAR10DVS"), "dvs128_gesture": Path("data/DVS128Gesture"),
                       "nmnist": Path("data/NMNIST")}
# Where simulated event streams are cached without dataset.root.
SIMULATED_EVENTS_DEFAULT_ROOT = Path("data/cache/simulated_events")

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
# cifar10_dvs: 900 of each class's 1000 recordings under either split; dvs128_gesture: the official 1176 training
# samples; nmnist: the 60 000 saccade recordings of MNIST's training set.
TRAIN_POOL = {"digits": 1797 - round(0.2 * 1797), "fashion_mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
              "tinyimagenet": 100_000, "imagenet": 1_281_167, "cifar10_dvs": 9_000, "dvs128_gesture": 1_176,
              "nmnist": 60_000}


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
    # Event data only: roll every frame of a sample by one random (dy, dx) in [-r, r] pixels (torch.roll, wrapping
    # round), the random translation of the published DVS recipes; horizontal_flip flips all frames together.
    event_roll: int = added_field(0, ge=0)


class SyntheticConfig(BaseModel):
    """Shape of the generated prototype-plus-noise dataset used by fast tests."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(default=4, ge=2)
    image_size: int = Field(default=8, ge=4)
    channels: int = Field(default=1, ge=1)
    train_size: int = Field(default=256, ge=1)
    test_size: int = Field(default=128, ge=1)
    noise: float = Field(default=0.3, ge=0.0)


class SimulatedEventsConfig(BaseModel):
    """The camera-motion model that turns a static dataset into event streams (suite/data/simulated_events.py).

    N-MNIST style: the image moves along ``saccades`` straight strokes of an isosceles triangle of side
    ``amplitude`` pixels, sampled at ``substeps`` positions per stroke; a pixel emits an ON (OFF) event each time its
    log intensity rises (falls) by ``threshold`` from the level at its last event; the events are binned into
    ``dataset.frames`` frames.  ``noise`` adds that many random events per pixel and stroke (seeded).
    ``representation: static`` gives the same padded canvas as one still image instead (the repeated-image arm
    of a comparison on the same samples)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["digits", "fashion_mnist"] = "digits"
    representation: Literal["events", "static"] = "events"
    saccades: int = Field(default=3, ge=1, le=12)
    substeps: int = Field(default=8, ge=1, le=64)
    amplitude: float = Field(default=2.0, gt=0.0, le=16.0)
    pad: int = Field(default=2, ge=0, le=16)  # blank border, so the moving image stays on the sensor
    threshold: float = Field(default=0.2, gt=0.0)  # log-intensity contrast threshold (DVS C)
    noise: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0  # the saccade start vertex per sample and the noise events


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
    # Event data (EVENT_DATASETS): frames per sample, which is model.T (one frame per timestep, no repeat), and how
    # spikingjelly cuts a recording into them: equal event counts (number) or equal durations (time).
    frames: int | None = added_field(None, ge=1, le=64)
    split_by: Literal["number", "time"] = added_field("number")
    # CIFAR10-DVS has no split of its own: first90 trains on the first 90 % of each class in spikingjelly's file
    # order (Spikformer/QKFormer code, 9000/1000); tebn tests on recordings 0-99 of each class (spikingjelly's
    # CIFAR10DVSTEBNSplit, 9000/1000).
    dvs_split: Literal["first90", "tebn"] = added_field("first90")
    simulated: SimulatedEventsConfig = added_field(SimulatedEventsConfig())

    @classmethod
    def default_for(cls, name: str) -> DatasetConfig:
        """The default config of dataset ``name`` (one frame where event data must state its frames), e.g. to
        check every dataset's availability."""
        return cls(name=name, frames=1 if name in EVENT_DATASETS else None)  # type: ignore[arg-type]

    @property
    def is_events(self) -> bool:
        """Items are frame sequences ``[T, 2, H, W]`` (not a simulated source in its static representation)."""
        return self.name in RECORDED_EVENT_DATASETS or (
            self.name == "simulated_events" and self.simulated.representation == "events")

    def full_pool(self) -> int:
        """Images in the dataset's whole training pool (no subset)."""
        if self.name == "synthetic":
            return self.synthetic.train_size
        if self.name == "simulated_events":
            return TRAIN_POOL[self.simulated.source]
        return TRAIN_POOL[self.name]

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

    @model_validator(mode="after")
    def _event_keys(self) -> DatasetConfig:
        """Event keys only where they mean something, and frames wherever events are binned."""
        if self.is_events and self.frames is None:
            raise ValueError(f"dataset.frames: {self.name} gives frame sequences; set frames (= model.T)")
        # A simulated source in its static representation may keep frames (= model.T, the repeats of the still
        # image), so that one study sweeps dataset.simulated.representation on a single matrix axis.
        if self.frames is not None and self.name not in EVENT_DATASETS:
            raise ValueError(f"dataset.frames: only event data is binned into frames, not {self.name}")
        if self.name not in EVENT_DATASETS and self.augment.event_roll:
            raise ValueError(f"dataset.augment.event_roll: only for event data, not {self.name}")
        if self.is_events and self.augment.randaugment:
            raise ValueError("dataset.augment.randaugment: photometric operations are not defined on event counts")
        if self.is_events and self.download:
            raise ValueError(f"dataset.download: {self.name} cannot be downloaded here; see docs/data.md")
        if self.name != "simulated_events" and self.simulated != SimulatedEventsConfig():
            raise ValueError(f"dataset.simulated: only for simulated_events, not {self.name}")
        if self.dvs_split != "first90" and self.name != "cifar10_dvs":
            raise ValueError("dataset.dvs_split: only cifar10_dvs has a choice of split")
        return self
