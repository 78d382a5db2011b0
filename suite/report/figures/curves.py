"""Learning curves from each run's ``history.csv``: has the model converged? Validation accuracy per epoch (train
accuracy dashed), mean over seeds with its t-interval; a fine-tuned variant is drawn after its parent's last epoch,
so its curve continues the one it started from. A config whose histories equal an earlier config's (training
shared, e.g. training-free ToMe on the dense weights) is drawn once. The caption states, per config trained from
scratch, what its validation accuracy gained over its last epoch: a plateau reads as a gain near zero."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from suite.names import HISTORY
from suite.report.content import Figure
from suite.report.load import StudyRecords
from suite.report.style import CI_NOTE, ci_half, column_ci, legend_outside, marker_handle, save, stat, style

STEM, TITLE = "learning_curves", "Learning curves"


def histories(rec: StudyRecords) -> dict[str, list[pd.DataFrame]]:
    """config -> the finished seeds' histories (epoch, train_acc, val_acc), in study order; configs with no
    validation accuracy recorded, and configs repeating an earlier one's histories, left out."""
    out: dict[str, list[pd.DataFrame]] = {}
    seen: list[list[pd.DataFrame]] = []
    for config in rec.present(rec.done):
        frames = []
        for rid in rec.done[rec.done.config == config].sort_values("seed").run_id:
            path = rec.study_dir / str(rid) / HISTORY
            if path.is_file():
                h = pd.read_csv(path)
                if {"epoch", "val_acc"} <= set(h.columns) and h["val_acc"].notna().any():
                    frames.append(h)
        if not frames or any(len(s) == len(frames) and all(a.equals(b) for a, b in zip(s, frames)) for s in seen):
            continue
        seen.append(frames)
        out[config] = frames
    return out


def _matrix(frames: list[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, seeds × epochs array with NaN where a seed lacks the epoch)."""
    epochs = np.array(sorted(set().union(*(set(f["epoch"].astype(int)) for f in frames))))
    arr = np.full((len(frames), len(epochs)), np.nan)
    for i, f in enumerate(frames):
        if column in f:
            idx = np.searchsorted(epochs, f["epoch"].astype(int).to_numpy())
            arr[i, idx] = f[column].astype(float).to_numpy()
    return epochs, arr


def last_gain(frames: list[pd.DataFrame]) -> tuple[float, float, int]:
    """Mean over seeds of the validation accuracy's change over the last epoch, its t half-width and n."""
    s = stat(pd.Series([f["val_acc"].iloc[-1] - f["val_acc"].iloc[-2] for f in frames if len(f) >= 2], dtype=float))
    return s.mean, ci_half(s), s.n


def curves_figure(rec: StudyRecords, out: Path) -> Figure | None:
    """The learning curves (None when no run recorded a validation accuracy: no validation split)."""
    data = histories(rec)
    if not data:
        return None
    parents = {name: v.train.get("init_from") for name, v in rec.variants.items()}
    fig, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    handles, gains = [], []
    last_epoch: dict[str, float] = {}
    for config, frames in data.items():
        variant = str(rec.done[rec.done.config == config].variant.iloc[0])
        parent = parents.get(variant)
        offset = last_epoch.get(parent, 0.0) if isinstance(parent, str) else 0.0
        color, marker = style(rec, config)
        for column, ls in (("val_acc", "-"), ("train_acc", "--")):
            epochs, arr = _matrix(frames, column)
            if column == "val_acc":  # histories() keeps only configs with a validation accuracy
                last_epoch[variant] = offset + float(epochs[-1])
            if np.isnan(arr).all():
                continue
            mean = np.nanmean(arr, axis=0)
            half = column_ci(arr)
            ax.errorbar(epochs + offset, mean, yerr=half if column == "val_acc" else None, color=color,
                        marker=marker if column == "val_acc" else None, ms=2.5, lw=1, ls=ls, capsize=1.5,
                        alpha=1.0 if column == "val_acc" else 0.6)
        handles.append(marker_handle(color, marker, f"{config} (n={len(frames)})"))
        if offset == 0.0:
            mean, half, n = last_gain(frames)
            if n:
                gains.append(f"{config} {mean:+.2f}" + (f" [{mean - half:+.2f}, {mean + half:+.2f}]"
                                                         if not math.isnan(half) else "") + f" pt (n={n})")
    ax.set_xlabel("epoch (fine-tuning continues after its parent's last epoch)")
    ax.set_ylabel("accuracy (%): validation —, training --")
    ax.set_title(f"{rec.name}: learning curves")
    legend_outside(fig, handles, where="right")
    caption = ("history.csv of every finished run: validation accuracy (solid; " + CI_NOTE + ") and training "
               "accuracy (dashed; on augmented batches, mean over seeds) at the end of each epoch. A fine-tuned "
               "variant starts at its parent's last epoch. Configs with identical histories (shared training) are "
               "drawn once. Validation accuracy gained over the last epoch (mean [95 % t interval]): "
               + ("; ".join(gains) if gains else "no config trained from scratch for two epochs") + ".")
    return Figure(STEM, TITLE, caption, tuple(save(fig, out, STEM)))
