"""Where a study runs and where it is mirrored (no torch): ``execution.*`` and ``tracking.*``.

None of these enter a run id: they say how and where runs execute, not what they compute.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from suite.names import NAME_PATTERN


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    uri: str | None = None  # default: sqlite:///<results>/<study>/mlflow.db; MLFLOW_TRACKING_URI wins over it
    experiment: str | None = Field(None, pattern=NAME_PATTERN)  # default: the study name


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = "auto"  # auto: cuda when visible, else cpu
    workers: int = Field(1, ge=1, le=64)  # processes sharing the study (one per GPU); runs are claimed by lock
    oom_retry: bool = True  # retry a run at half batch size after CUDA out-of-memory
    progress: bool = True
