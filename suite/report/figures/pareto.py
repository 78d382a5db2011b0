"""Accuracy against each cost (token-units as % of the dense reference, timesteps, energy): variant means with
95 % t-intervals over seeds, their non-dominated front with a bootstrap band over seeds, evaluation-override sweeps
and published reference markers, in panels of at most six series by family (``facets``); the report's figure and
the paper figures (one and two columns wide, legends outside the data) are drawn by the same ``draw_pareto``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from suite.config import TimeConfig, TokenConfig, energy_column
from suite.names import PRIMARY_ENERGY_CONVENTION
from suite.report.content import Figure
from suite.report.figures.facets import Facet, facets
from suite.report.figures.marks import mark_clipped, place_labels
from suite.report.load import StudyRecords, off_split_note
from suite.report.published import published_points
from suite.report.style import (
    CI_NOTE,
    COLUMN_IN,
    CONFIDENCE,
    DENSE_EDGE,
    DOUBLE_COLUMN_IN,
    ENERGY_UNIT,
    LEGEND_FONT_PT,
    LEGEND_ROW_IN,
    MAX_WIDTH_IN,
    PAPER_LEGEND_FONT_PT,
    Stat,
    ci_half,
    legend_columns,
    legend_outside,
    legend_rows,
    marker_handle,
    panels,
    plain_axes,
    save,
    stat,
    style,
    variant_handle,
    width_for_legend_below,
    width_with_legend,
)

OFF_AXES = 10.0  # accuracy points shown below the lowest variant (mean - CI) in the accuracy-vs-cost figures
AXES_IN = (4.7, 3.5)  # the report figure's axes (the legend goes beside or under them)
PAPER_AXES_HEIGHT_IN = {"1col": 2.3, "2col": 2.6}
PAPER_WIDTH_IN = {"1col": COLUMN_IN, "2col": DOUBLE_COLUMN_IN}
PUBLISHED_LABEL = "published (P1, P2...)"
BOOTSTRAP = 200  # resamples of each variant's seeds behind the front's band
BAND_POINTS = 256  # costs at which the band's attained accuracy is read
PANEL_IN = (3.55, 2.4)  # one panel of a faceted figure (its legend goes under it)


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
    Token-units are drawn as % of the dense reference (``token_pct``, restated against the study's reference T), the
    unit the text speaks in; timesteps and energy keep their own units (published energies are in µJ too).
    Published energies come from models hundreds of times larger: they would squash every point of ours into one
    corner, so the energy axis keeps our range and counts them at its edge."""
    return (
        ParetoAxis("token_pct", "accuracy_vs_tokens", "Accuracy vs token-units",
                   "token-units, % of the dense reference (active tokens summed over blocks × timesteps)",
                   "token-units (% of dense)", True),
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
    series: list = field(default_factory=list)  # the configs drawn as points, in drawing order
    sweeps: int = 0  # override points drawn
    cut: int = 0  # override points outside the axes (counted at the edge)
    floor: float | None = None  # the accuracy the axes stop at, when override points lie below it
    published: pd.DataFrame | None = None
    published_out: int = 0  # published points outside the axes (counted at the edge)
    band: bool = False  # the front's bootstrap band was drawn (some variant has two seeds or more)
    dense: bool = False  # a dense reference was drawn (outlined, on top)


@dataclass(frozen=True)
class Point:
    """One config on an axis: its per-seed (x, accuracy) pairs and their summaries."""

    config: str
    xs: np.ndarray
    ys: np.ndarray
    sx: Stat
    sy: Stat


def _sweep(rec: StudyRecords, ax, config: str, metric: str, start: tuple[float, float]) -> list[tuple[float, float]]:
    """One variant's evaluation overrides as a dashed curve from its as-trained point ``start`` through the
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


def _points(rec: StudyRecords, metric: str, configs: Sequence[str] | None = None) -> list[Point]:
    """Each finished config (of ``configs``; default all) with both values, in study order."""
    done = rec.done
    out = []
    for config in rec.present(done):
        if configs is not None and config not in configs:
            continue
        g = done[done.config == config][[metric, "accuracy"]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(g):
            out.append(Point(config, g[metric].to_numpy(float), g["accuracy"].to_numpy(float), stat(g[metric]),
                             stat(g["accuracy"])))
    return out


def attained(points: Sequence[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    """The front's accuracy at each cost of ``grid``: the best accuracy of a point costing at most that (NaN left
    of every point)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    best = np.where(pts[:, 0][None, :] <= grid[:, None], pts[:, 1][None, :], -np.inf).max(1)
    return np.where(np.isfinite(best), best, np.nan)


