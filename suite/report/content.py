"""The report's content model: a figure (written or skipped) and a table of formatted cells.

Figures and tables build these; ``page`` renders them and ``tables`` writes them as markdown and LaTeX.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One figure of the report: written (``paths`` = PNG and PDF) or skipped (``skipped`` = why)."""

    stem: str
    title: str
    caption: str = ""
    paths: tuple[Path, ...] = ()
    skipped: str | None = None


@dataclass(frozen=True)
class Table:
    """One table: header cells, body rows of formatted cells and notes printed under it."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    labels: int = 1  # leading text columns (left-aligned); the rest are numbers (right-aligned)
