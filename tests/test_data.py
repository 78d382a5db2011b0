"""Tests for suite.data: every loader is exercised on tiny files written in the real on-disk formats."""

import gzip
import os
import pickle
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

# Let `pytest tests/test_data.py` import the package from a plain checkout (no editable install needed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from suite.config import AugmentConfig, DatasetConfig, SyntheticConfig  # noqa: E402
from suite.data import (  # noqa: E402
    DataBundle,
    DatasetNotFoundError,
    check_available,
    load_data,
    make_loader,
)
from suite.data.base import _stratified_order  # noqa: E402


def _ids(ds) -> set[int]:
    return {int(i) for i in ds.source_indices}


def _stack(ds) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(images), torch.tensor(labels)


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def test_config_rejects_unknown_fields_and_bad_values():
    with pytest.raises(ValidationError):
        DatasetConfig(nmae="digits")
    with pytest.raises(ValidationError):
        DatasetConfig(name="imagenet21k")
    with pytest.raises(ValidationError):
        DatasetConfig(val_fraction=0.5)
    with pytest.raises(ValidationError):
        DatasetConfig(augment={"flip": True})
    with pytest.raises(ValidationError):
        DatasetConfig(synthetic={"num_classes": 1})
    with pytest.raises(ValidationError, match="tiny-imagenet-200.zip"):
        DatasetConfig(name="tinyimagenet", download=True)


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def test_digits_shapes_splits_and_determinism():
    cfg = DatasetConfig(name="digits")
    bundle = load_data(cfg)
    assert isinstance(bundle, DataBundle)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (8, 8))
    image, label = bundle.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10

    train, val, test = _ids(bundle.train), _ids(bundle.val), _ids(bundle.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 1797
    assert train | val | test == set(range(1797))
    assert len(test) == round(0.2 * 1797)
    assert len(val) == round(0.1 * (1797 - len(test)))

    again = load_data(cfg)
    for a, b in ((bundle.train, again.train), (bundle.val, again.val), (bundle.test, again.test)):
        assert torch.equal(a.source_indices, b.source_indices)
    assert torch.equal(bundle.train[5][0], again.train[5][0])

    other = load_data(DatasetConfig(name="digits", split_seed=1))
    assert not torch.equal(other.test.source_indices, bundle.test.source_indices)

    described = bundle.describe()
    assert described["train_size"] == len(train) and described["val_size"] == len(val)
    assert described["test_size"] == len(test) and described["image_size"] == [8, 8]


def test_digits_values_normalisation_and_resize():
    raw = load_data(DatasetConfig(name="digits", normalize=False, val_fraction=0.0))
    assert raw.val is None
    images, _ = _stack(raw.train)
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9

    normed = load_data(DatasetConfig(name="digits", val_fraction=0.0))
    images, _ = _stack(normed.train)  # stats come from exactly this split
    assert abs(float(images.mean())) < 1e-4 and abs(float(images.std()) - 1.0) < 1e-2

    resized = load_data(DatasetConfig(name="digits", image_size=16))
    assert resized.image_size == (16, 16)
    for ds in (resized.train, resized.val, resized.test):
        assert ds[0][0].shape == (1, 16, 16)


def test_digits_subsets_are_stratified_prefixes():
    bundle = load_data(DatasetConfig(name="digits", train_subset=50, test_subset=30, val_fraction=0.2))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 30)
    pool_labels = [bundle.train[i][1] for i in range(40)] + [bundle.val[i][1] for i in range(10)]
    assert set(Counter(pool_labels).values()) <= {4, 5, 6}
    assert len({bundle.val[i][1] for i in range(10)}) >= 8  # a 10-item hold-out spans the classes
    assert set(Counter(bundle.test[i][1] for i in range(30)).values()) <= {2, 3, 4}

    larger = load_data(DatasetConfig(name="digits", train_subset=100, val_fraction=0.2))
    # Subsets are prefixes of one seeded ordering, so a larger subset contains the smaller one.
    assert _ids(bundle.train) | _ids(bundle.val) <= _ids(larger.train) | _ids(larger.val)


