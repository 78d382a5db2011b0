"""Token and time policy settings (no torch): ``tokens.*`` and ``time.*`` of a variant.

Each policy's settings class declares which of its keys are *evaluation-time* settings (a trained checkpoint can
be re-evaluated with them changed, tracing an accuracy/cost curve) and whether the whole policy can be switched on
at evaluation (``training_free``: merging a dense checkpoint, early exit). ``EVAL_TIME_KEYS`` and the matrix rule
"an axis under a policy applies only to variants that have it" are derived from these declarations, here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from suite.config.fields import added_field


class Policy(BaseModel):
    """Settings of one token or time policy."""

    model_config = ConfigDict(extra="forbid")

    eval_time: ClassVar[tuple[str, ...]] = ()  # keys that can change at evaluation
    training_free: ClassVar[bool] = False  # the whole policy can be applied to a checkpoint trained without it


class HaltingConfig(Policy):
    """ACT halting over blocks and timesteps (AT-SNN 2-D) or blocks only (A-ViT 1-D)."""

    eval_time: ClassVar[tuple[str, ...]] = ("eps", "beta_offset")

    mode: Literal["2d", "1d"] = "2d"  # 2d: units = blocks x timesteps (AT-SNN); 1d: blocks only (A-ViT)
    order: Literal["block_major", "time_major"] = "block_major"  # 2d unit order: block outer | time outer
    channel: int = Field(0, ge=0)  # A-ViT reads embedding channel 0
    gamma: float = 10.0  # A-ViT gate_scale
    beta: float = 10.0  # A-ViT gate_center is 30 on real-valued DeiT features; Spikformer's residual
    # stream is integer-valued, so 10 makes one unit at value 1 score 0.5 and value >= 2 halt (chosen here)
    learnable: bool = False  # per-block trainable gamma/beta (the "extra parameters" reading of AT-SNN)
    eps: float = Field(0.01, ge=0)  # A-ViT eps; >= 1 halts every token at its first unit
    beta_offset: float = 0.0  # added to beta at evaluation to trade accuracy for tokens
    ponder_weight: float = Field(5e-4, ge=0)  # A-ViT ponder_token_scale
    prior_weight: float = Field(1e-3, ge=0)  # A-ViT distr_prior_alpha
    prior_target: float = Field(0.75, gt=0, le=1)  # mean halting unit as a fraction of all units (A-ViT: 8 of 12 blocks)
    prior_std: float = Field(1.0, gt=0)  # width of the Gaussian target, in units (A-ViT: 1)
    # ponder and prior weights ramp linearly from 0 over this many epochs (per step); 0 = full weight at once
    loss_warmup_epochs: float = added_field(0.0, ge=0)
    readout: Literal["act", "carry"] = "act"  # act: remainder-weighted mean over units (A-ViT);
    # carry: each token's frozen last representation goes through the dense readout
    # what the halting score reads off the residual stream entering a unit (docs/halting_gates.md): channel:
    # sigmoid(gamma * z[channel] - beta) (A-ViT); linear: a learned per-block head sigmoid(w_l . z + b_l);
    # norm_linear: the same head on z normalised per token (zero mean, unit variance over channels)
    gate: Literal["channel", "linear", "norm_linear"] = added_field("channel")
    # (0, 1]: at build (or at attach, when fine-tuning) one shift of every gate logit is set by bisection on a
    # calibration batch so the model keeps this fraction of its dense token-units; None: no calibration
    init_fraction: float | None = added_field(None, gt=0, le=1)
    # multi-stage backbones: a next-stage token's cumulative halting score from its 2x2 children's. min: it runs
    # while any child runs (never halts a region with a running token); mean: the region's average progress
    stage_carry: Literal["min", "mean"] = added_field("min")


    @model_validator(mode="after")
    def _gate_settings(self) -> HaltingConfig:
        if self.learnable and self.gate != "channel":
            raise ValueError(f"learnable: trains gamma/beta of gate: channel; gate {self.gate} learns its own head")
        return self


class MergeConfig(Policy):
    """Similarity token merging (ToMe-style bipartite matching); can be applied to a dense checkpoint."""

    eval_time: ClassVar[tuple[str, ...]] = ("r", "threshold")
    training_free: ClassVar[bool] = True

    r: int | list[int] | None = None  # merges per block boundary (int for all, or one per block)
    threshold: float | None = None  # or: merge every pair with cosine similarity >= threshold
    metric: Literal["keys", "residual"] = "keys"  # time-averaged key spikes (ToMe's keys) | residual stream
    per: Literal["all_steps", "timestep"] = "all_steps"  # one matching for all T | one per timestep
    mode: Literal["similarity", "random"] = "similarity"  # random: the random-merge control
    start_block: int = Field(0, ge=0)  # first block after which tokens are merged
    seed: int = 0  # random mode at evaluation

    @model_validator(mode="after")
    def _one_rule(self) -> MergeConfig:
        if (self.r is None) == (self.threshold is None):
            raise ValueError("give exactly one of r or threshold")
        rs = [self.r] if isinstance(self.r, int) else (self.r or [])
        if any(r < 0 for r in rs):
            raise ValueError("r must be >= 0")
        return self


class DropConfig(Policy):
    """Baseline: random token drop at a matched budget."""

    eval_time: ClassVar[tuple[str, ...]] = ("keep_ratio",)

    keep_ratio: float = Field(0.5, gt=0, le=1)  # fraction of tokens kept; overridable at evaluation
    at_block: int = Field(0, ge=0)
    seed: int = 0  # evaluation draws from a generator with this seed, so every evaluation drops the same tokens


class SelectConfig(Policy):
    """Baseline: a learned token selector (SparseSpikformer / DynamicViT style)."""

    eval_time: ClassVar[tuple[str, ...]] = ("keep_ratio",)

    keep_ratio: float = Field(0.5, gt=0, le=1)  # DynamicViT keeps 0.7 per stage; overridable at evaluation
    at_block: int = Field(0, ge=0)
    hidden: float = Field(0.25, gt=0)  # predictor width as a fraction of dim
    ratio_weight: float = Field(2.0, ge=0)  # DynamicViT ratio loss weight
    tau: float = Field(1.0, gt=0)  # Gumbel-softmax temperature in training


class TokenConfig(BaseModel):
    """Which tokens each block processes at each timestep (``tokens.*``); none set = dense."""

    model_config = ConfigDict(extra="forbid")

    halting: HaltingConfig | None = None
    merge: MergeConfig | None = None
    drop: DropConfig | None = None  # baseline: random drop at a matched budget
    select: SelectConfig | None = None  # baseline: learned token selector

    @model_validator(mode="after")
    def _combinable(self) -> TokenConfig:
        if self.drop is not None and self.select is not None:
            raise ValueError("drop and select are alternative baselines; use one")
        if self.halting is not None and (self.drop is not None or self.select is not None):
            raise ValueError("halting does not combine with the drop/select baselines")
        if self.halting is not None and self.halting.mode == "2d" and self.halting.order == "time_major" \
                and self.merge is not None:
            raise ValueError("merge needs all timesteps of a block, which time_major halting has not run yet; "
                             "use order: block_major with merge")
        if self.halting is not None and self.merge is not None and self.merge.per == "timestep":
            raise ValueError("merge.per: timestep does not combine with halting (halting state is per token, "
                             "not per timestep)")
        return self

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.halting, self.merge, self.drop, self.select))


class TimeMaskConfig(Policy):
    """Trainable per-module binary timestep masks (Datta et al.)."""

    eval_time: ClassVar[tuple[str, ...]] = ("threshold",)

    granularity: Literal["block", "layer", "type"] = "block"  # one mask per block | per LIF layer | per SPS/SSA/MLP
    threshold: float = 0.0  # mask = score > threshold; overridable at evaluation
    ste: Literal["identity", "sigmoid"] = "identity"  # backward of the hard mask
    penalty: float = Field(1e-3, ge=0)  # lambda (reconstruction: the paper's value is unknown)
    penalty_on: Literal["sigmoid", "mask"] = "sigmoid"  # lambda * sum sigmoid(scores) | lambda * sum mask (STE)
    init: float = 1.0  # initial score of every step (> threshold: all steps start on)


class ExitConfig(Policy):
    """Per-sample early exit at evaluation (SEENN-I / DT-SNN); applies to any checkpoint."""

    eval_time: ClassVar[tuple[str, ...]] = ("threshold", "criterion")
    training_free: ClassVar[bool] = True

    criterion: Literal["confidence", "entropy"] = "confidence"  # SEENN-I max softmax | DT-SNN 1 - H/log K
    threshold: float = Field(0.9, ge=0)  # exit when the score exceeds it; overridable at evaluation


class TimeConfig(BaseModel):
    """Which timesteps each module runs (``time.*``); none set = all of them."""

    model_config = ConfigDict(extra="forbid")

    mask: TimeMaskConfig | None = None  # trainable per-module timestep masks (Datta et al.)
    exit: ExitConfig | None = None  # per-sample early exit at evaluation (SEENN-I / DT-SNN)


POLICY_SECTIONS: dict[str, type[BaseModel]] = {"tokens": TokenConfig, "time": TimeConfig}


def policy_class(section: str, name: str) -> type[Policy] | None:
    """The settings class of policy ``<section>.<name>`` (e.g. tokens.halting), None when there is none."""
    cls = POLICY_SECTIONS.get(section)
    field = cls.model_fields.get(name) if cls is not None else None
    if field is None:
        return None
    return next((a for a in get_args(field.annotation) if isinstance(a, type) and issubclass(a, Policy)), None)


def _eval_time_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for section, cls in POLICY_SECTIONS.items():
        for name in cls.model_fields:
            pol = policy_class(section, name)
            if pol is None:
                continue
            if pol.training_free:
                keys.append(f"{section}.{name}")
            keys += [f"{section}.{name}.{k}" for k in pol.eval_time]
    return tuple(keys)


# Evaluation-time settings: a checkpoint can be re-evaluated with any of these changed (declared per policy above).
EVAL_TIME_KEYS: tuple[str, ...] = _eval_time_keys()


def is_eval_time_key(key: str) -> bool:
    """A dotted path that is, or lies under, an evaluation-time setting."""
    return any(key == k or key.startswith(k + ".") for k in EVAL_TIME_KEYS)


def policy_of(key: str) -> tuple[str, str] | None:
    """``(section, policy)`` when ``key`` lies strictly under a policy's settings (tokens.halting.beta), else None."""
    parts = key.split(".")
    if len(parts) > 2 and policy_class(parts[0], parts[1]) is not None:
        return parts[0], parts[1]
    return None


def axis_applies(key: str, run: BaseModel | Mapping[str, Any]) -> bool:
    """The matrix rule: a key under ``tokens.<policy>.`` or ``time.<policy>.`` applies only to runs that have that
    policy; every other key applies to every run. ``run`` is a RunConfig or its (partial) dict."""
    where = policy_of(key)
    if where is None:
        return True
    section, name = where
    if isinstance(run, Mapping):
        return (run.get(section) or {}).get(name) is not None
    return getattr(getattr(run, section), name) is not None
