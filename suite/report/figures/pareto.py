"""Accuracy against each cost (token-units, timesteps, energy): variant means ± std over seeds, their
non-dominated front, evaluation-override sweeps and published reference markers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from suite.report.content import Figure
from suite.report.load import StudyRecords, off_split_note
from suite.report.published import published_points
from suite.report.style import plain_axes, save, stat, style

OFF_AXES = 10.0  # accuracy points shown below the lowest variant (mean - std) in the accuracy-vs-cost figures


@dataclass(frozen=True)
class ParetoAxis:
    metric: str
    stem: str
    title: str
    label: str


def pareto_axes(energy: str) -> tuple[ParetoAxis, ...]:
    """The three cost axes; ``energy`` names the energy per operation in its label (``EnergyConfig.describe()``)."""
    return (
        ParetoAxis("token_units", "accuracy_vs_tokens", "Accuracy vs token-units",
                   "token-units per image (active tokens summed over blocks x timesteps)"),
        ParetoAxis("timesteps_mean", "accuracy_vs_timesteps", "Accuracy vs timesteps",
                   "mean active timesteps (mean over modules; mean exit step for early exit)"),
        ParetoAxis("energy_exact_uj", "accuracy_vs_energy", "Accuracy vs energy",
                   f"energy per image (uJ, exact SOP convention, {energy})"),
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (lower cost x, higher accuracy y), sorted by cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _sweep(rec: StudyRecords, ax, config: str, metric: str) -> list[tuple[float, float]]:
    """One variant's evaluation overrides as a dashed curve through (trained, override means); returns the
    override points."""
    ev = rec.evals
    if ev is None or metric not in ev or "accuracy" not in ev:
        return []
    mine = ev[(ev.config == config)].dropna(subset=[metric, "accuracy"])
    if mine.empty:
        return []
    means = mine.groupby("override", sort=True)[[metric, "accuracy"]].mean()
    base = rec.done[rec.done.config == config][[metric, "accuracy"]].dropna().mean()
    pts = sorted([(float(base[metric]), float(base["accuracy"]))] +
                 [(float(r[metric]), float(r["accuracy"])) for _, r in means.iterrows()])
    color, _ = style(rec, config)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=0.9, marker=".", ms=4, color=color, alpha=0.8,
            zorder=2)
    return [(float(r[metric]), float(r["accuracy"])) for _, r in means.iterrows()]


def pareto_figure(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, published_note: str,
                  out: Path) -> Figure:
    """Accuracy vs one cost: variant means ± std over seeds, their non-dominated front, override sweeps,
    published reference markers."""
    done = rec.done
    if axis.metric not in done or "accuracy" not in done or done[[axis.metric, "accuracy"]].dropna().empty:
        return Figure(axis.stem, axis.title, skipped=f"no finished run has both accuracy and {axis.metric}")
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    means, lows, swept = [], [], []
    for config in rec.present(done):
        g = done[done.config == config]
        sx, sy = stat(g[axis.metric]), stat(g["accuracy"])
        if sx.n == 0 or sy.n == 0:
            continue
        color, marker = style(rec, config)
        ax.errorbar(sx.mean, sy.mean, xerr=sx.std if sx.n > 1 else None, yerr=sy.std if sy.n > 1 else None, fmt=marker,
                    color=color, capsize=3, ms=6, zorder=4, label=f"{config} (n={sy.n})")
        means.append((sx.mean, sy.mean))
        lows.append(sy.mean - (sy.std if sy.n > 1 else 0.0))
        swept += _sweep(rec, ax, config, axis.metric)
    sweeps = len(swept)
    # Overrides that collapse accuracy (a threshold far out of range) would squash every variant into the top
    # of the axes: the axes stop OFF_AXES points below the lowest variant, and the caption counts what is cut.
    floor = min(lows, default=0.0) - OFF_AXES
    cut = sum(1 for _, y in swept if y < floor)
    if cut:
        ax.set_ylim(bottom=floor)
    front = pareto_front(means)
    overrides = ", ".join(sorted(rec.evals.override.astype(str).unique())) if rec.evals is not None else ""
    handles = [Line2D([], [], color="0.25", lw=1.2, drawstyle="steps-post", label="non-dominated front (variant means)")]
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.25", lw=1.2, zorder=3)
    if sweeps:
        handles.append(Line2D([], [], color="0.4", ls="--", marker=".", lw=0.9,
                              label="evaluation overrides (mean over seeds)"))
    pub = published_points(published, axis.metric, done)
    if not pub.empty:
        handles.append(ax.scatter(pub.x, pub.accuracy, marker="o", s=36, facecolors="none", edgecolors="black",
                                  linewidths=1.0, zorder=5, label="published (other backbone/dataset)"))
        for i, row in enumerate(pub.itertuples(), 1):
            ax.annotate(f"P{i}", (row.x, row.accuracy), xytext=(4, 2), textcoords="offset points", fontsize=5)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{rec.name}: {axis.title.lower()}")
    plain_axes(ax)
    own, labels = ax.get_legend_handles_labels()
    pairs = [(h, lab) for h, lab in zip(own, labels) if h not in handles] + [(h, h.get_label()) for h in handles]
    ax.legend([p[0] for p in pairs], [p[1] for p in pairs], frameon=False, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    pub_note = published_note
    if published is not None and pub.empty:
        pub_note = f"Published numbers for {rec.dataset} give no value on this axis; none drawn."
    elif not pub.empty:
        pub_note += " Key: " + "; ".join(f"P{i} {r.method} ({r.backbone}; confidence: {r.confidence})"
                                         for i, r in enumerate(pub.itertuples(), 1)) + "."
    caption = (f"Points: variant means, error bars: sample std over seeds (ddof=1). Step line: non-dominated front "
               f"over the variant means (lower {axis.metric}, higher accuracy). "
               + (f"Dashed curves: evaluation overrides from evals.csv ({overrides}), mean over seeds, joined "
                  "with the as-trained point in order of cost (numbers in evals.md). " if sweeps
                  else "No evaluation overrides recorded. ")
               + (f"{cut} override point(s) below {floor:.1f} % accuracy lie under the axes (numbers in evals.md). "
                  if cut else "")
               + "".join(f"{n} " for n in off_split_note(rec))
               + pub_note)
    return Figure(axis.stem, f"{axis.title} ({axis.metric})", caption, tuple(save(fig, out, axis.stem)))
