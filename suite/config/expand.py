"""Study files: load, validate and expand into fully resolved runs (no torch).

``studies/x.yaml --load/validate--> Study --expand--> [RunSpec]``. Every problem is reported with its key path
before anything is written. Evaluation-time updates (overrides, search trials) are layered here too, on the rule
``suite.config.policies`` declares.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from suite.config.graph import init_from_key, link_parents, share_training, variant_depths
from suite.config.policies import EVAL_TIME_KEYS, axis_applies, is_eval_time_key
from suite.config.study import RunConfig, RunSpec, Study, StudyError, format_errors, run_id
from suite.config.train import CheckpointInit

# ---------------------------------------------------------------------------------------------- load


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; raises StudyError naming the file and key paths."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise StudyError(src, [f"no such study file: {path}"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(src, [f"cannot read: {exc}"]) from None
    return parse_study(text, src)


def parse_study(text: str, source: str = "<study>") -> Study:
    try:
        raw = yaml.safe_load(text)  # safe_load: tags that build Python objects are rejected
    except yaml.YAMLError as exc:
        raise StudyError(source, [f"invalid YAML: {exc}"]) from None
    if raw is None:
        raise StudyError(source, ["the study file is empty"])
    if not isinstance(raw, dict):
        raise StudyError(source, [f"the top level must be a mapping of keys, got {type(raw).__name__}"])
    if bad := _non_finite(raw):
        raise StudyError(source, [f"{p}: must be a finite number (got {v})" for p, v in bad])
    try:
        study = Study.model_validate(raw)
    except ValidationError as exc:
        raise StudyError(source, format_errors(exc)) from None
    expand(study, source)  # every variant x matrix combination must resolve
    return study


def _non_finite(node: Any, path: str = "") -> list[tuple[str, float]]:
    """Key paths of NaN and infinite numbers (.nan, .inf): never a meaningful setting, and pydantic's float
    fields accept them, so they would only fail (or silently misbehave) in the middle of training."""
    if isinstance(node, float):
        return [] if math.isfinite(node) else [(path or "<root>", node)]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [bad for k, v in items for bad in _non_finite(v, f"{path}.{k}" if path else str(k))]


# ---------------------------------------------------------------------------------------------- expand


def expand(study: Study, source: str = "<study>") -> list[RunSpec]:
    """Variants x matrix axes (product, minus ``exclude``, plus ``include``) -> resolved runs,
    de-duplicated by run id, parents before the runs that fine-tune from them (``graph.py``). An axis whose path
    names a policy a variant lacks does not apply to it."""
    axes, include, exclude = _matrix(study, source)
    base = study.model_dump(mode="json", include={"dataset", "model", "train", "eval"})
    combos: list[dict[str, Any]] = []
    names = list(axes)
    variants = axes.pop("variant", None) if "variant" in axes else None
    names = [n for n in names if n != "variant"]
    for variant in variants or list(study.variants):
        for values in itertools.product(*(axes[n] for n in names)):
            combo = {"variant": variant, **dict(zip(names, values))}
            if not any(_matches(combo, ex) for ex in exclude):
                combos.append(combo)
    combos += include
    if not combos:
        raise StudyError(source, ["matrix: expands to no runs (check exclude and the axis lists)"])
    depths = variant_depths(study, source)  # an unknown init_from or a cycle, before the per-run problems
    resolved: list[RunSpec] = []
    problems: list[str] = []
    for combo in combos:
        spec = _resolve(study, base, combo, problems)
        if spec is not None:
            resolved.append(spec)
    if problems:
        raise StudyError(source, list(dict.fromkeys(problems)))  # one line per problem, not per run
    runs: dict[str, RunSpec] = {}
    for spec in link_parents(study, pin_checkpoints(study, resolved, source), depths, source):
        runs.setdefault(spec.run_id, spec)  # the first of equal ids wins
    return share_training(list(runs.values()))


def pin_checkpoints(study: Study, specs: list[RunSpec], source: str) -> list[RunSpec]:
    """Every run with ``train.init_from: {checkpoint, format}`` gets its file's sha256 in its config (so in its run
    id: another file, another run); a missing file is a problem naming the key and the path."""
    digests: dict[str, str] = {}
    out, problems = [], []
    for spec in specs:
        init = spec.config.train.init_from
        if not isinstance(init, CheckpointInit):
            out.append(spec)
            continue
        if init.checkpoint not in digests:
            path = Path(init.checkpoint)
            if not path.is_file():
                problems.append(f"{init_from_key(study, spec.variant)}.checkpoint: no such file {path}")
                continue
            with path.open("rb") as f:
                digests[init.checkpoint] = hashlib.file_digest(f, "sha256").hexdigest()
        config = spec.config.model_copy(update={"init_sha256": digests[init.checkpoint]})
        out.append(dataclasses.replace(spec, config=config, run_id=run_id(config)))
    if problems:
        raise StudyError(source, list(dict.fromkeys(problems)))
    return out


def _matrix(study: Study, source: str) -> tuple[dict[str, list], list[dict], list[dict]]:
    problems = []
    axes: dict[str, list] = {}
    include, exclude = [], []
    for key, value in study.matrix.items():
        if key in ("include", "exclude"):
            if not isinstance(value, list) or not all(isinstance(v, dict) and all(isinstance(k, str) for k in v)
                                                      for v in value):
                problems.append(f"matrix.{key}: must be a list of mappings")
                continue
            (include if key == "include" else exclude).extend(value)
        elif not isinstance(value, list) or not value:
            problems.append(f"matrix.{key}: an axis must be a non-empty list of values")
        else:
            axes[key] = value
    for i, inc in enumerate(include):
        if not isinstance(inc.get("variant"), str) or inc["variant"] not in study.variants:
            problems.append(f"matrix.include.{i}.variant: must name one of {sorted(study.variants)}")
    for v in axes.get("variant", []):
        if not isinstance(v, str) or v not in study.variants:
            problems.append(f"matrix.variant: unknown variant {v!r} (have {sorted(study.variants)})")
    axes.setdefault("seed", [0])
    if problems:
        raise StudyError(source, problems)
    return axes, [i if "seed" in i else {"seed": 0, **i} for i in include], exclude


def _matches(combo: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(combo.get(k) == v for k, v in pattern.items())


def _resolve(study: Study, base: dict, combo: dict[str, Any], problems: list[str]) -> RunSpec | None:
    name = combo["variant"]
    variant = study.variants[name]
    cfg = copy.deepcopy(base)
    for section in ("model", "train", "eval"):
        cfg[section] = _deep_merge(cfg[section], getattr(variant, section))
    cfg["tokens"] = variant.tokens.model_dump(mode="json", exclude_none=True)
    cfg["time"] = variant.time.model_dump(mode="json", exclude_none=True)
    cfg["variant"], cfg["seed"] = name, combo.get("seed", 0)
    applied = {}
    for key, value in combo.items():
        if key in ("variant", "seed"):
            continue
        parts = key.split(".")
        parent = cfg
        for p in parts[:-1]:
            parent = parent.get(p) if isinstance(parent, dict) else None
            if parent is None:
                break
        if parent is None and not axis_applies(key, cfg):
            continue  # this variant has no such policy: the axis does not apply to it
        if not isinstance(parent, dict):  # a missing section, or a path through a value (model.depth.x)
            problems.append(f"matrix.{key}: unknown key path")
            continue
        parent[parts[-1]] = value
        applied[key] = value
    try:
        config = RunConfig.model_validate(cfg)
    except ValidationError as exc:
        for line in format_errors(exc):
            section = line.split(".", 1)[0]
            if any(line.startswith(f"{k}:") or line.startswith(f"{k}.") for k in [*applied, "seed"]):
                problems.append(f"matrix.{line}")
            elif section in ("model", "train", "eval") and getattr(variant, section):
                problems.append(f"variants.{name}.{line}")
            else:
                problems.append(line if section not in ("tokens", "time") else f"variants.{name}.{line}")
        return None
    checks = [(f"eval.overrides.{i}.set", ov.set) for i, ov in enumerate(config.eval.overrides)]
    for where, updates in checks + [("eval.apply", config.eval.apply)]:
        problems += eval_update_problems(config, updates, where, context=f"variants.{name}.")
    return RunSpec(study.name, run_id(config), config, {"variant": name, "seed": config.seed, **applied})


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def eval_update_problems(config: RunConfig, updates: dict[str, Any], where: str = "", *,
                         context: str = "") -> list[str]:
    """Why ``updates`` cannot re-evaluate a run of ``config``: keys that are not evaluation-time settings,
    and values that do not validate. ``where`` prefixes key paths; ``context`` prefixes validation lines."""
    prefix = f"{where}." if where else ""
    problems = [f"{prefix}{key}: not an evaluation-time setting (allowed: {', '.join(EVAL_TIME_KEYS)})"
                for key in updates if not is_eval_time_key(key)]
    try:
        apply_overrides(config, eval_updates(config, updates))  # as evaluated: on top of eval.apply
    except ValidationError as exc:
        problems += [f"{context}{where}: {line}" if where else f"{context}{line}" for line in format_errors(exc)]
    return problems


def eval_updates(config: RunConfig, updates: dict[str, Any]) -> dict[str, Any]:
    """Evaluation-time settings layered on the run's own ``eval.apply``: overriding a training-free-merge run's
    ``tokens.merge.r`` changes its merging, it does not start from the bare dense model."""
    return {**config.eval.apply, **updates}


def apply_overrides(config: RunConfig, updates: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with dotted-path updates (evaluation overrides, search trials), validated."""
    cfg = config.model_dump(mode="json", exclude_none=True)
    for key, value in updates.items():
        parts = key.split(".")
        parent = cfg
        for i, p in enumerate(parts[:-1]):
            parent = parent.setdefault(p, {})
            if not isinstance(parent, dict):  # a path through a value (tokens.halting.eps.x): a validation error
                raise ValidationError.from_exception_data("RunConfig", [
                    {"type": "dict_type", "loc": tuple(parts[:i + 1]), "input": parent}])
        parent[parts[-1]] = copy.deepcopy(value)  # a later, deeper key must not edit the caller's dict
    return RunConfig.model_validate(cfg)
