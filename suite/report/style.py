"""How the report looks and how it writes numbers: colours and markers, matplotlib style, figure sizes, legends,
figure saving, axis labels, and the mean ± std formatting shared by figures and tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # the package's __init__ has selected the Agg backend
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from scipy import stats as sps

from suite.report.load import StudyRecords

# 24 colours, pairwise at least 27 CIELAB ΔE apart: tab10 first (the familiar look for small studies), then 14
# picked greedily as far as possible from every colour before them, with lightness 25-72 so each stays visible
# as a marker on white. Variant i takes PALETTE[i]: up to 24 variants no two share a colour.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#0000ff", "#ff1eff", "#004b1e", "#5a00a5", "#ff0078", "#78004b", "#966900", "#0069ff",
           "#96b478", "#ff8787", "#c300a5", "#00c396", "#c369ff", "#4b3c5a")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")  # filled, so a legend shows the colour
DENSE_EDGE = "black"  # the dense reference's marker edge: it is drawn on top of every other point

DPI = 150
COLUMN_IN, DOUBLE_COLUMN_IN = 3.5, 7.16  # one and two columns of a two-column paper (IEEE/ACM/NeurIPS-like)
MAX_WIDTH_IN = 7.5  # no report figure is wider (legend included): the page shows it at print size
LEGEND_FONT_PT = 7
PAPER_LEGEND_FONT_PT = 6  # a one-column paper figure's legend: two columns of labels fit 3.5 in
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": LEGEND_FONT_PT,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.grid": True, "axes.axisbelow": True, "grid.alpha": 0.3,
         "svg.hashsalt": "spikesuite",
         # TrueType (Type 42) fonts in PDF/PS: journals reject the default Type 3 bitmaps-as-glyphs
         "pdf.fonttype": 42, "ps.fonttype": 42}
STD_NOTE = "mean ± sample std over seeds (ddof=1); a single seed shows its value alone"
CONFIDENCE = 0.95  # the figures' error bars: this confidence interval of the mean over seeds
CI_NOTE = ("error bars: 95 % confidence interval of the mean over seeds (Student t with n − 1 degrees of freedom, "
           "n = seeds as given in the legend or title); a single seed has none")

ENERGY_UNIT = "µJ"
SPLIT_WORDS = {"val": "validation", "test": "test", "train": "training"}
# axis labels of the metrics that searches optimise and tables show (unit in brackets)
METRIC_LABELS = {
    "accuracy": "accuracy (%)",
    "token_pct": "token-units (% of dense)",
    "token_units": "token-units per image",
    "timesteps_mean": "mean active timesteps",
    "timesteps_weighted": "ops-weighted timesteps",
    "energy_exact_uj": f"energy ({ENERGY_UNIT} per image, exact)",
    "energy_paper_uj": f"energy ({ENERGY_UNIT} per image, paper convention)",
    "loss": "loss",
}


def metric_label(metric: str, split: str | None = None) -> str:
    """A readable axis label with its unit; accuracy names the split it was scored on (``validation accuracy``)."""
    label = METRIC_LABELS.get(metric, metric)
    if metric == "accuracy" and split is not None:
        label = f"{SPLIT_WORDS.get(split, split)} {label}"
    return label


# ----------------------------------------------------------------------------------------------- variants


def variant_style(index: int) -> tuple[str, str]:
    """Colour and marker of the ``index``-th variant: distinct colours up to ``len(PALETTE)``; past that the
    marker cycle shifts by one per lap, so (colour, marker) pairs stay distinct."""
    lap = index // len(PALETTE)
    return PALETTE[index % len(PALETTE)], MARKERS[(index + lap) % len(MARKERS)]


def style(rec: StudyRecords, config: str) -> tuple[str, str]:
    """A variant's colour and marker, by its place in the study order (stable across figures and re-runs)."""
    return variant_style(rec.order.index(config) if config in rec.order else len(rec.order))


