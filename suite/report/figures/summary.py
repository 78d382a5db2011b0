"""Per-variant summary figures: the ablation bars (accuracy, token %), the early-exit histogram and the energy
breakdown by module kind."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from suite.names import ENERGY_KINDS
from suite.report.content import Figure
from suite.report.figures.layers import stack
from suite.report.load import StudyRecords
from suite.report.style import (
    CI_NOTE,
    ENERGY_UNIT,
    MAX_WIDTH_IN,
    Stat,
    ci_half,
    column_ci,
    legend_outside,
    save,
    stat,
    style,
)

ROW_IN = 0.24  # inches per variant row in the per-variant figures
ABLATION_WIDTH_IN, ENERGY_WIDTH_IN = 7.0, 6.0


def _limits(stats: Sequence[Stat], top: float | None = None) -> tuple[float, float]:
    lo = min(s.mean - (ci_half(s) if s.n > 1 else 0) for s in stats)
    hi = max(s.mean + (ci_half(s) if s.n > 1 else 0) for s in stats)
    pad = max(1.0, 0.15 * (hi - lo))
    return max(0.0, lo - pad), hi + pad if top is None else min(top, hi + pad)


def _rows_height(n: int) -> float:
    """Height of a figure with one row per variant: readable labels at any count, page-shaped up to ~24."""
    return min(ROW_IN * n + 1.1, MAX_WIDTH_IN * 1.2)


def ablation_figure(rec: StudyRecords, out: Path) -> Figure:
    """Accuracy (points with 95 % CI, the axis need not start at 0) and token % of dense (bars from 0) per variant, one
    row per variant with its name on the left: readable for any number of variants, never a long row."""
    stem, title = "ablation", "Ablation: accuracy and tokens per variant"
    done = rec.done
    metrics = [m for m in ("accuracy", "token_pct") if m in done]
    configs = rec.present(done)
    if not configs or not metrics:
        return Figure(stem, title, skipped="no finished run with accuracy or token_pct")
    fig, axes = plt.subplots(1, len(metrics), figsize=(ABLATION_WIDTH_IN, _rows_height(len(configs))), sharey=True,
                             squeeze=False, layout="constrained")
    y = np.arange(len(configs))
    for ax, metric in zip(axes[0], metrics):
        stats = [stat(done[done.config == c][metric]) for c in configs]
        ok = [s for s in stats if s.n]
        if not ok:
            ax.set_title(f"{metric}: no data")
            continue
        colors = [style(rec, c)[0] for c in configs]
        if metric == "accuracy":
            for yi, s, color, c in zip(y, stats, colors, configs):
                if s.n:
                    ax.errorbar(s.mean, yi, xerr=ci_half(s) if s.n > 1 else None, fmt=style(rec, c)[1], color=color,
                                ms=5, capsize=2, elinewidth=0.9)
            ax.set_xlim(*_limits(ok, 100.0))
            ax.set_xlabel(f"{rec.split} accuracy (%)\nmean, 95 % CI, axis not from 0")
            ax.xaxis.set_major_locator(MaxNLocator(5))
        else:
            ax.barh(y, [s.mean for s in stats], color=colors, alpha=0.85, height=0.7)
            seeds = [(yi, s) for yi, s in zip(y, stats) if s.n > 1]  # a single seed has no spread to draw
            if seeds:
                ax.errorbar([s.mean for _, s in seeds], [yi for yi, _ in seeds], xerr=[ci_half(s) for _, s in seeds],
                            fmt="none", ecolor="black", capsize=2, lw=0.8)
            ax.set_xlim(0, max(100.0, max(s.mean for s in ok)) * 1.08)
            ax.axvline(100, color="0.3", ls="--", lw=0.8)
            ax.set_xlabel("token-units (% of dense)\ndashed: dense")
        ax.grid(axis="y", visible=False)
    axes[0][0].set_yticks(y, [f"{c} (n={stat(done[done.config == c][metrics[0]]).n})" for c in configs])
    axes[0][0].invert_yaxis()  # study order top to bottom
    fig.suptitle(f"{rec.name}: per-variant ablation", fontsize=9)
    caption = (f"Per variant (mean over seeds, {CI_NOTE}; n = finished seeds): accuracy as points with error bars (the axis does not "
               "start at 0), token-units as % of dense as bars from 0.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def exit_figure(rec: StudyRecords, out: Path) -> Figure:
    """Share of test images exiting at each timestep, per early-exit variant."""
    stem, title = "early_exit", "Early-exit histogram"
    data = rec.details_by_config("exit_histogram")
    if not data:
        return Figure(stem, title, skipped="no run recorded an exit_histogram (no early-exit variant)")
    fig, ax = plt.subplots(figsize=(5.6, 3.0), layout="constrained")
    width = 0.8 / len(data)
    handles, longest = [], 1
    for j, (config, hists) in enumerate(data.items()):
        arr = stack(hists)
        if arr is None:
            continue
        frac = arr / np.clip(arr.sum(1, keepdims=True), 1, None)
        steps = np.arange(1, arr.shape[1] + 1)
        longest = max(longest, len(steps))
        color, _ = style(rec, config)
        ax.bar(steps + (j - (len(data) - 1) / 2) * width, frac.mean(0), width=width, color=color, alpha=0.85,
               yerr=column_ci(frac), capsize=2)
        handles.append(Patch(color=color, alpha=0.85, label=f"{config} (n={len(frac)})"))
    ax.set_xticks(np.arange(1, longest + 1))  # whole timesteps only: an exit happens at step 1, 2, ...
    ax.set_xlabel("exit timestep")
    ax.set_ylabel(f"fraction of {rec.split} images")
    ax.set_title(f"{rec.name}: exit timestep")
    legend_outside(fig, handles, where="right")
    caption = f"details.exit_histogram normalised per run, mean over seeds, {CI_NOTE}."
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def energy_figure(rec: StudyRecords, out: Path) -> Figure:
    """Exact-convention energy per image split by module kind, stacked per variant (means over seeds), one row per
    variant."""
    stem, title = "energy_breakdown", "Energy by module kind"
    cols = [f"energy_exact_uj_{k}" for k in ENERGY_KINDS]
    done = rec.done
    if not all(c in done for c in cols) or done[cols].dropna().empty:
        return Figure(stem, title, skipped="runs.csv has no energy_exact_uj_<stem|attention|mlp|head> columns")
    configs = rec.present(done.dropna(subset=cols))
    fig, ax = plt.subplots(figsize=(ENERGY_WIDTH_IN, _rows_height(len(configs)) + 0.3), layout="constrained")
    y, left = np.arange(len(configs)), np.zeros(len(configs))
    handles = []
    for kind, col, shade in zip(ENERGY_KINDS, cols, ("0.2", "0.45", "0.65", "0.85")):
        vals = np.array([stat(done[done.config == c][col]).mean for c in configs])
        ax.barh(y, vals, left=left, color=shade, edgecolor="black", linewidth=0.4, height=0.6)
        handles.append(Patch(facecolor=shade, edgecolor="black", linewidth=0.4, label=kind))
        left += vals
    ax.set_yticks(y, configs)
    ax.invert_yaxis()  # study order top to bottom
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(f"energy per image ({ENERGY_UNIT}, exact)")
    ax.set_title(f"{rec.name}: energy by module kind")
    legend_outside(fig, handles, where="below")
    caption = (f"energy_exact_uj_<kind>, mean over seeds: E_MAC × MACs + E_AC × exact SOPs per module kind (stem, "
               f"attention incl. QK^T and (QK^T)V, MLP, head), {rec.eval.costs.describe()}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))
