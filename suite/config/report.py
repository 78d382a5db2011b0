"""How a study's report compares its variants and which energy convention it shows (no torch): ``report.*``.
Outside every run id: it changes what the report computes from the records, never what a run computes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from suite.config.energy import check_convention
from suite.names import NAME_PATTERN, PRIMARY_ENERGY_CONVENTION


class ClaimConfig(BaseModel):
    """The claim a study tests (``report.claim``, suite/report/matched.py): equivalent to the reference within
    ``report.margin`` at no more than these shares of dense's token-units and of the reference's energy."""

    model_config = ConfigDict(extra="forbid")

    token_pct: float | None = Field(None, gt=0, le=100)  # at most this % of dense's token-units
    energy_pct: float | None = Field(None, gt=0)  # at most this % of the reference's energy (primary convention)


class ReportConfig(BaseModel):
    """Paired statistics of every variant against a reference (``suite/report/stats.py``) and the primary energy
    convention, which drives the energy figures (``suite/report/energy.py``)."""

    model_config = ConfigDict(extra="forbid")

    reference: str | None = Field(None, pattern=NAME_PATTERN)  # default: the study's dense variant
    margin: float = Field(1.0, ge=0)  # equivalence margin (TOST), in the metric's own unit (accuracy: points)
    confidence: float = Field(0.95, gt=0, lt=1)  # of every interval; alpha = 1 - confidence for the tests
    energy_convention: str = PRIMARY_ENERGY_CONVENTION  # the primary convention (docs/counting.md)
    claim: ClaimConfig | None = None  # a claim tested per variant in report/claim.md

    @field_validator("energy_convention")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_convention(v)
