"""The one dispatcher over dataset names: sources register here, :func:`load_data` and
:func:`check_available` look them up here.

Before this registry the names were dispatched twice (an if-chain for checking, a dict for loading), and the
two could drift apart; now a source states both behaviours in one :class:`DataSource` and one
:func:`register_source` call.  :class:`DataBundle` is named here only for type checking, so at run time the
registry depends on neither ``base`` nor any source: sources import it, never the other way round, which
keeps the package free of import cycles.

Checking is torch-free and loading is lazy: :func:`check_available` runs the path checks defined in this module
(:data:`_AVAILABILITY`), which import neither torch nor any source, so ``spikesuite plan`` and every preflight
answer in about a second; the source modules (which import torch) are imported on the first lookup by name
(:func:`get_source`, :func:`load_data`, :func:`names`).  Each torch-free check states the same paths and
messages as its source's own ``check`` (tests/test_cli.py holds them equal).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from suite.config import DatasetConfig
from suite.config.data import (
    IMAGENET_DEFAULT_ROOT,
    IMAGENET_HINT,
    TINYIMAGENET_DEFAULT_ROOT,
    TINYIMAGENET_HINT,
    DatasetName,
)

if TYPE_CHECKING:
    from suite.data.base import DataBundle


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


@dataclass(frozen=True)
class DataSource:
    """One dataset source: the names it serves and how to check for and load them.

    ``check(cfg)`` must only test that files/directories exist (nothing read or decoded) and raise
    :class:`DatasetNotFoundError` listing every path tried, so a whole study can be validated up front;
    a downloadable source passes when ``cfg.download`` is true, since loading will fetch it.
    ``load(cfg)`` returns the split, transformed :class:`DataBundle`.  One source may serve several
    names (CIFAR-10 and CIFAR-100 share a reader), and receives ``cfg.name`` to tell them apart.
    """

    names: tuple[str, ...]
    check: Callable[[DatasetConfig], None]
    load: Callable[[DatasetConfig], DataBundle]


_SOURCES: dict[str, DataSource] = {}

# Every source module of this package; importing one registers it.  Imported on the first lookup by name, not
# with the package, because they import torch (seconds) and checking paths needs none of it.
SOURCE_MODULES = ("cifar", "digits", "fashion_mnist", "imagenet", "synthetic", "tinyimagenet")
_imported = False


def _import_sources() -> None:
    """Import (register) every source module once, and check the names against the config's ``DatasetName``.

    The config's Literal rejects unknown names before any loader runs, so a source registered without a matching
    ``DatasetName`` entry (or the reverse) would be unreachable or fail only at load time.
    """
    global _imported
    if _imported:
        return
    for module in SOURCE_MODULES:
        importlib.import_module(f"suite.data.{module}")
    _imported = True
    # Only this package's sources count: a test or plugin may register more names beside them.
    ours = {n for n, src in _SOURCES.items() if getattr(src.load, "__module__", "").startswith("suite.data.")}
    if ours != set(get_args(DatasetName)):
        raise RuntimeError(
            f"registered datasets {sorted(_SOURCES)} differ from DatasetName {sorted(get_args(DatasetName))} "
            "in suite/config/data.py; add the name to both"
        )


def register_source(source: DataSource) -> DataSource:
    """Make ``source`` reachable under each of its names; a name may be claimed only once.

    Refusing duplicates (rather than letting the last import win) keeps which loader runs independent of
    import order.
    """
    if not source.names:
        raise ValueError("a data source must serve at least one dataset name")
    taken = [n for n in source.names if n in _SOURCES and _SOURCES[n] is not source]
    if taken:
        raise ValueError(f"dataset name(s) already registered: {', '.join(taken)}")
    for name in source.names:
        _SOURCES[name] = source
    return source


def names() -> tuple[str, ...]:
    """Every registered dataset name, sorted."""
    _import_sources()
    return tuple(sorted(_SOURCES))


def get_source(name: str) -> DataSource:
    """The source serving ``name``; an unknown name is a ValueError that lists the known ones."""
    if name not in _SOURCES:
        _import_sources()
    try:
        return _SOURCES[name]
    except KeyError:
        # Reachable only by bypassing config validation (the DatasetName Literal), e.g. model_construct.
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}") from None


def check_available(cfg: DatasetConfig) -> None:
    """Raise :class:`DatasetNotFoundError` if ``load_data(cfg)`` could not find its data.

    Only checks that files/directories exist (nothing is read or decoded, torch is not imported), so a whole
    study can be validated up front.  A missing downloadable set passes when ``download`` is true, since loading
    will fetch it.  A source registered from outside this package (no torch-free check here) is checked by its
    own ``check``.
    """
    check = _AVAILABILITY.get(cfg.name)
    if check is None:
        get_source(cfg.name).check(cfg)
    else:
        check(cfg)


def missing_datasets(configs: Iterable[DatasetConfig]) -> list[str]:
    """One message per distinct dataset config whose data is missing (each says where it looked and how to get
    it); empty when everything is there."""
    seen: set[str] = set()
    problems: list[str] = []
    for cfg in configs:
        key = cfg.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            check_available(cfg)
        except FileNotFoundError as exc:
            problems.append(str(exc))
    return problems


def load_data(cfg: DatasetConfig) -> DataBundle:
    """Load ``cfg.name`` and return its train/val/test splits with transforms attached.

    Images are float32 ``[C, H, W]``; val is None when ``val_fraction`` is 0.  The same config always
    produces the same split indices.
    """
    return get_source(cfg.name).load(cfg)


_LOADED: dict[str, DataBundle] = {}


def cached_data(cfg: DatasetConfig) -> DataBundle:
    """``load_data(cfg)``, loaded once per process and dataset config: a worker runs many runs (and a search many
    evaluations) on one dataset, and every split is a pure function of the config."""
    key = cfg.model_dump_json()
    if key not in _LOADED:
        _LOADED[key] = load_data(cfg)
    return _LOADED[key]


# --------------------------------------------------------------------------------------------------
# Torch-free availability: the same paths, order and messages as each source module's own ``check``
# --------------------------------------------------------------------------------------------------
# The source modules import torch at the top, so their checks cannot run without it; these copies can.  The
# constants below mirror the sources' (FASHION_MNIST_DEFAULT_ROOT, CIFAR_DEFAULT_ROOT, the hints); a test
# compares both checks on every layout, so a drift fails there rather than in a user's preflight.

_FASHION_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_FASHION_DOWNLOAD_ROOT = Path("data")
_FASHION_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")
_FASHION_HINT = (
    "Install the Debian package (apt-get install -y dataset-fashion-mnist, files land in "
    f"{_FASHION_DEFAULT_ROOT}), or set dataset.download: true, or put train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist into dataset.root."
)

_CIFAR_DEFAULT_ROOT = Path("data")
# name -> (extracted directory, the batch files it must hold, hint)
_CIFAR_LAYOUTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
                "Set dataset.download: true, or download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                "(the CIFAR-10 'python version') and extract it so that <root>/cifar-10-batches-py/data_batch_1 "
                "exists."),
    "cifar100": ("cifar-100-python", ("train", "test"),
                 "Set dataset.download: true, or download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
                 "(the CIFAR-100 'python version') and extract it so that <root>/cifar-100-python/train exists."),
}


def _digits_available(cfg: DatasetConfig) -> None:
    """scikit-learn is installed and ships its digits file; located with find_spec, since importing sklearn
    (scipy with it) costs about a second and checking needs only the path."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError) as exc:
        spec, why = None, str(exc)
    else:
        why = "No module named 'sklearn'"
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            f"digits needs scikit-learn, which could not be imported ({why}). Install it: pip install scikit-learn"
        )
    data_file = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not data_file.is_file():
        raise DatasetNotFoundError(
            f"digits not found. Looked in:\n  - {data_file}: missing\n"
            "It ships with scikit-learn; reinstall it: pip install --force-reinstall scikit-learn",
            tried=[str(data_file)],
        )


