"""Per-variant summary figures: the ablation bars (accuracy, token %), the early-exit histogram and the energy
breakdown by module kind."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from suite.names import ENERGY_KINDS
from suite.report.content import Figure
from suite.report.figures.layers import stack
from suite.report.load import StudyRecords
from suite.report.style import STD_NOTE, Stat, save, stat, style


def _bar_limits(stats: Sequence[Stat], top: float | None = None) -> tuple[float, float]:
    lo = min(s.mean - (s.std if math.isfinite(s.std) else 0) for s in stats)
    hi = max(s.mean + (s.std if math.isfinite(s.std) else 0) for s in stats)
    pad = max(1.0, 0.15 * (hi - lo))
    return max(0.0, lo - pad), hi + pad if top is None else min(top, hi + pad)


def ablation_figure(rec: StudyRecords, out: Path) -> Figure:
    """Accuracy and token % of dense per variant, bars = mean, error bars = std over seeds."""
    stem, title = "ablation", "Ablation: accuracy and tokens per variant"
    done = rec.done
    metrics = [m for m in ("accuracy", "token_pct") if m in done]
    configs = rec.present(done)
    if not configs or not metrics:
        return Figure(stem, title, skipped="no finished run with accuracy or token_pct")
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.6, 1.1 * len(configs) * len(metrics) + 1.5), 3.2),
                             squeeze=False)
    x = np.arange(len(configs))
    for ax, metric in zip(axes[0], metrics):
        stats = [stat(done[done.config == c][metric]) for c in configs]
        ok = [s for s in stats if s.n]
        if not ok:
            ax.set_title(f"{metric}: no data")
            continue
        colors = [style(rec, c)[0] for c in configs]
        ax.bar(x, [s.mean for s in stats], color=colors, alpha=0.85, width=0.7)
        spread = [(xi, s) for xi, s in zip(x, stats) if s.n > 1]
        if spread:
            ax.errorbar([p[0] for p in spread], [p[1].mean for p in spread], yerr=[p[1].std for p in spread], fmt="none",
                        ecolor="black", capsize=3, lw=1)
        if metric == "accuracy":
            ax.set_ylim(*_bar_limits(ok, 100.0))
            ax.set_ylabel("test accuracy (%) [axis not from 0]")
        else:
            ax.set_ylim(0, max(100.0, max(s.mean for s in ok)) * 1.08)
            ax.axhline(100, color="0.3", ls="--", lw=0.8)
            ax.set_ylabel("token-units, % of dense")
        ax.set_xticks(x, [f"{c} (n={s.n})" for c, s in zip(configs, stats)], rotation=30, ha="right")
    fig.suptitle(f"{rec.name}: per-variant ablation", fontsize=9)
    fig.tight_layout()
    caption = f"Bars: {STD_NOTE}; n = finished seeds. The accuracy axis does not start at 0."
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def exit_figure(rec: StudyRecords, out: Path) -> Figure:
    """Share of test images exiting at each timestep, per early-exit variant."""
    stem, title = "early_exit", "Early-exit histogram"
    data = rec.details_by_config("exit_histogram")
    if not data:
        return Figure(stem, title, skipped="no run recorded an exit_histogram (no early-exit variant)")
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    width = 0.8 / len(data)
    for j, (config, hists) in enumerate(data.items()):
        arr = stack(hists)
        if arr is None:
            continue
        frac = arr / np.clip(arr.sum(1, keepdims=True), 1, None)
        steps = np.arange(1, arr.shape[1] + 1)
        color, _ = style(rec, config)
        ax.bar(steps + (j - (len(data) - 1) / 2) * width, frac.mean(0), width=width, color=color, alpha=0.85,
               yerr=frac.std(0, ddof=1) if len(frac) > 1 else None, capsize=2, label=f"{config} (n={len(frac)})")
    ax.set_xlabel("exit timestep")
    ax.set_ylabel("fraction of test images")
    ax.set_title(f"{rec.name}: exit timestep")
    ax.legend(frameon=False)
    fig.tight_layout()
    caption = f"details.exit_histogram normalised per run, {STD_NOTE}."
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def energy_figure(rec: StudyRecords, out: Path) -> Figure:
    """Exact-convention energy per image split by module kind, stacked per variant (means over seeds)."""
    stem, title = "energy_breakdown", "Energy by module kind"
    cols = [f"energy_exact_uj_{k}" for k in ENERGY_KINDS]
    done = rec.done
    if not all(c in done for c in cols) or done[cols].dropna().empty:
        return Figure(stem, title, skipped="runs.csv has no energy_exact_uj_<stem|attention|mlp|head> columns")
    configs = rec.present(done.dropna(subset=cols))
    fig, ax = plt.subplots(figsize=(max(5.6, 0.9 * len(configs) + 2), 3.2))
    x, bottom = np.arange(len(configs)), np.zeros(len(configs))
    for kind, col, shade in zip(ENERGY_KINDS, cols, ("0.2", "0.45", "0.65", "0.85")):
        vals = np.array([stat(done[done.config == c][col]).mean for c in configs])
        ax.bar(x, vals, bottom=bottom, color=shade, edgecolor="black", linewidth=0.4, width=0.6, label=kind)
        bottom += vals
    ax.set_xticks(x, configs, rotation=30, ha="right")
    ax.set_ylabel("energy per image (uJ, exact)")
    ax.set_title(f"{rec.name}: energy by module kind")
    ax.legend(frameon=False, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    caption = (f"energy_exact_uj_<kind>, mean over seeds: E_MAC x MACs + E_AC x exact SOPs per module kind (stem, "
               f"attention incl. QK^T and (QK^T)V, MLP, head), {rec.eval.energy.describe()}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))
