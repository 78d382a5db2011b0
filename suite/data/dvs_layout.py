"""Where the recorded event sets live and how to tell they are there, without torch (``spikesuite plan`` checks it).

A dataset root follows spikingjelly's layout (``spikingjelly.datasets.NeuromorphicDatasetFolder``); any one of
these stages is enough, the later ones are made from it and cached beside it:

- ``<root>/extract/``: the files as the archives unpack them (N-MNIST ``Train/<digit>/*.bin`` and ``Test/...``;
  CIFAR10-DVS ``<class>/cifar10_<class>_<i>.aedat``; DVS128 Gesture ``DvsGesture/userXX_<light>.aedat`` with
  ``userXX_<light>_labels.csv``, ``trials_to_train.txt`` and ``trials_to_test.txt``);
- ``<root>/events_np/``: every recording parsed into ``.npz`` events (t, x, y, p) by spikingjelly;
- ``<root>/frames_number_<T>_split_by_<number|time>/``: the frames ``[T, 2, H, W]`` spikingjelly integrates.

The archives themselves (``<root>/download/``) are not unpacked here: spikingjelly would check their MD5 and, for
CIFAR10-DVS, try to download on a mismatch; unpack them into ``<root>/extract/`` first.
"""

from __future__ import annotations

from pathlib import Path

from suite.config import DatasetConfig
from suite.config.data import EVENT_DEFAULT_ROOTS

# name -> what extract/ must hold (relative paths), and where to get the files.
EXTRACT_NEEDS: dict[str, tuple[str, ...]] = {
    "nmnist": ("Train", "Test"),
    "cifar10_dvs": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "dvs128_gesture": ("DvsGesture/trials_to_train.txt", "DvsGesture/trials_to_test.txt"),
}
EVENT_HINTS = {
    "nmnist": "Download Train.zip and Test.zip from https://www.garrickorchard.com/datasets/n-mnist and unzip both "
              "into <root>/extract/ (so that <root>/extract/Train/0/*.bin exists).",
    "cifar10_dvs": "Download the ten class archives (airplane.zip ... truck.zip) from "
                   "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 and unzip them into <root>/extract/ "
                   "(so that <root>/extract/airplane/cifar10_airplane_0.aedat exists).",
    "dvs128_gesture": "Download DvsGesture.tar.gz from https://research.ibm.com/interactive/dvsgesture/ and extract it "
                      "into <root>/extract/ (so that <root>/extract/DvsGesture/trials_to_train.txt exists).",
}


def event_root(cfg: DatasetConfig) -> Path:
    """The dataset root: ``dataset.root`` or the set's default (``suite.config.data.EVENT_DEFAULT_ROOTS``)."""
    return Path(cfg.root).expanduser() if cfg.root else EVENT_DEFAULT_ROOTS[cfg.name]


def frames_dir(cfg: DatasetConfig) -> Path:
    """spikingjelly's frame cache for this config's frames and split_by."""
    return event_root(cfg) / f"frames_number_{cfg.frames}_split_by_{cfg.split_by}"


def missing_stage(cfg: DatasetConfig) -> list[tuple[Path, str]]:
    """Each stage looked for and why it does not qualify; empty when one of them is there."""
    root = event_root(cfg)
    tried: list[tuple[Path, str]] = []
    for stage in (frames_dir(cfg), root / "events_np"):
        if stage.is_dir() and not stage.with_name(f"{stage.name}.building").exists():
            return []
        tried.append((stage, "unfinished (a .building marker is beside it)" if stage.is_dir()
                      else "directory does not exist"))
    extract = root / "extract"
    missing = [n for n in EXTRACT_NEEDS[cfg.name] if not (extract / n).exists()]
    if not missing:
        return []
    tried.append((extract, "directory does not exist" if not extract.is_dir() else "missing " + ", ".join(missing)))
    return tried


def event_available(cfg: DatasetConfig) -> None:
    """Raise ``DatasetNotFoundError`` (every stage tried, and where to get the files) unless a stage is there."""
    from suite.data.registry import _not_found

    tried = missing_stage(cfg)
    if tried:
        raise _not_found(cfg.name, tried, EVENT_HINTS[cfg.name])
