"""Energy conventions (no torch): the ``eval.energy`` settings (memory widths and access costs) and the registry of
named conventions that ``suite.energy`` computes side by side from one evaluation pass (docs/counting.md).

A convention is data: which SOP count it starts from and which switches it turns on. Adding one is one registry
entry; every evaluation then stores ``energy_<name>_uj`` and the report's sensitivity table gains a column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from suite.names import E_RAM_ACCESS_PJ, E_RAM_PJ_PER_BIT, SPIKE_BITS, WORD_BITS

PicoJoules = Annotated[float, Field(gt=0)]
Bits = Annotated[int, Field(gt=0, le=64)]


@dataclass(frozen=True)
class Convention:
    """One way to turn counts into energy. ``sops``: exact (non-zero operand products) or paper (rate x FLOPs);
    ``first_conv``: the analog first conv of a static image counted at every step or once; ``nonbinary``: a layer
    whose input holds values outside {-1, 0, 1} does accumulates or MACs; ``policy_overhead``: add a policy's own
    work; ``neuron_updates``: add one MAC (leak) and one AC (threshold test) per LIF element and step; ``memory``:
    Lemaire et al.'s per-layer model (compute and SRAM accesses) instead of E_MAC x MACs + E_AC x SOPs."""

    source: str
    sops: Literal["exact", "paper"] = "exact"
    first_conv: Literal["per_step", "once"] = "per_step"
    nonbinary: Literal["ac", "mac"] = "ac"
    policy_overhead: bool = False
    neuron_updates: bool = False
    memory: Literal["none", "lemaire2022"] = "none"


_HOROWITZ = "Horowitz, ISSCC 2014 (45 nm, 32-bit float: MAC 4.6 pJ, add 0.9 pJ)"
CONVENTIONS: dict[str, Convention] = {
    "exact": Convention(f"non-zero operand products; {_HOROWITZ}"),
    "paper": Convention(f"firing rate x dense FLOPs (Spikformer, Zhou et al., ICLR 2023, appendix); {_HOROWITZ}",
                        sops="paper"),
    "first_conv_once": Convention("exact, with the first conv of a static image counted once (its input is the same "
                                  "at every step; STAS I-SPS, arXiv 2508.14138)", first_conv="once"),
    "nonbinary_mac": Convention("exact, with layers reading non-spike values counted as MACs (Spikingformer, Zhou et "
                                "al. 2023; NeuroBench's rule for inputs outside {-1, 0, 1})", nonbinary="mac"),
    "policy_overhead": Convention("exact plus the token and time policies' own MACs and ACs", policy_overhead=True),
    "neuron_updates": Convention("exact plus one MAC (leak) and one AC (threshold) per LIF element and step "
                                 "(Lemaire et al., ICONIP 2022)", neuron_updates=True),
    "strict": Convention("every compute switch that charges more: non-spike inputs as MACs, policy overhead and "
                         "neuron updates", nonbinary="mac", policy_overhead=True, neuron_updates=True),
    "lemaire2022": Convention("Lemaire et al., ICONIP 2022 (arXiv 2210.13107) and qualia-plugin-snn: per layer "
                              "compute and SRAM reads/writes, E_ram = 1.09e-5 x bits x values + 13.2 pJ per access; "
                              f"policy overhead included; {_HOROWITZ}", nonbinary="mac", policy_overhead=True,
                              memory="lemaire2022"),
}


def check_convention(name: str) -> str:
    """``name`` if it is a registered convention, else ``ValueError`` listing them."""
    if name not in CONVENTIONS:
        raise ValueError(f"unknown energy convention {name!r}; known: {', '.join(CONVENTIONS)}")
    return name


def energy_column(name: str) -> str:
    """The runs-table column of a convention's per-image energy in µJ."""
    return f"energy_{check_convention(name)}_uj"


class MemoryConfig(BaseModel):
    """``eval.energy``: widths and SRAM access costs of Lemaire et al.'s memory model (``lemaire2022``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_bits: Bits = WORD_BITS
    potential_bits: Bits = WORD_BITS  # membrane potentials (and accumulators of real-valued outputs)
    activation_bits: Bits = WORD_BITS  # real-valued inputs and outputs (the image, non-spike activations)
    spike_bits: Bits = SPIKE_BITS
    e_ram_pj_per_bit: PicoJoules = E_RAM_PJ_PER_BIT
    e_ram_access_pj: PicoJoules = E_RAM_ACCESS_PJ