def _synthetic_available(cfg: DatasetConfig) -> None:
    """Generated data is always available."""


def _fashion_missing(directory: Path) -> str:
    """Why ``directory`` does not hold the four IDX files (gzipped or not); empty when it does."""
    if not directory.is_dir():
        return "directory does not exist"
    missing = [f"{stem}[.gz]" for stem in _FASHION_STEMS
               if not any((directory / name).is_file() for name in (f"{stem}.gz", stem))]
    return "missing " + ", ".join(missing) if missing else ""


def _fashion_mnist_available(cfg: DatasetConfig) -> None:
    roots = [Path(cfg.root).expanduser()] if cfg.root else [_FASHION_DEFAULT_ROOT, _FASHION_DOWNLOAD_ROOT]
    tried: list[tuple[Path, str]] = []
    for directory in (d for root in roots for d in (root, root / "FashionMNIST" / "raw")):
        why = _fashion_missing(directory)
        if not why:
            return
        tried.append((directory, why))
    if not cfg.download:
        raise _not_found("fashion_mnist", tried, _FASHION_HINT)


def _cifar_available(cfg: DatasetConfig) -> None:
    subdir, files, hint = _CIFAR_LAYOUTS[cfg.name]
    root = Path(cfg.root).expanduser() if cfg.root else _CIFAR_DEFAULT_ROOT
    tried: list[tuple[Path, str]] = []
    # The extracted archive directory under root, or root pointing straight at it.
    for directory in (root / subdir, root):
        if not directory.is_dir():
            tried.append((directory, "directory does not exist"))
            continue
        missing = [n for n in files if not (directory / n).is_file()]
        if not missing:
            return
        tried.append((directory, "missing " + ", ".join(missing)))
    if not cfg.download:
        raise _not_found(cfg.name, tried, hint)


