"""Optuna search figures drawn from ``trials.csv`` alone: ``spikesuite search`` draws its own ``pareto.png``
with ``search_figure`` and the report redraws the same figure for every search of the study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from suite.names import SEARCH_DIR, TRIALS_TABLE
from suite.report.content import Figure
from suite.report.load import StudyRecords
from suite.report.style import STYLE, save, slug


def nondominated(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the rows of ``values`` [n, k] that no other row dominates (at least as good in every objective,
    better in one); equal rows are all kept, as Optuna's ``best_trials`` keeps them."""
    v = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0) * np.asarray(values, dtype=float)  # all minimised
    no_worse = (v[:, None, :] <= v[None, :, :]).all(-1)  # [i, j]: i is no worse than j everywhere
    better = (v[:, None, :] < v[None, :, :]).any(-1)
    return ~(no_worse & better).any(0)


def search_figure(trials: pd.DataFrame, metrics: Sequence[str], directions: Sequence[str], title: str, out: Path,
                  stem: str) -> list[Path]:
    """An Optuna search from its trials table: complete trials grey, the Pareto set red with trial numbers (one
    panel per objective pair, at most three); a single objective is drawn against the trial number. ``spikesuite
    search`` and the report both draw it from ``trials.csv``, so the records alone regenerate it."""
    with plt.rc_context(STYLE):  # the report's style also when spikesuite search draws it
        return _search_figure(trials, metrics, directions, title, out, stem)


def _search_figure(trials: pd.DataFrame, metrics: Sequence[str], directions: Sequence[str], title: str, out: Path,
                   stem: str) -> list[Path]:
    done = trials[(trials.state == "COMPLETE")].dropna(subset=list(metrics)) if "state" in trials else trials[:0]
    maximize = [d == "maximize" for d in directions]
    best = nondominated(done[list(metrics)].to_numpy(), maximize) if len(done) else np.zeros(0, bool)
    label = [f"{m} ({'max' if mx else 'min'})" for m, mx in zip(metrics, maximize)]
    pairs = [(i, j) for i in range(len(metrics)) for j in range(i + 1, len(metrics))][:3] or [(None, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 3.6), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        x = done.trial if i is None else done[metrics[i]]
        y = done[metrics[j]]
        if (~best).any():
            ax.scatter(x[~best], y[~best], s=18, color="0.65", label=f"trials ({len(done)})", zorder=2)
        if best.any():
            front = sorted(zip(x[best], y[best], done.trial[best]))
            fx, fy, fn = zip(*front)
            ax.scatter(fx, fy, s=36, color="tab:red", edgecolor="k", linewidth=0.5,
                       label=f"Pareto set ({len(front)})" if i is not None else "best", zorder=3)
            if i is not None and len(metrics) == 2:  # the boundary of the region the Pareto set dominates
                path = staircase(list(zip(fx, fy)), maximize[i], maximize[j])
                ax.plot(*zip(*path), color="tab:red", linewidth=0.8, alpha=0.6, zorder=1)
            for px, py, n in front:
                ax.annotate(str(int(n)), (px, py), textcoords="offset points", xytext=(3, 3), fontsize=6)
        if done.empty:
            ax.text(0.5, 0.5, "no complete trials", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("trial" if i is None else label[i])
        ax.set_ylabel(label[j])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{title}: {len(done)} complete trials", fontsize=9)
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


def search_tables(study_dir: Path) -> list[tuple[str, Path]]:
    """``(variant, trials.csv)`` of each search of the study: ``search/`` (one search, variant "") and
    ``search/<variant>/`` (``per_variant`` searches)."""
    root = study_dir / SEARCH_DIR
    found = [("", root / TRIALS_TABLE)] + [(p.parent.name, p) for p in sorted(root.glob(f"*/{TRIALS_TABLE}"))]
    return [(v, p) for v, p in found if p.is_file()]


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
        title = search_title(f"{rec.name}-{search.stage}" + (f"-{variant}" if variant else ""))
        done = int((trials.state == "COMPLETE").sum()) if "state" in trials else 0
        caption = (f"{done} complete of {len(trials)} trials ({search.sampler} sampler); each trial's "
                   f"objectives are means over the variant's seeds"
                   + (f", scored on the {search.split} split (test-split numbers of the Pareto "
                      "settings: evals.md, overrides named trial<N>-test)" if search.stage == "eval"
                      else "") + f". Red: the Pareto set (non-dominated trials). Table: {path.relative_to(rec.study_dir)}.")
        figures.append(Figure(stem, title, caption, tuple(search_figure(trials, metrics, directions, title, out, stem))))
    return figures
