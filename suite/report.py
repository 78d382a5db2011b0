"""Figures, tables and an HTML page regenerated from a study's records alone (never retrains, never imports torch).

Reads ``results/<study>/``: ``runs.csv``, ``evals.csv`` (optional), ``study.yaml``, ``<run_id>/metrics.json``
(details: firing rates, active steps, depth and exit histograms) and ``<run_id>/maps.npz`` (active-token maps).
Writes ``results/<study>/report/``: every figure as PNG and PDF, ``table.md``, ``table.tex``, ``evals.md``
(when overrides were evaluated), and the page ``results/<study>/report.html``. Outputs carry no timestamps, so
the same records give byte-identical files. A figure whose data is absent is skipped and the page says why.

Conventions (written next to every number): seeds are summarised as mean ± sample std (ddof=1); the unit of a
point is a *variant* (plus any non-seed matrix axis that varies within it, e.g. ``act (T=2)``); token-units
are active tokens summed over blocks and timesteps (a merged token counts once); energy is the *exact* SOP
convention (``energy_exact_uj``). Published numbers (``baselines/published.yaml``) come from other backbones and
recipes: they are drawn only as hollow reference markers, only for the study's own dataset.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from suite import records  # noqa: E402
from suite.environment import ENVIRONMENT, version  # noqa: E402
from suite.report_html import Figure, Page, Table, render  # noqa: E402

log = logging.getLogger(__name__)

REPORT_DIR, HTML_PAGE = "report", "report.html"
STUDY_FILE = "study.yaml"
KIND_TAG, INVOCATION = "spikesuite.kind", "invocation"  # = suite.tracking.KIND_TAG (not imported: it pulls in torch)
COLORS = tuple(plt.get_cmap("tab10").colors)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
TINT, TINT_ALPHA = np.array([1.0, 0.45, 0.0]), 0.55  # active tokens: orange over the grey image
HEATMAP_IMAGES, HEATMAP_RUNS = 4, 2
MODULE_ORDER = ("q", "k", "v", "qk", "attn", "av", "proj", "mlp1", "mlp2")  # within a block, in forward order
ENERGY_KINDS = ("stem", "attention", "mlp", "head")  # = suite.metrics.KINDS
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "axes.grid": True, "axes.axisbelow": True, "grid.alpha": 0.3,
         "svg.hashsalt": "spikesuite"}
FIGURE_PREFIXES = ("accuracy_vs_", "token_heatmap_", "halting_depth", "timestep_allocation", "firing_rates",
                   "ablation", "early_exit", "energy_breakdown", "search_")
SEARCH_DIR, TRIALS_TABLE = "search", "trials.csv"  # = suite.search's (not imported: it pulls in torch)
OFF_AXES = 10.0  # accuracy points shown below the lowest variant (mean - std) in the accuracy-vs-cost figures
STD_NOTE = "mean ± sample std over seeds (ddof=1); a single seed shows its value alone"


# ----------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Records:
    """A study's records as the report reads them; ``runs``/``evals`` carry a ``config`` label column."""

    study_dir: Path
    runs: pd.DataFrame
    evals: pd.DataFrame | None
    details: Mapping[str, dict]
    study: Mapping[str, Any]
    study_yaml: str
    order: tuple[str, ...]
    off_split: int = 0  # evaluations on another split than the study's (search trials score on val): left out

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs.status == "done"]

    @property
    def name(self) -> str:
        return str(self.study.get("name") or self.study_dir.name)

    @property
    def dataset(self) -> str | None:
        ds = self.study.get("dataset")
        return ds.get("name") if isinstance(ds, dict) else None

    def present(self, frame: pd.DataFrame) -> list[str]:
        """The config labels that occur in ``frame``, in study order."""
        have = set(frame["config"])
        return [c for c in self.order if c in have]


def load_runs(study_dir: Path) -> pd.DataFrame:
    path = study_dir / records.RUNS_TABLE
    if not path.exists():
        raise FileNotFoundError(f"no runs table at {path}: run the study first (spikesuite run STUDY)")
    return pd.read_csv(path, dtype={"run_id": str})  # a hex id such as "123456e78901" must stay a string


def load_evals(study_dir: Path) -> pd.DataFrame | None:
    path = study_dir / records.EVALS_TABLE
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype={"run_id": str})
    return None if frame.empty else frame


def load_study_yaml(study_dir: Path) -> tuple[dict[str, Any], str]:
    """The parsed ``study.yaml`` and its text ({} and "" when absent or unreadable)."""
    try:
        text = (study_dir / STUDY_FILE).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return {}, ""
    return (data if isinstance(data, dict) else {}), text


def load_details(study_dir: Path, run_ids: Iterable[str]) -> dict[str, dict]:
    """``details`` of each run's ``metrics.json`` (runs without a readable one are left out)."""
    out: dict[str, dict] = {}
    for rid in run_ids:
        doc = records.read_json(study_dir / str(rid) / records.METRICS)
        if doc is not None and isinstance(doc.get("details"), dict):
            out[str(rid)] = doc["details"]
    return out


def axis_columns(runs: pd.DataFrame, study: Mapping[str, Any]) -> list[str]:
    """Non-seed matrix axes (and T) that take several values within one variant: they split a variant's points."""
    matrix = study.get("matrix") if isinstance(study.get("matrix"), dict) else {}
    names = [k for k in matrix if k not in ("seed", "include", "exclude", "model.T")]
    for extra in matrix.get("include") or []:
        names += [k for k in extra if k not in ("variant", "seed", "model.T")]
    cols = [c for c in dict.fromkeys(["T", *names]) if c in runs.columns]
    return [c for c in cols if not runs.empty and runs.groupby("variant")[c].nunique().max() > 1]