def front_band(samples: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray, confidence: float = CONFIDENCE,
               n_boot: int = BOOTSTRAP, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The front's uncertainty over seeds: ``n_boot`` times, every variant's seeds (its per-seed (x, accuracy)
    pairs in ``samples``) are resampled with replacement, their means taken and the front's attained accuracy read
    at each cost of ``grid``; the band is the central ``confidence`` percentile interval of those fronts. A fixed
    generator seed keeps the figure byte-identical for identical records."""
    rng = np.random.default_rng(seed)
    fronts = np.empty((n_boot, len(grid)))
    for b in range(n_boot):
        means = []
        for xs, ys in samples:
            pick = rng.integers(0, len(xs), len(xs))
            means.append((float(xs[pick].mean()), float(ys[pick].mean())))
        fronts[b] = attained(means, grid)
    tail = 100 * (1 - confidence) / 2
    # a cost where fewer than half the resampled fronts exist yet (left of their first point) gets no band
    enough = (~np.isnan(fronts)).sum(0) >= n_boot / 2
    with warnings.catch_warnings():  # costs left of every resampled front are all NaN: masked just below
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(fronts, tail, axis=0), np.nanpercentile(fronts, 100 - tail, axis=0)
    return np.where(enough, lo, np.nan), np.where(enough, hi, np.nan)


def draw_pareto(ax, rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None,
                configs: Sequence[str] | None = None) -> Drawn:
    """Accuracy vs ``axis`` on ``ax`` for ``configs`` (default: every config): points at their true means with
    95 % t-interval error bars (the dense reference outlined, on top), the non-dominated front of the means with its
    bootstrap band over seeds, override sweeps, published markers; points beyond the axes counted at the edge."""
    drawn = Drawn()
    points = _points(rec, axis.metric, configs)
    dense = dense_configs(rec)
    lows, swept = [], {}
    for pt in points:
        color, marker = style(rec, pt.config)
        is_dense = pt.config in dense
        drawn.dense |= is_dense
        ax.errorbar(pt.sx.mean, pt.sy.mean, xerr=ci_half(pt.sx) if pt.sx.n > 1 else None,
                    yerr=ci_half(pt.sy) if pt.sy.n > 1 else None, fmt=marker, color=color, ecolor=color,
                    elinewidth=0.9, capsize=2, ms=6 if is_dense else 5, mec=DENSE_EDGE if is_dense else color,
                    zorder=6 if is_dense else 4)
        drawn.handles.append(variant_handle(rec, pt.config, f"{pt.config} (n={pt.sy.n})", dense=is_dense))
        drawn.series.append(pt.config)
        lows.append(pt.sy.mean - (ci_half(pt.sy) if pt.sy.n > 1 else 0.0))
        swept[pt.config] = _sweep(rec, ax, pt.config, axis.metric, (pt.sx.mean, pt.sy.mean))
    drawn.sweeps = sum(len(v) for v in swept.values())
    front = pareto_front([(pt.sx.mean, pt.sy.mean) for pt in points])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.25", lw=1.2, zorder=3)
    drawn.handles.append(Line2D([], [], color="0.25", lw=1.2, drawstyle="steps-post",
                                label="front (variant means)"))
    if points and any(pt.sx.n > 1 for pt in points):
        xs = np.concatenate([pt.xs for pt in points])
        grid = np.linspace(float(xs.min()), float(xs.max()), BAND_POINTS)
        lo, hi = front_band([(pt.xs, pt.ys) for pt in points], grid)
        ax.fill_between(grid, lo, hi, step="post", color="0.25", alpha=0.15, lw=0, zorder=1)
        drawn.band = True
        drawn.handles.append(Patch(color="0.25", alpha=0.15, lw=0, label="front, 95 % bootstrap band"))
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
    _clamp(ax)
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


def _clamp(ax) -> None:
    """Keep the axes inside what the quantities can be: accuracy at most 100 %, a cost at least 0. Two seeds give
    wide t-intervals (t = 12.7 at n = 2); their whiskers are cut at the bound rather than stretching the axes."""
    lo, hi = ax.get_ylim()
    if hi > 100.0:
        ax.set_ylim(lo, 100.0 + 0.02 * (100.0 - lo))
    lo, hi = ax.get_xlim()
    if lo < 0.0 < hi:
        ax.set_xlim(-0.02 * hi, hi)


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


FRONT_NOTE = ("Step line: non-dominated front over the variant means (lower cost, higher accuracy); grey band: its "
              f"95 % bootstrap interval over seeds ({BOOTSTRAP} resamples of each variant's seeds with replacement, "
              "the front's attained accuracy read at each cost, 2.5th-97.5th percentiles; a variant with one seed "
              "stays fixed). ")


def _caption(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, published_note: str,
             drawns: Sequence[Drawn], panel_titles: Sequence[str]) -> str:
    pub = next((d.published for d in drawns if d.published is not None), None)
    cut = sum(d.cut for d in drawns)
    floor = next((d.floor for d in drawns if d.floor is not None), None)
    published_out = max((d.published_out for d in drawns), default=0)
    overrides = ", ".join(sorted(rec.evals.override.astype(str).unique())) if rec.evals is not None else ""
    pub_note = published_note
    if published is not None and (pub is None or pub.empty):
        pub_note = f"Published numbers for {rec.dataset} give no value on this axis; none drawn."
    elif pub is not None and not pub.empty:
        pub_note += " Key: " + "; ".join(f"P{i} {r.method} ({r.backbone}; confidence: {r.confidence})"
                                         for i, r in enumerate(pub.itertuples(), 1)) + "."
        if published_out:
            pub_note += (f" {published_out} published point(s) lie beyond this axis's range (other models' "
                         "scale) and are counted at its edge.")
    titles = [t for t in panel_titles if t]
    return (f"Points: variant means at their true x; {CI_NOTE}"
            + ("; the dense reference is outlined in black and drawn on top" if any(d.dense for d in drawns) else "")
            + ". "
            + (f"Panels by family ({', '.join(titles)}): what a variant changes against the study's model "
               "(backbone, stem, token or time policy), at most six series each, the dense reference in every "
               "panel; each panel's front is over its own series. " if titles else "")
            + (FRONT_NOTE if any(d.band for d in drawns) else "Step line: non-dominated front over the variant "
               "means (lower cost, higher accuracy); one seed each, so no band. ")
            + (f"Dashed curves: evaluation overrides from evals.csv ({overrides}), mean over seeds, joined "
               "with the as-trained point in order of cost (numbers in evals.md). " if any(d.sweeps for d in drawns)
               else "No evaluation overrides recorded. ")
            + (f"{cut} override point(s) below {floor:.1f} % accuracy lie under the axes, counted at "
               "the edge (▼n, in the variant's colour; numbers in evals.md). " if cut and floor is not None
               else f"{cut} override point(s) lie beyond the axes, counted at the edge. " if cut else "")
            + "".join(f"{n} " for n in off_split_note(rec))
            + pub_note)


def _has_data(rec: StudyRecords, axis: ParetoAxis) -> bool:
    done = rec.done
    return axis.metric in done and "accuracy" in done and not done[[axis.metric, "accuracy"]].dropna().empty


def _panels(rec: StudyRecords, axis: ParetoAxis) -> list[Facet]:
    """The figure's panels: the configs with data on ``axis`` by family, at most six series each."""
    have = [pt.config for pt in _points(rec, axis.metric)]
    return facets(rec, have)


def _panel_legend(ax, handles: Sequence, font_pt: float) -> None:
    """A panel's own legend under its axes (constrained layout makes room for it)."""
    labels = [h.get_label() for h in handles]
    ncols = legend_columns(labels, ax.figure.get_figwidth() / max(1, _columns(ax)), font_pt)
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.27), ncols=ncols, frameon=False,
              fontsize=font_pt)


