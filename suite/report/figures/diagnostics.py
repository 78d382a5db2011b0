"""Dataset-level token diagnostics (``suite.diagnostics``, recorded in ``details``): the share of foreground and
background tokens each variant keeps active per block and timestep, and the rank correlation of a token's units with
its occlusion importance. Records that predate them carry neither; the page then leaves these figures off."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from suite.report.content import Figure
from suite.report.load import StudyRecords
from suite.report.style import STD_NOTE, legend_outside, marker_handle, panels, save, style

FG_KEY, OCC_KEY = "foreground", "occlusion"  # details keys


def mean_std(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over seeds (rows) and the sample std (None for a single seed)."""
    arr = np.asarray(rows, dtype=np.float64)
    return arr.mean(0), (arr.std(0, ddof=1) if len(arr) > 1 else None)


def foreground_figure(rec: StudyRecords, out: Path) -> Figure | None:
    """One panel per variant: % of foreground (solid) and background (dashed) tokens active at each unit."""
    stem, title = "foreground_active", "Foreground vs background tokens still active"
    data = rec.details_by_config(FG_KEY)
    if not data:
        return None
    fig, axes = panels(len(data), 3.6, 2.3, most_columns=2)
    rule = ""
    for ax, (config, runs) in zip(axes, data.items()):
        color, marker = style(rec, config)
        L, T = np.asarray(runs[0]["fg_active_pct"]).shape
        x = np.arange(L * T)
        for key, ls in (("fg_active_pct", "-"), ("bg_active_pct", "--")):
            mean, std = mean_std([np.asarray(r[key]).reshape(-1) for r in runs])
            ax.errorbar(x, mean, yerr=std, color=color, marker=marker, ms=3, lw=1, ls=ls, capsize=2)
        ax.set_xticks(x, [f"b{b}t{t + 1}" for b in range(L) for t in range(T)], fontsize=6, rotation=90)
        ax.set_ylim(-3, 103)
        ax.set_ylabel("% of tokens active")
        ax.set_title(f"{config} (n={len(runs)})", fontsize=8)
        rule = runs[0]["rule"]
    legend_outside(fig, [Line2D([], [], color="0.3", ls="-", label="foreground tokens"),
                         Line2D([], [], color="0.3", ls="--", label="background tokens")], where="below")
    fig.suptitle(f"{rec.name}: foreground vs background tokens active per block (b) and timestep (t)", fontsize=8)
    caption = (f"details.foreground: per unit (block b, timestep t, in processing order), the % of foreground "
               f"(solid) and background (dashed) token positions of the whole evaluation split that the block "
               f"processed; a gate that halts background first keeps the dashed line below the solid one. {rule}. "
               f"{STD_NOTE}; n = seeds.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def occlusion_figure(rec: StudyRecords, out: Path) -> Figure | None:
    """Per variant: the per-seed Spearman correlations of token units with occlusion importance, and their mean."""
    stem, title = "occlusion_spearman", "Token units vs occlusion importance"
    data = rec.details_by_config(OCC_KEY)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(3.5, 0.7 * len(data) + 1.5), 2.8), layout="constrained")
    handles, rule = [], ""
    for i, (config, runs) in enumerate(data.items()):
        color, marker = style(rec, config)
        per_seed = [float(np.mean(r["spearman"])) if r["spearman"] else np.nan for r in runs]
        ax.scatter(np.full(len(per_seed), i), per_seed, color=color, marker=marker, s=14, alpha=0.6)
        if not np.isnan(per_seed).all():  # a seed whose images all kept every token (or none) has no correlation
            ax.hlines(np.nanmean(per_seed), i - 0.3, i + 0.3, color=color, lw=1.5)
        n = [r["n"] for r in runs]
        handles.append(marker_handle(color, marker, f"{config}: n = {min(n)}-{max(n)} of {runs[0]['images']} "
                                                    f"images, {len(runs)} seeds"))
        rule = runs[0]["rule"]
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xticks(range(len(data)), list(data), rotation=30, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman ρ (units, importance)")
    ax.set_title(f"{rec.name}: do kept tokens matter for the decision?")
    legend_outside(fig, handles, where="below")
    caption = (f"details.occlusion: dots = one seed's mean per-image Spearman rank correlation between a token's "
               f"processed units and its occlusion importance, bar = mean over seeds; n = images where both vary "
               f"(of the fixed subset). {rule}. ρ > 0: the policy spends more units on the tokens the decision "
               f"depends on.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def diagnostic_figures(rec: StudyRecords, out: Path) -> list[Figure]:
    """The diagnostics figures the records support (none for records that predate them)."""
    return [f for f in (foreground_figure(rec, out), occlusion_figure(rec, out)) if f is not None]
