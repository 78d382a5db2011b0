"""Every figure of the report, one module per family: ``pareto`` (accuracy vs each cost), ``heatmaps``
(active-token maps), ``layers`` (halting depth, timestep allocation, firing rates), ``summary`` (ablation, early
exit, energy breakdown) and ``search`` (Optuna searches). A figure whose data is absent comes back skipped."""

from __future__ import annotations

from pathlib import Path

from suite.report.content import Figure
from suite.report.figures.heatmaps import heatmap_figures
from suite.report.figures.layers import allocation_figure, depth_figure, firing_figure
from suite.report.figures.pareto import pareto_axes, pareto_figure
from suite.report.figures.search import search_figures
from suite.report.figures.summary import ablation_figure, energy_figure, exit_figure
from suite.report.load import StudyRecords
from suite.report.published import published_for

FIGURE_PREFIXES = ("accuracy_vs_", "token_heatmap_", "halting_depth", "timestep_allocation", "firing_rates",
                   "ablation", "early_exit", "energy_breakdown", "search_")  # file stems the figures write


def build_figures(rec: StudyRecords, out: Path) -> list[Figure]:
    """Every figure of the report, in page order, written under ``out`` (or skipped, with the reason)."""
    published, note = published_for(rec.dataset)
    axes = pareto_axes(rec.eval.energy.describe())
    figures = [pareto_figure(rec, axis, published, note, out) for axis in axes]
    figures += heatmap_figures(rec, out)
    figures += [depth_figure(rec, out), allocation_figure(rec, out), firing_figure(rec, out),
                ablation_figure(rec, out), exit_figure(rec, out), energy_figure(rec, out)]
    return figures + search_figures(rec, out)
