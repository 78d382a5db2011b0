"""Operation counts -> per-image MACs, SOPs and energy; firing rates; ops-weighted timesteps.

The model counts (``Context.ops``: layer -> ``LayerCounts``, sums over a batch; ``Context.spikes``:
LIF layer -> [spike sum, element count]) are accumulated over the evaluation set with
``merge_counts`` / ``merge_spikes`` and turned into per-image numbers here. Two SOP conventions
are carried side by side and named in every key:

- ``exact``: non-zero operand products (a spike of a residual-stream value 2 counts once);
- ``paper``: firing rate x dense FLOPs (Spikformer-family convention; rate = mean input value,
  so a residual-stream value of 2 counts twice).

Energy (Spikformer appendix, papers.md 2.8): ``E = E_MAC * MACs + E_AC * SOPs``; MACs are the analog
first conv and the head, SOPs everything else (convs, linears, both attention products). Every total is the
sum of its per-kind parts, early exit included (``exit_scaled``), so an energy breakdown adds up to the total.

Token-units (``token_pct``): % of the dense model's token-units at a reference T (``dense_units_per_step`` x T).
See docs/counting.md for what is and is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import pandas as pd

from suite.config import EnergyConfig
from suite.names import ENERGY_KINDS

if TYPE_CHECKING:  # no torch at import: the records' tables (no torch) restate token_pct with this module
    from suite.models.context import LayerCounts

# additive LayerCounts fields (the others are a layer's static sizes, the same in every batch)
SUMMED: tuple[str, ...] = ("macs", "sops_exact", "sops_paper", "dense_flops", "sops_nonbinary", "synops", "synops_nonbinary",
                           "inputs_nz",
                           "outputs", "out_spikes", "out_elements")
_TOTALS: tuple[str, ...] = ("macs", "sops_exact", "sops_paper", "dense_flops")  # the per-image totals of metrics.json
_PJ_TO_UJ = 1e-6
BREAKDOWN_COLUMNS: tuple[str, ...] = ("layer", "kind", "block", "macs", "sops_exact", "sops_paper",
                                      "dense_flops", "energy_exact_pj", "energy_paper_pj")


def merge_counts(total: Mapping[str, LayerCounts], new: Mapping[str, LayerCounts]) -> dict[str, LayerCounts]:
    """Add one batch's counts into a running total; returns a new dict and leaves both inputs unchanged.

    A layer present in both must have the same ``kind`` and ``block`` (else ``ValueError``)."""
    out = {name: replace(rec) for name, rec in total.items()}
    for name, rec in new.items():
        cur = out.get(name)
        if cur is None:
            out[name] = replace(rec)
            continue
        if (cur.kind, cur.block) != (rec.kind, rec.block):
            raise ValueError(f"layer {name!r}: kind/block {(rec.kind, rec.block)} != {(cur.kind, cur.block)}")
        out[name] = replace(cur, **{f: getattr(cur, f) + getattr(rec, f) for f in SUMMED})
    return out


def merge_spikes(total: Mapping[str, Sequence[float]],
                 new: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """Add one batch's ``[spike sum, element count]`` per LIF layer into a running total (pure)."""
    out = {name: [float(s), float(c)] for name, (s, c) in total.items()}
    for name, (s, c) in new.items():
        acc = out.setdefault(name, [0.0, 0.0])
        acc[0] += float(s)
        acc[1] += float(c)
    return out