def test_augmentation_only_on_train():
    cfg = DatasetConfig(
        name="digits",
        image_size=12,
        augment=AugmentConfig(
            random_crop_padding=2, horizontal_flip=True, randaugment=True, random_erasing=0.5
        ),
    )
    bundle = load_data(cfg)
    torch.manual_seed(0)
    draws = [bundle.train[3][0] for _ in range(8)]
    assert all(d.shape == (1, 12, 12) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(bundle.val[3][0], bundle.val[3][0])
    assert torch.equal(bundle.test[3][0], bundle.test[3][0])


# --------------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_learnable():
    cfg = DatasetConfig(
        name="synthetic",
        normalize=False,
        synthetic=SyntheticConfig(num_classes=5, image_size=6, channels=3, train_size=200, test_size=100),
    )
    a, b = load_data(cfg), load_data(cfg)
    assert (a.num_classes, a.in_channels, a.image_size) == (5, 3, (6, 6))
    assert (len(a.train) + len(a.val), len(a.test)) == (200, 100)
    xa, ya = _stack(a.train)
    xb, yb = _stack(b.train)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.min() >= 0 and xa.max() <= 1
    assert set(ya.tolist()) == set(range(5))

    # Nearest class mean, fitted on train, should classify test almost perfectly.
    centroids = torch.stack([xa[ya == c].mean(0) for c in range(5)]).flatten(1)
    xt, yt = _stack(a.test)
    predicted = torch.cdist(xt.flatten(1), centroids).argmin(1)
    assert (predicted == yt).float().mean() > 0.9

    other = load_data(cfg.model_copy(update={"split_seed": 3}))
    assert not torch.equal(_stack(other.test)[0], xt)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(directory: Path, *, gz: bool = True, n_train: int = 20, n_test: int = 10) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10, 2049),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte": (rng.permutation(np.arange(n_test) % 10), 2049),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, (array, magic) in arrays.items():
        data = _idx_bytes(array, magic)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return {stem: array for stem, (array, _) in arrays.items()}


def _check_fashion_roundtrip(root: Path, arrays: dict) -> None:
    cfg = DatasetConfig(name="fashion_mnist", root=str(root), normalize=False, val_fraction=0.1)
    check_available(cfg)
    bundle = load_data(cfg)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (28, 28))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 2, 10)
    assert _ids(bundle.train) | _ids(bundle.val) == set(range(20))
    for ds, stem in ((bundle.train, "train"), (bundle.val, "train"), (bundle.test, "t10k")):
        images, labels = _stack(ds)
        src = ds.source_indices.numpy()
        expected = torch.from_numpy(arrays[f"{stem}-images-idx3-ubyte"][src]).float().unsqueeze(1)
        assert torch.equal(torch.round(images * 255), expected)
        assert labels.tolist() == arrays[f"{stem}-labels-idx1-ubyte"][src].tolist()

    normed = load_data(cfg.model_copy(update={"normalize": True}))
    assert normed.mean == (0.2860,) and normed.std == (0.3530,)
    raw_pixel = float(arrays["t10k-images-idx3-ubyte"][0, 3, 4]) / 255
    assert normed.test[0][0][0, 3, 4].item() == pytest.approx((raw_pixel - 0.2860) / 0.3530, abs=1e-5)


def test_fashion_mnist_gz_layout(tmp_path):
    _check_fashion_roundtrip(tmp_path, _write_fashion(tmp_path, gz=True))


def test_fashion_mnist_uncompressed_layout(tmp_path):
    _check_fashion_roundtrip(tmp_path, _write_fashion(tmp_path, gz=False))


def test_fashion_mnist_torchvision_raw_layout(tmp_path):
    _check_fashion_roundtrip(tmp_path, _write_fashion(tmp_path / "FashionMNIST" / "raw", gz=True))


