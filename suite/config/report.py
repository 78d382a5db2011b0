"""How a study's report compares its variants (no torch): ``report.*``. Outside every run id: it changes what
the report computes from the records, never what a run computes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from suite.names import NAME_PATTERN


class ReportConfig(BaseModel):
    """Paired statistics of every variant against a reference (``suite/report/stats.py``)."""

    model_config = ConfigDict(extra="forbid")

    reference: str | None = Field(None, pattern=NAME_PATTERN)  # default: the study's dense variant
    margin: float = Field(1.0, ge=0)  # equivalence margin (TOST), in the metric's own unit (accuracy: points)
    confidence: float = Field(0.95, gt=0, lt=1)  # of every interval; alpha = 1 - confidence for the tests
