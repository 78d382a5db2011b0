"""Recorded event-camera sets through ``spikingjelly.datasets``: N-MNIST, CIFAR10-DVS, DVS128 Gesture.

spikingjelly parses the raw files (N-MNIST's 40-bit ``.bin`` events, CIFAR10-DVS's AEDAT 2 recordings, DVS128
Gesture's AEDAT 3.1 trials cut by their ``_labels.csv``) into ``<root>/events_np`` and integrates them into
``dataset.frames`` frames ``[T, 2, H, W]`` under ``<root>/frames_number_<T>_split_by_<split_by>`` (its own cache
layout; see :mod:`suite.data.dvs_layout` for what a root may hold).  Items are those frames as float counts
(never normalised), resized to ``dataset.image_size`` when set, augmented by ``horizontal_flip`` and
``event_roll``; a loader stacks them batch first, ``[B, T, 2, H, W]``, and the backbone runs its stem on frame t
at timestep t (``Backbone.embed``).

Splits, as the literature trains them:

- N-MNIST and DVS128 Gesture: the official train/test split (60 000 / 10 000; 1176 / 288 samples);
- CIFAR10-DVS (no split of its own): ``dvs_split: first90`` trains on the first 90 % of each class in
  spikingjelly's file order (what ``split_to_train_test_set(0.9, ...)`` gives the Spikformer and QKFormer code:
  file names sorted as strings, so ``cifar10_airplane_0, _1, _10, _100, ...``), 9000 / 1000;
  ``dvs_split: tebn`` tests on recordings 0-99 of each class (spikingjelly's ``CIFAR10DVSTEBNSplit``), 9000 / 1000.

Validation (``val_fraction``) and subsets are carved from the training split as for every dataset
(``suite.data.base``).  Labels are class ids: the digit, the CIFAR-10 class in alphabetical order, and the gesture
number minus one (spikingjelly's folders ``0`` .. ``10`` read as integers, not in its string order).
"""

from __future__ import annotations

import fcntl
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from suite.config import DatasetConfig
from suite.config.data import RECORDED_EVENT_DATASETS
from suite.data.base import DataBundle, ImageFileDataset, _bundle_from_files
from suite.data.dvs_layout import event_root, frames_dir
from suite.data.registry import DatasetCorruptError, DataSource, event_available, register_source


class EventFrameDataset(ImageFileDataset):
    """File-backed frame sequences: spikingjelly's ``.npz`` frames ``[T, 2, H, W]`` as float32 counts."""

    def read(self, index: int) -> torch.Tensor:
        from spikingjelly.datasets.utils import load_npz_frames

        return torch.as_tensor(load_npz_frames(self.paths[index]), dtype=torch.float32)


@dataclass(frozen=True)
class _Spec:
    """What differs between the three sets: spikingjelly's class, sensor size and class count."""

    cls_name: str
    size: tuple[int, int]
    num_classes: int
    official_split: bool  # spikingjelly keeps train/ and test/ folders


_SPECS = {
    "nmnist": _Spec("NMNIST", (34, 34), 10, True),
    "cifar10_dvs": _Spec("CIFAR10DVS", (128, 128), 10, False),
    "dvs128_gesture": _Spec("DVS128Gesture", (128, 128), 11, True),
}


