"""Operation counting, energy and firing-rate metrics (suite/metrics.py, the counting code of
suite/models/context.py and suite/models/backbones/spikformer.py), with a cross-check against spikingjelly 2.0's
``op_counter``. Conventions: docs/counting.md."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest
import torch
from helpers import lif_gates, lif_layer_names
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import (
    ACCounter,
    DispatchCounterMode,
    MACCounter,
    SimpleEnergyCostConfig,
    SynOpCounter,
    estimate_simple_energy,
    is_binary_tensor,
)
from torch import Tensor, nn

from suite.config import (
    DropConfig,
    EnergyConfig,
    ModelConfig,
    NeuronConfig,
    TimeConfig,
    TimeMaskConfig,
    TokenConfig,
)
from suite.metrics import (
    BREAKDOWN_COLUMNS,
    breakdown_frame,
    energy_metrics,
    firing_rates,
    merge_counts,
    merge_spikes,
    ops_weighted_steps,
)
from suite.models import Spikformer, build_model
from suite.models.backbones.spikformer import Block
from suite.models.context import Context, LayerCounts
from suite.models.layers import ConvBNLIF, LinearBNLIF, count_conv3x3
from suite.names import ENERGY_KINDS as KINDS

BMM = torch.ops.aten.bmm.default
LINEARS = ("q", "k", "v", "proj", "mlp1", "mlp2")
COUNT_FIELDS = ("macs", "sops_exact", "sops_paper", "dense_flops")


# ------------------------------------------------------------------------------------------------ helpers


def _tiny(tokens: TokenConfig | None = None, time: TimeConfig | None = None, *, depth: int = 1,
          T: int = 2) -> Spikformer:
    """A tiny Spikformer (dim 16, 2 heads, 8x8 input -> 4x4 = 16 tokens) in eval mode, with every BN
    set to ``2 y + 1`` so that random weights fire (a silent network counts nothing)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=depth, dim=16, heads=2, T=T), tokens or TokenConfig(),
                        time or TimeConfig(), in_channels=3, image_size=(8, 8), num_classes=5).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                mod.weight.fill_(2.0)
                mod.bias.fill_(1.0)
    return model


def _images(n: int, seed: int = 1) -> Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _run(model: Spikformer, x: Tensor, **kw):
    functional.reset_net(model)
    out = model(x, count=True, **kw)
    functional.reset_net(model)
    return out


@torch.no_grad()
def _stem_output(model: Spikformer, x: Tensor) -> Tensor:
    """The residual stream entering block 0, [T, B, N, C] (the input of q, k and v)."""
    functional.reset_net(model)
    z = model.stem(x.unsqueeze(0).repeat(model.T, 1, 1, 1, 1), Context(T=model.T))
    functional.reset_net(model)
    return z


