"""Published reference numbers (``baselines/published.yaml``) for the study's own dataset, placed on the report's
axes. They come from other backbones and recipes: figures draw them only as hollow reference markers."""

from __future__ import annotations

import pandas as pd


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
