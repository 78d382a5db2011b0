"""Active-token heatmaps: which tokens a halting/merge run kept per block and timestep (from ``maps.npz``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from suite.names import MAPS
from suite.report.content import Figure
from suite.report.load import StudyRecords
from suite.report.style import MAX_WIDTH_IN, legend_outside, save, slug

# every token state is a tint over the grey image, none is the plain image: a state never reads as dark content
TINT, TINT_ALPHA = np.array([1.0, 0.45, 0.0]), 0.55  # active tokens: orange
HALTED_TINT = np.array([0.2, 0.35, 1.0])  # halted (not processed, still a token): blue
MERGED_TINT = np.array([0.0, 0.75, 0.35])  # merged away into another token: green
INACTIVE_TINT = np.array([0.6, 0.1, 0.75])  # not processed, in records that do not tell halted from merged: purple
TILE_IN = 0.8  # one tile (image or timestep) at most this wide
HEATMAP_IMAGES, HEATMAP_RUNS = 4, 2


def token_policy_configs(rec: StudyRecords) -> list[str]:
    """Configs whose variant halts or merges tokens (study.yaml), else whose runs recorded a depth histogram."""
    chosen = []
    for config in rec.present(rec.done):
        g = rec.done[rec.done.config == config]
        variant = rec.variants.get(str(g.variant.iloc[0]))
        by_study = variant is not None and (variant.tokens.halting is not None or variant.tokens.merge is not None)
        by_records = any("depth_histogram" in rec.details.get(str(r), {}) for r in g.run_id)
        if by_study or by_records:
            chosen.append(config)
    return chosen


def heatmap_runs(rec: StudyRecords, limit: int = HEATMAP_RUNS) -> list[tuple[str, str]]:
    """(config, run id) of up to ``limit`` halting/merge configs: the lowest seed with a maps.npz."""
    out = []
    for config in token_policy_configs(rec):
        g = rec.done[rec.done.config == config].sort_values(["seed", "run_id"])
        rid = next((str(r) for r in g.run_id if (rec.study_dir / str(r) / MAPS).is_file()), None)
        if rid is not None:
            out.append((config, rid))
        if len(out) == limit:
            break
    return out


def grey(image: np.ndarray) -> np.ndarray:
    """A normalised [C, H, W] image as [H, W] grey in [0, 1] (channel mean, min-max scaled)."""
    g = np.asarray(image, dtype=np.float64).mean(axis=0)
    lo, hi = float(g.min()), float(g.max())
    return (g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)


def upsample_mask(mask: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The [N] token mask on an (h, w) grid, nearest-upsampled to the image's (H, W)."""
    h, w = grid
    m = np.asarray(mask, dtype=bool).reshape(h, w)
    rows = (np.arange(shape[0]) * h) // shape[0]
    cols = (np.arange(shape[1]) * w) // shape[1]
    return m[np.ix_(rows, cols)]


def overlay(grey_image: np.ndarray, active: np.ndarray, tint: np.ndarray = TINT) -> np.ndarray:
    """RGB: the grey image, with ``active`` pixels tinted (orange by default)."""
    rgb = np.repeat(grey_image[..., None], 3, axis=-1)
    tinted = (1 - TINT_ALPHA) * rgb + TINT_ALPHA * tint
    return np.where(active[..., None], tinted, rgb)


def state_tile(grey_image: np.ndarray, active: np.ndarray, merged: np.ndarray | None) -> np.ndarray:
    """RGB of one (block, step): active pixels orange; the rest blue (halted) and green (merged away), or purple
    (not processed) when the record has no merged map."""
    rgb = overlay(grey_image, active)
    if merged is None:
        return np.where(active[..., None], rgb, overlay(grey_image, ~active, INACTIVE_TINT))
    rgb = np.where((~active & ~merged)[..., None], overlay(grey_image, ~active, HALTED_TINT), rgb)
    return np.where((merged & ~active)[..., None], overlay(grey_image, merged, MERGED_TINT), rgb)


def mosaic(grey_image: np.ndarray, maps: np.ndarray, grid: tuple[int, int], gap: int = 1,
           merged: np.ndarray | None = None, steps: np.ndarray | None = None) -> np.ndarray:
    """One image's panels as one RGB array: rows = blocks, columns = [image, t=1..T]; white gaps between tiles.
    ``merged`` ([L, T, N] like ``maps``): the tokens merged away, drawn apart from halted ones. ``steps`` ([T, H, W]
    grey, event data): the input of each timestep, under that step's column instead of ``grey_image``."""
    L, T = maps.shape[:2]
    H, W = grey_image.shape
    out = np.ones((L * (H + gap) - gap, (T + 1) * (W + gap) - gap, 3))
    plain = np.repeat(grey_image[..., None], 3, axis=-1)
    for b in range(L):
        for col in range(T + 1):
            if col == 0:
                tile = plain
            else:
                up = upsample_mask(maps[b, col - 1], grid, (H, W))
                gone = None if merged is None else upsample_mask(merged[b, col - 1], grid, (H, W))
                tile = state_tile(grey_image if steps is None else steps[col - 1], up, gone)
            out[b * (H + gap):b * (H + gap) + H, col * (W + gap):col * (W + gap) + W] = tile
    return out