def _heads(t: Tensor, h: int) -> Tensor:
    """[T, B, N, C] -> [T, B, h, N, C/h], as in ``Block.forward``."""
    T, B, N, C = t.shape
    return t.view(T, B, N, h, C // h).transpose(2, 3)


def _spikes(*shape: int, p: float, seed: int) -> Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def _counts(rec: LayerCounts) -> tuple[float, ...]:
    return tuple(getattr(rec, f) for f in COUNT_FIELDS)


# Hand-made spikes for one step of one image: N = 3 tokens, C = 8 channels, 2 heads (channels 0-3, 4-7).
Q_HAND = [[0, 4], [0, 1], [5]]  # spiking channels per token
K_HAND = [[0], [0, 5], [4]]
V_HAND = [[0, 1, 4], [7], [2, 6]]


def _from_channels(rows: list[list[int]], C: int = 8) -> Tensor:
    out = torch.zeros(len(rows), C)
    for i, chans in enumerate(rows):
        out[i, chans] = 1.0
    return out


def _hand_qkv() -> tuple[Tensor, Tensor, Tensor]:
    """[1, 1, 3, 8] q, k, v. Column sums: q ch0 2, ch1 1, ch4 1, ch5 1; k ch0 2, ch4 1, ch5 1.
    Head 0 coincidences S0 = [[1,1,0],[1,1,0],[0,0,0]], head 1 S1 = [[0,0,1],[0,0,0],[0,1,0]]."""
    return tuple(_from_channels(r)[None, None] for r in (Q_HAND, K_HAND, V_HAND))


# ------------------------------------------------------------------------- 1. hand counts, every field


def test_linear_counts_by_hand() -> None:
    layer = LinearBNLIF(4, 3, NeuronConfig(), "l", "mlp", 0, bias=False).eval()
    x = torch.tensor([[[[1, 0, 2, 0], [0, 0, 0, 0], [1, 1, 0, 0]]],
                      [[[0, 2, 0, 0], [1, 0, 0, 1], [0, 0, 0, 1]]]], dtype=torch.float32)  # [T=2, B=1, N=3, 4]
    # Unmasked: nnz = 2+0+2 + 1+2+1 = 8, sum = 3+0+2 + 2+2+1 = 10, 6 tokens.
    ctx = Context(T=2, count=True)
    with torch.no_grad():
        layer(x, ctx, None)
    counted = asdict(ctx.ops["l"])
    # the LIF after the layer fired its spikes under its name (Lemaire's output writes): read off its own record
    assert counted.pop("out_spikes") == ctx.spikes["l"][0]
    # x holds 2s (non-binary): every SOP is a MAC under nonbinary_mac; 8 non-zero inputs, 6 tokens x 3 outputs
    assert counted == dict(kind="mlp", block=0, macs=0.0, sops_exact=8 * 3, sops_paper=10 * 3, dense_flops=6 * 4 * 3,
                           sops_nonbinary=8 * 3, synops=8 * 3, synops_nonbinary=8 * 3, inputs_nz=8, outputs=6 * 3, out_elements=6 * 3,
                           weights=4 * 3, biases=3, fan_out=3, in_size=3 * 4, out_size=3 * 3)
    assert ctx.spikes["l"][1] == 6 * 3
    # Token 1 inactive, step 1 masked: only tokens 0 and 2 at step 0: nnz 2+2 = 4, sum 3+2 = 5.
    functional.reset_net(layer)
    active = torch.tensor([[[1.0, 0.0, 1.0]], [[1.0, 0.0, 1.0]]])
    ctx = Context(T=2, time_masks={"l": torch.tensor([1.0, 0.0])}, count=True)
    with torch.no_grad():
        out = layer(x, ctx, active)
    assert _counts(ctx.ops["l"]) == (0.0, 4 * 3, 5 * 3, 2 * 4 * 3)
    assert ctx.spikes["l"][1] == 2 * 3  # firing counted over the 2 processed tokens x 3 neurons
    assert not out[1].any() and not out[:, :, 1].any()  # masked step and inactive token are silent


def test_attention_counts_by_hand() -> None:
    blk = Block(ModelConfig(depth=1, dim=8, heads=2), 0)
    q, k, v = _hand_qkv()

    def count(q: Tensor, k: Tensor, v: Tensor, active: Tensor | None, mask: Tensor | None) -> tuple:
        ctx = Context(T=q.shape[0], count=True, time_masks=None if mask is None else {"block0.attn": mask})
        attn = _heads(q, 2) @ _heads(k, 2).transpose(-1, -2) * blk.scale
        blk._count_attention(ctx, q, k, _heads(v, 2), attn, active)
        return _counts(ctx.ops["block0.qk"]), _counts(ctx.ops["block0.av"])

    # All 3 tokens: QK^T coincidences = sum_c colsum(q)_c colsum(k)_c = 2*2 + 1*1 + 1*1 = 6 (= 4 + 2 by head).
    # (QK^T)V: non-zero attention entries per key column x non-zero V entries of that key, per head:
    # head 0 cols [2,2,0] x V [2,0,1] = 4; head 1 cols [0,1,1] x V [1,1,1] = 2 -> 6.
    # paper: rate x N_a^2 C = nnz(Q) N_a = 5*3, nnz(V) N_a = 6*3; dense N_a^2 C = 9*8 each.
    assert count(q, k, v, None, None) == ((0.0, 6, 15, 72), (0.0, 6, 18, 72))
    # Token 2 inactive: its q, k, v rows are zero in the model. qk: 2*2 (ch0) = 4; av: head 0 cols
    # [2,2,0] x V [2,0,0] = 4, head 1 no entries; paper nnz(Q) 4 * 2, nnz(V) 4 * 2; dense 4*8.
    keep = torch.tensor([1.0, 1.0, 0.0])
    qa, ka, va = (t * keep[:, None] for t in (q, k, v))
    assert count(qa, ka, va, keep[None, None], None) == ((0.0, 4, 8, 32), (0.0, 4, 8, 32))
    # Two steps, attention LIF masked at step 0 (which holds the full, heavier data): only step 1 counts.
    two = [torch.cat([a, b]) for a, b in ((q, qa), (k, ka), (v, va))]
    active = torch.stack([torch.ones(3), keep])[:, None]
    assert count(*two, active, torch.tensor([0.0, 1.0])) == ((0.0, 4, 8, 32), (0.0, 4, 8, 32))


def _attention_reference(q: Tensor, k: Tensor, v: Tensor, heads: int, steps: Tensor,
                         active: Tensor) -> dict[str, float]:
    """Loop-by-loop reference for the attention counts, straight from the definitions."""
    T, B, N, C = q.shape
    d = C // heads
    r = dict.fromkeys(("qk_exact", "qk_paper", "av_exact", "av_paper", "dense"), 0.0)
    for t, b in itertools.product(range(T), range(B)):
        if not steps[t]:
            continue
        n_a = int(active[t, b].sum())
        r["dense"] += n_a**2 * C
        if n_a:
            r["qk_paper"] += float((q[t, b] != 0).sum()) / (n_a * C) * n_a**2 * C  # rate(Q) x dense
            r["av_paper"] += float((v[t, b] != 0).sum()) / (n_a * C) * n_a**2 * C  # rate(V) x dense
        for h, i, j in itertools.product(range(heads), range(N), range(N)):
            chans = range(h * d, (h + 1) * d)
            products = [float(q[t, b, i, c] * k[t, b, j, c]) for c in chans]
            r["qk_exact"] += sum(p != 0 for p in products)
            if sum(products) != 0:
                r["av_exact"] += sum(float(v[t, b, j, c]) != 0 for c in chans)
    return r


def test_attention_counts_match_loop_reference() -> None:
    T, B, N, C, h = 3, 2, 5, 8, 2
    blk = Block(ModelConfig(depth=1, dim=C, heads=h), 0)
    active = _spikes(T, B, N, p=0.6, seed=3)
    q, k, v = (_spikes(T, B, N, C, p=0.4, seed=s) * active[..., None] for s in (4, 5, 6))
    steps = torch.tensor([1.0, 0.0, 1.0])
    ctx = Context(T=T, time_masks={"block0.attn": steps}, count=True)
    attn = _heads(q, h) @ _heads(k, h).transpose(-1, -2) * blk.scale
    blk._count_attention(ctx, q, k, _heads(v, h), attn, active)
    ref = _attention_reference(q, k, v, h, steps, active)
    qk, av = ctx.ops["block0.qk"], ctx.ops["block0.av"]
    assert (qk.sops_exact, av.sops_exact) == (ref["qk_exact"], ref["av_exact"])
    assert (qk.sops_paper, av.sops_paper) == pytest.approx((ref["qk_paper"], ref["av_paper"]))
    assert qk.dense_flops == av.dense_flops == ref["dense"]
    assert ref["av_exact"] < ref["av_paper"] and ref["qk_exact"] < ref["qk_paper"]


def test_conv_counts_by_hand() -> None:
    neuron = NeuronConfig()
    # Analog first conv: MACs = H W Cin 9 Cout per active step per image (pooling comes after the conv).
    stem0 = ConvBNLIF(3, 4, pool=True, neuron=neuron, name="stem.0", analog=True).eval()
    ctx = Context(T=2, time_masks={"stem.0": torch.tensor([1.0, 0.0])}, count=True)
    with torch.no_grad():
        stem0(torch.rand(2, 2, 3, 4, 4), ctx)  # [T=2, B=2, 3, 4, 4], step 1 masked
    mac = 4 * 4 * 3 * 9 * 4 * 2 * 1
    assert _counts(ctx.ops["stem.0"]) == (mac, 0.0, 0.0, mac)
    # Spike conv on a 3x3 map: a corner spike feeds 4 windows, an edge spike 6, a centre spike 9.
    stem1 = ConvBNLIF(2, 3, pool=False, neuron=neuron, name="stem.1").eval()
    x = torch.zeros(1, 1, 2, 3, 3)
    x[0, 0, 0, 0, 0] = x[0, 0, 1, 0, 1] = x[0, 0, 0, 1, 1] = 1.0  # corner (ch0), edge (ch1), centre (ch0)
    exact, paper, dense = (4 + 6 + 9) * 3, 3 * 9 * 3, 3 * 3 * 2 * 9 * 3  # paper: rate x dense ignores borders
    ctx = Context(T=1, count=True)
    with torch.no_grad():
        stem1(x, ctx)
    assert _counts(ctx.ops["stem.1"]) == (0.0, exact, paper, dense)
    # Two steps, conv masked at step 0 (all ones there): only step 1 counts, and the paper rate is taken
    # over the active step (regression: it was diluted by the masked step, giving paper / 2).
    functional.reset_net(stem1)
    ctx = Context(T=2, time_masks={"stem.1": torch.tensor([0.0, 1.0])}, count=True)
    with torch.no_grad():
        stem1(torch.cat([torch.ones_like(x), x]), ctx)
    assert _counts(ctx.ops["stem.1"]) == (0.0, exact, paper, dense)


def test_energy_by_hand() -> None:
    ctx = Context(T=1, count=True)
    stem0 = ConvBNLIF(3, 4, pool=False, neuron=NeuronConfig(), name="stem.0", analog=True).eval()
    stem1 = ConvBNLIF(2, 3, pool=False, neuron=NeuronConfig(), name="stem.1").eval()
    x = torch.zeros(1, 2, 2, 3, 3)
    x[0, 0, 0, 0, 0] = x[0, 0, 1, 0, 1] = 1.0  # image 0: corner (ch0) and edge (ch1) spikes
    x[0, :, 0, 1, 1] = 1.0  # both images: a centre spike
    with torch.no_grad():
        stem0(torch.rand(1, 2, 3, 4, 4), ctx)
        stem1(x, ctx)
    macs, exact, paper = 4 * 4 * 3 * 9 * 4 * 2, (4 + 6 + 9 + 9) * 3, 4 * 9 * 3
    cfg = EnergyConfig()
    assert (cfg.e_mac_pj, cfg.e_ac_pj) == (4.6, 0.9)
    m = energy_metrics(ctx.ops, 2, cfg)
    assert (m["macs"], m["sops_exact"], m["sops_paper"]) == (macs / 2, exact / 2, paper / 2)
    assert m["energy_exact_uj"] == pytest.approx((4.6 * macs + 0.9 * exact) / 2 * 1e-6)
    assert m["energy_paper_uj"] == pytest.approx((4.6 * macs + 0.9 * paper) / 2 * 1e-6)
    # per kind, with a hand-made attention, mlp and head layer on top (sums over 2 images)
    ops = dict(ctx.ops)
    ops["block0.q"] = LayerCounts("attention", 0, sops_exact=100.0, sops_paper=140.0, dense_flops=800.0)
    ops["block0.mlp1"] = LayerCounts("mlp", 0, sops_exact=60.0, sops_paper=70.0, dense_flops=400.0)
    ops["head"] = LayerCounts("head", -1, macs=50.0, dense_flops=50.0)
    m = energy_metrics(ops, 2, EnergyConfig(e_mac_pj=2.0, e_ac_pj=0.5))
    assert m["sops_exact_attention"] == 50.0 and m["sops_paper_mlp"] == 35.0 and m["sops_exact_head"] == 0.0
    assert m["energy_exact_uj_attention"] == pytest.approx(0.5 * 100 / 2 * 1e-6)
    assert m["energy_paper_uj_mlp"] == pytest.approx(0.5 * 70 / 2 * 1e-6)
    assert m["energy_exact_uj_head"] == pytest.approx(2.0 * 50 / 2 * 1e-6)
    assert m["energy_exact_uj_stem"] == pytest.approx((2.0 * macs + 0.5 * exact) / 2 * 1e-6)
    assert m["energy_exact_uj"] == pytest.approx(sum(m[f"energy_exact_uj_{k}"] for k in KINDS))
    assert m["dense_flops"] == (macs + 3 * 3 * 2 * 9 * 3 * 2 + 800 + 400 + 50) / 2
    with pytest.raises(ValueError):
        energy_metrics(ops, 0, cfg)
    with pytest.raises(ValueError):
        energy_metrics({"x": LayerCounts("typo", 0)}, 1, cfg)


def test_counts_do_not_round_in_low_precision() -> None:
    """Counts are accumulated in float64: bf16 (autocast) rounds sums above 256, float32 above 2**24."""
    ctx = Context(T=1, count=True)
    ctx.synapse("bf16", kind="mlp", block=0, x=torch.ones(1, 1, 257, 1, dtype=torch.bfloat16), fan_out=2,
                active=None, group=None)
    ctx.fire("bf16", torch.ones(1, 1, 257, 1, dtype=torch.bfloat16), None)
    assert _counts(ctx.ops["bf16"]) == (0.0, 514, 514, 514)
    assert ctx.spikes["bf16"] == [257.0, 257.0]
    ctx.synapse("f32", kind="mlp", block=0, x=torch.ones(1, 1, 4097, 1), fan_out=4097, active=None,
                group=None)
    assert _counts(ctx.ops["f32"]) == (0.0, 4097**2, 4097**2, 4097**2)  # 16785409 is not a float32
    count_conv3x3(ctx, "stem.1", torch.ones(1, 1, 1, 17, 17, dtype=torch.bfloat16), 1, "stem.1", analog=False)
    assert ctx.ops["stem.1"].sops_exact == (3 * 17 - 2) ** 2  # sum of the 4/6/9 coverage = 49^2 = 2401


# ------------------------------------------------------------------------------ bookkeeping and metrics


def test_merge_counts_and_spikes_are_pure_and_additive() -> None:
    model = _tiny()
    x = _images(4)
    whole, a, b = _run(model, x), _run(model, x[:2]), _run(model, x[2:])
    a_ops = {k: asdict(v) for k, v in a.ctx.ops.items()}
    a_spikes = {k: list(v) for k, v in a.ctx.spikes.items()}
    merged = merge_counts(a.ctx.ops, b.ctx.ops)
    assert {k: asdict(v) for k, v in a.ctx.ops.items()} == a_ops  # inputs untouched
    assert list(merged) == list(whole.ctx.ops)
    for name, rec in whole.ctx.ops.items():
        assert (merged[name].kind, merged[name].block) == (rec.kind, rec.block)
        assert _counts(merged[name]) == pytest.approx(_counts(rec))
    spikes = merge_spikes(merge_spikes({}, a.ctx.spikes), b.ctx.spikes)
    assert {k: list(v) for k, v in a.ctx.spikes.items()} == a_spikes
    assert spikes == {k: list(v) for k, v in whole.ctx.spikes.items()}  # integer sums: exact
    assert merge_counts({}, {}) == {}
    with pytest.raises(ValueError):
        merge_counts({"x": LayerCounts("mlp", 0)}, {"x": LayerCounts("attention", 0)})


def test_metrics_and_breakdown_agree_and_rates_are_fractions() -> None:
    model = _tiny(depth=2)
    out = _run(model, _images(3))
    cfg = EnergyConfig()
    m, frame = energy_metrics(out.ctx.ops, 3, cfg), breakdown_frame(out.ctx.ops, 3, cfg)
    assert list(frame.columns) == list(BREAKDOWN_COLUMNS)
    assert frame["layer"].tolist() == list(out.ctx.ops)
    for col in COUNT_FIELDS:
        assert frame[col].sum() == pytest.approx(m[col])
    for conv in ("exact", "paper"):
        assert frame[f"energy_{conv}_pj"].sum() * 1e-6 == pytest.approx(m[f"energy_{conv}_uj"])
        by_kind = frame.groupby("kind")
        for kind in KINDS:
            assert by_kind[f"sops_{conv}"].sum()[kind] == pytest.approx(m[f"sops_{conv}_{kind}"])
            pj = by_kind[f"energy_{conv}_pj"].sum()[kind]
            assert pj * 1e-6 == pytest.approx(m[f"energy_{conv}_uj_{kind}"])
    assert m["sops_exact"] <= m["sops_paper"]  # non-negative integer inputs: nnz <= sum, borders <= 9
    assert m["energy_exact_uj"] == pytest.approx((4.6 * m["macs"] + 0.9 * m["sops_exact"]) * 1e-6)
    rates = firing_rates(out.ctx.spikes)
    assert list(rates) == lif_layer_names(2)
    assert all(0.0 <= r <= 1.0 for r in rates.values()) and any(r > 0 for r in rates.values())
    assert firing_rates({"idle": [0.0, 0.0]}) == {"idle": 0.0}


def test_ops_weighted_steps_by_hand() -> None:
    ops = {"stem.0": LayerCounts("stem", -1, macs=400.0, dense_flops=400.0),  # 4 steps -> 100 per step
           "block0.q": LayerCounts("attention", 0, dense_flops=300.0),  # 3 steps -> 100 per step
           "block0.qk": LayerCounts("attention", 0, dense_flops=100.0),  # the attention LIF gates qk and av:
           "block0.av": LayerCounts("attention", 0, dense_flops=100.0)}  # 1 step -> 200 per step
    steps = {"stem.0": 4.0, "block0.q": 3.0, "block0.attn": 1.0}
    assert lif_gates(1)["block0.attn"] == ("block0.qk", "block0.av")
    assert lif_gates(1)["stem.rpe"] == ("stem.rpe",)
    assert ops_weighted_steps(steps, ops, lif_gates(1)) == pytest.approx((4 * 100 + 3 * 100 + 1 * 200) / 400)
    with pytest.raises(ValueError):
        ops_weighted_steps({"block0.k": 2.0}, ops, lif_gates(1))  # not counted
    with pytest.raises(ValueError):
        ops_weighted_steps({**steps, "stem.0": 0.0}, ops, lif_gates(1))
    with pytest.raises(ValueError):
        ops_weighted_steps({}, ops, lif_gates(1))


# --------------------------------------------------------- 2. halted tokens and masked steps count less


def test_dropping_half_the_tokens_halves_block_counts() -> None:
    dense = _tiny(depth=2)
    drop = _tiny(TokenConfig(drop=DropConfig(keep_ratio=0.5)), depth=2)
    drop.load_state_dict(dense.state_dict())
    x = _images(2)
    d, r = _run(dense, x), _run(drop, x, record_maps=True)
    keep = r.maps[:, 0, 0]  # [B, N]: the same kept tokens in every block and step
    assert (r.maps == keep[:, None, None]).all() and (keep.sum(-1) == 8).all()  # 8 of 16 tokens
    for name in ("stem.0", "stem.1", "stem.2", "stem.3", "stem.rpe"):  # the stem always runs in full
        assert _counts(r.ctx.ops[name]) == _counts(d.ctx.ops[name])
    for b in range(2):
        for n in LINEARS:
            assert r.ctx.ops[f"block{b}.{n}"].dense_flops == d.ctx.ops[f"block{b}.{n}"].dense_flops / 2
        for n in ("qk", "av"):  # quadratic in the active tokens
            assert r.ctx.ops[f"block{b}.{n}"].dense_flops == d.ctx.ops[f"block{b}.{n}"].dense_flops / 4
    # q, k, v of block 0 read the stem output: exactly the kept tokens' share of it.
    z = _stem_output(dense, x) * keep[None, :, :, None]
    for n in ("q", "k", "v"):
        rec = r.ctx.ops[f"block0.{n}"]
        assert (rec.sops_exact, rec.sops_paper) == (float((z != 0).sum()) * 16, float(z.sum()) * 16)
        assert rec.sops_exact < d.ctx.ops[f"block0.{n}"].sops_exact
    blocks = [k for k in d.ctx.ops if k.startswith("block")]
    assert sum(r.ctx.ops[k].sops_exact for k in blocks) < sum(d.ctx.ops[k].sops_exact for k in blocks)
    assert r.ctx.spikes["block0.q"][1] == d.ctx.spikes["block0.q"][1] / 2


def test_masking_half_the_steps_halves_block_counts() -> None:
    T = 4
    dense = _tiny(depth=2, T=T)
    masked = _tiny(time=TimeConfig(mask=TimeMaskConfig(granularity="block")), depth=2, T=T)
    missing = masked.load_state_dict(dense.state_dict(), strict=False).missing_keys
    assert missing == ["time_policy.scores"]
    on = torch.tensor([1.0, -1.0, 1.0, -1.0])  # steps 0 and 2 of every block; the stem keeps all steps
    scores = torch.stack([torch.ones(T) if g == "stem" else on for g in masked.time_policy.groups])
    with torch.no_grad():
        masked.time_policy.scores.copy_(scores)
    x = _images(2)
    d, r = _run(dense, x), _run(masked, x)
    assert r.active_steps == {n: 4.0 if n.startswith("stem") else 2.0 for n in lif_layer_names(2)}
    for name in ("stem.0", "stem.1", "stem.2", "stem.3", "stem.rpe"):
        assert _counts(r.ctx.ops[name]) == _counts(d.ctx.ops[name])
    for b in range(2):
        for n in (*LINEARS, "qk", "av"):  # linear in the active steps, attention included
            assert r.ctx.ops[f"block{b}.{n}"].dense_flops == d.ctx.ops[f"block{b}.{n}"].dense_flops / 2
    z = _stem_output(dense, x)[[0, 2]]  # block 0's input at its active steps
    for n in ("q", "k", "v"):
        rec = r.ctx.ops[f"block0.{n}"]
        assert (rec.sops_exact, rec.sops_paper) == (float((z != 0).sum()) * 16, float(z.sum()) * 16)
    assert r.ctx.spikes["block1.mlp1"][1] == d.ctx.spikes["block1.mlp1"][1] / 2
    # ops-weighted steps: sum of dense FLOPs / sum of FLOPs per step, between the block and stem steps
    per_step = {n: sum(r.ctx.ops[f].dense_flops for f in lif_gates(2)[n]) / s
                for n, s in r.active_steps.items()}
    expected = sum(per_step[n] * s for n, s in r.active_steps.items()) / sum(per_step.values())
    assert ops_weighted_steps(r.active_steps, r.ctx.ops, lif_gates(2)) == pytest.approx(expected)
    assert 2.0 < expected < 4.0


# ------------------------------------------------------------------ 3. spikingjelly 2.0 op_counter


def _sj(fn, *counters) -> None:
    """Run ``fn`` under spikingjelly's aten-level counters (never around our own counting code)."""
    with torch.no_grad(), DispatchCounterMode(list(counters)):
        fn()


def _scope(counter, scope: str) -> int:
    return sum(counter.get_counts().get(scope, {}).values())


def test_spikingjelly_linear_binary_input_agrees() -> None:
    layer = LinearBNLIF(8, 6, NeuronConfig(), "l", "mlp", 0, bias=False).eval()
    x = _spikes(2, 3, 5, 8, p=0.3, seed=7)  # [T, B, N, C] binary
    ctx = Context(T=2, count=True)
    with torch.no_grad():
        layer(x, ctx, None)
    ours = ctx.ops["l"]
    syn, ac, mac = SynOpCounter(), ACCounter(), MACCounter()
    functional.reset_net(layer)
    _sj(lambda: layer(x, Context(T=2), None), syn, ac, mac)
    # Binary input: spikingjelly's spike-driven mm counts nnz(x) x fan_out, like both our conventions.
    assert syn.get_total() == _scope(syn, "LinearBNLIF.fc") == ours.sops_exact == ours.sops_paper
    # It also counts BN (ACs: x - mean for every element and var + eps per channel; MACs: the affine
    # scale, one per element) and the LIF membrane updates. We fold BN into the weights and do not
    # count neuron updates, so everything it counts beyond ours lies in the bn and lif scopes.
    numel = 2 * 3 * 5 * 6
    assert _scope(ac, "LinearBNLIF.fc") == ours.sops_exact
    assert _scope(ac, "LinearBNLIF.bn") == numel + 6
    assert _scope(ac, "LinearBNLIF.lif") > 0
    assert ac.get_total() == ours.sops_exact + _scope(ac, "LinearBNLIF.bn") + _scope(ac, "LinearBNLIF.lif")
    assert _scope(mac, "LinearBNLIF.fc") == 0 and mac.get_total() == _scope(mac, "LinearBNLIF.bn") == numel
    # Inactive (halted) tokens: the dense tensor still holds their frozen rows, and spikingjelly counts
    # every row the matmul touches; we count active tokens only.
    active = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]).expand(2, 3, 5)
    ctx = Context(T=2, count=True)
    functional.reset_net(layer)
    with torch.no_grad():
        layer(x, ctx, active)
    assert ctx.ops["l"].sops_exact == float((x * active[..., None] != 0).sum()) * 6 < syn.get_total()


