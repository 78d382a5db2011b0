"""Fit one run: AdamW + warmup/cosine, label smoothing, optional mixup/TET, autocast per ``train.amp``,
``reset_net`` after every step, a resumable checkpoint after every epoch.

``fit(..., distributed=True)`` trains the run on every rank of the initialised default process group (DDP; the
ranks come from ``suite.run.distributed``): the global batch stays ``train.batch_size`` (each rank takes
``batch_size / world_size`` images of one per-epoch permutation, sharded by rank), gradients are averaged by DDP,
an epoch's training metrics are summed over ranks, and rank 0 alone validates, checkpoints and calls the
callbacks. Without it (one process) nothing here touches ``torch.distributed``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from baselines.temporal import tet_loss
from suite.data import DataBundle, make_loader
from suite.models import Backbone, build_model
from suite.models.lif_fused import compiled_kernels
from suite.models.neurons import use_backend
from suite.models.policies.calibrate import CALIBRATION_IMAGES, calibrate_gate
from suite.models.policies.tokens import HALTING_LOSSES, loss_warmup
from suite.names import CHECKPOINT
from suite.train import compiled
from suite.train.checkpoint import (
    get_rng,
    load_checkpoint,
    load_parent_weights,
    load_weights,
    save_checkpoint,
    set_rng,
    start_from_checkpoint,
    state_digest,
)
from suite.train.precision import amp_dtype, autocast, grad_scaler
from suite.train.recipe import ModelEma, mix_batch, mixing, repeated_indices, timm_epoch_lambda

log = logging.getLogger("spikesuite")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the run is recorded as failed with this reason."""


class InjectedFault(RuntimeError):
    """Raised by ``train.inject_fault: error`` so the robustness tests can fail a run on purpose."""


class StoppedByRankZero(RuntimeError):
    """A distributed run's rank 0 stopped the run after an epoch (a callback or its checkpoint failed); the other
    ranks raise this with rank 0's reason."""


@dataclass
class FitResult:
    model: Backbone
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    resumed_from_epoch: int = 0
    compile: dict | None = None  # how train.compile resolved (suite.train.compiled.CompileDecision.record)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_model(run, data: DataBundle) -> Backbone:  # run: suite.config.RunConfig
    return build_model(run.model, run.tokens, run.time, in_channels=data.in_channels, image_size=data.image_size,
                       num_classes=data.num_classes)


def calibrate(run, model: Backbone, data: DataBundle, device: torch.device, *, log_it: bool = True) -> None:
    """``tokens.halting.init_fraction``: set the gate's shift on the first ``CALIBRATION_IMAGES`` training images
    (after the parent's weights are in, when fine-tuning). The RNG is restored, so calibrating draws nothing from
    the training's random stream (augmentation of the calibration images included)."""
    hc = run.tokens.halting
    if hc is None or hc.init_fraction is None:
        return
    rng = get_rng()
    try:
        n = min(CALIBRATION_IMAGES, len(data.train))
        x, _ = next(iter(make_loader(Subset(data.train, range(n)), batch_size=n, shuffle=False, seed=0)))
        shift, reached = calibrate_gate(model, x.to(device), hc.init_fraction)
    finally:
        set_rng(rng)
    if log_it:
        log.info("%s: halting gate calibrated to keep %.3f of the token-units (target %.3f, shift %.3f)",
                 run.variant, reached, hc.init_fraction, shift)


