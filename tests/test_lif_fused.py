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


def test_compiled_kernel_equals_spikingjelly_bit_for_bit():
    """Inside ``compiled_kernels(True)`` the LIF runs as an inductor kernel: the same spikes and potentials, for a
    second shape and threshold too (one kernel each), and nothing is compiled outside the block."""
    from suite.models import lif_fused

    g = torch.Generator().manual_seed(3)
    for shape, threshold in (((4, 3, 7, 16), 1.0), ((2, 5, 9), 0.5)):
        kw = dict(tau=2.0, v_threshold=threshold, v_reset=0.0, step_mode="m", detach_reset=True)
        ref, ours = neuron.LIFNode(**kw), LIFNode(**kw)
        x = torch.randn(*shape, generator=g) * 1.5 + 0.5
        with torch.no_grad(), lif_fused.compiled_kernels(True):
            s_ours = ours(x)
        assert lif_fused._kernel["fn"] is not None and not lif_fused._kernel["failed"]
        with torch.no_grad():
            s_ref = ref(x)
        assert torch.equal(s_ref, s_ours) and torch.equal(ref.v, ours.v) and 0 < float(s_ours.mean()) < 1
    assert lif_fused._kernel["enabled"] is False


def test_kernel_that_cannot_compile_runs_eagerly_with_a_warning(monkeypatch, caplog):
    from suite.models import lif_fused

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setitem(lif_fused._kernel, "fn", broken)
    monkeypatch.setitem(lif_fused._kernel, "failed", False)
    kw = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, step_mode="m", detach_reset=True)
    ref, ours = neuron.LIFNode(**kw), LIFNode(**kw)
    x = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad(), lif_fused.compiled_kernels(True), caplog.at_level("WARNING", logger="spikesuite"):
        s_ours = ours(x)
    assert torch.equal(ref(x).detach(), s_ours) and lif_fused._kernel["failed"]
    assert "not compiled (RuntimeError: no C++ compiler)" in caplog.text


@pytest.mark.parametrize("setting,images,compiled", [("auto", 1999, False), ("auto", 2000, True), ("on", 8, True),
                                                     ("off", 10**6, False)])
def test_eval_kernels_follow_train_compile(setting, images, compiled):
    from suite.train.compiled import eval_kernels

    assert eval_kernels(setting, images, torch.device("cpu")) is compiled
    assert eval_kernels(setting, images, torch.device("meta")) is False  # the fast LIF is the CPU's only


def test_evaluation_with_compiled_kernels_records_the_same_numbers():
    """A whole counted evaluation with compiled LIF kernels equals the eager one, metric for metric."""
    from suite.evaluate import evaluate

    run = expand(parse_study("""
name: l
dataset: {name: synthetic, synthetic: {train_size: 8, test_size: 24}}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {eval_batch_size: 8}
variants: {v: {tokens: {halting: {}}}}
"""))[0].config
    data = load_data(run.dataset)
    model = make_model(run, data)
    eager = evaluate(model, run, data, torch.device("cpu"), maps=False, kernels=False)
    fast = evaluate(model, run, data, torch.device("cpu"), maps=False, kernels=True)
    assert eager.metrics == fast.metrics and eager.details["lif_kernels"] == "eager"
    assert fast.details["lif_kernels"] == "compiled"
    assert {k: v for k, v in eager.details.items() if k != "lif_kernels"} == \
        {k: v for k, v in fast.details.items() if k != "lif_kernels"}
