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
    "cifar10_dvs": "Download the ten class archives airplane.zip ... truck.zip (figshare; their URLs and MD5s are "
                   "listed by spikingjelly.datasets.CIFAR10DVS.resource_url_md5(), airplane.zip being "
                   "https://ndownloader.figshare.com/files/7712788) and unzip them into <root>/extract/ (so that "
                   "<root>/extract/airplane/cifar10_airplane_0.aedat exists).",
    "dvs128_gesture": "Download DvsGesture.tar.gz from IBM "
                      "(https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794, as "
                      "spikingjelly.datasets.DVS128Gesture.resource_url_md5() lists) and extract it into "
                      "<root>/extract/ (so that <root>/extract/DvsGesture/trials_to_train.txt exists).",
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


# --------------------------------------------------------------------------------------------------
# Structural checks of the raw files (sizes and headers only: cheap enough for every preflight)
# --------------------------------------------------------------------------------------------------

NMNIST_EVENT_BYTES = 5  # x, y, then polarity (bit 7) and a 23-bit timestamp in three bytes
AEDAT_PAIR_BYTES = 8  # CIFAR10-DVS (AEDAT 2): big-endian uint32 address, uint32 timestamp
AEDAT3_PACKET_HEADER = 28  # AEDAT 3.1: eventType (2), eventSource (2), eventSize (4), tsOffset (4), tsOverflow (4),
#                            eventCapacity (4), eventNumber (4), eventValid (4)
AEDAT3_END_HEADER = b"#!END-HEADER\r\n"


def _bad(path: Path, why: str) -> str:
    return f"{path}: {why}"


def _nmnist_file(path: Path) -> str:
    size = path.stat().st_size
    if size == 0:
        return _bad(path, "empty (no events)")
    if size % NMNIST_EVENT_BYTES:
        return _bad(path, f"truncated: {size} bytes is not a whole number of {NMNIST_EVENT_BYTES}-byte events")
    return ""


def _aedat2_file(path: Path) -> str:
    """spikingjelly's CIFAR10-DVS reader skips leading ``#`` lines, then reads (address, timestamp) pairs."""
    with path.open("rb") as f:
        header = 0
        line = f.readline()
        while line.startswith(b"#"):
            header += len(line)
            line = f.readline()
    body = path.stat().st_size - header
    if body <= 0:
        return _bad(path, "no events after the header")
    if body % AEDAT_PAIR_BYTES:
        return _bad(path, f"truncated: {body} bytes of events is not a whole number of {AEDAT_PAIR_BYTES}-byte "
                          "(address, timestamp) pairs")
    return ""


def _aedat3_file(path: Path) -> str:
    """Walk the packet headers of an AEDAT 3.1 file as spikingjelly's ``load_aedat_v3`` reads them."""
    size = path.stat().st_size
    with path.open("rb") as f:
        line = f.readline()
        if not line.startswith(b"#!AER-DAT3"):
            return _bad(path, "not an AEDAT 3.x file (no #!AER-DAT3 first line)")
        while line.startswith(b"#") and line != AEDAT3_END_HEADER:
            line = f.readline()
        if line != AEDAT3_END_HEADER:
            return _bad(path, "header has no #!END-HEADER line")
        while (pos := f.tell()) < size:
            head = f.read(AEDAT3_PACKET_HEADER)
            if len(head) < AEDAT3_PACKET_HEADER:
                return _bad(path, f"truncated packet header at byte {pos}")
            event_size = int.from_bytes(head[4:8], "little")
            capacity = int.from_bytes(head[20:24], "little")
            if pos + AEDAT3_PACKET_HEADER + event_size * capacity > size:
                return _bad(path, f"truncated packet at byte {pos}: {capacity} events of {event_size} bytes announced")
            f.seek(event_size * capacity, 1)
    return ""


def _gesture_labels(path: Path) -> str:
    """``class,startTime_usec,endTime_usec`` rows after one header line, classes 1..11."""
    if not path.is_file():
        return _bad(path, "missing (every trial needs its _labels.csv)")
    rows = [r for r in path.read_text().splitlines()[1:] if r.strip()]
    for i, row in enumerate(rows, start=2):
        fields = row.split(",")
        if len(fields) != 3 or not all(f.strip().isdigit() for f in fields) or not 1 <= int(fields[0]) <= 11:
            return _bad(path, f"line {i}: expected 'class,startTime_usec,endTime_usec' with class 1..11, got {row!r}")
    return "" if rows else _bad(path, "no labelled gestures")


def malformed_files(cfg: DatasetConfig) -> list[str]:
    """Every raw file under ``<root>/extract`` that spikingjelly could not parse, one line each (the first 20); empty
    once ``events_np`` (or the frames) exist, since nothing is parsed then."""
    root = event_root(cfg)
    if any(d.is_dir() and not d.with_name(f"{d.name}.building").exists()
           for d in (frames_dir(cfg), root / "events_np")):
        return []
    extract = root / "extract"
    problems: list[str] = []
    if cfg.name == "nmnist":
        files = sorted(p for split in ("Train", "Test") for p in (extract / split).glob("*/*.bin"))
        problems = [w for p in files if (w := _nmnist_file(p))]
    elif cfg.name == "cifar10_dvs":
        files = sorted(p for cls in EXTRACT_NEEDS["cifar10_dvs"] for p in (extract / cls).glob("*.aedat"))
        problems = [w for p in files if (w := _aedat2_file(p))]
    else:
        base = extract / "DvsGesture"
        for listing in ("trials_to_train.txt", "trials_to_test.txt"):
            for name in (n.strip() for n in (base / listing).read_text().splitlines()):
                if not name:
                    continue
                trial = base / name
                why = _aedat3_file(trial) if trial.is_file() else _bad(trial, f"missing (listed in {listing})")
                problems += [w for w in (why, _gesture_labels(base / f"{trial.stem}_labels.csv")) if w]
        files = []
    if cfg.name != "dvs128_gesture" and not files:
        problems.append(_bad(extract, "no event files found"))
    return problems[:20]