def test_fashion_mnist_truncated_and_corrupt_files(tmp_path):
    _write_fashion(tmp_path, gz=True)
    cfg = DatasetConfig(name="fashion_mnist", root=str(tmp_path))
    target = tmp_path / "train-images-idx3-ubyte.gz"
    full = target.read_bytes()

    target.write_bytes(full[: len(full) // 2])  # truncated gzip stream
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_data(cfg)

    data = gzip.decompress(full)
    target.write_bytes(gzip.compress(data[:-100]))  # valid gzip, missing pixels
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load_data(cfg)

    target.write_bytes(gzip.compress(struct.pack(">I", 2049) + data[4:]))  # label magic on images
    with pytest.raises(ValueError, match="magic"):
        load_data(cfg)


def test_fashion_mnist_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    cfg = DatasetConfig(name="fashion_mnist", root=str(missing))
    for call in (check_available, load_data):
        with pytest.raises(DatasetNotFoundError) as info:
            call(cfg)
        message = str(info.value)
        assert str(missing) in message and str(missing / "FashionMNIST" / "raw") in message
        assert "dataset-fashion-mnist" in message and "download: true" in message
        assert isinstance(info.value, FileNotFoundError)

    (missing).mkdir()
    _write_fashion(missing)
    (missing / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        check_available(cfg)


# --------------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------------


def _py2_string(raw: bytes) -> bytes:
    # SHORT_BINSTRING / BINSTRING: how Python 2 pickled its byte strings.
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw


def _py2_batch(data: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    """Opcode-for-opcode what Python 2 cPickle + numpy 1.x wrote for the official CIFAR batches."""
    dtype = (
        b"cnumpy\ndtype\n" + _py2_string(b"u1") + b"K\x00K\x01\x87R"
        b"(K\x03" + _py2_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_string(b"b") + b"\x87R"
        b"(K\x01"
        + pickle.dumps(data.shape, protocol=2)[2:-1]
        + dtype
        + b"\x89"
        + _py2_string(data.tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([lbl]) for lbl in labels) + b"e"
    return b"\x80\x02}(" + _py2_string(b"data") + array + _py2_string(label_key) + label_list + b"u."


def _write_batch(
    path: Path, data: np.ndarray, labels: list[int], label_key: bytes, protocol: int | str
) -> None:
    if protocol == "py2":
        path.write_bytes(_py2_batch(data, labels, label_key))
        return
    batch = {
        b"batch_label": b"testing batch",
        label_key: labels,
        b"data": data,
        b"filenames": [b"x.png"] * len(labels),
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [lbl // 5 for lbl in labels]
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 4, 5, "py2"])
def test_cifar10_roundtrip(tmp_path, protocol):
    rng = np.random.default_rng(1)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    train_data, train_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        _write_batch(directory / f"data_batch_{i}", data, labels, b"labels", protocol)
        train_data.append(data)
        train_labels += labels
    test_data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    test_data[0, :] = 0
    test_data[0, 1024 + 5 * 32 + 7] = 200  # green channel, row 5, column 7
    test_labels = [3, 1, 4, 1, 5, 9]
    _write_batch(directory / "test_batch", test_data, test_labels, b"labels", protocol)

    cfg = DatasetConfig(name="cifar10", root=str(tmp_path), normalize=False, val_fraction=0.0)
    check_available(cfg)
    bundle = load_data(cfg)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, (32, 32))
    assert (len(bundle.train), len(bundle.test)) == (20, 6)

    first, label = bundle.test[0]
    assert label == 3 and first[1, 5, 7].item() == pytest.approx(200 / 255)
    assert int((first > 0).sum()) == 1

    all_train = np.concatenate(train_data)
    images, labels = _stack(bundle.train)
    src = bundle.train.source_indices.numpy()
    expected = torch.from_numpy(all_train[src].reshape(-1, 3, 32, 32)).float()
    assert torch.equal(torch.round(images * 255), expected)
    assert labels.tolist() == [train_labels[i] for i in src]

    normed = load_data(cfg.model_copy(update={"normalize": True}))
    assert normed.mean == (0.4914, 0.4822, 0.4465)
    assert normed.test[0][0][1, 5, 7].item() == pytest.approx((200 / 255 - 0.4822) / 0.2435, abs=1e-5)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    train = rng.integers(0, 256, (12, 3072), dtype=np.uint8)
    train_labels = [0, 99, 50, 7, 12, 33, 64, 99, 1, 2, 3, 4]
    _write_batch(directory / "train", train, train_labels, b"fine_labels", 2)
    test = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    _write_batch(directory / "test", test, [98, 0, 10, 20, 30], b"fine_labels", 2)

    bundle = load_data(DatasetConfig(name="cifar100", root=str(tmp_path), normalize=False, val_fraction=0.0))
    assert (bundle.num_classes, len(bundle.train), len(bundle.test)) == (100, 12, 5)
    images, labels = _stack(bundle.test)
    assert labels.tolist() == [98, 0, 10, 20, 30]
    assert torch.equal(torch.round(images * 255), torch.from_numpy(test.reshape(5, 3, 32, 32)).float())


class _Exploit:
    """Pickles to a call of os.system, which the restricted unpickler must never resolve."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_refuses_disallowed_globals(tmp_path, protocol):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker), b"fine_labels": [0]}, protocol=protocol)
    assert b"system" in payload  # the pickle really references os.system
    (directory / "train").write_bytes(payload)
    _write_batch(directory / "test", np.zeros((1, 3072), np.uint8), [0], b"fine_labels", 2)

    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_data(DatasetConfig(name="cifar100", root=str(tmp_path)))
    assert not marker.exists()

    (directory / "train").write_bytes(pickle.dumps({b"data": eval}, protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match=r"(__builtin__|builtins)\.eval"):
        load_data(DatasetConfig(name="cifar100", root=str(tmp_path)))


def test_cifar_bad_shape_and_missing(tmp_path):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    _write_batch(directory / "train", np.zeros((2, 1000), np.uint8), [0, 1], b"fine_labels", 2)
    _write_batch(directory / "test", np.zeros((1, 3072), np.uint8), [0], b"fine_labels", 2)
    with pytest.raises(ValueError, match=r"train.*3072"):
        load_data(DatasetConfig(name="cifar100", root=str(tmp_path)))

    cfg = DatasetConfig(name="cifar10", root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        check_available(cfg)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert "download: true" in str(info.value) and "cifar-10-python.tar.gz" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Tiny-ImageNet
# --------------------------------------------------------------------------------------------------

_COLORS = {"n01443537": (255, 0, 0), "n01629819": (0, 255, 0), "n02124075": (0, 0, 255)}


def _write_tinyimagenet(root: Path) -> list[str]:
    wnids = list(_COLORS)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid, color in _COLORS.items():
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        for k in range(4):
            Image.new("RGB", (64, 64), color).save(images / f"{wnid}_{k}.JPEG")
    # Val order deliberately differs from wnids order; one greyscale image checks RGB conversion.
    val_wnids = [wnids[2], wnids[0], wnids[1], wnids[0]]
    lines = []
    for k, wnid in enumerate(val_wnids):
        name = f"val_{k}.JPEG"
        if k == 3:
            Image.new("L", (64, 64), 128).save(root / "val" / "images" / name)
        else:
            Image.new("RGB", (64, 64), _COLORS[wnid]).save(root / "val" / "images" / name)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return val_wnids


def test_tinyimagenet_tree(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    val_wnids = _write_tinyimagenet(root)
    wnids = list(_COLORS)
    cfg = DatasetConfig(name="tinyimagenet", root=str(root), normalize=False, val_fraction=0.25)
    check_available(cfg)
    bundle = load_data(cfg)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 3, (64, 64))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 4)
    assert all(isinstance(p, Path) for p in bundle.train.paths)  # file-backed, decoded on access
    assert {bundle.val[i][1] for i in range(3)} == {0, 1, 2}  # stratified hold-out

    images, labels = _stack(bundle.test)
    assert labels.tolist() == [wnids.index(w) for w in val_wnids]
    assert images.shape == (4, 3, 64, 64)
    for k in range(3):
        expected = torch.tensor(_COLORS[val_wnids[k]], dtype=torch.float32) / 255
        assert torch.allclose(images[k].mean((1, 2)), expected, atol=0.02)
    assert torch.allclose(images[3], images[3][0:1].expand(3, -1, -1))  # greyscale -> equal channels

    for i in range(len(bundle.train)):
        image, label = bundle.train[i]
        expected = torch.tensor(_COLORS[wnids[label]], dtype=torch.float32) / 255
        assert torch.allclose(image.mean((1, 2)), expected, atol=0.02)

    # Pointing at the parent directory works too, and resizing applies to every split.
    small = load_data(DatasetConfig(name="tinyimagenet", root=str(tmp_path), image_size=32))
    assert small.image_size == (32, 32) and small.test[0][0].shape == (3, 32, 32)
    assert small.mean == pytest.approx((0.4802, 0.4481, 0.3975))


def test_tinyimagenet_missing(tmp_path):
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "wnids.txt").write_text("n01443537\n")
    cfg = DatasetConfig(name="tinyimagenet", root=str(root))
    with pytest.raises(DatasetNotFoundError) as info:
        check_available(cfg)
    message = str(info.value)
    assert str(root) in message and str(root / "tiny-imagenet-200") in message
    assert "val_annotations.txt" in message and "tiny-imagenet-200.zip" in message


# --------------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------------


def test_make_loader_is_deterministic():
    bundle = load_data(DatasetConfig(name="synthetic", synthetic=SyntheticConfig(train_size=64)))

    def order(seed: int) -> list[int]:
        loader = make_loader(bundle.train, batch_size=8, shuffle=True, seed=seed)
        return [label for _, labels in loader for label in labels.tolist()]

    def first_batch(seed: int) -> torch.Tensor:
        return next(iter(make_loader(bundle.train, batch_size=8, shuffle=True, seed=seed)))[0]

    assert order(0) == order(0)
    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))

    plain = make_loader(bundle.test, batch_size=16, shuffle=False, seed=0, drop_last=True)
    images, labels = next(iter(plain))
    assert images.shape[0] == 16 and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [bundle.test[i][1] for i in range(16)]
    assert len(plain) == len(bundle.test) // 16

    workers = make_loader(bundle.test, batch_size=4, shuffle=False, seed=0, num_workers=1)
    assert workers.persistent_workers and not plain.persistent_workers


# --------------------------------------------------------------------------------------------------
# downloads (torchvision is replaced by a fake that writes the files it would fetch)
# --------------------------------------------------------------------------------------------------


def test_fashion_mnist_download_uses_torchvision_layout(tmp_path, monkeypatch):
    import torchvision

    calls = []
    written = {}

    def fake(root, train=True, download=False):
        calls.append((root, download))
        written.update(_write_fashion(Path(root) / "FashionMNIST" / "raw", gz=False))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake)
    cfg = DatasetConfig(name="fashion_mnist", root=str(tmp_path), download=True, normalize=False)
    check_available(cfg)  # cheap: a downloadable set only needs download: true
    assert calls == []
    bundle = load_data(cfg)
    assert calls == [(str(tmp_path), True)]
    images, labels = _stack(bundle.test)
    assert labels.tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    load_data(cfg)  # files are there now: no second download
    assert len(calls) == 1


def test_cifar10_download_failure_is_reported(tmp_path, monkeypatch):
    import torchvision

    def offline(root, train=True, download=False):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match="network unreachable"):
        load_data(DatasetConfig(name="cifar10", root=str(tmp_path), download=True))


# --------------------------------------------------------------------------------------------------
# stratified ordering (private, but every split and subset rests on it)
# --------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_stratified_order_prefixes_are_balanced(counts, seed, data):
    labels = np.repeat(np.arange(len(counts)), counts)
    order = _stratified_order(labels, seed)
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert np.array_equal(order, _stratified_order(labels, seed))
    m = data.draw(st.integers(1, len(labels)))
    prefix = np.bincount(labels[order[:m]], minlength=len(counts))
    n, k = len(labels), len(counts)
    for c, n_c in enumerate(counts):
        assert abs(prefix[c] - m * n_c / n) <= 1 + k * n_c / n + 1e-9


def test_split_digests_name_exactly_the_data_read(tmp_path):
    """``describe()`` digests: the same config reads the same data (same digest); a larger hold-out moves images
    between train and val (their digests change, test's does not); one changed pixel or label changes a digest;
    a file-backed split digests its files' folder, name, size and label."""
    from suite.data.base import ImageFileDataset, TensorImageDataset, split_digest

    cfg = DatasetConfig(name="synthetic", synthetic=SyntheticConfig(train_size=40, test_size=10))
    a, b = load_data(cfg).describe(), load_data(cfg).describe()
    assert a["digest"] == b["digest"] and a["split_digests"] == b["split_digests"]
    moved = load_data(cfg.model_copy(update={"val_fraction": 0.25})).describe()["split_digests"]
    assert moved["train"] != a["split_digests"]["train"] and moved["test"] == a["split_digests"]["test"]
    images, labels = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2])
    base = split_digest(TensorImageDataset(images, labels))
    pixel = images.clone()
    pixel[1, 0, 1, 1] = 1
    assert split_digest(TensorImageDataset(pixel, labels)) != base
    assert split_digest(TensorImageDataset(images, torch.tensor([0, 2, 2]))) != base
    assert split_digest(TensorImageDataset(images.clone(), labels.clone())) == base
    (tmp_path / "n01").mkdir()
    paths = []
    for i in range(2):
        paths.append(tmp_path / "n01" / f"{i}.png")
        Image.new("L", (2, 2), color=i).save(paths[-1])
    files = split_digest(ImageFileDataset(paths, [0, 0]))
    assert files != split_digest(ImageFileDataset(paths, [0, 1]))
    Image.new("L", (3, 3)).save(paths[1])  # another file under the same name (another size)
    assert files != split_digest(ImageFileDataset(paths, [0, 0]))