def test_spikingjelly_linear_integer_input_differs() -> None:
    # Spikformer's residual stream (input of q, k, v, mlp1) is integer valued: spikingjelly sees a
    # non-binary operand and counts the layer as dense MACs, no SynOps. We count it as SOPs: exact =
    # nnz x fan_out (an entry of value 2 is one non-zero operand), paper = sum x fan_out (rate = mean
    # value, so it counts twice); our dense FLOPs equal spikingjelly's MACs.
    fc = nn.Linear(8, 6, bias=False)
    x = _spikes(2, 3, 5, 8, p=0.3, seed=8) + _spikes(2, 3, 5, 8, p=0.3, seed=9)  # values 0, 1, 2
    assert x.max() == 2
    ctx = Context(T=2, count=True)
    ctx.synapse("l", kind="attention", block=0, x=x, fan_out=6, active=None, group=None)
    syn, mac = SynOpCounter(), MACCounter()
    _sj(lambda: fc(x), syn, mac)
    assert syn.get_total() == 0
    assert mac.get_total() == ctx.ops["l"].dense_flops == 2 * 3 * 5 * 8 * 6
    rec = ctx.ops["l"]
    assert rec.sops_exact == float((x != 0).sum()) * 6 < rec.sops_paper == float(x.sum()) * 6