def lr_lambda(run, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warmup to lr, then cosine to min_lr, then ``cooldown_epochs`` at min_lr, per optimizer step (as a
    factor of lr). The warm-up starts at ``warmup_lr`` (its first step takes exactly warmup_lr, as timm's first
    epoch); unset, it keeps the suite's first rule (first step at min_lr + one step's rise), so existing runs
    train as before."""
    tc = run.train
    if tc.lr_schedule == "timm_epoch":
        return timm_epoch_lambda(tc, steps_per_epoch)
    warm = int(tc.warmup_epochs * steps_per_epoch)
    total = max(1, (tc.epochs - tc.cooldown_epochs) * steps_per_epoch)  # the cosine ends where the cooldown starts
    floor = tc.min_lr / tc.lr
    start, shift = (floor, 1) if tc.warmup_lr is None else (tc.warmup_lr / tc.lr, 0)

    def factor(step: int) -> float:
        if step < warm:
            return start + (1 - start) * (step + shift) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def task_loss(run, out, target: torch.Tensor) -> torch.Tensor:
    tc = run.train
    if tc.loss == "tet" and out.step_logits is not None:
        return tet_loss(out.step_logits, target, lam=tc.tet_lambda, label_smoothing=tc.label_smoothing)
    return F.cross_entropy(out.logits, target, label_smoothing=tc.label_smoothing)


def per_rank_batch(batch_size: int, world: int) -> int:
    """Images per rank and step when ``world`` ranks share a global batch of ``batch_size``."""
    if batch_size % world:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the {world} ranks of the run "
                         f"(nproc_per_run): each rank takes an equal share of the global batch")
    return batch_size // world


def may_leave_parameters_unused(run) -> bool:
    """Token policies that skip work for some tokens (halting, drop, select), for which DDP looks for parameters
    left out of a step's graph (``find_unused_parameters``, as A-ViT trains). The safe setting rather than a need
    today: the masked training forward keeps every parameter in the graph (every variant kind also trains on 2
    ranks without it, halting every token at its first unit included); a forward that skips layers would not."""
    t = run.tokens
    return any(p is not None for p in (t.halting, t.drop, t.select))


def shard_indices(n: int, *, world: int, rank: int, seed: int) -> list[int]:
    """``torch.utils.data.DistributedSampler``'s rule (shuffle, no drop_last): one permutation of ``range(n)``
    drawn from ``seed``, padded by repeating its head to a multiple of ``world``; rank ``r`` takes positions
    ``r, r + world, ...``. Every rank gets the same number of images, so every rank takes the same number of
    steps, and at step ``j`` the ranks together hold positions ``j * B .. (j + 1) * B - 1`` of the permutation."""
    g = torch.Generator()
    g.manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    total = math.ceil(n / world) * world
    perm += (perm * math.ceil(total / max(1, n)))[:total - n]
    return perm[rank:total:world]


def fit(run, data: DataBundle, run_dir: Path, *, device: torch.device, progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, float]], None]] = (), batch_size: int | None = None,
        distributed: bool = False) -> FitResult:
    """Train ``run`` (a RunConfig), resuming from ``run_dir/checkpoint.pt`` when one exists.

    ``callbacks`` are called with each finished epoch's row (after its checkpoint is saved): records, tracking,
    a search's pruning (which stops the run by raising) all hook in here. ``distributed``: this process is one
    rank of the default process group (see the module docstring); ``batch_size`` is the global batch."""
    tc = run.train
    dist = _Ranks() if distributed else None
    main = dist is None or dist.rank == 0
    seed_everything(run.seed)
    use_backend(run.model.neuron.backend, device)  # before the first forward: spikingjelly caches its choice
    model = make_model(run, data).to(device)
    bs = batch_size or tc.batch_size
    local_bs = per_rank_batch(bs, dist.world) if dist else bs
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    world = dist.world if dist else 1
    loader_len = math.ceil(math.ceil(len(data.train) / world) / local_bs)  # = ceil(n / bs) on one rank
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(run, loader_len))
    amp = amp_dtype(tc.amp, device)
    scaler = grad_scaler(amp, device)
    history: list[dict[str, float]] = []
    start_epoch, spent = 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    state = _resume_state(ckpt_path, device, dist)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start_epoch, spent = state["history"], state["epoch"], state["train_time_s"]
        if "scaler" in state:  # fp16 loss scale (absent from checkpoints written without one)
            scaler.load_state_dict(state["scaler"])
    elif run.init_sha256 is not None:  # a checkpoint file (train.init_from: {checkpoint, format})
        fresh = start_from_checkpoint(model, run)
        if main:
            log.info("%s starts from %s (%s)%s", run.variant, run.train.init_from.checkpoint, run.train.init_from.format,
                     f" ({len(fresh)} tensor(s) of its own keep their initialisation)" if fresh else "")
    elif run.init_run is not None:  # fine-tuning starts from the parent's final weights (a resume from its own)
        fresh = load_parent_weights(model, load_weights(run_dir.parent / run.init_run, device), run.init_run)
        if main:
            log.info("%s starts from run %s%s", run.variant, run.init_run,
                     f" ({len(fresh)} tensor(s) of its own keep their initialisation)" if fresh else "")
    if state is None:  # a resume has the calibrated shift in its checkpoint already
        calibrate(run, model, data, device, log_it=main)
    ema = ModelEma(model, tc.ema) if tc.ema is not None and main else None  # rank 0 alone validates and saves
    if ema is not None and state is not None and "ema" in state:
        ema.module.load_state_dict(state["ema"])
    if dist is None:
        if state is not None:
            set_rng(state["rng"])
    else:
        _rank_rng(state, run.seed, dist, start_epoch)
    train_model: nn.Module = model
    if dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=may_leave_parameters_unused(run))
    # the whole run's images, not what is left: a resumed run records the decision its first start made (same cache)
    decision = _compile_decision(run, model, data, device, local_bs, tc.epochs * len(data.train))
    if main:
        log.info("%s: %s compiled (%s)", run.variant, "training forward" if decision.compiled else "not", decision.reason)
    eager_model = train_model  # the epoch's last, smaller batch runs here (compiled graphs keep the full shape)
    if decision.compiled:
        train_model = compiled.compile_model(train_model)
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        row = _train_epoch(run, (train_model, eager_model), model, data, (opt, sched, scaler, ema), epoch, device,
                           amp, local_bs, progress and main, dist)
        if epoch == start_epoch and main:
            compiled.mark_compiled(decision, time.perf_counter() - t0)
        if dist is not None:
            dist.broadcast_buffers(model)  # BN running statistics: rank 0's, so every rank holds the checkpoint's
            rngs = dist.gather_object(get_rng())
            _check_identical(dist, model, epoch)
        failure: BaseException | None = None
        if main:
            try:
                row.update(_validate(model if ema is None else ema.module, data, device, amp, tc.eval_batch_size,
                                     tc.num_workers, tc.compile))
                spent += time.perf_counter() - t0
                row.update(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], epoch_time_s=time.perf_counter() - t0)
                history.append(row)
                ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "history": history, "epoch": epoch + 1, "train_time_s": spent, "rng": get_rng()}
                if scaler.is_enabled():
                    ckpt["scaler"] = scaler.state_dict()
                if ema is not None:  # the evaluated weights (checkpoint.eval_weights); "model" resumes training
                    ckpt["ema"] = ema.module.state_dict()
                if dist is not None:
                    ckpt.update(world_size=dist.world, rng_ranks=rngs)
                save_checkpoint(ckpt_path, ckpt)
                for callback in callbacks:
                    callback(row)
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the other ranks know
                failure = exc
        if dist is not None:
            reason = dist.broadcast_object(f"{type(failure).__name__}: {failure}" if failure is not None else "")
            if reason and failure is None:
                raise StoppedByRankZero(f"rank 0 stopped the run after epoch {epoch + 1}: {reason}")
        if failure is not None:
            raise failure
    return FitResult(model if ema is None else ema.module, history, spent, start_epoch, decision.record())


def _compile_decision(run, model: Backbone, data: DataBundle, device: torch.device, bs: int,
                      images: int) -> compiled.CompileDecision:
    """``train.compile`` resolved for this run (``suite.train.compiled``): the full batch's shape for the cache's
    shape key, two training images for auto's FLOP count. The RNG is restored: deciding draws nothing from the
    training's random stream (augmentation of the sample images included). ``off`` reads no image, so the training
    split sees the loader's requests alone."""
    if run.train.compile == "off":
        return compiled.decide(run, model, None, images, None, device)
    rng = get_rng()
    try:
        first = data.train[0][0]
        sample = torch.stack([first, data.train[min(1, len(data.train) - 1)][0]]).to(device)
        return compiled.decide(run, model, sample, images, (bs, *first.shape), device)
    finally:
        set_rng(rng)


