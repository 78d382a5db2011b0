"""A study's named method setting (``variants.<name>``), in a module of its own so that the rules over variants
(``controls.py``) and the study (``study.py``) both import it and never each other."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from suite.config.policies import TimeConfig, TokenConfig


class VariantConfig(BaseModel):
    """A named method setting: token and time policies plus optional model/train overrides."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    tokens: TokenConfig = TokenConfig()
    time: TimeConfig = TimeConfig()
    model: dict[str, Any] = {}  # partial overrides of the study's model section
    train: dict[str, Any] = {}  # partial overrides of the study's train section
    eval: dict[str, Any] = {}  # partial overrides of the study's eval section
