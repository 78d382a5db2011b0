"""Accuracy against each cost (token-units, timesteps, energy): variant means ± std over seeds, their
non-dominated front, evaluation-override sweeps and published reference markers; the report's figure and the
paper figures (one and two columns wide, legend outside the data) are drawn by the same ``draw_pareto``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from suite.config import TimeConfig, TokenConfig, energy_column
from suite.names import PRIMARY_ENERGY_CONVENTION
from suite.report.content import Figure
from suite.report.figures.marks import dodge, mark_clipped, place_labels
from suite.report.load import StudyRecords, off_split_note
from suite.report.published import published_points
from suite.report.style import (
    COLUMN_IN,
    DENSE_EDGE,
    DOUBLE_COLUMN_IN,
    ENERGY_UNIT,
    LEGEND_FONT_PT,
    LEGEND_ROW_IN,
    PAPER_LEGEND_FONT_PT,
    legend_outside,
    legend_rows,
    marker_handle,
    plain_axes,
    save,
    stat,
    style,
    variant_handle,
    width_for_legend_below,
    width_with_legend,
)

OFF_AXES = 10.0  # accuracy points shown below the lowest variant (mean - std) in the accuracy-vs-cost figures
AXES_IN = (4.7, 3.5)  # the report figure's axes (the legend goes beside or under them)
PAPER_AXES_HEIGHT_IN = {"1col": 2.3, "2col": 2.6}
PAPER_WIDTH_IN = {"1col": COLUMN_IN, "2col": DOUBLE_COLUMN_IN}
PUBLISHED_LABEL = "published (P1, P2...)"


@dataclass(frozen=True)
class ParetoAxis:
    metric: str
    stem: str
    title: str
    label: str
    short: str  # the label of a one-column paper figure
    published_in_range: bool  # published values on the same scale as ours: they widen the axis (else: edge marks)


def pareto_axes(energy: str, convention: str = PRIMARY_ENERGY_CONVENTION) -> tuple[ParetoAxis, ...]:
    """The three cost axes; ``energy`` names the energy per operation in its label (``EnergyConfig.describe()``), and
    the energy axis shows the study's primary ``convention`` (``report.energy_convention``).
    Published energies come from models hundreds of times larger: they would squash every point of ours into one
    corner, so the energy axis keeps our range and counts them at its edge."""
    return (
        ParetoAxis("token_units", "accuracy_vs_tokens", "Accuracy vs token-units",
                   "token-units per image (active tokens summed over blocks × timesteps)", "token-units per image",
                   True),
        ParetoAxis("timesteps_mean", "accuracy_vs_timesteps", "Accuracy vs timesteps",
                   "mean active timesteps (mean over modules; mean exit step for early exit)",
                   "mean active timesteps", True),
        ParetoAxis(energy_column(convention), "accuracy_vs_energy", "Accuracy vs energy",
                   f"energy per image ({ENERGY_UNIT}, {convention} convention, {energy})"
                   if convention != PRIMARY_ENERGY_CONVENTION else
                   f"energy per image ({ENERGY_UNIT}, exact SOP convention, {energy})",
                   f"energy per image ({ENERGY_UNIT})", False),
    )


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (lower cost x, higher accuracy y), sorted by cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def dense_configs(rec: StudyRecords) -> set[str]:
    """Configs of the dense reference: variants with no token or time policy, no timestep override and no policy
    applied at evaluation (``eval.apply``, e.g. ToMe on a dense checkpoint), by study.yaml; without one, variants
    named ``dense*``. They are drawn on top of every other point."""
    by_variant = rec.runs.drop_duplicates("config").set_index("config")["variant"].astype(str)
    dense = set()
    for config, variant in by_variant.items():
        v = rec.variants.get(variant)
        if v is not None:
            plain = (v.tokens == TokenConfig() and v.time == TimeConfig() and "T" not in v.model
                     and not v.eval.get("apply"))
        else:
            plain = variant.startswith("dense")
        if plain:
            dense.add(str(config))
    return dense


@dataclass
class Drawn:
    """What ``draw_pareto`` drew, for the legend and the caption."""

    handles: list = field(default_factory=list)
    sweeps: int = 0  # override points drawn
    cut: int = 0  # override points outside the axes (counted at the edge)
    floor: float | None = None  # the accuracy the axes stop at, when override points lie below it
    published: pd.DataFrame | None = None
    published_out: int = 0  # published points outside the axes (counted at the edge)
    dodged: bool = False  # points sharing an x were spread sideways
    dense: bool = False  # a dense reference was drawn (outlined, on top)


def _sweep(rec: StudyRecords, ax, config: str, metric: str, start: tuple[float, float]) -> list[tuple[float, float]]:
    """One variant's evaluation overrides as a dashed curve from its drawn as-trained point ``start`` through the
    override means, in order of cost; returns the override points."""
    ev = rec.evals
    if ev is None or metric not in ev or "accuracy" not in ev:
        return []
    mine = ev[(ev.config == config)].dropna(subset=[metric, "accuracy"])
    if mine.empty:
        return []
    means = mine.groupby("override", sort=True)[[metric, "accuracy"]].mean()
    overrides = [(float(r[metric]), float(r["accuracy"])) for _, r in means.iterrows()]
    pts = sorted([start] + overrides)
    color, _ = style(rec, config)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=0.9, marker=".", ms=4, color=color, alpha=0.8,
            zorder=2)
    return overrides


def _variants(rec: StudyRecords, metric: str) -> list[tuple[str, object, object]]:
    """(config, x stat, accuracy stat) of each finished config with both, in study order."""
    done = rec.done
    out = []
    for config in rec.present(done):
        g = done[done.config == config]
        sx, sy = stat(g[metric]), stat(g["accuracy"])
        if sx.n and sy.n:
            out.append((config, sx, sy))
    return out


def draw_pareto(ax, rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None) -> Drawn:
    """Accuracy vs ``axis`` on ``ax``: variants (points sharing an x dodged, the dense reference on top), their
    non-dominated front, override sweeps, published markers; points beyond the axes counted at the edge."""
    drawn = Drawn()
    variants = _variants(rec, axis.metric)
    dense = dense_configs(rec)
    xs = dodge([sx.mean for _, sx, _ in variants])
    drawn.dodged = any(abs(a - sx.mean) > 0 for a, (_, sx, _) in zip(xs, variants))
    means, lows, swept = [], [], {}
    for x, (config, sx, sy) in zip(xs, variants):
        color, marker = style(rec, config)
        is_dense = config in dense
        drawn.dense |= is_dense
        ax.errorbar(x, sy.mean, xerr=sx.std if sx.n > 1 else None, yerr=sy.std if sy.n > 1 else None, fmt=marker,
                    color=color, ecolor=color, elinewidth=0.9, capsize=2, ms=6 if is_dense else 5,
                    mec=DENSE_EDGE if is_dense else color, zorder=6 if is_dense else 4)
        drawn.handles.append(variant_handle(rec, config, f"{config} (n={sy.n})", dense=is_dense))
        means.append((sx.mean, sy.mean))
        lows.append(sy.mean - (sy.std if sy.n > 1 else 0.0))
        swept[config] = _sweep(rec, ax, config, axis.metric, (x, sy.mean))
    drawn.sweeps = sum(len(v) for v in swept.values())
    front = pareto_front(means)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.25", lw=1.2, zorder=3)
    drawn.handles.append(Line2D([], [], color="0.25", lw=1.2, drawstyle="steps-post",
                                    label="front (variant means)"))
    if drawn.sweeps:
        drawn.handles.append(Line2D([], [], color="0.4", ls="--", marker=".", lw=0.9,
                                        label="overrides (mean over seeds)"))
    pub = published_points(published, axis.metric, rec.done)
    drawn.published = pub

    def draw_published() -> None:
        ax.scatter(pub.x, pub.accuracy, marker="o", s=30, facecolors="none", edgecolors="black", linewidths=1.0,
                   zorder=5)

    if not pub.empty and axis.published_in_range:
        draw_published()
    plain_axes(ax)
    # Overrides that collapse accuracy (a threshold far out of range) would squash every variant into the top
    # of the axes: the axes stop OFF_AXES points below the lowest variant, and the edge counts what is cut.
    floor = min(lows, default=0.0) - OFF_AXES
    if any(y < floor for pts in swept.values() for _, y in pts):
        ax.set_ylim(bottom=floor)
        drawn.floor = floor
    ax.set_xlim(*ax.get_xlim())  # frozen: what follows is drawn within these limits or counted at the edge
    ax.set_ylim(*ax.get_ylim())
    if not pub.empty and not axis.published_in_range:
        draw_published()
    taken: list = []
    drawn.cut = sum(mark_clipped(ax, pts, style(rec, c)[0], taken) for c, pts in swept.items())
    if not pub.empty:
        drawn.published_out = mark_clipped(ax, list(zip(pub.x, pub.accuracy)), "black", taken)
        drawn.handles.append(marker_handle("black", "o", PUBLISHED_LABEL, hollow=True))
    if drawn.cut or drawn.published_out:
        drawn.handles.append(marker_handle("0.3", "v", "off the axes (count at edge)", ms=4))
    return drawn


def _label_published(ax, drawn: Drawn) -> None:
    """``P1``, ``P2``... beside the published markers inside the axes, placed so that none overlaps another."""
    pub = drawn.published
    if pub is None or pub.empty:
        return
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    inside = [(i, (r.x, r.accuracy)) for i, r in enumerate(pub.itertuples(), 1)
              if x0 <= r.x <= x1 and y0 <= r.accuracy <= y1]
    if inside:
        place_labels(ax, [p for _, p in inside], [f"P{i}" for i, _ in inside], fontsize=5)


def _caption(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, published_note: str,
             drawn: Drawn) -> str:
    pub = drawn.published
    overrides = ", ".join(sorted(rec.evals.override.astype(str).unique())) if rec.evals is not None else ""
    pub_note = published_note
    if published is not None and (pub is None or pub.empty):
        pub_note = f"Published numbers for {rec.dataset} give no value on this axis; none drawn."
    elif pub is not None and not pub.empty:
        pub_note += " Key: " + "; ".join(f"P{i} {r.method} ({r.backbone}; confidence: {r.confidence})"
                                         for i, r in enumerate(pub.itertuples(), 1)) + "."
        if drawn.published_out:
            pub_note += (f" {drawn.published_out} published point(s) lie beyond this axis's range (other models' "
                         "scale) and are counted at its edge.")
    return ("Points: variant means, error bars: sample std over seeds (ddof=1)"
            + ("; the dense reference is outlined in black and drawn on top" if drawn.dense else "")
            + f". Step line: non-dominated front over the variant means (lower "
            f"{axis.metric}, higher accuracy). "
            + ("Points that share an x are spread slightly sideways so none hides another (the front and "
               "table.md use the true values). " if drawn.dodged else "")
            + (f"Dashed curves: evaluation overrides from evals.csv ({overrides}), mean over seeds, joined "
               "with the as-trained point in order of cost (numbers in evals.md). " if drawn.sweeps
               else "No evaluation overrides recorded. ")
            + (f"{drawn.cut} override point(s) below {drawn.floor:.1f} % accuracy lie under the axes, counted at "
               "the edge (▼n, in the variant's colour; numbers in evals.md). " if drawn.cut and drawn.floor is not None
               else f"{drawn.cut} override point(s) lie beyond the axes, counted at the edge. " if drawn.cut else "")
            + "".join(f"{n} " for n in off_split_note(rec))
            + pub_note)


def _has_data(rec: StudyRecords, axis: ParetoAxis) -> bool:
    done = rec.done
    return axis.metric in done and "accuracy" in done and not done[[axis.metric, "accuracy"]].dropna().empty


def pareto_figure(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, published_note: str,
                  out: Path) -> Figure:
    """The report's accuracy-vs-cost figure: legend right of the axes when it fits the page width, else below."""
    if not _has_data(rec, axis):
        return Figure(axis.stem, axis.title, skipped=f"no finished run has both accuracy and {axis.metric}")
    fig, ax = plt.subplots(figsize=AXES_IN, layout="constrained")
    drawn = draw_pareto(ax, rec, axis, published)
    ax.set_xlabel(axis.label)
    ax.set_ylabel(f"{rec.split} accuracy (%)")
    ax.set_title(f"{rec.name}: {axis.title.lower()}")
    width = width_with_legend(AXES_IN[0], drawn.handles)
    if width is not None:
        fig.set_figwidth(width)
        legend_outside(fig, drawn.handles, where="right")
    else:  # long labels (matrix axes): the legend under the axes, widened to the page when that saves rows
        width = width_for_legend_below(AXES_IN[0] + 1.0, drawn.handles)
        fig.set_figwidth(width)
        fig.set_figheight(AXES_IN[1] + LEGEND_ROW_IN * legend_rows(drawn.handles, width))
        legend_outside(fig, drawn.handles, where="below")
    _label_published(ax, drawn)
    caption = _caption(rec, axis, published, published_note, drawn)
    return Figure(axis.stem, f"{axis.title} ({axis.metric})", caption, tuple(save(fig, out, axis.stem)))