def _value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def config_labels(frame: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """``variant`` or ``variant (axis=value, ...)`` for each row."""
    if not axes:
        return frame["variant"].astype(str)
    return frame.apply(lambda r: f"{r['variant']} ({', '.join(f'{a}={_value(r[a])}' for a in axes)})", axis=1)


def config_order(runs: pd.DataFrame, study: Mapping[str, Any], axes: Sequence[str]) -> tuple[str, ...]:
    """Variants in study.yaml order (others after, sorted), then by axis values; failed runs count too, so a
    variant keeps its colour whether or not its runs finished."""
    declared = list(study.get("variants") or {}) if isinstance(study.get("variants"), dict) else []
    rank = {v: i for i, v in enumerate(declared)}
    keys = runs[["variant", *axes, "config"]].drop_duplicates("config")
    keys = keys.assign(_rank=keys["variant"].map(lambda v: rank.get(v, len(rank))), _name=keys["variant"].astype(str))
    return tuple(keys.sort_values(["_rank", "_name", *axes], kind="stable")["config"])


def load_records(study_dir: Path) -> Records:
    """Everything the report needs, read from the records directory."""
    study_dir = Path(study_dir)
    runs = load_runs(study_dir)
    study, text = load_study_yaml(study_dir)
    axes = axis_columns(runs, study)
    runs = runs.assign(config=config_labels(runs, axes)) if not runs.empty else runs.assign(config=[])
    done_ids = set(runs.loc[runs.status == "done", "run_id"].astype(str))
    evals, off_split = load_evals(study_dir), 0
    if evals is not None:
        evals = evals[evals.run_id.astype(str).isin(done_ids)]
        same = eval_splits(evals, study) == main_split(study)
        evals, off_split = evals[same], int((~same).sum())
        evals = evals.assign(config=config_labels(evals, axes)) if not evals.empty else None
    return Records(study_dir, runs, evals, load_details(study_dir, sorted(done_ids)), study, text,
                   config_order(runs, study, axes) if not runs.empty else (), off_split)


def main_split(study: Mapping[str, Any]) -> str:
    ev = study.get("eval") if isinstance(study.get("eval"), dict) else {}
    return str(ev.get("split", "test"))


def parsed_setting(setting: Any) -> dict[str, Any] | None:
    """An evals.csv ``set`` cell (JSON of the dotted-path updates) as a dict; None when absent or unreadable."""
    try:
        value = yaml.safe_load(setting) if isinstance(setting, str) else None
    except yaml.YAMLError:
        return None
    return value if isinstance(value, dict) else None


def eval_splits(evals: pd.DataFrame, study: Mapping[str, Any]) -> pd.Series:
    """The split each evaluation scored on: its ``eval.split`` override, else the study's. Numbers on different
    splits are never drawn or tabulated together (eval-stage search trials score on val, runs on test)."""
    def split(setting: Any) -> str:
        value = parsed_setting(setting)
        return str(value.get("eval.split", main_split(study))) if value is not None else main_split(study)

    column = evals["set"] if "set" in evals else pd.Series([None] * len(evals), index=evals.index)
    return column.map(split)


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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (lower cost x, higher accuracy y), sorted by cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def nondominated(values: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the rows of ``values`` [n, k] that no other row dominates (at least as good in every objective,
    better in one); equal rows are all kept, as Optuna's ``best_trials`` keeps them."""
    v = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0) * np.asarray(values, dtype=float)  # all minimised
    no_worse = (v[:, None, :] <= v[None, :, :]).all(-1)  # [i, j]: i is no worse than j everywhere
    better = (v[:, None, :] < v[None, :, :]).any(-1)
    return ~(no_worse & better).any(0)


def layer_key(name: str) -> tuple:
    """Forward order of a layer name: stem.*, block<i>.<module> (q k v attn proj mlp1 mlp2), head, others."""
    head, _, tail = name.partition(".")
    if head == "stem":
        return (0, 0, int(tail) if tail.isdigit() else 10**6, tail)
    if head.startswith("block") and head[5:].isdigit():
        rank = MODULE_ORDER.index(tail) if tail in MODULE_ORDER else len(MODULE_ORDER)
        return (1, int(head[5:]), rank, tail)
    return (2 if head == "head" else 3, 0, 0, name)


def ordered_layers(dicts: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({k for d in dicts for k in d}, key=layer_key)


def energy_constants(study: Mapping[str, Any]) -> str:
    ev = study.get("eval") if isinstance(study.get("eval"), dict) else {}
    return f"E_MAC {ev.get('e_mac_pj', 4.6)} pJ, E_AC {ev.get('e_ac_pj', 0.9)} pJ"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "run"


# ----------------------------------------------------------------------------------------------- published


@dataclass(frozen=True)
class ParetoAxis:
    metric: str
    stem: str
    title: str
    label: str


def pareto_axes(study: Mapping[str, Any]) -> tuple[ParetoAxis, ...]:
    return (
        ParetoAxis("token_units", "accuracy_vs_tokens", "Accuracy vs token-units",
                   "token-units per image (active tokens summed over blocks x timesteps)"),
        ParetoAxis("timesteps_mean", "accuracy_vs_timesteps", "Accuracy vs timesteps",
                   "mean active timesteps (mean over modules; mean exit step for early exit)"),
        ParetoAxis("energy_exact_uj", "accuracy_vs_energy", "Accuracy vs energy",
                   f"energy per image (uJ, exact SOP convention, {energy_constants(study)})"),
    )


def published_for(dataset: str | None) -> tuple[pd.DataFrame | None, str]:
    """Published reference rows for ``dataset`` and a sentence saying what was (not) drawn."""
    try:
        from baselines.published import DATASETS, load_published, published_frame
    except ImportError:
        return None, "Published numbers: baselines.published is not importable; none drawn."
    if dataset is None or dataset not in DATASETS or dataset == "other":
        covered = ", ".join(d for d in DATASETS if d != "other")
        return None, (f"Published numbers: none for dataset '{dataset}' (published.yaml covers {covered}); "
                      "none drawn.")
    try:
        frame = published_frame(load_published(), dataset)
    except Exception as exc:  # a malformed published.yaml must not stop the report
        return None, f"Published numbers: not loaded ({exc}); none drawn."
    if frame.empty:
        return None, f"Published numbers: none for dataset '{dataset}'; none drawn."
    return frame, (f"Hollow markers: published numbers for {dataset} from other papers (their own backbone, "
                   "recipe and energy script), references only, never measured here.")


def published_points(frame: pd.DataFrame | None, metric: str, done: pd.DataFrame) -> pd.DataFrame:
    """Published (x, accuracy, method) placed on ``metric``'s axis; empty when the metric has no counterpart.

    timesteps -> timesteps_mean; energy_mj x 1000 -> uJ; token_reduction r -> (1 - r) x this study's dense
    token-units (only when that is one number), i.e. the same fraction of dense."""
    empty = pd.DataFrame(columns=["x", "accuracy", "method", "backbone", "confidence"])
    if frame is None or frame.empty:
        return empty
    f = frame.dropna(subset=["accuracy"])
    if metric == "timesteps_mean":
        x = f["timesteps"]
    elif metric == "energy_exact_uj":
        x = f["energy_mj"] * 1000.0
    elif metric == "token_units" and "dense_token_units" in done and done["dense_token_units"].nunique() == 1:
        x = (1.0 - f["token_reduction"]) * float(done["dense_token_units"].iloc[0])
    else:
        return empty
    pts = pd.DataFrame({"x": x, "accuracy": f["accuracy"], "method": f["method"],
                        "backbone": f["backbone"].fillna("backbone not given"), "confidence": f["confidence"]})
    return pts.dropna(subset=["x", "accuracy"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- figures


def save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(fig)
    return paths


def style(rec: Records, config: str) -> tuple[tuple[float, ...], str]:
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


def _sweep(rec: Records, ax, config: str, metric: str) -> list[tuple[float, float]]:
    """One variant's evaluation overrides as a dashed curve through (trained, override means); returns the
    override points."""
    ev = rec.evals
    if ev is None or metric not in ev or "accuracy" not in ev:
        return []
    mine = ev[(ev.config == config)].dropna(subset=[metric, "accuracy"])
    if mine.empty:
        return []
    means = mine.groupby("override", sort=True)[[metric, "accuracy"]].mean()
    base = rec.done[rec.done.config == config][[metric, "accuracy"]].dropna().mean()
    pts = sorted([(float(base[metric]), float(base["accuracy"]))] +
                 [(float(r[metric]), float(r["accuracy"])) for _, r in means.iterrows()])
    color, _ = style(rec, config)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", lw=0.9, marker=".", ms=4, color=color, alpha=0.8,
            zorder=2)
    return [(float(r[metric]), float(r["accuracy"])) for _, r in means.iterrows()]


def pareto_figure(rec: Records, axis: ParetoAxis, published: pd.DataFrame | None, published_note: str,
                  out: Path) -> Figure:
    """Accuracy vs one cost: variant means ± std over seeds, their non-dominated front, override sweeps,
    published reference markers."""
    done = rec.done
    if axis.metric not in done or "accuracy" not in done or done[[axis.metric, "accuracy"]].dropna().empty:
        return Figure(axis.stem, axis.title, skipped=f"no finished run has both accuracy and {axis.metric}")
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    means, lows, swept = [], [], []
    for config in rec.present(done):
        g = done[done.config == config]
        sx, sy = stat(g[axis.metric]), stat(g["accuracy"])
        if sx.n == 0 or sy.n == 0:
            continue
        color, marker = style(rec, config)
        ax.errorbar(sx.mean, sy.mean, xerr=sx.std if sx.n > 1 else None, yerr=sy.std if sy.n > 1 else None, fmt=marker,
                    color=color, capsize=3, ms=6, zorder=4, label=f"{config} (n={sy.n})")
        means.append((sx.mean, sy.mean))
        lows.append(sy.mean - (sy.std if sy.n > 1 else 0.0))
        swept += _sweep(rec, ax, config, axis.metric)
    sweeps = len(swept)
    # Overrides that collapse accuracy (a threshold far out of range) would squash every variant into the top
    # of the axes: the axes stop OFF_AXES points below the lowest variant, and the caption counts what is cut.
    floor = min(lows, default=0.0) - OFF_AXES
    cut = sum(1 for _, y in swept if y < floor)
    if cut:
        ax.set_ylim(bottom=floor)
    front = pareto_front(means)
    overrides = ", ".join(sorted(rec.evals.override.astype(str).unique())) if rec.evals is not None else ""
    handles = [Line2D([], [], color="0.25", lw=1.2, drawstyle="steps-post", label="non-dominated front (variant means)")]
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.25", lw=1.2, zorder=3)
    if sweeps:
        handles.append(Line2D([], [], color="0.4", ls="--", marker=".", lw=0.9,
                              label="evaluation overrides (mean over seeds)"))
    pub = published_points(published, axis.metric, done)
    if not pub.empty:
        handles.append(ax.scatter(pub.x, pub.accuracy, marker="o", s=36, facecolors="none", edgecolors="black",
                                  linewidths=1.0, zorder=5, label="published (other backbone/dataset)"))
        for i, row in enumerate(pub.itertuples(), 1):
            ax.annotate(f"P{i}", (row.x, row.accuracy), xytext=(4, 2), textcoords="offset points", fontsize=5)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{rec.name}: {axis.title.lower()}")
    plain_axes(ax)
    own, labels = ax.get_legend_handles_labels()
    pairs = [(h, lab) for h, lab in zip(own, labels) if h not in handles] + [(h, h.get_label()) for h in handles]
    ax.legend([p[0] for p in pairs], [p[1] for p in pairs], frameon=False, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    pub_note = published_note
    if published is not None and pub.empty:
        pub_note = f"Published numbers for {rec.dataset} give no value on this axis; none drawn."
    elif not pub.empty:
        pub_note += " Key: " + "; ".join(f"P{i} {r.method} ({r.backbone}; confidence: {r.confidence})"
                                         for i, r in enumerate(pub.itertuples(), 1)) + "."
    caption = (f"Points: variant means, error bars: sample std over seeds (ddof=1). Step line: non-dominated front "
               f"over the variant means (lower {axis.metric}, higher accuracy). "
               + (f"Dashed curves: evaluation overrides from evals.csv ({overrides}), mean over seeds, joined "
                  "with the as-trained point in order of cost (numbers in evals.md). " if sweeps
                  else "No evaluation overrides recorded. ")
               + (f"{cut} override point(s) below {floor:.1f} % accuracy lie under the axes (numbers in evals.md). "
                  if cut else "")
               + "".join(f"{n} " for n in off_split_note(rec))
               + pub_note)
    return Figure(axis.stem, f"{axis.title} ({axis.metric})", caption, tuple(save(fig, out, axis.stem)))


def token_policy_configs(rec: Records) -> list[str]:
    """Configs whose variant halts or merges tokens (study.yaml), else whose runs recorded a depth histogram."""
    variants = rec.study.get("variants") if isinstance(rec.study.get("variants"), dict) else {}
    chosen = []
    for config in rec.present(rec.done):
        g = rec.done[rec.done.config == config]
        tokens = (variants.get(str(g.variant.iloc[0])) or {}).get("tokens") or {}
        by_study = any(tokens.get(k) for k in ("halting", "merge")) if isinstance(tokens, dict) else False
        by_records = any("depth_histogram" in rec.details.get(str(r), {}) for r in g.run_id)
        if by_study or by_records:
            chosen.append(config)
    return chosen


def heatmap_runs(rec: Records, limit: int = HEATMAP_RUNS) -> list[tuple[str, str]]:
    """(config, run id) of up to ``limit`` halting/merge configs: the lowest seed with a maps.npz."""
    out = []
    for config in token_policy_configs(rec):
        g = rec.done[rec.done.config == config].sort_values(["seed", "run_id"])
        rid = next((str(r) for r in g.run_id if (rec.study_dir / str(r) / records.MAPS).is_file()), None)
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


def overlay(grey_image: np.ndarray, active: np.ndarray) -> np.ndarray:
    """RGB: the grey image, with active pixels tinted orange."""
    rgb = np.repeat(grey_image[..., None], 3, axis=-1)
    tinted = (1 - TINT_ALPHA) * rgb + TINT_ALPHA * TINT
    return np.where(active[..., None], tinted, rgb)


def mosaic(grey_image: np.ndarray, maps: np.ndarray, grid: tuple[int, int], gap: int = 1) -> np.ndarray:
    """One image's panels as one RGB array: rows = blocks, columns = [image, t=1..T]; white gaps between tiles."""
    L, T = maps.shape[:2]
    H, W = grey_image.shape
    out = np.ones((L * (H + gap) - gap, (T + 1) * (W + gap) - gap, 3))
    plain = np.repeat(grey_image[..., None], 3, axis=-1)
    for b in range(L):
        for col in range(T + 1):
            tile = plain if col == 0 else overlay(grey_image, upsample_mask(maps[b, col - 1], grid, (H, W)))
            out[b * (H + gap):b * (H + gap) + H, col * (W + gap):col * (W + gap) + W] = tile
    return out


def heatmap_figure(rec: Records, config: str, run_id: str, out: Path, n_images: int = HEATMAP_IMAGES) -> Figure:
    """Active-token masks of a few test images: per image, rows = blocks, columns = the image and timesteps."""
    stem, title = f"token_heatmap_{slug(config)}", f"Active tokens per block and timestep: {config}"
    with np.load(rec.study_dir / run_id / records.MAPS) as data:
        arrays = {k: data[k] for k in data.files}
    needed = {"images", "maps", "grid"}
    if not needed <= set(arrays):
        return Figure(stem, title, skipped=f"{run_id}/maps.npz lacks {sorted(needed - set(arrays))}")
    images, maps, grid = arrays["images"], arrays["maps"], tuple(int(v) for v in arrays["grid"])
    if images.ndim != 4 or maps.ndim != 4 or maps.shape[-1] != grid[0] * grid[1] or len(images) == 0:
        return Figure(stem, title, skipped=f"{run_id}/maps.npz: maps {maps.shape} do not fit the {grid} token grid")
    k, (L, T), (H, W) = min(n_images, len(images), len(maps)), maps.shape[1:3], images.shape[2:]
    ncols = min(k, 2)
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * (0.8 * (T + 1) + 0.5) + 0.2, nrows * (0.8 * L + 0.6) + 0.4),
                             squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    for i, ax in enumerate(axes.flat[:k]):
        ax.imshow(mosaic(grey(images[i]), maps[i], grid), interpolation="nearest")
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
    fig.suptitle(f"{rec.name}: {config} (run {run_id}); orange = active token", fontsize=8)
    fig.tight_layout()
    caption = (f"Run {run_id}, first {k} recorded test images. Per image: rows = blocks, first column = the input in "
               f"grey, then one column per timestep; orange = token active (processed) in that block and step, plain "
               f"= halted or merged away. Token grid {grid[0]}x{grid[1]} upsampled to the {H}x{W} image; corner "
               f"numbers = active tokens of {grid[0] * grid[1]}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def _runs_with(rec: Records, key: str) -> dict[str, list[Any]]:
    """config -> [details[key] of each finished seed that recorded it], in study order."""
    out: dict[str, list[Any]] = {}
    for config in rec.present(rec.done):
        vals = [rec.details[str(r)][key] for r in rec.done[rec.done.config == config].sort_values("seed").run_id
                if key in rec.details.get(str(r), {})]
        if vals:
            out[config] = vals
    return out


def _stack(values: list[Sequence[float]]) -> np.ndarray | None:
    lengths = {len(v) for v in values}
    return np.asarray(values, dtype=np.float64) if len(lengths) == 1 else None


def _panels(n: int, width: float, height: float):
    fig, axes = plt.subplots(n, 1, figsize=(width, height * n), squeeze=False)
    return fig, list(axes[:, 0])


def depth_figure(rec: Records, out: Path) -> Figure:
    """Fraction of tokens by the number of units (block x timestep) they were processed for, per halting variant."""
    stem, title = "halting_depth", "Halting depth histogram"
    data = _runs_with(rec, "depth_histogram")
    if not data:
        return Figure(stem, title, skipped="no run recorded a depth_histogram (no halting variant)")
    fig, axes = _panels(len(data), 5.6, 1.9)
    for ax, (config, hists) in zip(axes, data.items()):
        arr = _stack(hists)
        if arr is None:
            ax.set_title(f"{config}: seeds disagree on the histogram length, not drawn")
            continue
        units = np.arange(arr.shape[1])
        mean, std = arr.mean(0), arr.std(0, ddof=1) if len(arr) > 1 else None
        color, _ = style(rec, config)
        ax.bar(units, mean, yerr=std, color=color, alpha=0.85, capsize=2, width=0.8)
        ax.set_title(f"{config} (n={len(arr)}): mean {float((units * mean).sum()):.2f} of {units[-1]} units")
        ax.set_ylabel("fraction of tokens")
        ax.set_xticks(units)
    axes[-1].set_xlabel("units processed per token (blocks x timesteps; the last bar = all units)")
    fig.tight_layout()
    caption = (f"details.depth_histogram of each halting run: fraction of tokens per number of processed units "
               f"(0..L*T), {STD_NOTE}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def allocation_figure(rec: Records, out: Path) -> Figure:
    """Active timesteps per module, per timestep-mask variant."""
    stem, title = "timestep_allocation", "Timestep allocation per module"
    data = _runs_with(rec, "active_steps")
    if not data:
        return Figure(stem, title, skipped="no run recorded active_steps (no timestep-mask variant)")
    layers = ordered_layers(d for runs in data.values() for d in runs)
    fig, axes = _panels(len(data), max(5.6, 0.2 * len(layers) + 1.5), 2.0)
    for ax, (config, steps) in zip(axes, data.items()):
        arr = np.array([[s.get(layer, np.nan) for layer in layers] for s in steps], dtype=np.float64)
        mean = np.nanmean(arr, 0)
        std = np.nanstd(arr, 0, ddof=1) if len(arr) > 1 else None
        color, _ = style(rec, config)
        x = np.arange(len(layers))
        ax.bar(x, mean, yerr=std, color=color, alpha=0.85, capsize=2, width=0.8)
        T = stat(rec.done[rec.done.config == config]["T"]).mean if "T" in rec.done else math.nan
        if math.isfinite(T):
            ax.axhline(T, color="0.3", ls="--", lw=0.8)
        ax.set_title(f"{config} (n={len(arr)}): mean {float(np.nanmean(mean)):.2f} active steps"
                     + (f" (dashed: T = {_value(T)})" if math.isfinite(T) else ""))
        ax.set_ylabel("active timesteps")
        ax.set_xticks(x, layers, rotation=90)
    fig.tight_layout()
    caption = (f"details.active_steps: timesteps each LIF module keeps after its trained mask, {STD_NOTE}. "
               "Dashed: T (all steps).")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def firing_figure(rec: Records, out: Path) -> Figure:
    """Per-layer firing rates, one line per variant (mean over seeds)."""
    stem, title = "firing_rates", "Firing rate per layer"
    data = _runs_with(rec, "firing_rates")
    if not data:
        return Figure(stem, title, skipped="no run recorded firing_rates")
    layers = ordered_layers(d for runs in data.values() for d in runs)
    fig, ax = plt.subplots(figsize=(max(5.6, 0.22 * len(layers) + 1.5), 3.4))
    x = np.arange(len(layers))
    for config, rates in data.items():
        arr = np.array([[r.get(layer, np.nan) for layer in layers] for r in rates], dtype=np.float64)
        color, marker = style(rec, config)
        ax.plot(x, np.nanmean(arr, 0), marker=marker, ms=3.5, lw=1, color=color, label=f"{config} (n={len(arr)})")
    ax.set_xticks(x, layers, rotation=90)
    ax.set_ylabel("firing rate (spikes / processed element)")
    ax.set_title(f"{rec.name}: firing rate per LIF layer")
    ax.legend(frameon=False)
    fig.tight_layout()
    caption = ("details.firing_rates on the test data (spikes over processed entries only), mean over seeds; "
               "layers in forward order.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def _bar_limits(stats: Sequence[Stat], top: float | None = None) -> tuple[float, float]:
    lo = min(s.mean - (s.std if math.isfinite(s.std) else 0) for s in stats)
    hi = max(s.mean + (s.std if math.isfinite(s.std) else 0) for s in stats)
    pad = max(1.0, 0.15 * (hi - lo))
    return max(0.0, lo - pad), hi + pad if top is None else min(top, hi + pad)


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


def search_figures(rec: Records, out: Path) -> list[Figure]:
    search = rec.study.get("search") if isinstance(rec.study.get("search"), dict) else {}
    objectives = [o for o in search.get("objectives") or [] if isinstance(o, dict)]
    metrics = [str(o.get("metric")) for o in objectives]
    directions = [str(o.get("direction")) for o in objectives]
    figures = []
    for variant, path in search_tables(rec.study_dir):
        stem = f"search_pareto_{slug(variant)}" if variant else "search_pareto"
        trials = pd.read_csv(path)
        if not metrics or any(m not in trials for m in metrics):
            figures.append(Figure(stem, "Search", skipped=f"{path}: no objective columns matching study.yaml"))
            continue
        title = search_title(f"{rec.name}-{search.get('stage', 'eval')}" + (f"-{variant}" if variant else ""))
        done = int((trials.state == "COMPLETE").sum()) if "state" in trials else 0
        caption = (f"{done} complete of {len(trials)} trials ({search.get('sampler', 'tpe')} sampler); each trial's "
                   f"objectives are means over the variant's seeds"
                   + (f", scored on the {search.get('split', 'val')} split (test-split numbers of the Pareto "
                      "settings: evals.md, overrides named trial<N>-test)" if search.get("stage", "eval") == "eval"
                      else "") + f". Red: the Pareto set (non-dominated trials). Table: {path.relative_to(rec.study_dir)}.")
        figures.append(Figure(stem, title, caption, tuple(search_figure(trials, metrics, directions, title, out, stem))))
    return figures


def ablation_figure(rec: Records, out: Path) -> Figure:
    """Accuracy and token % of dense per variant, bars = mean, error bars = std over seeds."""
    stem, title = "ablation", "Ablation: accuracy and tokens per variant"
    done = rec.done
    metrics = [m for m in ("accuracy", "token_pct") if m in done]
    configs = rec.present(done)
    if not configs or not metrics:
        return Figure(stem, title, skipped="no finished run with accuracy or token_pct")
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.6, 1.1 * len(configs) * len(metrics) + 1.5), 3.2),
                             squeeze=False)
    x = np.arange(len(configs))
    for ax, metric in zip(axes[0], metrics):
        stats = [stat(done[done.config == c][metric]) for c in configs]
        ok = [s for s in stats if s.n]
        if not ok:
            ax.set_title(f"{metric}: no data")
            continue
        colors = [style(rec, c)[0] for c in configs]
        ax.bar(x, [s.mean for s in stats], color=colors, alpha=0.85, width=0.7)
        spread = [(xi, s) for xi, s in zip(x, stats) if s.n > 1]
        if spread:
            ax.errorbar([p[0] for p in spread], [p[1].mean for p in spread], yerr=[p[1].std for p in spread], fmt="none",
                        ecolor="black", capsize=3, lw=1)
        if metric == "accuracy":
            ax.set_ylim(*_bar_limits(ok, 100.0))
            ax.set_ylabel("test accuracy (%) [axis not from 0]")
        else:
            ax.set_ylim(0, max(100.0, max(s.mean for s in ok)) * 1.08)
            ax.axhline(100, color="0.3", ls="--", lw=0.8)
            ax.set_ylabel("token-units, % of dense")
        ax.set_xticks(x, [f"{c} (n={s.n})" for c, s in zip(configs, stats)], rotation=30, ha="right")
    fig.suptitle(f"{rec.name}: per-variant ablation", fontsize=9)
    fig.tight_layout()
    caption = f"Bars: {STD_NOTE}; n = finished seeds. The accuracy axis does not start at 0."
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def exit_figure(rec: Records, out: Path) -> Figure:
    """Share of test images exiting at each timestep, per early-exit variant."""
    stem, title = "early_exit", "Early-exit histogram"
    data = _runs_with(rec, "exit_histogram")
    if not data:
        return Figure(stem, title, skipped="no run recorded an exit_histogram (no early-exit variant)")
    fig, ax = plt.subplots(figsize=(5.6, 3.0))
    width = 0.8 / len(data)
    for j, (config, hists) in enumerate(data.items()):
        arr = _stack(hists)
        if arr is None:
            continue
        frac = arr / np.clip(arr.sum(1, keepdims=True), 1, None)
        steps = np.arange(1, arr.shape[1] + 1)
        color, _ = style(rec, config)
        ax.bar(steps + (j - (len(data) - 1) / 2) * width, frac.mean(0), width=width, color=color, alpha=0.85,
               yerr=frac.std(0, ddof=1) if len(frac) > 1 else None, capsize=2, label=f"{config} (n={len(frac)})")
    ax.set_xlabel("exit timestep")
    ax.set_ylabel("fraction of test images")
    ax.set_title(f"{rec.name}: exit timestep")
    ax.legend(frameon=False)
    fig.tight_layout()
    caption = f"details.exit_histogram normalised per run, {STD_NOTE}."
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def energy_figure(rec: Records, out: Path) -> Figure:
    """Exact-convention energy per image split by module kind, stacked per variant (means over seeds)."""
    stem, title = "energy_breakdown", "Energy by module kind"
    cols = [f"energy_exact_uj_{k}" for k in ENERGY_KINDS]
    done = rec.done
    if not all(c in done for c in cols) or done[cols].dropna().empty:
        return Figure(stem, title, skipped="runs.csv has no energy_exact_uj_<stem|attention|mlp|head> columns")
    configs = rec.present(done.dropna(subset=cols))
    fig, ax = plt.subplots(figsize=(max(5.6, 0.9 * len(configs) + 2), 3.2))
    x, bottom = np.arange(len(configs)), np.zeros(len(configs))
    for kind, col, shade in zip(ENERGY_KINDS, cols, ("0.2", "0.45", "0.65", "0.85")):
        vals = np.array([stat(done[done.config == c][col]).mean for c in configs])
        ax.bar(x, vals, bottom=bottom, color=shade, edgecolor="black", linewidth=0.4, width=0.6, label=kind)
        bottom += vals
    ax.set_xticks(x, configs, rotation=30, ha="right")
    ax.set_ylabel("energy per image (uJ, exact)")
    ax.set_title(f"{rec.name}: energy by module kind")
    ax.legend(frameon=False, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    fig.tight_layout()
    caption = (f"energy_exact_uj_<kind>, mean over seeds: E_MAC x MACs + E_AC x exact SOPs per module kind (stem, "
               f"attention incl. QK^T and (QK^T)V, MLP, head), {energy_constants(rec.study)}.")
    return Figure(stem, title, caption, tuple(save(fig, out, stem)))


def build_figures(rec: Records, out: Path) -> list[Figure]:
    published, note = published_for(rec.dataset)
    figures = [pareto_figure(rec, axis, published, note, out) for axis in pareto_axes(rec.study)]
    runs = heatmap_runs(rec)
    figures += [heatmap_figure(rec, config, rid, out) for config, rid in runs] or [
        Figure("token_heatmap", "Active-token heatmaps", skipped="no finished halting/merge run with a maps.npz")]
    figures += [depth_figure(rec, out), allocation_figure(rec, out), firing_figure(rec, out),
                ablation_figure(rec, out), exit_figure(rec, out), energy_figure(rec, out)]
    return figures + search_figures(rec, out)


# ----------------------------------------------------------------------------------------------- tables

MAIN_HEADERS = ("variant", "n seeds", "accuracy (%)", "token-units (% of dense)", "timesteps (mean)",
                "energy (uJ, exact)", "images/s")


def _stats(frame: pd.DataFrame, metric: str) -> Stat:
    return stat(frame[metric]) if metric in frame else Stat(0, math.nan, math.nan)


def _metric_rows(groups: Sequence[pd.DataFrame], places: dict[str, int]) -> list[list[str]]:
    """The metric cells (n, accuracy, token-units (%), timesteps, energy) of each group of seeds."""
    rows = []
    for g in groups:
        acc, units, pct = _stats(g, "accuracy"), _stats(g, "token_units"), _stats(g, "token_pct")
        tokens = fmt_pm(units, places["token_units"])
        if pct.n:
            tokens += f" ({pct.mean:.1f} %)"
        rows.append([str(acc.n), fmt_pm(acc, 2), tokens, fmt_pm(_stats(g, "timesteps_mean"), 2),
                     fmt_pm(_stats(g, "energy_exact_uj"), places["energy_exact_uj"])])
    return rows


def _places(frames: Sequence[pd.DataFrame]) -> dict[str, int]:
    def means(metric: str) -> list[float]:
        return [_stats(f, metric).mean for f in frames]

    return {"token_units": decimals(means("token_units"), 4, 1), "energy_exact_uj": decimals(means("energy_exact_uj"), 4)}


def table_notes(rec: Records) -> tuple[str, ...]:
    ev = rec.study.get("eval") if isinstance(rec.study.get("eval"), dict) else {}
    runs = rec.runs
    notes = [
        f"Numbers: {STD_NOTE}. Accuracy: top-1 % on the {ev.get('split', 'test')} split.",
        "Token-units: active tokens per image summed over blocks and timesteps (a merged token counts once); "
        "in brackets the mean % of the dense count (token_pct).",
        "Timesteps: mean active timesteps over modules (timesteps_mean; mean exit step for early exit).",
        f"Energy: E_MAC x MACs + E_AC x SOPs, exact SOP convention (energy_exact_uj), {energy_constants(rec.study)}, "
        "uJ per image.",
        "Images/s: wall-clock throughput of the evaluation machine, mean over seeds (apart from the counts).",
    ]
    bad = runs[runs.status != "done"]
    for status, g in bad.groupby("status", sort=True):
        ids = ", ".join(f"{r.run_id} ({r.variant}, seed {_value(r.seed)})" for r in g.itertuples())
        notes.append(f"Not in the table, {status}: {ids}.")
    return tuple(notes)


def main_table(rec: Records) -> Table:
    done = rec.done
    configs = rec.present(done)
    groups = [done[done.config == c] for c in configs]
    rows = _metric_rows(groups, _places(groups))
    body = []
    for config, g, cells in zip(configs, groups, rows):
        ips = _stats(g, "images_per_s")
        body.append((config, *cells, f"{ips.mean:.0f}" if ips.n else "n/a"))
    return Table(f"{rec.name}: results per variant", MAIN_HEADERS, tuple(body), table_notes(rec))


def natural_key(text: str) -> tuple:
    """Sort key reading digit runs as numbers: trial2 before trial10, named overrides before search trials."""
    return (text.startswith("trial"), *[(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text)])


def setting_text(setting: Any) -> str:
    """An override's settings for a table cell: floats to 4 significant digits, the split left out (every row of
    the table is on the study's split)."""
    value = parsed_setting(setting)
    if value is None:
        return "" if setting is None or (isinstance(setting, float) and math.isnan(setting)) else str(setting)
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                     if k != "eval.split")


def off_split_note(rec: Records) -> tuple[str, ...]:
    if not rec.off_split:
        return ()
    return (f"{rec.off_split} evaluation(s) on another split than {main_split(rec.study)} (search trials) are in "
            "evals.csv and search/ but not here.",)


def evals_table(rec: Records) -> Table | None:
    """Per variant: the as-trained row, then each evaluation override (mean ± std over seeds)."""
    ev = rec.evals
    if ev is None or ev.empty:
        return None
    done = rec.done
    keyed: list[tuple[str, str, str, pd.DataFrame]] = []
    for config in rec.present(ev):
        keyed.append((config, "(as trained)", "", done[done.config == config]))
        mine = ev[ev.config == config]
        for name, g in sorted(mine.groupby("override"), key=lambda kv: natural_key(str(kv[0]))):
            keyed.append((config, str(name), setting_text(g["set"].iloc[0]) if "set" in g else "", g))
    groups = [k[3] for k in keyed]
    rows = _metric_rows(groups, _places(groups))
    headers = ("variant", "override", "set", "n seeds", *MAIN_HEADERS[2:6])
    body = tuple((c, name, setting, *cells) for (c, name, setting, _), cells in zip(keyed, rows))
    notes = (f"Evaluation-time overrides of each trained checkpoint (evals.csv), {STD_NOTE}.",
             "Columns as in table.md; '(as trained)' is the run's own evaluation (runs.csv).",
             *off_split_note(rec))
    return Table(f"{rec.name}: evaluation overrides", headers, body, notes, labels=3)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    """A markdown table (first column left-aligned, numbers right-aligned) with its notes as a list."""
    align = ["---"] * table.labels + ["---:"] * (len(table.headers) - table.labels)
    lines = [f"# {table.title}", "", "| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text).replace("±", r"$\pm$")


def table_latex(table: Table, label: str) -> str:
    """A booktabs table environment; the notes become the caption."""
    spec = "l" * table.labels + "r" * (len(table.headers) - table.labels)
    lines = ["% generated by `spikesuite report` from the study's records; needs \\usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + tex_escape(table.title + ". " + " ".join(table.notes)) + "}",
             r"\label{" + label + "}", r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(tex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(path, text)
    return path


def write_tables(rec: Records, out: Path) -> tuple[list[Table], list[Path]]:
    table = main_table(rec)
    paths = [write_text(out / "table.md", table_markdown(table)),
             write_text(out / "table.tex", table_latex(table, f"tab:{slug(rec.name)}-results"))]
    tables = [table]
    ev = evals_table(rec)
    if ev is not None:
        paths.append(write_text(out / "evals.md", table_markdown(ev)))
        tables.append(ev)
    elif (out / "evals.md").exists():
        (out / "evals.md").unlink()
    return tables, paths


# ----------------------------------------------------------------------------------------------- page


def environment(rec: Records) -> tuple[dict[str, str], str]:
    """Machine and package versions: recorded ones (``environment.json`` or details.environment) when the records
    hold them, else read now (the report machine). Training hosts always come from the runs' status.json."""
    recorded = records.read_json(rec.study_dir / ENVIRONMENT)
    if recorded is None:
        recorded = next((d["environment"] for d in rec.details.values() if isinstance(d.get("environment"), dict)),
                        None)
    if recorded is not None:
        env, source = {str(k): str(v) for k, v in sorted(recorded.items())}, "Recorded by the latest spikesuite run of this study (environment.json)."
    else:
        env = {"python": platform.python_version(), "platform": platform.platform(),
               "machine": platform.machine(), **{p: version(p) for p in
                                                 ("torch", "spikingjelly", "numpy", "pandas", "matplotlib", "mlflow")}}
        source = ("The records hold no environment: read when this page was generated (the report machine; the "
                  "training machine may differ).")
    hosts = sorted({str(s["host"]) for rid in rec.runs.run_id
                    if (s := records.read_json(rec.study_dir / str(rid) / records.STATUS)) and s.get("host")})
    env["training host(s) (status.json)"] = ", ".join(hosts) or "unknown"
    return env, source


def summary(rec: Records, figures: Sequence[Figure]) -> dict[str, str]:
    counts = rec.runs.status.value_counts()
    written = sum(1 for f in figures if f.skipped is None)
    return {
        "study": rec.name,
        "dataset": str(rec.dataset),
        "runs": ", ".join(f"{int(counts[s])} {s}" for s in ("done", "failed", "running", "pending") if s in counts)
                or "none",
        "variants": ", ".join(rec.order) or "none",
        "evaluation overrides": str(rec.evals.override.nunique()) if rec.evals is not None else "none recorded",
        "figures": f"{written} written, {len(figures) - written} skipped",
    }


def write_page(rec: Records, tables: Sequence[Table], figures: Sequence[Figure]) -> Path:
    env, source = environment(rec)
    _, pub_note = published_for(rec.dataset)
    failed = rec.runs[rec.runs.status == "failed"]
    notes = [pub_note] + [f"Failed run {r.run_id} ({r.variant}, seed {_value(r.seed)}): {getattr(r, 'error', '')}"
                          for r in failed.itertuples()]
    page = Page(f"spikesuite report: {rec.name}", str(rec.study.get("description") or ""), summary(rec, figures),
                tables, figures, notes, rec.study_yaml, env, source)
    return write_text(rec.study_dir / HTML_PAGE, render(page, rec.study_dir))


# ----------------------------------------------------------------------------------------------- MLflow


def mlflow_store(rec: Records) -> tuple[str, str] | None:
    """(tracking URI, experiment) of the study's existing store, or None: MLFLOW_TRACKING_URI, else the study's
    tracking.uri, else ``<results>/mlflow.db``; a sqlite store must already exist (the report never creates one)."""
    tracking = rec.study.get("tracking") if isinstance(rec.study.get("tracking"), dict) else {}
    if tracking.get("enabled") is False:
        return None
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("uri")
    if not uri:
        db = rec.study_dir.resolve().parent / "mlflow.db"
        uri = f"sqlite:///{db}"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    return uri, str(tracking.get("experiment") or rec.name)


def log_to_mlflow(rec: Records, artifacts: Sequence[Path], page: Path) -> str | None:
    """Attach the report to the study's latest invocation (parent) run; returns its id, None when there is none.
    A tracking failure is logged and ignored: the records stay the source of truth."""
    store = mlflow_store(rec)
    if store is None:
        return None
    uri, experiment = store
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{INVOCATION}'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            return None
        rid = parents[0].info.run_id
        for path in artifacts:
            client.log_artifact(rid, str(path), REPORT_DIR)
        client.log_artifact(rid, str(page))
        return rid
    except Exception as exc:  # noqa: BLE001 - any tracking error: warn, keep the files
        log.warning("report not logged to MLflow (%s): %s", uri, exc)
        return None


# ----------------------------------------------------------------------------------------------- entry point


def clear_stale(out: Path) -> None:
    """Remove figures an earlier report wrote, so a figure whose data is gone does not linger."""
    if not out.is_dir():
        return
    for path in sorted(out.iterdir()):
        if path.suffix in (".png", ".pdf") and path.stem.startswith(FIGURE_PREFIXES):
            path.unlink()


def build_report(study_dir: Path, mlflow: bool = True) -> list[Path]:
    """Write the figures, tables and page of ``study_dir`` from its records; returns every file written."""
    rec = load_records(Path(study_dir))
    out = rec.study_dir / REPORT_DIR
    clear_stale(out)
    with plt.rc_context(STYLE):
        figures = build_figures(rec, out)
    tables, table_paths = write_tables(rec, out)
    page = write_page(rec, tables, figures)
    for fig in figures:
        if fig.skipped is not None:
            log.info("figure %s skipped: %s", fig.stem, fig.skipped)
    artifacts = [p for f in figures for p in f.paths] + table_paths
    if mlflow:
        log_to_mlflow(rec, artifacts, page)
    return artifacts + [page]
