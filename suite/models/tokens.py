"""Token policies: which tokens each block processes at each timestep.

One runner composes ACT halting (``halting.py``), similarity merging (``merge.py``) and the keep-mask
baselines (``baselines/tokens.py``). Tokens are never removed from the ``[T, B, N, C]`` tensor here:
a halted, dropped or merged-away token is *inactive* (its Q/K/V rows are zero, so it neither attends
nor is attended, and its block update is zero, so its representation is frozen). A merged-away
token also has size 0, so it leaves the size-weighted readout. The compacted inference path
(``compact.py``) removes inactive tokens from the computation instead; both give the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from baselines.tokens import DropConfig, RandomDrop, SelectConfig, TokenSelector
from suite.models.context import Context
from suite.models.halting import HaltingConfig, block_units, halting_score, prior_loss, unit_step
from suite.models.merge import bipartite_soft_matching, parse_r, size_weighted_mean


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int | list[int] | None = None  # merges per block boundary (int for all, or one per block)
    threshold: float | None = None  # or: merge every pair with cosine similarity >= threshold
    metric: Literal["keys", "residual"] = "keys"  # time-averaged key spikes (ToMe's keys) | residual stream
    per: Literal["all_steps", "timestep"] = "all_steps"  # one matching for all T | one per timestep
    mode: Literal["similarity", "random"] = "similarity"  # random: the random-merge control
    start_block: int = Field(0, ge=0)  # first block after which tokens are merged
    seed: int = 0  # random mode at evaluation

    @model_validator(mode="after")
    def _one_rule(self) -> MergeConfig:
        if (self.r is None) == (self.threshold is None):
            raise ValueError("give exactly one of r or threshold")
        rs = [self.r] if isinstance(self.r, int) else (self.r or [])
        if any(r < 0 for r in rs):
            raise ValueError("r must be >= 0")
        return self


class TokenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    halting: HaltingConfig | None = None
    merge: MergeConfig | None = None
    drop: DropConfig | None = None  # baseline: random drop at a matched budget
    select: SelectConfig | None = None  # baseline: learned token selector

    @model_validator(mode="after")
    def _combinable(self) -> TokenConfig:
        if self.drop is not None and self.select is not None:
            raise ValueError("drop and select are alternative baselines; use one")
        if self.halting is not None and (self.drop is not None or self.select is not None):
            raise ValueError("halting does not combine with the drop/select baselines")
        if self.halting is not None and self.halting.mode == "2d" and self.halting.order == "time_major" \
                and self.merge is not None:
            raise ValueError("merge needs all timesteps of a block, which time_major halting has not run yet; "
                             "use order: block_major with merge")
        if self.halting is not None and self.merge is not None and self.merge.per == "timestep":
            raise ValueError("merge.per: timestep does not combine with halting (halting state is per token, "
                             "not per timestep)")
        return self

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.halting, self.merge, self.drop, self.select))


@dataclass
class TokenRun:
    feats: Tensor | None  # [T, B, C] pooled per timestep, or None for the ACT readout
    pooled: Tensor | None  # [B, C] ACT readout
    active: Tensor  # [B, L, T] active tokens per block and timestep
    aux: dict[str, Tensor]
    depth: Tensor  # [B, N] units each token position was processed for
    maps: Tensor | None  # [B, L, T, N] bool
    unit_halting: Tensor | None  # [U] mean halting score per unit in processing order


class TokenPolicy(nn.Module):
    def __init__(self, cfg: TokenConfig, *, depth: int, dim: int, T: int):
        super().__init__()
        self.cfg, self.depth = cfg, depth
        hc = cfg.halting
        if hc is not None and hc.learnable:
            self.gamma = nn.Parameter(torch.full((depth,), hc.gamma))
            self.beta = nn.Parameter(torch.full((depth,), hc.beta))
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

    def forward(self, blocks: nn.ModuleList, z: Tensor, ctx: Context, *, record_maps: bool = False) -> TokenRun:
        hc = self.cfg.halting
        if hc is not None and hc.mode == "2d" and hc.order == "time_major":
            return self._time_major(blocks, z, ctx, record_maps)
        return self._block_major(blocks, z, ctx, record_maps)

    def _block_major(self, blocks: nn.ModuleList, z: Tensor, ctx: Context, record_maps: bool) -> TokenRun:
        T, B, N, C = z.shape
        L = len(blocks)
        hc, mc = self.cfg.halting, self.cfg.merge
        alive = torch.ones((T, B, N) if mc is not None and mc.per == "timestep" else (B, N),
                           device=z.device, dtype=z.dtype)
        size = alive.clone() if mc is not None else None
        cum = torch.zeros(B, N, device=z.device, dtype=z.dtype)
        rho = torch.zeros_like(cum)
        y: Tensor | None = None
        aux: dict[str, Tensor] = {}
        unit_h: list[Tensor] = []
        counts, maps = [], []
        depth = torch.zeros(B, N, device=z.device)
        thr = 1.0 - hc.eps if hc is not None else 1.0
        for l, blk in enumerate(blocks):
            if self.keeper is not None and l == self.keeper.at_block:
                keep, extra = self.keeper(z.mean(0), alive > 0)
                alive = alive * keep
                aux.update(extra)
            step = None
            if hc is None:
                active = alive.expand(T, B, N)
            elif hc.mode == "2d":
                h = halting_score(z, hc.channel, *self._gate(l))  # [T, B, N]
                if l == L - 1:  # the last unit halts every token still running
                    h = torch.cat([h[:-1], torch.ones_like(h[-1:])])
                step, cum_next = block_units(cum, h, thr, first=l == 0)
                active = step.active.to(z.dtype) * alive
                unit_h += list((h * (alive > 0)).sum((1, 2)) / (alive > 0).sum().clamp_min(1))
            else:
                h = halting_score(z.mean(0), hc.channel, *self._gate(l))  # [B, N], shared by all steps
                if l == L - 1:
                    h = torch.ones_like(h)
                step = unit_step(cum, h, thr, first=l == 0)
                cum_next = cum + step.cum_delta
                active = (step.active.to(z.dtype) * alive).expand(T, B, N)
                unit_h.append((h * (alive > 0)).sum() / (alive > 0).sum().clamp_min(1))
            z_new, keys = blk(z, ctx, active, None if size is None else size.expand(T, B, N))
            on = active > 0
            counts.append(on.sum(-1).float())  # [T, B]
            depth += on.sum(0).float()
            if record_maps:
                maps.append(on)
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
            if mc is not None and l < L - 1 and l >= mc.start_block:
                plan = self._merge_plan(l, keys, z_new, size, alive, cum if hc is not None else None, thr)
                if plan is not None:
                    z_new = plan.merge(z_new)
                    size = plan.size
                    alive = alive * (~plan.merged).to(z.dtype)
                    if y is not None:
                        y = plan.merge(y)
                        cum = plan.merge(cum.unsqueeze(-1)).squeeze(-1)
                        rho = plan.merge(rho.unsqueeze(-1)).squeeze(-1)
            z = z_new
        if hc is not None:
            aux.update(self._halting_losses(rho, size, unit_h))
        feats, pooled = self._readout(z, y, size)
        return TokenRun(feats, pooled, torch.stack(counts).permute(2, 0, 1), aux, depth,
                        torch.stack(maps).permute(2, 0, 1, 3) if record_maps else None,
                        torch.stack(unit_h).detach() if unit_h else None)

    def _merge_plan(self, l: int, keys: Tensor, z: Tensor, size: Tensor, alive: Tensor, cum: Tensor | None,
                    thr: float):
        mc = self.cfg.merge
        r = self.r[l] if self.r is not None else None
        if r == 0:
            return None
        metric = keys if mc.metric == "keys" else z
        if mc.per == "all_steps":
            metric = metric.mean(0)
        eligible = alive > 0
        if cum is not None:
            eligible = eligible & (cum < thr)  # halted tokens cost nothing already; merge running ones
        gen = None
        if mc.mode == "random" and not self.training:
            gen = torch.Generator(device=z.device).manual_seed(mc.seed + l)
        return bipartite_soft_matching(metric.float(), size, r=r, threshold=mc.threshold, eligible=eligible,
                                       generator=gen, random=mc.mode == "random")

    def _halting_losses(self, rho: Tensor, size: Tensor | None, unit_h: list[Tensor]) -> dict[str, Tensor]:
        hc = self.cfg.halting
        ponder = rho.mean() if size is None else (rho * size).sum() / size.sum()
        return {
            "ponder": hc.ponder_weight * ponder,
            "halting_prior": hc.prior_weight * prior_loss(torch.stack(unit_h), hc.prior_target, hc.prior_std),
        }

    def _readout(self, z: Tensor, y: Tensor | None, size: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        hc = self.cfg.halting
        pool = (lambda x: x.mean(-2)) if size is None else (lambda x: size_weighted_mean(x, size))
        if hc is not None and hc.readout == "act":
            if hc.mode == "2d":
                return None, pool(y)
            return pool(y), None
        return pool(z), None

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
                    h = halting_score(zt[0], hc.channel, *self._gate(l))
                    if t == T - 1 and l == L - 1:
                        h = torch.ones_like(h)
                    step = unit_step(cum, h, thr, first=t == 0 and l == 0)
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
        feats, pooled = self._readout(torch.cat(finals), y, None)
        return TokenRun(feats, pooled, counts.permute(2, 0, 1), self._halting_losses(rho, None, unit_h), depth,
                        maps.permute(2, 0, 1, 3) if maps is not None else None, torch.stack(unit_h).detach())
