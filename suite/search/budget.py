"""``search.mode: equal_budget``: every searched variant gets the same number of evaluation-time settings, ``budget``,
of its own one knob, so no method is reported at an operating point that was tuned harder than another's.

A variant's knob is the one key of ``search.params`` that its policies declare as evaluation-time
(``Policy.eval_time``, through ``is_eval_time_key`` and ``axis_applies``) and that gives a valid config at its
range's ends: ACT's ``beta_offset`` or ``eps``, drop/select ``keep_ratio``, ToMe ``r`` or ``threshold`` (whichever the
variant's merging uses), early-exit ``threshold``, time-mask ``threshold``. No variant is ever named here. A variant
with two policies (ACT + merging) names its knob in ``search.knobs``. The knob's range becomes an even grid of
``budget`` values (linear for ``uniform`` and ``int``, geometric for ``log_uniform``, a ``choice`` list of exactly
``budget`` values as given); each variant is then one grid-sampled Optuna study of ``budget`` eval-stage trials,
scored on ``val_images`` images of the validation split. Imports neither torch nor Optuna."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from suite.config import (
    EVAL_TIME_KEYS,
    RunSpec,
    SearchConfig,
    SearchParam,
    Study,
    axis_applies,
    is_eval_time_key,
)
from suite.names import SEARCH_DIR
from suite.search.space import evaluated_config, probe

MIN_VAL_IMAGES = 5000  # selection images where the dataset's training pool has them (one image = 0.02 pt)
GRID_DIGITS = 6  # grid values are rounded to this many significant digits (readable in trials.csv and tables)


def _round(value: float) -> float:
    return float(f"{value:.{GRID_DIGITS}g}")


def grid_values(p: SearchParam, budget: int) -> list[Any] | str:
    """``budget`` evenly spaced settings over ``p``'s range (the ends included; one setting: the range's middle),
    or why there are not that many."""
    if p.choice is not None:
        if len(p.choice) != budget:
            return f"a choice list gives its own grid: it has {len(p.choice)} values, search.budget is {budget}"
        return list(p.choice)
    if budget == 1:
        lo, hi = p.uniform or p.log_uniform or p.int or (0, 0)
        mid = math.sqrt(lo * hi) if p.log_uniform else (lo + hi) / 2
        return [round(mid)] if p.int else [_round(mid)]
    steps = [k / (budget - 1) for k in range(budget)]
    if p.uniform is not None:
        lo, hi = p.uniform
        return [_round(lo + f * (hi - lo)) for f in steps]
    if p.log_uniform is not None:
        lo, hi = p.log_uniform
        return [_round(lo * (hi / lo) ** f) for f in steps]
    lo, hi = p.int or (0, 0)
    values = sorted({round(lo + f * (hi - lo)) for f in steps})
    if len(values) < budget:
        return f"the int range [{lo}, {hi}] holds {hi - lo + 1} values, fewer than search.budget ({budget})"
    return values


def policy_keys(config) -> list[str]:
    """The evaluation-time keys the policies of ``config`` declare (for messages)."""
    return [k for k in EVAL_TIME_KEYS if k.count(".") == 2 and axis_applies(k, config)]


def variant_knobs(study: Study, specs: list[RunSpec]) -> tuple[dict[str, str], list[str]]:
    """Each search variant's knob (variant -> key of search.params) and the problems finding them."""
    s = study.search
    assert s is not None
    knobs: dict[str, str] = {}
    problems: list[str] = []
    for i, v in enumerate(s.variants):
        spec = next((sp for sp in specs if sp.variant == v), None)
        if spec is None:
            continue  # validate() says why
        base = evaluated_config(spec.config)
        keys = [k for k, p in s.params.items()
                if is_eval_time_key(k) and axis_applies(k, base) and probe(k, p, base) is None]
        if v in s.knobs:
            if s.knobs[v] not in keys:
                problems.append(f"search.knobs.{v}: {s.knobs[v]!r} is not one of its evaluation-time settings in "
                                f"search.params ({', '.join(keys) or 'none'})")
            else:
                knobs[v] = s.knobs[v]
        elif len(keys) == 1:
            knobs[v] = keys[0]
        elif not keys:
            problems.append(f"search.variants.{i}: {v!r} has none of its evaluation-time settings in search.params "
                            f"(its policies declare: {', '.join(policy_keys(base)) or 'none'}); give its knob a "
                            "range there")
        else:
            problems.append(f"search.knobs.{v}: {v!r} has several evaluation-time settings in search.params "
                            f"({', '.join(keys)}); equal_budget tunes one knob per variant: name it here")
    for key in s.params:
        if key not in knobs.values() and not problems:
            problems.append(f"search.params.{key}: the knob of none of the search variants "
                            f"({', '.join(f'{v}: {k}' for v, k in knobs.items())}); remove it")
    for v in s.knobs:
        if v not in s.variants:
            problems.append(f"search.knobs.{v}: not a search variant (search.variants: {', '.join(s.variants)})")
    return knobs, problems


