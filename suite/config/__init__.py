"""Every schema of the suite and the study -> runs expansion; imports no torch (the report and dry runs use it).

``study.py``: Study, RunConfig, RunSpec, run_id and its hash policy; ``expand.py``: load/validate a study file,
expand the matrix, layer evaluation-time updates; one module per section: ``data``, ``model``, ``policies``,
``train`` (train + eval + energy), ``search``, ``execution`` (execution + tracking).
"""

from suite.config.cluster import ClusterConfig, ResourcesConfig
from suite.config.data import AugmentConfig, DatasetConfig, SyntheticConfig
from suite.config.energy import CONVENTIONS, Convention, MemoryConfig, energy_column
from suite.config.execution import ExecutionConfig, TrackingConfig
from suite.config.expand import (
    apply_overrides,
    eval_update_problems,
    eval_updates,
    expand,
    load_study,
    parse_study,
)
from suite.config.fields import added_field
from suite.config.model import ModelConfig, NeuronConfig
from suite.config.policies import (
    EVAL_TIME_KEYS,
    DropConfig,
    ExitConfig,
    HaltingConfig,
    MergeConfig,
    SelectConfig,
    TimeConfig,
    TimeMaskConfig,
    TokenConfig,
    axis_applies,
    is_eval_time_key,
)
from suite.config.report import ReportConfig
from suite.config.search import Objective, SearchConfig, SearchParam
from suite.config.study import (
    SCHEMA_VERSION,
    RunConfig,
    RunSpec,
    Study,
    StudyError,
    VariantConfig,
    format_errors,
    run_id,
)
from suite.config.train import EnergyConfig, EvalConfig, Override, TrainConfig

__all__ = [
    "CONVENTIONS", "Convention", "MemoryConfig", "ReportConfig", "energy_column",
    "EVAL_TIME_KEYS", "SCHEMA_VERSION", "AugmentConfig", "ClusterConfig", "ResourcesConfig", "DatasetConfig", "DropConfig", "EnergyConfig", "EvalConfig",
    "ExecutionConfig", "ExitConfig", "HaltingConfig", "MergeConfig", "ModelConfig", "NeuronConfig", "Objective",
    "Override", "RunConfig", "RunSpec", "SearchConfig", "SearchParam", "SelectConfig", "Study", "StudyError",
    "SyntheticConfig", "TimeConfig", "TimeMaskConfig", "TokenConfig", "TrackingConfig", "TrainConfig",
    "VariantConfig", "added_field", "apply_overrides", "axis_applies", "eval_update_problems", "eval_updates",
    "expand", "format_errors", "is_eval_time_key", "load_study", "parse_study", "run_id",
]
