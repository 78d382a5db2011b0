"""Optuna search figures drawn from ``trials.csv`` alone: ``spikesuite search`` draws its own ``pareto.png``
with ``search_figure`` and the report redraws the same figure for every search of the study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from suite.report.content import Figure
from suite.report.figures.marks import place_labels
from suite.report.load import StudyRecords, search_tables
from suite.report.style import (
    SPLIT_WORDS,
    STYLE,
    legend_outside,
    marker_handle,
    metric_label,
    panels,
    save,
    slug,
)

PANEL_IN = (4.0, 3.0)  # one objective pair's axes
TRIAL_COLOR, FRONT_COLOR = "0.65", "tab:red"


def nondominated(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the rows of ``values`` [n, k] that no other row dominates (at least as good in every objective,
    better in one); equal rows are all kept, as Optuna's ``best_trials`` keeps them."""
    v = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0) * np.asarray(values, dtype=float)  # all minimised
    no_worse = (v[:, None, :] <= v[None, :, :]).all(-1)  # [i, j]: i is no worse than j everywhere
    better = (v[:, None, :] < v[None, :, :]).any(-1)
    return ~(no_worse & better).any(0)


def search_figure(trials: pd.DataFrame, metrics: Sequence[str], directions: Sequence[str], title: str, out: Path,
                  stem: str, split: str | None = None) -> list[Path]:
    """An Optuna search from its trials table: complete trials grey, the Pareto set red with trial numbers (one
    panel per objective pair, at most three); a single objective is drawn against the trial number. ``split``
    (``search.split``) names the split the trials were scored on in the labels. ``spikesuite search`` and the
    report both draw it from ``trials.csv``, so the records alone regenerate it."""
    with plt.rc_context(STYLE):  # the report's style also when spikesuite search draws it
        return _search_figure(trials, metrics, directions, title, out, stem, split)


def objective_pairs(metrics: Sequence[str], maximize: Sequence[bool]) -> list[tuple[int | None, int]]:
    """(x, y) objective indices of each panel, at most three; the objective to maximise (accuracy) goes on y, as
    in every other figure of the report. A single objective is (None, 0): drawn against the trial number."""
    pairs: list[tuple[int | None, int]] = []
    for i in range(len(metrics)):
        for j in range(i + 1, len(metrics)):
            pairs.append((j, i) if maximize[i] and not maximize[j] else (i, j))
    return pairs[:3] or [(None, 0)]


def front_labels(xs: Sequence[float], ys: Sequence[float], numbers: Sequence[int], most: int = 3
                 ) -> list[tuple[float, float, str]]:
    """One label per distinct front point: the trial numbers that share it (``0, 9``; past ``most``, ``+k``), so
    ties are written once instead of printed over each other."""
    groups: dict[tuple[float, float], list[int]] = {}
    for x, y, n in zip(xs, ys, numbers):
        groups.setdefault((float(x), float(y)), []).append(int(n))
    out = []
    for (x, y), ns in groups.items():
        ns = sorted(ns)
        text = ", ".join(map(str, ns[:most])) + (f" +{len(ns) - most}" if len(ns) > most else "")
        out.append((x, y, text))
    return out


