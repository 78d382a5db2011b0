"""Dependencies between the runs of a study (no torch): fine-tuning parents and shared training.

- ``train.init_from: <variant>`` makes a run start from the final checkpoint of that variant's run with the same
  seed and matrix point: ``link_parents`` resolves the name to the parent's run id (``RunConfig.init_run``, so
  the parent's id enters the child's), parents before children.
- Runs whose training configuration is identical (they differ only in their variant name and evaluation-time
  settings, ``eval.*``) train once: ``share_training`` marks all but the first ``trained_by`` the first.

Executors start a run only when every run it ``needs`` is finished (``suite.run.unit``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from suite.config.study import RunSpec, Study, StudyError, id_payload, run_id


def init_from_key(study: Study, variant: str) -> str:
    """Where a variant's ``init_from`` is set, as the key path error messages name."""
    if "init_from" in study.variants[variant].train:
        return f"variants.{variant}.train.init_from"
    return "train.init_from"


def parent_variant(study: Study, variant: str) -> str | None:
    """The variant ``variant`` fine-tunes from (its own train section over the study's), or None."""
    own = study.variants[variant].train
    p = own["init_from"] if "init_from" in own else study.train.init_from
    return p if isinstance(p, str) else None  # {checkpoint, format}: a file, not a variant


def variant_depths(study: Study, source: str = "<study>") -> dict[str, int]:
    """Each variant's distance from a variant trained from scratch (0); an unknown parent or a cycle raises
    StudyError naming ``variants.<name>.train.init_from``."""
    problems: list[str] = []
    for v in study.variants:
        p = parent_variant(study, v)
        if p is not None and p not in study.variants:
            problems.append(f"{init_from_key(study, v)}: unknown variant {p!r} (have {sorted(study.variants)})")
    if problems:
        raise StudyError(source, problems)
    depths: dict[str, int] = {}
    for v in study.variants:
        chain = [v]
        while (p := parent_variant(study, chain[-1])) is not None and p not in depths:
            if p in chain:
                cycle = " -> ".join(chain[chain.index(p):] + [p])
                raise StudyError(source, [f"{init_from_key(study, p)}: fine-tuning cycle {cycle}"])
            chain.append(p)
        base = depths[p] + 1 if p is not None else 0
        for i, name in enumerate(reversed(chain)):
            depths[name] = base + i
    return depths


def link_parents(study: Study, specs: list[RunSpec], depths: dict[str, int], source: str = "<study>"
                 ) -> list[RunSpec]:
    """``specs`` with every ``train.init_from`` resolved to its parent's run id (new run ids), ordered so that a
    parent comes before its children (stable otherwise); ``depths`` is ``variant_depths(study)``."""
    ordered = sorted(specs, key=lambda s: depths[s.variant])
    by_variant: dict[str, list[RunSpec]] = {}
    out, problems = [], []
    for spec in ordered:
        parent = parent_variant(study, spec.variant)
        if parent is not None:
            found = [p for p in by_variant.get(parent, []) if _same_point(spec, p)]
            if len(found) != 1:
                point = json.dumps({k: v for k, v in spec.axes.items() if k != "variant"}, sort_keys=True)
                why = "no run" if not found else f"{len(found)} runs ({', '.join(p.run_id for p in found)})"
                problems.append(f"{init_from_key(study, spec.variant)}: {why} of variant {parent!r} at {point} "
                                f"to start from (a parent needs the same seed and matrix point)")
                continue
            config = spec.config.model_copy(update={"init_run": found[0].run_id})
            spec = dataclasses.replace(spec, config=config, run_id=run_id(config))
        by_variant.setdefault(spec.variant, []).append(spec)
        out.append(spec)
    if problems:
        raise StudyError(source, list(dict.fromkeys(problems)))
    return out


def _same_point(child: RunSpec, parent: RunSpec) -> bool:
    """The parent has the child's seed and agrees on every matrix axis both have."""
    shared = (set(child.axes) & set(parent.axes)) - {"variant"}
    return child.config.seed == parent.config.seed and all(child.axes[k] == parent.axes[k] for k in shared)


def training_key(spec: RunSpec) -> str:
    """A hash of everything that determines a run's trained weights: the resolved config without its variant
    name and its evaluation section (``eval.apply``, overrides, split, energy constants)."""
    payload: dict[str, Any] = {k: v for k, v in id_payload(spec.config).items() if k not in ("variant", "eval")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def share_training(specs: list[RunSpec]) -> list[RunSpec]:
    """``specs`` with ``trained_by`` set on every run whose training configuration an earlier run has."""
    first: dict[str, str] = {}
    out = []
    for spec in specs:
        key = training_key(spec)
        if key in first:
            spec = dataclasses.replace(spec, trained_by=first[key])
        else:
            first[key] = spec.run_id
        out.append(spec)
    return out
