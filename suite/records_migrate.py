"""Recount a study's records under the one token-unit rule of docs/counting.md, from their stored counts (no rerun).

Records evaluated before the rule (no ``details.counting_version``) counted token-units from the token policy alone,
so a time-masked block step still counted, and scaled only the two energy totals of an early exit, so the per-kind
energies summed to the full-T energy. Both are recomputed here from what every record stores:

- a time-masked run's token-units: each block's token-wise layers (q, k, v, proj, mlp1, mlp2) store the FLOPs they
  ran (``details.ops[*].dense_flops``: processed (token, step) entries x C_in x C_out), so a block's token-units are
  its FLOPs over its per-token FLOPs, exactly what ``Context.block_token_units`` counts. Which steps were masked
  was not stored: the per-step ``active_tokens_block_step`` is kept as ``active_tokens_block_step_before_masks``
  and only a rerun gives it again;
- an early exit's counts: every op count and energy from ``details.ops`` (counted over all T steps) with
  ``suite.metrics.exit_scaled``, and its per-step token-units from ``details.exit_histogram`` (exact without a token
  policy);
- ``token_pct`` against ``reference_T`` (the run's ``eval.reference_T``, else its own T) in ``metrics.json``; then
  ``runs.csv`` / ``evals.csv`` again (``records.collect_tables``: against the study's reference T).

Every energy convention (``suite.energy``) the stored counts allow is added as ``energy_<convention>_uj``
(``recount_energy``); the ones they do not allow are named as needing a rerun (docs/counting.md, "Recounting
committed records").

Every record without a time mask or an exit is checked instead: its stored token-units must equal the ones its
counts give. Idempotent: a recounted record carries ``counting_version`` and is left as it is.

    python -m suite.records_migrate results/reference/atsnn_digits [...] [--dry-run]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from suite import records
from suite.config import ModelConfig, RunConfig, RunSpec, Study, apply_overrides
from suite.config.expand import expand
from suite.evaluate import COUNTING, COUNTING_VERSION, EXIT_NOTE
from suite.metrics import energy_metrics, exit_scaled, token_pct
from suite.models.context import LayerCounts
from suite.names import EVALS, METRICS, STUDY_FILE

REL_TOL = 1e-9  # recomputed values closer than this to the stored ones are left as stored (no float churn)
CHECK_TOL = 1e-6  # stored token-units were float32 means: a check against the counts allows float32 rounding


@dataclass
class Outcome:
    """What recounting one study did: per record, the metrics that changed (old, new), and what it could not do."""

    changed: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    rerun: list[str] = field(default_factory=list)  # records with a quantity the stored counts cannot give
    mismatched: list[str] = field(default_factory=list)  # checked records whose token-units disagree with counts
    # a column the stored counts cannot give ("energy_<name>_uj (needs ...)") -> the records lacking it
    rerun_columns: dict[str, list[str]] = field(default_factory=dict)


def token_wise_flops(model: ModelConfig) -> dict[str, tuple[int, float]]:
    """Each token-wise layer of a block -> (block, FLOPs per processed (token, step)), for both backbones
    (Spikformer and SDT share the names and widths: q, k, v, proj C x C; mlp1 C x hidden; mlp2 hidden x C)."""
    d, hidden = model.dim, int(model.dim * model.mlp_ratio)
    widths = {"q": d * d, "k": d * d, "v": d * d, "proj": d * d, "mlp1": d * hidden, "mlp2": hidden * d}
    return {f"block{b}.{n}": (b, float(w)) for b in range(model.depth) for n, w in widths.items()}


def block_units_from_ops(ops: Mapping[str, Mapping[str, Any]], model: ModelConfig, n_images: float) -> list[float]:
    """Per-image token-units of each block from stored counts (``Context.block_token_units`` summed over steps)."""
    flops, per_token = [0.0] * model.depth, [0.0] * model.depth
    for name, (block, width) in token_wise_flops(model).items():
        if name not in ops:
            raise KeyError(f"no counts for {name!r}")
        flops[block] += float(ops[name]["dense_flops"])
        per_token[block] += width
    return [f / w / n_images for f, w in zip(flops, per_token)]


def exit_step_units(histogram: list[int], tokens: float, depth: int) -> list[list[float]]:
    """``[L][T]`` mean token-units of a run without a token policy that exits early: every block processes all
    ``tokens`` at step t for the images that have not exited before it."""
    n, left, per_step = float(sum(histogram)), float(sum(histogram)), []
    for count in histogram:
        per_step.append(tokens * left / n)
        left -= count
    return [list(per_step) for _ in range(depth)]


def _close(a: float, b: float, tol: float = REL_TOL) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=1e-12)


def _set(metrics: dict[str, Any], key: str, value: float, log: dict[str, tuple[float, float]]) -> None:
    old = metrics.get(key)
    if isinstance(old, (int, float)) and _close(float(old), value):
        return
    metrics[key] = value
    log[key] = (float(old) if isinstance(old, (int, float)) else math.nan, value)


def recount(doc: dict[str, Any], config: RunConfig, label: str, out: Outcome) -> bool:
    """Recount one record (``metrics.json`` or an ``evals/*.json`` document) in place; True when it changed."""
    m, d = doc["metrics"], doc["details"]
    if d.get("counting_version") == COUNTING_VERSION:
        return False
    model, T, n = config.model, config.model.T, float(m["eval_images"])
    per_step = float(m["dense_token_units"]) / T
    masked, exits = "active_steps" in d, "exit_step_mean" in m
    blocks = block_units_from_ops(d["ops"], model, n)
    log: dict[str, tuple[float, float]] = {}
    if masked and exits:
        out.rerun.append(f"{label}: time mask and early exit (per-image exit x per-step mask not stored)")
    elif masked:
        _set(m, "token_units", sum(blocks), log)
        if "active_tokens_block_step" in d:  # per step it was the token policy's count; which steps ran is unknown
            d["active_tokens_block_step_before_masks"] = d.pop("active_tokens_block_step")
        d["token_units_block"] = blocks
        out.rerun.append(f"{label}: per-step token-units of a time-masked run (details.active_tokens_block_step)")
    elif exits:
        share = float(m["exit_step_mean"]) / T
        ops = {k: LayerCounts(**v) for k, v in d["ops"].items()}
        for key, value in energy_metrics(exit_scaled(ops, share, model.stem == "per_step"), int(n),
                                         config.eval.costs).items():
            _set(m, key, value, log)
        d["exit_step_share"], d["energy_note"] = share, EXIT_NOTE
        if config.tokens.enabled:
            out.rerun.append(f"{label}: per-step token-units of an early exit with a token policy")
        else:
            steps = exit_step_units(d["exit_histogram"], per_step / model.depth, model.depth)
            d["active_tokens_block_step"], d["token_units_block"] = steps, [sum(row) for row in steps]
            if not _close(sum(d["token_units_block"]), float(m["token_units"]), CHECK_TOL):
                out.mismatched.append(f"{label}: exit histogram gives other token-units than stored")
    else:
        if not _close(sum(blocks), float(m["token_units"]), CHECK_TOL):
            out.mismatched.append(f"{label}: counts give {sum(blocks)} token-units, stored {m['token_units']}")
        d["token_units_block"] = blocks
    units = float(m["token_units"])
    _set(m, "tokens_per_block_step", units / (model.depth * T), log)
    ref = config.eval.reference_T or T
    _set(m, "reference_T", float(ref), log)
    _set(m, "token_pct", token_pct(units, per_step, ref), log)
    d["counting"], d["counting_version"] = COUNTING, COUNTING_VERSION
    if log:
        out.changed[label] = log
    return True


# Products whose operand holds values outside {-1, 0, 1} by construction (records counted before
# ``sops_nonbinary``): Spikformer's (Q K^T) V reads the scaled coincidence map. An integrated stem's stem.1 reads
# the time-averaged map. tests/test_energy.py checks this rule against the flags a counted forward measures.
NONBINARY_BY_STRUCTURE: dict[str, tuple[str, ...]] = {"spikformer": ("av",), "sdt": ()}
TOKEN_WISE = ("q", "k", "v", "proj", "mlp1", "mlp2")


def nonbinary_layer(name: str, model: ModelConfig, rec: Mapping[str, Any]) -> bool:
    """Whether layer ``name`` read non-spike values, from its stored counts: a token-wise linear did exactly when its
    paper SOPs (sum of input values x fan-out) differ from its exact ones (non-zero inputs x fan-out), since its
    inputs are non-negative counts of spikes; a product or conv by the backbone's structure (``NONBINARY_BY_STRUCTURE``)."""
    if name == "stem.1" and model.stem == "integrate":
        return True
    if not name.startswith("block"):
        return False
    layer = name.split(".", 1)[1]
    if layer in TOKEN_WISE:
        return not math.isclose(float(rec["sops_paper"]), float(rec["sops_exact"]), rel_tol=1e-12)
    return layer in NONBINARY_BY_STRUCTURE[model.backbone]


def derived_policy_ops(config: RunConfig, m: Mapping[str, Any], d: Mapping[str, Any], n: float
                       ) -> dict[str, dict[str, Any]] | None:
    """A policy's own work recounted from a record's stored per-block token counts, with the functions the live
    count uses (``suite.models.policies.overhead``); None when the record cannot give it (a merge: which tokens were
    eligible per image was not stored)."""
    from suite.models import sdt_lif_layers, spikformer_lif_layers
    from suite.models.policies import overhead  # torch: only when recounting
    from suite.models.policies.timemask import group_of

    tokens, time, model = config.tokens, config.time, config.model
    if tokens.merge is not None or (tokens.halting is not None and "active_tokens_block_step" not in d):
        return None  # halting under a time mask: its per-step counts were not stored (recount above)
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, block: int, macs: float, acs: float) -> None:
        out[name] = {"kind": "policy", "block": block, "macs": macs, "sops_exact": acs, "sops_paper": acs,
                     "dense_flops": macs + acs}

    if tokens.halting is not None:
        steps = d["active_tokens_block_step"]  # [L][T] per image
        gate, last = tokens.halting.gate, len(steps) - 1
        # as the live count: a token's last unit (the last block's last step; in 1-D the last block) scores 1 by rule
        for block, row in enumerate(steps):
            if tokens.halting.mode == "1d":
                if block < last:
                    add(f"policy.halting.block{block}", block,
                        *overhead.halting(row[0] * n, gate, model.dim, model.T))
            else:
                scored = sum(row) - (row[-1] if block == last else 0.0)
                add(f"policy.halting.block{block}", block, *overhead.halting(scored * n, gate, model.dim))
    if tokens.select is not None:  # every token is alive before the selector (no merge)
        tokens_per_image = float(m["dense_token_units"]) / (model.depth * model.T)
        hidden = max(1, int(model.dim * tokens.select.hidden))
        add("policy.selector", tokens.select.at_block,
            *overhead.selector(tokens_per_image * n, model.dim, hidden, model.T))
    if time.mask is not None:  # the mask's groups, from the backbone's layer metadata (as TimeMask builds them)
        layers = (sdt_lif_layers if model.backbone == "sdt" else spikformer_lif_layers)(
            model.depth, timed_stem=model.stem == "per_step")
        groups = {group_of(layer, time.mask.granularity) for layer in layers if layer.timed}
        add("policy.time_gates", -1, *overhead.time_gates(len(groups), model.T, int(n)))
    if time.exit is not None:
        classes = round(float(d["ops"]["head"]["dense_flops"]) / n / model.dim)
        steps = round(float(m["exit_step_mean"]) * n)  # a sum of integer exit steps, stored as a float32 mean
        add("policy.exit_test", -1, *overhead.exit_test(steps, classes, model.dim))
    return out


def recount_energy(doc: dict[str, Any], config: RunConfig, label: str, out: Outcome) -> bool:
    """Add every energy convention (``suite.energy``) and NeuroBench's operation names to a record from its stored
    counts; what they cannot give stays NaN and is named in ``out.rerun``. Idempotent: values equal to the stored ones
    are left as they are, and the derived inputs are kept (``details.energy_derived`` says which were derived)."""
    from suite.energy import Counts, convention_metrics, missing_inputs, neurobench_metrics

    m, d = doc["metrics"], doc["details"]
    config = apply_overrides(config, config.eval.apply) if config.eval.apply else config
    n = float(m["eval_images"])
    derived: list[str] = []
    if any("sops_nonbinary" not in rec for rec in d["ops"].values()):
        for name, rec in d["ops"].items():
            rec["sops_nonbinary"] = float(rec["sops_exact"]) if nonbinary_layer(name, config.model, rec) else 0.0
        derived.append("ops[*].sops_nonbinary: linears by paper != exact SOPs, products and convs by structure "
                       "(records_migrate.nonbinary_layer)")
    if "policy_ops" not in d and (policy := derived_policy_ops(config, m, d, n)) is not None:
        d["policy_ops"] = policy
        derived.append("policy_ops: from the stored per-block token counts (suite.models.policies.overhead)")
    if derived:
        d["energy_derived"] = d.get("energy_derived", []) + derived
    counts = Counts(d["ops"], n, config.model.T, config.model.stem, bool(d.get("static_input", True)),
                    d.get("exit_step_share"), d.get("active_steps"), d.get("policy_ops"), d.get("neuron_updates"),
                    config.model.neuron.type != "if")
    log: dict[str, tuple[float, float]] = {}
    for key, value in convention_metrics(counts, config.eval.costs).items():
        if math.isnan(value):
            m.pop(key, None)
            continue
        _set(m, key, value, log)
    if all("weights" in rec for rec in d["ops"].values()):  # NeuroBench's names need the layers' weights
        for key, value in neurobench_metrics(d["ops"], n).items():
            _set(m, key, value, log)
    from suite.config import CONVENTIONS

    for name, conv in CONVENTIONS.items():
        if lacks := missing_inputs(conv, counts):
            out.rerun_columns.setdefault(f"energy_{name}_uj (needs {', '.join(lacks)})", []).append(label)
    if log:
        out.changed.setdefault(label, {}).update(log)
    return bool(log) or bool(derived)


def study_specs(study_dir: Path) -> list[RunSpec]:
    """The study's runs in the order its tables list them (``expand`` of study.yaml), then any other run recorded
    there (a search's trial runs)."""
    study = Study.model_validate(yaml.safe_load((study_dir / STUDY_FILE).read_text(encoding="utf-8")))
    specs = expand(study, str(study_dir / STUDY_FILE))
    known = {s.run_id for s in specs}
    return specs + [s for s in records.read_specs(study_dir) if s.run_id not in known]


def migrate_study(study_dir: Path, *, dry_run: bool = False) -> Outcome:
    """Recount every done run's ``metrics.json`` and ``evals/*.json`` of a study, then rewrite its tables."""
    out = Outcome()
    specs = study_specs(study_dir)
    for spec in specs:
        run_dir = study_dir / spec.run_id
        if records.run_state(run_dir, spec.run_id) != "done":
            continue
        path = run_dir / METRICS
        doc = records.read_json(path)
        label = f"{spec.run_id} ({spec.variant})"
        changed = recount(doc, spec.config, label, out)
        if (recount_energy(doc, spec.config, label, out) or changed) and not dry_run:
            records.atomic_write_json(path, doc)
        for ev_path in sorted((run_dir / EVALS).glob("*.json")) if (run_dir / EVALS).is_dir() else []:
            ev = records.read_json(ev_path)
            if ev is None or "metrics" not in ev:
                continue
            try:
                config = apply_overrides(spec.config, ev.get("set") or {})
            except ValueError:
                config = spec.config
            label = f"{spec.run_id} ({spec.variant}) {ev_path.stem}"
            changed = recount(ev, config, label, out)
            if (recount_energy(ev, config, label, out) or changed) and not dry_run:
                records.atomic_write_json(ev_path, ev)
    if not dry_run:
        records.collect_tables(study_dir, specs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suite.records_migrate", description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study record directories (results/<study>)")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    args = parser.parse_args(argv)
    # every directory checked before any is rewritten: a typo in the third name must not leave two migrated
    if missing := [f"{d}: not a study's records directory (no {STUDY_FILE})" for d in args.studies
                   if not (d / STUDY_FILE).is_file()]:
        print("\n".join(missing), file=sys.stderr)
        return 2
    bad = 0
    for study_dir in args.studies:
        out = migrate_study(study_dir, dry_run=args.dry_run)
        print(f"{study_dir}: {len(out.changed)} record(s) with new or changed metrics")
        for label, log in out.changed.items():
            moved = {k: v for k, v in log.items() if not math.isnan(v[0])}  # new columns (reference_T) not listed
            if moved:
                print(f"  {label}: " + ", ".join(f"{k} {a:.6g} -> {b:.6g}" for k, (a, b) in sorted(moved.items())))
        for line in out.rerun:
            print(f"  needs a rerun for {line}")
        for column, labels in out.rerun_columns.items():
            print(f"  needs a rerun for {column}: {len(labels)} record(s)")
        for line in out.mismatched:
            print(f"  MISMATCH {line}")
        bad += len(out.mismatched)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
