"""imagenet: ImageNet-1k (ILSVRC2012) in the ImageFolder layout ``<root>/train/<wnid>/*.JPEG``,
``<root>/val/<wnid>/*.JPEG``, file-backed (decoded with PIL on access, as tinyimagenet).

Classes are the sorted ``train/`` folder names (torchvision's ``ImageFolder`` rule, so wnid order = label order).
The labelled ``val/`` split (50 images per class) serves as test, as in every published ImageNet number; a
validation hold-out is carved from train by ``dataset.val_fraction`` like every other set. Images are brought to
``image_size`` (default 224, the published resolution) the way timm's ImageNet transforms do: training takes a
``RandomResizedCrop`` when ``augment.random_resized_crop_min`` is set, evaluation resizes the shorter side to
``size / dataset.crop_pct`` (timm's default 0.875: 256 at 224) and centre-crops ``size``. It cannot be downloaded.
"""

import math
from pathlib import Path

from torchvision.transforms import v2

from suite.config import DatasetConfig
from suite.config.data import IMAGENET_HINT, IMAGENET_SIZE
from suite.data.base import DataBundle, _bundle_from_files, list_images, resampling
from suite.data.registry import (
    DataSource,
    _not_found,
    imagenet_available,
    imagenet_directory,
    register_source,
)

# torchvision / timm IMAGENET_DEFAULT_MEAN and IMAGENET_DEFAULT_STD
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
def _class_folders(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir())


def _read_split(split: Path, class_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Every image of ``split/<wnid>/`` with its class index; a class folder train lacks is an error naming it."""
    paths: list[Path] = []
    labels: list[int] = []
    for wnid in _class_folders(split):
        if wnid not in class_of:
            raise ValueError(f"{split / wnid}: class folder absent from {split.parent / 'train'} "
                             "(dataset.root: train/ and val/ must hold the same wnids)")
        files = list_images(split / wnid)
        paths += files
        labels += [class_of[wnid]] * len(files)
    if not paths:
        raise ValueError(f"{split}: no images (.JPEG/.jpg/.png) under its <wnid>/ folders (dataset.root)")
    return paths, labels


def _sizing(cfg: DatasetConfig, size: int) -> tuple[list, list]:
    """(train, eval) steps to ``size`` x ``size``: timm's random resized crop (when set) / resize + centre crop."""
    resample = resampling(cfg)
    evaluate = [v2.Resize(math.floor(size / cfg.crop_pct), interpolation=resample, antialias=True),
                v2.CenterCrop(size)]
    lo = cfg.augment.random_resized_crop_min
    train = [v2.RandomResizedCrop(size, scale=(lo, 1.0), interpolation=resample, antialias=True)] if lo > 0 \
        else evaluate
    return train, evaluate


def _load_imagenet(cfg: DatasetConfig) -> DataBundle:
    directory, tried = imagenet_directory(cfg)
    if directory is None:
        raise _not_found("imagenet", tried, IMAGENET_HINT)
    wnids = _class_folders(directory / "train")
    class_of = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = _read_split(directory / "train", class_of)
    test_paths, test_labels = _read_split(directory / "val", class_of)

    side = cfg.image_size or IMAGENET_SIZE
    return _bundle_from_files(cfg, (train_paths, train_labels), (test_paths, test_labels), len(wnids),
                              (side, side), IMAGENET_STATS, _sizing(cfg, side))


register_source(DataSource(names=("imagenet",), check=imagenet_available, load=_load_imagenet))
