"""Energy conventions (suite/energy.py, docs/counting.md): every convention on a toy model worked out by hand, the
memory model on one conv and one linear layer by hand, policy overheads on both backbones, counting in fp32 under a
caller's autocast, agreement with NeuroBench 2.3 (SynapticOperations, ActivationSparsity), bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import BACKBONES, forward, images
from spikingjelly.activation_based import functional, neuron
from study_texts import BASE  # a one-variant-pair study without energy settings
from torch import nn

from suite.config import (
    CONVENTIONS,
    EnergyConfig,
    MemoryConfig,
    ModelConfig,
    TimeConfig,
    TokenConfig,
    parse_study,
)
from suite.config.energy import energy_column
from suite.data import DataBundle, TensorImageDataset
from suite.energy import Counts, convention_metrics, convention_uj, lemaire_layer_pj, neurobench_metrics
from suite.evaluate import evaluate, static_metrics
from suite.models import build_model
from suite.models.context import Context
from suite.models.layers import count_conv3x3
from suite.records_migrate import NONBINARY_BY_STRUCTURE, TOKEN_WISE, nonbinary_layer

COSTS = EnergyConfig()  # E_MAC 4.6 pJ, E_AC 0.9 pJ, 32-bit words, E_ram = 1.09e-5 x bits x values + 13.2 pJ


def ram(values: float, bits: int) -> float:
    """Lemaire et al.'s SRAM access, written out here so the test does not use the code it checks."""
    return 1.09e-5 * values * bits + 13.2


# ------------------------------------------------------------------------------------- a toy model by hand
# Two images, T = 4, per_step stem. Per layer, sums over the two images:
#   stem.0  analog 3x3 conv: 800 MACs (100 per image and step)
#   block0.q  linear on a non-binary stream: 300 exact SOPs (all non-binary), 360 paper SOPs
#   block0.qk Q K^T on spikes: 60 exact SOPs, 80 paper SOPs
#   head   40 MACs
# policy: 50 MACs and 70 ACs in block 0; 30 LIF element-steps per image.
TOY_OPS = {
    "stem.0": {"kind": "stem", "block": -1, "macs": 800.0, "sops_exact": 0.0, "sops_paper": 0.0,
               "sops_nonbinary": 0.0, "dense_flops": 800.0},
    "block0.q": {"kind": "attention", "block": 0, "macs": 0.0, "sops_exact": 300.0, "sops_paper": 360.0,
                 "sops_nonbinary": 300.0, "dense_flops": 1000.0},
    "block0.qk": {"kind": "attention", "block": 0, "macs": 0.0, "sops_exact": 60.0, "sops_paper": 80.0,
                  "sops_nonbinary": 0.0, "dense_flops": 100.0},
    "head": {"kind": "head", "block": -1, "macs": 40.0, "sops_exact": 0.0, "sops_paper": 0.0,
             "sops_nonbinary": 0.0, "dense_flops": 40.0},
}
TOY_POLICY = {"policy.halting.block0": {"kind": "policy", "block": 0, "macs": 50.0, "sops_exact": 70.0}}
TOY = Counts(TOY_OPS, n_images=2, T=4, policy_ops=TOY_POLICY, neuron_updates=30.0)


@pytest.mark.parametrize("name, pj_per_image", [
    # (4.6 (800 + 40) + 0.9 (300 + 60)) / 2 = (3864 + 324) / 2
    ("exact", 2094.0),
    # (3864 + 0.9 (360 + 80)) / 2 = (3864 + 396) / 2
    ("paper", 2130.0),
    # the first conv once: 800 / 4 steps = 200 MACs: (4.6 (200 + 40) + 324) / 2
    ("first_conv_once", (4.6 * 240 + 324) / 2),
    # q's 300 SOPs become MACs: (4.6 (800 + 40 + 300) + 0.9 x 60) / 2
    ("nonbinary_mac", (4.6 * 1140 + 54) / 2),
    # exact + (4.6 x 50 + 0.9 x 70) / 2
    ("policy_overhead", 2094.0 + (230 + 63) / 2),
    # exact + (4.6 + 0.9) x 30 per image
    ("neuron_updates", 2094.0 + 5.5 * 30),
    # every compute switch that charges more
    ("strict", (4.6 * 1140 + 54) / 2 + (230 + 63) / 2 + 5.5 * 30),
])
def test_every_compute_convention_on_a_toy_model_by_hand(name: str, pj_per_image: float) -> None:
    assert convention_uj(name, TOY, COSTS) == pytest.approx(pj_per_image * 1e-6, rel=1e-12)


