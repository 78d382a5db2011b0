"""What the MLflow mirror shows, as plain data (no mlflow, no torch): the experiment's tags, run names, metric
names, params and the parent run's per-variant means. ``suite.tracking`` logs them; a live run and the mirror of a
finished one (``mirror_run``) both go through these functions, so they log the same names.

The records keep their own column names (committed reference records, the report and the search read them);
MLflow gets names that say which split a number comes from. ``EPOCH_NAMES`` and ``FINAL_ACCURACY`` are the one
place the two differ."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from suite.config import RunConfig, RunSpec
from suite.names import SEARCH_TAG

# MLflow 3 opens an experiment in its GenAI view (traces) or its model-training view (runs, charts) after this
# experiment tag; untagged, it guesses, and it guessed GenAI for our studies. Values as MLflow 3.17 writes and reads
# them: ``genai_development`` (mlflow/demo/generators/traces.py sets it on its GenAI demo) and
# ``custom_model_development`` (the UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT; the onboarding skill shipped in
# mlflow/assistant/skills/mlflow-onboarding/SKILL.md: "custom_model_development -> Traditional ML use case").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # the description the MLflow UI shows for an experiment (or a run)

EPOCH_NAMES = {"train_acc": "train_accuracy", "val_acc": "val_accuracy"}  # history.csv column -> MLflow
# metrics.json ``accuracy`` is measured on ``eval.split``: on val it must not merge with the per-epoch history of
# ``val_accuracy`` (stepped by epoch), so it gets a name of its own.
FINAL_ACCURACY = {"test": "test_accuracy", "val": "val_accuracy_final"}
ACCURACY = "accuracy"
SUMMARY_KEYS = (ACCURACY, "token_pct", "timesteps_mean", "energy_exact_uj")  # per override and per variant
RUN_AXES = ("variant", "seed")  # in every run name already
MAX_RUN_NAME = 250  # MLflow's runs.name column is VARCHAR(250) (a PostgreSQL store refuses more)

DATASET_SOURCE_TYPE = "spikesuite"  # MLflow dataset source type: the suite's own loaders (suite.data)
DATASET_CONTEXT = "training"  # the ``mlflow.data.context`` tag of a run's dataset input (splits in its profile)

# Config values that do not apply to a run, so they are not logged as its params (MLflow compares runs by their
# params: a setting that changes nothing only adds noise). Absent token/time policies are dropped too.
NOT_APPLICABLE: tuple[tuple[str, Callable[[RunConfig], bool]], ...] = (
    ("dataset.synthetic", lambda c: c.dataset.name != "synthetic"),  # the generated data set's shape
    ("dataset.simulated", lambda c: c.dataset.name != "simulated_events"),  # the camera-motion model
    ("dataset.frames", lambda c: c.dataset.frames is None),  # event data only
    ("dataset.split_by", lambda c: not c.dataset.is_events),
    ("dataset.dvs_split", lambda c: c.dataset.name != "cifar10_dvs"),
    ("dataset.root", lambda c: c.dataset.name in ("digits", "synthetic")),  # nothing read from disk
    ("dataset.download", lambda c: c.dataset.name in ("digits", "synthetic")),  # nothing to download
    ("model.stem_integrate", lambda c: c.model.stem != "integrate"),
    ("train.tet_lambda", lambda c: c.train.loss != "tet"),
    ("train.mixup_off_epoch", lambda c: not c.train.mixup),
    ("train.init_from", lambda c: c.train.init_from is None),
    ("train.inject_fault", lambda c: c.train.inject_fault == "none"),  # a test hook, off
    ("init_run", lambda c: c.init_run is None),
    ("eval.overrides", lambda c: not c.eval.overrides),
)


# ---------------------------------------------------------------------------------------------- metric names


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """One history row (an epoch) under its MLflow names; logged at step = epoch."""
    return {EPOCH_NAMES.get(k, k): v for k, v in row.items()}


def accuracy_name(split: str) -> str:
    return FINAL_ACCURACY.get(split, f"{split}_accuracy")


def summary_metrics(metrics: Mapping[str, Any], split: str = "test") -> dict[str, Any]:
    """A run's final metrics under their MLflow names (``accuracy`` and ``accuracy_*`` say their split); logged
    without a step, as summary values."""
    acc = accuracy_name(split)
    return {acc + k[len(ACCURACY):] if k == ACCURACY or k.startswith(ACCURACY + "_") else k: v
            for k, v in metrics.items()}


def override_metrics(name: str, metrics: Mapping[str, Any], split: str = "test") -> dict[str, Any]:
    """An evaluation override's headline metrics, ``override.<name>.<metric>``."""
    return {f"override.{name}.{k}": v
            for k, v in summary_metrics({k: metrics[k] for k in SUMMARY_KEYS if k in metrics}, split).items()}


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in a metric name (anything but alphanumerics, ``_-./`` and
    space; ``=`` among them) replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


