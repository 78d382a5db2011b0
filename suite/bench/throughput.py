"""Part 4: throughput of the suite's own training and evaluation (issue 26), at the Fashion-MNIST reference
configuration (``studies/adaptive_fashion_mnist.yaml``: Spikformer depth 2, dim 64, 8 heads, T 4, 28x28x1 -> 49
tokens, batch 128) and at part 1's CIFAR-shaped configuration.

Cases per configuration, timed interleaved round by round (``common.interleave``):

- ``<cfg>/train_eager``: one training step (forward + loss + backward + AdamW + ``reset_net``) in eager mode;
- ``<cfg>/train_compiled``: the same step through ``suite.train.compiled.compile_model`` (inductor, the persistent
  cache); the first compiled step is timed apart (``compile_s``: cold or warm cache, as found);
- ``<cfg>/train_default``: what ``train.compile: auto`` picks for the reference study's dense run at that shape
  (one of the two above; row ``default_compiled`` says which), ratio = eager / default step time;
- ``<cfg>/eval_counted``: ``suite.evaluate.evaluate`` (counting, every metric a run records) over ``eval_images``
  synthetic images at the evaluation batch size, with the LIF kernels ``train.compile: auto`` picks for the
  reference study's evaluation (``ref_eval_images``: compiled from ``EVAL_COMPILE_MIN_IMAGES``), and
  ``<cfg>/eval_uncounted``: the same batches through the eval-mode forward without counting, same kernels;
  ``<cfg>/eval_counted_eager``: counted with the eager LIF loop. Images/s ratios: counted evaluation / default
  training (target >= 2.5x), counted / uncounted (the cost of counting), counted / counted eager (the kernels).

Part 3 (the smoke study in a fresh results directory) is the third throughput figure; its target is 120 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from suite.bench.common import (
    THROUGHPUT,
    BenchConfig,
    BenchResult,
    Log,
    Target,
    autocast,
    interleave,
    iqr,
    paired_ratio,
    sync,
)

TARGET_DEFAULT_STEP = 2.0  # default training step >= 2x today's eager step
TARGET_EVAL_VS_TRAIN = 2.5  # counted evaluation images/s >= 2.5x training images/s
ROUNDS = 5  # timed rounds per configuration (each round runs a 1k-image evaluation: part 1's 9 would take long)
QUICK_BACKEND = "aot_eager"  # --quick checks the plumbing without inductor's minutes of code generation


@dataclass(frozen=True)
class ThroughputShape:
    name: str
    depth: int
    dim: int
    heads: int
    T: int
    batch: int
    eval_batch: int
    image: int
    channels: int
    classes: int
    train_images: int  # the reference study's training images x epochs of its dense run (auto's estimate)
    eval_images: int  # timed per round
    ref_eval_images: int = 2000  # the reference study's evaluation (auto's choice of LIF kernels)


FASHION = ThroughputShape("fashion", depth=2, dim=64, heads=8, T=4, batch=128, eval_batch=256, image=28, channels=1,
                          classes=10, train_images=6 * 2700, eval_images=1024)
CIFAR = ThroughputShape("cifar", depth=2, dim=128, heads=8, T=4, batch=32, eval_batch=256, image=32, channels=3,
                        classes=10, train_images=6 * 2700, eval_images=512)
QUICK_SHAPE = ThroughputShape("quick", depth=1, dim=16, heads=2, T=2, batch=16, eval_batch=32, image=8, channels=1,
                              classes=4, train_images=64, eval_images=64,
                              ref_eval_images=64)


def _study_text(s: ThroughputShape) -> str:
    return f"""
name: bench_throughput
dataset: {{name: synthetic, synthetic: {{num_classes: {s.classes}, image_size: {s.image}, channels: {s.channels},
  train_size: 2, test_size: {s.eval_images}}}}}