def test_the_registry_is_computed_side_by_side_and_lemaire_needs_its_inputs() -> None:
    out = convention_metrics(TOY, COSTS)
    assert list(out) == [energy_column(c) for c in CONVENTIONS]
    assert math.isnan(out["energy_lemaire2022_uj"])  # the toy has no layer sizes: not computable, not zero
    old = Counts(TOY_OPS, 2, 4)  # a record counted before policy and neuron counts
    assert math.isnan(convention_uj("policy_overhead", old, COSTS)) and math.isnan(convention_uj("strict", old, COSTS))
    assert convention_uj("exact", old, COSTS) == pytest.approx(2094e-6)


def test_an_early_exit_scales_per_step_layers_and_the_first_conv_once_is_not_scaled() -> None:
    exits = Counts(TOY_OPS, 2, 4, exit_share=0.5)
    # stem.0 and q and qk run every step (x 0.5), the head once: (4.6 (400 + 40) + 0.9 x 180) / 2
    assert convention_uj("exact", exits, COSTS) == pytest.approx((4.6 * 440 + 162) / 2 * 1e-6)
    # the first conv once: 200 MACs whatever the exit
    assert convention_uj("first_conv_once", exits, COSTS) == pytest.approx((4.6 * 240 + 162) / 2 * 1e-6)
    # a stem that already runs once, or event data, is not divided again
    for counts in (Counts(TOY_OPS, 2, 4, stem="once"), Counts(TOY_OPS, 2, 4, static_input=False)):
        assert convention_uj("first_conv_once", counts, COSTS) == convention_uj("exact", counts, COSTS)


# --------------------------------------------------------------------------- the memory model by hand


def test_lemaire_on_one_spiking_conv_by_hand() -> None:
    """A 3x3 conv 2 -> 3 channels on a 4x4 map, T = 2, one image: 5 input spikes, 7 output spikes of its LIF."""
    x = torch.zeros(2, 1, 2, 4, 4)
    for t, c, h, w in [(0, 0, 0, 0), (0, 1, 2, 2), (1, 0, 1, 3), (1, 1, 3, 3), (1, 0, 2, 1)]:
        x[t, 0, c, h, w] = 1.0
    ctx = Context(T=2, count=True)
    count_conv3x3(ctx, "stem.1", x, 3, None, analog=False)
    rec = vars(ctx.ops["stem.1"])
    # covers: (0,0) corner 4, (2,2) inside 9, (1,3) edge 6, (3,3) corner 4, (2,1) inside 9 -> 32 windows x 3
    assert (rec["inputs_nz"], rec["sops_exact"], rec["synops"], rec["sops_nonbinary"], rec["synops_nonbinary"]) \
        == (5, 96, 96, 0, 0)
    assert (rec["outputs"], rec["weights"], rec["biases"], rec["fan_out"]) == (2 * 3 * 16, 54, 3, 27)
    assert (rec["in_size"], rec["out_size"]) == (32, 48)
    rec.update(out_spikes=7.0, out_elements=96.0)  # what its LIF would write (Context._fired_after)
    weight_reads = 5 * 27  # Lemaire: theta_in x Cout x Hk x Wk (no border correction)
    expected = (0.9 * (weight_reads + 96 + 7)  # accumulates: weights, biases, resets
                + 5 * ram(32, 1)  # input spikes
                + weight_reads * ram(54, 32)  # weights
                + 96 * ram(3, 32)  # biases
                + 2 * (weight_reads + 96) * ram(48, 32)  # potentials, read and written
                + 7 * ram(48, 1))  # output spikes
    assert lemaire_layer_pj(rec, COSTS) == pytest.approx(expected, rel=1e-12)


