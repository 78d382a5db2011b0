"""Comparisons at an equal budget: each token or timestep policy against random token dropping at the same
token-units, and the study's claim check (``report.claim``). Torch-free, from the records alone.

Equal token-units: the *drop curve* of a seed is the drop variant's evaluations (its trained keep ratio and every
evaluation override) at that seed and matrix point, as (token_pct, accuracy) points. Its accuracy at a label's
token_pct is the linear interpolation between the two neighbouring points; outside the curve's range there is no
value (never extrapolated). The per-seed differences (label minus the interpolated drop) get the paired statistics
of ``stats.paired_stats``; p-values are Holm-adjusted over the study's matched comparisons.

The drop variant of a label: the study's variants whose only policy is ``tokens.drop``, with the label's model
settings (T included); the first in study order. A label is compared when its mean token_pct is below 100 and it
is not itself a drop label.

Claim (``report.claim``: ``token_pct``, ``energy_pct``): a label meets it when it is equivalent to its reference in
``stats.compare`` (the compute-matched control where the variant has one, else the study's reference) within
``report.margin`` (TOST p < alpha), its token-units are at most ``token_pct`` % of dense and its energy under the
primary convention at most ``energy_pct`` % of that reference's (the ratio of the means over the paired seeds).
The table also lists every convention under which that energy bound holds, so that a verdict which turns on the
counting convention says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from suite.config import CONVENTIONS, Study, energy_column
from suite.config.controls import has_policy
from suite.config.report import ReportConfig
from suite.report.content import Table
from suite.report.load import StudyRecords
from suite.report.stats import (
    PAIRED,
    Result,
    compare,
    eval_units,
    holm,
    matrix_axes,
    ordered_labels,
    paired_stats,
    same_point,
)

HEADERS = ("variant", "drop curve", "n", "token-units (% of dense)", "Δ accuracy vs drop at equal token-units (pt)",
           "Holm p", "reading")
CLAIM_HEADERS = ("variant", "minus", "n", "Δ accuracy (pt)", "TOST p", "token-units (% of dense)",
                 "energy (% of minus)", "meets the claim", "energy bound met under (% of minus)")


@dataclass(frozen=True)
class Matched:
    """``label`` minus the drop curve of ``drop`` interpolated at the label's token-units, paired by seed."""

    label: str
    drop: str
    token_pct: float  # the label's mean over the compared seeds
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    stats: dict
    note: str = ""
    p_holm: float = math.nan


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """y at ``x`` on the piecewise-linear curve through ``points`` (x, y); NaN outside its x range or with fewer
    than two distinct x (equal x: their mean y)."""
    frame = pd.DataFrame(points, columns=["x", "y"]).groupby("x", sort=True)["y"].mean()
    if len(frame) < 2 or not frame.index[0] <= x <= frame.index[-1]:
        return math.nan
    return float(np.interp(x, frame.index.to_numpy(float), frame.to_numpy(float)))


def _only_drop(study: Study, name: str) -> bool:
    v = study.variants[name]
    tokens = v.tokens.model_dump(exclude_none=True)
    return set(tokens) == {"drop"} and not v.time.model_dump(exclude_none=True) and not v.eval.get("apply")


def drop_variant(study: Study, variant: str) -> str | None:
    """The drop variant ``variant`` is measured against (module docstring), None when the study has none."""
    model = study.variants[variant].model
    for name in study.variants:
        if _only_drop(study, name) and name != variant and study.variants[name].model == model:
            return name
    return None


