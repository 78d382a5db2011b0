"""The temporal-similarity figure: STAS's diagnostic (arXiv 2508.14138), the mean cosine similarity of each block's
input tokens at consecutive timesteps, per block and variant (``details["temporal_similarity"]``, recorded by every
evaluation with T > 1; ``suite.models.context.Context.observe_block_input``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from suite.report.content import Figure
from suite.report.figures.layers import ordered_layers
from suite.report.load import StudyRecords
from suite.report.style import (
    LEGEND_ROW_IN,
    MAX_WIDTH_IN,
    STD_NOTE,
    legend_outside,
    legend_rows,
    marker_handle,
    save,
    style,
    width_for_legend_below,
)

KEY = "temporal_similarity"  # details key: block name -> mean cosine similarity of consecutive timesteps


def temporal_figure(rec: StudyRecords, out: Path) -> Figure | None:
    """Mean temporal similarity per block, one line per variant (mean over seeds, sample-std error bars).

    None when no finished run recorded it: the records predate the diagnostic (or every run has T = 1, where it
    is undefined), so the page does not list the figure at all (``build_figures``)."""
    stem, title = "temporal_similarity", "Temporal similarity of block inputs"
    data = rec.details_by_config(KEY)
    if not data:
        return None
    blocks = ordered_layers(d for runs in data.values() for d in runs)
    x = np.arange(len(blocks))
    handles = [marker_handle(*style(rec, config), f"{config} (n={len(sims)})", ms=4, line=True)
               for config, sims in data.items()]
    width = width_for_legend_below(min(MAX_WIDTH_IN, max(5.6, 0.6 * len(blocks) + 3.0)), handles)
    fig, ax = plt.subplots(figsize=(width, 3.0 + LEGEND_ROW_IN * legend_rows(handles, width)), layout="constrained")
    # a small offset per variant keeps error bars apart where variants agree
    spread = min(0.4, 0.05 * len(data))
    offsets = np.linspace(-spread / 2, spread / 2, len(data)) if len(data) > 1 else np.zeros(1)
    lows = [0.0]
    for off, (config, sims) in zip(offsets, data.items()):
        arr = np.array([[s.get(b, np.nan) for b in blocks] for s in sims], dtype=np.float64)
        seen = (~np.isnan(arr)).sum(0)
        mean = np.array([np.nanmean(arr[:, j]) if seen[j] else np.nan for j in range(len(blocks))])
        std = np.array([np.nanstd(arr[:, j], ddof=1) if seen[j] > 1 else np.nan for j in range(len(blocks))])
        color, marker = style(rec, config)
        ax.errorbar(x + off, mean, yerr=None if np.isnan(std).all() else std, color=color, marker=marker, ms=4,
                    lw=1, capsize=2, label=f"{config} (n={len(arr)})")
        lows.append(float(np.nanmin(mean - np.nan_to_num(std))))
    ax.set_xticks(x, blocks)
    ax.set_xlabel("block (its input tokens)")
    ax.set_ylabel("cosine similarity, step t vs t+1")
    ax.set_ylim(min(lows) - 0.05 if min(lows) < 0 else 0.0, 1.02)
    ax.set_title(f"{rec.name}: temporal similarity of block inputs")
    legend_outside(fig, handles, where="below")
    caption = ("details.temporal_similarity: for each block, the cosine similarity of every token's input vector at "
               "consecutive timesteps (t, t+1), averaged over token pairs and the evaluated images; token pairs that "
               "are all zero at both steps have no direction and are left out; halted tokens count. STAS's "
               "diagnostic (arXiv 2508.14138): ACT halting assumes consecutive timesteps see similar tokens; a stem "
               f"run once (model.stem once or integrate) feeds every step the same tokens (1.0 at block0). {STD_NOTE}"
               "; n = seeds that recorded it (runs with T = 1 record none).")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))