def _tinyimagenet_available(cfg: DatasetConfig) -> None:
    if cfg.root:
        root = Path(cfg.root).expanduser()
        candidates = [root, root / "tiny-imagenet-200"]  # the extracted directory, or the one it was put in
    else:
        candidates = [TINYIMAGENET_DEFAULT_ROOT]
    tried: list[tuple[Path, str]] = []
    for directory in candidates:
        if not directory.is_dir():
            tried.append((directory, "directory does not exist"))
            continue
        needed = ("wnids.txt", "train", "val/images", "val/val_annotations.txt")
        missing = [n for n in needed if not (directory / n).exists()]
        if not missing:
            return
        tried.append((directory, "missing " + ", ".join(missing)))
    raise _not_found("tinyimagenet", tried, TINYIMAGENET_HINT)


def _imagefolder_missing(directory: Path) -> str:
    """Why ``directory`` is not an ImageFolder tree ``train/<class>/`` + ``val/<class>/``; empty when it is. Lists
    the two split folders only (never the images), so it stays a path check."""
    if not directory.is_dir():
        return "directory does not exist"
    missing = [n for n in ("train", "val") if not (directory / n).is_dir()]
    if missing:
        return "missing " + ", ".join(f"{n}/" for n in missing)
    empty = [n for n in ("train", "val") if not any(p.is_dir() for p in (directory / n).iterdir())]
    if empty:
        # the ILSVRC2012 val archive extracts flat (val/*.JPEG); it must be sorted into class folders first
        return " and ".join(f"{n}/" for n in empty) + " has no class folders <wnid>/ (ImageFolder layout expected)"
    return ""


def imagenet_directory(cfg: DatasetConfig) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The ImageFolder root of ``dataset: {name: imagenet}`` (``root``, default ``data/imagenet``) or None, and
    every location tried with why it does not qualify. Shared by the torch-free check and the source."""
    directory = Path(cfg.root).expanduser() if cfg.root else IMAGENET_DEFAULT_ROOT
    why = _imagefolder_missing(directory)
    return (directory, []) if not why else (None, [(directory, why)])


def imagenet_available(cfg: DatasetConfig) -> None:
    """Raise unless ``dataset.root`` holds the ImageFolder layout (it cannot be downloaded)."""
    directory, tried = imagenet_directory(cfg)
    if directory is None:
        raise _not_found("imagenet", tried, IMAGENET_HINT)


_AVAILABILITY: dict[str, Callable[[DatasetConfig], None]] = {
    "imagenet": imagenet_available,
    "cifar10": _cifar_available,
    "cifar100": _cifar_available,
    "digits": _digits_available,
    "fashion_mnist": _fashion_mnist_available,
    "synthetic": _synthetic_available,
    "tinyimagenet": _tinyimagenet_available,
}
