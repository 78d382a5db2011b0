"""Every energy convention of ``suite.config.energy.CONVENTIONS`` from one evaluation's stored counts (no torch).

The inputs are what ``metrics.json`` keeps: ``details.ops`` (per synaptic layer, sums over the evaluated images,
as counted over all T steps), ``details.policy_ops`` (a policy's own work) and ``details.neuron_updates`` (LIF
elements updated per image). A convention whose inputs a record lacks (one counted before them) is NaN, and
``missing_inputs`` names what it needs; ``suite.records_migrate`` recounts the rest. NeuroBench-named metrics
(``Effective_ACs``, ``Effective_MACs``) come from the same per-layer counts. Conventions: docs/counting.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from suite.config import CONVENTIONS, Convention, EnergyConfig, energy_column
from suite.metrics import runs_every_step

_PJ_TO_UJ = 1e-6
FIRST_CONV = "stem.0"  # the analog first conv of every backbone
# what each switch reads beyond the exact/paper counts, and where metrics.json keeps it
_NEEDS = {"nonbinary": "details.ops[*].sops_nonbinary", "policy_overhead": "details.policy_ops",
          "neuron_updates": "details.neuron_updates", "memory": "details.ops[*].weights/inputs_nz/outputs"}


@dataclass(frozen=True)
class Counts:
    """One evaluation's stored counts and how its layers ran (the inputs of every convention)."""

    ops: Mapping[str, Mapping[str, Any]]  # details.ops: layer -> LayerCounts fields, sums over n_images
    n_images: float
    T: int
    stem: str = "per_step"  # model.stem
    static_input: bool = True  # the same image at every step (not event data)
    exit_share: float | None = None  # details.exit_step_share of an early exit
    active_steps: Mapping[str, float] | None = None  # details.active_steps of a time mask
    policy_ops: Mapping[str, Mapping[str, Any]] | None = None  # None: not recorded (a record counted before them)
    neuron_updates: float | None = None  # LIF elements updated per image; None: not recorded
    leaky: bool = True  # the neurons leak (model.neuron.type lif, plif); IF neurons have no leak multiply


def missing_inputs(conv: Convention, counts: Counts) -> list[str]:
    """What ``counts`` lacks for ``conv`` (empty: computable)."""
    has_layer_field = lambda f: all(f in rec for rec in counts.ops.values())  # noqa: E731
    missing = []
    if conv.nonbinary == "mac" and not has_layer_field("sops_nonbinary"):
        missing.append(_NEEDS["nonbinary"])
    if conv.policy_overhead and counts.policy_ops is None:
        missing.append(_NEEDS["policy_overhead"])
    if (conv.neuron_updates or conv.memory != "none") and counts.neuron_updates is None:
        missing.append(_NEEDS["neuron_updates"])
    if conv.memory != "none" and not has_layer_field("weights"):
        missing.append(_NEEDS["memory"])
    return missing


def _f(rec: Mapping[str, Any], key: str) -> float:
    return float(rec.get(key, 0.0))


def _layer_factor(name: str, rec: Mapping[str, Any], conv: Convention, counts: Counts) -> float:
    """What fraction of a layer's stored counts the convention charges: an early exit's share for a layer that runs
    every step; 1 / its steps for the first conv of a static image counted once."""
    stem_per_step = counts.stem == "per_step"
    if conv.first_conv == "once" and name == FIRST_CONV and stem_per_step and counts.static_input:
        steps = (counts.active_steps or {}).get(FIRST_CONV, counts.T)
        return 1.0 / steps if steps else 0.0  # once per image, whenever the exit comes
    if counts.exit_share is not None and runs_every_step(str(rec.get("kind")), stem_per_step):
        return counts.exit_share
    return 1.0


def _is_nonbinary(rec: Mapping[str, Any]) -> bool:
    """A layer whose (exact) operations read values outside {-1, 0, 1} (NeuroBench's rule, per call)."""
    return _f(rec, "sops_nonbinary") > 0


def _ram_pj(values: float, bits: int, cfg: EnergyConfig) -> float:
    """One access to a memory of ``values`` words of ``bits`` bits (Lemaire et al. 2022)."""
    return cfg.memory.e_ram_pj_per_bit * values * bits + cfg.memory.e_ram_access_pj


