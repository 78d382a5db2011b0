"""The search space of a ``search:`` block: its validation, the parameters a trial suggests, the samplers (and the
grid they walk), and how choices travel through Optuna (labels). Imports neither torch nor Optuna at module level."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from suite.config import (
    EVAL_TIME_KEYS,
    RunConfig,
    RunSpec,
    SearchConfig,
    SearchParam,
    Study,
    apply_overrides,
    axis_applies,
    format_errors,
    is_eval_time_key,
)

# Per-epoch validation values that fit() records, by the objective metric they track (median pruning).
EPOCH_METRIC = {"accuracy": "val_acc", "token_pct": "val_token_pct"}


def evaluated_config(config: RunConfig) -> RunConfig:
    """The config a run's main evaluation uses: its ``eval.apply`` settings on top (an evaluation-only
    policy such as training-free merging). Eval-stage trials start from it, so a trial with no change
    reproduces the run's reported metrics."""
    return apply_overrides(config, config.eval.apply) if config.eval.apply else config


def trial_base(config: RunConfig, stage: str) -> RunConfig:
    """The config a trial changes: the run's evaluated config for an eval-stage search, else the run's own."""
    return evaluated_config(config) if stage == "eval" else config


def search_runs(study: Study, specs: list[RunSpec]) -> dict[str, list[RunSpec]]:
    """The study's runs of each search variant (its seeds and other matrix axes), in matrix order."""
    assert study.search is not None
    return {v: [s for s in specs if s.variant == v] for v in study.search.variants}


# ---------------------------------------------------------------------------------------------- validation


def validate(study: Study, specs: list[RunSpec], n_trials: int | None = None) -> list[str]:
    """Problems with the ``search:`` block, as ``key.path: what is wrong`` lines (empty when it is sound)."""
    s = study.search
    if s is None:
        return ["search: the study has no search section (see docs/search.md)"]
    problems: list[str] = []
    by_variant = {}
    for i, v in enumerate(s.variants):
        if v not in study.variants:
            problems.append(f"search.variants.{i}: unknown variant {v!r} (have {sorted(study.variants)})")
        elif s.variants.index(v) != i:
            problems.append(f"search.variants.{i}: {v!r} is listed twice")
        elif not any(sp.variant == v for sp in specs):
            problems.append(f"search.variants.{i}: the matrix has no run of variant {v!r} (check exclude)")
        else:
            by_variant[v] = next(sp for sp in specs if sp.variant == v)
            if s.stage == "eval":
                by_variant[v] = RunSpec(study.name, by_variant[v].run_id, evaluated_config(by_variant[v].config), {})
    metrics = [o.metric for o in s.objectives]
    for i, m in enumerate(metrics):
        if metrics.index(m) != i:
            problems.append(f"search.objectives.{i}.metric: {m!r} is already an objective")
    if s.n_trials is None and n_trials is None and s.timeout_s is None:
        problems.append("search.n_trials: give n_trials or timeout_s (a search with neither never stops)")
    for key, p in s.params.items():
        where = f"search.params.{key}"
        if key == "variant":
            problems.append(f"{where}: reserved (the variant is chosen from search.variants)")
            continue
        if s.stage == "eval" and not is_eval_time_key(key):
            problems.append(f"{where}: not an evaluation-time setting, so an eval-stage search cannot change it "
                            f"(allowed: {', '.join(EVAL_TIME_KEYS)}; use stage: train to search training settings)")
            continue
        if s.sampler == "grid" and p.choice is None:
            problems.append(f"{where}: the grid sampler needs a choice list")
        usable = [v for v, sp in by_variant.items() if axis_applies(key, sp.config)]
        if by_variant and not usable:
            problems.append(f"{where}: applies to none of the search variants {sorted(by_variant)} "
                            f"(none has a {'.'.join(key.split('.')[:2])} policy)")
        # equal_budget: a range may fit some variants only (ToMe's r, not its threshold); budget.py finds each
        # variant the key its config takes, and says which range is nobody's knob
        for v in usable if s.mode != "equal_budget" else []:
            bad = probe(key, p, by_variant[v].config)
            if bad:
                problems.append(f"{where}: {bad}")
                break
    if s.pruner == "median":
        problems += _pruner_problems(s, list(by_variant.values()))
    return problems


