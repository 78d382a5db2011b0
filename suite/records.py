"""Run records under ``results/<study>/<run_id>/``: the source of truth for everything downstream.

Files per run: ``config.yaml`` (resolved config), ``status.json`` (running | done | failed, with the
reason and traceback), ``metrics.json``, ``history.csv``, ``checkpoint.pt``, ``maps.npz`` and
``evals/<override>.json``. ``status.json`` also says what code wrote it (``git_commit``, ``git_dirty``,
``spikesuite_version``; null outside a git checkout). Every file is written to a temporary name and renamed, so a kill leaves
either the old file or the new one. A record that does not parse is treated as missing: the run is
redone, never silently read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from suite.config import RunConfig, RunSpec
from suite.environment import code_version
from suite.metrics import temporal_similarity_mean, token_pct, units_per_step
from suite.names import CONFIG, EVALS, EVALS_TABLE, HISTORY, LOCK, MAPS, METRICS, RUNS_TABLE, STATUS

__all__ = ["CONFIG", "EVALS", "EVALS_TABLE", "HISTORY", "MAPS", "METRICS", "RUNS_TABLE", "STATUS", "atomic_write_json",
           "atomic_write_text", "claim", "collect_tables", "file_lock", "is_dense", "read_json", "read_specs",
           "reference_T", "restate_similarity", "restate_token_pct", "run_state", "write_config", "write_eval", "write_history",
           "write_result", "write_status"]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: Path) -> dict | None:
    """The parsed file, or None when it is missing, truncated or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_config(run_dir: Path, spec) -> None:
    doc = {"run_id": spec.run_id, "study": spec.study, "axes": spec.axes,
           "config": spec.config.model_dump(mode="json")}
    atomic_write_text(run_dir / CONFIG, yaml.safe_dump(doc, sort_keys=False))


def read_specs(study_dir: Path) -> list[RunSpec]:
    """Every run of a study directory read back from its ``config.yaml`` (``write_config``'s document), in run-id
    order; a half-written or foreign record is left out."""
    from pydantic import ValidationError

    out = []
    for cfg_path in sorted(study_dir.glob(f"*/{CONFIG}")):
        try:
            doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            out.append(RunSpec(doc["study"], doc["run_id"], RunConfig.model_validate(doc["config"]),
                               doc.get("axes", {})))
        except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValidationError):
            continue
    return out


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    prev = read_json(run_dir / STATUS) or {}
    doc = {"state": state, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **code_version(),
           **extra}
    if "attempts" in prev:
        doc.setdefault("attempts", prev["attempts"])
    atomic_write_json(run_dir / STATUS, doc)


def run_state(run_dir: Path, run_id: str) -> str:
    """done | failed | running | pending. ``done`` needs a status, metrics and config that all parse and
    agree on the run id; anything less (a crash mid-write, a hand-edited file) means redo."""
    status = read_json(run_dir / STATUS)
    if status is None:
        return "pending"
    state = status.get("state")
    if state == "done":
        metrics = read_json(run_dir / METRICS)
        if metrics is None or metrics.get("run_id") != run_id or "metrics" not in metrics:
            return "pending"
        return "done"
    return state if state in ("failed", "running") else "pending"


@contextlib.contextmanager
def claim(run_dir: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on the run directory: True if this process owns the run.
    The OS releases it when the process dies, so a killed run can be claimed again at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK, "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        fh.close()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Block until this process holds an exclusive lock on ``path``; released on exit (or by the OS when the
    process dies). For short critical sections shared by processes: store creation, trial reservation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    atomic_write_text(run_dir / HISTORY, pd.DataFrame(history).to_csv(index=False))


def write_result(run_dir: Path, run_id: str, metrics: dict[str, float], details: dict[str, Any],
                 maps: dict[str, np.ndarray] | None) -> None:
    if maps is not None:
        tmp = run_dir / f".maps.tmp{os.getpid()}.npz"
        np.savez_compressed(tmp, **maps)
        os.replace(tmp, run_dir / MAPS)
    atomic_write_json(run_dir / METRICS, {"run_id": run_id, "metrics": metrics, "details": details})