def matched(rec: StudyRecords, settings: ReportConfig) -> list[Matched]:
    """Every eligible label against its drop curve, Holm-adjusted over all of them."""
    if rec.study is None or "token_pct" not in rec.done:
        return []
    units = eval_units(rec)
    axes = matrix_axes(rec, units)
    out: list[Matched] = []
    for label in ordered_labels(rec, units):
        mine = units[units["label"] == label]
        variant = str(mine["variant"].iloc[0])
        if variant not in rec.study.variants or _only_drop(rec.study, variant):
            continue
        drop = drop_variant(rec.study, variant)
        if drop is None or not float(mine["token_pct"].mean()) < 100.0:
            continue
        curve_rows = units[units["variant"] == drop]
        if curve_rows.empty or curve_rows.groupby("seed")["token_pct"].nunique().max() < 2:
            continue  # a drop variant evaluated at one keep ratio draws no curve: nothing to read at equal units
        seeds, diffs, pcts, outside = [], [], [], 0
        for _, row in mine.sort_values("seed").iterrows():
            at = curve_rows[same_point(row, curve_rows, axes) & (curve_rows["seed"] == row["seed"])]
            y = interpolate(list(zip(at["token_pct"].astype(float), at["accuracy"].astype(float))),
                            float(row["token_pct"]))
            if math.isnan(y):
                outside += len(at) >= 2
                continue
            seeds.append(int(row["seed"]))
            diffs.append(float(row["accuracy"]) - y)
            pcts.append(float(row["token_pct"]))
        note = f"{outside} seed(s) outside the drop curve's token-units range left out" if outside else ""
        if not seeds:
            note = note or "no seed of the drop curve at this matrix point"
        out.append(Matched(label, drop, float(np.mean(pcts)) if pcts else float(mine["token_pct"].mean()),
                           tuple(seeds), tuple(diffs), paired_stats(diffs, settings.confidence, settings.margin)
                           if seeds else {"n": 0, "mean": math.nan}, note))
    adjusted = holm([m.stats.get("p", math.nan) for m in out])
    return [replace(m, p_holm=p) for m, p in zip(out, adjusted)]