def _building(stage: Path) -> Path:
    return stage.with_name(f"{stage.name}.building")


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One process prepares a root at a time (workers of one study load the same set)."""
    with (root / ".spikesuite.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _discard_unfinished(stage: Path) -> None:
    """Remove a cache stage a killed or failed preparation left half-written (its ``.building`` marker is there)."""
    marker = _building(stage)
    if marker.exists():
        shutil.rmtree(stage, ignore_errors=True)
        marker.unlink()


def _prepare_events(cfg: DatasetConfig, sj_cls: type) -> None:
    """``<root>/events_np`` from ``<root>/extract`` with spikingjelly's own parser (``create_raw_from_extracted``),
    skipping its download step (which checks archive MD5s and would fetch CIFAR10-DVS on a mismatch)."""
    root = event_root(cfg)
    raw = root / "events_np"
    _discard_unfinished(raw)
    if raw.is_dir():
        return
    _building(raw).touch()
    raw.mkdir()
    try:
        sj_cls.create_raw_from_extracted(root / "extract", raw)
    except Exception as exc:
        shutil.rmtree(raw, ignore_errors=True)
        _building(raw).unlink()
        raise DatasetCorruptError(f"{cfg.name}: spikingjelly could not parse {root / 'extract'}: {exc!r}") from exc
    _building(raw).unlink()


def _frame_set(cfg: DatasetConfig, sj_cls: type, train: bool | None) -> list[tuple[str, int]]:
    """spikingjelly's frame dataset for one split (integrating the frames on first use): its ``(path, class)``
    samples."""
    kwargs = {"data_type": "frame", "frames_number": cfg.frames, "split_by": cfg.split_by}
    if train is not None:
        kwargs["train"] = train
    try:
        ds = sj_cls(str(event_root(cfg)), **kwargs)
    except Exception as exc:
        _discard_unfinished(frames_dir(cfg))
        raise DatasetCorruptError(f"{cfg.name}: spikingjelly could not integrate {event_root(cfg) / 'events_np'} "
                                  f"into {cfg.frames} frames split by {cfg.split_by}: {exc!r}") from exc
    return [(path, _class_id(ds.classes[idx])) for path, idx in ds.samples]


def _class_id(folder: str) -> int:
    """The class of a sample from its folder: an integer folder is the id itself (N-MNIST digits, gestures), a
    CIFAR10-DVS class name is its alphabetical rank (spikingjelly's order, CIFAR-10's class order)."""
    if folder.isdigit():
        return int(folder)
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES

    return CIFAR10DVS_CLASS_NAMES.index(folder)


_TEBN_INDEX = re.compile(r"_(\d+)\.npz$")


def _cifar10_dvs_split(cfg: DatasetConfig, samples: list[tuple[str, int]]
                       ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) of CIFAR10-DVS by ``dvs_split`` (module docstring); ``samples`` in spikingjelly's order."""
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for cls in sorted({c for _, c in samples}):
        members = [s for s in samples if s[1] == cls]
        if cfg.dvs_split == "first90":
            cut = -(-len(members) * 9 // 10)  # ceil, as spikingjelly's split_to_train_test_set
            train += members[:cut]
            test += members[cut:]
        else:
            for s in members:
                match = _TEBN_INDEX.search(s[0])
                if match is None:
                    raise DatasetCorruptError(f"{s[0]}: not named cifar10_<class>_<index>.npz (dvs_split: tebn)")
                (test if int(match.group(1)) < 100 else train).append(s)
    return train, test


def _load_dvs(cfg: DatasetConfig) -> DataBundle:
    """Parse and integrate (cached), split, and wrap the frames of ``cfg.name``."""
    event_available(cfg)  # missing or malformed raw files: the error names them, before anything is written
    import spikingjelly.datasets as sjds

    spec = _SPECS[cfg.name]
    sj_cls = getattr(sjds, spec.cls_name)
    root = event_root(cfg)
    with _locked(root):
        _discard_unfinished(frames_dir(cfg))
        _prepare_events(cfg, sj_cls)
        if spec.official_split:
            train, test = _frame_set(cfg, sj_cls, True), _frame_set(cfg, sj_cls, False)
        else:
            train, test = _cifar10_dvs_split(cfg, _frame_set(cfg, sj_cls, None))
    size = spec.size if cfg.image_size is None else (cfg.image_size, cfg.image_size)
    return _bundle_from_files(
        cfg, ([Path(p) for p, _ in train], [c for _, c in train]), ([Path(p) for p, _ in test], [c for _, c in test]),
        num_classes=spec.num_classes, in_channels=2, size=size, stats=None, dataset=EventFrameDataset)


register_source(DataSource(names=RECORDED_EVENT_DATASETS, check=event_available, load=_load_dvs))
