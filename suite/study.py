"""Study files: load, validate and expand into fully resolved runs.

``studies/x.yaml --load/validate--> Study --expand--> [RunSpec]``. A run is identified by a short
hash of its canonical resolved config, so the same settings always land in the same place (what
makes resume, caching and de-duplication work). Every problem is reported with its key path before
anything is written.
"""

from __future__ import annotations

import builtins
import copy
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from suite.data import DatasetConfig
from suite.models import ModelConfig, TimeConfig, TokenConfig
from suite.train_config import EVAL_TIME_KEYS, EvalConfig, TrainConfig, is_eval_time_key

SCHEMA_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # no separators: names become directory names


class StudyError(Exception):
    """Bad study input; ``problems`` are ``"key.path: what is wrong"`` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__(f"{source}:\n" + "\n".join(f"  {p}" for p in problems))


class VariantConfig(BaseModel):
    """A named method setting: token and time policies plus optional model/train overrides."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    tokens: TokenConfig = TokenConfig()
    time: TimeConfig = TimeConfig()
    model: dict[str, Any] = {}  # partial overrides of the study's model section
    train: dict[str, Any] = {}  # partial overrides of the study's train section
    eval: dict[str, Any] = {}  # partial overrides of the study's eval section


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    uri: str | None = None  # default: sqlite:///<results>/<study>/mlflow.db; MLFLOW_TRACKING_URI wins over it
    experiment: str | None = Field(None, pattern=NAME_PATTERN)  # default: the study name


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = "auto"  # auto: cuda when visible, else cpu
    workers: int = Field(1, ge=1, le=64)  # processes sharing the study (one per GPU); runs are claimed by lock
    oom_retry: bool = True  # retry a run at half batch size after CUDA out-of-memory
    progress: bool = True


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
    split: Literal["val", "test"] = "val"  # eval-stage trials score on this split: selecting on val keeps test honest
    heartbeat_s: int = Field(60, ge=1)


class Study(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    variants: dict[str, VariantConfig] = Field(min_length=1)
    matrix: dict[str, Any] = {"seed": [0]}
    search: SearchConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        import re

        for name in v:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"variant name {name!r} must match {NAME_PATTERN}")
        return v


class RunConfig(BaseModel):
    """One fully resolved run: everything that determines its result (hashed into the run id)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    variant: str
    seed: int = Field(ge=0, le=2**31 - 1)
    dataset: DatasetConfig
    model: ModelConfig
    tokens: TokenConfig
    time: TimeConfig
    train: TrainConfig
    eval: EvalConfig


@dataclass(frozen=True)
class RunSpec:
    study: str
    run_id: str
    config: RunConfig
    axes: dict[str, Any]  # the matrix values that produced this run (for tables and MLflow tags)

    @property
    def variant(self) -> str:
        return self.config.variant


def run_id(config: RunConfig) -> str:
    """12 hex chars of sha256 over the canonical JSON of the resolved config (evaluation-time
    settings included: changing an override list changes what the run records)."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


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


def format_errors(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """pydantic errors as ``key.path: message`` lines (union-branch tags dropped from the path)."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in prefix + tuple(err["loc"]) if not _is_type_tag(p)]
        path = ".".join(loc) or "<root>"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            if err["type"] not in ("value_error", "assertion_error"):
                msg += f" (got {err.get('input')!r:.60})"
        line = f"{path}: {msg}"
        if line not in out:
            out.append(line)
    return out


def _is_type_tag(part: Any) -> bool:
    s = str(part)
    return s in {"int", "float", "str", "bool", "list", "dict", "none", "tuple"} or "[" in s or s.startswith(
        ("function-", "constrained-"))


# ---------------------------------------------------------------------------------------------- expand


def expand(study: Study, source: str = "<study>") -> list[RunSpec]:
    """Variants x matrix axes (product, minus ``exclude``, plus ``include``) -> resolved runs,
    de-duplicated by run id. An axis whose path names a policy a variant lacks does not apply to it."""
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
    runs: dict[str, RunSpec] = {}
    problems: list[str] = []
    for combo in combos:
        spec = _resolve(study, base, combo, problems)
        if spec is not None and spec.run_id not in runs:
            runs[spec.run_id] = spec
    if problems:
        raise StudyError(source, list(dict.fromkeys(problems)))  # one line per problem, not per run
    return list(runs.values())


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
        if parent is None and parts[0] in ("tokens", "time") and len(parts) > 2 \
                and parts[1] in (TokenConfig.model_fields if parts[0] == "tokens" else TimeConfig.model_fields) \
                and cfg[parts[0]].get(parts[1]) is None:
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
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and parts[-1] in ("r",):
            value = int(value)
        parent[parts[-1]] = copy.deepcopy(value)  # a later, deeper key must not edit the caller's dict
    return RunConfig.model_validate(cfg)
