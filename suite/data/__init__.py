"""Dataset loading for the benchmark suite: one typed entry point, :func:`load_data`.

Every loader returns float32 images in ``[0, 1]`` (before normalisation) with shape ``[C, H, W]`` and
integer labels.  Small datasets (digits, synthetic, Fashion-MNIST, CIFAR) are held in memory as one
tensor; Tiny-ImageNet is file-backed so that building the dataset never decodes 100k JPEGs.

Splits and subsets are derived from a single deterministic, class-stratified ordering of the training
pool (see :func:`suite.data.base._stratified_order`), so the same config always yields the same indices.

Where data is looked for, by default:

* ``digits``: bundled with scikit-learn (offline).
* ``fashion_mnist``: ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``), then ``data/``.
* ``cifar10`` / ``cifar100``: ``data/`` (``cifar-10-batches-py`` / ``cifar-100-python`` inside it).
* ``tinyimagenet``: ``data/tiny-imagenet-200``.
* ``synthetic``: generated in memory.

Layout: ``registry.py`` is the one dispatcher over dataset names (:func:`load_data` and
:func:`check_available` go through it); ``base.py`` holds what every source shares (datasets, the bundle,
splitting, transforms); ``loader.py`` builds seeded DataLoaders; each other module is one source.

Adding a dataset is one new module here that calls :func:`register_source` once with a
:class:`DataSource` (its names, a ``check`` that only tests paths, and a ``load``), plus one import of it
below, since registration happens on import.  Its name must also be added to ``DatasetName`` in
``suite/config/data.py``, which validates configs without importing torch; importing this package fails
loudly if the two lists disagree.
"""

from typing import get_args

from suite.config.data import DatasetName

# Importing a source registers it, so every source is imported here: `import suite.data` is then enough
# for load_data to know every name.  ImageFileDataset, TensorImageDataset and the default roots are the
# former single module's public names, still importable from suite.data.
from suite.data import cifar, digits, fashion_mnist, synthetic, tinyimagenet  # noqa: F401
from suite.data.base import DataBundle, ImageFileDataset, TensorImageDataset  # noqa: F401
from suite.data.cifar import CIFAR_DEFAULT_ROOT  # noqa: F401
from suite.data.fashion_mnist import FASHION_MNIST_DEFAULT_ROOT, FASHION_MNIST_DOWNLOAD_ROOT  # noqa: F401
from suite.data.loader import make_loader
from suite.data.registry import (
    DatasetNotFoundError,
    DataSource,
    cached_data,
    check_available,
    get_source,
    load_data,
    names,
    register_source,
)

__all__ = [
    "DataBundle",
    "DataSource",
    "DatasetNotFoundError",
    "cached_data",
    "check_available",
    "get_source",
    "load_data",
    "make_loader",
    "names",
    "register_source",
]

# The config's Literal rejects unknown names before any loader runs, so a source registered without a
# matching DatasetName entry (or the reverse) would be unreachable or fail only at load time.
if set(names()) != set(get_args(DatasetName)):
    raise RuntimeError(
        f"registered datasets {sorted(names())} differ from DatasetName {sorted(get_args(DatasetName))} "
        "in suite/config/data.py; add the name to both"
    )