# ---------------------------------------------------------------------------------------------- run names


def axis_value(value: Any) -> str:
    """A matrix value as a name shows it: ``2`` for 2.0, strings bare, anything else as compact JSON."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def axes_label(axes: Mapping[str, Any]) -> str:
    """The run's non-seed matrix axes as ``-T=2-r=3``: each path by its last dotted part, whole where two axes
    share that part (the report's labels name axes the same way)."""
    keys = [k for k in axes if k not in RUN_AXES]
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return "".join(f"-{s if short.count(s) == 1 else k}={axis_value(axes[k])}" for k, s in zip(keys, short))


def run_name(spec: RunSpec) -> str:
    """``<variant>-s<seed>`` plus the non-seed matrix axes (``act-s0-T=2``): short enough to show whole in the
    runs table (the run id is a tag). A name MLflow could not store (axis values hundreds of characters long)
    falls back to ``<variant>-s<seed>-<run id>``, never to a cut name."""
    name = f"{spec.variant}-s{spec.config.seed}{axes_label(spec.axes)}"
    return name if len(name) <= MAX_RUN_NAME else f"{spec.variant}-s{spec.config.seed}-{spec.run_id}"


def parent_name(study: str, tags: Mapping[str, str], started: float) -> str:
    """An invocation's run: the study (a search's: its part) and the local start time, ``smoke 2026-05-01 14:03``."""
    return f"{tags.get(SEARCH_TAG) or study} {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"


# ---------------------------------------------------------------------------------------------- params


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b.c -> str`` (lists as JSON)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


def run_params(config: RunConfig) -> dict[str, str]:
    """The resolved config as MLflow params, minus what does not apply to this run (``NOT_APPLICABLE``) and the
    token and time policies it does not use."""
    d = config.model_dump(mode="json")
    for section in ("tokens", "time"):
        d[section] = {k: v for k, v in d[section].items() if v is not None}
    for path, absent in NOT_APPLICABLE:
        if absent(config):
            _drop(d, path)
    return flatten(d)


def _drop(d: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return
    d.pop(last, None)


# ---------------------------------------------------------------------------------------------- parent run


def variant_means(runs: Any, specs: Iterable[RunSpec]) -> dict[str, float]:
    """Per variant (and non-seed matrix point) of the study's runs table, the mean over its done runs of each of
    ``SUMMARY_KEYS``, named ``<variant>[-<axes>].<metric>`` (``act.test_accuracy``, ``act-T_2.token_pct``); the
    table's ``token_pct`` is against the study's reference dense model, so every variant shares a denominator."""
    if runs is None or runs.empty or "status" not in runs.columns:
        return {}
    by_id = {s.run_id: s for s in specs}
    sums: dict[str, list[float]] = {}
    for row in runs[runs.status == "done"].to_dict("records"):
        spec = by_id.get(row["run_id"])
        if spec is None:
            continue
        label = metric_key(f"{spec.variant}{axes_label(spec.axes)}")
        for k, v in summary_metrics({k: row.get(k) for k in SUMMARY_KEYS}, spec.config.eval.split).items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                sums.setdefault(f"{label}.{k}", []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def dataset_input(described: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, str]:
    """The fields of the MLflow dataset input of a run (``mlflow.entities.Dataset``), from what the run read
    (``DataBundle.describe()``, kept in its records as ``details.dataset``) and the config it was loaded from:
    the Dataset column shows ``name (digest)``, its filter is ``dataset.name``/``dataset.digest``, and the profile
    carries the split sizes and per-split digests for comparing runs by the data they saw."""
    profile = {k: described[k] for k in ("train_size", "val_size", "test_size", "split_digests", "num_classes",
                                         "image_size") if k in described}
    return {"name": str(described["name"]), "digest": str(described["digest"]), "source_type": DATASET_SOURCE_TYPE,
            "source": json.dumps(dict(source), sort_keys=True, default=str),
            "profile": json.dumps(profile, sort_keys=True)}
