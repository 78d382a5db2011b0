"""Part 1: one training step of ours vs spikingjelly 2.0's peer, for each backbone.

Spikformer: ours (``backbone: spikformer``) vs ``model.spikformer.Spikformer`` (cases ``ours``, ``spikingjelly``);
Spike-driven Transformer v1: ours (``backbone: sdt``) vs ``model.spike_driven_transformer.SpikeDrivenTransformer``
(cases ``sdt/ours``, ``sdt/spikingjelly``); QKFormer: ours (``backbone: qkformer``, ImageNet embedding, stages
(1, 1, depth - 2), at least 3 blocks) vs ``model.qkformer.QKFormer`` (cases ``qkformer/ours``, ``qkformer/spikingjelly``). A step is forward (+ loss) under autocast on CUDA, backward, AdamW step
and ``reset_net``; both models of a pair have the same shape (parameter and token counts are checked and
reported), and a pair's two cases are timed interleaved. Ratio = median over rounds of ours / spikingjelly
(< 1: ours is faster).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import Tensor, nn

from suite.bench.common import (
    TARGET_STEP_RATIO,
    TRAIN_STEP,
    BenchConfig,
    BenchResult,
    BenchShape,
    Log,
    Target,
    autocast,
    interleave,
    iqr,
    n_params,
    ours_model,
    paired_ratio,
    profile_top,
    qkformer_depth,
    random_batch,
)

# backbone -> (case-name prefix, label in logs and target names); Spikformer's cases keep their original names
BACKBONES = {"spikformer": ("", ""), "sdt": ("sdt/", "sdt "), "qkformer": ("qkformer/", "qkformer ")}
STEM_POOLS = 2  # ours: ModelConfig.stem_pools (common.ours_model); SDT's peer: pooling_stat "0011"


def spikingjelly_model(shape: BenchShape, backbone: str = "spikformer") -> nn.Module:
    if backbone == "qkformer":  # ours at patch_embed: imagenet, depths (1, 1, depth - 2) (common.ours_model)
        from spikingjelly.activation_based.model.qkformer import QKFormer

        depth = qkformer_depth(shape)
        return QKFormer(T=shape.T, in_channels=shape.channels, num_classes=shape.classes, embed_dims=shape.dim,
                        num_heads=(shape.heads,) * 3, depths=(1, 1, depth - 2), mlp_ratio=4.0)
    if backbone == "sdt":
        from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer

        return SpikeDrivenTransformer(T=shape.T, in_channels=shape.channels, num_classes=shape.classes,
                                      embed_dims=shape.dim, num_heads=shape.heads, depths=shape.depth, mlp_ratio=4.0,
                                      pooling_stat="0" * (4 - STEM_POOLS) + "1" * STEM_POOLS)
    from spikingjelly.activation_based.model.spikformer import Spikformer as SJSpikformer

    return SJSpikformer(T=shape.T, in_channels=shape.channels, img_size_h=shape.image, img_size_w=shape.image,
                        patch_size=shape.patch, num_classes=shape.classes, embed_dims=shape.dim,
                        num_heads=shape.heads, mlp_ratio=4, depths=shape.depth)


@torch.no_grad()
def spikingjelly_tokens(model: nn.Module, shape: BenchShape, device: torch.device) -> int:
    """Tokens after spikingjelly's stem, measured on one image."""
    x = torch.zeros(shape.T, 1, shape.channels, shape.image, shape.image, device=device)
    try:
        z = model.patch_embed1(x) if hasattr(model, "patch_embed1") else model.patch_embed(x)
    finally:
        functional.reset_net(model)
    return int(z.shape[-1] * z.shape[-2])


def train_step_fn(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, *, ours: bool) -> Callable[[], None]:
    """One training step: forward (+ loss) under autocast on CUDA, backward, AdamW step, reset_net."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        with autocast(device):
            if ours:
                out = model(x)
                loss = F.cross_entropy(out.logits, y) + sum(out.aux.values(), torch.zeros((), device=device))
            else:  # Spikformer: [T, B, K] per-step logits, averaged over T; SDT: [B, K], already averaged
                logits = model(x)
                loss = F.cross_entropy(logits.mean(0) if logits.dim() == 3 else logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        functional.reset_net(model)

    return step


def bench_train_step(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Log, profile: bool,
                     backbones: tuple[str, ...] = tuple(BACKBONES)) -> None:
    shape = cfg.shape
    log(f"[1] config: depth {shape.depth}, dim {shape.dim}, heads {shape.heads}, T {shape.T}, batch {shape.batch}, "
        f"{shape.image}x{shape.image}x{shape.channels} input")
    for backbone in backbones:
        _bench_pair(cfg, device, res, log, profile, backbone)


def _bench_pair(cfg: BenchConfig, device: torch.device, res: BenchResult, log: Log, profile: bool,
                backbone: str) -> None:
    """Ours vs spikingjelly's peer of one backbone, interleaved."""
    shape, dev = cfg.shape, str(device)
    prefix, label = BACKBONES[backbone]
    torch.manual_seed(0)
    ours = ours_model(shape, backbone=backbone).to(device)
    sj = spikingjelly_model(shape, backbone).to(device)
    p_ours, p_sj = n_params(ours), n_params(sj)
    t_ours, t_sj = ours.num_tokens, spikingjelly_tokens(sj, shape, device)
    log(f"[1] {label}parameters: ours {p_ours:,}, spikingjelly {p_sj:,} ({'equal' if p_ours == p_sj else 'DIFFERENT'}); "
        f"tokens: ours {t_ours}, spikingjelly {t_sj} ({'equal' if t_ours == t_sj else 'DIFFERENT'})")
    if p_ours != p_sj or t_ours != t_sj:
        res.notes.append(f"part 1 {backbone}: shapes differ (params {p_ours} vs {p_sj}, tokens {t_ours} vs {t_sj})")
    x, y = random_batch(shape, device)
    a, b = f"{prefix}ours", f"{prefix}spikingjelly"
    cases = {a: train_step_fn(ours, x, y, device, ours=True), b: train_step_fn(sj, x, y, device, ours=False)}
    times = interleave(cases, warmup=cfg.warmup, reps=cfg.reps_train, device=device)
    ratio = paired_ratio(times[a], times[b])
    for name in cases:
        t = times[name]
        res.add(TRAIN_STEP, name, dev, "step_time_s", statistics.median(t), iqr(t), ratio if name == a else 1.0,
                len(t))
    res.add(TRAIN_STEP, a, dev, "params", p_ours, 0.0, p_ours / p_sj, 1)
    res.add(TRAIN_STEP, b, dev, "params", p_sj, 0.0, 1.0, 1)
    res.add(TRAIN_STEP, a, dev, "tokens", t_ours, 0.0, t_ours / t_sj, 1)
    res.add(TRAIN_STEP, b, dev, "tokens", t_sj, 0.0, 1.0, 1)
    log(f"[1] {label}train step: ours {statistics.median(times[a]) * 1e3:.1f} ms, spikingjelly "
        f"{statistics.median(times[b]) * 1e3:.1f} ms (medians of {cfg.reps_train}); ours/spikingjelly = {ratio:.3f}")
    met = ratio <= TARGET_STEP_RATIO
    res.targets.append(Target(f"train step {label}ours/spikingjelly", ratio, f"<= {TARGET_STEP_RATIO:.2f}", met))
    if profile and not met:
        res.profiles[f"part 1: {label}ours, one training step"] = profile_top(cases[a], device)
        res.profiles[f"part 1: {label}spikingjelly, one training step"] = profile_top(cases[b], device)