class _Ranks:
    """The default process group as ``fit`` uses it: rank, world size and the few collectives it needs."""

    def __init__(self) -> None:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            raise RuntimeError("fit(distributed=True) needs an initialised default process group "
                               "(suite.run.distributed starts one)")
        self.d = tdist
        self.rank, self.world = tdist.get_rank(), tdist.get_world_size()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        self.d.all_reduce(t, op=self.d.ReduceOp.SUM)
        return t

    def broadcast_object(self, obj):
        box = [obj]
        self.d.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj) -> list:
        out = [None] * self.world
        self.d.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: nn.Module) -> None:
        for b in module.buffers():
            self.d.broadcast(b, src=0)


def _resume_state(path: Path, device: torch.device, dist: _Ranks | None) -> dict | None:
    """The checkpoint to resume from, or None. With several ranks, rank 0 decides (a shared filesystem may show
    the file to some ranks before others) and every rank must then read the same epoch."""
    if dist is None:
        return load_checkpoint(path, device) if path.exists() else None
    state = load_checkpoint(path, device) if dist.rank == 0 and path.exists() else None
    epoch = dist.broadcast_object(int(state["epoch"]) if state is not None else 0)
    if dist.rank == 0 or not epoch:
        return state
    state = load_checkpoint(path, device) if path.exists() else None
    if state is None or int(state["epoch"]) != epoch:
        raise RuntimeError(f"rank {dist.rank} reads {path} at epoch {None if state is None else state['epoch']}, "
                           f"rank 0 at epoch {epoch}: is run_dir on a filesystem every rank shares?")
    return state


