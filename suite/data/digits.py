"""digits: scikit-learn's 1797 8x8 handwritten digits, bundled with sklearn so it works offline.

It is the default dataset because it needs no download and trains in seconds on a CPU.  It has no
published per-channel statistics, so normalisation uses statistics of the training split.
"""

import numpy as np
import torch

from suite.config import DatasetConfig
from suite.data.base import DataBundle, _bundle_from_tensors, _stratified_order
from suite.data.registry import DatasetNotFoundError, DataSource, register_source

_DIGITS_TEST_FRACTION = 0.2


def _check_digits(cfg: DatasetConfig | None = None) -> None:
    """Check that sklearn imports and ships its digits file; ``cfg`` is unused (there is nothing to set)."""
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


register_source(DataSource(names=("digits",), check=_check_digits, load=_load_digits))
