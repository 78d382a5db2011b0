"""Compute-matched controls of fine-tuned variants (no torch).

A variant with ``train.init_from: P`` and a token or time policy spends extra training (its fine-tuning epochs)
that its parent did not. Without a control, "better than dense" cannot be told apart from "trained longer". For
every such variant, the study gets a control ``P_ft``: the same parent, model, fine-tuning epochs, learning rate
and schedule (the child's ``train`` overrides), and no policy. What is kept from the child and what is not:

- kept: ``model`` and ``train`` overrides (epochs, lr, min_lr, warmup, weight decay, batch size, ``init_from``),
  ``eval`` settings that are not policy-specific (split, energy constants, ``reference_T``...);
- dropped: ``tokens``/``time`` (the policy), ``eval.apply`` and ``eval.overrides`` (evaluation-time settings of
  the policy) and the method's own training loss (``train.loss``, ``train.tet_lambda``: SEENN's TET is part of
  the method; the control keeps the parent's loss).

A study that already declares an equivalent variant (same parent, no policy, the same resolved settings) gets no
control for it. Otherwise the control is named ``P_ft`` (``P_ft2``, ``P_ft3``... when a second fine-tuning
recipe of the same parent, or a declared variant of that name, needs another). Controls are appended after the
declared variants, so no declared run changes its id, its order or the run it shares training with.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from suite.config.variant import VariantConfig


class Study(Protocol):
    """What these rules read of a ``suite.config.study.Study`` (which imports this module: no arrow back)."""

    variants: dict[str, VariantConfig]
    train: Any

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...

METHOD_TRAIN_KEYS = ("loss", "tet_lambda")  # part of a method (SEENN's TET), not of the compute budget
POLICY_EVAL_KEYS = ("apply", "overrides")  # evaluation-time settings of a policy
CONTROL_SUFFIX = "_ft"


def has_policy(variant: VariantConfig) -> bool:
    """Whether a variant sets a token or time policy, at training or at evaluation (``eval.apply``)."""
    return (bool(variant.tokens.model_dump(exclude_none=True)) or bool(variant.time.model_dump(exclude_none=True))
            or bool(variant.eval.get("apply")))


def _parent(study: Study, variant: VariantConfig) -> str | None:
    p = variant.train["init_from"] if "init_from" in variant.train else study.train.init_from
    return p if isinstance(p, str) else None  # a checkpoint file is no variant of the study


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolved_sections(study: Study, variant: VariantConfig) -> dict[str, Any]:
    """A variant's model/train/eval over the study's, and its policies: what equivalence is judged on."""
    base = study.model_dump(mode="json", include={"model", "train", "eval"})
    out = {s: _merge(base[s], getattr(variant, s)) for s in ("model", "train", "eval")}
    out["tokens"] = variant.tokens.model_dump(mode="json", exclude_none=True)
    out["time"] = variant.time.model_dump(mode="json", exclude_none=True)
    return out


def control_settings(study: Study, child: VariantConfig) -> dict[str, Any]:
    """The ``VariantConfig`` fields of ``child``'s compute-matched control (see the module docstring)."""
    parent = study.variants[_parent(study, child)]
    train = {k: copy.deepcopy(v) for k, v in child.train.items() if k not in METHOD_TRAIN_KEYS}
    train.update({k: copy.deepcopy(parent.train[k]) for k in METHOD_TRAIN_KEYS if k in parent.train})
    return {"model": copy.deepcopy(child.model), "train": train,
            "eval": {k: copy.deepcopy(v) for k, v in child.eval.items() if k not in POLICY_EVAL_KEYS}}


def needs_control(study: Study, name: str) -> bool:
    """A fine-tuned variant with a policy: it is compared with its compute-matched control."""
    variant = study.variants[name]
    return _parent(study, variant) in study.variants and has_policy(variant)


def control_of(study: Study, name: str) -> str | None:
    """The variant (declared or added) that is ``name``'s compute-matched control; None when ``name`` needs none
    or the study has none (a study validated as ``Study`` always has one: ``with_controls``)."""
    if not needs_control(study, name):
        return None
    want = resolved_sections(study, VariantConfig(**control_settings(study, study.variants[name])))
    for other, variant in study.variants.items():
        if not has_policy(variant) and _parent(study, variant) == _parent(study, study.variants[name]) \
                and resolved_sections(study, variant) == want:
            return other
    return None


def add_controls(study: Study) -> None:
    """Append to ``study.variants`` a control for every fine-tuned variant with a policy that has none."""
    for name in list(study.variants):
        if not needs_control(study, name) or control_of(study, name) is not None:
            continue  # no control needed, or one declared (or added for an earlier sibling) already
        parent = _parent(study, study.variants[name])
        label = candidate = f"{parent}{CONTROL_SUFFIX}"
        n = 1
        while candidate in study.variants:
            n += 1
            candidate = f"{label}{n}"
        control = VariantConfig(description=f"compute-matched control (added): {parent} fine-tuned as {name} is, "
                                "without its policy", **control_settings(study, study.variants[name]))
        study.variants = {**study.variants, candidate: control}