model: {{depth: {s.depth}, dim: {s.dim}, heads: {s.heads}, T: {s.T}}}
train: {{epochs: 1, batch_size: {s.batch}, eval_batch_size: {s.eval_batch}}}
eval: {{heatmap_images: 0}}
variants: {{dense: {{}}}}
"""


def bench_throughput(cfg: BenchConfig, quick: bool, device: torch.device, res: BenchResult, log: Log) -> None:
    """Part 4 for each configuration (one tiny one with ``quick``)."""
    for shape in (QUICK_SHAPE,) if quick else (FASHION, CIFAR):
        _one(shape, cfg, quick, device, res, log)


def _one(s: ThroughputShape, cfg: BenchConfig, quick: bool, device: torch.device, res: BenchResult,
         log: Log) -> None:
    from suite.config import expand, parse_study
    from suite.data import load_data
    from suite.evaluate import evaluate
    from suite.models.lif_fused import compiled_kernels
    from suite.train import compiled
    from suite.train.loop import make_model

    dev, p = str(device), f"{s.name}/"
    run = expand(parse_study(_study_text(s)))[0].config
    data = load_data(run.dataset)
    torch.manual_seed(0)
    model = make_model(run, data).to(device)
    opt = torch.optim.AdamW(model.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(s.batch, s.channels, s.image, s.image, generator=g).to(device)
    y = torch.randint(0, s.classes, (s.batch,), generator=g).to(device)
    decision = compiled.decide(run, model, x[:2], s.train_images, tuple(x.shape), device)
    fast = compiled.compile_model(model, QUICK_BACKEND if quick else None)

    def step(m) -> None:
        model.train()
        with autocast(device):
            loss = F.cross_entropy(m(x).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        functional.reset_net(model)

    t0 = time.perf_counter()
    step(fast)
    sync(device)
    compile_s = time.perf_counter() - t0
    log(f"[4] {s.name}: first compiled step {compile_s:.1f} s ({'warm' if decision.warm_cache else 'cold'} cache "
        f"{decision.cache_dir}); auto for the reference study's dense run: {decision.reason}")

    eval_x = torch.rand(s.eval_batch, s.channels, s.image, s.image, generator=g).to(device)
    batches = -(-s.eval_images // s.eval_batch)

    kernels = compiled.eval_kernels(run.train.compile, s.ref_eval_images, device)
    log(f"[4] {s.name}: evaluation LIF kernels for a {s.ref_eval_images}-image evaluation (auto): "
        f"{'compiled' if kernels else 'eager'}")

    @torch.no_grad()
    def uncounted() -> None:
        model.eval()
        with compiled_kernels(kernels):
            for _ in range(batches):
                with autocast(device):
                    model(eval_x)
                functional.reset_net(model)

    cases = {"train_eager": lambda: step(model), "train_compiled": lambda: step(fast),
             "eval_counted": lambda: evaluate(model, run, data, device, maps=False, kernels=kernels),
             "eval_counted_eager": lambda: evaluate(model, run, data, device, maps=False, kernels=False),
             "eval_uncounted": uncounted}
    reps = min(cfg.reps_train, ROUNDS) if not quick else 2
    times = interleave(cases, warmup=cfg.warmup, reps=reps, device=device)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    default = "train_compiled" if decision.compiled else "train_eager"
    n = len(times["train_eager"])
    res.add(THROUGHPUT, p + "train_eager", dev, "step_time_s", med["train_eager"], iqr(times["train_eager"]), 1.0, n)
    speed = paired_ratio(times["train_eager"], times["train_compiled"])
    res.add(THROUGHPUT, p + "train_compiled", dev, "step_time_s", med["train_compiled"],
            iqr(times["train_compiled"]), speed, n)
    res.add(THROUGHPUT, p + "train_compiled", dev, "compile_s", compile_s, 0.0, float(decision.warm_cache), 1)
    default_speed = paired_ratio(times["train_eager"], times[default])
    res.add(THROUGHPUT, p + "train_default", dev, "step_time_s", med[default], iqr(times[default]), default_speed, n)
    res.add(THROUGHPUT, p + "train_default", dev, "default_compiled", float(decision.compiled), 0.0,
            float(decision.compiled), 1)
    train_ips = [s.batch / t for t in times[default]]
    count_ips = [s.eval_images / t for t in times["eval_counted"]]
    plain_ips = [batches * s.eval_batch / t for t in times["eval_uncounted"]]
    vs_train = paired_ratio(count_ips, train_ips)
    res.add(THROUGHPUT, p + "train_default", dev, "images_per_s", s.batch / med[default], 0.0, 1.0, n)
    res.add(THROUGHPUT, p + "eval_counted", dev, "images_per_s", s.eval_images / med["eval_counted"], 0.0, vs_train, n)
    res.add(THROUGHPUT, p + "eval_uncounted", dev, "images_per_s", batches * s.eval_batch / med["eval_uncounted"],
            0.0, paired_ratio(plain_ips, train_ips), n)
    vs_plain = paired_ratio(count_ips, plain_ips)  # < 1: what counting costs
    res.add(THROUGHPUT, p + "eval_counted", dev, "vs_uncounted", vs_plain, 0.0, vs_plain, n)
    eager_ips = [s.eval_images / t for t in times["eval_counted_eager"]]
    res.add(THROUGHPUT, p + "eval_counted_eager", dev, "images_per_s", s.eval_images / med["eval_counted_eager"],
            0.0, paired_ratio(eager_ips, train_ips), n)
    res.add(THROUGHPUT, p + "eval_counted", dev, "vs_eager_kernels", paired_ratio(count_ips, eager_ips), 0.0,
            paired_ratio(count_ips, eager_ips), n)
    log(f"[4] {s.name}: training step eager {med['train_eager'] * 1e3:.0f} ms, compiled "
        f"{med['train_compiled'] * 1e3:.0f} ms ({speed:.2f}x), default ({default}) {default_speed:.2f}x; evaluation "
        f"with counting {s.eval_images / med['eval_counted']:.0f} images/s = {vs_train:.2f}x training's, without "
        f"counting {batches * s.eval_batch / med['eval_uncounted']:.0f} images/s, with counting and the eager LIF "
        f"{s.eval_images / med['eval_counted_eager']:.0f} images/s")
    if not quick:
        res.targets.append(Target(f"{s.name}: default training step vs eager (compiled: {decision.compiled})",
                                  default_speed, f">= {TARGET_DEFAULT_STEP:.1f}x", default_speed >= TARGET_DEFAULT_STEP))
        res.targets.append(Target(f"{s.name}: compiled training step vs eager", speed,
                                  f">= {TARGET_DEFAULT_STEP:.1f}x", speed >= TARGET_DEFAULT_STEP))
        res.targets.append(Target(f"{s.name}: evaluation with counting vs training images/s", vs_train,
                                  f">= {TARGET_EVAL_VS_TRAIN:.1f}x", vs_train >= TARGET_EVAL_VS_TRAIN))