def test_spikingjelly_attention_products() -> None:
    blk = Block(ModelConfig(depth=1, dim=8, heads=2), 0)
    q, k, v = _hand_qkv()
    qh, kh, vh = _heads(q, 2), _heads(k, 2), _heads(v, 2)
    ctx = Context(T=1, count=True)
    attn = qh @ kh.transpose(-1, -2) * blk.scale
    blk._count_attention(ctx, q, k, vh, attn, None)
    qk, av = ctx.ops["block0.qk"], ctx.ops["block0.av"]

    def synops(fn) -> int:
        counter = SynOpCounter()
        _sj(fn, counter)
        return counter.get_total()

    # Q K^T, both operands binary: spikingjelly counts the sum of the product = coincidences = exact.
    assert synops(lambda: qh @ kh.transpose(-1, -2)) == qk.sops_exact == 6
    # (Q K^T) V with a binary attention map (scale 1 here: every entry is 0 or 1): sum of the product =
    # non-zero attention entries x non-zero V entries = exact.
    binary = qh @ kh.transpose(-1, -2)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert synops(lambda: binary @ vh) == av.sops_exact == 6
    # With Spikformer's scale 0.125 the map is not binary: spikingjelly counts nnz(V) x rows (all N
    # queries per key), which is our paper convention for a dense model (rate(V) x N^2 C = nnz(V) N),
    # not our exact count, which skips query rows whose attention entry is zero.
    assert synops(lambda: attn @ vh) == av.sops_paper == 18 > av.sops_exact


