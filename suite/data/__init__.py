"""Dataset loading for the benchmark suite: one typed entry point, :func:`load_data`.

Every loader returns float32 images in ``[0, 1]`` (before normalisation) with shape ``[C, H, W]`` and
integer labels.  Small datasets (digits, synthetic, Fashion-MNIST, CIFAR) are held in memory as one
tensor; Tiny-ImageNet and ImageNet are file-backed so that building the dataset never decodes 100k JPEGs.

Splits and subsets are derived from a single deterministic, class-stratified ordering of the training
pool (see :func:`suite.data.base._stratified_order`), so the same config always yields the same indices.

Where data is looked for, by default:

* ``digits``: bundled with scikit-learn (offline).
* ``fashion_mnist``: ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``), then ``data/``.
* ``cifar10`` / ``cifar100``: ``data/`` (``cifar-10-batches-py`` / ``cifar-100-python`` inside it).
* ``tinyimagenet``: ``data/tiny-imagenet-200``.
* ``imagenet``: ``data/imagenet`` (ImageFolder layout ``train/<wnid>/``, ``val/<wnid>/``; file-backed).
* ``synthetic``: generated in memory.

Layout: ``registry.py`` is the one dispatcher over dataset names (:func:`load_data` and
:func:`check_available` go through it); ``base.py`` holds what every source shares (datasets, the bundle,
splitting, transforms); ``loader.py`` builds seeded DataLoaders; each other module is one source.

Importing this package imports no torch: :func:`check_available` (and :func:`missing_datasets`) check paths
only, and the source modules, the dataset classes and :func:`make_loader` are imported on first use (a lookup
by dataset name, or an attribute of this package such as ``suite.data.DataBundle``).  ``spikesuite plan`` relies
on it.

Adding a dataset is one new module here that calls :func:`register_source` once with a
:class:`DataSource` (its names, a ``check`` that only tests paths, and a ``load``), plus its name in
``registry.SOURCE_MODULES`` (registration happens on import) and, to keep checking torch-free, a path check
in ``registry._AVAILABILITY``.  Its name must also be added to ``DatasetName`` in ``suite/config/data.py``,
which validates configs without importing torch; the first lookup fails loudly if the two lists disagree.
"""

import importlib
from typing import Any

from suite.data.registry import (
    SOURCE_MODULES,
    DatasetNotFoundError,
    DataSource,
    cached_data,
    check_available,
    get_source,
    load_data,
    missing_datasets,
    names,
    register_source,
)

# The former single module's public names, still importable from suite.data, each from the module that
# defines it; imported on first access (PEP 562) because every one of them imports torch.
_LAZY = {
    "DataBundle": "suite.data.base",
    "ImageFileDataset": "suite.data.base",
    "TensorImageDataset": "suite.data.base",
    "make_loader": "suite.data.loader",
    "CIFAR_DEFAULT_ROOT": "suite.data.cifar",
    "FASHION_MNIST_DEFAULT_ROOT": "suite.data.fashion_mnist",
    "FASHION_MNIST_DOWNLOAD_ROOT": "suite.data.fashion_mnist",
}

__all__ = [
    "DataBundle",
    "DataSource",
    "DatasetNotFoundError",
    "cached_data",
    "check_available",
    "get_source",
    "load_data",
    "make_loader",
    "missing_datasets",
    "names",
    "register_source",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in SOURCE_MODULES or name in ("base", "loader"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *SOURCE_MODULES, "base", "loader"})