def _columns(ax) -> int:
    return ax.get_gridspec().ncols if ax.get_gridspec() is not None else 1


def _draw_faceted(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, faces: list[Facet],
                  width: float, columns: int, font_pt: float, long_label: bool) -> tuple:
    """Several panels, each with its own legend under it; returns (figure, axes, drawn per panel)."""
    longest = max(len(f.series) for f in faces) + 3  # + front, band, overrides
    legend_in = LEGEND_ROW_IN * font_pt / LEGEND_FONT_PT * -(-longest // max(1, legend_columns(
        [s for f in faces for s in f.series], width / columns, font_pt)))
    fig, axes = panels(len(faces), width / columns, PANEL_IN[1] + legend_in + 0.35, most_columns=columns)
    fig.set_figwidth(width)  # panels() caps the width at the page's; a paper figure has its column's
    for spare in fig.axes[len(faces):]:  # an odd number of panels leaves a hidden cell: gone, not hidden
        fig.delaxes(spare)
    drawns = []
    for ax, face in zip(axes, faces):
        drawn = draw_pareto(ax, rec, axis, published, face.series)
        ax.set_title(face.title, fontsize=8)
        ax.set_xlabel(axis.label if long_label else axis.short, fontsize=7)
        ax.set_ylabel(f"{rec.split} accuracy (%)", fontsize=7)
        _panel_legend(ax, drawn.handles, font_pt)
        drawns.append(drawn)
    return fig, axes, drawns