def firing_rates(spikes: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Spike sum / element count per LIF layer, over processed entries only (0 where nothing ran)."""
    return {name: float(s) / float(c) if c else 0.0 for name, (s, c) in spikes.items()}


def layer_energy_pj(rec: LayerCounts, cfg: EnergyConfig, convention: str) -> float:
    """``E_MAC * MACs + E_AC * SOPs`` of one layer in pJ, with SOPs in ``convention`` (exact | paper)."""
    if convention not in ("exact", "paper"):
        raise ValueError(f"convention must be 'exact' or 'paper', not {convention!r}")
    return cfg.e_mac_pj * rec.macs + cfg.e_ac_pj * getattr(rec, f"sops_{convention}")


def _check(ops: Mapping[str, LayerCounts], n_images: int) -> None:
    if n_images <= 0:
        raise ValueError(f"n_images must be positive, not {n_images}")
    for name, rec in ops.items():
        if rec.kind not in ENERGY_KINDS:
            raise ValueError(f"layer {name!r} has unknown kind {rec.kind!r} (expected one of {ENERGY_KINDS})")


def energy_metrics(ops: Mapping[str, LayerCounts], n_images: int, cfg: EnergyConfig) -> dict[str, float]:
    """Flat per-image totals: ``macs``, ``sops_exact``, ``sops_paper``, ``dense_flops``,
    ``energy_exact_uj``, ``energy_paper_uj`` and, for every kind in ``suite.names.ENERGY_KINDS`` (0 when absent),
    ``sops_exact_<kind>``, ``sops_paper_<kind>``, ``energy_exact_uj_<kind>``, ``energy_paper_uj_<kind>``.

    ``ops`` are sums over ``n_images`` images (the real evaluation set)."""
    _check(ops, n_images)
    recs = list(ops.values())
    out: dict[str, float] = {f: sum(getattr(r, f) for r in recs) / n_images for f in _TOTALS}
    for conv in ("exact", "paper"):
        out[f"energy_{conv}_uj"] = sum(layer_energy_pj(r, cfg, conv) for r in recs) / n_images * _PJ_TO_UJ
    for kind in ENERGY_KINDS:
        sub = [r for r in recs if r.kind == kind]
        for conv in ("exact", "paper"):
            out[f"sops_{conv}_{kind}"] = sum(getattr(r, f"sops_{conv}") for r in sub) / n_images
        for conv in ("exact", "paper"):
            pj = sum(layer_energy_pj(r, cfg, conv) for r in sub)
            out[f"energy_{conv}_uj_{kind}"] = pj / n_images * _PJ_TO_UJ
    return out


def breakdown_frame(ops: Mapping[str, LayerCounts], n_images: int, cfg: EnergyConfig) -> pd.DataFrame:
    """One row per layer in forward order, all values per image: ``BREAKDOWN_COLUMNS`` (energy in pJ)."""
    _check(ops, n_images)
    rows = [
        {"layer": name, "kind": r.kind, "block": r.block,
         **{f: getattr(r, f) / n_images for f in _TOTALS},
         "energy_exact_pj": layer_energy_pj(r, cfg, "exact") / n_images,
         "energy_paper_pj": layer_energy_pj(r, cfg, "paper") / n_images}
        for name, r in ops.items()
    ]
    return pd.DataFrame(rows, columns=list(BREAKDOWN_COLUMNS))


def exit_scaled(ops: Mapping[str, LayerCounts], share: float, stem_per_step: bool) -> dict[str, LayerCounts]:
    """The counts of a per-sample early exit, from a forward counted over all T steps.

    A layer that runs at every step (every block layer; the stem when ``model.stem`` is ``per_step``) is scaled
    by ``share`` = mean exit step / T: the steps after a sample's exit are skipped. A layer that runs once per
    image (the head; a stem run once) is not. Approximate: every step of a layer is taken to cost the same."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], not {share}")
    out = {}
    for name, rec in ops.items():
        factor = share if runs_every_step(rec.kind, stem_per_step) else 1.0
        out[name] = replace(rec, **{f: getattr(rec, f) * factor for f in SUMMED})
    return out


def runs_every_step(kind: str, stem_per_step: bool) -> bool:
    """A layer of ``kind`` runs at every timestep (an early exit skips its later steps): every block layer (and a
    block's policy work), the stem when it runs per step; not the head or a stem run once."""
    return kind in ("attention", "mlp", "policy") or (kind == "stem" and stem_per_step)


def units_per_step(dense_token_units: float, T: int) -> float:
    """Token-units of the dense model per timestep (blocks x tokens) from its stored count at T steps."""
    return dense_token_units / T


def token_pct(token_units: float, per_step: float, reference_T: int) -> float:
    """``token_units`` as % of the dense model of the same backbone run for ``reference_T`` steps."""
    return 100.0 * token_units / (per_step * reference_T)


def ops_weighted_steps(active_steps: Mapping[str, float], ops: Mapping[str, LayerCounts],
                       gates: Mapping[str, Sequence[str]]) -> float:
    """Mean active timesteps over LIF layers, each weighted by the dense FLOPs per active step of the
    layers it gates (``gates``: LIF layer -> counted synaptic layers, ``LIFLayer.gates`` of the backbone);
    the plain mean is ``mean(active_steps.values())``.

    A layer's ``dense_flops`` were counted over its active steps only, so FLOPs per step =
    ``dense_flops / active_steps``; with token policies this is the mean over active steps."""
    if not active_steps:
        raise ValueError("active_steps is empty")
    num = den = 0.0
    for lif, steps in active_steps.items():
        if steps <= 0:
            raise ValueError(f"LIF layer {lif!r} has no active step; its FLOPs per step are unknown")
        missing = [n for n in gates[lif] if n not in ops]
        if missing:
            raise ValueError(f"LIF layer {lif!r}: no counts for {missing} (run the forward with count=True)")
        weight = sum(ops[n].dense_flops for n in gates[lif]) / steps
        num += weight * steps
        den += weight
    if den == 0:
        raise ValueError("all layers have zero dense FLOPs")
    return num / den


# A stem run once (model.stem once | integrate) hands every timestep the same tokens, so the first block's input is
# identical at consecutive steps: its temporal similarity is 1.0 by construction, not a measurement.
CONSTANT_INPUT_STEMS = ("once", "integrate")


def similarity_by_construction(stem: str, blocks: Sequence[str]) -> tuple[str, ...]:
    """The blocks (of ``blocks``, in forward order) whose temporal similarity holds by construction under ``stem``:
    the first block behind a stem run once; none behind a per-step stem."""
    return (blocks[0],) if stem in CONSTANT_INPUT_STEMS and blocks else ()


def temporal_similarity_mean(sims: Mapping[str, float], stem: str) -> float | None:
    """The mean temporal similarity over the blocks that measure something (``sims`` in forward order; the blocks
    of ``similarity_by_construction`` left out); None when none is left."""
    skip = set(similarity_by_construction(stem, list(sims)))
    kept = [float(v) for k, v in sims.items() if k not in skip]
    return sum(kept) / len(kept) if kept else None