def marker_handle(color: str, marker: str, label: str, ms: float = 5.0, edge: str | None = None,
                  hollow: bool = False, line: bool = False) -> Line2D:
    """A legend entry showing the marker (an errorbar container would show its caps instead); ``line`` adds the
    line through it, for figures that join a variant's points."""
    return Line2D([], [], ls="-" if line else "none", lw=1.0, marker=marker, ms=ms, color=color, label=label,
                  markerfacecolor="none" if hollow else color, markeredgecolor=edge or color)


def variant_handle(rec: StudyRecords, config: str, label: str, dense: bool = False) -> Line2D:
    color, marker = style(rec, config)
    return marker_handle(color, marker, label, edge=DENSE_EDGE if dense else None)


# ----------------------------------------------------------------------------------------------- layout


def grid_shape(n: int, most_columns: int = 2) -> tuple[int, int]:
    """(rows, columns) of ``n`` panels wrapped into at most ``most_columns`` columns (never one long row)."""
    cols = max(1, min(n, most_columns))
    return -(-n // cols), cols


def panels(n: int, width: float, height: float, most_columns: int = 1):
    """``n`` panels of ``width`` x ``height`` inches wrapped into at most ``most_columns`` columns (the width
    capped at MAX_WIDTH_IN), constrained layout; returns (figure, axes list in reading order). Spare cells are
    hidden."""
    rows, cols = grid_shape(n, most_columns)
    fig, axes = plt.subplots(rows, cols, figsize=(min(MAX_WIDTH_IN, width * cols), height * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def legend_width_in(labels: Sequence[str], font_pt: float = LEGEND_FONT_PT) -> float:
    """Estimated width of one legend column of ``labels``: 0.58 em per character of the longest (DejaVu Sans
    averages 0.55), plus the handle and padding; errs on the wide side, so a legend said to fit does."""
    longest = max((len(s) for s in labels), default=1)
    return (longest * 0.58 * font_pt + 4.0 * font_pt) / 72.0


def legend_columns(labels: Sequence[str], width_in: float, font_pt: float = LEGEND_FONT_PT) -> int:
    """How many legend columns of ``labels`` fit across ``width_in`` inches (1 to 4)."""
    return max(1, min(4, int(width_in // legend_width_in(labels, font_pt))))


def legend_outside(fig, handles: Sequence, where: str = "below", width_in: float | None = None,
                   font_pt: float = LEGEND_FONT_PT):
    """A figure legend outside the axes (``below`` or ``right``) of a constrained-layout figure, so it never
    covers data; below, it takes as many columns as fit ``width_in`` (default: the figure's width)."""
    labels = [h.get_label() for h in handles]
    if where == "right":
        return fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=font_pt)
    ncols = legend_columns(labels, width_in if width_in is not None else fig.get_figwidth(), font_pt)
    return fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False, fontsize=font_pt)


def legend_rows(handles: Sequence, width_in: float, font_pt: float = LEGEND_FONT_PT) -> int:
    """Rows a ``legend_outside(..., "below")`` legend of ``handles`` takes across ``width_in`` inches."""
    return -(-len(handles) // legend_columns([h.get_label() for h in handles], width_in, font_pt))


LEGEND_ROW_IN = 0.16  # height of one legend row at LEGEND_FONT_PT, spacing included
AXIS_MARGIN_IN = 0.8  # room left of the axes for the y tick labels and the y label
WIDEN_ROWS = 6  # a legend below the axes longer than this widens its figure to the page, when that helps


def width_for_legend_below(width_in: float, handles: Sequence) -> float:
    """``width_in``, or MAX_WIDTH_IN when the legend below the axes would take more than WIDEN_ROWS rows at
    ``width_in`` and fewer at the page width (long labels: a study crossing variants with matrix axes)."""
    rows = legend_rows(handles, width_in)
    return MAX_WIDTH_IN if rows > WIDEN_ROWS and legend_rows(handles, MAX_WIDTH_IN) < rows else width_in


def width_with_legend(axes_width_in: float, handles: Sequence) -> float | None:
    """Figure width that fits axes ``axes_width_in`` wide and a one-column legend right of them; None when that
    would pass MAX_WIDTH_IN (then the legend goes below)."""
    width = axes_width_in + AXIS_MARGIN_IN + legend_width_in([h.get_label() for h in handles])
    return width if width <= MAX_WIDTH_IN else None


def save(fig, out: Path, stem: str, formats: Sequence[str] = ("png", "pdf"), tight: bool = True) -> list[Path]:
    """``fig`` as ``<stem>.<format>`` without timestamps or software versions (byte-stable). ``tight`` crops to
    the drawn content; without it the page keeps the figure's size (paper figures of an exact column width)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    bbox = "tight" if tight else None
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        meta = {"Software": None} if fmt == "png" else {"Creator": None, "Producer": None, "CreationDate": None}
        fig.savefig(path, dpi=DPI, bbox_inches=bbox, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


def plain_axes(ax, rel_x: float = 0.05, rel_y: float = 0.002) -> None:
    """Plain tick labels (no offset or exponent), and a visible range when the data barely spread
    (e.g. every variant at T timesteps): at least ``rel`` x the centre value."""
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    for get, set_, rel in ((ax.get_xlim, ax.set_xlim, rel_x), (ax.get_ylim, ax.set_ylim, rel_y)):
        lo, hi = get()
        centre, least = (lo + hi) / 2, rel * max(abs((lo + hi) / 2), 1e-12)
        if hi - lo < least:
            set_(centre - least / 2, centre + least / 2)


# ----------------------------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float  # NaN for a single seed


def stat(values: pd.Series) -> Stat:
    """Mean and sample std (ddof=1) of the finite values."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return Stat(0, math.nan, math.nan)
    return Stat(len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan)


def t_half_width(std: float | np.ndarray, n: int | np.ndarray, confidence: float = CONFIDENCE):
    """Half-width of the Student-t confidence interval of a mean from its sample std and n (``scipy.stats.t``):
    t_{(1+c)/2, n-1} × std / √n; NaN where n < 2 (one seed gives no interval). Scalars or arrays alike."""
    n = np.asarray(n, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = sps.t.ppf((1 + confidence) / 2, np.where(n > 1, n - 1, np.nan)) * std / np.sqrt(n)
    half = np.where(n > 1, half, np.nan)
    return float(half) if half.ndim == 0 else half


def ci_half(s: Stat, confidence: float = CONFIDENCE) -> float:
    """The t-interval half-width of a ``Stat``'s mean (NaN for one seed)."""
    return t_half_width(s.std, s.n, confidence) if s.n > 1 else math.nan


def column_ci(arr: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray | None:
    """Per column of a seeds × k array (NaN = not recorded): the t-interval half-width of the column's mean over the
    seeds that have it; None when no column has two seeds (nothing to draw)."""
    seen = (~np.isnan(arr)).sum(0)
    if not (seen > 1).any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.array([np.nanstd(arr[:, j], ddof=1) if seen[j] > 1 else np.nan for j in range(arr.shape[1])])
    return t_half_width(std, seen, confidence)


def decimals(values: Iterable[float], significant: int = 3, most: int = 3) -> int:
    """Decimals giving the largest |value| ``significant`` digits: one choice per column, so rows line up."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=0.0)
    if top == 0:
        return 2
    return int(min(most, max(0, significant - 1 - math.floor(math.log10(top)))))


def fmt_pm(s: Stat, places: int) -> str:
    """``mean ± std`` (``mean`` alone for one seed; ``n/a`` without data)."""
    if s.n == 0 or not math.isfinite(s.mean):
        return "n/a"
    if s.n == 1 or not math.isfinite(s.std):
        return f"{s.mean:.{places}f}"
    return f"{s.mean:.{places}f} ± {s.std:.{places}f}"


def slug(text: str) -> str:
    """``text`` as a file-name and label part: anything but letters, digits, ``-`` and ``_`` becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "run"
