"""Optuna search settings (no torch): a study's ``search:`` block."""

from __future__ import annotations

import builtins
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SearchParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None  # builtins: the field's own name shadows int here
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> SearchParam:
        given = [k for k in ("uniform", "log_uniform", "int", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of uniform, log_uniform, int, choice")
        lo_hi = getattr(self, given[0])
        if given[0] != "choice" and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"{given[0]}: low must be < high")
        if given[0] == "log_uniform" and lo_hi[0] <= 0:
            raise ValueError("log_uniform bounds must be > 0")
        if given[0] == "choice" and not self.choice:
            raise ValueError("choice needs at least one value")
        return self


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str  # a column of the runs table, e.g. accuracy, token_pct, timesteps_mean, energy_exact_uj
    direction: Literal["maximize", "minimize"]


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variants: list[str] = Field(min_length=1)
    # false: one Optuna study in which the sampler also picks the variant; true: one study per variant
    # (<study>-<stage>-<variant>, records under search/<variant>/), each with the whole n_trials
    per_variant: bool = False
    stage: Literal["eval", "train"] = "eval"
    objectives: list[Objective] = Field(min_length=1)
    params: dict[str, SearchParam] = Field(min_length=1)
    n_trials: int | None = Field(20, ge=1, le=100_000)
    timeout_s: float | None = Field(None, gt=0)
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    storage: str | None = None  # default: sqlite:///<results>/<study>/optuna.db; journal:<path>; any RDB URL
    pruner: Literal["none", "median"] = "none"  # median pruning only for single-objective train searches
    split: Literal["val", "test"] = "val"  # trials score on this split: selecting on val keeps test honest
    heartbeat_s: int = Field(60, ge=1)
    # equal_budget: every variant gets the same `budget` evaluation-time settings of its own one knob (the one key
    # of `params` that its policies declare as evaluation-time), as an even grid over that key's range, each scored
    # on `val_images` validation images; one Optuna study per variant (suite/search/budget.py, docs/search.md)
    mode: Literal["optuna", "equal_budget"] = "optuna"
    budget: int | None = Field(None, ge=1, le=10_000)
    val_images: int | None = Field(None, ge=1)  # validation images each trial scores on (default: the whole split)
    knobs: dict[str, str] = {}  # variant -> its knob, for a variant with several policies (e.g. ACT + merging)