def lemaire_layer_pj(rec: Mapping[str, Any], cfg: EnergyConfig) -> float:
    """Lemaire et al.'s energy of one synaptic layer (sums over the images, in pJ; docs/counting.md). A layer on
    spikes: accumulates (weight reads + bias adds + resets) and its reads and writes; a layer on real values (the
    analog first conv, the head, a non-spike input): one MAC and one input and weight read per MAC. A product of two
    activations (no weights: Q K^T, (Q K^T) V, SDSA) is only computed (Lemaire's model has no attention)."""
    m = cfg.memory
    weights = _f(rec, "weights")
    nonbinary = _is_nonbinary(rec)
    if weights == 0:
        return (cfg.e_mac_pj if nonbinary else cfg.e_ac_pj) * _f(rec, "sops_exact")
    outputs, spikes_out, lif_out = _f(rec, "outputs"), _f(rec, "out_spikes"), _f(rec, "out_elements") > 0
    bias_reads = outputs * _ram_pj(_f(rec, "biases"), m.weight_bits, cfg)
    writes = (spikes_out * _ram_pj(_f(rec, "out_size"), m.spike_bits, cfg) if lif_out
              else outputs * _ram_pj(_f(rec, "out_size"), m.activation_bits, cfg))
    macs = _f(rec, "macs")
    if macs > 0 or nonbinary:
        n = macs if macs > 0 else _f(rec, "sops_exact")  # an analog layer computes densely; else non-zero inputs
        reads = n * (_ram_pj(_f(rec, "in_size"), m.activation_bits, cfg) + _ram_pj(weights, m.weight_bits, cfg))
        return cfg.e_mac_pj * n + reads + bias_reads + writes
    weight_reads = _f(rec, "inputs_nz") * _f(rec, "fan_out")
    compute = cfg.e_ac_pj * (weight_reads + outputs + spikes_out)
    potentials = 2 * (weight_reads + outputs) * _ram_pj(_f(rec, "out_size"), m.potential_bits, cfg)
    reads = (_f(rec, "inputs_nz") * _ram_pj(_f(rec, "in_size"), m.spike_bits, cfg)
             + weight_reads * _ram_pj(weights, m.weight_bits, cfg))
    return compute + reads + bias_reads + potentials + writes


def _compute_layer_pj(rec: Mapping[str, Any], conv: Convention, cfg: EnergyConfig) -> float:
    """``E_MAC x MACs + E_AC x SOPs`` of one layer under ``conv``'s SOP count and non-binary rule (pJ, summed)."""
    sops = _f(rec, f"sops_{conv.sops}")
    macs = _f(rec, "macs")
    if conv.nonbinary == "mac":
        moved = _f(rec, "sops_nonbinary")
        macs, sops = macs + moved, sops - moved
    return cfg.e_mac_pj * macs + cfg.e_ac_pj * sops


def _policy_pj(counts: Counts, cfg: EnergyConfig) -> float:
    """A policy's own work (pJ, summed over images): block policies scaled by an early exit like block layers."""
    total = 0.0
    for rec in (counts.policy_ops or {}).values():
        factor = counts.exit_share if counts.exit_share is not None and int(rec.get("block", -1)) >= 0 else 1.0
        total += factor * (cfg.e_mac_pj * _f(rec, "macs") + cfg.e_ac_pj * _f(rec, "sops_exact"))
    return total


def convention_uj(name: str, counts: Counts, cfg: EnergyConfig) -> float:
    """Per-image energy in µJ of convention ``name`` (NaN when ``counts`` lack its inputs)."""
    conv = CONVENTIONS[name]
    if missing_inputs(conv, counts):
        return math.nan
    pj = 0.0
    for layer, rec in counts.ops.items():
        per_layer = lemaire_layer_pj(rec, cfg) if conv.memory == "lemaire2022" else _compute_layer_pj(rec, conv, cfg)
        pj += _layer_factor(layer, rec, conv, counts) * per_layer
    if conv.policy_overhead:
        pj += _policy_pj(counts, cfg)
    per_image = pj / counts.n_images
    leak = cfg.e_mac_pj if counts.leaky else 0.0  # an IF neuron integrates without the leak's multiply
    if conv.neuron_updates:
        per_image += (leak + cfg.e_ac_pj) * counts.neuron_updates
    elif conv.memory == "lemaire2022":
        per_image += leak * counts.neuron_updates  # the leak multiply-accumulate of every LIF update
    return per_image * _PJ_TO_UJ


def convention_metrics(counts: Counts, cfg: EnergyConfig) -> dict[str, float]:
    """``energy_<convention>_uj`` for every registered convention, side by side."""
    return {energy_column(name): convention_uj(name, counts, cfg) for name in CONVENTIONS}


def neurobench_metrics(ops: Mapping[str, Mapping[str, Any]], n_images: float) -> dict[str, float]:
    """NeuroBench's ``SynapticOperations`` from our per-layer counts, per image: over the layers with weights (its
    hooked Linear/Conv layers; not the attention products), the effective operations (non-zero input x connections)
    of calls whose input held a value outside {-1, 0, 1} are ``Effective_MACs``, the others ``Effective_ACs``."""
    acs = macs = 0.0
    for rec in ops.values():
        if _f(rec, "weights") > 0:
            macs += _f(rec, "synops_nonbinary")
            acs += _f(rec, "synops") - _f(rec, "synops_nonbinary")
    return {"Effective_ACs": acs / n_images, "Effective_MACs": macs / n_images}