def pareto_figure(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, published_note: str,
                  out: Path) -> Figure:
    """The report's accuracy-vs-cost figure. Up to six series: one panel, its legend right of the axes when it fits
    the page width, else below. More: panels by family (``facets``), two per row, each with its legend."""
    if not _has_data(rec, axis):
        return Figure(axis.stem, axis.title, skipped=f"no finished run has both accuracy and {axis.metric}")
    faces = _panels(rec, axis)
    if len(faces) > 1:
        fig, axes, drawns = _draw_faceted(rec, axis, published, faces, MAX_WIDTH_IN, 2, LEGEND_FONT_PT, False)
        fig.suptitle(f"{rec.name}: {axis.title.lower()}", fontsize=9)
        for ax, drawn in zip(axes, drawns):
            _label_published(ax, drawn)
        caption = _caption(rec, axis, published, published_note, drawns, [f.title for f in faces])
        return Figure(axis.stem, f"{axis.title} ({axis.metric})", caption, tuple(save(fig, out, axis.stem)))
    fig, ax = plt.subplots(figsize=AXES_IN, layout="constrained")
    drawn = draw_pareto(ax, rec, axis, published, faces[0].series)
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
    caption = _caption(rec, axis, published, published_note, [drawn], [])
    return Figure(axis.stem, f"{axis.title} ({axis.metric})", caption, tuple(save(fig, out, axis.stem)))


def paper_figures(rec: StudyRecords, axis: ParetoAxis, published: pd.DataFrame | None, out: Path) -> list[Path]:
    """``<stem>_1col.pdf`` (3.5 in wide) and ``<stem>_2col.pdf`` (7.16 in wide) for a paper: the report figure
    without its title (the paper's caption says it), at the exact column width, never more than six series in a
    panel: one panel (legend below, or right at two columns) or panels by family stacked (one column) or two per
    row (two columns), each with its legend under it."""
    if not _has_data(rec, axis):
        return []
    faces = _panels(rec, axis)
    paths = []
    for size in ("1col", "2col"):
        width, height = PAPER_WIDTH_IN[size], PAPER_AXES_HEIGHT_IN[size]
        if len(faces) > 1:
            fig, axes, drawns = _draw_faceted(rec, axis, published, faces, width, 1 if size == "1col" else 2,
                                              PAPER_LEGEND_FONT_PT, size == "2col")
            fig.set_figwidth(width)  # the exact column width
            for ax, drawn in zip(axes, drawns):
                _label_published(ax, drawn)
            paths += save(fig, out, f"{axis.stem}_{size}", formats=("pdf",), tight=False)
            continue
        fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
        drawn = draw_pareto(ax, rec, axis, published, faces[0].series)
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