def _rank_rng(state: dict | None, seed: int, dist: _Ranks, epoch: int) -> None:
    """Each rank's random state: a fresh run seeds rank r > 0 apart from rank 0 (independent drop masks, Gumbel
    noise and mixup draws per shard; the model was initialised identically before); a resumed run restores every
    rank's own state when the checkpoint was written by as many ranks."""
    if state is not None and state.get("world_size") == dist.world and len(state.get("rng_ranks") or ()) == dist.world:
        set_rng(state["rng_ranks"][dist.rank])
        return
    if state is not None:
        if dist.rank == 0:
            log.warning("resuming a checkpoint written by %s rank(s) on %d ranks: training continues, but its "
                        "data order and random draws differ from an uninterrupted run",
                        state.get("world_size", 1), dist.world)
        if dist.rank == 0:
            set_rng(state["rng"])
            return
    if dist.rank:
        seed_everything(seed * 1_000_003 + 7_919 * dist.rank + epoch)


def _check_identical(dist: _Ranks, model: nn.Module, epoch: int) -> None:
    """Every rank's digest of its whole state after an epoch (DDP keeps parameters equal; buffers were just
    broadcast): logged by rank 0, a warning when they differ."""
    digests = dist.gather_object(state_digest(model.state_dict()))
    if dist.rank:
        return
    if len(set(digests)) == 1:
        log.debug("epoch %d: state sha256 %s identical on all %d ranks %s", epoch + 1, digests[0], dist.world,
                  digests)
    else:
        log.warning("epoch %d: the ranks hold different states (sha256 per rank %s); rank 0's is checkpointed",
                    epoch + 1, digests)


