"""The site's cluster file (``--parallel-config cluster.yml``) and what a job needs: load and validate it (shape,
``slurm_*`` keys submitit knows, YAML's base-60 trap), merge the resources (cluster file < study ``resources:`` <
``--nproc-per-run``) and turn them into submitit executor parameters. Nothing here submits anything."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from suite.config import ClusterConfig, ResourcesConfig, Study, StudyError
from suite.config.cluster import GENERIC_SLURM_KEYS
from suite.config.study import format_errors

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # cluster: local without a time limit (submitit's own default is 2 minutes)


# ---------------------------------------------------------------------------------------------- cluster file


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster file; raises StudyError naming the file and the keys."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(str(path), [f"no such cluster file: {path}"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(str(path), [f"cannot read: {exc}"]) from None
    return parse_cluster(text, str(path))


def parse_cluster(text: str, source: str = "<cluster>") -> ClusterConfig:
    import yaml

    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise StudyError(source, [f"invalid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        got = "nothing" if raw is None else type(raw).__name__
        raise StudyError(source, [f"the top level must be a mapping of keys (backend: submitit, ...), got {got}"])
    problems = [f"{key}: {value} is read by YAML as the number {_yaml_number(value)} (base 60); quote it: "
                f"{key.rsplit('.', 1)[-1]}: \"{value}\"" for key, value in _sexagesimal(node)]
    if problems:
        raise StudyError(source, problems)
    raw = dict(raw)
    for key in raw:
        if not isinstance(key, str):
            problems.append(f"{key!r}: keys must be strings")
        elif key.startswith("slurm_") and key not in GENERIC_SLURM_KEYS and key != "slurm_time":
            problems += _slurm_key_problems(key, raw[key])
    if "slurm_time" in raw:  # a SLURM time limit is the cluster file's resources.timeout_min
        try:
            minutes = slurm_minutes(raw.pop("slurm_time"))
        except ValueError as exc:
            problems.append(f"slurm_time: {exc}")
        else:
            res = raw.get("resources")
            if isinstance(res, dict) and res.get("timeout_min") is not None:
                problems.append("slurm_time: give either slurm_time or resources.timeout_min, not both")
            else:
                raw["resources"] = {**(res if isinstance(res, dict) else {}), "timeout_min": minutes}
    try:
        cfg = ClusterConfig.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, or a bare one from the key validator
        problems += _format(exc)
    if problems:
        raise StudyError(source, problems)
    return cfg


def _format(exc: Exception) -> list[str]:
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [str(exc)]
    out = []
    for line in format_errors(exc):
        if line.startswith("<root>: Value error, "):  # the key validator's "; "-joined lines
            out += line[len("<root>: Value error, "):].split("; ")
        else:
            out.append(line)
    return out


def _sexagesimal(node, path: str = "") -> list[tuple[str, str]]:
    """Plain (unquoted) scalars that YAML 1.1 reads as base-60 numbers: ``10:30`` is 630, ``1:00:00`` is 3600."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        out = []
        for k, v in node.value:
            out += _sexagesimal(v, f"{path}.{k.value}" if path else str(k.value))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [hit for i, v in enumerate(node.value) for hit in _sexagesimal(v, f"{path}.{i}")]
    if isinstance(node, yaml.ScalarNode) and node.style is None and ":" in node.value \
            and node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return [(path or "<root>", node.value)]
    return []


def _yaml_number(value: str) -> Any:
    import yaml

    return yaml.safe_load(value)


def _slurm_key_problems(key: str, value: Any) -> list[str]:
    """A ``slurm_*`` key submitit's SLURM executor knows, with a value its sbatch writer accepts."""
    from submitit.slurm.slurm import _get_default_parameters, _make_sbatch_string

    name = key[len("slurm_"):]
    known = _get_default_parameters()
    if name not in known:
        return [f"{key}: submitit's SLURM executor has no parameter {name!r} (known: "
                f"{', '.join('slurm_' + k for k in sorted(known) if 'slurm_' + k not in GENERIC_SLURM_KEYS)})"]
    if name == "additional_parameters" and isinstance(value, dict) and "time" in value:
        return [f"{key}.time: set resources.timeout_min (or slurm_time) instead: submitit tells a timeout from a "
                "preemption by it"]
    try:
        _make_sbatch_string(command="true", folder="/nonexistent/%j", **{name: value})
    except Exception as exc:  # noqa: BLE001 - whatever submitit rejects is bad input
        return [f"{key}: submitit rejects {value!r}: {type(exc).__name__}: {exc}"]
    return []


