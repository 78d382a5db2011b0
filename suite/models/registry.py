"""Backbones by name (``model.backbone``), timm-style: ``@register_backbone("name")`` on the class, ``build_model``
to construct one with the policies a variant asks for."""

from __future__ import annotations

from collections.abc import Callable

from suite.config import ModelConfig, TimeConfig, TokenConfig
from suite.models.backbone import Backbone
from suite.models.policies.timemask import TimeMask
from suite.models.policies.tokens import TokenPolicy

BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: make a ``Backbone`` subclass buildable as ``model.backbone: name``."""

    def add(cls: type[Backbone]) -> type[Backbone]:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice ({BACKBONES[name].__name__}, {cls.__name__})")
        BACKBONES[name] = cls
        return cls

    return add


def build_model(model: ModelConfig, tokens: TokenConfig, time: TimeConfig, *, in_channels: int,
                image_size: tuple[int, int], num_classes: int) -> Backbone:
    """The backbone with the policies a variant asks for; with none it is exactly the dense model.

    The token policy is built before the backbone and the time mask after it (it needs the backbone's LIF layers):
    the order in which parameters draw from the RNG is that of the first version, so seeds reproduce."""
    cls = BACKBONES.get(model.backbone)
    if cls is None:
        raise ValueError(f"model.backbone: unknown backbone {model.backbone!r} (known: {', '.join(sorted(BACKBONES))})")
    token_policy = TokenPolicy(tokens, depth=model.depth, dim=model.dim, T=model.T) if tokens.enabled else None
    net = cls(model, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
              token_policy=token_policy)
    if time.mask is not None:
        net.time_policy = TimeMask(time.mask, [layer for layer in net.lif_layers() if layer.timed], model.T)
    return net
