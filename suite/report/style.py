"""How the report looks and how it writes numbers: colours, markers, matplotlib style, figure saving, and the
mean ± std formatting shared by figures and tables."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # the package's __init__ has selected the Agg backend
import pandas as pd

from suite.report.load import StudyRecords

COLORS = tuple(plt.get_cmap("tab10").colors)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "axes.grid": True, "axes.axisbelow": True, "grid.alpha": 0.3,
         "svg.hashsalt": "spikesuite"}
STD_NOTE = "mean ± sample std over seeds (ddof=1); a single seed shows its value alone"


def save(fig, out: Path, stem: str) -> list[Path]:
    """``fig`` as ``<stem>.png`` and ``<stem>.pdf`` without timestamps or software versions (byte-stable)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(fig)
    return paths


def style(rec: StudyRecords, config: str) -> tuple[tuple[float, ...], str]:
    """A colour and marker per variant; past 10 variants the marker cycle is shifted, so no two variants share
    both (tab10 and the 10 markers alone would repeat the first variant's pair at the 11th)."""
    i = rec.order.index(config) if config in rec.order else len(rec.order)
    return COLORS[i % len(COLORS)], MARKERS[(i + i // len(COLORS) * 3) % len(MARKERS)]


def plain_axes(ax, rel_x: float = 0.05, rel_y: float = 0.002) -> None:
    """Plain tick labels (no offset or exponent), and a visible range when the data barely spread
    (e.g. every variant at T timesteps): at least ``rel`` x the centre value."""
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    for get, set_, rel in ((ax.get_xlim, ax.set_xlim, rel_x), (ax.get_ylim, ax.set_ylim, rel_y)):
        lo, hi = get()
        centre, least = (lo + hi) / 2, rel * max(abs((lo + hi) / 2), 1e-12)
        if hi - lo < least:
            set_(centre - least / 2, centre + least / 2)


def panels(n: int, width: float, height: float):
    """A figure of ``n`` stacked panels, each ``width`` x ``height`` inches; returns (figure, axes list)."""
    fig, axes = plt.subplots(n, 1, figsize=(width, height * n), squeeze=False)
    return fig, list(axes[:, 0])


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
