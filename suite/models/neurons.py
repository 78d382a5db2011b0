"""One factory for every spiking neuron in the suite (spikingjelly 2.0 ``LIFNode``, multi-step).

spikingjelly 2.0 removed the ``backend=`` argument that the official Spikformer code passes
(``backend='cupy'``); the implementation is chosen per device inside spikingjelly. Building all
neurons here keeps that detail in one place.
"""

from __future__ import annotations

from spikingjelly.activation_based import neuron, surrogate

from suite.config import NeuronConfig


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
