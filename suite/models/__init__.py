"""Model construction: the Spikformer backbone plus optional token and time policies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from baselines.temporal import ExitConfig
from suite.models.spikformer import ModelConfig, ModelOutput, Spikformer, lif_layer_names
from suite.models.timemask import TimeMask, TimeMaskConfig
from suite.models.tokens import TokenConfig, TokenPolicy


class TimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mask: TimeMaskConfig | None = None  # trainable per-module timestep masks (Datta et al.)
    exit: ExitConfig | None = None  # per-sample early exit at evaluation (SEENN-I / DT-SNN)


def build_model(model: ModelConfig, tokens: TokenConfig, time: TimeConfig, *, in_channels: int,
                image_size: tuple[int, int], num_classes: int) -> Spikformer:
    """The backbone with the policies a variant asks for; with none it is exactly the dense model."""
    token_policy = TokenPolicy(tokens, depth=model.depth, dim=model.dim, T=model.T) if tokens.enabled else None
    time_policy = TimeMask(time.mask, lif_layer_names(model.depth), model.T) if time.mask is not None else None
    return Spikformer(model, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                      token_policy=token_policy, time_policy=time_policy)


__all__ = ["ModelConfig", "ModelOutput", "Spikformer", "TimeConfig", "TokenConfig", "build_model"]
