"""The no-gradient LIF forward (``suite.models.lif_fused``) equals spikingjelly 2.0's ``LIFNode`` bit for bit, and
falls back to it wherever a gradient may be needed."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from suite.config import expand, parse_study
from suite.data import load_data
from suite.models.lif_fused import LIFNode
from suite.train import make_model


@pytest.mark.parametrize("threshold,tau,detach", [(1.0, 2.0, True), (0.5, 2.0, True), (1.0, 3.0, False)])
def test_inference_lif_equals_spikingjelly_bit_for_bit(threshold: float, tau: float, detach: bool):
    kw = dict(tau=tau, v_threshold=threshold, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=4.0),
              detach_reset=detach, step_mode="m")
    ref, ours = neuron.LIFNode(**kw), LIFNode(**kw)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # two calls: the second starts from the first's final potential
        x = torch.randn(4, 3, 7, 16, generator=g) * 1.5 + 0.5
        with torch.no_grad():
            s_ref, s_ours = ref(x), ours(x)
        assert torch.equal(s_ref, s_ours) and s_ref.dtype == s_ours.dtype
        assert torch.equal(ref.v, ours.v)
        assert 0 < float(s_ours.mean()) < 1  # some spikes, not all


def test_with_gradients_it_is_spikingjelly_forward():
    kw = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, step_mode="m", detach_reset=True)
    ref, ours = neuron.LIFNode(**kw), LIFNode(**kw)
    x = torch.randn(4, 2, 5) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xa).sum().backward()
    ours(xb).sum().backward()
    assert torch.equal(xa.grad, xb.grad) and xb.grad.abs().sum() > 0


def test_counted_model_forward_unchanged():
    """A counted evaluation forward with the suite's LIF gives the logits and counts of spikingjelly's own LIF."""
    run = expand(parse_study("""
name: l
dataset: {name: synthetic, synthetic: {train_size: 8, test_size: 8}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
variants: {v: {tokens: {halting: {}}}}
"""))[0].config
    data = load_data(run.dataset)
    model = make_model(run, data).eval()
    x = torch.stack([data.test[i][0] for i in range(8)])
    with torch.no_grad():
        ours = model(x, count=True)
        functional.reset_net(model)
        for m in model.modules():  # the same modules through spikingjelly's forward
            if isinstance(m, LIFNode):
                m.multi_step_forward = neuron.LIFNode.multi_step_forward.__get__(m)
        ref = model(x, count=True)
    assert torch.equal(ours.logits, ref.logits)
    assert {k: vars(v) for k, v in ours.ctx.ops.items()} == {k: vars(v) for k, v in ref.ctx.ops.items()}