def paper_figures(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, out: Path) -> list[Path]:
    """``<stem>_1col.pdf`` (3.5 in wide, legend below) and ``<stem>_2col.pdf`` (7.16 in wide, legend right) for a
    paper: the report figure without its title (the paper's caption says it), at the exact column width."""
    if not _has_data(rec, axis):
        return []
    paths = []
    for size in ("1col", "2col"):
        width, height = PAPER_WIDTH_IN[size], PAPER_AXES_HEIGHT_IN[size]
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        drawn = draw_pareto(ax, rec, axis, published)
        ax.set_xlabel(axis.short if size == "1col" else axis.label)
        ax.set_ylabel(f"{rec.split} accuracy (%)")
        if size == "1col":
            rows = legend_rows(drawn.handles, width, PAPER_LEGEND_FONT_PT)
            fig.set_figheight(height + LEGEND_ROW_IN * PAPER_LEGEND_FONT_PT / LEGEND_FONT_PT * rows + 0.1)
            legend_outside(fig, drawn.handles, where="below", font_pt=PAPER_LEGEND_FONT_PT)
        else:
            legend_outside(fig, drawn.handles, where="right")
        _label_published(ax, drawn)
        paths += save(fig, out, f"{axis.stem}_{size}", formats=("pdf",), tight=False)
    return paths
