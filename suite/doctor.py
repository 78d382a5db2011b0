"""``spikesuite doctor``: what this machine offers a study, on one screen, and what would make a study fail.

Versions (python, torch, CUDA, cuDNN, spikingjelly, mlflow, optuna, submitit), devices and their bf16/fp16 autocast,
the spikingjelly kernel each backbone's LIF layers run on (a forward pass on each device, read back from
spikingjelly), torch.distributed backends (gloo, NCCL), dataset roots, the MLflow store and Optuna storage, and the
SLURM commands. Given a study (and a cluster file), its own settings are checked too. Every problem says what to
do; ``problems`` decides the exit status. Reads only: nothing is created (a sqlite store that does not exist yet
is reported as such, not opened)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from suite.config import ClusterConfig, Study, TrackingConfig

SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol")
PACKAGES = ("torch", "spikingjelly", "mlflow", "optuna", "submitit")


@dataclass
class Check:
    section: str
    name: str
    value: str
    problem: str | None = None  # what is wrong and what to do; None: fine


def _version(dist: str) -> str:
    from suite.environment import version

    return version(dist)


def versions() -> list[Check]:
    import platform

    import torch

    out = [Check("versions", "python", platform.python_version()),
           Check("versions", "spikesuite", _version("spikesuite"))]
    for dist in PACKAGES:
        v = _version(dist)
        out.append(Check("versions", dist, v, None if v != "not installed" else
                         f"{dist} is not installed: pip install -e . (it is a dependency of the suite)"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out.append(Check("versions", "CUDA (torch build)", torch.version.cuda or "none (a CPU build of torch)"))
    out.append(Check("versions", "cuDNN", str(cudnn) if cudnn else "none"))
    return out


def _bf16_on_cpu() -> str | None:
    """None when bf16 autocast runs a matmul on the CPU, else why not."""
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
        return None if y.dtype == torch.bfloat16 else f"autocast gave {y.dtype}"
    except RuntimeError as exc:
        return str(exc)


def devices(requested: str) -> tuple[list[Check], list[str]]:
    """One line per device with its autocast precisions; the devices to try the backbones on."""
    import torch

    from suite.environment import cpu_model

    bf16 = _bf16_on_cpu()
    out = [Check("devices", "cpu", f"{cpu_model()}, {os.cpu_count()} logical cores, torch threads "
                 f"{torch.get_num_threads()}; train.amp: bf16 {'yes' if bf16 is None else 'no (' + bf16 + ')'}, "
                 "fp16 no (CUDA only)")]
    names = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            with torch.cuda.device(i):
                bf = torch.cuda.is_bf16_supported()
            out.append(Check("devices", f"cuda:{i}", f"{p.name}, compute capability {p.major}.{p.minor}, "
                             f"{p.total_memory / 2**30:.1f} GiB; train.amp: bf16 {'yes' if bf else 'no'}, fp16 yes"))
            names.append(f"cuda:{i}")
    elif requested.startswith("cuda"):
        out.append(Check("devices", "cuda", "not available",
                         f"--device {requested}: torch sees no CUDA device (torch.cuda.is_available() is False; "
                         f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): install a CUDA "
                         "build of torch, check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu"))
    else:
        out.append(Check("devices", "cuda", "none visible (runs use the CPU)"))
    return out, names


def neuron_backends(device_names: list[str]) -> list[Check]:
    """Per device: the kernels available; per backbone: the kernel its LIF layers ran on in a forward pass."""
    import torch
    from spikingjelly.activation_based import functional

    from suite.config import ModelConfig, TimeConfig, TokenConfig
    from suite.config.model import MULTI_STAGE, BackboneName
    from suite.models import build_model
    from suite.models.neurons import available_backends, backend_in_use, use_backend
    from suite.train.precision import amp_dtype, autocast

    out = []
    for name in device_names:
        dev = torch.device(name)
        avail = available_backends(dev)
        out.append(Check("neuron backend", name, "available: " + ", ".join(
            f"{b}" if why is None else f"{b} (no: {why})" for b, why in avail.items())))
        for backbone in BackboneName.__args__:
            # one block per stage (QKFormer has three)
            cfg = ModelConfig(backbone=backbone, depth=3 if backbone in MULTI_STAGE else 1, dim=16, heads=2, T=2)
            try:
                chosen = use_backend("auto", dev)
                model = build_model(cfg, TokenConfig(), TimeConfig(), in_channels=3, image_size=(32, 32),
                                    num_classes=10).to(dev)
                with torch.no_grad(), autocast(amp_dtype("auto", dev), dev):
                    model(torch.rand(2, 3, 32, 32, device=dev))
                functional.reset_net(model)
                ran = backend_in_use(dev)
                out.append(Check("neuron backend", f"{name} {backbone}", f"{len(model.lif_layers())} LIF layers ran "
                                 f"on {ran} (auto chose {chosen}; train.amp: auto)"))
            except Exception as exc:  # noqa: BLE001 - any failure here would fail a study on this device
                out.append(Check("neuron backend", f"{name} {backbone}", "forward pass failed",
                                 f"{type(exc).__name__}: {exc}; try model.neuron.backend: torch, or report it with "
                                 "this output"))
    return out


def distributed(device_names: list[str]) -> list[Check]:
    import torch.distributed as tdist

    if not tdist.is_available():
        return [Check("distributed", "torch.distributed", "not built in",
                      "runs on several ranks (nproc_per_run > 1) need a torch built with torch.distributed")]
    gloo, nccl = tdist.is_gloo_available(), tdist.is_nccl_available()
    gpus = any(n.startswith("cuda") for n in device_names)
    return [Check("distributed", "gloo (CPU ranks)", "yes" if gloo else "no", None if gloo else
                  "nproc_per_run > 1 on the CPU needs gloo: install the official torch wheel"),
            Check("distributed", "NCCL (GPU ranks)", "yes" if nccl else "no", None if nccl or not gpus else
                  "nproc_per_run > 1 on GPUs needs NCCL: install a CUDA build of torch")]


def datasets(study: Study | None) -> list[Check]:
    from suite.config import DatasetConfig, expand
    from suite.data.registry import check_available, names

    used = {s.config.dataset.model_dump_json(): s.config.dataset for s in expand(study)} if study else {}
    configs = list(used.values()) + [DatasetConfig(name=n) for n in names() if n not in
                                     {c.name for c in used.values()}]
    out = []
    for cfg in configs:
        needed = study is not None and cfg.model_dump_json() in used
        try:
            check_available(cfg)
            out.append(Check("datasets", cfg.name, f"found{' (' + cfg.root + ')' if cfg.root else ''}"))
        except FileNotFoundError as exc:
            text = str(exc).strip()
            out.append(Check("datasets", cfg.name, "missing" + ("" if needed else f" ({text.splitlines()[0]})"),
                             f"the study needs it: {' '.join(text.split())}" if needed else None))
    return out


def _sqlite_path(uri: str) -> Path:
    return Path(uri.split(":///", 1)[1])


def tracking(study: Study | None, results: Path) -> list[Check]:
    from suite.tracking import bounded, redact, tracking_uri

    cfg = study.tracking if study is not None else TrackingConfig()
    if not cfg.enabled:
        return [Check("tracking", "MLflow store", "tracking disabled by the study")]
    uri = tracking_uri(cfg, results)
    shown = redact(uri)
    if uri.startswith("sqlite:///"):
        path = _sqlite_path(uri)
        if path.exists():
            return [Check("tracking", "MLflow store", f"{shown} (exists)")]
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        ok = os.access(parent, os.W_OK)
        return [Check("tracking", "MLflow store", f"{shown} (created by the first run)", None if ok else
                      f"{parent} is not writable: use --results DIR somewhere writable, or set MLFLOW_TRACKING_URI")]
    try:
        from mlflow import MlflowClient

        with bounded():
            MlflowClient(uri).search_experiments(max_results=1)
        return [Check("tracking", "MLflow store", f"{shown} (reachable)")]
    except Exception as exc:  # noqa: BLE001 - whatever the client raises means unreachable
        return [Check("tracking", "MLflow store", f"{shown} (unreachable)",
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}; start the server (spikesuite ui "
                      "serves the local store), fix MLFLOW_TRACKING_URI / tracking.uri, or set tracking: "
                      "{enabled: false} (the records stay complete)")]


def optuna_storage(study: Study | None) -> list[Check]:
    url = study.search.storage if study is not None and study.search is not None else None
    if not url:
        return [Check("search", "Optuna storage", "default: sqlite per study (results/<study>/optuna.db); "
                      "several workers need journal:PATH or postgresql://")]
    from suite.search.storage import redact, with_driver

    shown = redact(url)
    if url.startswith(("sqlite:///", "journal:")):
        path = _sqlite_path(url) if url.startswith("sqlite") else Path(url.split(":", 1)[1])
        parent = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        ok = os.access(parent if parent.is_dir() else parent.parent, os.W_OK)
        return [Check("search", "Optuna storage", shown, None if ok else f"{parent} is not writable")]
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(with_driver(url), connect_args={"connect_timeout": 10})
        with engine.connect():
            pass
        engine.dispose()
        return [Check("search", "Optuna storage", f"{shown} (reachable)")]
    except Exception as exc:  # noqa: BLE001 - unreachable, bad credentials, missing driver
        return [Check("search", "Optuna storage", f"{shown} (unreachable)",
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}; start the database or fix "
                      "search.storage / --storage")]


def _answers(cmd: list[str]) -> tuple[bool, str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return out.returncode == 0, (out.stdout if out.returncode == 0 else out.stderr or out.stdout).strip()


def slurm(cluster: ClusterConfig | None, study: Study | None) -> list[Check]:
    from suite.run.cluster_file import cluster_name, merged_resources, resource_problems

    found = {c: shutil.which(c) for c in SLURM_COMMANDS}
    wanted = cluster is not None and cluster.backend == "submitit" and cluster_name(cluster) == "slurm"
    if not any(found.values()):
        out = [Check("slurm", "commands", f"none of {', '.join(SLURM_COMMANDS)} on PATH: cluster: slurm is not "
                     "available here (cluster: local and debug are)")]
    else:
        missing = [c for c, p in found.items() if p is None]
        out = [Check("slurm", "commands", ", ".join(f"{c} {p}" for c, p in found.items() if p),
                     f"missing {', '.join(missing)}: install the SLURM client (slurm-client) completely"
                     if missing else None)]
        if found["sinfo"]:
            ok, text = _answers(["sinfo", "-h", "-o", "%R %a %D %T"])
            out.append(Check("slurm", "sinfo", "; ".join(text.splitlines()) if ok else "failed", None if ok else
                             f"sinfo: {text[:200]}: slurmctld is not reachable (check slurm.conf and munge; a test "
                             "cluster: sudo .ci/slurm.sh up)"))
        if found["sacct"]:
            ok, text = _answers(["sacct", "-n", "-X", "-S", "now", "-o", "JobID"])
            out.append(Check("slurm", "sacct (accounting)", "answers" if ok else "failed", None if ok else
                             f"sacct: {text[:200]}: submitit reads job states from sacct; without accounting "
                             "(slurmdbd) every job reads UNKNOWN"))
    if wanted and study is not None:
        for problem in resource_problems(cluster, merged_resources(cluster, study)):
            out.append(Check("slurm", "cluster file", "cluster: slurm", problem))
    elif wanted and not any(found.values()):
        out.append(Check("slurm", "cluster file", "cluster: slurm", "no SLURM commands here: submit from a "
                         "login node, or use cluster: local"))
    return out


def study_settings(study: Study, device: str) -> list[Check]:
    from suite.config import expand
    from suite.run.study import device_setting_problems

    specs = expand(study)
    problems = device_setting_problems(specs, device)
    return [Check("study", study.name, f"{len(specs)} runs; model.neuron.backend and train.amp fit {device}")] \
        if not problems else [Check("study", study.name, "a setting the device lacks", p) for p in problems]


def run_doctor(results: Path, *, study: Study | None = None, cluster: ClusterConfig | None = None,
               device: str = "auto") -> list[Check]:
    """Every check, in display order."""
    out = versions()
    dev_checks, device_names = devices(device)
    out += dev_checks + neuron_backends(device_names) + distributed(device_names) + datasets(study)
    out += tracking(study, results) + optuna_storage(study) + slurm(cluster, study)
    if study is not None:
        out += study_settings(study, device)
    return out


def render(checks: list[Check]) -> str:
    """The screen: sections, one line per check, problems marked; then the problems again, each with what to do."""
    lines, section = [], None
    width = max(len(c.name) for c in checks)
    for c in checks:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append(f"  {'!' if c.problem else ' '} {c.name:<{width}}  {c.value}")
    problems = [c for c in checks if c.problem]
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem(s) that would make a study fail:")
        lines += [f"  {c.section} / {c.name}: {c.problem}" for c in problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m suite.doctor (the CLI is spikesuite doctor)
    checks = run_doctor(Path("results"))
    print(render(checks))
    sys.exit(1 if any(c.problem for c in checks) else 0)