def _train_epoch(run, train_models: tuple[nn.Module, nn.Module], model: Backbone, data: DataBundle, optim: tuple,
                 epoch: int, device: torch.device, amp: torch.dtype | None, bs: int, progress: bool,
                 dist: _Ranks | None = None) -> dict[str, float]:
    """One epoch; ``train_models`` is (the module a full batch runs through, possibly compiled; the same module
    eager, for a smaller last batch); ``optim`` is (optimizer, scheduler, grad scaler, weights' EMA or None); ``bs``
    is this rank's batch. With ``dist``, the row's sums are taken over every rank."""
    tc = run.train
    train_model, eager_model = train_models
    opt, sched, scaler, ema = optim
    model.train()
    seed = run.seed * 100_003 + epoch
    if tc.repeated_aug > 1:  # timm RASampler: the copies of an image go to consecutive ranks (one rank: one batch)
        world, rank = (dist.world, dist.rank) if dist is not None else (1, 0)
        picked = repeated_indices(len(data.train), world=world, rank=rank, seed=seed, repeats=tc.repeated_aug)
        loader = make_loader(Subset(data.train, picked), batch_size=bs, shuffle=False, seed=seed * 1_009 + rank,
                             num_workers=tc.num_workers, pin_memory=device.type == "cuda")
    elif dist is None:
        loader = make_loader(data.train, batch_size=bs, shuffle=True, seed=seed, num_workers=tc.num_workers,
                             pin_memory=device.type == "cuda")
    else:
        shard = Subset(data.train, shard_indices(len(data.train), world=dist.world, rank=dist.rank, seed=seed))
        loader = make_loader(shard, batch_size=bs, shuffle=False, seed=seed * 1_009 + dist.rank,
                             num_workers=tc.num_workers, pin_memory=device.type == "cuda")
    mix = mixing(tc, epoch)
    sums = torch.zeros(3, device=device)  # loss sum, correct, seen: kept on device (no sync per step)
    aux_sums: dict[str, torch.Tensor] = {}
    bar = tqdm(loader, desc=f"{run.variant} s{run.seed} ep {epoch + 1}/{tc.epochs}", leave=False,
               disable=not progress, unit="batch")
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        target = y
        if mix:
            x, target = mix_batch(x, y, data.num_classes, tc)
        with autocast(amp, device):
            # compiled for the full batch shape only: the epoch's last, smaller batch runs eager (no recompile)
            out = (train_model if x.shape[0] == bs else eager_model)(x)
            ramp = loss_warmup(run.tokens.halting, epoch + i / len(loader))
            if ramp < 1:
                out.aux.update({k: ramp * v for k, v in out.aux.items() if k in HALTING_LOSSES})
            loss = task_loss(run, out, target) + sum(out.aux.values(), torch.zeros((), device=device))
        if tc.inject_fault == "nan" and epoch >= 1:
            loss = loss * float("nan")
        if tc.inject_fault == "error" and epoch >= 1:
            raise InjectedFault("train.inject_fault: error (a deliberate failure for the robustness tests)")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # under DDP: gradients averaged over the ranks here (scaled: fp16 only)
        if tc.grad_clip is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(opt)  # skipped where fp16 gradients overflowed; the scale then shrinks
        scaler.update()
        sched.step()
        if ema is not None:
            ema.update(model)
        functional.reset_net(model)  # neurons are stateful: every batch starts from rest (on every rank)
        with torch.no_grad():
            sums += torch.stack([loss.detach().float() * x.shape[0],
                                 (out.logits.argmax(-1) == y).sum().float(), torch.tensor(float(x.shape[0]))
                                 .to(device)])
            for k, v in out.aux.items():
                aux_sums[k] = aux_sums.get(k, torch.zeros((), device=device)) + v.detach().float()
        if i % 20 == 19:  # one host sync every 20 steps for the bar and the NaN guard (every rank: same steps)
            _guard(sums[0], dist)
            bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.3f}")
    _guard(sums[0], dist)
    steps = len(loader)
    if dist is not None:
        dist.all_sum(sums)
        keys = sorted(set().union(*dist.gather_object(sorted(aux_sums))))
        aux = torch.stack([aux_sums.get(k, torch.zeros((), device=device)) for k in keys]) if keys else None
        if aux is not None:
            dist.all_sum(aux)
            aux_sums = dict(zip(keys, aux))
        steps *= dist.world
    n = float(sums[2])
    row = {"train_loss": float(sums[0]) / n, "train_acc": 100 * float(sums[1]) / n}
    row.update({f"train_{k}": float(v) / max(1, steps) for k, v in aux_sums.items()})
    return row


def _guard(loss_sum: torch.Tensor, dist: _Ranks | None = None) -> None:
    if dist is not None:  # every rank stops together when any rank's loss is not finite
        loss_sum = dist.all_sum(loss_sum.detach().clone())
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(f"training loss is {float(loss_sum)} (not finite)")


@torch.no_grad()
def _validate(model: Backbone, data: DataBundle, device: torch.device, amp: torch.dtype | None,
              bs: int, workers: int = 0, kernels: str = "auto") -> dict[str, float]:
    """Validation accuracy and token share; ``kernels``: ``train.compile``, for the LIF kernels
    (``compiled.eval_kernels``)."""
    if data.val is None or len(data.val) == 0:
        return {}
    model.eval()
    correct = seen = 0
    units = torch.zeros((), device=device)
    with compiled_kernels(compiled.eval_kernels(kernels, len(data.val), device)):
        for x, y in make_loader(data.val, batch_size=bs, shuffle=False, seed=0, num_workers=workers,
                                pin_memory=device.type == "cuda"):
            x, y = x.to(device), y.to(device)
            with autocast(amp, device):
                out = model(x)
            functional.reset_net(model)
            correct += int((out.logits.argmax(-1) == y).sum())
            seen += x.shape[0]
            units += out.active_tokens.sum()
    return {"val_acc": 100 * correct / seen, "val_token_pct": 100 * float(units) / (seen * model.dense_token_units)}
