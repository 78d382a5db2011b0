"""cifar10 / cifar100: the 32x32 colour sets, read from the official "python version" pickles.

Both sets share one reader and differ only in a :class:`_CifarLayout` (file names, label key, class
count), so one source serves both names.  Pickles can run code on load, so batches are read with a
restricted unpickler that rebuilds numpy arrays and plain containers only; torchvision is used solely to
download and extract the archive, never to read it.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from suite.config import DatasetConfig
from suite.data.base import DataBundle, _bundle_from_tensors
from suite.data.registry import DatasetNotFoundError, DataSource, _not_found, register_source

CIFAR_DEFAULT_ROOT = Path("data")

# Published per-channel statistics.
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"
_CIFAR100_DIR = "cifar-100-python"

_CIFAR10_HINT = (
    "Set dataset.download: true, or download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
    f"(the CIFAR-10 'python version') and extract it so that <root>/{_CIFAR10_DIR}/data_batch_1 exists."
)
_CIFAR100_HINT = (
    "Set dataset.download: true, or download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
    f"(the CIFAR-100 'python version') and extract it so that <root>/{_CIFAR100_DIR}/train exists."
)


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


def _check_cifar(cfg: DatasetConfig) -> None:
    """Raise if the extracted batches are nowhere to be found, unless loading would download them."""
    layout = _CIFAR_LAYOUTS[cfg.name]
    directory, tried = _locate_cifar(cfg, layout)
    if directory is None and not cfg.download:
        raise _not_found(cfg.name, tried, layout.hint)


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


register_source(DataSource(names=tuple(_CIFAR_LAYOUTS), check=_check_cifar, load=_load_cifar))
