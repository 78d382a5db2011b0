"""Dataset loading for the benchmark suite: one typed entry point, :func:`load_data`.

Every loader returns float32 images in ``[0, 1]`` (before normalisation) with shape ``[C, H, W]`` and
integer labels.  Small datasets (digits, synthetic, Fashion-MNIST, CIFAR) are held in memory as one
tensor; Tiny-ImageNet is file-backed so that building the dataset never decodes 100k JPEGs.

Splits and subsets are derived from a single deterministic, class-stratified ordering of the training
pool (see :func:`_stratified_order`), so the same config always yields the same indices.

Where data is looked for, by default:

* ``digits``: bundled with scikit-learn (offline).
* ``fashion_mnist``: ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``), then ``data/``.
* ``cifar10`` / ``cifar100``: ``data/`` (``cifar-10-batches-py`` / ``cifar-100-python`` inside it).
* ``tinyimagenet``: ``data/tiny-imagenet-200``.
* ``synthetic``: generated in memory.
"""

import gzip
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

__all__ = [
    "AugmentConfig",
    "DataBundle",
    "DatasetConfig",
    "DatasetNotFoundError",
    "SyntheticConfig",
    "check_available",
    "load_data",
    "make_loader",
]

DatasetName = Literal["digits", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "synthetic"]

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CIFAR_DEFAULT_ROOT = Path("data")
TINYIMAGENET_DEFAULT_ROOT = Path("data/tiny-imagenet-200")
# Where `download: true` puts Fashion-MNIST when no root is given: the system default root is normally
# not writable, so downloads go under the project's (git-ignored) data/ directory.
FASHION_MNIST_DOWNLOAD_ROOT = Path("data")

# Published per-channel statistics.  Digits and synthetic data have no published values, so theirs are
# computed from the training split at load time.
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
# Computing Tiny-ImageNet statistics would mean decoding all 100k training images, so the commonly
# published values are used instead.
_TINYIMAGENET_STATS = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))

_DIGITS_TEST_FRACTION = 0.2

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"
_CIFAR100_DIR = "cifar-100-python"

_IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})

