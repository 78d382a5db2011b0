"""Energy sensitivity: each variant's energy relative to its reference under every convention
(``suite.config.energy.CONVENTIONS``), as a table, a figure and one generated sentence per study saying whether a
conclusion changes with the convention.

A variant's *reference* is the dense model it should be compared with: among the study's dense variants (no token
or time policy, nothing applied at evaluation) with the same model overrides apart from ``T``, the one with the
largest T; that variant is itself not listed. A point is a config (variant plus non-seed matrix axes): its
reference is the reference variant's config at the same axis values. Ratios are of means over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from suite.config import CONVENTIONS, Study, VariantConfig, energy_column
from suite.report.content import Figure, Table
from suite.report.load import StudyRecords, axis_columns
from suite.report.style import legend_outside, marker_handle, save, variant_style

STEM, TITLE = "energy_sensitivity", "Energy relative to the reference under every convention"
WIDTH_IN = 6.5


def _dense(v: VariantConfig) -> bool:
    return not v.tokens.enabled and v.time.mask is None and v.time.exit is None and not v.eval.get("apply")


def _shape(v: VariantConfig) -> dict:
    return {k: val for k, val in v.model.items() if k != "T"}


def reference_variants(study: Study) -> dict[str, str]:
    """variant -> its reference variant (module docstring); a reference and a variant with none are left out."""
    def T(v: VariantConfig) -> int:
        return int(v.model.get("T", study.model.T))

    out = {}
    for name, v in study.variants.items():
        candidates = [(T(c), -i, n) for i, (n, c) in enumerate(study.variants.items())
                      if _dense(c) and _shape(c) == _shape(v)]
        if not candidates:
            continue
        ref = max(candidates)[2]
        if ref != name:
            out[name] = ref
    return out


def sensitivity_frame(rec: StudyRecords) -> pd.DataFrame:
    """One row per listed config: ``config``, ``reference`` and, per convention, the ratio of mean energies (NaN where
    either side lacks the column: records counted before the convention)."""
    if rec.study is None:
        return pd.DataFrame()
    refs = reference_variants(rec.study)
    done = rec.done
    axes = [a for a in axis_columns(done, rec.study.matrix) if a != "seed" and a in done]
    rows = []
    for config in rec.present(done):
        g = done[done.config == config]
        variant = str(g.variant.iloc[0])
        if variant not in refs:
            continue
        same = done.variant == refs[variant]
        for a in axes:
            same &= done[a].astype(str) == str(g[a].iloc[0])
        r = done[same]
        if r.empty:
            continue
        row = {"config": config, "reference": str(r.config.iloc[0])}
        for name in CONVENTIONS:
            col = energy_column(name)
            if col in done and g[col].notna().all() and r[col].notna().all():
                row[name] = float(g[col].mean()) / float(r[col].mean())
            else:
                row[name] = math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["config", "reference", *CONVENTIONS])


def conclusion_sentence(frame: pd.DataFrame, primary: str) -> str:
    """Whether a conclusion changes with the convention: which configs save energy against their reference (ratio
    < 1) under the primary convention, whether that holds under every other convention that the records give for
    that config, and how well each convention keeps the order of the configs (Spearman's rank correlation)."""
    if frame.empty:
        return "No variant has a dense reference in this study: no energy comparison to test."
    if frame[primary].isna().any():
        return f"The primary convention {primary} is not recorded for every config: rerun or migrate the records."
    saves = frame[primary] < 1
    changed: dict[str, list[str]] = {}  # config -> the conventions under which it crosses 1x, in convention order
    ranks, absent = [], []
    for conv in CONVENTIONS:
        if conv == primary:
            continue
        known = frame[frame[conv].notna()]
        if len(known) < len(frame):
            absent.append(f"{conv} ({len(frame) - len(known)} of {len(frame)})")
        for _, row in known.iterrows():
            if (row[conv] < 1) != (row[primary] < 1):
                changed.setdefault(row.config, [f"{row[primary]:.3f}x under {primary}"]).append(
                    f"{row[conv]:.3f}x under {conv}")
        if len(known) > 2:
            rho = known[primary].rank().corr(known[conv].rank())
            if rho < 1:
                ranks.append(f"{conv} {rho:.2f}")
    text = f"Under {primary}, {int(saves.sum())} of {len(frame)} configs use less energy than their reference. "
    flips = [f"{config} ({', '.join(where)})" for config, where in changed.items()]
    if flips:
        text += ("Whether a config saves energy changes with the convention for " + "; ".join(flips[:8])
                 + (f" and {len(flips) - 8} more" if len(flips) > 8 else "") + ". ")
    else:
        text += "No config changes between saving and not saving energy under any recorded convention. "
    text += ("The order of the configs by relative energy is the same under every convention. " if not ranks else
             "Rank correlation of that order with the primary's: " + ", ".join(ranks) + ". ")
    if absent:
        text += "Not recorded (configs lacking it; a rerun adds it): " + ", ".join(absent) + "."
    return text.strip()


def sensitivity_table(rec: StudyRecords, frame: pd.DataFrame | None = None) -> Table | None:
    """The ratios as a table (None when no variant has a reference), with the conclusion sentence as a note."""
    frame = sensitivity_frame(rec) if frame is None else frame
    if frame.empty:
        return None
    rows = tuple((row.config, row.reference, *(f"{row[c]:.3f}" if not math.isnan(row[c]) else "n/a"
                                                for c in CONVENTIONS)) for _, row in frame.iterrows())
    notes = (conclusion_sentence(frame, rec.energy_convention),
             "Each cell: mean energy per image of the config / that of its reference (the dense variant with the same "
             "model settings at the largest T), under that convention (energy_<convention>_uj; docs/counting.md). "
             "n/a: a record counted before the convention (python -m suite.records_migrate names what a rerun adds).")
    return Table(f"{rec.name}: {TITLE.lower()}", ("config", "reference", *CONVENTIONS), rows, notes, labels=2)


def sensitivity_figure(rec: StudyRecords, out: Path, frame: pd.DataFrame | None = None) -> Figure:
    """One row per config, one marker per convention: energy relative to its reference (1 = the reference)."""
    frame = sensitivity_frame(rec) if frame is None else frame
    if frame.empty:
        return Figure(STEM, TITLE, skipped="no variant has a dense reference (module suite.report.energy)")
    names = [c for c in CONVENTIONS if frame[c].notna().any()]
    y = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.32 * len(frame) + 1.2), layout="constrained")
    handles = []
    for i, name in enumerate(names):
        color, marker = variant_style(i)
        ax.scatter(frame[name], y + (i - (len(names) - 1) / 2) * 0.08, color=color, marker=marker, s=18, zorder=3)
        handles.append(marker_handle(color, marker, name))
    ax.axvline(1.0, color="black", linewidth=0.6)
    ax.set_yticks(y, frame.config)
    ax.invert_yaxis()
    ax.set_xlabel("energy per image / reference's (1 = reference)")
    ax.set_title(f"{rec.name}: energy relative to the reference")
    legend_outside(fig, handles, where="below")
    caption = (conclusion_sentence(frame, rec.energy_convention) + " Conventions: docs/counting.md; primary: "
               f"{rec.energy_convention}.")
    return Figure(STEM, TITLE, caption, tuple(save(fig, out, STEM)))
