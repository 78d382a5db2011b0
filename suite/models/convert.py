"""State dicts of other implementations -> ours: one key map per (format, backbone) (docs/checkpoints.md).

A key map is a list of ``Rule``s: our key, the source key, and how the source tensor becomes ours (``Conv1d``
kernels of size 1 lose their last axis; a fused Q/K(/V) convolution and its BatchNorm are split into equal
parts). ``convert`` is strict: every key of ours must be produced, every source key consumed, and every shape
match; each failure names the tensor (and both shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class ImportError_(ValueError):
    """A checkpoint that does not fit the model: the message names the offending tensor(s)."""


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: str
    part: tuple[int, int] | None = None  # (index, parts): this rule takes one of ``parts`` equal slices of axis 0
    squeeze: bool = False  # a Conv1d kernel of size 1 -> a Linear weight

    def apply(self, t: Tensor) -> Tensor:
        if self.part is not None and t.dim() > 0:
            t = t.chunk(self.part[1], dim=0)[self.part[0]]
        if self.squeeze and t.dim() == 3:
            t = t.squeeze(-1)
        return t


def _module(ours: str, theirs: str, keys: tuple[str, ...], **kw) -> Iterator[Rule]:
    for k in keys:
        yield Rule(f"{ours}.{k}", f"{theirs}.{k}", **kw)


def _conv_bn(ours: str, conv: str, bn: str, bias: bool, **kw) -> Iterator[Rule]:
    """A convolution/linear ``ours.fc``/``ours.conv`` plus its BN ``ours.bn`` from ``conv`` and ``bn``."""
    yield from _module(ours.rsplit(".", 1)[0] + ".bn" if ours.endswith((".fc", ".conv")) else ours, bn, BN, **kw)
    yield from _module(ours, conv, ("weight", "bias") if bias else ("weight",), **kw)


def _layer(ours: str, conv: str, bn: str, bias: bool, linear: bool = False, part: tuple[int, int] | None = None
           ) -> Iterator[Rule]:
    """Our ``ConvBNLIF``/``LinearBNLIF`` ``ours`` (its ``.conv``/``.fc`` and ``.bn``) from ``conv`` and ``bn``."""
    inner = f"{ours}.fc" if linear else f"{ours}.conv"
    for k in BN:
        yield Rule(f"{ours}.bn.{k}", f"{bn}.{k}", part=part if k != "num_batches_tracked" else None)
    for k in ("weight", "bias") if bias else ("weight",):
        yield Rule(f"{inner}.{k}", f"{conv}.{k}", part=part, squeeze=linear)


def sj_qkformer(depths: tuple[int, ...], imagenet: bool = True) -> list[Rule]:
    """spikingjelly 2.0 ``model.qkformer.QKFormer`` -> ours (``patch_embed: imagenet``)."""
    if not imagenet:
        raise ImportError_("format spikingjelly: spikingjelly's QKFormer has the ImageNet embedding only "
                           "(model.patch_embed: imagenet)")
    rules = [*_layer("stem.stages.0", "patch_embed1.conv1", "patch_embed1.bn1", True),
             *_layer("stem.conv2", "patch_embed1.conv2", "patch_embed1.bn2", True),
             *_layer("stem.conv3", "patch_embed1.conv3", "patch_embed1.bn3", True),
             *_layer("stem.res", "patch_embed1.shortcut.0", "patch_embed1.shortcut.1", True)]
    for s in (1, 2):
        p = f"patch_embed{s + 1}"
        rules += [*_layer(f"embeds.{s - 1}.conv1", f"{p}.conv1", f"{p}.bn1", True),
                  *_layer(f"embeds.{s - 1}.conv2", f"{p}.conv2", f"{p}.bn2", True),
                  *_layer(f"embeds.{s - 1}.res", f"{p}.shortcut.0", f"{p}.shortcut.1", True)]
    b = 0
    for s, n in enumerate(depths):
        for j in range(n):
            src, dst = f"stage{s + 1}.{j}", f"blocks.{b}"
            names = ("q", "k", "v") if s == 2 else ("q", "k")
            fused = "qkv_conv_bn" if s == 2 else "qk_conv_bn"
            for i, x in enumerate(names):
                rules += _layer(f"{dst}.{x}", f"{src}.attn.{fused}.0", f"{src}.attn.{fused}.1", False, True,
                                (i, len(names)))
            rules += [*_layer(f"{dst}.proj", f"{src}.attn.proj_conv_bn.0", f"{src}.attn.proj_conv_bn.1", False, True),
                      *_layer(f"{dst}.mlp1", f"{src}.mlp.fc1", f"{src}.mlp.bn1", True, True),
                      *_layer(f"{dst}.mlp2", f"{src}.mlp.fc2", f"{src}.mlp.bn2", True, True)]
            b += 1
    return rules + [Rule("head.weight", "head.weight"), Rule("head.bias", "head.bias")]


def convert(rules: list[Rule], theirs: dict[str, Tensor], ours: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Our state dict from ``theirs`` by ``rules``, strict: missing, unexpected and mis-shaped tensors are named."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing = sorted({r.theirs for r in rules if r.theirs not in theirs})
    if missing:
        raise ImportError_(f"{source}: missing keys {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    for r in rules:
        t = r.apply(theirs[r.theirs])
        used.add(r.theirs)
        want = ours.get(r.ours)
        if want is None:
            raise ImportError_(f"{source}: the key map produces {r.ours!r}, which the model does not have")
        if tuple(t.shape) != tuple(want.shape):
            raise ImportError_(f"{source}: tensor {r.theirs!r} -> {r.ours!r} has shape {tuple(t.shape)}, the model "
                               f"needs {tuple(want.shape)}")
        out[r.ours] = t.to(want.dtype).clone()
    unexpected = sorted(set(theirs) - used)
    if unexpected:
        raise ImportError_(f"{source}: unexpected keys {', '.join(unexpected[:8])}"
                           + (" ..." if len(unexpected) > 8 else ""))
    left = sorted(k for k in ours if k not in out)
    if left:
        raise ImportError_(f"{source}: the model's keys {', '.join(left[:8])} have no source")
    return out


KeyMap = Callable[..., list[Rule]]

__all__ = ["BN", "ImportError_", "Rule", "convert", "sj_qkformer", "torch"]