def _interval(s: dict) -> str:
    if s.get("n", 0) == 0 or math.isnan(s.get("mean", math.nan)):
        return "n/a"
    text = f"{s['mean']:+.2f}"
    ci = s.get("ci", (math.nan, math.nan))
    return text + ("" if math.isnan(ci[0]) else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")


def _reading(m: Matched, alpha: float) -> str:
    if m.stats.get("n", 0) < 2:
        return "n/a" if not m.seeds else "one seed"
    if not math.isnan(m.p_holm) and m.p_holm < alpha:
        return "beats drop" if m.stats["mean"] > 0 else "below drop"
    return "inconclusive"


def matched_table(rec: StudyRecords, settings: ReportConfig) -> Table | None:
    """The equal-token-units comparison (None when the study has no drop variant evaluated at two keep ratios
    or more, or no eligible label)."""
    results = matched(rec, settings)
    if not results:
        return None
    alpha = 1 - settings.confidence
    rows = tuple((m.label, m.drop, str(m.stats.get("n", 0)), f"{m.token_pct:.1f}", _interval(m.stats),
                  "n/a" if math.isnan(m.p_holm) else f"{m.p_holm:.3f}" if m.p_holm >= 0.001 else "<0.001",
                  _reading(m, alpha) + (f" ({m.note})" if m.note else "")) for m in results)
    pct = f"{settings.confidence * 100:g} %"
    notes = (f"Δ accuracy: the variant minus random token dropping at the same token-units, paired by seed: the drop "
             f"variant's evaluations of that seed (trained keep ratio and every override) as a piecewise-linear curve "
             f"of accuracy over token-units, read at the variant's token-units (never extrapolated); mean [{pct} t "
             f"interval] over seeds.",
             f"Holm p: two-sided paired t test of no difference, Holm-adjusted over this table; 'beats drop' / 'below "
             f"drop' when Holm p < {alpha:.2g}, else 'inconclusive'.")
    return Table(f"{rec.name}: against random dropping at equal token-units", HEADERS, rows, notes, labels=2)


def _energy_ratio(rec: StudyRecords, units: pd.DataFrame, res: Result, convention: str) -> float:
    """Mean energy of ``res.label`` under ``convention`` over that of its reference, over the paired seeds, in %
    (``units``: ``stats.eval_units(rec)``)."""
    column = energy_column(convention)
    if column not in units or not res.seeds:
        return math.nan
    mine = units[(units["label"] == res.label) & units["seed"].isin(res.seeds)]
    ref = units[(units["label"] == res.reference) & units["seed"].isin(res.seeds)]
    if mine[column].isna().any() or ref[column].isna().any() or ref.empty:
        return math.nan
    return 100.0 * float(mine[column].mean()) / float(ref[column].mean())


def _bound_met_under(ratios: dict[str, float], bound: float | None) -> str:
    """The conventions whose energy ratio (``_energy_ratio``, by convention name) is within ``bound``, as
    'name ratio' in the registry's order; how many conventions the records lack is said."""
    if bound is None:
        return "n/a (no energy bound)"
    met = [f"{name} {r:.1f}" for name, r in ratios.items() if r <= bound]
    missing = sum(math.isnan(r) for r in ratios.values())
    return (", ".join(met) or "none") + (f" ({missing} not recorded)" if missing else "")


def claim_table(rec: StudyRecords, settings: ReportConfig, results: Sequence[Result] | None = None) -> Table | None:
    """Per label with a policy or fewer token-units than dense: does it meet ``report.claim``? None without one
    (``results``: ``stats.compare(rec, settings)`` when the caller has it)."""
    claim = settings.claim
    if claim is None:
        return None
    alpha = 1 - settings.confidence
    by = {(r.label, r.role, r.metric): r for r in (compare(rec, settings) if results is None else results)}
    units = eval_units(rec)
    rows = []
    for (label, role, metric), acc in by.items():
        if metric != "accuracy" or acc.kind != PAIRED:
            continue
        if role == "reference" and (label, "control", "accuracy") in by:
            continue  # a variant with a compute-matched control is judged against it
        tokens = by.get((label, role, "token_pct"))
        pct = float(np.mean(tokens.values)) if tokens is not None and tokens.values else math.nan
        variant = rec.study.variants.get(str(acc.label).split(" @ ")[0]) if rec.study is not None else None
        if not pct < 100.0 and (variant is None or not has_policy(variant)):
            continue  # dense, or fine-tuned dense: nothing claimed
        ratios = {name: _energy_ratio(rec, units, acc, name) for name in CONVENTIONS}
        energy = ratios[rec.energy_convention]  # a registered name (ReportConfig checks it)
        misses = []
        if not acc.p_tost < alpha:
            misses.append(f"not equivalent within ±{settings.margin:g} pt")
        if claim.token_pct is not None and not pct <= claim.token_pct:
            misses.append(f"token-units {pct:.1f} % > {claim.token_pct:g} %")
        if claim.energy_pct is not None and not energy <= claim.energy_pct:
            misses.append(f"energy {energy:.1f} % > {claim.energy_pct:g} %")
        rows.append((label, f"{acc.reference} ({role})", str(acc.n), _interval({"n": acc.n, "mean": acc.mean,
                                                                                 "ci": acc.ci}),
                     f"{acc.p_tost:.3f}" if not math.isnan(acc.p_tost) else "n/a", f"{pct:.1f}",
                     "n/a" if math.isnan(energy) else f"{energy:.1f}", "yes" if not misses else "no: " + "; ".join(misses),
                     _bound_met_under(ratios, claim.energy_pct)))
    if not rows:
        return None
    bounds = " and ".join(x for x in (f"token-units <= {claim.token_pct:g} % of dense" if claim.token_pct is not None
                                      else "", f"energy <= {claim.energy_pct:g} % of the reference"
                                      if claim.energy_pct is not None else "") if x)
    notes = (f"The claim (report.claim): equivalent to the reference within ±{settings.margin:g} pt (TOST p < "
             f"{alpha:.2g}){' and ' + bounds if bounds else ''}. The reference: the compute-matched control where the "
             f"variant has one, else the study's reference variant; paired by seed.",
             f"Energy: mean per image under the primary convention ({rec.energy_convention}) as % of the reference's "
             f"mean over the same seeds.",
             "Energy bound met under: the conventions (docs/counting.md) under which that energy ratio is within the "
             "bound, with the ratio; 'none' when no convention meets it. Accuracy and token-units do not depend on the "
             "convention, so where they hold, a convention listed here would turn the verdict to 'yes'.")
    return Table(f"{rec.name}: the claim", CLAIM_HEADERS, tuple(rows), notes, labels=2)
