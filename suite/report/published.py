"""Published reference numbers (``baselines/published.yaml``) for the study's own dataset and backbone family,
placed on the report's axes. They come from other model sizes and recipes: figures draw them only as hollow
reference markers."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

# How published.yaml names each registered backbone's family (backbone column, else the method's name): a
# Spikformer study is compared with Spikformer-4-384 but not with Spikingformer or a ResNet.
BACKBONE_PATTERNS = {"spikformer": r"\bspikformer\b", "sdt": r"\b(sdt|spike-driven transformer)\b"}


def backbone_matches(row: pd.Series, backbones: Iterable[str]) -> bool:
    """Whether a published row's backbone (or, when it names none, its method) is of one of ``backbones``."""
    text = row.get("backbone")
    if not isinstance(text, str) or not text:
        text = str(row.get("method") or "")
    return any(re.search(BACKBONE_PATTERNS.get(b, rf"\b{re.escape(b)}\b"), text, flags=re.IGNORECASE)
               for b in backbones)


def published_for(dataset: str | None, backbones: Iterable[str] | None = None) -> tuple[pd.DataFrame | None, str]:
    """Published reference rows for ``dataset`` (and, when ``backbones`` are given, of those backbone families)
    and a sentence saying what was (not) drawn."""
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
    other = ""
    if backbones is not None:
        families = sorted(set(backbones))
        keep = frame.apply(lambda r: backbone_matches(r, families), axis=1).astype(bool)
        left = frame[~keep]
        if not left.empty:
            names = sorted({str(b) for b in left.backbone.fillna(left.method)})
            other = (f" {len(left)} published row(s) for {dataset} on other backbones ({', '.join(names)}) are "
                     "not drawn.")
        frame = frame[keep].reset_index(drop=True)
        if frame.empty:
            return None, (f"Published numbers: none for dataset '{dataset}' on backbone(s) {', '.join(families)};"
                          f" none drawn.{other}")
    return frame, (f"Hollow markers: published numbers for {dataset} from other papers (their own model size, "
                   f"recipe and energy script), references only, never measured here.{other}")


def published_points(frame: pd.DataFrame | None, metric: str, done: pd.DataFrame) -> pd.DataFrame:
    """Published (x, accuracy, method) placed on ``metric``'s axis; empty when the metric has no counterpart.

    timesteps -> timesteps_mean; energy_mj × 1000 -> µJ; token_reduction r -> (1 - r) × 100 % of dense
    (token_pct), or (1 - r) × this study's dense token-units (only when that is one number)."""
    empty = pd.DataFrame(columns=["x", "accuracy", "method", "backbone", "confidence"])
    if frame is None or frame.empty:
        return empty
    f = frame.dropna(subset=["accuracy"])
    if metric == "timesteps_mean":
        x = f["timesteps"]
    elif metric == "energy_exact_uj":
        x = f["energy_mj"] * 1000.0
    elif metric == "token_pct":
        x = (1.0 - f["token_reduction"]) * 100.0
    elif metric == "token_units" and "dense_token_units" in done and done["dense_token_units"].nunique() == 1:
        x = (1.0 - f["token_reduction"]) * float(done["dense_token_units"].iloc[0])
    else:
        return empty
    pts = pd.DataFrame({"x": x, "accuracy": f["accuracy"], "method": f["method"],
                        "backbone": f["backbone"].fillna("backbone not given"), "confidence": f["confidence"]})
    return pts.dropna(subset=["x", "accuracy"]).reset_index(drop=True)