def test_spikingjelly_convs() -> None:
    stem1 = ConvBNLIF(2, 3, pool=False, neuron=NeuronConfig(), name="stem.1").eval()
    x = _spikes(2, 2, 2, 4, 4, p=0.4, seed=10)
    ctx = Context(T=2, count=True)
    with torch.no_grad():
        stem1(x, ctx)
    ours = ctx.ops["stem.1"]
    syn, mac = SynOpCounter(), MACCounter()
    _sj(lambda: stem1.conv(x.flatten(0, 1)), syn, mac)
    # Binary input: both count each spike once per output window that covers it (4/6/9 at the border).
    assert syn.get_total() == ours.sops_exact and mac.get_total() == 0
    # The paper convention (rate x dense FLOPs) charges border spikes 9 windows: the excess is exactly
    # the uncovered windows of the border spikes.
    cover = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float32)
    assert ours.sops_paper - ours.sops_exact == float((x * (9 - cover)).sum()) * 3
    # Analog first conv: spikingjelly's MACs equal ours.
    stem0 = ConvBNLIF(3, 4, pool=False, neuron=NeuronConfig(), name="stem.0", analog=True).eval()
    img = torch.rand(2, 2, 3, 4, 4)
    ctx = Context(T=2, count=True)
    with torch.no_grad():
        stem0(img, ctx)
    syn, mac = SynOpCounter(), MACCounter()
    _sj(lambda: stem0.conv(img.flatten(0, 1)), syn, mac)
    assert mac.get_total() == ctx.ops["stem.0"].macs == 4 * 4 * 3 * 9 * 4 * 4 and syn.get_total() == 0