def _pruner_problems(s: SearchConfig, runs: list[RunSpec]) -> list[str]:
    if s.stage != "train":
        return ["search.pruner: median pruning needs stage: train (an eval-stage trial has no epochs)"]
    if len(s.objectives) > 1:
        return ["search.pruner: Optuna cannot prune a multi-objective search (trial.report raises "
                "for several objectives); use pruner: none or a single objective"]
    if s.objectives[0].metric not in EPOCH_METRIC:
        return [f"search.pruner: median pruning compares per-epoch validation values, which exist "
                f"for the objectives {sorted(EPOCH_METRIC)} only, not {s.objectives[0].metric!r}"]
    if any(sp.config.dataset.val_fraction <= 0 for sp in runs):
        return ["search.pruner: median pruning needs a validation split (dataset.val_fraction > 0)"]
    return []


def probe(key: str, p: SearchParam, config: RunConfig) -> str | None:
    """Apply the range's ends (or every choice) to a run config; the first validation error, if any."""
    values = p.choice if p.choice is not None else list(p.uniform or p.log_uniform or p.int or ())
    for value in values:
        try:
            apply_overrides(config, {key: value})
        except ValidationError as exc:
            return f"{value!r} gives an invalid run config: {format_errors(exc)[0]}"
        except (AttributeError, TypeError) as exc:
            return f"{value!r} cannot be set here ({exc})"
    return None


# ---------------------------------------------------------------------------------------------- samplers


def _label(value: Any) -> Any:
    """Optuna categorical choices must be None/bool/int/float/str; others travel as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def _unlabel(label: Any, choices: list[Any]) -> Any:
    for c in choices:
        if _label(c) == label:
            return c
    return label


def grid_space(search: SearchConfig) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {k: [_label(c) for c in p.choice or []] for k, p in search.params.items()}
    if len(search.variants) > 1:
        space["variant"] = list(search.variants)
    return space


def trial_budget(search: SearchConfig, budget: int | None) -> int | None:
    """The grid sampler stops after its grid: the budget is at most the grid's size."""
    if search.sampler != "grid":
        return budget
    size = math.prod(len(v) for v in grid_space(search).values())
    return size if budget is None else min(budget, size)


def make_sampler(search: SearchConfig, seed: int, budget: int | None):
    """TPE (default; Optuna 5: multivariate with constant liar), NSGA-II, random, or grid over the
    ``choice`` lists. Small budgets get proportionally fewer random start-up trials / a smaller population."""
    import optuna

    if search.sampler == "tpe":
        startup = 10 if budget is None else min(10, max(2, budget // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if search.sampler == "nsga2":
        pop = 50 if budget is None else min(50, max(4, budget // 3))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return _grid_sampler(optuna)(grid_space(search), seed=seed)


def _grid_sampler(optuna):
    """Optuna's GridSampler without its ``after_trial``, which calls ``study.stop()`` once the grid is used up:
    that works only inside ``study.optimize``, and this search asks and tells, so the last cell's ``tell`` raised.
    The runner stops at the grid's size itself (``trial_budget``)."""

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            return None

    return Grid


def suggest(trial, key: str, p: SearchParam) -> Any:
    if p.uniform is not None:
        return trial.suggest_float(key, *p.uniform)
    if p.log_uniform is not None:
        return trial.suggest_float(key, *p.log_uniform, log=True)
    if p.int is not None:
        return trial.suggest_int(key, *p.int)
    return _unlabel(trial.suggest_categorical(key, [_label(c) for c in p.choice or []]), p.choice or [])


def trial_params(trial, search: SearchConfig) -> dict[str, Any]:
    """A trial's config updates (its parameters less the variant, choices decoded)."""
    return {k: _unlabel(v, search.params[k].choice) if search.params[k].choice is not None else v
            for k, v in trial.params.items() if k != "variant"}


def describe(params: dict[str, Any]) -> str:
    """A trial's parameters for a log line: ``eps=0.01 beta_offset=-3``."""
    return " ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                    for k, v in params.items())
