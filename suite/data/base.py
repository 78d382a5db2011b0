"""What every source shares: the dataset classes, the bundle, deterministic splitting and transforms.

Sources only read their on-disk format; splitting, subsetting, normalising and wrapping happen here, so
that every dataset obeys the same contract: float32 images in ``[0, 1]`` (before normalisation) with shape
``[C, H, W]``, integer labels, and splits derived from a single deterministic, class-stratified ordering
of the training pool (see :func:`_stratified_order`), so the same config always yields the same indices.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from suite.config import DatasetConfig
from suite.config.data import val_count

# --------------------------------------------------------------------------------------------------
# Datasets and the bundle
# --------------------------------------------------------------------------------------------------

Transform = Callable[[torch.Tensor], torch.Tensor]


class TensorImageDataset(Dataset):
    """In-memory images ``[N, C, H, W]`` (uint8 in 0..255 or float in [0, 1]) with int labels.

    ``source_indices`` records where each item sits in the dataset's original split (file order), so
    splits can be logged, audited for overlap and compared across runs.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Transform | None = None,
        source_indices: torch.Tensor | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform
        self.source_indices = (
            torch.arange(len(images)) if source_indices is None else source_indices.to(torch.int64)
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = _to_unit_float(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class ImageFileDataset(Dataset):
    """File-backed images decoded with PIL on access, so construction stays cheap for large sets."""

    def __init__(
        self, paths: Sequence[Path], labels: Sequence[int], transform: Transform | None = None
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} image paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[index]) as img:
            # Tiny-ImageNet contains some greyscale JPEGs; converting keeps every item [3, H, W].
            image = v2.functional.pil_to_tensor(img.convert("RGB"))
        image = _to_unit_float(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})


def list_images(directory: Path) -> list[Path]:
    """The image files directly in ``directory`` (none when it does not exist), sorted so that indices (and hence
    splits) do not depend on the filesystem's listing order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def split_digest(ds: Dataset) -> str:
    """16 hex characters of a sha256 over what a split reads: the stored images and labels of an in-memory split
    (before transforms, which ``DataBundle.describe`` states apart), or the class folder, name, size and label of
    every file of a file-backed one (reading a large image folder in full only to name it would cost an epoch)."""
    h = hashlib.sha256()
    if isinstance(ds, TensorImageDataset):
        for t in (ds.images, ds.labels):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().tobytes())
    elif isinstance(ds, ImageFileDataset):
        for path, label in zip(ds.paths, ds.labels.tolist()):
            h.update(f"{path.parent.name}/{path.name}\t{path.stat().st_size}\t{label}\n".encode())
    else:
        raise TypeError(f"no digest rule for a {type(ds).__name__}")
    return h.hexdigest()[:16]


def _to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float input is assumed to be in [0, 1] already."""
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255.0)
    return image.to(torch.float32)


@dataclass(frozen=True)
class DataBundle:
    """Everything a training run needs to know about its data."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W) after resizing
    name: str
    mean: tuple[float, ...] | None = None  # normalisation applied to every split, None if disabled
    std: tuple[float, ...] | None = None

    @cached_property
    def split_digests(self) -> dict[str, str]:
        """``split_digest`` of every split, once per bundle: a worker's runs share one loaded bundle
        (``cached_data``), so a large image folder is listed once, not once per run."""
        splits = {"train": self.train, "val": self.val, "test": self.test}
        return {k: split_digest(ds) for k, ds in splits.items() if ds is not None}

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-friendly summary for logs and run records, with a digest of every split it reads
        (``split_digest``) and one over all of them (``digest``): two runs with one digest read the same data."""
        digests = dict(self.split_digests)
        return {
            "name": self.name,
            "digest": hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:16],
            "split_digests": digests,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "train_size": len(self.train),  # type: ignore[arg-type]
            "val_size": 0 if self.val is None else len(self.val),  # type: ignore[arg-type]
            "test_size": len(self.test),  # type: ignore[arg-type]
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
        }


