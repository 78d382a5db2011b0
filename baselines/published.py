"""Published reference numbers (``published.yaml``): schema, loader and a tidy frame for reports.

These numbers are *reference markers* copied from other papers (via the paper digest). They were
produced on each paper's own backbone, recipe and energy script, so they must never be mixed with
points measured by this suite: keep them in their own table or plot them as labelled markers.

Only ``yaml.safe_load`` is used, so YAML tags that construct Python objects are rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CONFIDENCE_LEVELS",
    "DATASETS",
    "DEFAULT_PATH",
    "FRAME_COLUMNS",
    "PublishedDataError",
    "PublishedResult",
    "load_published",
    "published_frame",
]

Confidence = Literal["read", "code", "memory", "inferred"]
"""Digest tags: read=[READ], code=[CODE], memory=[MEM] (unverified), inferred=[INFER]."""

Dataset = Literal["cifar10", "cifar100", "imagenet", "tinyimagenet", "cifar10_dvs", "dvs128_gesture", "other"]

CONFIDENCE_LEVELS: tuple[str, ...] = get_args(Confidence)
DATASETS: tuple[str, ...] = get_args(Dataset)
DEFAULT_PATH: Path = Path(__file__).with_name("published.yaml")
SCHEMA_VERSION = 1

# Columns that carry a published quantity; every entry needs at least one of them.
MEASUREMENT_FIELDS: tuple[str, ...] = ("accuracy", "energy_mj", "token_reduction", "timesteps", "other")

FRAME_COLUMNS: tuple[str, ...] = (
    "id",
    "method",
    "paper",
    "dataset",
    "backbone",
    "timesteps",
    "accuracy",
    "energy_mj",
    "token_reduction",
    "confidence",
    "source",
    "note",
    "other",
    "kind",
)
_NUMERIC_COLUMNS = ("timesteps", "accuracy", "energy_mj", "token_reduction")


class PublishedDataError(ValueError):
    """The published-results file is malformed; the message names the entry and the field."""


class PublishedResult(BaseModel):
    """One published number (or one model/dataset row of numbers from the same source)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=r"^[a-z0-9]+(?:[-_.][a-z0-9]+)*$", description="unique slug")
    method: str = Field(min_length=1)
    paper: str = Field(min_length=1, description="authors, venue, year, arXiv id")
    dataset: Dataset
    backbone: str | None = Field(default=None, min_length=1)
    timesteps: float | None = Field(default=None, gt=0, description="average if dynamic")
    accuracy: float | None = Field(default=None, gt=0, le=100, description="top-1 %")
    energy_mj: float | None = Field(default=None, ge=0, description="mJ per image")
    token_reduction: float | None = Field(
        default=None, ge=0, le=1, description="fraction of tokens removed, relative to other.relative_to"
    )
    other: dict[str, Any] | None = Field(default=None, description="claims that fit no column")
    source: str = Field(min_length=1, description="URL or repo/path as named in the digest")
    confidence: Confidence
    note: str | None = None

    @model_validator(mode="after")
    def _check_entry(self) -> PublishedResult:
        if all(getattr(self, name) in (None, {}) for name in MEASUREMENT_FIELDS):
            raise ValueError(f"entry holds no number: set at least one of {', '.join(MEASUREMENT_FIELDS)}")
        if self.token_reduction is not None and not (self.other or {}).get("relative_to"):
            raise ValueError(
                "token_reduction needs other.relative_to naming what the reduction is measured against "
                "(e.g. 'dense Spikformer-4-384')"
            )
        return self


def _entry_label(index: int, raw: object) -> str:
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        return f"entry {index} (id {raw['id']!r})"
    return f"entry {index}"


def _describe(exc: ValidationError) -> list[str]:
    allowed = ", ".join(PublishedResult.model_fields)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r} (allowed keys: {allowed})")
        elif err["type"] == "missing":
            parts.append(f"field {loc!r}: required field is missing")
        elif loc:
            parts.append(f"field {loc!r}: {err['msg']} (got {err.get('input')!r})")
        else:
            parts.append(err["msg"])
    return parts


def _raw_entries(data: object, path: Path) -> list[object]:
    if not isinstance(data, Mapping):
        raise PublishedDataError(
            f"{path}: top level must be a mapping with 'schema_version' and 'results', "
            f"got {type(data).__name__}"
        )
    unknown = set(data) - {"schema_version", "results"}
    if unknown:
        raise PublishedDataError(f"{path}: unknown top-level key(s) {sorted(map(str, unknown))}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise PublishedDataError(
            f"{path}: field 'schema_version' must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}"
        )
    results = data.get("results")
    if not isinstance(results, list) or not results:
        raise PublishedDataError(f"{path}: field 'results' must be a non-empty list of entries")
    return results


def load_published(path: str | Path | None = None) -> list[PublishedResult]:
    """Load and validate the published reference numbers.

    ``path`` defaults to ``published.yaml`` next to this module. Raises :class:`PublishedDataError`
    listing every bad entry (by id, or by index when it has no usable id) with the offending field.
    """
    file = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PublishedDataError(f"{file}: cannot read published results: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PublishedDataError(
            f"{file}: not valid plain YAML (loaded with yaml.safe_load; tags such as !!python/... "
            f"are rejected): {exc}"
        ) from exc

    problems: list[str] = []
    results: list[PublishedResult] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(_raw_entries(data, file)):
        label = _entry_label(index, raw)
        if not isinstance(raw, Mapping):
            problems.append(f"{label}: must be a mapping of fields, got {type(raw).__name__}")
            continue
        try:
            result = PublishedResult.model_validate(dict(raw))
        except ValidationError as exc:
            problems.extend(f"{label}: {part}" for part in _describe(exc))
            continue
        if result.id in first_index:
            problems.append(
                f"{label}: field 'id': duplicate id {result.id!r} (first used by entry {first_index[result.id]})"
            )
            continue
        first_index[result.id] = index
        results.append(result)

    if problems:
        raise PublishedDataError(f"{file}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return results


def published_frame(results: Iterable[PublishedResult], dataset: str | None = None) -> pd.DataFrame:
    """Tidy frame, one row per entry (file order), optionally only one dataset.

    Numeric columns are floats (NaN where the paper gives no number); ``other`` keeps the mapping;
    ``kind`` is always ``"published"`` so the rows cannot be confused with measured ones.
    """
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    rows = [
        {**r.model_dump(), "kind": "published"} for r in results if dataset is None or r.dataset == dataset
    ]
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    for column in _NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="raise").astype(float)
    return frame.reset_index(drop=True)