_FASHION_HINT = (
    "Install the Debian package (apt-get install -y dataset-fashion-mnist, files land in "
    f"{FASHION_MNIST_DEFAULT_ROOT}), or set dataset.download: true, or put train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist into dataset.root."
)
_CIFAR10_HINT = (
    "Set dataset.download: true, or download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
    f"(the CIFAR-10 'python version') and extract it so that <root>/{_CIFAR10_DIR}/data_batch_1 exists."
)
_CIFAR100_HINT = (
    "Set dataset.download: true, or download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
    f"(the CIFAR-100 'python version') and extract it so that <root>/{_CIFAR100_DIR}/train exists."
)
_TINYIMAGENET_HINT = (
    "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that "
    "<root>/wnids.txt, <root>/train/ and <root>/val/val_annotations.txt exist "
    f"(default root {TINYIMAGENET_DEFAULT_ROOT}); torchvision cannot download it."
)


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class AugmentConfig(BaseModel):
    """Training-time augmentation; never applied to validation or test data."""

    model_config = ConfigDict(extra="forbid")

    random_crop_padding: int = Field(default=0, ge=0)  # RandomCrop(size, padding=p) when > 0
    horizontal_flip: bool = False
    randaugment: bool = False  # RandAugment(num_ops=1, magnitude=9): Spikformer's rand-m9-n1
    random_erasing: float = Field(default=0.0, ge=0.0, le=1.0)  # probability of v2.RandomErasing


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
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _download_only_where_possible(self) -> "DatasetConfig":
        # Tiny-ImageNet is the one set where `download: true` would silently do nothing useful; failing at
        # validation time is clearer than failing later with "not found". Digits and synthetic data need
        # no download, so the flag is harmless there.
        if self.download and self.name == "tinyimagenet":
            raise ValueError("dataset.download is not supported for tinyimagenet. " + _TINYIMAGENET_HINT)
        return self


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the config says; the message lists every path tried."""

    def __init__(self, message: str, *, tried: Sequence[Path | str] = ()) -> None:
        super().__init__(message)
        self.tried: tuple[str, ...] = tuple(str(p) for p in tried)


def _not_found(dataset: str, tried: Sequence[tuple[Path, str]], hint: str) -> DatasetNotFoundError:
    """Build the error with one line per location tried and why it did not qualify."""
    lines = [f"{dataset} not found. Looked in:"]
    lines += [f"  - {path.resolve() if not path.is_absolute() else path}: {why}" for path, why in tried]
    lines.append(hint)
    return DatasetNotFoundError("\n".join(lines), tried=[p for p, _ in tried])


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

    def describe(self) -> dict[str, Any]:
        """Plain, JSON-friendly summary for logs and run records."""
        return {
            "name": self.name,
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
    if cfg.val_fraction <= 0.0 or len(order) < 2:
        return order, None
    n_val = min(max(1, round(cfg.val_fraction * len(order))), len(order) - 1)
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


def _build_transforms(
    cfg: DatasetConfig, size: tuple[int, int], mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[Transform | None, Transform | None]:
    """(train, eval) pipelines operating on float [C, H, W] tensors in [0, 1]."""
    common: list[Callable[..., Any]] = []
    if cfg.image_size is not None:
        common.append(v2.Resize(size, antialias=True))
    normalize = [v2.Normalize(list(mean), list(std))] if mean is not None and std is not None else []

    aug = cfg.augment
    geometric: list[Callable[..., Any]] = []
    if aug.random_crop_padding > 0:
        geometric.append(v2.RandomCrop(size, padding=aug.random_crop_padding))
    if aug.horizontal_flip:
        geometric.append(v2.RandomHorizontalFlip())
    if aug.randaugment:
        # Photometric ops assume [0, 1] intensities, so RandAugment must run before Normalize.
        geometric.append(v2.RandAugment(num_ops=1, magnitude=9))
    # Erasing after Normalize (as in timm/Spikformer) so the erased value 0 is the dataset mean.
    erasing = [v2.RandomErasing(p=aug.random_erasing)] if aug.random_erasing > 0 else []

    train_steps = common + geometric + normalize + erasing
    eval_steps = common + normalize
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


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn) and synthetic
# --------------------------------------------------------------------------------------------------


def _check_digits() -> None:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"digits needs scikit-learn, which could not be imported ({exc}). Install it: pip install scikit-learn"
        ) from exc
    from importlib.resources import files

    data_file = files("sklearn.datasets.data").joinpath("digits.csv.gz")
    if not data_file.is_file():
        raise DatasetNotFoundError(
            f"digits not found. Looked in:\n  - {data_file}: missing\n"
            "It ships with scikit-learn; reinstall it: pip install --force-reinstall scikit-learn",
            tried=[str(data_file)],
        )


def _load_digits(cfg: DatasetConfig) -> DataBundle:
    """sklearn's 1797 8x8 digits, split 80/20 into train/test (stratified, seeded) as there is no test split."""
    _check_digits()
    from sklearn.datasets import load_digits

    raw = load_digits()
    # Pixel values are counts 0..16 from 4x4 blocks of the original scans.
    images = torch.as_tensor(raw.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)

    order = _stratified_order(labels.numpy(), cfg.split_seed)
    n_test = round(_DIGITS_TEST_FRACTION * len(order))
    test_idx = torch.as_tensor(np.sort(order[:n_test]))
    pool_idx = torch.as_tensor(np.sort(order[n_test:]))
    # Ids are positions in load_digits() order, shared by train/val/test since they come from one pool.
    return _bundle_from_tensors(
        cfg,
        images[pool_idx],
        labels[pool_idx],
        images[test_idx],
        labels[test_idx],
        10,
        stats=None,
        train_ids=pool_idx,
        test_ids=test_idx,
    )