def _search_figure(trials: pd.DataFrame, metrics: Sequence[str], directions: Sequence[str], title: str, out: Path,
                   stem: str, split: str | None) -> list[Path]:
    done = trials[(trials.state == "COMPLETE")].dropna(subset=list(metrics)) if "state" in trials else trials[:0]
    maximize = [d == "maximize" for d in directions]
    best = nondominated(done[list(metrics)].to_numpy(), maximize) if len(done) else np.zeros(0, bool)
    label = [metric_label(m, split) for m in metrics]
    pairs = objective_pairs(metrics, maximize)
    fig, axes = panels(len(pairs), PANEL_IN[0], PANEL_IN[1], most_columns=2)
    handles = [marker_handle(TRIAL_COLOR, "o", f"trials ({len(done)})", ms=4)]
    for ax, (i, j) in zip(axes, pairs):
        x = done.trial if i is None else done[metrics[i]]
        y = done[metrics[j]]
        if (~best).any():
            ax.scatter(x[~best], y[~best], s=18, color=TRIAL_COLOR, zorder=2)
        if best.any():
            front = sorted(zip(x[best], y[best], done.trial[best]))
            fx, fy, fn = zip(*front)
            ax.scatter(fx, fy, s=36, color=FRONT_COLOR, edgecolor="k", linewidth=0.5, zorder=3)
            if i is not None and len(metrics) == 2:  # the boundary of the region the Pareto set dominates
                path = staircase(list(zip(fx, fy)), maximize[i], maximize[j])
                ax.plot(*zip(*path), color=FRONT_COLOR, linewidth=0.8, alpha=0.6, zorder=1)
        if done.empty:
            ax.text(0.5, 0.5, "no complete trials", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("trial" if i is None else label[i])
        ax.set_ylabel(label[j])
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    if best.any():
        front_label = f"Pareto set ({int(best.sum())}), labelled with trial numbers" if pairs[0][0] is not None \
            else "best (trial number)"
        handles.append(marker_handle(FRONT_COLOR, "o", front_label, edge="black"))
    scored = f", scored on the {SPLIT_WORDS.get(split, split)} split" if split is not None else ""
    fig.suptitle(f"{title}\n{len(done)} complete trials{scored}, means over seeds", fontsize=8)
    legend_outside(fig, handles, where="below")
    for ax, (i, j) in zip(axes, pairs):  # after the layout: labels are placed where they overlap nothing
        if best.any():
            x = done.trial if i is None else done[metrics[i]]
            y = done[metrics[j]]
            labels = front_labels(x[best], y[best], done.trial[best])
            place_labels(ax, [(a, b) for a, b, _ in labels], [t for _, _, t in labels],
                         avoid=list(zip(x[~best], y[~best])))
    return save(fig, out, stem)


def staircase(front: list[tuple[float, float]], x_max: bool, y_max: bool) -> list[tuple[float, float]]:
    """Points of a 2-D Pareto front (sorted by x) joined through the corners between neighbours, each
    corner taking the worse coordinate of the pair: the boundary of the dominated region."""
    path = front[:1]
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        path += [((min if x_max else max)(x0, x1), (min if y_max else max)(y0, y1)), (x1, y1)]
    return path


def search_title(optuna_study: str) -> str:
    return f"Optuna search {optuna_study}"


def search_figures(rec: StudyRecords, out: Path) -> list[Figure]:
    """The figure of each search under ``search/``, with the objectives study.yaml declares."""
    search = rec.search
    metrics = [o.metric for o in search.objectives] if search is not None else []
    directions = [o.direction for o in search.objectives] if search is not None else []
    figures = []
    for variant, path in search_tables(rec.study_dir):
        stem = f"search_pareto_{slug(variant)}" if variant else "search_pareto"
        trials = pd.read_csv(path)
        if search is None or not metrics or any(m not in trials for m in metrics):
            figures.append(Figure(stem, "Search", skipped=f"{path}: no objective columns matching study.yaml"))
            continue
        title = _title(rec, variant)
        done = int((trials.state == "COMPLETE").sum()) if "state" in trials else 0
        caption = (f"{done} complete of {len(trials)} trials ({search.sampler} sampler); each trial's "
                   f"objectives are means over the variant's seeds, scored on the {search.split} split"
                   + (f" (numbers of the Pareto settings on the {rec.split} split: evals.md, overrides named "
                      f"trial<N>-{rec.split})" if search.stage == "eval" and search.split != rec.split else "")
                   + ". Red: the Pareto set (non-dominated trials), labelled with their trial numbers (trials with "
                   "equal objectives share one label). The objective to maximise is on the y axis. "
                   f"Table: {path.relative_to(rec.study_dir)}.")
        paths = search_figure(trials, metrics, directions, title, out, stem, split=search.split)
        figures.append(Figure(stem, title, caption, tuple(paths)))
    return figures


def _title(rec: StudyRecords, variant: str) -> str:
    """The title ``spikesuite search`` gives a search (``<study>-<stage>[-<variant>]``)."""
    stage = rec.search.stage if rec.search is not None else ""
    return search_title(f"{rec.name}-{stage}" + (f"-{variant}" if variant else ""))


def redraw_search_figures(rec: StudyRecords) -> list[Path]:
    """Each search's own figure, ``search/[<variant>/]pareto.{png,pdf}``, drawn again from its trials.csv as
    ``spikesuite search`` draws it (after a change of the figure's look, so that it stays the report's figure);
    returns the files written. Nothing else of the search is touched."""
    search = rec.search
    if search is None:
        return []
    metrics = [o.metric for o in search.objectives]
    directions = [o.direction for o in search.objectives]
    paths: list[Path] = []
    for variant, path in search_tables(rec.study_dir):
        trials = pd.read_csv(path)
        if all(m in trials for m in metrics):
            paths += search_figure(trials, metrics, directions, _title(rec, variant), path.parent, "pareto",
                                   split=search.split)
    return paths
