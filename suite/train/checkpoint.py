"""Checkpoints: written atomically after every epoch, read with ``weights_only=True`` (plain containers only), in
one place for resuming a fit, re-evaluating a run and searching over its evaluation-time settings."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from suite.names import CHECKPOINT


def load_checkpoint(path: Path, device: torch.device | str) -> dict[str, Any]:
    """The whole checkpoint (model, optimiser, scheduler, history, RNG) of a run directory's ``checkpoint.pt``."""
    return torch.load(path, map_location=device, weights_only=True)


def eval_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's run is evaluated with: its EMA's when it trained one (``train.ema``), else the
    trained model's (``"model"`` always holds the raw weights, which a resume continues from)."""
    return state.get("ema", state["model"])


def load_weights(run_dir: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The evaluated weights of a finished run (``run_dir/checkpoint.pt``, ``eval_weights``): what re-evaluation,
    searches and a fine-tuned child (``train.init_from``) start from."""
    return eval_weights(load_checkpoint(run_dir / CHECKPOINT, device))


def load_parent_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Fine-tuning: copy into ``model`` every tensor of ``state`` (the parent run's final weights) that it also
    has; its own new tensors (a policy's parameters the parent lacked) keep their initialisation. A tensor both
    have with different shapes is an error naming it. Returns the names that kept their initialisation."""
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} in {source}, {tuple(own[k].shape)} here" for k, v in state.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        raise ValueError("cannot start from the parent's weights, shapes differ: " + "; ".join(bad))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return [k for k in own if k not in state]


def start_from_checkpoint(model: torch.nn.Module, run) -> list[str]:
    """``train.init_from: {checkpoint, format}``: the file's weights through the format's key map
    (``suite.models.convert``), after checking that the file is the one the run id was computed from."""
    from suite.models.convert import CheckpointError, import_checkpoint

    init = run.train.init_from
    path = Path(init.checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != run.init_sha256:
        raise CheckpointError(f"{path}: the file changed since the study was planned (sha256 {digest[:12]}..., the run "
                              f"id has {run.init_sha256[:12]}...)")
    return import_checkpoint(model, run.model, path, init.format)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write then rename, so a kill mid-write never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """12 hex characters of the sha256 of a state dict (names and bytes, in order): equal digests mean
    bit-identical states (the ranks of a distributed run compare theirs after every epoch)."""
    h = hashlib.sha256()
    for name, value in state.items():
        h.update(name.encode())
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


def get_rng() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    keys = np_state["keys"]  # a tensor, on the device the checkpoint was mapped to (numpy needs it on the CPU)
    keys = keys.cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((np_state["kind"], keys.astype(np.uint32), np_state["pos"], np_state["has_gauss"],
                         np_state["cached"]))
    random.setstate((state["python"]["version"], tuple(state["python"]["state"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _np_state() -> dict[str, Any]:
    # Plain containers only, so the checkpoint loads with weights_only=True.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _py_state() -> dict[str, Any]:
    version, st, _ = random.getstate()
    return {"version": version, "state": list(st)}
