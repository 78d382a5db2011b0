"""``train.amp``: the autocast precision of training and validation, and whether the device has it.

``auto`` keeps what the suite always did (bf16 autocast on CUDA, fp32 on CPU); ``bf16`` autocasts to bfloat16 on
any device that supports it (CPU included); ``fp16`` autocasts to float16 on CUDA with a ``GradScaler`` (float16's
range underflows small gradients without loss scaling); ``off`` trains in fp32. The neurons' membrane potentials stay
fp32 under any of them (``suite.models.neurons``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

AMP_NAMES = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}


def amp_problem(setting: str, device: torch.device) -> str | None:
    """Why ``train.amp: setting`` cannot run on ``device`` (None: it can)."""
    if setting == "fp16" and device.type != "cuda":
        return (f"train.amp: fp16 needs a CUDA device (got {device}); use bf16 or off on the CPU, or auto "
                "(bf16 on CUDA, fp32 elsewhere)")
    if setting in ("bf16", "fp16") and device.type == "cuda" and not torch.cuda.is_available():
        return f"train.amp: {setting} on {device}: CUDA is not available here (torch.cuda.is_available() is False)"
    if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (f"train.amp: bf16 is not supported by {torch.cuda.get_device_name(device)} (compute capability "
                f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}); use fp16 or off")
    return None


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp: setting`` on ``device`` (None: fp32). Raises ValueError where the device
    lacks it (``amp_problem``)."""
    if problem := amp_problem(setting, device):
        raise ValueError(problem)
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[setting]


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a no-op scaler otherwise, so the training step has one shape)."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
