"""Tiny event datasets written in the real on-disk formats that spikingjelly parses, with their ground truth.

Every sample carries a signature its label can be read back from after spikingjelly's parsing and integration:
all its events sit in one column ``x`` that encodes the class (N-MNIST ``3 d + 1``, CIFAR10-DVS ``10 c + 5`` in the
parsed frame, DVS128 Gesture ``10 g`` for gesture number ``g``), with alternating polarity.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ------------------------------------------------------------------------------------------------ N-MNIST


def nmnist_bytes(x: np.ndarray, y: np.ndarray, p: np.ndarray, t: np.ndarray) -> bytes:
    """N-MNIST's 40-bit events: byte 0 x, byte 1 y, byte 2 bit 7 polarity and bits 6-0 timestamp bits 22-16,
    bytes 3-4 timestamp bits 15-0 (microseconds)."""
    out = np.empty((len(x), 5), dtype=np.uint8)
    out[:, 0], out[:, 1] = x, y
    out[:, 2] = (p.astype(np.uint32) << 7) | ((t >> 16) & 0x7F)
    out[:, 3], out[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    return out.tobytes()


def nmnist_signature(digit: int) -> int:
    return 3 * digit + 1


def write_nmnist(root: Path, per_class: dict[str, int], digits: tuple[int, ...] = (0, 1, 2, 3)) -> dict:
    """``<root>/extract/{Train,Test}/<digit>/<n>.bin``; returns ground truth per split: labels and event counts."""
    truth: dict[str, list[tuple[int, int]]] = {"Train": [], "Test": []}
    for split, n in per_class.items():
        for d in digits:
            folder = root / "extract" / split / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                events = 8 + i
                x = np.full(events, nmnist_signature(d))
                y = np.arange(events) % 34
                p = np.arange(events) % 2
                t = np.arange(events, dtype=np.uint32) * 997 + 5
                (folder / f"{i:05d}.bin").write_bytes(nmnist_bytes(x, y, p, t))
                truth[split].append((d, events))
    return truth


# ------------------------------------------------------------------------------------------------ CIFAR10-DVS


def cifar10_dvs_bytes(x: np.ndarray, y: np.ndarray, p: np.ndarray, t: np.ndarray) -> bytes:
    """AEDAT 2 as spikingjelly's CIFAR10-DVS reader parses it: '#' header lines, then big-endian uint32 pairs
    (address, timestamp) with raw x = (addr & 0xFE) >> 1, raw y = (addr & 0x7F00) >> 8, raw p = addr & 1; the
    reader then maps to x = 127 - raw y, y = 127 - raw x, p = 1 - raw p.  ``x, y, p`` here are the parsed values."""
    raw_y, raw_x, raw_p = 127 - x, 127 - y, 1 - p
    addr = (raw_y.astype(np.uint32) << 8) | (raw_x.astype(np.uint32) << 1) | raw_p.astype(np.uint32)
    pairs = np.stack([addr, t.astype(np.uint32)], axis=1).astype(">u4")
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address\r\n"
    return header + pairs.tobytes()


def cifar10_dvs_signature(cls: int) -> int:
    return 10 * cls + 5


def write_cifar10_dvs(root: Path, indices: tuple[int, ...]) -> None:
    """``<root>/extract/<class>/cifar10_<class>_<i>.aedat`` for every class and each index in ``indices``."""
    for c, name in enumerate(CIFAR10_CLASSES):
        folder = root / "extract" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            events = 6
            x = np.full(events, cifar10_dvs_signature(c))
            y = (np.arange(events) + i) % 128
            p = np.arange(events) % 2
            t = np.arange(events) * 100 + 1
            (folder / f"cifar10_{name}_{i}.aedat").write_bytes(cifar10_dvs_bytes(x, y, p, t))


# ------------------------------------------------------------------------------------------------ DVS128 Gesture


def aedat3_bytes(packets: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """AEDAT 3.1: the text header, then packets of polarity events (type 1, 8 bytes each: uint32 data with x in
    bits 17-31, y in bits 2-16, polarity in bit 1 and the valid mark in bit 0; uint32 timestamp), each after its
    28-byte header (type, source, event size, timestamp offset, overflow, capacity, number, valid)."""
    out = [b"#!AER-DAT3.1\r\n", b"#Format: RAW\r\n", b"#Source 1: DVS128\r\n", b"#!END-HEADER\r\n"]
    for x, y, p, t in packets:
        n = len(x)
        out.append(struct.pack("<HHIIIIII", 1, 1, 8, 4, 0, n, n, n))
        data = (x.astype(np.uint32) << 17) | (y.astype(np.uint32) << 2) | (p.astype(np.uint32) << 1) | 1
        out.append(np.stack([data, t.astype(np.uint32)], axis=1).astype("<u4").tobytes())
    return b"".join(out)


def gesture_signature(gesture: int) -> int:
    return 10 * gesture


def write_gesture_trial(folder: Path, name: str, gestures: list[int]) -> list[int]:
    """One trial ``<name>.aedat`` with gesture ``g`` in the window ``[1000 k + 1000, 1000 k + 1900)`` (k its
    position) and events outside every window too (which must be dropped), and its ``<name>_labels.csv``;
    returns the labels spikingjelly must give (gesture - 1)."""
    xs, ys, ps, ts = [], [], [], []
    rows = ["class,startTime_usec,endTime_usec"]
    for k, g in enumerate(gestures):
        start = 1000 * k + 1000
        rows.append(f"{g},{start},{start + 900}")
        n = 4 + k
        xs.append(np.full(n, gesture_signature(g)))
        ys.append(np.arange(n) % 128)
        ps.append(np.arange(n) % 2)
        ts.append(start + 10 + np.arange(n) * 50)
    stray = (np.array([1]), np.array([1]), np.array([0]), np.array([1000 * len(gestures) + 5000]))
    x, y, p, t = (np.concatenate(v) for v in zip(*zip(xs, ys, ps, ts)))
    half = len(x) // 2  # two packets, so the reader walks a packet boundary
    packets = [(x[:half], y[:half], p[:half], t[:half]), (x[half:], y[half:], p[half:], t[half:]), stray]
    (folder / f"{name}.aedat").write_bytes(aedat3_bytes(packets))
    (folder / f"{name}_labels.csv").write_text("\n".join(rows) + "\n")
    return [g - 1 for g in gestures]


def write_dvs128_gesture(root: Path, train: dict[str, list[int]], test: dict[str, list[int]]) -> dict[str, list[int]]:
    """``<root>/extract/DvsGesture/`` with the trials and ``trials_to_{train,test}.txt``; returns the labels per split."""
    folder = root / "extract" / "DvsGesture"
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, list[int]] = {"train": [], "test": []}
    for split, trials in (("train", train), ("test", test)):
        for name, gestures in trials.items():
            truth[split] += write_gesture_trial(folder, name, gestures)
        (folder / f"trials_to_{split}.txt").write_text("".join(f"{n}.aedat\n" for n in trials))
    return truth