# --------------------------------------------------------------------------------------------------
# Deterministic splitting
# --------------------------------------------------------------------------------------------------


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(len(labels))`` in which every prefix is close to class-balanced.

    Each item gets the key ``(rank within its shuffled class + class offset) / class size``; sorting by
    it interleaves the classes in proportion to their sizes.  Taking a prefix therefore gives a stratified
    subset or hold-out even when it is smaller than the number of classes (where sklearn's
    ``train_test_split(stratify=...)`` refuses).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    tie_break = rng.random(len(labels))  # classes with equal keys: random rather than by class id
    return np.lexsort((tie_break, keys))


def _split_train(labels: np.ndarray, cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices into the train pool for (train, val): subset first, then hold out ``val_fraction``.

    Subsetting before the hold-out keeps validation proportional to the data actually used, which is what
    makes CPU-sized subsets cheap to evaluate.
    """
    order = _stratified_order(labels, cfg.split_seed)
    if cfg.train_subset is not None:
        order = order[: cfg.train_subset]
    n_val = val_count(len(order), cfg.val_fraction)
    if not n_val:
        return order, None
    return order[n_val:], order[:n_val]


def _select_test(labels: np.ndarray, cfg: DatasetConfig) -> np.ndarray:
    """Indices of the test split to keep: all of it in file order, or a stratified prefix."""
    if cfg.test_subset is None:
        return np.arange(len(labels))
    # A different stream from the train ordering, so the test subset is not correlated with it.
    return _stratified_order(labels, cfg.split_seed + 1)[: cfg.test_subset]


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


def resampling(cfg: DatasetConfig) -> v2.InterpolationMode:
    """``dataset.interpolation`` as torchvision's mode (resizes and crops)."""
    return v2.InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR


def _build_transforms(
    cfg: DatasetConfig, size: tuple[int, int], mean: Sequence[float] | None, std: Sequence[float] | None,
    sizing: tuple[list[Callable[..., Any]], list[Callable[..., Any]]] | None = None,
) -> tuple[Transform | None, Transform | None]:
    """(train, eval) pipelines operating on float [C, H, W] tensors in [0, 1].

    ``sizing``: the (train, eval) steps that bring every image to ``size``, for sets whose images differ in size
    (imagenet: a random resized crop / a resize and centre crop); by default a ``Resize`` when ``image_size`` is
    set, and ``augment.random_resized_crop_min`` adds a random resized crop after it."""
    aug = cfg.augment
    resample = resampling(cfg)
    common: list[Callable[..., Any]] = []
    if sizing is None and cfg.image_size is not None:
        common.append(v2.Resize(size, interpolation=resample, antialias=True))
    normalize = [v2.Normalize(list(mean), list(std))] if mean is not None and std is not None else []

    geometric: list[Callable[..., Any]] = []
    if sizing is None and aug.random_resized_crop_min > 0:
        geometric.append(v2.RandomResizedCrop(size, scale=(aug.random_resized_crop_min, 1.0), interpolation=resample,
                                              antialias=True))
    if aug.random_crop_padding > 0:
        geometric.append(v2.RandomCrop(size, padding=aug.random_crop_padding))
    if aug.horizontal_flip:
        geometric.append(v2.RandomHorizontalFlip())
    if aug.randaugment:
        # Photometric ops assume [0, 1] intensities, so RandAugment must run before Normalize.
        bins = 11 if aug.randaugment_scale == "timm" else 31  # magnitude / (bins - 1) of each op's range
        # bilinear keeps torchvision's nearest for RandAugment (what the suite always ran); bicubic resamples its
        # geometric ops bilinearly, the nearest torchvision offers: its affine ops refuse bicubic on tensors
        ra_resample = v2.InterpolationMode.NEAREST if cfg.interpolation == "bilinear" else v2.InterpolationMode.BILINEAR
        geometric.append(v2.RandAugment(num_ops=aug.randaugment_ops, magnitude=aug.randaugment_magnitude,
                                        num_magnitude_bins=bins, interpolation=ra_resample))
    # Erasing after Normalize (as in timm/Spikformer) so the erased value 0 is the dataset mean.
    erasing = [v2.RandomErasing(p=aug.random_erasing)] if aug.random_erasing > 0 else []

    train_sizing, eval_sizing = sizing if sizing is not None else (common, common)
    train_steps = train_sizing + geometric + normalize + erasing
    eval_steps = eval_sizing + normalize
    return (v2.Compose(train_steps) if train_steps else None, v2.Compose(eval_steps) if eval_steps else None)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std over all pixels of ``images`` ([N, C, H, W], uint8 or [0, 1] float)."""
    x = _to_unit_float(images).transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64)
    mean = x.mean(dim=1)
    # A constant channel would make Normalize divide by zero; leave its scale alone instead.
    std = x.std(dim=1, unbiased=False)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _bundle_from_tensors(
    cfg: DatasetConfig,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    stats: tuple[Sequence[float], Sequence[float]] | None,
    train_ids: torch.Tensor | None = None,
    test_ids: torch.Tensor | None = None,
) -> DataBundle:
    """Split/subset/normalise in-memory data and wrap it; ``stats=None`` means compute from train.

    ``train_ids``/``test_ids`` are the items' indices in the original data when the given tensors are
    already a selection of it (digits); by default an item's id is its position.
    """
    train_ids = torch.arange(len(train_images)) if train_ids is None else train_ids
    test_ids = torch.arange(len(test_images)) if test_ids is None else test_ids
    train_idx, val_idx = _split_train(train_labels.numpy(), cfg)
    test_idx = _select_test(test_labels.numpy(), cfg)

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    if cfg.normalize:
        if stats is None:
            mean, std = _channel_stats(train_images[torch.as_tensor(train_idx)])
        else:
            mean, std = tuple(stats[0]), tuple(stats[1])

    native = (int(train_images.shape[2]), int(train_images.shape[3]))
    size = native if cfg.image_size is None else (cfg.image_size, cfg.image_size)
    train_tf, eval_tf = _build_transforms(cfg, size, mean, std)

    def part(
        images: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, idx: np.ndarray, tf: Transform | None
    ) -> Dataset:
        index = torch.as_tensor(idx, dtype=torch.int64)
        return TensorImageDataset(images[index].contiguous(), labels[index], tf, ids[index])

    return DataBundle(
        train=part(train_images, train_labels, train_ids, train_idx, train_tf),
        val=None if val_idx is None else part(train_images, train_labels, train_ids, val_idx, eval_tf),
        test=part(test_images, test_labels, test_ids, test_idx, eval_tf),
        num_classes=num_classes,
        in_channels=int(train_images.shape[1]),
        image_size=size,
        name=cfg.name,
        mean=mean,
        std=std,
    )


def _bundle_from_files(
    cfg: DatasetConfig,
    train: tuple[list[Path], list[int]],
    test: tuple[list[Path], list[int]],
    num_classes: int,
    size: tuple[int, int],
    stats: tuple[Sequence[float], Sequence[float]],
    sizing: tuple[list[Callable[..., Any]], list[Callable[..., Any]]] | None = None,
) -> DataBundle:
    """Split/subset file-backed (path, label) lists and wrap them, decoded on access: the file-backed sets'
    ``_bundle_from_tensors``. ``stats``: the published normalisation (decoding every image to compute it would
    cost an epoch), used when ``cfg.normalize``; ``sizing`` as in ``_build_transforms``."""
    train_idx, val_idx = _split_train(np.asarray(train[1]), cfg)
    test_idx = _select_test(np.asarray(test[1]), cfg)
    mean, std = (tuple(stats[0]), tuple(stats[1])) if cfg.normalize else (None, None)
    train_tf, eval_tf = _build_transforms(cfg, size, mean, std, sizing)

    def part(split: tuple[list[Path], list[int]], idx: np.ndarray, tf: Transform | None) -> ImageFileDataset:
        return ImageFileDataset([split[0][i] for i in idx], [split[1][i] for i in idx], tf)

    return DataBundle(
        train=part(train, train_idx, train_tf),
        val=None if val_idx is None else part(train, val_idx, eval_tf),
        test=part(test, test_idx, eval_tf),
        num_classes=num_classes,
        in_channels=3,
        image_size=size,
        name=cfg.name,
        mean=mean,
        std=std,
    )
