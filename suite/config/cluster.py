"""Where and how runs execute beyond this process (no torch): a study's ``resources:`` block and the site's
``cluster.yml`` (``spikesuite run STUDY --parallel-config cluster.yml``). Neither enters a run id: they say where a
run executes, not what it computes. Precedence: cluster file < study resources < command line.

The ``slurm_*`` keys are checked against the parameters submitit's SLURM executor knows, and YAML's traps are
caught, by ``suite.run.cluster_file.parse_cluster`` (which knows submitit); this module only fixes the shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Executor settings that have a generic spikesuite key: set them there, so the precedence above holds.
GENERIC_SLURM_KEYS = {
    "slurm_timeout_min": "resources.timeout_min", "slurm_mem_gb": "resources.mem_gb", "slurm_mem": "resources.mem_gb",
    "slurm_cpus_per_task": "resources.cpus_per_task", "slurm_gpus_per_node": "resources.gpus_per_run",
    "slurm_num_gpus": "resources.gpus_per_run", "slurm_tasks_per_node": "resources.nproc_per_run",
    "slurm_ntasks_per_node": "resources.nproc_per_run", "slurm_max_num_timeout": "max_requeues",
    "slurm_nodes": "resources.nproc_per_run (one node per run)", "slurm_job_name": "(set by spikesuite)",
    "slurm_name": "(set by spikesuite)",
}


class ResourcesConfig(BaseModel):
    """What one run needs (``resources:`` in a study file)."""

    model_config = ConfigDict(extra="forbid")

    nproc_per_run: int = Field(1, ge=1, le=1024)  # ranks training one run (torch.distributed, DDP)
    gpus_per_run: int = Field(0, ge=0, le=1024)  # 0: CPU, or what the executor's default gives
    cpus_per_task: int | None = Field(None, ge=1, le=1024)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int | None = Field(None, ge=1)  # wall-clock limit of one job (a run resumes when requeued)


class ClusterConfig(BaseModel):
    """A site's execution settings (``cluster.yml``); every ``slurm_*`` key goes to submitit's
    ``AutoExecutor.update_parameters`` unchanged (checked against the parameters submitit knows)."""

    model_config = ConfigDict(extra="allow")  # slurm_* pass-through keys, validated by the executor

    backend: Literal["local", "submitit"] = "local"
    folder: str | None = None  # submission folder (logs, pickles): on a shared filesystem for SLURM
    cluster: Literal["slurm", "local", "debug"] | None = None  # None: SLURM when srun exists, else local
    max_array_size: int = Field(1000, ge=1)  # arrays are split at this size (sites cap MaxArraySize)
    max_requeues: int = Field(3, ge=0)  # requeues after a timeout (preemptions are always requeued)
    poll_s: float = Field(10.0, gt=0, le=3600)  # how often a waiting `spikesuite run` reads records and job states
    resources: ResourcesConfig = ResourcesConfig()  # site defaults; a study's resources: block wins

    @model_validator(mode="after")
    def _extra_keys(self) -> ClusterConfig:
        problems = []
        for key in self.model_extra or {}:
            if not key.startswith("slurm_"):
                hint = ("the dask backend is not supported (backend: local | submitit)" if key.startswith("dask_")
                        else "expected backend, folder, cluster, max_array_size, max_requeues, poll_s, resources "
                             "or slurm_* keys")
                problems.append(f"{key}: unknown key ({hint})")
            elif key in GENERIC_SLURM_KEYS:
                problems.append(f"{key}: set {GENERIC_SLURM_KEYS[key]} instead (the cluster file < study "
                                "resources < command line precedence holds only there)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def passthrough(self) -> dict[str, Any]:
        """The ``slurm_*`` keys, for ``AutoExecutor.update_parameters``."""
        return {k: v for k, v in (self.model_extra or {}).items() if k.startswith("slurm_")}
