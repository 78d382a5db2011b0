"""The temporal-similarity figure: STAS's diagnostic (arXiv 2508.14138), the mean cosine similarity of each block's
input tokens at consecutive timesteps, per block and variant (``details["temporal_similarity"]``, recorded by every
evaluation with T > 1; ``suite.models.context.Context.observe_block_input``). A block where the value holds by
construction (block 0 behind a stem run once: ``suite.metrics.similarity_by_construction``) is drawn hollow and left
out of every mean the records report."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from suite.metrics import similarity_by_construction, temporal_similarity_mean
from suite.report.content import Figure
from suite.report.figures.layers import ordered_layers
from suite.report.load import StudyRecords
from suite.report.style import (
    CI_NOTE,
    LEGEND_ROW_IN,
    MAX_WIDTH_IN,
    column_ci,
    legend_outside,
    legend_rows,
    marker_handle,
    save,
    style,
    width_for_legend_below,
)

KEY = "temporal_similarity"  # details key: block name -> mean cosine similarity of consecutive timesteps


def _label(config: str, sims: list[dict], stem: str) -> str:
    """``config (n=2, mean 0.81)``: the mean over seeds of each run's mean over the blocks that measure something."""
    means = [m for m in (temporal_similarity_mean(s, stem) for s in sims) if m is not None]
    return f"{config} (n={len(sims)}" + (f", mean {np.mean(means):.2f})" if means else ")")


def temporal_figure(rec: StudyRecords, out: Path) -> Figure | None:
    """Mean temporal similarity per block, one line per variant (mean over seeds, t-interval error bars); values
    that hold by construction hollow.

    None when no finished run recorded it: the records predate the diagnostic (or every run has T = 1, where it
    is undefined), so the page does not list the figure at all (``build_figures``)."""
    stem, title = "temporal_similarity", "Temporal similarity of block inputs"
    data = rec.details_by_config(KEY)
    if not data:
        return None
    blocks = ordered_layers(d for runs in data.values() for d in runs)
    stems = {config: str(rec.config_model(config, "stem", "per_step")) for config in data}
    handles = [marker_handle(*style(rec, config), _label(config, sims, stems[config]), ms=4, line=True)
               for config, sims in data.items()]
    constant = {config: similarity_by_construction(stems[config], blocks) for config in data}
    if any(constant.values()):
        handles.append(marker_handle("0.3", "o", "hollow: 1.0 by construction (stem run once), not in means",
                                     ms=4, hollow=True))
    width = width_for_legend_below(min(MAX_WIDTH_IN, max(5.6, 0.6 * len(blocks) + 3.0)), handles)
    fig, ax = plt.subplots(figsize=(width, 3.0 + LEGEND_ROW_IN * legend_rows(handles, width)), layout="constrained")
    x = np.arange(len(blocks))
    # a small offset per variant keeps error bars apart where variants agree (x is a block, not a quantity)
    spread = min(0.4, 0.05 * len(data))
    offsets = np.linspace(-spread / 2, spread / 2, len(data)) if len(data) > 1 else np.zeros(1)
    lows = [0.0]
    for off, (config, sims) in zip(offsets, data.items()):
        arr = np.array([[s.get(b, np.nan) for b in blocks] for s in sims], dtype=np.float64)
        seen = (~np.isnan(arr)).sum(0)
        mean = np.array([np.nanmean(arr[:, j]) if seen[j] else np.nan for j in range(len(blocks))])
        err = column_ci(arr)
        color, marker = style(rec, config)
        ax.errorbar(x + off, mean, yerr=err, color=color, marker=marker, ms=4, lw=1, capsize=2,
                    label=f"{config} (n={len(arr)})")
        fixed = [blocks.index(b) for b in constant[config]]
        if fixed:  # drawn, but hollow: a reader must not take it for a measurement
            ax.plot(x[fixed] + off, mean[fixed], ls="none", marker=marker, ms=6, mfc="white", mec=color, zorder=5)
        lows.append(float(np.nanmin(mean - (np.nan_to_num(err) if err is not None else 0.0))))
    ax.set_xticks(x, blocks)
    ax.set_xlabel("block (its input tokens)")
    ax.set_ylabel("cosine similarity, step t vs t+1")
    ax.set_ylim(min(lows) - 0.05 if min(lows) < 0 else 0.0, 1.02)
    ax.set_title(f"{rec.name}: temporal similarity of block inputs")
    legend_outside(fig, handles, where="below")
    caption = ("details.temporal_similarity: for each block, the cosine similarity of every token's input vector at "
               "consecutive timesteps (t, t+1), averaged over token pairs and the evaluated images; token pairs that "
               "are all zero at both steps have no direction and are left out; halted tokens count. STAS's "
               "diagnostic (arXiv 2508.14138): ACT halting assumes consecutive timesteps see similar tokens. A stem "
               "run once (model.stem once or integrate) feeds every step the same tokens, so block 0's value is 1.0 "
               "by construction: drawn hollow, and left out of the mean in the legend and in runs.csv "
               f"(temporal_similarity). Points: mean over seeds; {CI_NOTE} (runs with T = 1 record none).")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))
