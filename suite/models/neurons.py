"""One factory for every spiking neuron in the suite (spikingjelly 2.0 ``LIFNode``, multi-step).

spikingjelly 2.0 removed the ``backend=`` argument that the official Spikformer code passes
(``backend='cupy'``); the implementation is chosen per device inside spikingjelly. Building all
neurons here keeps that detail in one place.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from spikingjelly.activation_based import neuron, surrogate


class NeuronConfig(BaseModel):
    """LIF settings; defaults follow the official Spikformer code (spikingjelly defaults + tau 2, detach_reset)."""

    model_config = ConfigDict(extra="forbid")

    tau: float = Field(2.0, gt=1.0)  # Spikformer cifar10/model.py: MultiStepLIFNode(tau=2.0)
    v_threshold: float = Field(1.0, gt=0)  # spikingjelly default
    v_reset: float | None = 0.0  # hard reset to 0 (spikingjelly default); None = soft reset
    detach_reset: bool = True  # Spikformer: detach_reset=True
    surrogate: Literal["sigmoid", "atan"] = "sigmoid"  # spikingjelly default surrogate.Sigmoid
    alpha: float = Field(4.0, gt=0)  # surrogate.Sigmoid(alpha=4.0) default


def make_lif(cfg: NeuronConfig, *, v_threshold: float | None = None) -> neuron.LIFNode:
    """A multi-step LIF neuron; ``v_threshold`` overrides the config (attention LIF uses 0.5)."""
    sg = surrogate.Sigmoid(alpha=cfg.alpha) if cfg.surrogate == "sigmoid" else surrogate.ATan(alpha=cfg.alpha)
    return neuron.LIFNode(
        tau=cfg.tau,
        v_threshold=cfg.v_threshold if v_threshold is None else v_threshold,
        v_reset=cfg.v_reset,
        surrogate_function=sg,
        detach_reset=cfg.detach_reset,
        step_mode="m",
    )
