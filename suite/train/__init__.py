"""Training one run: ``loop.fit`` (AdamW + warmup/cosine, callbacks per epoch, resumable) and ``checkpoint``."""

from suite.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from suite.train.loop import FitResult, InjectedFault, NonFiniteLoss, fit, make_model, pick_device

__all__ = ["FitResult", "InjectedFault", "NonFiniteLoss", "fit", "load_checkpoint", "load_weights", "make_model",
           "pick_device", "save_checkpoint"]
