"""Token policies: which tokens each block processes at each timestep.

One runner composes ACT halting (``halting.py``), similarity merging (``merge.py``) and the keep-mask
baselines (``baselines/tokens.py``). Tokens are never removed from the ``[T, B, N, C]`` tensor here:
a halted, dropped or merged-away token is *inactive* (its Q/K/V rows are zero, so it neither attends
nor is attended, and its block update is zero, so its representation is frozen). A merged-away
token also has size 0, so it leaves the size-weighted readout. The compacted inference path
(``compact.py``) removes inactive tokens from the computation instead; both give the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines.tokens import RandomDrop, TokenSelector
from suite.config import HaltingConfig, MergeConfig, TokenConfig
from suite.models.context import Context
from suite.models.policies import overhead
from suite.models.policies.halting import (
    block_units,
    gate_features,
    prior_loss,
    unit_step,
)
from suite.models.policies.merge import MergePlan, bipartite_soft_matching, parse_r, size_weighted_mean
from suite.models.policies.stages import carry, to_first_grid


@dataclass
class TokenRun:
    feats: Tensor | None  # [T, B, C] pooled per timestep, or None for the ACT readout
    pooled: Tensor | None  # [B, C] ACT readout
    active: Tensor  # [B, L, T] active tokens per block and timestep
    aux: dict[str, Tensor]
    depth: Tensor  # [B, N] units each token position was processed for
    maps: Tensor | None  # [B, L, T, N] bool
    unit_halting: Tensor | None  # [U] mean halting score per unit in processing order
    merged: Tensor | None = None  # [B, L, T, N] bool: merged away before the block (with record_maps)


class TokenPolicy(nn.Module):
    """Runs a backbone's blocks with halting, merging and keep masks; sees blocks and tokens, never a backbone."""

    def __init__(self, cfg: TokenConfig, *, depth: int, dim: int, T: int):
        super().__init__()
        self.cfg, self.depth, self.dim = cfg, depth, dim
        hc = cfg.halting
        if hc is not None and hc.learnable and hc.gate == "channel":
            self.gamma = nn.Parameter(torch.full((depth,), hc.gamma))
            self.beta = nn.Parameter(torch.full((depth,), hc.beta))
        if hc is not None and hc.gate != "channel":
            # a per-block head; zero weights: the untrained gate scores every token alike, and its bias puts a
            # token's halting unit at prior_target of its units (sigmoid(b) = 1 / (prior_target * units))
            units = depth * (T if hc.mode == "2d" else 1)
            h0 = min(0.5, 1.0 / max(1.0, hc.prior_target * units))
            self.gate_weight = nn.Parameter(torch.zeros(depth, dim))
            self.gate_bias = nn.Parameter(torch.full((depth,), math.log(h0 / (1 - h0))))
        # one shift of every gate logit, set by ``calibrate_gate`` (tokens.halting.init_fraction); a buffer so it
        # travels with the checkpoint, present only when calibrating so other state dicts keep their keys
        self.register_buffer("gate_shift", torch.zeros(()) if hc is not None and hc.init_fraction is not None
                             else None)
        self.keeper: nn.Module | None = None
        if cfg.drop is not None:
            self.keeper = RandomDrop(cfg.drop, dim)
        elif cfg.select is not None:
            self.keeper = TokenSelector(cfg.select, dim)
        if self.keeper is not None and self.keeper.at_block >= depth:
            raise ValueError(f"at_block {self.keeper.at_block} must be < depth {depth}")
        m = cfg.merge
        self.r = parse_r(m.r, depth) if m is not None and m.r is not None else None

    def _gate(self, block: int) -> tuple[Tensor | float, Tensor | float]:
        hc = self.cfg.halting
        if hc.learnable:
            return self.gamma[block], self.beta[block] + hc.beta_offset
        return hc.gamma, hc.beta + hc.beta_offset

    def score(self, z: Tensor, block: int) -> Tensor:
        """Halting scores ``[...]`` of the tokens ``z`` [..., C] entering a unit of ``block`` (the gate of
        ``tokens.halting.gate``; ``beta_offset`` lowers every gate's logit alike)."""
        hc = self.cfg.halting
        if hc.gate == "channel":
            gamma, beta = self._gate(block)
            logit = gamma * z[..., hc.channel] - beta
        else:
            logit = gate_features(z, hc.gate) @ self.gate_weight[block] + self.gate_bias[block] - hc.beta_offset
        if self.gate_shift is not None:
            logit = logit + self.gate_shift
        return torch.sigmoid(logit)

    def _count_gate(self, ctx: Context, block: int, scored: Tensor, mean_steps: int = 0) -> None:
        """The halting gate's own operations at a unit (``overhead.halting``): one score per token that runs there
        (``scored``: a mask of them); a 1-D gate first averages what it reads over ``mean_steps`` timesteps."""
        if not ctx.count:
            return
        work = overhead.halting(float((scored > 0).sum()), self.cfg.halting.gate, self.dim, mean_steps)
        ctx.overhead(f"policy.halting.block{block}", block=block, **dict(zip(("macs", "acs"), work)))

    def forward(self, blocks: nn.ModuleList, z: Tensor, ctx: Context, *, record_maps: bool = False,
                stages: list | None = None, transition: Callable[[int, Tensor, Context], Tensor] | None = None
                ) -> TokenRun:
        """Run ``blocks`` on tokens ``z``; a multi-stage backbone passes its ``stages`` and ``transition`` (the
        policy state crosses a transition by the rules of ``policies/stages.py``)."""
        hc = self.cfg.halting
        if stages is not None:
            from suite.config.study import stage_refusal  # the reasons, stated once

            stage_refusal(self.cfg)
        if hc is not None and hc.mode == "2d" and hc.order == "time_major":
            return self._time_major(blocks, z, ctx, record_maps)
        return self._block_major(blocks, z, ctx, record_maps, stages, transition)

    def _block_major(self, blocks: nn.ModuleList, z: Tensor, ctx: Context, record_maps: bool,
                     stages: list | None = None, transition: Callable | None = None) -> TokenRun:
        T, B, N, C = z.shape
        L = len(blocks)
        opens = {st.blocks.start: s for s, st in enumerate(stages)} if stages is not None else {}
        grids = [st.grid for st in stages] if stages is not None else []
        stage = 0
        hc, mc = self.cfg.halting, self.cfg.merge
        alive = torch.ones((T, B, N) if mc is not None and mc.per == "timestep" else (B, N),
                           device=z.device, dtype=z.dtype)
        size = alive.clone() if mc is not None else None
        cum = torch.zeros(B, N, device=z.device, dtype=z.dtype)
        rho = torch.zeros_like(cum)
        y: Tensor | None = None
        aux: dict[str, Tensor] = {}
        unit_h: list[Tensor] = []
        counts, maps, merged = [], [], []
        gone = torch.zeros_like(alive, dtype=torch.bool)  # merged away so far (alive also loses dropped tokens)
        depth = torch.zeros(B, N, device=z.device)
        thr = 1.0 - hc.eps if hc is not None else 1.0
        for l, blk in enumerate(blocks):
            if l in opens and l > 0:
                stage = opens[l]
                z, alive, size, gone, cum, rho = self._cross(stage, grids[stage - 1], transition, z, ctx, alive,
                                                              size, gone, cum, rho)
                T, B, N, C = z.shape
                y = None  # the ACT sum of unit outputs changes width here (readout: carry does not read it)
            if self.keeper is not None and l == self.keeper.at_block:
                if isinstance(self.keeper, TokenSelector) and ctx.count:  # a count reads a value: evaluation only
                    hidden = self.keeper.net[0].out_features
                    macs, acs = overhead.selector(float((alive > 0).sum()), C, hidden, T)
                    ctx.overhead("policy.selector", block=l, macs=macs, acs=acs)
                keep, extra = self.keeper(z.mean(0), alive > 0)
                alive = alive * keep
                aux.update(extra)
            step = None
            if hc is None:
                active = alive.expand(T, B, N)
            elif hc.mode == "2d":
                h = self.score(z, l)  # [T, B, N]
                if l == L - 1:  # the last unit halts every token still running
                    h = torch.cat([h[:-1], torch.ones_like(h[-1:])])
                step, cum_next = block_units(cum, h, thr, first=l == 0)
                active = step.active.to(z.dtype) * alive
                self._count_gate(ctx, l, active[:-1] if l == L - 1 else active)  # the last unit's score is 1
                unit_h += list((h * (alive > 0)).sum((1, 2)) / (alive > 0).sum().clamp_min(1))
            else:
                h = self.score(z.mean(0), l)  # [B, N], shared by all steps
                if l == L - 1:
                    h = torch.ones_like(h)
                step = unit_step(cum, h, thr, first=l == 0)
                cum_next = cum + step.cum_delta
                active = (step.active.to(z.dtype) * alive).expand(T, B, N)
                if l < L - 1:  # the last block's score is 1 by rule, never computed
                    self._count_gate(ctx, l, active[0], mean_steps=T)
                unit_h.append((h * (alive > 0)).sum() / (alive > 0).sum().clamp_min(1))
            z_new, keys = blk(z, ctx, active, None if size is None else size.expand(T, B, N))
            on = active > 0
            counts.append(on.sum(-1).float())  # [T, B]
            depth += to_first_grid(on.sum(0).float(), grids, stage) if stage else on.sum(0).float()
            if record_maps:
                maps.append(to_first_grid(on, grids, stage) if stage else on)
                merged.append(to_first_grid(gone.expand(T, B, N), grids, stage) if stage else gone.expand(T, B, N))
            if step is not None:
                live = (alive > 0).to(z.dtype)
                if hc.mode == "2d":
                    part = (step.weight.unsqueeze(-1) * z_new).sum(0)  # [B, N, C]
                    rho = rho + (step.ponder * live).sum(0)
                else:
                    part = (step.weight * live).unsqueeze(-1) * z_new  # [T, B, N, C]
                    rho = rho + step.ponder * live
                y = part if y is None else y + part
                cum = cum_next
            if mc is not None and l < L - 1 and l >= mc.start_block and l + 1 not in opens:  # within a stage
                plan = merge_plan(mc, self.r[l] if self.r is not None else None, l, keys, z_new, size, alive,
                                  cum if hc is not None else None, thr, self.training, ctx)
                if plan is not None:
                    z_new = plan.merge(z_new)
                    size = plan.size
                    alive = alive * (~plan.merged).to(z.dtype)
                    gone = gone | plan.merged
                    if y is not None:
                        y = plan.merge(y)
                        cum = plan.merge(cum.unsqueeze(-1)).squeeze(-1)
                        rho = plan.merge(rho.unsqueeze(-1)).squeeze(-1)
            z = z_new
        if hc is not None:
            aux.update(halting_losses(self.cfg.halting, rho, size, unit_h))
        feats, pooled = readout(self.cfg.halting, z, y, size)
        return TokenRun(feats, pooled, torch.stack(counts).permute(2, 0, 1), aux, depth,
                        torch.stack(maps).permute(2, 0, 1, 3) if record_maps else None,
                        torch.stack(unit_h).detach() if unit_h else None,
                        torch.stack(merged).permute(2, 0, 1, 3) if record_maps else None)

    def _cross(self, stage: int, grid: tuple[int, int], transition: Callable, z: Tensor, ctx: Context,
               alive: Tensor, size: Tensor | None, gone: Tensor, cum: Tensor, rho: Tensor) -> tuple:
        """Into ``stage``: the backbone re-tokenises the whole map (frozen tokens included) and the policy state
        passes to the new tokens (``policies/stages.py``): alive if any child is alive or merged away, the
        cumulative score by ``tokens.halting.stage_carry``, ponder by the mean, sizes restart at 1."""
        z = transition(stage, z, ctx)
        hc = self.cfg.halting
        alive = carry(((alive > 0) | gone).to(z.dtype), grid, "max")
        size = torch.ones_like(alive) if size is not None else None
        if hc is not None:
            cum = carry(cum, grid, hc.stage_carry)
            rho = carry(rho, grid, "mean")
        else:
            cum, rho = carry(cum, grid, "min"), carry(rho, grid, "mean")  # unused zeros, on the new grid
        return z, alive, size, torch.zeros_like(alive, dtype=torch.bool), cum, rho

    def _time_major(self, blocks: nn.ModuleList, z: Tensor, ctx: Context, record_maps: bool) -> TokenRun:
        """2-D halting with time as the outer loop: the whole network runs one timestep at a time
        (spikingjelly neurons keep their state between calls), so BN sees one step per call in training."""
        T, B, N, C = z.shape
        L = len(blocks)
        hc = self.cfg.halting
        thr = 1.0 - hc.eps
        cum = torch.zeros(B, N, device=z.device, dtype=z.dtype)
        rho = torch.zeros_like(cum)
        y = torch.zeros(B, N, C, device=z.device, dtype=z.dtype)
        counts = torch.zeros(L, T, B, device=z.device)
        maps = torch.zeros(L, T, B, N, dtype=torch.bool, device=z.device) if record_maps else None
        depth = torch.zeros(B, N, device=z.device)
        unit_h, finals = [], []
        try:
            for t in range(T):
                ctx.step = slice(t, t + 1)
                zt = z[t:t + 1]
                for l, blk in enumerate(blocks):
                    h = self.score(zt[0], l)
                    if t == T - 1 and l == L - 1:
                        h = torch.ones_like(h)
                    step = unit_step(cum, h, thr, first=t == 0 and l == 0)
                    if not (t == T - 1 and l == L - 1):
                        self._count_gate(ctx, l, step.active)
                    zt, _ = blk(zt, ctx, step.active.to(z.dtype).unsqueeze(0), None)
                    y = y + step.weight.unsqueeze(-1) * zt[0]
                    rho, cum = rho + step.ponder, cum + step.cum_delta
                    counts[l, t] = step.active.sum(-1)
                    depth += step.active
                    if maps is not None:
                        maps[l, t] = step.active
                    unit_h.append(h.mean())
                finals.append(zt)
        finally:
            ctx.step = slice(None)
        feats, pooled = readout(hc, torch.cat(finals), y, None)
        maps = maps.permute(2, 0, 1, 3) if maps is not None else None
        return TokenRun(feats, pooled, counts.permute(2, 0, 1), halting_losses(hc, rho, None, unit_h), depth, maps,
                        torch.stack(unit_h).detach(), torch.zeros_like(maps) if maps is not None else None)  # no merge