def test_lemaire_on_one_linear_with_real_input_by_hand() -> None:
    """The head: Linear 4 -> 2 on one image's rates (non-spike: one MAC, one input and one weight read per MAC)."""
    rec = {"kind": "head", "block": -1, "macs": 8.0, "sops_exact": 0.0, "sops_nonbinary": 0.0, "inputs_nz": 4.0,
           "outputs": 2.0, "out_spikes": 0.0, "out_elements": 0.0, "weights": 8.0, "biases": 2.0, "fan_out": 2.0,
           "in_size": 4.0, "out_size": 2.0}
    expected = 4.6 * 8 + 8 * (ram(4, 32) + ram(8, 32)) + 2 * ram(2, 32) + 2 * ram(2, 32)  # + bias reads, writes
    assert lemaire_layer_pj(rec, COSTS) == pytest.approx(expected, rel=1e-12)
    narrow = EnergyConfig(memory=MemoryConfig(weight_bits=8, activation_bits=8))  # widths are keys
    assert lemaire_layer_pj(rec, narrow) == pytest.approx(
        4.6 * 8 + 8 * (ram(4, 8) + ram(8, 8)) + 2 * ram(2, 8) + 2 * ram(2, 8), rel=1e-12)


# ------------------------------------------------------------------ real forwards on both backbones

TINY = dict(depth=2, dim=16, heads=2, T=3)
# QKFormer at the same width: stages 4 / 8 / 16 wide, one block each, 8x8 -> 4x4 -> 2x2 tokens
SHAPE = {"qkformer": {"depth": 3, "patch_embed": "cifar"}}
ALL_BACKBONES = (*BACKBONES, "qkformer")  # the conventions and NeuroBench's counters do not depend on the structure


def _model(backbone: str, tokens: TokenConfig = TokenConfig(), time: TimeConfig = TimeConfig(), **model):
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone=backbone, **{**TINY, **SHAPE.get(backbone, {}), **model}), tokens, time,
                      in_channels=1,
                      image_size=(8, 8), num_classes=5)
    with torch.no_grad():  # BN as 2 y + 1: random weights fire
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                mod.weight.fill_(2.0)
                mod.bias.fill_(1.0)
    return net.eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_policy_overheads_on_both_backbones(backbone: str) -> None:
    x = images(4)
    B, N, C, T = 4, 16, 16, 3
    # 2-D halting: block l scores every token it processes, at every step, but the last unit (the last block's last
    # step), whose score is 1 by rule; a channel score is gamma * z_c - beta and its sigmoid (2 MACs), then the
    # cumulative sum and the threshold test (2 ACs)
    net = _model(backbone, TokenConfig(halting={"beta": 8.0}))
    with torch.no_grad():
        out = forward(net, x, count=True)
    pol = out.ctx.policy_ops
    assert float(out.active_tokens[:, 0].sum()) > 0  # the first unit always runs
    for block in range(2):
        active = out.active_tokens[:, block]  # [B, T]: tokens processed at each step
        scored = float((active[:, :-1] if block == 1 else active).sum())
        assert pol[f"policy.halting.block{block}"].macs == 2 * scored
        assert pol[f"policy.halting.block{block}"].sops_exact == 2 * scored
    assert all(name not in out.ctx.ops for name in pol)  # never mixed with the synaptic layers
    # merging r = 2 tokens per image after block 0, over all steps: 8 A and 8 B tokens per image
    for mode, similarity in (("random", 0), ("similarity", 2 * C * N + C * 8 * 8)):
        net = _model(backbone, TokenConfig(merge={"r": 2, "mode": mode}))
        with torch.no_grad():
            merged = forward(net, x, count=True).ctx.policy_ops["policy.merge.block0"]
        # norms and A x B similarities (none for random scores) + 2 sources averaged, 2 C MACs each
        assert merged.macs == B * (similarity + 2 * C * 2)
        # one comparison per A x B pair + the time mean of the metric (C per token and step)
        assert merged.sops_exact == B * (8 * 8 + C * N * T)
    # the learned selector's MLP on every token of every image, once
    net = _model(backbone, TokenConfig(select={"keep_ratio": 0.5}))
    with torch.no_grad():
        sel = forward(net, x, count=True).ctx.policy_ops["policy.selector"]
    h = max(1, int(C * 0.25))
    assert (sel.macs, sel.sops_exact) == (B * N * (2 * C * h + h + 2 * h), B * N * (C * T + C + 1))
    # a time mask's gates: one test per group and step, per image
    net = _model(backbone, time=TimeConfig(mask={"granularity": "block"}))
    with torch.no_grad():
        gates = forward(net, x, count=True).ctx.policy_ops["policy.time_gates"]
    assert gates.sops_exact == len(net.time_policy.groups) * T * B and gates.macs == 0


