"""Every policy's training forward under ``torch.compile``: the graph breaks it has (a documented list,
docs/throughput.md), and compiled training that agrees with eager training over a few steps.

Graph breaks are counted with ``torch._dynamo.explain`` (tracing only, no backend compile); the compiled-vs-eager
losses use the ``aot_eager`` backend (dynamo's graphs and AOT autograd's joint graph, run by eager kernels: what
compiling changes about the program, without inductor's minutes of code generation). ``tests/test_compile.py``
checks the inductor backend itself on one configuration."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional

from suite.config import expand, parse_study
from suite.train.loop import make_model, task_loss

# name -> (variant body, documented graph breaks of the training forward: none today; docs/throughput.md lists what
# broke graphs before and how it was removed). Policies share models so that every policy, both halting orders and
# modes, both backbones and all three stems are traced in a few cases (CI time).
CASES: dict[str, tuple[str, int]] = {
    "dense": ("{}", 0),
    "sdt_once": ("{model: {backbone: sdt, stem: once}}", 0),
    "halting_merge_integrate": ("{model: {stem: integrate}, tokens: {halting: {}, merge: {r: 2}}}", 0),
    "halting_time_major_sdt": ("{model: {backbone: sdt}, tokens: {halting: {order: time_major}}}", 0),
    "halting_1d": ("{tokens: {halting: {mode: 1d}}}", 0),
    "drop_time_mask": ("{tokens: {drop: {keep_ratio: 0.5}}, time: {mask: {granularity: layer}}}", 0),
    "select_exit_tet": ("{tokens: {select: {keep_ratio: 0.5}}, time: {exit: {}}, train: {loss: tet}}", 0),
}
EQUAL_CASES = ("dense", "halting_merge_integrate", "select_exit_tet")  # compiled == eager (aot_eager) on these
LOSS_RTOL = 1e-4  # compiled (aot_eager) vs eager training loss, every step of STEPS
STEPS = 2

STUDY = """
name: g
dataset: {name: synthetic, synthetic: {train_size: 16, test_size: 8, image_size: 8}}
model: {depth: 2, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 8, warmup_epochs: 0}
variants: {v: VARIANT}
"""


def _setup(body: str, seed: int = 0):
    run = expand(parse_study(STUDY.replace("VARIANT", body)))[0].config
    from suite.data import load_data

    data = load_data(run.dataset)
    torch.manual_seed(seed)
    model = make_model(run, data)
    model.train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, data.in_channels, *data.image_size, generator=g)
    y = torch.randint(0, data.num_classes, (8,), generator=g)
    return run, model, x, y


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_forward_graph_breaks(name: str):
    body, expected = CASES[name]
    _, model, x, _ = _setup(body)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    functional.reset_net(model)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == expected, (name, reasons)
    assert explanation.graph_count == expected + 1


def _losses(body: str, compiled: bool) -> list[float]:
    run, model, x, y = _setup(body)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step_model = torch.compile(model, backend="aot_eager", dynamic=False) if compiled else model
    torch.manual_seed(2)  # drop masks, Gumbel noise: the same draws in both modes
    out_losses = []
    for _ in range(STEPS):
        out = step_model(x)
        loss = task_loss(run, out, y) + sum(out.aux.values(), torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(model)
        out_losses.append(float(loss.detach()))
    return out_losses


@pytest.mark.parametrize("name", EQUAL_CASES)
def test_compiled_training_matches_eager(name: str):
    torch._dynamo.reset()
    eager, comp = _losses(CASES[name][0], False), _losses(CASES[name][0], True)
    assert comp == pytest.approx(eager, rel=LOSS_RTOL), (name, eager, comp)
    assert len(comp) == STEPS and all(map(torch.isfinite, torch.tensor(comp)))
