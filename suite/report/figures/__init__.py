"""Every figure of the report, one module per family: ``pareto`` (accuracy vs each cost), ``heatmaps``
(active-token maps), ``layers`` (halting depth, timestep allocation, firing rates), ``temporal`` (temporal similarity
of block inputs), ``summary`` (ablation, early exit, energy breakdown) and ``search`` (Optuna searches). A figure
whose data is absent comes back skipped, and the page says why; the one exception is a figure family that no run of
the study recorded because its records predate it (temporal similarity): it is left off the page, not listed as
skipped, so records written before the family existed still give the same page."""

from __future__ import annotations

from pathlib import Path

from suite.report.content import Figure
from suite.report.energy import sensitivity_figure
from suite.report.figures.curves import curves_figure
from suite.report.figures.diagnostics import diagnostic_figures
from suite.report.figures.heatmaps import heatmap_figures
from suite.report.figures.layers import allocation_figure, depth_figure, firing_figure
from suite.report.figures.pareto import paper_figures, pareto_axes, pareto_figure
from suite.report.figures.search import search_figures
from suite.report.figures.summary import ablation_figure, energy_figure, exit_figure
from suite.report.figures.temporal import temporal_figure
from suite.report.load import StudyRecords
from suite.report.published import published_for

# file stems the figures write
FIGURE_PREFIXES = ("accuracy_vs_", "token_heatmap_", "halting_depth", "timestep_allocation", "firing_rates",
                   "temporal_similarity", "ablation", "early_exit", "energy_breakdown", "energy_sensitivity", "search_",
                   "foreground_active", "occlusion_spearman", "learning_curves")
PAPER_DIR = "paper"  # report/paper/: the paper-sized figures of style="paper"


def study_backbones(rec: StudyRecords) -> set[str]:
    """Every backbone the study's runs use: the model section's, the variants' overrides and a matrix axis."""
    names = {rec.study.model.backbone} if rec.study is not None else set()
    names |= {str(v.model["backbone"]) for v in rec.variants.values() if "backbone" in v.model}
    for column in ("model.backbone", "backbone"):
        if column in rec.runs:
            names |= {str(b) for b in rec.runs[column].dropna()}
    return names


def published_rows(rec: StudyRecords):
    """Published rows for the study's dataset and backbones, and the sentence saying what is drawn."""
    return published_for(rec.dataset, study_backbones(rec) if rec.study is not None else None)


def build_paper_figures(rec: StudyRecords, out: Path) -> list[Path]:
    """The main comparison figures (accuracy vs each cost) one and two columns wide, under ``out/paper/``."""
    published, _ = published_rows(rec)
    return [p for axis in pareto_axes(rec.eval.costs.describe(), rec.energy_convention)
            for p in paper_figures(rec, axis, published, out / PAPER_DIR)]


def build_figures(rec: StudyRecords, out: Path) -> list[Figure]:
    """Every figure of the report, in page order, written under ``out`` (or skipped, with the reason)."""
    published, note = published_rows(rec)
    axes = pareto_axes(rec.eval.costs.describe(), rec.energy_convention)
    figures = [pareto_figure(rec, axis, published, note, out) for axis in axes]
    figures += heatmap_figures(rec, out)
    figures += diagnostic_figures(rec, out)  # none for records that predate the diagnostics
    figures += [depth_figure(rec, out), allocation_figure(rec, out), firing_figure(rec, out)]
    temporal = temporal_figure(rec, out)  # None: no run recorded it, the page does not list it
    figures += [temporal] if temporal is not None else []
    figures += [ablation_figure(rec, out), exit_figure(rec, out), energy_figure(rec, out), sensitivity_figure(rec, out)]
    curves = curves_figure(rec, out)  # None: no run recorded a validation accuracy
    figures += [curves] if curves is not None else []
    return figures + search_figures(rec, out)