def _data() -> DataBundle:
    ds = TensorImageDataset(images(12, seed=3), torch.arange(12) % 5)
    return DataBundle(ds, None, ds, num_classes=5, in_channels=1, image_size=(8, 8), name="synthetic")


def _run(**sections):
    study = parse_study(yaml.safe_dump({
        "name": "e", "dataset": {"name": "synthetic"}, "model": {**TINY, **sections.pop("model", {})},
        "train": {"epochs": 1, "eval_batch_size": 5}, "eval": {"heatmap_images": 0},
        "variants": {"v": sections}, "tracking": {"enabled": False}}))
    from suite.config import expand

    return expand(study)[0].config


@pytest.mark.parametrize("backbone", BACKBONES)
def test_early_exit_confidence_is_counted_per_evaluated_step(backbone: str) -> None:
    cfg = _run(model={"backbone": backbone}, time={"exit": {"threshold": 0.3}})
    net = _model(backbone, time=cfg.time)
    res = evaluate(net, cfg, _data(), torch.device("cpu"), maps=False)
    steps = res.metrics["exit_step_mean"] * 12
    rec = res.details["policy_ops"]["policy.exit_test"]
    C = net.head.in_features
    assert rec["macs"] == pytest.approx(steps * C * 5 + steps * 5) and rec["sops_exact"] == pytest.approx(steps * 10)
    assert res.metrics["energy_policy_overhead_uj"] > res.metrics["energy_exact_uj"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_counting_runs_in_fp32_inside_a_callers_autocast(backbone: str) -> None:
    """The counted forward disables autocast: under bf16 autocast every count equals the fp32 one."""
    cfg = _run(model={"backbone": backbone})
    data = _data()
    fp32 = evaluate(_model(backbone), cfg, data, torch.device("cpu"), maps=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = evaluate(_model(backbone), cfg, data, torch.device("cpu"), maps=False)
    assert bf16.details["ops"] == fp32.details["ops"]
    assert bf16.details["firing_rates"] == fp32.details["firing_rates"]
    for name in CONVENTIONS:
        assert bf16.metrics[energy_column(name)] == fp32.metrics[energy_column(name)]
    # and bf16 changes them: the same forward counted under autocast without the guard spikes differently
    net, x = _model(backbone), images(12, seed=3)
    with torch.no_grad():
        exact = {k: r.sops_exact for k, r in forward(net, x, count=True).ctx.ops.items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lossy = {k: r.sops_exact for k, r in forward(net, x, count=True).ctx.ops.items()}
    assert lossy != exact


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_every_convention_is_recorded_per_run_with_neurobench_names(backbone: str) -> None:
    cfg = _run(model={"backbone": backbone, **SHAPE.get(backbone, {})})
    res = evaluate(_model(backbone), cfg, _data(), torch.device("cpu"), maps=False)
    m = res.metrics
    for name in CONVENTIONS:
        assert math.isfinite(m[energy_column(name)]) and m[energy_column(name)] > 0
    counts = Counts(res.details["ops"], m["eval_images"], 3, policy_ops=res.details["policy_ops"],
                    neuron_updates=res.details["neuron_updates"])
    for name in ("exact", "paper"):  # the registry gives the two columns energy_metrics always gave
        assert convention_uj(name, counts, COSTS) == pytest.approx(m[energy_column(name)], rel=1e-12)
    assert m["energy_lemaire2022_uj"] > m["energy_nonbinary_mac_uj"]  # memory accesses cost more than compute
    assert m["energy_first_conv_once_uj"] < m["energy_exact_uj"]  # static images: the first conv once
    for key in ("Effective_ACs", "Effective_MACs", "ActivationSparsity", "Footprint", "ConnectionSparsity"):
        assert key in m
    assert m["neuron_updates"] > 0


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("stem", ["per_step", "integrate"])
def test_the_migration_table_of_non_binary_layers_matches_what_a_forward_measures(backbone: str, stem: str) -> None:
    net = _model(backbone, stem=stem)
    with torch.no_grad():
        ops = forward(net, images(4), count=True).ctx.ops
    cfg = ModelConfig(backbone=backbone, stem=stem, **TINY)
    measured = {name for name, rec in ops.items() if rec.macs == 0 and rec.sops_nonbinary > 0}
    rule = {name for name, rec in ops.items() if nonbinary_layer(name, cfg, vars(rec))}
    # the stored-count rule gives every token-wise linear exactly; a product it calls non-binary by structure may
    # not have met a non-spike value in a tiny untrained model, but one it calls binary never does
    assert measured <= rule, (measured - rule, NONBINARY_BY_STRUCTURE[backbone])
    linears = {n for n in ops if n.startswith("block") and n.split(".", 1)[1] in TOKEN_WISE}
    assert measured & linears == rule & linears
    if backbone == "spikformer" or stem == "integrate":
        assert measured, "no non-binary input measured where the structure has them"


# --------------------------------------------------------------------------------- NeuroBench 2.3


class _Logits(nn.Module):
    """NeuroBench calls ``net(batch)``: the backbone's logits, from resting neurons."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(self.net)
        return self.net(x).logits


@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_neurobench_synaptic_operations_and_activation_sparsity_agree(backbone: str) -> None:
    import neurobench as nb  # the test extra of pyproject.toml: a missing package fails, never skips
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.utils.layers import single_layer_MACs
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    assert nb is not None
    net = _model(backbone)
    x = images(4)
    with torch.no_grad():
        ours = forward(net, x, count=True).ctx
    model = TorchModel(_Logits(net))
    model.add_activation_module(neuron.LIFNode)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(4)), batch_size=4)
    bench = Benchmark(model, loader, [], [], [[Footprint, ConnectionSparsity], [SynapticOperations, ActivationSparsity]])
    # keep each hooked layer's inputs to compare layer by layer (the metric clears them after the batch)
    seen: dict[int, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.setdefault(id(mod), []).append(inp[0].detach()))
             for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    res = bench.run(quiet=True)
    for h in hooks:
        h.remove()
    # our layer name of each hooked module (a layer's conv or fc, the head)
    names = {id(getattr(m, "conv", None) or getattr(m, "fc", None)): m.name for m in net.modules()
             if hasattr(m, "name") and isinstance(m.name, str) and (hasattr(m, "conv") or hasattr(m, "fc"))}
    names[id(net.head)] = "head"
    step_head = {True: 0.0, False: 0.0}  # the per-step head calls' operations, by NeuroBench's spiking rule
    for mod in net.modules():
        if id(mod) not in seen:
            continue
        name = names[id(mod)]
        calls = [single_layer_MACs(inp, mod) for inp in seen[id(mod)]]
        if name == "head":  # first call: our counted head; second: the per-step readout (step_logits), not counted
            (ops, spiking), (step_ops, step_spiking) = calls
            step_head[step_spiking] += step_ops
        else:
            assert len(calls) == 1, name
            ops, spiking = calls[0]
        rec = ours.ops[name]
        assert ops == rec.synops, name
        if ops:  # NeuroBench's rule on the input: only {-1, 0, 1} makes ACs (an all-zero input counts nothing)
            assert spiking == (rec.synops_nonbinary == 0), name
    # the official totals per sample: ours over the hooked layers, plus the per-step head NeuroBench also sees
    mine = neurobench_metrics({k: vars(v) for k, v in ours.ops.items()}, 4)
    syn = res["SynapticOperations"]
    assert syn["Effective_ACs"] == pytest.approx(mine["Effective_ACs"] + step_head[True] / 4, rel=1e-12)
    assert syn["Effective_MACs"] == pytest.approx(mine["Effective_MACs"] + step_head[False] / 4, rel=1e-12)
    # our totals differ from NeuroBench's by exactly what it does not hook: the attention products (BN, pooling and
    # elementwise ops are counted by neither); it also hooks the per-step head readout, which we do not count
    products = sum(r.sops_exact for r in ours.ops.values() if r.weights == 0)
    assert products > 0
    total_ours = sum(r.synops for r in ours.ops.values()) + products
    total_nb = syn["Effective_ACs"] + syn["Effective_MACs"]
    assert total_ours / 4 - total_nb == pytest.approx((products - sum(step_head.values())) / 4, rel=1e-9)
    spikes = sum(s for s, _ in ours.spikes.values())
    elements = sum(c for _, c in ours.spikes.values())
    assert res["ActivationSparsity"] == pytest.approx(1 - spikes / elements, rel=1e-12)
    static = static_metrics(net)
    assert (res["Footprint"], res["ConnectionSparsity"]) == (static["Footprint"], static["ConnectionSparsity"])


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("extra, key", [
    ("report: {energy_convention: joules}", "report.energy_convention"),
    ("eval: {energy: {weight_bits: 0}}", "eval.energy.weight_bits"),
    ("eval: {energy: {spike_bits: -1}}", "eval.energy.spike_bits"),
    ("eval: {energy: {e_ram_access_pj: 0}}", "eval.energy.e_ram_access_pj"),
    ("eval: {e_mac_pj: -4.6}", "eval.e_mac_pj"),
    ("eval: {energy: {e_ram_pj_per_bit: 0.0}}", "eval.energy.e_ram_pj_per_bit"),
])
def test_bad_energy_settings_exit_2_naming_the_key(tmp_path: Path, extra: str, key: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + extra + "\n")
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "suite", "plan", str(bad), "--results", str(results)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr, proc.stderr
    assert not results.exists()


def test_energy_settings_at_their_defaults_keep_run_ids() -> None:
    from suite.config import expand

    plain = expand(parse_study(BASE))[0].run_id
    spelled = expand(parse_study(BASE + "eval: {energy: {weight_bits: 32}}\nreport: {energy_convention: strict}\n"))
    assert spelled[0].run_id == plain  # report-time settings and defaults never enter a run id
    narrow = expand(parse_study(BASE + "eval: {energy: {weight_bits: 8}}\n"))
    assert narrow[0].run_id != plain  # a width changes what the run records


# ------------------------------------------------------------------------- recounting committed records

STRIPPED = ("sops_nonbinary", "synops", "synops_nonbinary", "inputs_nz", "outputs", "out_spikes", "out_elements",
            "weights", "biases", "fan_out", "in_size", "out_size")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", [
    {"tokens": {"halting": {"beta": 8.0}}},
    {"tokens": {"halting": {"beta": 8.0, "mode": "1d"}}},
    {"tokens": {"select": {"keep_ratio": 0.5}}},
    {"time": {"mask": {"granularity": "block"}}},
    {"time": {"exit": {"threshold": 0.3}}},
], ids=["act", "act_1d", "selector", "tmask", "exit"])
def test_a_record_counted_before_the_conventions_recounts_to_the_live_values(backbone: str, variant: dict) -> None:
    """Strip what an old record lacks, recount it: policy overhead and the non-binary split equal the live count."""
    from suite.records_migrate import Outcome, recount_energy

    cfg = _run(model={"backbone": backbone}, **variant)
    res = evaluate(_model(backbone, cfg.tokens, cfg.time), cfg, _data(), torch.device("cpu"), maps=False)
    details = {**res.details, "ops": {k: {f: v for f, v in rec.items() if f not in STRIPPED}
                                      for k, rec in res.details["ops"].items()}}
    del details["policy_ops"], details["neuron_updates"]
    keep = ("energy_exact_uj", "energy_paper_uj", "eval_images", "dense_token_units", "exit_step_mean")
    doc = {"metrics": {k: v for k, v in res.metrics.items() if k in keep}, "details": details}
    out = Outcome()
    assert recount_energy(doc, cfg, "old", out)
    live = {k: (r["macs"], r["sops_exact"]) for k, r in res.details["policy_ops"].items()}
    derived = {k: (r["macs"], r["sops_exact"]) for k, r in doc["details"]["policy_ops"].items()}
    assert derived.keys() == live.keys()
    for name in live:
        assert derived[name] == pytest.approx(live[name], rel=1e-9), name
    for name in ("first_conv_once", "nonbinary_mac", "policy_overhead"):
        col = energy_column(name)
        assert doc["metrics"][col] == pytest.approx(res.metrics[col], rel=1e-9), name
    assert any("energy_lemaire2022_uj" in column for column in out.rerun_columns)  # named, not guessed
    before = {k: v for k, v in doc["metrics"].items()}
    assert not recount_energy(doc, cfg, "old", Outcome()) and doc["metrics"] == before  # idempotent
