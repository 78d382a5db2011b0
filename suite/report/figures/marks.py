"""Marks that keep crowded scatter figures readable: points outside the axes shown as an arrow and a count at the
edge they left by (``mark_clipped``), and text labels placed where they cover no other label or point
(``place_labels``). Used by the accuracy-vs-cost and search figures. Points are never moved off their true x."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.transforms import Bbox

EDGE_ARROWS = {"bottom": "▼", "top": "▲", "left": "◀", "right": "▶"}
# Candidate label offsets in points (right/up first, then the other sides, then further out): a label takes the
# first that overlaps nothing placed before it, else the first.
LABEL_OFFSETS = ((4, 2), (4, -9), (-4, 2), (-4, -9), (4, 9), (-4, 9), (4, -16), (-4, -16), (10, 16), (-10, -22))
POINT_PT = 3.0  # half the side of the box a drawn point keeps free of labels, in points
EDGE_STACK_FRAC = 0.07  # edge marks closer than this (axes fraction) stack inwards instead of overlapping


def _edge(x: float, y: float, xlim: tuple[float, float], ylim: tuple[float, float]) -> str | None:
    """The edge a point left the axes by (bottom/top before left/right for a corner); None inside."""
    if y < ylim[0]:
        return "bottom"
    if y > ylim[1]:
        return "top"
    if x < xlim[0]:
        return "left"
    if x > xlim[1]:
        return "right"
    return None


def mark_clipped(ax, points: Sequence[tuple[float, float]], color: str, taken: list[tuple[str, float]] | None = None
                 ) -> int:
    """For ``points`` outside the axes' current limits: per edge, one arrow and count (``▼3``) at the edge, in
    ``color``, at the mean position of those points along the edge. ``taken`` collects the marks drawn so far
    (edge, position) so that marks close together stack inwards. Returns how many points are outside."""
    xlim, ylim = tuple(sorted(ax.get_xlim())), tuple(sorted(ax.get_ylim()))
    sides: dict[str, list[float]] = {}
    for x, y in points:
        side = _edge(x, y, xlim, ylim)
        if side is None:
            continue
        lo, hi = (xlim if side in ("bottom", "top") else ylim)
        along = x if side in ("bottom", "top") else y
        sides.setdefault(side, []).append((min(max(along, lo), hi) - lo) / (hi - lo))
    taken = [] if taken is None else taken
    for side, fracs in sides.items():
        pos = float(np.mean(fracs))
        level = sum(1 for s, p in taken if s == side and abs(p - pos) < EDGE_STACK_FRAC)
        taken.append((side, pos))
        inward = 9.0 * level  # points
        horizontal = side in ("bottom", "top")
        xy = (pos, 0.0 if side == "bottom" else 1.0) if horizontal else (0.0 if side == "left" else 1.0, pos)
        offset = {"bottom": (0, inward), "top": (0, -inward), "left": (inward, 0), "right": (-inward, 0)}[side]
        text = ax.annotate(f"{EDGE_ARROWS[side]}{len(fracs)}", xy, xycoords="axes fraction", xytext=offset,
                           textcoords="offset points", color=color, fontsize=7, fontweight="bold", zorder=7,
                           ha={"left": "left", "right": "right"}.get(side, "center"),
                           va={"bottom": "bottom", "top": "top"}.get(side, "center"), annotation_clip=False)
        text.set_in_layout(False)
    return sum(len(f) for f in sides.values())


def place_labels(ax, points: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 6,
                 color: str = "black", avoid: Sequence[tuple[float, float]] = ()) -> list:
    """Annotate each point with its text at the first of ``LABEL_OFFSETS`` where the label overlaps no label
    placed before it and no point (of ``points`` or ``avoid``). Positions are measured on the figure as laid out
    now, so call it after the axes' limits and the layout are final. Returns the annotations."""
    fig = ax.figure
    fig.canvas.draw()  # runs the layout: window extents below are the final ones
    renderer = fig.canvas.get_renderer()
    pad = POINT_PT * fig.dpi / 72.0
    boxes = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad)
             for px, py in ax.transData.transform(np.asarray([*points, *avoid], dtype=float).reshape(-1, 2))]
    placed: list[Bbox] = []
    annotations = []
    for (x, y), text in sorted(zip(points, texts), key=lambda p: (p[0][0], -p[0][1])):
        chosen = None
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              color=color, ha="left" if dx >= 0 else "right", va="bottom", zorder=7)
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed + boxes):
                chosen = ann
                break
            ann.remove()
        if chosen is None:  # crowded everywhere: the first place, as before
            dx, dy = LABEL_OFFSETS[0]
            chosen = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                 color=color, ha="left", va="bottom", zorder=7)
            chosen.set_in_layout(False)
            box = chosen.get_window_extent(renderer)
        placed.append(box)
        annotations.append(chosen)
    return annotations
