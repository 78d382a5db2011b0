"""The study schema and one fully resolved run (no torch).

``Study`` is a validated study file; ``RunConfig`` is everything that determines one run's result, and ``run_id`` is
a short hash of it, so the same settings always land in the same place (resume, caching, de-duplication).

Hash policy (run ids never change when the schema grows): the id hashes the canonical JSON of the resolved config.
Fields that existed in schema 1 always enter it. A field added later is declared with ``added_field``
(``fields.py``): at its default value it is left out of the hash, so every existing run keeps its id; set to
anything else, it enters the hash and makes a new run. A schema-1 field that says how a run executes rather than what
it computes (``train.compile``) is declared with ``execution_field``: the hash holds its schema-1 default whatever it
is set to. ``tests/test_study.py`` pins this against the committed reference records.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from suite.config.cluster import ResourcesConfig
from suite.config.controls import add_controls
from suite.config.data import DatasetConfig
from suite.config.execution import ExecutionConfig, TrackingConfig
from suite.config.fields import added_field, omitted_at_default, pinned_id_value
from suite.config.model import ModelConfig
from suite.config.policies import TimeConfig, TokenConfig
from suite.config.report import ReportConfig
from suite.config.search import SearchConfig
from suite.config.train import EvalConfig, TrainConfig
from suite.config.variant import VariantConfig
from suite.names import NAME_PATTERN

SCHEMA_VERSION = 1
class StudyError(Exception):
    """Bad study input; ``problems`` are ``"key.path: what is wrong"`` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__(f"{source}:\n" + "\n".join(f"  {p}" for p in problems))


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
    resources: ResourcesConfig = ResourcesConfig()  # what one run needs; outside every run id
    report: ReportConfig = ReportConfig()  # paired statistics and the primary energy convention; outside run ids

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        for name in v:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"variant name {name!r} must match {NAME_PATTERN}")
        return v

    @model_validator(mode="after")
    def _controls(self) -> Study:
        """Every fine-tuned variant with a policy gets its compute-matched control (``controls.py``), then
        ``report.reference`` must name a variant."""
        add_controls(self)
        ref = self.report.reference
        if ref is not None and ref not in self.variants:
            raise ValueError(f"report.reference: {ref!r} is not a variant of the study (have {sorted(self.variants)})")
        return self


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
    # The run whose final checkpoint this run starts from: ``train.init_from`` resolved by ``expand`` (so
    # retraining the parent, which changes its id, changes this run's id too).
    init_run: str | None = added_field(None, pattern=r"^[0-9a-f]{12}$")
    # The sha256 of ``train.init_from.checkpoint``'s file, set by ``expand`` (another file, another run).
    init_sha256: str | None = added_field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _gate_fits_backbone(self) -> RunConfig:
        """A halting gate that reads one channel needs the backbone to have it (the one gate setting that depends
        on the model; ``linear`` and ``norm_linear`` read every channel of any backbone)."""
        hc = self.tokens.halting
        width = min(self.model.stage_dims)
        if hc is not None and hc.gate == "channel" and hc.channel >= width:
            raise ValueError(f"tokens.halting.channel: {hc.channel} is not a channel of the backbone's residual "
                             f"stream (width {width}; gate: channel reads z[..., channel])")
        if len(self.model.stage_depths) > 1:
            stage_refusal(self.tokens)
        return self

    @model_validator(mode="after")
    def _events_fit_model(self) -> RunConfig:
        """Event data brings its own time axis: one frame per timestep, so model.T is dataset.frames (nothing is
        repeated), and the stem runs at every step (``once``/``integrate`` assume one static image)."""
        ds = self.dataset
        if ds.frames is not None and self.model.T != ds.frames:
            raise ValueError(f"model.T: {self.model.T} differs from dataset.frames: {ds.frames}; event data gives one "
                             "frame per timestep, so set model.T to dataset.frames")
        if ds.is_events and self.model.stem != "per_step":
            raise ValueError(f"model.stem: {self.model.stem} runs the stem on one static image and repeats its tokens; "
                             f"{ds.name} gives a different frame at every timestep, so use stem: per_step")
        return self


def stage_refusal(tokens: TokenConfig) -> None:
    """The token settings a multi-stage backbone (docs/models.md, "Stages") cannot run, refused with the reason."""
    hc = tokens.halting
    if hc is not None and hc.readout == "act":
        raise ValueError("tokens.halting.readout: act sums unit outputs whose width changes between stages; a "
                         "multi-stage backbone needs readout: carry")
    if hc is not None and hc.mode == "2d" and hc.order == "time_major":
        raise ValueError("tokens.halting.order: time_major runs the whole network one step at a time; a "
                         "multi-stage backbone supports block_major only")
    if hc is not None and hc.gate != "channel":
        raise ValueError(f"tokens.halting.gate: {hc.gate} learns one head of one width per block; a multi-stage "
                         "backbone supports gate: channel only")
    if tokens.select is not None:
        raise ValueError("tokens.select: the selector network has one width; a multi-stage backbone supports "
                         "tokens.drop but not tokens.select")


@dataclass(frozen=True)
class RunSpec:
    study: str
    run_id: str
    config: RunConfig
    axes: dict[str, Any]  # the matrix values that produced this run (for tables and MLflow tags)
    # Another run of the study with the same training configuration (this one differs only in evaluation-time
    # settings): its weights are this run's, trained once (``expand`` sets it; never part of the run id).
    trained_by: str | None = None

    @property
    def variant(self) -> str:
        return self.config.variant

    @property
    def parent(self) -> str | None:
        """The run this one fine-tunes (``train.init_from`` resolved), if any."""
        return self.config.init_run

    @property
    def needs(self) -> tuple[str, ...]:
        """Runs that must be finished before this one can start: its parent and the run training its weights."""
        return tuple(r for r in (self.parent, self.trained_by) if r is not None)


def id_payload(model: BaseModel) -> dict[str, Any]:
    """The JSON that ``run_id`` hashes: ``model_dump(mode="json")`` minus ``added_field`` settings at their default."""
    return _prune(model, model.model_dump(mode="json"))


def _prune(model: Any, dumped: Any) -> Any:
    if isinstance(model, BaseModel) and isinstance(dumped, dict):
        out = {}
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if omitted_at_default(field) and value == field.get_default(call_default_factory=True):
                continue
            pinned, id_value = pinned_id_value(field)
            out[name] = id_value if pinned else _prune(value, dumped[name])
        return out
    if isinstance(model, (list, tuple)) and isinstance(dumped, list):
        return [_prune(m, d) for m, d in zip(model, dumped)]
    if isinstance(model, dict) and isinstance(dumped, dict):
        return {k: _prune(model[k], v) for k, v in dumped.items()}
    return dumped


def run_id(config: RunConfig) -> str:
    """12 hex chars of sha256 over the canonical JSON of the resolved config (evaluation-time settings included:
    changing an override list changes what the run records; settings added later count only when not default)."""
    payload = json.dumps(id_payload(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


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
