"""Panels of at most ``MAX_SERIES`` series, grouped by family, for the figures that would otherwise put every variant
of a study in one panel (15-24 series cannot be told apart).

A config's family is what it changes against the study's reference model, read from its records (never from its
name): ``backbone`` (another backbone than the study's), ``stem`` (another stem), ``token`` (a token policy, trained
or applied at evaluation), ``time`` (a time policy, or another T); a config that changes none of these is the dense
reference, drawn in every panel so each panel keeps its yardstick. A family with more configs than a panel takes is
split in study order (``token (1/2)``, ``token (2/2)``). A study whose configs all fit one panel gets one panel."""

from __future__ import annotations

from dataclasses import dataclass

from suite.config import TimeConfig, TokenConfig
from suite.report.load import StudyRecords

MAX_SERIES = 6  # series per panel, the reference included
FAMILIES = ("token", "time", "stem", "backbone")  # panel order
REFERENCE = "reference"


@dataclass(frozen=True)
class Facet:
    title: str
    configs: tuple[str, ...]  # the panel's own series, in study order
    reference: str | None  # the dense reference drawn in it too (None: the study has none)

    @property
    def series(self) -> tuple[str, ...]:
        """Every config drawn in the panel: the reference first."""
        return ((self.reference,) if self.reference is not None else ()) + self.configs


def _study_model(rec: StudyRecords, key: str, default: str) -> str:
    return str(getattr(rec.study.model, key)) if rec.study is not None else default


def config_family(rec: StudyRecords, config: str) -> str:
    """``backbone``, ``stem``, ``token``, ``time`` or ``reference`` (see the module docstring), in that precedence:
    a config on another backbone is compared with that backbone's panel whatever policy it runs."""
    if str(rec.config_model(config, "backbone", _study_model(rec, "backbone", "spikformer"))) != \
            _study_model(rec, "backbone", "spikformer"):
        return "backbone"
    if str(rec.config_model(config, "stem", "per_step")) != _study_model(rec, "stem", "per_step"):
        return "stem"
    variant = str(rec.runs.loc[rec.runs.config == config, "variant"].iloc[0])
    v = rec.variants.get(variant)
    if v is None:  # no study.yaml: the name is all there is
        return REFERENCE if variant.startswith("dense") else "token"
    applied = [str(k).split(".")[0] for k in (v.eval.get("apply") or {})]
    if v.tokens != TokenConfig() or "tokens" in applied:
        return "token"
    study_T = rec.study.model.T if rec.study is not None else None
    if v.time != TimeConfig() or "time" in applied or rec.config_model(config, "T", study_T) != study_T:
        return "time"
    return REFERENCE


def facets(rec: StudyRecords, configs: list[str], most: int = MAX_SERIES) -> list[Facet]:
    """``configs`` (study order) in panels of at most ``most`` series: one panel when they all fit, else one per
    family (split when it has more), each with the study's first reference config drawn too."""
    families = {c: config_family(rec, c) for c in configs}
    refs = [c for c in configs if families[c] == REFERENCE]
    reference = refs[0] if refs else None
    if len(configs) <= most:
        return [Facet("", tuple(c for c in configs if c != reference), reference)]
    room = most - (reference is not None)
    out: list[Facet] = []
    groups = {f: [c for c in configs if families[c] == f] for f in FAMILIES}
    groups[REFERENCE] = refs[1:]  # further dense configs (another T is "time"): a panel of their own
    for family, members in groups.items():
        chunks = [members[i:i + room] for i in range(0, len(members), room)]
        for k, chunk in enumerate(chunks):
            title = family if len(chunks) == 1 else f"{family} ({k + 1}/{len(chunks)})"
            out.append(Facet(title, tuple(chunk), reference))
    return out