def swatch(tint: np.ndarray) -> np.ndarray:
    """The legend colour of a tint over mid grey."""
    return overlay(np.full((1, 1), 0.5), np.ones((1, 1), bool), tint)[0, 0]


def heatmap_figure(rec: StudyRecords, config: str, run_id: str, out: Path, n_images: int = HEATMAP_IMAGES) -> Figure:
    """Active-token masks of a few test images: per image, rows = blocks, columns = the image and timesteps."""
    stem, title = f"token_heatmap_{slug(config)}", f"Active tokens per block and timestep: {config}"
    with np.load(rec.study_dir / run_id / MAPS) as data:
        arrays = {k: data[k] for k in data.files}
    needed = {"images", "maps", "grid"}
    if not needed <= set(arrays):
        return Figure(stem, title, skipped=f"{run_id}/maps.npz lacks {sorted(needed - set(arrays))}")
    images, maps, grid = arrays["images"], arrays["maps"], tuple(int(v) for v in arrays["grid"])
    # Event frames [N, T, C, H, W]: each step's column shows its own frame, the first column all events summed.
    frames = images if images.ndim == 5 and images.shape[1] == maps.shape[2] else None
    if frames is not None:
        images = frames.sum(axis=1)
    if images.ndim != 4 or maps.ndim != 4 or maps.shape[-1] != grid[0] * grid[1] or len(images) == 0:
        return Figure(stem, title, skipped=f"{run_id}/maps.npz: maps {maps.shape} do not fit the {grid} token grid")
    k, (L, T), (H, W) = min(n_images, len(images), len(maps)), maps.shape[1:3], images.shape[2:]
    merged = arrays.get("merged")
    if merged is not None and merged.shape != maps.shape:
        return Figure(stem, title, skipped=f"{run_id}/maps.npz: merged {merged.shape} does not match maps {maps.shape}")
    ncols = min(k, 2)
    nrows = -(-k // ncols)
    tile = min(TILE_IN, (MAX_WIDTH_IN - 0.2 - 0.5 * ncols) / (ncols * (T + 1)))  # wide T shrinks tiles, not the page
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * (tile * (T + 1) + 0.5) + 0.2,
                                                    nrows * (tile * L + 0.6) + 0.7), squeeze=False, layout="constrained")
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    for i, ax in enumerate(axes.flat[:k]):
        steps = None if frames is None else np.stack([grey(f) for f in frames[i]])
        ax.imshow(mosaic(grey(images[i]), maps[i], grid, merged=merged[i] if merged is not None else None,
                         steps=steps), interpolation="nearest")
        ax.grid(False)
        ax.set_xticks([c * (W + 1) + (W - 1) / 2 for c in range(T + 1)], ["image"] + [f"t={t + 1}" for t in range(T)],
                      fontsize=6)
        ax.set_yticks([b * (H + 1) + (H - 1) / 2 for b in range(L)], [f"block {b}" for b in range(L)], fontsize=6)
        ax.tick_params(length=0)
        for b in range(L):
            for t in range(T):
                n = int(maps[i, b, t].sum())
                ax.text((t + 1) * (W + 1) + W - 1, b * (H + 1) + H - 1, str(n), fontsize=4.5, ha="right",
                        va="bottom", color="black", bbox={"boxstyle": "square,pad=0.1", "fc": "white", "lw": 0})
        label = f"label {int(arrays['labels'][i])}" if "labels" in arrays else f"image {i}"
        pred = f", pred {int(arrays['pred'][i])}" if "pred" in arrays else ""
        ax.set_title(label + pred, fontsize=7)
    fig.suptitle(f"{rec.name}: {config} (run {run_id})", fontsize=8)
    handles = [Patch(facecolor=swatch(TINT), label="active: processed in that block and step")]
    if merged is not None:
        handles += [Patch(facecolor=swatch(HALTED_TINT), label="halted: not processed"),
                    Patch(facecolor=swatch(MERGED_TINT), label="merged away into another token")]
        states = "blue = halted (not processed), green = merged away into another token"
    else:
        handles.append(Patch(facecolor=swatch(INACTIVE_TINT), label="not processed: halted or merged away (this "
                                                                    "record does not tell which)"))
        states = ("purple = not processed (this record's maps.npz predates the merged map, so halted and merged "
                  "away are drawn alike)")
    legend_outside(fig, handles, where="below")
    inputs = ("the events of all frames in grey, then one column per timestep over that step's frame"
              if frames is not None else "the input in grey, then one column per timestep")
    caption = (f"Run {run_id}, first {k} recorded test images. Per image: rows = blocks, first column = "
               f"{inputs}; every token is tinted by its state, so none shows as plain "
               f"(dark) image: orange = active (processed) in that block and step, {states}. Token grid "
               f"{grid[0]}×{grid[1]} upsampled to the {H}×{W} image; corner numbers = active tokens of "
               f"{grid[0] * grid[1]}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def heatmap_figures(rec: StudyRecords, out: Path) -> list[Figure]:
    """One heatmap figure per chosen run, or one skipped entry saying why there is none."""
    runs = heatmap_runs(rec)
    return [heatmap_figure(rec, config, rid, out) for config, rid in runs] or [
        Figure("token_heatmap", "Active-token heatmaps", skipped="no finished halting/merge run with a maps.npz")]