_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_minutes(value: Any) -> int:
    """A SLURM time limit in whole minutes: an int (minutes) or "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected minutes or a quoted SLURM time such as \"2-00:00:00\", got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be >= 1 minute, got {value}")
        return value
    m = _SLURM_TIME.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a SLURM time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    days, parts = m.group(1), [int(p) for p in m.groups()[1:] if p is not None]
    if days is not None:
        parts += [0] * (3 - len(parts))  # D-H, D-H:M
        seconds = int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        scale = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
        seconds = sum(p * s for p, s in zip(parts, scale))
    if seconds < 60:
        raise ValueError(f"{value!r} is under one minute")
    return math.ceil(seconds / 60)


# ---------------------------------------------------------------------------------------------- resources


def merged_resources(cluster: ClusterConfig, study: Study, nproc_per_run: int | None = None) -> ResourcesConfig:
    """Cluster file < the study's ``resources:`` (the keys it sets) < ``--nproc-per-run``."""
    merged = cluster.resources.model_dump()
    merged.update({k: getattr(study.resources, k) for k in study.resources.model_fields_set})
    if nproc_per_run is not None:
        merged["nproc_per_run"] = nproc_per_run
    return ResourcesConfig.model_validate(merged)


def cluster_name(cluster: ClusterConfig) -> str:
    """slurm | local | debug (``cluster:`` unset: SLURM where ``srun`` exists, else local)."""
    if cluster.cluster is not None:
        return cluster.cluster
    import submitit

    return submitit.AutoExecutor.which()


def resource_problems(cluster: ClusterConfig, res: ResourcesConfig) -> list[str]:
    name = cluster_name(cluster)
    problems = []
    if name == "slurm" and shutil.which("srun") is None:
        problems.append("cluster: slurm: no srun on this machine; submit from a SLURM login node (or cluster: local)")
    if name == "slurm" and res.timeout_min is None:
        problems.append("resources.timeout_min: required on SLURM (or slurm_time: \"D-HH:MM:SS\"): submitit's "
                        "default is 5 minutes")
    if name == "slurm" and (problem := partition_problem(cluster.passthrough().get("slurm_partition"))):
        problems.append(problem)
    return problems


def slurm_partitions() -> list[str] | None:
    """The partitions ``sinfo`` lists (None: no sinfo, or it did not answer, so nothing can be said)."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(set(out.stdout.split())) if out.returncode == 0 else None


def partition_problem(partition: Any) -> str | None:
    """Why ``slurm_partition`` would be refused by sbatch, checked with ``sinfo`` before anything is submitted
    (a comma-separated list: each one). None when every partition exists or sinfo cannot tell."""
    if not isinstance(partition, str) or not partition:
        return None
    known = slurm_partitions()
    if known is None:
        return None
    missing = [p for p in partition.split(",") if p.strip() not in known]
    if not missing:
        return None
    return (f"slurm_partition: no partition {', '.join(repr(p) for p in missing)} on this cluster (sinfo lists "
            f"{', '.join(known) or 'none'})")


def executor_parameters(cluster: ClusterConfig, res: ResourcesConfig, name: str) -> dict[str, Any]:
    """What ``AutoExecutor.update_parameters`` gets for runs needing ``res``."""
    timeout = res.timeout_min if res.timeout_min is not None else (
        LOCAL_TIMEOUT_MIN if cluster_name(cluster) != "slurm" else None)
    params: dict[str, Any] = {"name": name, "timeout_min": timeout, "mem_gb": res.mem_gb,
                              "cpus_per_task": res.cpus_per_task, "nodes": 1, "tasks_per_node": res.nproc_per_run}
    if res.gpus_per_run:
        params["gpus_per_node"] = res.gpus_per_run
    params.update(cluster.passthrough())
    return {k: v for k, v in params.items() if v is not None}


def submission_folder(cluster: ClusterConfig, study_dir: Path) -> Path:
    """Where submitit keeps its pickles and logs (``%j``: the job id); on a shared filesystem for SLURM."""
    if cluster.folder:
        folder = Path(os.path.expandvars(os.path.expanduser(cluster.folder)))
    else:
        folder = study_dir / "submitit" / "%j"
    return folder.absolute()


def make_executor(cluster: ClusterConfig, res: ResourcesConfig, folder: Path, job_name: str):
    import submitit

    name = cluster_name(cluster)
    kwargs = {f"{name}_max_num_timeout": cluster.max_requeues} if name in ("slurm", "local") else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=name, **kwargs)
    executor.update_parameters(**executor_parameters(cluster, res, job_name))
    return executor
