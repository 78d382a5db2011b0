"""``spikesuite bench`` runs end to end on tiny shapes and writes its tidy CSV (no timing assertions:
timings on a shared machine are noise; only the plumbing is checked)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from suite.bench import run_bench
from suite.bench.calibrate import find_offset
from suite.bench.common import COLUMNS, QUICK, BenchConfig, BenchShape, interleave, paired_ratio
from suite.bench.inference import CONFIGS, halting_channel

TINY = BenchConfig(BenchShape(depth=2, dim=16, heads=2, T=4, batch=4, image=16), warmup=1, reps_train=2,
                   reps_infer=2, calib_images=4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: with several OpenMP threads on a busy machine, thread hand-offs dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.timeout(120)
def test_quick_bench_parts_1_2_write_a_tidy_csv(tmp_path) -> None:
    lines: list[str] = []
    res = run_bench(tmp_path, quick=True, parts=(1, 2), config=TINY, profile=False, log=lines.append)
    df = pd.read_csv(tmp_path / "bench.csv")
    assert tuple(df.columns) == COLUMNS
    assert set(df.part) == {1, 2}
    assert (df.device == "cpu").all()
    assert (df.ratio > 0).all() and df.ratio.map(math.isfinite).all()
    assert (df["median"] > 0).all() and (df.n >= 1).all()
    # part 1: both step times, equal parameter and token counts
    # part 1: both step times of each backbone pair (Spikformer: the original case names), equal parameter and
    # token counts
    step = df[(df.part == 1) & (df.metric == "step_time_s")].set_index("case")
    assert set(step.index) == {"ours", "spikingjelly", "sdt/ours", "sdt/spikingjelly", "qkformer/ours",
                               "qkformer/spikingjelly"}
    for ours, sj in (("ours", "spikingjelly"), ("sdt/ours", "sdt/spikingjelly"), ("qkformer/ours", "qkformer/spikingjelly")):
        assert step.loc[sj, "ratio"] == 1.0
        for metric in ("params", "tokens"):
            m = df[(df.part == 1) & (df.metric == metric)].set_index("case")
            assert m.loc[ours, "median"] == m.loc[sj, "median"]
    assert {"train step ours/spikingjelly", "train step sdt ours/spikingjelly",
            "train step qkformer ours/spikingjelly"} <= {t.name for t in res.targets}
    # part 2, every configuration (Spikformer per_step: unprefixed names; sdt, and stem: once of both backbones):
    # dense, stem, masked and compacted images/s at each target fraction, f reached by beta_offset, the stem share,
    # the Amdahl ceiling and the compacted speedup as a fraction of it
    assert [c.prefix for c in CONFIGS] == ["", "sdt/", "spikformer-once/", "sdt-once/"]
    p2 = df[df.part == 2]
    for p in (c.prefix for c in CONFIGS):
        ips = p2[p2.metric == "images_per_s"]
        assert {f"{p}dense", f"{p}stem"} <= set(ips.case)
        for f in ("1.00", "0.50", "0.25"):
            assert {f"{p}f={f}/masked", f"{p}f={f}/compact"} <= set(ips.case)
        share = p2[(p2.metric == "stem_share") & (p2.case == f"{p}stem")]["median"]
        assert len(share) == 1 and 0 < share.iloc[0] < 1
        frac = p2[p2.metric == "active_fraction"].set_index("case")["median"]
        ceil = p2[p2.metric == "amdahl_ideal_speedup"].set_index("case")["median"]
        of = p2[p2.metric == "of_ceiling"].set_index("case")
        speed = ips.set_index("case")["ratio"]
        assert frac[f"{p}f=1.00"] == 1.0 and ceil[f"{p}f=1.00"] == pytest.approx(1.0)
        assert abs(frac[f"{p}f=0.50"] - 0.5) < 0.2 and abs(frac[f"{p}f=0.25"] - 0.25) < 0.15, p
        assert frac[f"{p}f=0.25"] < frac[f"{p}f=0.50"] < frac[f"{p}f=1.00"]
        for f in ("1.00", "0.50", "0.25"):
            s = share.iloc[0]
            assert ceil[f"{p}f={f}"] == pytest.approx(1 / (s + (1 - s) * frac[f"{p}f={f}"]), rel=1e-4)
            assert of.loc[f"{p}f={f}/compact", "median"] == pytest.approx(
                speed[f"{p}f={f}/compact"] / ceil[f"{p}f={f}"], rel=1e-4)
    # SDT's residual stream is real-valued: the halting channel is described by quantiles, and the bisection on
    # beta_offset still reached every fraction (checked above)
    assert set(res.calibration["sdt"]["channel_values"]) >= {"q0", "q50", "q100"}
    assert res.calibration["sdt-once"]["stem"] == "once"
    assert any("part 2: compacted speedup end to end vs Amdahl's ceiling" in t for t in res.tables)
    # outputs next to the CSV; the summary names the targets
    for name in ("bench.png", "bench.pdf", "machine.json"):
        assert (tmp_path / name).stat().st_size > 0
    info = json.loads((tmp_path / "machine.json").read_text())
    assert {"cpu_model", "cpu_cores_logical", "torch", "spikingjelly", "device"} <= set(info)
    assert b"CreationDate" not in (tmp_path / "bench.pdf").read_bytes()
    assert any("ours/spikingjelly" in t.name for t in res.targets)
    assert any("parameters: ours" in line and "(equal)" in line for line in lines)
    assert any("sdt parameters: ours" in line and "(equal)" in line for line in lines)
    assert any("sdt once: halting channel" in line and "real-valued" in line for line in lines)


def test_find_offset_widens_its_bracket(monkeypatch) -> None:
    # f(offset) = a step at offset 100: outside the initial [-30, 30] bracket, as on a real-valued residual stream
    class Fake:
        def __init__(self, off: float):
            self.off = off

    def frac(model: Fake, x) -> float:
        return min(1.0, max(0.1, 0.5 + (model.off - 100.0) / 40.0))

    monkeypatch.setattr("suite.bench.calibrate.active_fraction", frac)
    off, f = find_offset(Fake, torch.zeros(1), 0.5, torch.device("cpu"))
    assert abs(f - 0.5) <= 0.01 and abs(off - 100.0) <= 0.5
    off, f = find_offset(Fake, torch.zeros(1), 1.0, torch.device("cpu"))
    assert f == 1.0 and off >= 120.0


def test_quick_config_reaches_a_quarter_of_the_units() -> None:
    # 2-D halting: f >= 1 / (depth * T) (every token runs its first unit), so f = 0.25 needs depth * T >= 4
    assert QUICK.shape.depth * QUICK.shape.T >= 4


def test_interleave_and_paired_ratio() -> None:
    calls: list[str] = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, reps=3,
                       device=torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B, B A, A B
    assert all(len(v) == 3 for v in times.values())
    assert paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 2.0]) == 3.0


def test_halting_channel_prefers_spread_values() -> None:
    z = torch.zeros(2, 4, 3, 16, 3)
    z[..., 1] = torch.randint(0, 3, z[..., 1].shape).float()  # channel 1 takes 0, 1, 2
    z[..., 2] = 1.0
    c, dist = halting_channel(z)
    assert c == 1 and set(dist) == {"0", "1", "2"}


def test_halting_channel_on_a_real_valued_stream() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 16, 3, generator=g) * 0.01
    z[..., 2] = torch.rand(z[..., 2].shape, generator=g) * 6 - 3  # channel 2 spread evenly over [-3, 3]
    c, dist = halting_channel(z)
    assert c == 2 and dist["q0"] < -2.5 and dist["q100"] > 2.5


@pytest.mark.timeout(300)
def test_quick_bench_part_4_throughput_rows(tmp_path, monkeypatch) -> None:
    """Part 4 on its tiny shape (aot_eager in quick mode): every throughput row, auto's choice for the default."""
    from suite.train import compiled

    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(compiled.INDUCTOR_ENV, str(tmp_path / "cache"))
    lines: list[str] = []
    run_bench(tmp_path, quick=True, parts=(4,), config=TINY, profile=False, log=lines.append)
    df = pd.read_csv(tmp_path / "bench.csv").set_index(["case", "metric"])
    for case, metric in (("train_eager", "step_time_s"), ("train_compiled", "step_time_s"),
                         ("train_compiled", "compile_s"), ("train_default", "step_time_s"),
                         ("train_default", "default_compiled"), ("train_default", "images_per_s"),
                         ("eval_counted", "images_per_s"), ("eval_uncounted", "images_per_s"),
                         ("eval_counted", "vs_uncounted")):
        assert (f"quick/{case}", metric) in df.index, (case, metric)
    assert df.loc[("quick/train_default", "default_compiled"), "median"] == 0  # a tiny run: auto stays eager
    assert df.loc[("quick/train_default", "step_time_s"), "median"] == df.loc[("quick/train_eager", "step_time_s"),
                                                                              "median"]
    assert any("auto: estimated eager training" in line for line in lines)