HALTING_LOSSES = ("ponder", "halting_prior")  # the aux losses ``loss_warmup_epochs`` ramps up


def halting_losses(hc: HaltingConfig, rho: Tensor, size: Tensor | None, unit_h: list[Tensor]) -> dict[str, Tensor]:
    """Weighted ponder loss (units used + remainders; size-weighted with merging) and the halting prior."""
    ponder = rho.mean() if size is None else (rho * size).sum() / size.sum()
    prior = prior_loss(torch.stack(unit_h), hc.prior_target, hc.prior_std)
    return dict(zip(HALTING_LOSSES, (hc.ponder_weight * ponder, hc.prior_weight * prior)))


def loss_warmup(hc: HaltingConfig | None, epochs_done: float) -> float:
    """The factor on the halting losses after ``epochs_done`` (fractional) epochs: a linear ramp from 0 to 1 over
    ``loss_warmup_epochs`` (0: always 1)."""
    if hc is None or hc.loss_warmup_epochs <= 0:
        return 1.0
    return min(1.0, epochs_done / hc.loss_warmup_epochs)


def readout(hc: HaltingConfig | None, z: Tensor, y: Tensor | None, size: Tensor | None
            ) -> tuple[Tensor | None, Tensor | None]:
    """``(feats [T, B, C] or None, pooled [B, C] or None)``: the token mean (size-weighted with merging) of the
    final residual stream, or of the ACT-weighted outputs ``y`` with ``readout: act``."""
    pool = (lambda x: x.mean(-2)) if size is None else (lambda x: size_weighted_mean(x, size))
    if hc is not None and hc.readout == "act":
        if hc.mode == "2d":
            return None, pool(y)
        return pool(y), None
    return pool(z), None