def _load_synthetic(cfg: DatasetConfig) -> DataBundle:
    """Class prototypes plus gaussian noise: trivially learnable, deterministic in ``split_seed``."""
    sc = cfg.synthetic
    gen = torch.Generator().manual_seed(cfg.split_seed)
    shape = (sc.channels, sc.image_size, sc.image_size)
    prototypes = torch.rand((sc.num_classes, *shape), generator=gen)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Balanced labels in a seeded order, so every class is present even for small n.
        labels = (torch.arange(n) % sc.num_classes)[torch.randperm(n, generator=gen)]
        noise = torch.randn((n, *shape), generator=gen) * sc.noise
        return (prototypes[labels] + noise).clamp_(0.0, 1.0), labels

    train_images, train_labels = sample(sc.train_size)
    test_images, test_labels = sample(sc.test_size)
    return _bundle_from_tensors(
        cfg, train_images, train_labels, test_images, test_labels, sc.num_classes, stats=None
    )


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): big-endian magic, big-endian dims, then uint8 data."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises EOFError on a truncated stream and BadGzipFile (an OSError) on garbage.
        raise ValueError(f"{path}: cannot read IDX file, it is truncated or corrupt ({exc})") from exc

    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "image" if magic == _IDX_IMAGES_MAGIC else "label"
        raise ValueError(f"{path}: bad IDX magic number {found}, expected {magic} for an {kind} file")
    ndim = magic & 0xFF  # low byte of the magic is the number of dimensions, third byte the type (uint8)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX size mismatch, header says {dims} ({expected} bytes of data) "
            f"but the file has {len(raw) - header}; it is truncated or corrupt"
        )
    # Copy so the array is writable (torch warns about read-only buffers).
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _fashion_candidates(cfg: DatasetConfig) -> list[Path]:
    roots = (
        [Path(cfg.root).expanduser()]
        if cfg.root
        else [FASHION_MNIST_DEFAULT_ROOT, FASHION_MNIST_DOWNLOAD_ROOT]
    )
    dirs: list[Path] = []
    for root in roots:
        dirs += [root, root / "FashionMNIST" / "raw"]  # plain layout, then torchvision's
    return dirs