def val_problems(s: SearchConfig, specs: list[RunSpec]) -> list[str]:
    """The validation split must hold ``val_images`` images for every searched run, and at least MIN_VAL_IMAGES
    where the dataset's training pool has that many."""
    runs = [sp for sp in specs if sp.variant in s.variants]
    if not runs:
        return []
    if s.split != "val":
        return ["search.split: equal_budget selects on the validation split (split: val), never on test images"]
    held = min(sp.config.dataset.val_images() for sp in runs)
    ds = min((sp.config.dataset for sp in runs), key=lambda d: d.val_images())
    where = (f"dataset.val_fraction {ds.val_fraction:g} of a {ds.train_pool()}-image training pool"
             + (f" (train_subset {ds.train_subset})" if ds.train_subset is not None else ""))
    if held == 0:
        return [f"dataset.val_fraction: equal_budget needs a validation split ({where} holds none)"]
    wanted = s.val_images if s.val_images is not None else held
    if wanted > held:
        return [f"search.val_images: {wanted} images declared, but the validation split of the searched runs holds "
                f"{held} ({where}); lower search.val_images or raise dataset.val_fraction"]
    full = ds.full_pool()
    if wanted < MIN_VAL_IMAGES <= full:
        return [f"search.val_images: {wanted} validation images; {ds.name}'s training pool holds {full}, so "
                f"equal_budget selects on at least {MIN_VAL_IMAGES} (one image would be {100 / wanted:.2g} points): "
                "raise dataset.val_fraction or train_subset, and search.val_images"]
    return []


def budget_problems(study: Study, specs: list[RunSpec]) -> list[str]:
    """Problems with an equal_budget search block (none for another mode)."""
    s = study.search
    if s is None or s.mode != "equal_budget":
        return []
    problems = []
    if s.stage != "eval":
        problems.append("search.stage: equal_budget tunes evaluation-time settings of trained checkpoints "
                        "(stage: eval)")
    if s.budget is None:
        problems.append("search.budget: equal_budget needs the number of settings every variant gets")
    knobs, found = variant_knobs(study, specs)
    problems += found
    if s.budget is not None:
        for key in dict.fromkeys(knobs.values()):
            grid = grid_values(s.params[key], s.budget)
            if isinstance(grid, str):
                problems.append(f"search.params.{key}: {grid}")
    return problems + val_problems(s, specs)


def budget_parts(study: Study, specs: list[RunSpec], sdir: Path) -> list[tuple[Study, str, Path]]:
    """One grid-sampled Optuna study per variant, ``<study>-eval-<variant>`` under ``search/<variant>/``: its knob
    alone, as a choice list of the grid, ``budget`` trials. Call after ``budget_problems`` found none."""
    s = study.search
    assert s is not None and s.budget is not None
    knobs, _ = variant_knobs(study, specs)
    parts = []
    for v in s.variants:
        grid = grid_values(s.params[knobs[v]], s.budget)
        assert not isinstance(grid, str)
        narrowed = s.model_copy(update={"variants": [v], "params": {knobs[v]: SearchParam(choice=grid)},
                                        "sampler": "grid", "n_trials": s.budget, "per_variant": True})
        parts.append((study.model_copy(update={"search": narrowed}), f"{study.name}-{s.stage}-{v}",
                      sdir / SEARCH_DIR / v))
    return parts
