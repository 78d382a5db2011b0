"""Figures, tables and an HTML page regenerated from a study's records alone (never retrains, never imports torch).

Reads ``results/<study>/``: ``runs.csv``, ``evals.csv`` (optional), ``study.yaml`` (validated as a
``suite.config.Study``; missing or invalid, the report uses the schema defaults and shows no dataset),
``<run_id>/metrics.json`` (details: firing rates, active steps, depth and exit histograms, layer order) and
``<run_id>/maps.npz`` (active-token maps). Writes ``results/<study>/report/``: every figure as PNG and PDF,
``table.md``, ``table.tex``, ``evals.md`` (when overrides were evaluated), and the page
``results/<study>/report.html``; with ``style="paper"`` also ``report/paper/<figure>_1col.pdf`` and ``_2col.pdf``
(3.5 and 7.16 in wide, legend outside the data) of the accuracy-vs-cost figures. Outputs carry no timestamps,
so the same records give byte-identical files. A figure whose data is absent is skipped and the page says why.

Conventions (written next to every number): tables summarise seeds as mean ± sample std (ddof=1), figures as the
mean with its 95 % t-interval (error bars; panels of at most six series by family, docs/report.md); the unit of a
point is a *variant* (plus any non-seed matrix axis that varies within it, e.g. ``act (T=2)``); token-units
are active tokens summed over blocks and timesteps (a merged token counts once); energy is the *exact* SOP
convention (``energy_exact_uj``), except the accuracy-vs-energy axis, which shows the study's primary convention
(``report.energy_convention``); ``energy_sensitivity`` (figure and table) shows each variant's energy relative to
its dense reference under every convention, with one generated sentence on whether a conclusion changes. Published numbers (``baselines/published.yaml``) come from other backbones and
recipes: they are drawn only as hollow reference markers, only for the study's own dataset and backbone family
(Spikformer rows for a Spikformer study, SDT rows for SDT). Figures are sized for the page (at most 7.5 in wide,
legends outside the data), fonts are embedded as TrueType (no Type 3), units are written µJ and ×.

Modules: ``load`` (records -> ``StudyRecords``), ``style`` (look, sizes, legends and number formatting),
``figures`` (one module per figure family, ``marks`` for clipped and labelled points, ``facets`` for panels by family), ``tables``,
``page`` (HTML), ``mlflow`` (attach the report to the study's store).
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before any submodule imports pyplot: the report draws off-screen only
import matplotlib.pyplot as plt  # noqa: E402

from suite.config.report import ReportConfig  # noqa: E402
from suite.names import REPORT_DIR  # noqa: E402
from suite.report.content import Figure, Table  # noqa: E402
from suite.report.figures import FIGURE_PREFIXES, PAPER_DIR, build_figures, build_paper_figures  # noqa: E402
from suite.report.figures.heatmaps import upsample_mask  # noqa: E402
from suite.report.figures.layers import layer_key, ordered_layers  # noqa: E402
from suite.report.figures.pareto import pareto_front  # noqa: E402
from suite.report.figures.search import nondominated, search_figure, search_title  # noqa: E402
from suite.report.figures.summary import exit_figure  # noqa: E402
from suite.report.load import (  # noqa: E402
    StudyRecords,
    axis_columns,
    config_labels,
    config_order,
    load_records,
    search_tables,
)
from suite.report.mlflow import log_to_mlflow, mlflow_store  # noqa: E402
from suite.report.page import write_page  # noqa: E402
from suite.report.published import published_for, published_points  # noqa: E402
from suite.report.stats import report_settings  # noqa: E402
from suite.report.style import STYLE, Stat, decimals, fmt_pm, slug  # noqa: E402
from suite.report.tables import MAIN_HEADERS, table_latex, write_tables  # noqa: E402

log = logging.getLogger(__name__)

__all__ = [
    "FIGURE_PREFIXES", "MAIN_HEADERS", "REPORT_STYLES", "Figure", "Stat", "StudyRecords", "Table", "axis_columns", "build_report",
    "config_labels", "config_order", "decimals", "exit_figure", "fmt_pm", "layer_key", "load_records",
    "log_to_mlflow", "mlflow_store", "nondominated", "ordered_layers", "pareto_front", "published_for",
    "published_points", "search_figure", "search_tables", "search_title", "slug", "table_latex", "upsample_mask",
]


REPORT_STYLES = ("default", "paper")  # paper: also the paper-sized figures under report/paper/


def clear_stale(out: Path) -> None:
    """Remove figures an earlier report wrote (paper figures included), so a figure whose data is gone, or that
    this report's style does not ask for, does not linger."""
    for folder in (out, out / PAPER_DIR):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in (".png", ".pdf") and path.stem.startswith(FIGURE_PREFIXES):
                path.unlink()
    if (out / PAPER_DIR).is_dir() and not any((out / PAPER_DIR).iterdir()):
        (out / PAPER_DIR).rmdir()


def build_report(study_dir: Path, mlflow: bool = True, style: str = "default",
                 report: ReportConfig | None = None) -> list[Path]:
    """Write the figures, tables and page of ``study_dir`` from its records; returns every file written (the page
    last). With ``mlflow``, the files are also attached to the study's latest invocation run, when there is one.
    ``style="paper"`` also writes the accuracy-vs-cost figures one and two columns wide (``report/paper/``).
    ``report`` (the study file's ``report:`` section) wins over the records' ``study.yaml``; bad settings raise
    StudyError before anything is written."""
    if style not in REPORT_STYLES:
        raise ValueError(f"report style must be one of {', '.join(REPORT_STYLES)}, not {style!r}")
    rec = load_records(Path(study_dir))
    settings = report_settings(rec, report)  # checked before anything is written
    out = rec.study_dir / REPORT_DIR
    clear_stale(out)
    with plt.rc_context(STYLE):
        figures = build_figures(rec, out)
        paper = build_paper_figures(rec, out) if style == "paper" else []
    tables, table_paths = write_tables(rec, out, settings)
    page = write_page(rec, tables, figures)
    for fig in figures:  # a figure that does not apply to this study is not news: --verbose shows it
        if fig.skipped is not None:
            log.debug("figure %s skipped: %s", fig.stem, fig.skipped)
    artifacts = [p for f in figures for p in f.paths] + paper + table_paths
    if mlflow:
        log_to_mlflow(rec, artifacts, page)
    return artifacts + [page]
