"""fashion_mnist: Zalando's 28x28 greyscale clothing images, read from the original IDX files.

The files are parsed here (not through torchvision) so the system copy from the Debian
``dataset-fashion-mnist`` package, plain or gzipped files and torchvision's download layout all work,
and so that a truncated or corrupt file is reported with its path instead of as a reshape error.
torchvision is used only to download.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from suite.config import DatasetConfig
from suite.data.base import DataBundle, _bundle_from_tensors
from suite.data.registry import DatasetNotFoundError, DataSource, _not_found, register_source

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Where `download: true` puts Fashion-MNIST when no root is given: the system default root is normally
# not writable, so downloads go under the project's (git-ignored) data/ directory.
FASHION_MNIST_DOWNLOAD_ROOT = Path("data")

# Published per-channel statistics.
_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

_FASHION_HINT = (
    "Install the Debian package (apt-get install -y dataset-fashion-mnist, files land in "
    f"{FASHION_MNIST_DEFAULT_ROOT}), or set dataset.download: true, or put train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist into dataset.root."
)


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


def _check_fashion_mnist(cfg: DatasetConfig) -> None:
    """Raise if the four IDX files are nowhere to be found, unless loading would download them."""
    files, tried = _locate_fashion(cfg)
    if files is None and not cfg.download:
        raise _not_found("fashion_mnist", tried, _FASHION_HINT)


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


register_source(DataSource(names=("fashion_mnist",), check=_check_fashion_mnist, load=_load_fashion_mnist))