def merge_plan(mc: MergeConfig, r: int | None, l: int, keys: Tensor, z: Tensor, size: Tensor, alive: Tensor,
               cum: Tensor | None, thr: float, training: bool, ctx: Context | None = None) -> MergePlan | None:
    """The merges after block ``l`` (``r`` pairs, or by ``mc.threshold``) among alive, still-running tokens; their
    matching and averaging are counted on ``ctx`` (``overhead.merge``)."""
    if r == 0:
        return None
    metric = keys if mc.metric == "keys" else z
    if mc.per == "all_steps":
        metric = metric.mean(0)
    eligible = alive > 0
    if cum is not None:
        eligible = eligible & (cum < thr)  # halted tokens cost nothing already; merge running ones
    gen = None
    if mc.mode == "random" and not training:
        gen = torch.Generator(device=z.device).manual_seed(mc.seed + l)
    plan = bipartite_soft_matching(metric.float(), size, r=r, threshold=mc.threshold, eligible=eligible,
                                   generator=gen, random=mc.mode == "random")
    if ctx is not None and ctx.count:
        steps = keys.shape[0] if mc.per == "all_steps" else 0
        macs, acs = overhead.merge(eligible.expand(metric.shape[:-1]), metric.shape[-1],
                                   float(plan.num_merged.sum()), mc.mode == "random", steps)
        ctx.overhead(f"policy.merge.block{l}", block=l, macs=macs, acs=acs)
    return plan