def _fashion_files(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The four IDX files in ``directory`` (gzipped or not), or None and what is missing."""
    if not directory.is_dir():
        return None, "directory does not exist"
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in _FASHION_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(f"{stem}[.gz]")
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, ""


def _locate_fashion(cfg: DatasetConfig) -> tuple[dict[str, Path] | None, list[tuple[Path, str]]]:
    tried: list[tuple[Path, str]] = []
    for directory in _fashion_candidates(cfg):
        files, why = _fashion_files(directory)
        if files is not None:
            return files, tried
        tried.append((directory, why))
    return None, tried


def _download_fashion(cfg: DatasetConfig) -> None:
    import torchvision

    root = Path(cfg.root).expanduser() if cfg.root else FASHION_MNIST_DOWNLOAD_ROOT
    try:
        # torchvision fetches all four files into <root>/FashionMNIST/raw whichever split is requested.
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
    except Exception as exc:  # network/permission errors: report them together with the manual route
        raise DatasetNotFoundError(
            f"fashion_mnist download into {root} failed ({exc}). {_FASHION_HINT}", tried=[root]
        ) from exc


def _load_fashion_mnist(cfg: DatasetConfig) -> DataBundle:
    files, tried = _locate_fashion(cfg)
    if files is None and cfg.download:
        _download_fashion(cfg)
        files, tried = _locate_fashion(cfg)
    if files is None:
        raise _not_found("fashion_mnist", tried, _FASHION_HINT)

    arrays = {
        key: _read_idx(path, _IDX_IMAGES_MAGIC if key.endswith("images") else _IDX_LABELS_MAGIC)
        for key, path in files.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"{files[f'{split}_images']}: expected [N, H, W] images and [N] labels")
        if len(images) != len(labels):
            raise ValueError(
                f"{files[f'{split}_images']} has {len(images)} images but "
                f"{files[f'{split}_labels']} has {len(labels)} labels"
            )
        if labels.size and int(labels.max()) >= 10:
            raise ValueError(f"{files[f'{split}_labels']}: label {int(labels.max())} outside 0..9")

    def images_of(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key]).unsqueeze(1)  # uint8 [N, 1, H, W]

    def labels_of(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    return _bundle_from_tensors(
        cfg,
        images_of("train_images"),
        labels_of("train_labels"),
        images_of("test_images"),
        labels_of("test_labels"),
        10,
        stats=_FASHION_MNIST_STATS,
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles, read with a restricted unpickler)
# --------------------------------------------------------------------------------------------------

# The only globals a CIFAR batch needs: numpy's array/dtype reconstruction, plus what Python 3 writes
# for bytes under protocol <= 2.  Both numpy module spellings are accepted: numpy 1.x (and the original
# Python 2 files) wrote numpy.core.*, numpy 2.x writes numpy._core.*.
_ALLOWED_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        # Protocol <= 2 pickles name the builtins module "__builtin__" (Python 2 spelling).
        *(
            (module, name)
            for module in ("builtins", "__builtin__")
            for name in ("bytes", "bytearray", "dict", "list")
        ),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dicts and lists and nothing else.

    Pickles can call arbitrary callables on load; a downloaded or shared dataset file must not be able to
    run code, so every global outside the allow-list is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a dataset pickle")
        if module.startswith("numpy.core") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core" + module[len("numpy.core") :]  # avoid the deprecated alias
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as f:
            # encoding="bytes": the official files were written by Python 2, whose str must stay bytes.
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{path}: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR batch, it is truncated or corrupt ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR batch, got {type(obj).__name__}")
    return obj


def _cifar_field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    # Python 2 files have bytes keys; files re-written by Python 3 may use str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise ValueError(f"{path}: CIFAR batch has no {key!r} entry (keys: {sorted(map(str, batch))})")


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as uint8 [N, 3, 32, 32] images and int64 labels."""
    batch = _load_cifar_pickle(path)
    data = np.asarray(_cifar_field(batch, "data", path))
    labels = np.asarray(_cifar_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected uint8 data of shape [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major 32x32.
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


@dataclass(frozen=True)
class _CifarLayout:
    num_classes: int
    subdir: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    hint: str
    stats: tuple[tuple[float, ...], tuple[float, ...]]


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        10, _CIFAR10_DIR, _CIFAR10_TRAIN, _CIFAR10_TEST, "labels", _CIFAR10_HINT, _CIFAR10_STATS
    ),
    "cifar100": _CifarLayout(
        100, _CIFAR100_DIR, ("train",), "test", "fine_labels", _CIFAR100_HINT, _CIFAR100_STATS
    ),
}


def _cifar_root(cfg: DatasetConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else CIFAR_DEFAULT_ROOT


def _locate_cifar(cfg: DatasetConfig, layout: _CifarLayout) -> tuple[Path | None, list[tuple[Path, str]]]:
    root = _cifar_root(cfg)
    tried: list[tuple[Path, str]] = []
    # The extracted archive directory under root, or root pointing straight at it.
    for directory in (root / layout.subdir, root):
        if not directory.is_dir():
            tried.append((directory, "directory does not exist"))
            continue
        missing = [n for n in (*layout.train_files, layout.test_file) if not (directory / n).is_file()]
        if not missing:
            return directory, tried
        tried.append((directory, "missing " + ", ".join(missing)))
    return None, tried


def _load_cifar(cfg: DatasetConfig) -> DataBundle:
    layout = _CIFAR_LAYOUTS[cfg.name]
    directory, tried = _locate_cifar(cfg, layout)
    if directory is None and cfg.download:
        import torchvision

        root = _cifar_root(cfg)
        cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            # Only for fetching and extracting the archive; reading goes through the restricted unpickler.
            cls(str(root), train=True, download=True)
        except Exception as exc:  # network/permission errors: report them with the manual route
            raise DatasetNotFoundError(
                f"{cfg.name} download into {root} failed ({exc}). {layout.hint}", tried=[root]
            ) from exc
        directory, tried = _locate_cifar(cfg, layout)
    if directory is None:
        raise _not_found(cfg.name, tried, layout.hint)

    parts = [
        _read_cifar_batch(directory / n, layout.label_key, layout.num_classes) for n in layout.train_files
    ]
    train_images = torch.cat([p[0] for p in parts])
    train_labels = torch.cat([p[1] for p in parts])
    test_images, test_labels = _read_cifar_batch(
        directory / layout.test_file, layout.label_key, layout.num_classes
    )
    return _bundle_from_tensors(
        cfg, train_images, train_labels, test_images, test_labels, layout.num_classes, stats=layout.stats
    )


# --------------------------------------------------------------------------------------------------
# Tiny-ImageNet (file-backed)
# --------------------------------------------------------------------------------------------------


def _tinyimagenet_candidates(cfg: DatasetConfig) -> list[Path]:
    if not cfg.root:
        return [TINYIMAGENET_DEFAULT_ROOT]
    root = Path(cfg.root).expanduser()
    # Accept the extracted directory itself or the directory it was extracted into.
    return [root, root / "tiny-imagenet-200"]


def _tinyimagenet_missing(directory: Path) -> str:
    if not directory.is_dir():
        return "directory does not exist"
    needed = [
        directory / "wnids.txt",
        directory / "train",
        directory / "val" / "images",
        directory / "val" / "val_annotations.txt",
    ]
    missing = [str(p.relative_to(directory)) for p in needed if not p.exists()]
    return "missing " + ", ".join(missing) if missing else ""


def _locate_tinyimagenet(cfg: DatasetConfig) -> tuple[Path | None, list[tuple[Path, str]]]:
    tried: list[tuple[Path, str]] = []
    for directory in _tinyimagenet_candidates(cfg):
        why = _tinyimagenet_missing(directory)
        if not why:
            return directory, tried
        tried.append((directory, why))
    return None, tried


def _list_images(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    # Sorted so that indices (and hence splits) do not depend on filesystem listing order.
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def _load_tinyimagenet(cfg: DatasetConfig) -> DataBundle:
    directory, tried = _locate_tinyimagenet(cfg)
    if directory is None:
        raise _not_found("tinyimagenet", tried, _TINYIMAGENET_HINT)

    wnids = [w.strip() for w in (directory / "wnids.txt").read_text().splitlines() if w.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise ValueError(f"{directory / 'wnids.txt'}: expected a non-empty list of distinct wnids")
    class_of = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        files = _list_images(directory / "train" / wnid / "images")
        train_paths += files
        train_labels += [class_of[wnid]] * len(files)
    if not train_paths:
        raise ValueError(f"{directory / 'train'}: no training images found under <wnid>/images/")

    # The official test split has no labels, so the labelled val split serves as test.
    annotations = directory / "val" / "val_annotations.txt"
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_of:
            raise ValueError(
                f"{annotations}:{lineno}: expected 'filename<TAB>wnid...' with a wnid from wnids.txt"
            )
        test_paths.append(directory / "val" / "images" / fields[0])
        test_labels.append(class_of[fields[1]])

    train_idx, val_idx = _split_train(np.asarray(train_labels), cfg)
    test_idx = _select_test(np.asarray(test_labels), cfg)

    mean, std = _TINYIMAGENET_STATS if cfg.normalize else (None, None)
    size = (64, 64) if cfg.image_size is None else (cfg.image_size, cfg.image_size)
    train_tf, eval_tf = _build_transforms(cfg, size, mean, std)

    def part(paths: list[Path], labels: list[int], idx: np.ndarray, tf: Transform | None) -> ImageFileDataset:
        return ImageFileDataset([paths[i] for i in idx], [labels[i] for i in idx], tf)

    return DataBundle(
        train=part(train_paths, train_labels, train_idx, train_tf),
        val=None if val_idx is None else part(train_paths, train_labels, val_idx, eval_tf),
        test=part(test_paths, test_labels, test_idx, eval_tf),
        num_classes=len(wnids),
        in_channels=3,
        image_size=size,
        name=cfg.name,
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def check_available(cfg: DatasetConfig) -> None:
    """Raise :class:`DatasetNotFoundError` if ``load_data(cfg)`` could not find its data.

    Only checks that files/directories exist (nothing is read or decoded), so a whole study can be
    validated up front.  A missing downloadable set passes when ``download`` is true, since loading will
    fetch it.
    """
    if cfg.name == "synthetic":
        return
    if cfg.name == "digits":
        _check_digits()
        return
    if cfg.name == "fashion_mnist":
        files, tried = _locate_fashion(cfg)
        if files is None and not cfg.download:
            raise _not_found("fashion_mnist", tried, _FASHION_HINT)
        return
    if cfg.name in _CIFAR_LAYOUTS:
        layout = _CIFAR_LAYOUTS[cfg.name]
        directory, tried = _locate_cifar(cfg, layout)
        if directory is None and not cfg.download:
            raise _not_found(cfg.name, tried, layout.hint)
        return
    if cfg.name == "tinyimagenet":
        directory, tried = _locate_tinyimagenet(cfg)
        if directory is None:
            raise _not_found("tinyimagenet", tried, _TINYIMAGENET_HINT)
        return
    raise ValueError(f"unknown dataset {cfg.name!r}")  # unreachable while the Literal is exhaustive


_LOADERS: dict[str, Callable[[DatasetConfig], DataBundle]] = {
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "fashion_mnist": _load_fashion_mnist,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "tinyimagenet": _load_tinyimagenet,
}


def load_data(cfg: DatasetConfig) -> DataBundle:
    """Load ``cfg.name`` and return its train/val/test splits with transforms attached.

    Images are float32 ``[C, H, W]``; val is None when ``val_fraction`` is 0.  The same config always
    produces the same split indices.
    """
    return _LOADERS[cfg.name](cfg)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random seeds from it too so
    # any transform using them is reproducible as well.
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    ds: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader whose shuffling (and worker seeding) depends only on ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # Re-spawning workers every epoch is slow; keep them when there are any.
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )
