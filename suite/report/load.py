"""A study's records as the report reads them: runs, evaluations, per-run details and the typed study.

Nothing here draws or writes. ``load_records`` gathers everything into a ``StudyRecords``; the config labels
(``variant`` or ``variant (axis=value, ...)``) and their study order are fixed here, so every figure and table
names and colours a point the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from suite import records
from suite.config import EvalConfig, SearchConfig, Study, TrackingConfig, VariantConfig, format_errors
from suite.names import (
    CONFIG,
    EVALS_TABLE,
    METRICS,
    PRIMARY_ENERGY_CONVENTION,
    RUNS_TABLE,
    SEARCH_DIR,
    STUDY_FILE,
    TRIALS_TABLE,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyRecords:
    """A study's records as the report reads them; ``runs``/``evals`` carry a ``config`` label column.

    ``study`` is None when ``study.yaml`` is missing, unreadable or invalid: the accessors below then give the
    schema's defaults (and no dataset), so the report still renders from ``runs.csv`` alone."""

    study_dir: Path
    runs: pd.DataFrame
    evals: pd.DataFrame | None
    details: Mapping[str, dict]
    study: Study | None
    study_yaml: str
    order: tuple[str, ...]
    off_split: int = 0  # evaluations on another split than the study's (search trials score on val): left out
    models: Mapping[str, dict] = field(default_factory=dict)  # run id -> its config's model section (config.yaml)

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs.status == "done"]

    @property
    def name(self) -> str:
        return self.study.name if self.study is not None else self.study_dir.name

    @property
    def dataset(self) -> str | None:
        return self.study.dataset.name if self.study is not None else None

    @property
    def description(self) -> str:
        return self.study.description if self.study is not None else ""

    @property
    def variants(self) -> Mapping[str, VariantConfig]:
        return self.study.variants if self.study is not None else {}

    @property
    def eval(self) -> EvalConfig:
        return self.study.eval if self.study is not None else EvalConfig()

    @property
    def energy_convention(self) -> str:
        """The primary energy convention (``report.energy_convention``): the one the figures and tables show."""
        return self.study.report.energy_convention if self.study is not None else PRIMARY_ENERGY_CONVENTION

    @property
    def tracking(self) -> TrackingConfig:
        return self.study.tracking if self.study is not None else TrackingConfig()

    @property
    def search(self) -> SearchConfig | None:
        return self.study.search if self.study is not None else None

    @property
    def split(self) -> str:
        """The split the study's runs evaluate on (every tabulated number is on it)."""
        return self.eval.split

    def present(self, frame: pd.DataFrame) -> list[str]:
        """The config labels that occur in ``frame``, in study order."""
        have = set(frame["config"])
        return [c for c in self.order if c in have]

    def config_model(self, config: str, key: str, default: Any = None) -> Any:
        """``model.<key>`` of a config label's first run (every run of one label shares its model section)."""
        ids = self.runs.loc[self.runs.config == config, "run_id"].astype(str)
        return next((self.models[r][key] for r in ids if key in self.models.get(r, {})), default)

    def details_by_config(self, key: str) -> dict[str, list[Any]]:
        """config -> [details[key] of each finished seed that recorded it], in study order."""
        out: dict[str, list[Any]] = {}
        for config in self.present(self.done):
            vals = [self.details[str(r)][key] for r in self.done[self.done.config == config].sort_values("seed").run_id
                    if key in self.details.get(str(r), {})]
            if vals:
                out[config] = vals
        return out


def load_runs(study_dir: Path) -> pd.DataFrame:
    path = study_dir / RUNS_TABLE
    if not path.exists():
        raise FileNotFoundError(f"no runs table at {path}: run the study first (spikesuite run STUDY)")
    return pd.read_csv(path, dtype={"run_id": str})  # a hex id such as "123456e78901" must stay a string


def load_evals(study_dir: Path) -> pd.DataFrame | None:
    path = study_dir / EVALS_TABLE
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype={"run_id": str})
    return None if frame.empty else frame


def load_study(study_dir: Path) -> tuple[Study | None, str]:
    """The validated ``study.yaml`` and its text: (None, "") when absent or unreadable, (None, text) when it does
    not validate (the page still shows the text)."""
    try:
        text = (study_dir / STUDY_FILE).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, ""
    try:
        return Study.model_validate(data), text
    except ValidationError as exc:
        log.warning("%s does not validate, reported without it: %s", study_dir / STUDY_FILE,
                    "; ".join(format_errors(exc)))
        return None, text


def load_details(study_dir: Path, run_ids: Iterable[str]) -> dict[str, dict]:
    """``details`` of each run's ``metrics.json`` (runs without a readable one are left out)."""
    out: dict[str, dict] = {}
    for rid in run_ids:
        doc = records.read_json(study_dir / str(rid) / METRICS)
        if doc is not None and isinstance(doc.get("details"), dict):
            out[str(rid)] = doc["details"]
    return out


def load_models(study_dir: Path, run_ids: Iterable[str]) -> dict[str, dict]:
    """The ``model`` section of each run's ``config.yaml`` (runs without a readable one are left out)."""
    out: dict[str, dict] = {}
    for rid in run_ids:
        try:
            doc = yaml.safe_load((study_dir / str(rid) / CONFIG).read_text(encoding="utf-8"))
            model = (doc.get("config") or {}).get("model")
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(model, dict):
            out[str(rid)] = model
    return out


def restated_similarity(runs: pd.DataFrame, details: Mapping[str, dict], models: Mapping[str, dict]) -> pd.DataFrame:
    """``runs`` with each finished run's mean ``temporal_similarity`` recomputed from its per-block values without
    the blocks where it holds by construction (``records.restate_similarity``), so records collected before that
    rule report the same mean as new ones."""
    if "temporal_similarity" not in runs:
        return runs
    values = runs["temporal_similarity"].copy()
    for i, rid in runs["run_id"].astype(str).items():
        if rid in details and rid in models:
            row = {"temporal_similarity": values[i]}
            records.restate_similarity(row, details[rid], str(models[rid].get("stem", "per_step")))
            values[i] = row.get("temporal_similarity", float("nan"))
    return runs.assign(temporal_similarity=values)


def axis_columns(runs: pd.DataFrame, matrix: Mapping[str, Any]) -> list[str]:
    """Non-seed matrix axes (and T) that take several values within one variant: they split a variant's points."""
    names = [k for k in matrix if k not in ("seed", "include", "exclude", "model.T")]
    for extra in matrix.get("include") or []:
        names += [k for k in extra if k not in ("variant", "seed", "model.T")]
    cols = [c for c in dict.fromkeys(["T", *names]) if c in runs.columns]
    return [c for c in cols if not runs.empty and runs.groupby("variant")[c].nunique().max() > 1]


def fmt_value(v: Any) -> str:
    """A matrix value or seed as written in labels: a whole float without its ``.0``."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def axis_names(axes: Sequence[str]) -> dict[str, str]:
    """How labels name each axis column: its last dotted part (``model.backbone`` -> ``backbone``) where no other
    axis shares that part, else the whole path."""
    short = {a: a.rsplit(".", 1)[-1] for a in axes}
    taken = [short[a] for a in axes]
    return {a: short[a] if taken.count(short[a]) == 1 else a for a in axes}


def config_labels(frame: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """``variant`` or ``variant (axis=value, ...)`` for each row, axes named by ``axis_names``
    (e.g. ``act (backbone=sdt, stem=integrate)``)."""
    if not axes:
        return frame["variant"].astype(str)
    names = axis_names(axes)
    return frame.apply(lambda r: f"{r['variant']} ({', '.join(f'{names[a]}={fmt_value(r[a])}' for a in axes)})",
                       axis=1)


def config_order(runs: pd.DataFrame, variants: Iterable[str], axes: Sequence[str],
                 matrix: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Variants in study.yaml order (others after, sorted), then by axis values: in the order the study's
    ``matrix`` lists them (``T`` as ``model.T``) where it does, else sorted; failed runs count too, so a variant
    keeps its colour whether or not its runs finished."""
    rank = {v: i for i, v in enumerate(variants)}
    keys = runs[["variant", *axes, "config"]].drop_duplicates("config")
    keys = keys.assign(_rank=keys["variant"].map(lambda v: rank.get(v, len(rank))), _name=keys["variant"].astype(str))

    def listed_rank(axis: str) -> pd.Series:
        values = (matrix or {}).get("model.T" if axis == "T" else axis)
        listed = [fmt_value(v) for v in values] if isinstance(values, list) else []
        return keys[axis].map(lambda v: listed.index(fmt_value(v)) if fmt_value(v) in listed else len(listed))

    keys = keys.assign(**{f"_axis{i}": listed_rank(a) for i, a in enumerate(axes)})
    order = ["_rank", "_name", *(c for i, a in enumerate(axes) for c in (f"_axis{i}", a))]
    return tuple(keys.sort_values(order, kind="stable")["config"])


def load_records(study_dir: Path) -> StudyRecords:
    """Everything the report needs, read from the records directory."""
    study_dir = Path(study_dir)
    runs = load_runs(study_dir)
    study, text = load_study(study_dir)
    matrix, variants = (study.matrix, study.variants) if study is not None else ({}, {})
    split = (study.eval if study is not None else EvalConfig()).split
    axes = axis_columns(runs, matrix)
    runs = runs.assign(config=config_labels(runs, axes)) if not runs.empty else runs.assign(config=[])
    done_ids = set(runs.loc[runs.status == "done", "run_id"].astype(str))
    evals, off_split = load_evals(study_dir), 0
    if evals is not None:
        evals = evals[evals.run_id.astype(str).isin(done_ids)]
        same = eval_splits(evals, split) == split
        evals, off_split = evals[same], int((~same).sum())
        evals = evals.assign(config=config_labels(evals, axes)) if not evals.empty else None
    details, models = load_details(study_dir, sorted(done_ids)), load_models(study_dir, sorted(done_ids))
    return StudyRecords(study_dir, restated_similarity(runs, details, models), evals, details, study, text,
                        config_order(runs, variants, axes, matrix) if not runs.empty else (), off_split, models)


def search_tables(study_dir: Path) -> list[tuple[str, Path]]:
    """``(variant, trials.csv)`` of each search of the study: ``search/`` (one search, variant "") and
    ``search/<variant>/`` (``per_variant`` and ``equal_budget`` searches)."""
    root = study_dir / SEARCH_DIR
    found = [("", root / TRIALS_TABLE)] + [(p.parent.name, p) for p in sorted(root.glob(f"*/{TRIALS_TABLE}"))]
    return [(v, p) for v, p in found if p.is_file()]


def tuning_budgets(rec: StudyRecords) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Per variant that a search tuned: (complete trials, the settings they varied), read from every
    ``trials.csv`` of the study; its parameters are the dotted config paths among the columns."""
    out: dict[str, tuple[int, tuple[str, ...]]] = {}
    for _, path in search_tables(rec.study_dir):
        trials = pd.read_csv(path)
        if "variant" not in trials or "state" not in trials:
            continue
        for variant, g in trials[trials.state == "COMPLETE"].groupby("variant", sort=False):
            keys = tuple(c for c in g.columns if "." in c and g[c].notna().any())
            n, known = out.get(str(variant), (0, ()))
            out[str(variant)] = (n + len(g), tuple(dict.fromkeys(known + keys)))
    return out


def budget_note(rec: StudyRecords) -> str | None:
    """One sentence stating every variant's tuning budget (None when the study ran no search)."""
    budgets = tuning_budgets(rec)
    if not budgets:
        return None
    s = rec.search
    equal = s is not None and s.mode == "equal_budget"
    parts = [f"{v} {n} ({', '.join(keys) or 'no parameter'})" for v, (n, keys) in budgets.items()]
    untuned = [v for v in rec.variants if v not in budgets]
    split = s.split if s is not None else "val"
    return ("Tuning budget, evaluation-time settings tried per variant before reporting (complete trials of "
            f"search/*/trials.csv, scored on the {split} split"
            + (f"; search.mode equal_budget: {s.budget} grid settings of each variant's own knob"
               + (f" on {s.val_images} validation images" if s.val_images else "") if equal else "")
            + "): " + "; ".join(parts)
            + (f"; not tuned (0): {', '.join(untuned)}." if untuned else "."))


def parsed_setting(setting: Any) -> dict[str, Any] | None:
    """An evals.csv ``set`` cell (JSON of the dotted-path updates) as a dict; None when absent or unreadable."""
    try:
        value = yaml.safe_load(setting) if isinstance(setting, str) else None
    except yaml.YAMLError:
        return None
    return value if isinstance(value, dict) else None


def eval_splits(evals: pd.DataFrame, main_split: str) -> pd.Series:
    """The split each evaluation scored on: its ``eval.split`` override, else the study's (``main_split``).
    Numbers on different splits are never drawn or tabulated together (eval-stage search trials score on val,
    runs on test)."""
    def split(setting: Any) -> str:
        value = parsed_setting(setting)
        return str(value.get("eval.split", main_split)) if value is not None else main_split

    column = evals["set"] if "set" in evals else pd.Series([None] * len(evals), index=evals.index)
    return column.map(split)


def off_split_note(rec: StudyRecords) -> tuple[str, ...]:
    """A sentence counting the evaluations left out for being on another split (none when there are none)."""
    if not rec.off_split:
        return ()
    return (f"{rec.off_split} evaluation(s) on another split than {rec.split} (search trials) are in "
            "evals.csv and search/ but not here.",)
