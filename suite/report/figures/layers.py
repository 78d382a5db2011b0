"""Per-layer and per-token depth figures: the halting depth histogram, the timestep allocation per module and
the firing rate per layer. Layers are drawn in forward order: the order the runs recorded
(``details["layer_order"]``) when they carry one, else parsed from Spikformer layer names."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from suite.report.content import Figure
from suite.report.load import StudyRecords, fmt_value
from suite.report.style import (
    CI_NOTE,
    LEGEND_ROW_IN,
    MAX_WIDTH_IN,
    column_ci,
    legend_outside,
    legend_rows,
    marker_handle,
    panels,
    save,
    stat,
    style,
    width_for_legend_below,
)

MODULE_ORDER = ("q", "k", "v", "qk", "attn", "av", "proj", "mlp1", "mlp2")  # within a block, in forward order
LAYER_ORDER = "layer_order"  # details key: the model's layer names in forward order
MAX_ROWS = 3  # per-variant panels stacked in one column up to this many; more wrap into two columns


def seed_mean(arr: np.ndarray) -> np.ndarray:
    """Mean over seeds (axis 0) of the values present; NaN, without numpy's empty-slice warning, where a layer is
    absent from every seed (another backbone's layer in a study that compares backbones)."""
    present = (~np.isnan(arr)).sum(0)
    return np.where(present > 0, np.nansum(arr, 0) / np.maximum(present, 1), np.nan)


def _columns(n: int) -> int:
    return 1 if n <= MAX_ROWS else 2


def layer_key(name: str) -> tuple:
    """Forward order of a layer name: stem.*, block<i>.<module> (q k v attn proj mlp1 mlp2), head, others."""
    head, _, tail = name.partition(".")
    if head == "stem":
        return (0, 0, int(tail) if tail.isdigit() else 10**6, tail)
    if head.startswith("block") and head[5:].isdigit():
        rank = MODULE_ORDER.index(tail) if tail in MODULE_ORDER else len(MODULE_ORDER)
        return (1, int(head[5:]), rank, tail)
    return (2 if head == "head" else 3, 0, 0, name)


def recorded_layer_order(details: Iterable[Mapping[str, Any]]) -> list[str]:
    """The layer names the runs recorded in forward order (``details["layer_order"]``), merged over the runs in
    the order given (a name keeps its first place); empty when no run recorded one."""
    names: list[str] = []
    for d in details:
        order = d.get(LAYER_ORDER)
        if isinstance(order, (list, tuple)):
            names += [str(n) for n in order]
    return list(dict.fromkeys(names))


def ordered_layers(dicts: Iterable[Mapping[str, Any]], order: Sequence[str] = ()) -> list[str]:
    """The keys of ``dicts`` in forward order: as in ``order`` (a recorded layer order), the rest after it by
    ``layer_key``."""
    rank = {name: i for i, name in enumerate(order)}

    def key(name: str) -> tuple:
        return (0, rank[name], ()) if name in rank else (1, 0, layer_key(name))

    return sorted({k for d in dicts for k in d}, key=key)


def stack(values: list[Sequence[float]]) -> np.ndarray | None:
    """Equal-length sequences (one per seed) as a [seeds, n] array; None when the lengths differ."""
    lengths = {len(v) for v in values}
    return np.asarray(values, dtype=np.float64) if len(lengths) == 1 else None


def depth_figure(rec: StudyRecords, out: Path) -> Figure:
    """Fraction of tokens by the number of units (block x timestep) they were processed for, per halting variant."""
    stem, title = "halting_depth", "Halting depth histogram"
    data = rec.details_by_config("depth_histogram")
    if not data:
        return Figure(stem, title, skipped="no run recorded a depth_histogram (no halting variant)")
    wrapped = len(data) > MAX_ROWS
    fig, axes = panels(len(data), 3.7 if wrapped else 5.6, 1.7 if wrapped else 1.9, most_columns=_columns(len(data)))
    for ax, (config, hists) in zip(axes, data.items()):
        arr = stack(hists)
        if arr is None:
            ax.set_title(f"{config}: seeds disagree on the histogram length, not drawn")
            continue
        units = np.arange(arr.shape[1])
        mean, err = arr.mean(0), column_ci(arr)
        color, _ = style(rec, config)
        ax.bar(units, mean, yerr=err, color=color, alpha=0.85, capsize=2, width=0.8)
        # two title lines when the panels are side by side: one line would run into the neighbour's title
        ax.set_title(f"{config} (n={len(arr)}):{chr(10) if wrapped else ' '}mean "
                     f"{float((units * mean).sum()):.2f} of {units[-1]} units", fontsize=7)
        ax.set_xticks(units)
    fig.supxlabel("units processed per token (blocks × timesteps; the last bar = all units)", fontsize=8)
    fig.supylabel("fraction of tokens", fontsize=8)
    fig.suptitle(f"{rec.name}: halting depth per token", fontsize=9)
    caption = (f"details.depth_histogram of each halting run: fraction of tokens per number of processed units "
               f"(0..L×T), mean over seeds, {CI_NOTE}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def allocation_figure(rec: StudyRecords, out: Path) -> Figure:
    """Active timesteps per module, per timestep-mask variant."""
    stem, title = "timestep_allocation", "Timestep allocation per module"
    data = rec.details_by_config("active_steps")
    if not data:
        return Figure(stem, title, skipped="no run recorded active_steps (no timestep-mask variant)")
    layers = ordered_layers((d for runs in data.values() for d in runs), recorded_layer_order(rec.details.values()))
    wrapped = len(data) > MAX_ROWS
    width = max(3.7, 0.12 * len(layers) + 1.0) if wrapped else max(5.6, 0.2 * len(layers) + 1.5)
    fig, axes = panels(len(data), width, 2.2, most_columns=_columns(len(data)))
    for ax, (config, steps) in zip(axes, data.items()):
        arr = np.array([[s.get(layer, np.nan) for layer in layers] for s in steps], dtype=np.float64)
        mean = seed_mean(arr)
        err = column_ci(arr)
        color, _ = style(rec, config)
        x = np.arange(len(layers))
        ax.bar(x, mean, yerr=err, color=color, alpha=0.85, capsize=2, width=0.8)
        T = stat(rec.done[rec.done.config == config]["T"]).mean if "T" in rec.done else math.nan
        if math.isfinite(T):
            ax.axhline(T, color="0.3", ls="--", lw=0.8)
        ax.set_title(f"{config} (n={len(arr)}):{chr(10) if wrapped else ' '}mean {float(np.nanmean(mean)):.2f} "
                     "active steps" + (f" (dashed: T = {fmt_value(T)})" if math.isfinite(T) else ""), fontsize=7)
        ax.set_xticks(x, layers, rotation=90, fontsize=6 if wrapped else 7)
    fig.supylabel("active timesteps", fontsize=8)
    fig.suptitle(f"{rec.name}: timesteps kept per LIF module", fontsize=9)
    caption = (f"details.active_steps: timesteps each LIF module keeps after its trained mask, mean over seeds, {CI_NOTE}. "
               "Dashed: T (all steps).")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def firing_figure(rec: StudyRecords, out: Path) -> Figure:
    """Per-layer firing rates, one line per variant (mean over seeds)."""
    stem, title = "firing_rates", "Firing rate per layer"
    data = rec.details_by_config("firing_rates")
    if not data:
        return Figure(stem, title, skipped="no run recorded firing_rates")
    layers = ordered_layers((d for runs in data.values() for d in runs), recorded_layer_order(rec.details.values()))
    handles = []
    for config, rates in data.items():
        color, marker = style(rec, config)
        handles.append(marker_handle(color, marker, f"{config} (n={len(rates)})", ms=3.5, line=True))
    width = width_for_legend_below(min(MAX_WIDTH_IN, max(5.6, 0.22 * len(layers) + 1.5)), handles)
    height = 3.4 + LEGEND_ROW_IN * legend_rows(handles, width)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    x = np.arange(len(layers))
    for config, rates in data.items():
        arr = np.array([[r.get(layer, np.nan) for layer in layers] for r in rates], dtype=np.float64)
        color, marker = style(rec, config)
        ax.plot(x, seed_mean(arr), marker=marker, ms=3.5, lw=1, color=color)
    ax.set_xticks(x, layers, rotation=90)
    ax.set_ylabel("firing rate (spikes / processed element)")
    ax.set_title(f"{rec.name}: firing rate per LIF layer")
    legend_outside(fig, handles, where="below")  # under the layer names: it never covers a line
    caption = ("details.firing_rates on the test data (spikes over processed entries only), mean over seeds; "
               "layers in forward order.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))
