"""Evaluate a trained model on real data: accuracy, token and timestep counts, firing rates, operation counts and
energy, early exit, halting maps (images/s is ``spikesuite bench``'s: no timing pass here; records written before
still hold ``images_per_s``, and every reader tolerates its absence).

One path for every evaluation: ``evaluate`` measures a model; ``evaluate_checkpoint`` rebuilds a run's model with
evaluation-time settings changed (layered on the run's own ``eval.apply``), loads the trained weights and measures
it: a run's overrides, ``spikesuite evaluate`` and a search's eval-stage trials all go through it (one checkpoint,
several points on an accuracy/cost curve)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.utils.data import Subset

from baselines.temporal import early_exit
from suite.config import RunConfig, apply_overrides, eval_updates
from suite.data import DataBundle, make_loader
from suite.diagnostics import (
    BACKGROUND_DATASETS,
    OCCLUSION_IMAGES,
    ActiveShares,
    Occlusion,
    foreground,
    occlusion,
)
from suite.energy import Counts, convention_metrics, neurobench_metrics
from suite.metrics import (
    energy_metrics,
    exit_scaled,
    firing_rates,
    merge_counts,
    merge_spikes,
    ops_weighted_steps,
    temporal_similarity_mean,
    token_pct,
)
from suite.models import Backbone
from suite.models.context import release_scratch
from suite.models.lif_fused import compiled_kernels
from suite.models.policies import overhead
from suite.train import make_model
from suite.train.compiled import eval_kernels

COUNTING_VERSION = 2  # details.counting_version: token-units under the one rule (older: suite.records_migrate)
COUNTING = ("token_units: (token, block, timestep) units the blocks processed, summed over blocks and steps; a "
            "halted, dropped or merged-away token, a time-masked step and a step after an early exit are not "
            "processed; a merged token counts once; token_pct = % of the dense model's units at reference_T steps "
            "(dense_token_units / T x reference_T)")
EXIT_NOTE = ("early exit: block layers (and a per-step stem) scaled by exit_step_share = mean exit step / T, the "
             "head and a stem run once are not (details.ops: as counted over all T steps)")


@dataclass
class EvalResult:
    metrics: dict[str, float]  # flat scalars: the runs table columns
    details: dict[str, Any] = field(default_factory=dict)  # per-layer vectors, histograms (metrics.json)
    maps: dict[str, np.ndarray] | None = None  # halting maps sample (maps.npz)


@torch.no_grad()
def evaluate(model: Backbone, run, data: DataBundle, device: torch.device, *, maps: bool = True,
             kernels: bool | None = None) -> EvalResult:
    """Evaluate ``model`` for ``run`` (a RunConfig) on its evaluation split. ``kernels``: run the LIF as compiled
    kernels (None: as ``train.compile`` decides for this many images, ``suite.train.compiled.eval_kernels``)."""
    ec = run.eval
    ds = data.test if ec.split == "test" or data.val is None else data.val
    model.eval()
    loader = make_loader(ds, batch_size=run.train.eval_batch_size, shuffle=False, seed=0,
                         num_workers=run.train.num_workers, pin_memory=device.type == "cuda")
    L, T = model.depth, model.T
    per_step = float(sum(model.block_tokens()))  # the dense model's token-units per timestep
    ops: dict = {}
    policy_ops: dict = {}  # a policy's own work (Context.overhead), apart from the synaptic layers
    spikes: dict = {}
    static_input = True
    similarity: dict = {}
    correct = seen = 0
    loss_sum = 0.0
    active_sum = torch.zeros(L, T, dtype=torch.float64)
    units: list[torch.Tensor] = []
    exit_steps: list[torch.Tensor] = []
    exit_correct = 0
    depth_hist = torch.zeros(L * T + 1)
    sample: dict[str, list] = {"images": [], "maps": [], "labels": [], "pred": []}
    n_maps = ec.heatmap_images if maps else 0
    # the dataset-level diagnostics read every batch's maps (a token policy; a dense model keeps every token)
    shares = ActiveShares() if model.token_policy is not None and run.dataset.name in BACKGROUND_DATASETS else None
    images = len(ds) if ec.max_batches is None else min(len(ds), ec.max_batches * run.train.eval_batch_size)
    kernels = eval_kernels(run.train.compile, images, device) if kernels is None else kernels
    with compiled_kernels(kernels):
        for b, (x, y) in enumerate(loader):
            if ec.max_batches is not None and b >= ec.max_batches:
                break
            x, y = x.to(device), y.to(device)
            static_input = x.dim() == 4  # [B, C, H, W]: the same image at every step (event data: [B, T, ...])
            # counted in fp32 always, even inside a caller's autocast: bf16 would change membrane sums, so spikes and counts
            with torch.autocast(device.type, enabled=False):
                out = model(x, count=True, record_maps=shares is not None or sum(map(len, sample["images"])) < n_maps)
            functional.reset_net(model)
            logits = out.logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            seen += x.shape[0]
            act = processed_units(out)  # [B, L, T]
            if run.time.exit is not None and out.step_logits is not None:
                res = early_exit(out.step_logits.float(), run.time.exit)
                exit_steps.append(res.exit_step.cpu())
                exit_correct += int((res.pred == y).sum())
                macs, acs = overhead.exit_test(float(res.exit_step.sum()), model.head.out_features, model.head.in_features)
                out.ctx.overhead("policy.exit_test", block=-1, macs=macs, acs=acs)
                act = act * (torch.arange(T) < res.exit_step.cpu().view(-1, 1, 1))  # the steps after the exit are skipped
            active_sum += act.sum(0)
            units.append(act.sum((1, 2)))
            ops = merge_counts(ops, out.ctx.ops)
            policy_ops = merge_counts(policy_ops, out.ctx.policy_ops)
            spikes = merge_spikes(spikes, out.ctx.spikes)
            similarity = merge_spikes(similarity, out.ctx.similarity)  # the same [sum, count] bookkeeping
            if out.token_depth is not None:
                depth_hist += torch.bincount(out.token_depth.long().flatten().cpu(), minlength=L * T + 1)[:L * T + 1]
            if shares is not None:
                shares.add(out.maps, foreground(x, model.grid))
            take = n_maps - sum(map(len, sample["images"]))
            if out.maps is not None and take > 0:
                sample["images"].append(x[:take].float().cpu().numpy())
                sample["maps"].append(out.maps[:take].cpu().numpy())
                sample["labels"].append(y[:take].cpu().numpy())
                sample["pred"].append(logits[:take].argmax(-1).cpu().numpy())
                if out.merged_maps is not None:  # new records keep merged-away tokens apart from halted ones
                    sample.setdefault("merged", []).append(out.merged_maps[:take].cpu().numpy())
    release_scratch()
    u = torch.cat(units)
    m: dict[str, float] = {
        "accuracy": 100 * correct / seen,
        "loss": loss_sum / seen,
        "eval_images": float(seen),
        "tokens_per_block_step": float(u.mean()) / (L * T),
        "token_units": float(u.mean()),
        "token_pct": token_pct(float(u.mean()), per_step, ec.reference_T or T),
        "reference_T": float(ec.reference_T or T),
        "dense_token_units": per_step * T,
    }
    details: dict[str, Any] = {
        "active_tokens_block_step": (active_sum / seen).tolist(),
        "firing_rates": firing_rates(spikes),
        "token_units_block": (active_sum.sum(1) / seen).tolist(),
        "counting": COUNTING,
        "counting_version": COUNTING_VERSION,
        "layer_order": model.layer_order(),  # forward order, for tables and figures
    }
    rates = list(details["firing_rates"].values())
    m["firing_rate_mean"] = float(np.mean(rates)) if rates else 0.0
    # STAS's diagnostic: cosine similarity of each block's input tokens at consecutive timesteps (T > 1)
    sims = {blk: s / c for blk, (s, c) in similarity.items() if c}
    if sims:
        details["temporal_similarity"] = sims
        # block 0 behind a stem run once is 1.0 by construction: not in the mean
        mean_sim = temporal_similarity_mean(sims, model.cfg.stem)
        if mean_sim is not None:
            m["temporal_similarity"] = mean_sim
    details["ops"] = {k: vars(v) for k, v in ops.items()}  # as counted: over all T steps, before any exit
    details["policy_ops"] = {k: vars(v) for k, v in policy_ops.items()}
    fired, updated = (sum(v[i] for v in spikes.values()) for i in (0, 1))  # spikes, LIF element-steps
    details["neuron_updates"] = updated / seen  # LIF elements updated per image
    details["static_input"] = static_input
    details["lif_kernels"] = "compiled" if kernels else "eager"  # the same spikes either way (lif_fused)
    m.update(neurobench_metrics(details["ops"], seen))
    m.update(static_metrics(model))
    m["ActivationSparsity"] = 1.0 - fired / max(updated, 1.0)
    m["neuron_updates"] = details["neuron_updates"]
    m["policy_macs"] = sum(r.macs for r in policy_ops.values()) / seen
    m["policy_acs"] = sum(r.sops_exact for r in policy_ops.values()) / seen
    steps = model.time_policy.active_steps() if model.time_policy is not None else None
    if steps:
        details["active_steps"] = steps
        m["timesteps_mean"] = float(np.mean(list(steps.values())))
        m["timesteps_weighted"] = ops_weighted_steps(steps, ops, {lay.name: lay.gates for lay in model.lif_layers()})
    else:
        m["timesteps_mean"] = m["timesteps_weighted"] = float(T)
    if exit_steps:
        es = torch.cat(exit_steps)
        m["accuracy_dense_readout"] = m["accuracy"]
        m["accuracy"] = 100 * exit_correct / seen
        m["exit_step_mean"] = float(es.float().mean())
        m["timesteps_mean"] = m["timesteps_weighted"] = m["exit_step_mean"]
        details["exit_histogram"] = torch.bincount(es, minlength=T + 1)[1:].tolist()
        details["exit_step_share"] = m["exit_step_mean"] / T
        details["energy_note"] = EXIT_NOTE
        ops = exit_scaled(ops, details["exit_step_share"], model.cfg.stem == "per_step")
    m.update(energy_metrics(ops, seen, ec.costs))
    conventions = convention_metrics(Counts(
        details["ops"], seen, T, model.cfg.stem, static_input, details.get("exit_step_share"),
        details.get("active_steps"), details["policy_ops"], details["neuron_updates"],
        model.cfg.neuron.type != "if"), ec.costs)
    # exact and paper stay as energy_metrics gives them (with their per-kind parts); the registry recomputes them
    m.update({k: v for k, v in conventions.items() if k not in m})
    if out.unit_halting is not None:
        details["depth_histogram"] = (depth_hist / depth_hist.sum().clamp_min(1)).tolist()
    if shares is not None:
        fg_metrics, details["foreground"] = shares.record()
        m.update(fg_metrics)
    if maps and model.token_policy is not None:
        m_occ, details["occlusion"] = occlusion_study(model, ds, device)
        m.update(m_occ)
    if getattr(model.token_policy, "gate_shift", None) is not None:
        details["gate_shift"] = float(model.token_policy.gate_shift)
    m["params"] = float(sum(p.numel() for p in model.parameters()))
    sample_maps = None
    if sample["images"]:
        sample_maps = {k: np.concatenate(v) for k, v in sample.items()}
        sample_maps["grid"] = np.array(model.grid)
    return EvalResult(m, details, sample_maps)


def static_metrics(model: torch.nn.Module) -> dict[str, float]:
    """NeuroBench's static metrics: ``Footprint`` (bytes of parameters and buffers) and ``ConnectionSparsity`` (zero
    weights / all weights of the Linear and Conv layers)."""
    footprint = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    weights = [mod.weight for mod in model.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d,
                                                                          torch.nn.Conv2d, torch.nn.Conv3d))]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return {"Footprint": float(footprint), "ConnectionSparsity": zeros / total if total else 0.0}


def occlusion_study(model: Backbone, ds, device: torch.device) -> tuple[dict[str, float], dict]:
    """Occlusion importance vs token units on the first ``OCCLUSION_IMAGES`` images of ``ds`` (suite.diagnostics)."""
    acc = Occlusion()
    n = min(OCCLUSION_IMAGES, len(ds))
    for x, y in make_loader(Subset(ds, range(n)), batch_size=n, shuffle=False, seed=0):
        occlusion(model, x.to(device), y.to(device), acc)
    return acc.record()


def processed_units(out) -> torch.Tensor:
    """``[B, L, T]`` token-units a counted forward processed (``Context.block_token_units``: token policies and time
    masks alike), on the CPU."""
    units = out.ctx.block_token_units()
    if units is None:
        raise ValueError("the forward ran without count=True: no token-units were counted")
    return units.cpu()  # float64: sums of token counts stay exact


def rebuilt_model(config: RunConfig, state: dict[str, torch.Tensor], data: DataBundle, device: torch.device,
                  updates: dict[str, Any]) -> tuple[RunConfig, Backbone]:
    """The run's model rebuilt with evaluation-time settings changed and the trained weights loaded:
    ``(resolved config, model)``."""
    cfg = apply_overrides(config, updates)
    model = make_model(cfg, data).to(device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"override {json.dumps(updates)} changes the model's parameters (missing {missing}, "
                         f"unexpected {unexpected}); only evaluation-time settings can be overridden")
    return cfg, model


def evaluate_checkpoint(config: RunConfig, state: dict[str, torch.Tensor], data: DataBundle, device: torch.device,
                        updates: dict[str, Any], *, maps: bool = False) -> EvalResult:
    """Rebuild the model with evaluation-time settings changed (on top of ``eval.apply``), load the trained
    weights, evaluate."""
    cfg, model = rebuilt_model(config, state, data, device, eval_updates(config, updates))
    return evaluate(model, cfg, data, device, maps=maps)


def evaluate_trained(config: RunConfig, model: Backbone, data: DataBundle, device: torch.device) -> EvalResult:
    """A freshly trained run's main evaluation: the model itself, or, with ``eval.apply`` (an evaluation-only
    policy such as training-free ToMe), the model rebuilt with those settings on the trained weights."""
    if config.eval.apply:
        cfg, model = rebuilt_model(config, model.state_dict(), data, device, config.eval.apply)
        return evaluate(model, cfg, data, device)
    return evaluate(model, config, data, device)
