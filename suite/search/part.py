"""What every module of a search shares: one Optuna study of a ``search:`` block (``Part``), what an invocation
returns (``SearchSummary``), how a search or a trial fails, and the names a trial records its outcome under."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from suite.config import RunConfig, RunSpec, SearchConfig, Study
from suite.run.study import study_dir_for
from suite.search.space import search_runs, trial_base

# Optuna user attributes of a trial: its error (a trial failed in its objective counts in the budget), the
# worker that ran it (host:pid, so a dead local worker's trial is found) and its variant.
ERROR_ATTR, WORKER_ATTR, VARIANT_ATTR = "error", "worker", "variant"


class SearchFailed(Exception):
    """The search could not run (for example, the runs an eval-stage search evaluates failed)."""


class TrialFailed(Exception):
    """A trial's own failure (recorded as the trial's error; the search goes on)."""


class MissingMetric(TrialFailed):
    """An objective is not among the runs' metrics: a mistake in the study, which stops the search."""

    def __init__(self, index: int, metric: str, have: list[str]):
        self.index, self.metric, self.have = index, metric, have
        super().__init__(f"objective metric {metric!r} is not among the run's metrics ({', '.join(have)})")


@dataclass
class SearchSummary:
    study_dir: Path
    optuna_study: str
    storage: str  # the storage URL with any password hidden
    budget: int | None
    ran: list[int] = field(default_factory=list)  # trial numbers this process ran
    failed: dict[int, str] = field(default_factory=dict)  # trial number -> error
    pruned: list[int] = field(default_factory=list)
    n_trials: int = 0  # trials in the study (every state, every worker)
    n_complete: int = 0
    pareto: pd.DataFrame | None = None
    paths: list[Path] = field(default_factory=list)
    wall_time_s: float = 0.0


@dataclass
class Part:
    """One Optuna study of a search block (the whole block, or one variant of it with ``per_variant``): which
    study and runs it searches over, where its records go and how its trials' runs execute."""

    study: Study  # narrowed to this part's variants and parameters
    specs: list[RunSpec]  # the study's whole matrix
    results: Path
    name: str  # the Optuna study: <study>-<stage>, or <study>-<stage>-<variant>
    out: Path  # where its tables and figure go: search/, or search/<variant>/
    source: str  # the study file, for error messages
    device: str
    progress: bool
    sdir: Path = field(init=False)  # results/<study>: the runs' records
    by_variant: dict[str, list[RunSpec]] = field(init=False)  # the matrix runs of each search variant
    metrics: list[str] = field(init=False)  # the objectives' metrics, in order
    directions: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.sdir = study_dir_for(self.results, self.study.name)
        self.by_variant = search_runs(self.study, self.specs)
        self.metrics = [o.metric for o in self.search.objectives]
        self.directions = [o.direction for o in self.search.objectives]

    @property
    def search(self) -> SearchConfig:
        assert self.study.search is not None
        return self.study.search

    def base_config(self, variant: str) -> RunConfig:
        """The config a trial of ``variant`` changes (which parameters apply is decided on it)."""
        return trial_base(self.by_variant[variant][0].config, self.search.stage)