def write_eval(run_dir: Path, name: str, updates: dict[str, Any], metrics: dict[str, float],
               details: dict[str, Any]) -> Path:
    (run_dir / EVALS).mkdir(exist_ok=True)
    path = run_dir / EVALS / f"{name}.json"
    atomic_write_json(path, {"name": name, "set": updates, "metrics": metrics, "details": details})
    return path


def is_dense(config: RunConfig) -> bool:
    """A run of the dense model: no token or time policy, none applied at evaluation either (a static T is dense)."""
    applied = any(str(k).split(".")[0] in ("tokens", "time") for k in config.eval.apply)
    return not (config.tokens.enabled or config.time.mask is not None or config.time.exit is not None or applied)


def reference_T(specs: Iterable[RunSpec]) -> int | None:
    """The T a study's ``token_pct`` refers to: the largest T of its dense runs (None when it has none)."""
    return max((s.config.model.T for s in specs if is_dense(s.config)), default=None)


def restate_token_pct(row: dict[str, Any], config: RunConfig, study_T: int | None) -> None:
    """Set a done row's ``token_pct`` against the study's reference dense model, from its stored counts: the run's
    ``eval.reference_T`` if set, else ``study_T``, else its own T; ``reference_T`` and ``reference_token_units``
    name the reference. Rows without token counts are left alone."""
    if "token_units" not in row or "dense_token_units" not in row:
        return
    ref = config.eval.reference_T or study_T or config.model.T
    per_step = units_per_step(float(row["dense_token_units"]), config.model.T)
    row["reference_T"] = float(ref)
    row["reference_token_units"] = per_step * ref
    row["token_pct"] = token_pct(float(row["token_units"]), per_step, ref)


def restate_similarity(row: dict[str, Any], details: dict[str, Any] | None, stem: str) -> None:
    """Set a row's mean ``temporal_similarity`` from its per-block values, leaving out the blocks where it holds by
    construction (block 0 behind a stem run once): records written before that rule read the same as new ones. A
    row whose every block is such a block has no mean."""
    sims = (details or {}).get("temporal_similarity")
    if not isinstance(sims, dict) or not sims:
        return
    mean = temporal_similarity_mean(sims, stem)
    if mean is None:
        row.pop("temporal_similarity", None)
    else:
        row["temporal_similarity"] = mean


def collect_tables(study_dir: Path, specs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (``runs.csv``) and one per run x evaluation override (``evals.csv``).

    ``token_pct`` is restated against the study's reference dense model (``reference_T``), so every row of a
    study compares with the same denominator whatever T its run used; ``temporal_similarity`` is restated without
    the blocks where it holds by construction (``restate_similarity``)."""
    specs = list(specs)
    study_T = reference_T(specs)
    rows, evals = [], []
    for spec in specs:
        run_dir = study_dir / spec.run_id
        state = run_state(run_dir, spec.run_id)
        row: dict[str, Any] = {"run_id": spec.run_id, "status": state, **_axes(spec)}
        if state == "done":
            doc = read_json(run_dir / METRICS)
            row.update(doc["metrics"])
            restate_token_pct(row, spec.config, study_T)
            restate_similarity(row, doc.get("details"), spec.config.model.stem)
        elif state == "failed":
            row["error"] = (read_json(run_dir / STATUS) or {}).get("reason", "")
        rows.append(row)
        for path in sorted((run_dir / EVALS).glob("*.json")) if (run_dir / EVALS).is_dir() else []:
            ev = read_json(path)
            if ev is not None and "metrics" in ev:
                erow = {"run_id": spec.run_id, **_axes(spec), "override": ev["name"],
                        "set": json.dumps(ev["set"], sort_keys=True), **ev["metrics"]}
                restate_token_pct(erow, spec.config, study_T)
                restate_similarity(erow, ev.get("details"), spec.config.model.stem)
                evals.append(erow)
    runs = pd.DataFrame(rows)
    evals_df = pd.DataFrame(evals)
    atomic_write_text(study_dir / RUNS_TABLE, runs.to_csv(index=False))
    if not evals_df.empty:
        atomic_write_text(study_dir / EVALS_TABLE, evals_df.to_csv(index=False))
    return runs, evals_df


def _axes(spec) -> dict[str, Any]:
    cfg = spec.config
    return {"variant": cfg.variant, "seed": cfg.seed, "T": cfg.model.T,
            **{k: v for k, v in spec.axes.items() if k not in ("variant", "seed")}}
