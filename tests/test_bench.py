"""``spikesuite bench`` runs end to end on tiny shapes and writes its tidy CSV (no timing assertions:
timings on a shared machine are noise; only the plumbing is checked)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from suite.bench import run_bench
from suite.bench.common import COLUMNS, QUICK, BenchConfig, BenchShape, interleave, paired_ratio
from suite.bench.inference import halting_channel

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
    step = df[(df.part == 1) & (df.metric == "step_time_s")].set_index("case")
    assert set(step.index) == {"ours", "spikingjelly"}
    assert step.loc["spikingjelly", "ratio"] == 1.0
    for metric in ("params", "tokens"):
        m = df[(df.part == 1) & (df.metric == metric)].set_index("case")
        assert m.loc["ours", "median"] == m.loc["spikingjelly", "median"]
    # part 2: dense, masked and compacted images/s at each target fraction, f reached by beta_offset
    ips = df[(df.part == 2) & (df.metric == "images_per_s")]
    for f in ("1.00", "0.50", "0.25"):
        assert {f"f={f}/masked", f"f={f}/compact"} <= set(ips.case)
    frac = df[(df.part == 2) & (df.metric == "active_fraction")].set_index("case")["median"]
    assert frac["f=1.00"] == 1.0
    assert abs(frac["f=0.50"] - 0.5) < 0.2 and abs(frac["f=0.25"] - 0.25) < 0.15
    assert frac["f=0.25"] < frac["f=0.50"] < frac["f=1.00"]
    # outputs next to the CSV; the summary names the targets
    for name in ("bench.png", "bench.pdf", "machine.json"):
        assert (tmp_path / name).stat().st_size > 0
    info = json.loads((tmp_path / "machine.json").read_text())
    assert {"cpu_model", "cpu_cores_logical", "torch", "spikingjelly", "device"} <= set(info)
    assert b"CreationDate" not in (tmp_path / "bench.pdf").read_bytes()
    assert any("ours/spikingjelly" in t.name for t in res.targets)
    assert any("parameters: ours" in line and "(equal)" in line for line in lines)


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
