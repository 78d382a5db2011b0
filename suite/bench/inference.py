"""Part 2: inference images/s at active-token fractions f ~ 1, 0.5, 0.25 for one set of weights per configuration.

Configurations (``CONFIGS``): Spikformer and Spike-driven Transformer v1, each with the stem at every timestep
(``stem: per_step``) and once on the static image (``stem: once``). Spikformer per_step keeps the original case names
(``dense``, ``f=0.50/compact``, ...); the others are prefixed (``sdt/``, ``spikformer-once/``, ``sdt-once/``).

Cases of a configuration, timed interleaved: dense (no token policy), masked halting (``model(x)``: inactive tokens
are zeroed, not removed), compacted halting (``compact_forward``: inactive tokens removed) and the stem alone
(``model.embed``). f is driven with the evaluation-time ``beta_offset`` (``calibrate.py``), not by training. Ratio =
speedup vs dense (median over rounds of dense time / case time), next to the ideal 1/f. The stem runs before any
token policy and costs the same in every case, so the end-to-end ceiling is Amdahl's ``1 / (s + (1 - s) f)`` with
``s`` the stem's share of the dense time (``stem_share``); each compacted case records its speedup as a fraction of
that ceiling (``of_ceiling``), and the *blocks-only* speedup ``(dense - stem) / (case - stem)`` (medians) beside.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional

from suite.bench.calibrate import (
    bn_running_stats,
    describe_values,
    find_offset,
    halting_channel,
    halting_model,
    residual_values,
)
from suite.bench.common import (
    INFERENCE,
    TARGET_CEILING,
    TARGET_COMPACT,
    TARGET_MASKED,
    BenchConfig,
    BenchResult,
    Log,
    Target,
    autocast,
    interleave,
    iqr,
    ours_model,
    paired_ratio,
    profile_top,
    random_batch,
)
from suite.models import Backbone
from suite.models.compact import active_fraction, compact_forward
from suite.models.context import Context

__all__ = ["CONFIGS", "FRACTIONS", "InferenceConfig", "bench_inference", "halting_channel"]

FRACTIONS = (1.0, 0.5, 0.25)  # target active-token fractions


@dataclass(frozen=True)
class InferenceConfig:
    """One backbone and stem mode of part 2; ``prefix`` starts its case names."""

    prefix: str
    backbone: str
    stem: str

    @property
    def name(self) -> str:
        return f"{self.backbone} {self.stem}"

    @property
    def tag(self) -> str:
        """Log and calibration key: '' for the original configuration, else the prefix without its slash."""
        return self.prefix.rstrip("/")


CONFIGS = (InferenceConfig("", "spikformer", "per_step"), InferenceConfig("sdt/", "sdt", "per_step"),
           InferenceConfig("spikformer-once/", "spikformer", "once"), InferenceConfig("sdt-once/", "sdt", "once"))


def bench_inference(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Log, profile: bool,
                    fractions: Sequence[float] = FRACTIONS, configs: Sequence[InferenceConfig] = CONFIGS) -> None:
    ceilings: list[tuple] = []
    for conf in configs:
        ceilings += _bench_config(cfg, device, res, log, profile, fractions, conf)
    res.tables.append(ceiling_table(ceilings))  # printed in the summary


def ceiling_table(rows: Sequence[tuple]) -> str:
    """config, s, f, Amdahl ceiling, measured end-to-end speedup, measured / ceiling, blocks-only speedup."""
    lines = ["part 2: compacted speedup end to end vs Amdahl's ceiling 1/(s + (1-s) f), s = stem time / dense time",
             f"{'config':<20} {'s':>5} {'f':>5} {'ceiling':>8} {'measured':>9} {'of ceiling':>10} {'blocks only':>11}"]
    for name, s, f, ceil, meas, blocks in rows:
        lines.append(f"{name:<20} {s:>5.2f} {f:>5.2f} {ceil:>7.2f}x {meas:>8.2f}x {meas / ceil:>10.2f} "
                     f"{blocks:>10.2f}x")
    return "\n".join(lines)


def _bench_config(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Log, profile: bool,
                  fractions: Sequence[float], conf: InferenceConfig) -> list[tuple]:
    shape, dev, p = cfg.shape, str(device), conf.prefix
    say = f"[2{' ' + conf.tag if conf.tag else ''}]"
    torch.manual_seed(1)
    dense = ours_model(shape, backbone=conf.backbone, stem=conf.stem).to(device)
    bn_running_stats(dense, shape, device)
    state = dense.state_dict()
    x, _ = random_batch(shape, device, seed=7)
    channel, dist = halting_channel(residual_values(dense, x))
    calib = res.calibration if not conf.tag else res.calibration.setdefault(conf.tag, {})
    calib.update(halting_channel=channel, channel_values=dist, bn_stats="3 train-mode forwards")
    if conf.tag:
        calib.update(backbone=conf.backbone, stem=conf.stem)
    log(f"{say} {conf.name}: halting channel {channel}: residual-stream values entering the blocks "
        + describe_values(dist))

    def make(off: float) -> Backbone:
        return halting_model(shape, state, channel, off, device, conf.backbone, conf.stem)

    models: dict[float, tuple[Backbone, float, float]] = {}
    for target in fractions:
        off, _ = find_offset(make, x[: cfg.calib_images], target, device)
        model = make(off)
        with autocast(device):
            f = active_fraction(model, x)
        models[target] = (model, off, f)
        log(f"{say} target f={target:.2f}: beta_offset {off:+.3f} -> active fraction {f:.3f} on the timed batch")

    @torch.no_grad()
    def run_dense() -> None:
        with autocast(device):
            dense(x)
        functional.reset_net(dense)

    @torch.no_grad()
    def run_stem() -> None:
        with autocast(device):
            dense.embed(x, Context(T=dense.T))
        functional.reset_net(dense)

    def masked(model: Backbone) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            with autocast(device):
                model(x)
            functional.reset_net(model)
        return run

    def compact(model: Backbone) -> Callable[[], None]:
        def run() -> None:
            with autocast(device):
                compact_forward(model, x)
        return run

    cases: dict[str, Callable[[], None]] = {f"{p}dense": run_dense, f"{p}stem": run_stem}
    for target, (model, _, _) in models.items():
        cases[f"{p}f={target:.2f}/masked"] = masked(model)
        cases[f"{p}f={target:.2f}/compact"] = compact(model)
    # The compacted path must give the masked path's logits (else its timing means nothing).
    for target, (model, _, _) in models.items():
        with torch.no_grad(), autocast(device):
            ref = model(x).logits.float()
            functional.reset_net(model)
            got = compact_forward(model, x).float()
        diff = float((got - ref).abs().max())
        log(f"{say} f={target:.2f}: max |compact - masked| logit difference {diff:.2e}")
        if diff > 1e-3 * max(1.0, float(ref.abs().max())) and device.type == "cpu":
            res.notes.append(f"part 2: {conf.name}: compacted logits differ from masked at f={target:.2f} "
                             f"(max {diff:.2e})")
    times = interleave(cases, warmup=cfg.warmup, reps=cfg.reps_infer, device=device)
    times = {k[len(p):]: v for k, v in times.items()}  # unprefixed from here on
    med = {k: statistics.median(v) for k, v in times.items()}
    B, n = shape.batch, cfg.reps_infer
    s = med["stem"] / med["dense"]
    res.add(INFERENCE, f"{p}dense", dev, "images_per_s", B / med["dense"], _ips_iqr(times["dense"], B), 1.0, n)
    res.add(INFERENCE, f"{p}stem", dev, "images_per_s", B / med["stem"], _ips_iqr(times["stem"], B),
            paired_ratio(times["dense"], times["stem"]), n)
    res.add(INFERENCE, f"{p}stem", dev, "stem_share", s, 0.0, s, n)
    log(f"{say} dense {B / med['dense']:.1f} images/s; stem alone {B / med['stem']:.1f} images/s "
        f"(stem share s = {s:.2f}: the end-to-end speedup is at most {1 / s:.2f}x whatever f)")
    ceilings, missed = [], []
    for target, (_, off, f) in models.items():
        key = f"f={target:.2f}"
        calib[key] = {"beta_offset": off, "active_fraction": f}
        amdahl = 1.0 / (s + (1 - s) * f)
        res.add(INFERENCE, f"{p}{key}", dev, "active_fraction", f, 0.0, 1.0 / f, B)  # ratio: the ideal speedup 1/f
        res.add(INFERENCE, f"{p}{key}", dev, "amdahl_ideal_speedup", amdahl, 0.0, amdahl, 1)
        line = [f"{say} {key} (measured f={f:.3f}, ideal 1/f={1 / f:.2f}x, Amdahl ceiling with the stem {amdahl:.2f}x):"]
        for kind in ("masked", "compact"):
            name = f"{key}/{kind}"
            speed = paired_ratio(times["dense"], times[name])
            res.add(INFERENCE, p + name, dev, "images_per_s", B / med[name], _ips_iqr(times[name], B), speed, n)
            blocks = _blocks_speedup(med["dense"], med[name], med["stem"])
            if math.isfinite(blocks):
                res.add(INFERENCE, p + name, dev, "blocks_speedup", blocks, 0.0, blocks, n)
            if kind == "compact":
                res.add(INFERENCE, p + name, dev, "of_ceiling", speed / amdahl, 0.0, speed / amdahl, n)
                ceilings.append((conf.name, s, f, amdahl, speed, blocks))
            line.append(f"{kind} {B / med[name]:.1f} images/s = {speed:.2f}x dense (blocks only {blocks:.2f}x)")
        log(" ".join(line[:1]) + "\n      " + "; ".join(line[1:])
            + f"; compact = {speed / amdahl:.2f} of the ceiling")
        if not _targets(res, p, key, f, amdahl, times, med):
            missed.append(target)
    if profile and missed:
        label = f"part 2: {conf.tag + ' ' if conf.tag else ''}"
        res.profiles[f"{label}dense forward"] = profile_top(run_dense, device)
        for target in missed:
            key = f"f={target:.2f}"
            res.profiles[f"{label}compact_forward at {key}"] = profile_top(cases[f"{p}{key}/compact"], device)
            if not conf.tag:
                res.profiles[f"{label}masked forward at {key}"] = profile_top(masked(models[target][0]), device)
    return ceilings


def _ips_iqr(times: Sequence[float], batch: int) -> float:
    return iqr([batch / t for t in times])


def _blocks_speedup(dense: float, case: float, stem: float) -> float:
    """(dense - stem) / (case - stem) from medians: the speedup of everything after the stem."""
    den = case - stem
    return (dense - stem) / den if den > 0 and dense > stem else math.nan


def _targets(res: BenchResult, p: str, key: str, f: float, amdahl: float, times: dict[str, list[float]],
             med: dict[str, float]) -> bool:
    """Add the targets of one fraction; False if a compacted-speed target was missed."""
    masked = paired_ratio(times["dense"], times[f"{key}/masked"])
    lo, hi = TARGET_MASKED
    res.targets.append(Target(f"masked {p}{key} speedup", masked, f"~1.0 ({lo}-{hi})", lo <= masked <= hi))
    comp = paired_ratio(times["dense"], times[f"{key}/compact"])
    ok = comp >= TARGET_CEILING * amdahl
    res.targets.append(Target(f"compact {p}{key} speedup / Amdahl ceiling", comp / amdahl,
                              f">= {TARGET_CEILING:.2f} (of {amdahl:.2f}x)", ok))
    if f > 0.75:
        return ok
    need = TARGET_COMPACT / f
    res.targets.append(Target(f"compact {p}{key} speedup, end to end", comp, f">= {need:.2f} (0.7/f)", comp >= need))
    blocks = _blocks_speedup(med["dense"], med[f"{key}/compact"], med["stem"])
    res.targets.append(Target(f"compact {p}{key} speedup, blocks only (stem excluded)", blocks,
                              f">= {need:.2f} (0.7/f)", math.isfinite(blocks) and blocks >= need))
    return ok and comp >= need
