"""Fit one run: AdamW + warmup/cosine, label smoothing, optional mixup/TET, bf16 autocast on CUDA,
``reset_net`` after every step, a resumable checkpoint after every epoch."""

from __future__ import annotations

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
from tqdm.auto import tqdm

from baselines.temporal import tet_loss
from suite.data import DataBundle, make_loader
from suite.models import Backbone, build_model
from suite.names import CHECKPOINT
from suite.train.checkpoint import get_rng, load_checkpoint, save_checkpoint, set_rng


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the run is recorded as failed with this reason."""


class InjectedFault(RuntimeError):
    """Raised by ``train.inject_fault: error`` so the robustness tests can fail a run on purpose."""


@dataclass
class FitResult:
    model: Backbone
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    resumed_from_epoch: int = 0


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


def lr_lambda(run, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warmup to lr, then cosine to min_lr, per optimizer step (as a factor of lr)."""
    tc = run.train
    warm = int(tc.warmup_epochs * steps_per_epoch)
    total = max(1, tc.epochs * steps_per_epoch)
    floor = tc.min_lr / tc.lr

    def factor(step: int) -> float:
        if step < warm:
            return floor + (1 - floor) * (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def task_loss(run, out, target: torch.Tensor) -> torch.Tensor:
    tc = run.train
    if tc.loss == "tet" and out.step_logits is not None:
        return tet_loss(out.step_logits, target, lam=tc.tet_lambda, label_smoothing=tc.label_smoothing)
    return F.cross_entropy(out.logits, target, label_smoothing=tc.label_smoothing)


def fit(run, data: DataBundle, run_dir: Path, *, device: torch.device, progress: bool = True,
        callbacks: Sequence[Callable[[dict[str, float]], None]] = (), batch_size: int | None = None) -> FitResult:
    """Train ``run`` (a RunConfig), resuming from ``run_dir/checkpoint.pt`` when one exists.

    ``callbacks`` are called with each finished epoch's row (after its checkpoint is saved): records, tracking,
    a search's pruning (which stops the run by raising) all hook in here."""
    tc = run.train
    seed_everything(run.seed)
    model = make_model(run, data).to(device)
    bs = batch_size or tc.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loader_len = math.ceil(len(data.train) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(run, loader_len))
    amp = device.type == "cuda" and tc.amp == "auto"
    history: list[dict[str, float]] = []
    start_epoch, spent = 0, 0.0
    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start_epoch, spent = state["history"], state["epoch"], state["train_time_s"]
        set_rng(state["rng"])
    train_model = torch.compile(model) if tc.compile else model
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        row = _train_epoch(run, train_model, model, data, opt, sched, epoch, device, amp, bs, progress)
        row.update(_validate(model, data, device, amp, tc.eval_batch_size))
        spent += time.perf_counter() - t0
        row.update(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], epoch_time_s=time.perf_counter() - t0)
        history.append(row)
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "history": history, "epoch": epoch + 1, "train_time_s": spent, "rng": get_rng(),
        })
        for callback in callbacks:
            callback(row)
    return FitResult(model, history, spent, start_epoch)


def _train_epoch(run, train_model: nn.Module, model: Backbone, data: DataBundle, opt, sched, epoch: int,
                 device: torch.device, amp: bool, bs: int, progress: bool) -> dict[str, float]:
    tc = run.train
    model.train()
    loader = make_loader(data.train, batch_size=bs, shuffle=True, seed=run.seed * 100_003 + epoch,
                         num_workers=tc.num_workers, pin_memory=device.type == "cuda")
    mix = tc.mixup > 0 and (tc.mixup_off_epoch is None or epoch < tc.mixup_off_epoch)
    sums = torch.zeros(3, device=device)  # loss sum, correct, seen: kept on device (no sync per step)
    aux_sums: dict[str, torch.Tensor] = {}
    bar = tqdm(loader, desc=f"{run.variant} s{run.seed} ep {epoch + 1}/{tc.epochs}", leave=False,
               disable=not progress, unit="batch")
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        target = y
        if mix:
            lam = float(np.random.beta(tc.mixup, tc.mixup))
            perm = torch.randperm(x.shape[0], device=device)
            x = lam * x + (1 - lam) * x[perm]
            onehot = F.one_hot(y, data.num_classes).float()
            target = lam * onehot + (1 - lam) * onehot[perm]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = train_model(x)
            loss = task_loss(run, out, target) + sum(out.aux.values(), torch.zeros((), device=device))
        if tc.inject_fault == "nan" and epoch >= 1:
            loss = loss * float("nan")
        if tc.inject_fault == "error" and epoch >= 1:
            raise InjectedFault("train.inject_fault: error (a deliberate failure for the robustness tests)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        functional.reset_net(model)  # neurons are stateful: every batch starts from rest
        with torch.no_grad():
            sums += torch.stack([loss.detach().float() * x.shape[0],
                                 (out.logits.argmax(-1) == y).sum().float(), torch.tensor(float(x.shape[0]))
                                 .to(device)])
            for k, v in out.aux.items():
                aux_sums[k] = aux_sums.get(k, torch.zeros((), device=device)) + v.detach().float()
        if i % 20 == 19:  # one host sync every 20 steps for the bar and the NaN guard
            _guard(sums[0])
            bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.3f}")
    _guard(sums[0])
    n = float(sums[2])
    row = {"train_loss": float(sums[0]) / n, "train_acc": 100 * float(sums[1]) / n}
    row.update({f"train_{k}": float(v) / max(1, len(loader)) for k, v in aux_sums.items()})
    return row


def _guard(loss_sum: torch.Tensor) -> None:
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(f"training loss is {float(loss_sum)} (not finite)")


@torch.no_grad()
def _validate(model: Backbone, data: DataBundle, device: torch.device, amp: bool, bs: int) -> dict[str, float]:
    if data.val is None or len(data.val) == 0:
        return {}
    model.eval()
    correct = seen = 0
    units = torch.zeros((), device=device)
    for x, y in make_loader(data.val, batch_size=bs, shuffle=False, seed=0):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        functional.reset_net(model)
        correct += int((out.logits.argmax(-1) == y).sum())
        seen += x.shape[0]
        units += out.active_tokens.sum()
    return {"val_acc": 100 * correct / seen, "val_token_pct": 100 * float(units) / (seen * model.dense_token_units)}