def test_spikingjelly_whole_model_layer_by_layer() -> None:
    T, depth = 2, 2
    model = _tiny(depth=depth, T=T)
    x = _images(2)
    ops = _run(model, x).ctx.ops
    syn, mac = SynOpCounter(), MACCounter()
    functional.reset_net(model)
    seen: dict[tuple[int, str], torch.Tensor] = {}
    hooks = [getattr(blk, n).register_forward_hook(lambda _m, _i, out, key=(b, n): seen.__setitem__(key, out))
             for b, blk in enumerate(model.blocks) for n in ("q", "k", "v")]
    _sj(lambda: model(x), syn, mac)  # count=False: none of our counting ops run under the counters
    for h in hooks:
        h.remove()
    functional.reset_net(model)
    root = "Spikformer"
    assert _scope(mac, f"{root}.stem.stages.0.conv") == ops["stem.0"].macs
    assert _scope(syn, f"{root}.stem.stages.0.conv") == 0
    convs = [(f"stem.{i}", f"stem.stages.{i}.conv") for i in (1, 2, 3)] + [("stem.rpe", "stem.rpe.conv")]
    for name, scope in convs:
        assert _scope(syn, f"{root}.{scope}") == ops[name].sops_exact > 0  # binary LIF inputs
    binary_seen = integer_seen = 0
    for b, n in itertools.product(range(depth), LINEARS):
        rec, scope = ops[f"block{b}.{n}"], f"{root}.blocks.{b}.{n}.fc"
        if rec.sops_exact == rec.sops_paper:  # non-negative integer input: nnz == sum iff binary
            binary_seen += 1
            assert (_scope(syn, scope), _scope(mac, scope)) == (rec.sops_exact, 0)
        else:  # residual-stream input: spikingjelly charges dense MACs
            integer_seen += 1
            assert (_scope(syn, scope), _scope(mac, scope)) == (0, rec.dense_flops)
    assert binary_seen and integer_seen
    for b in range(depth):
        # Outside counting the block computes Q (K^T V) (no N x N map), so spikingjelly sees K^T V
        # (binary x binary: the sum of the product) and Q (K^T V) (binary Q times an integer matrix:
        # nnz(Q) x fan-out). Our counts follow the official (Q K^T) V order instead; the two orders are
        # different operation counts of the same product, which is why we count one fixed order.
        heads = model.blocks[b].heads
        q, k, v = (seen[(b, n)] for n in ("q", "k", "v"))
        T_, B_, N_, C_ = q.shape
        qh, kh, vh = (t.reshape(T_, B_, N_, heads, C_ // heads).transpose(2, 3) for t in (q, k, v))
        ktv = kh.transpose(-1, -2) @ vh
        assert not is_binary_tensor(ktv) and is_binary_tensor(qh)
        expected = float(ktv.sum()) + float((qh != 0).sum()) * ktv.shape[-1]
        assert syn.get_counts()[f"{root}.blocks.{b}"][BMM] == expected
        assert ops[f"block{b}.qk"].sops_exact > 0
    # The model also applies the head to each step's features (step_logits, for early exit); inference
    # needs it once on the time-averaged features (the head is linear), which is what we count.
    assert _scope(mac, f"{root}.head") == (1 + T) * ops["head"].macs


def test_spikingjelly_energy_constants_and_simple_energy() -> None:
    fp32 = SimpleEnergyCostConfig.fp32()
    assert (fp32.e_mac_pj, fp32.e_ac_pj) == (EnergyConfig().e_mac_pj, EnergyConfig().e_ac_pj)
    x = _spikes(10, 8, p=0.3, seed=11)
    ctx = Context(T=1, count=True)
    ctx.synapse("block0.mlp2", kind="mlp", block=0, x=x[None, None], fan_out=6, active=None, group=None)
    report = estimate_simple_energy(nn.Linear(8, 6, bias=False), x)
    ours = energy_metrics(ctx.ops, 1, EnergyConfig())
    assert report.energy_ac_pj == pytest.approx(ours["energy_exact_uj"] * 1e6)
    assert report.energy_mac_pj == 0.0
    # spikingjelly also charges memory traffic (weight reads), which the Spikformer-family model omits.
    assert report.energy_memory_pj > 0 and report.energy_total_pj > ours["energy_exact_uj"] * 1e6


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 4), (6,), ()])
def test_nonzeros_equals_count_nonzero(shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32-flag count is torch's exact count, in all of x and along dims, and so is its int64 fallback."""
    from suite.models import context

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, shape, generator=g).float() * torch.rand(shape, generator=g).round()
    dims = [None] + ([0, -1, (0, -1)] if len(shape) > 1 else [])
    for limit in (context.EXACT_FP32_COUNT, 1):  # 1: every count takes the int64 path
        monkeypatch.setattr(context, "EXACT_FP32_COUNT", limit)
        for dim in dims:
            got = context.nonzeros(x, dim)
            want = torch.count_nonzero(x) if dim is None else torch.count_nonzero(x, dim=dim)
            assert got.dtype == torch.float64 and torch.equal(got, want.double()), (limit, dim)
    assert float(context.nonzeros(x)) > 0 or x.numel() <= 1


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (4, 1), (2, 2), (2, 5), (3, 3), (7, 6)])
def test_covered_nonzeros_equals_per_pixel_cover(hw: tuple[int, int]) -> None:
    """The border formula for a 3x3, padding-1 conv's exact SOPs equals the per-pixel window count (a conv of
    ones) it replaced, corners and one-pixel-wide maps included."""
    from suite.models.layers import _covered_nonzeros

    H, W = hw
    x = (torch.rand(2, 3, 4, H, W, generator=torch.Generator().manual_seed(H * 10 + W)) < 0.4).float()
    cover = torch.nn.functional.conv2d(torch.ones(1, 1, H, W), torch.ones(1, 1, 3, 3), padding=1)[0, 0]
    want = ((x != 0).sum((0, 1, 2)).double() * cover.double()).sum()
    nz, windows = _covered_nonzeros(x)
    assert float(nz) == float((x != 0).sum()) and float(windows) == float(want) and float(want) > 0


def test_shared_input_reading_is_reused_and_invalidated() -> None:
    """Q, K and V read one input once; an in-place change or another input, mask or active set reads it again."""
    ctx = Context(T=2, count=True)
    x = (torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    first = ctx._input_stats(x, torch.ones(2, 1, 1, 1), None, None)
    assert ctx._input_stats(x, torch.ones(2, 1, 1, 1), None, None) is first  # reused
    x.mul_(2)  # in place: a new version
    again = ctx._input_stats(x, torch.ones(2, 1, 1, 1), None, None)
    assert again is not first and float(again[1]) == 2 * float(first[1]) and again[2] and not first[2]
    m = torch.tensor([1.0, 0.0])
    masked = ctx._input_stats(x, m.view(-1, 1, 1, 1), None, m)
    assert float(masked[0]) == float(torch.count_nonzero(x[0]))
    assert ctx._input_stats(x, m.view(-1, 1, 1, 1), None, m.clone()) is masked  # masks compare by value
    active = torch.ones(2, 3, 5)
    assert ctx._input_stats(x, active.unsqueeze(-1), active, None) is not masked
