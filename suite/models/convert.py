"""State dicts of other implementations -> ours: one key map per (format, backbone) (docs/checkpoints.md).

A key map is a list of ``Rule``s: our key, the source key, and how the source tensor becomes ours (``Conv1d``
kernels of size 1 lose their last axis; a fused Q/K(/V) convolution and its BatchNorm are split into equal
parts). ``convert`` is strict: every key of ours must be produced, every source key consumed, and every shape
match; each failure names the tensor (and both shapes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from suite.config import ModelConfig

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names the offending tensor(s) or the file."""


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: str
    part: tuple[int, int] | None = None  # (index, parts): this rule takes one of ``parts`` equal slices of axis 0
    optional: bool = False  # a bias the source's definition lacks: absent in the file = a zero bias (exact)

    def apply(self, t: Tensor, shape: torch.Size) -> Tensor:
        if self.part is not None and t.dim() > 0:
            t = t.chunk(self.part[1], dim=0)[self.part[0]]
        if t.dim() > len(shape) and t.shape[len(shape):] == (1,) * (t.dim() - len(shape)):
            t = t.reshape(t.shape[:len(shape)])  # a 1x1 Conv1d/Conv2d kernel -> a Linear weight
        return t


def _layer(ours: str, conv: str, bn: str, linear: bool = False, part: tuple[int, int] | None = None,
           optional_bias: bool = False) -> list[Rule]:
    """Our ``ConvBNLIF``/``LinearBNLIF``/``LinearBN`` ``ours`` (``.conv``/``.fc`` and ``.bn``) from ``conv``, ``bn``.
    The bias rule applies only where our model or the file has one (``convert``)."""
    inner = f"{ours}.fc" if linear else f"{ours}.conv"
    rules = [Rule(f"{ours}.bn.{k}", f"{bn}.{k}", part=part if k != "num_batches_tracked" else None) for k in BN]
    return rules + [Rule(f"{inner}.weight", f"{conv}.weight", part=part),
                    Rule(f"{inner}.bias", f"{conv}.bias", part=part, optional=optional_bias)]


def _blocks(depth: int, src: str, names: dict[str, tuple[str, str]], optional_bias: bool = False) -> list[Rule]:
    """Per block ``b``: our ``blocks.b.<ours>`` from ``<src>.b.<conv>`` and ``<src>.b.<bn>`` (``names``)."""
    return [r for b in range(depth) for ours, (conv, bn) in names.items()
            for r in _layer(f"blocks.{b}.{ours}", f"{src}.{b}.{conv}", f"{src}.{b}.{bn}", True,
                            optional_bias=optional_bias)]


HEAD = [Rule("head.weight", "head.weight"), Rule("head.bias", "head.bias")]


def sj_spikformer(depth: int) -> list[Rule]:
    """spikingjelly 2.0 ``model.spikformer.Spikformer`` -> ours."""
    rules = [r for i in range(4) for r in _layer(f"stem.stages.{i}", f"patch_embed.stages.{i}.conv_bn.block.0",
                                                   f"patch_embed.stages.{i}.conv_bn.block.1")]
    rules += _layer("stem.rpe", "patch_embed.positional_encoding.conv_bn.block.0",
                    "patch_embed.positional_encoding.conv_bn.block.1")
    for b in range(depth):
        src = f"blocks.{b}"
        rules += [r for i, x in enumerate("qkv") for r in _layer(f"blocks.{b}.{x}", f"{src}.attn.qkv_conv_bn.0",
                                                                 f"{src}.attn.qkv_conv_bn.1", True, (i, 3))]
        rules += _layer(f"blocks.{b}.proj", f"{src}.attn.proj_conv_bn.0", f"{src}.attn.proj_conv_bn.1", True)
        rules += _layer(f"blocks.{b}.mlp1", f"{src}.mlp.fc1.0", f"{src}.mlp.fc1.1", True)
        rules += _layer(f"blocks.{b}.mlp2", f"{src}.mlp.fc2.0", f"{src}.mlp.fc2.1", True)
    return rules + HEAD


def sj_sdt(depth: int) -> list[Rule]:
    """spikingjelly 2.0 ``model.spike_driven_transformer.SpikeDrivenTransformer`` -> ours."""
    rules = [r for i in range(3) for r in _layer(f"stem.stages.{i}", f"patch_embed.stages.{i}.0",
                                                   f"patch_embed.stages.{i}.1")]
    rules += _layer("stem.final", "patch_embed.final_stage.0", "patch_embed.final_stage.1")
    rules += _layer("stem.rpe", "patch_embed.rpe_conv", "patch_embed.rpe_bn")
    names = {x: (f"attn.{x}_conv", f"attn.{x}_bn") for x in ("q", "k", "v", "proj")}
    names |= {"mlp1": ("mlp.fc1", "mlp.bn1"), "mlp2": ("mlp.fc2", "mlp.bn2")}
    return rules + _blocks(depth, "blocks", names) + HEAD


def official_spikformer(depth: int) -> list[Rule]:
    """ZK-Zhou/spikformer ``cifar10/model.py`` (``Spikformer``: ``patch_embed`` = SPS, ``block`` = Blocks) -> ours.
    Its blocks' LayerNorms ``norm1``/``norm2`` are built but never called: dropped (``IGNORED``)."""
    stem = [("proj_conv", "proj_bn"), ("proj_conv1", "proj_bn1"), ("proj_conv2", "proj_bn2"), ("proj_conv3", "proj_bn3")]
    rules = [r for i, (c, b) in enumerate(stem) for r in _layer(f"stem.stages.{i}", f"patch_embed.{c}",
                                                                  f"patch_embed.{b}")]
    rules += _layer("stem.rpe", "patch_embed.rpe_conv", "patch_embed.rpe_bn")
    names = {x: (f"attn.{x}_linear", f"attn.{x}_bn") for x in ("q", "k", "v", "proj")}
    names |= {"mlp1": ("mlp.fc1_linear", "mlp.fc1_bn"), "mlp2": ("mlp.fc2_linear", "mlp.fc2_bn")}
    return rules + _blocks(depth, "block", names) + HEAD


def official_sdt(depth: int) -> list[Rule]:
    """BICLab/Spike-Driven-Transformer ``model/spikeformer.py`` + ``module/sps.py``, ``module/ms_conv.py`` -> ours.
    Its stem convolutions have no bias where spikingjelly's (ours) have one: a zero bias, exactly the same model.
    ``attn.talking_heads`` is built but never called in its forward: dropped (``IGNORED``)."""
    stem = [("proj_conv", "proj_bn"), ("proj_conv1", "proj_bn1"), ("proj_conv2", "proj_bn2")]
    rules = [r for i, (c, b) in enumerate(stem) for r in _layer(f"stem.stages.{i}", f"patch_embed.{c}",
                                                                  f"patch_embed.{b}", optional_bias=True)]
    rules += _layer("stem.final", "patch_embed.proj_conv3", "patch_embed.proj_bn3", optional_bias=True)
    rules += _layer("stem.rpe", "patch_embed.rpe_conv", "patch_embed.rpe_bn", optional_bias=True)
    names = {x: (f"attn.{x}_conv", f"attn.{x}_bn") for x in ("q", "k", "v", "proj")}
    names |= {"mlp1": ("mlp.fc1_conv", "mlp.fc1_bn"), "mlp2": ("mlp.fc2_conv", "mlp.fc2_bn")}
    return rules + _blocks(depth, "block", names) + HEAD


def _qk_embeds(stem: dict[str, tuple[str, str]], stage: dict[str, tuple[str, str]]) -> list[Rule]:
    """QKFormer's patch embeddings: our ``stem.<layer>`` from ``patch_embed1.<conv>/<bn>`` (``stem``), and each
    transition's ``embeds.<s-1>.<layer>`` from ``patch_embed<s+1>.<conv>/<bn>`` (``stage``)."""
    rules = [r for ours, (c, b) in stem.items() for r in _layer(f"stem.{ours}", f"patch_embed1.{c}", f"patch_embed1.{b}")]
    for s in (1, 2):
        p = f"patch_embed{s + 1}"
        rules += [r for ours, (c, b) in stage.items() for r in _layer(f"embeds.{s - 1}.{ours}", f"{p}.{c}", f"{p}.{b}")]
    return rules


def official_qkformer(depths: tuple[int, ...]) -> list[Rule]:
    """zhouchenlin2096/QKFormer ``cifar10/model.py`` (``patch_embed: cifar``) -> ours."""
    rules = _qk_embeds({"stages.0": ("proj_conv", "proj_bn"), "conv2": ("proj1_conv", "proj1_bn"),
                        "res": ("proj_res_conv", "proj_res_bn")},
                       {"conv1": ("proj3_conv", "proj3_bn"), "conv2": ("proj4_conv", "proj4_bn"),
                        "res": ("proj_res_conv", "proj_res_bn")})
    b = 0
    for s, n in enumerate(depths):
        attn, names = ("ssa", "qkv") if s == 2 else ("tssa", "qk")
        for j in range(n):
            src, dst = f"stage{s + 1}.{j}", f"blocks.{b}"
            for x in (*names, "proj"):
                rules += _layer(f"{dst}.{x}", f"{src}.{attn}.{x}_conv", f"{src}.{attn}.{x}_bn", True)
            rules += [*_layer(f"{dst}.mlp1", f"{src}.mlp.mlp1_conv", f"{src}.mlp.mlp1_bn", True),
                      *_layer(f"{dst}.mlp2", f"{src}.mlp.mlp2_conv", f"{src}.mlp.mlp2_bn", True)]
            b += 1
    return rules + HEAD


def sj_qkformer(depths: tuple[int, ...]) -> list[Rule]:
    """spikingjelly 2.0 ``model.qkformer.QKFormer`` -> ours (``patch_embed: imagenet``)."""
    short = ("shortcut.0", "shortcut.1")
    rules = _qk_embeds({"stages.0": ("conv1", "bn1"), "conv2": ("conv2", "bn2"), "conv3": ("conv3", "bn3"),
                        "res": short}, {"conv1": ("conv1", "bn1"), "conv2": ("conv2", "bn2"), "res": short})
    b = 0
    for s, n in enumerate(depths):
        for j in range(n):
            src, dst = f"stage{s + 1}.{j}", f"blocks.{b}"
            names = ("q", "k", "v") if s == 2 else ("q", "k")
            fused = "qkv_conv_bn" if s == 2 else "qk_conv_bn"
            for i, x in enumerate(names):
                rules += _layer(f"{dst}.{x}", f"{src}.attn.{fused}.0", f"{src}.attn.{fused}.1", True, (i, len(names)))
            rules += [*_layer(f"{dst}.proj", f"{src}.attn.proj_conv_bn.0", f"{src}.attn.proj_conv_bn.1", True),
                      *_layer(f"{dst}.mlp1", f"{src}.mlp.fc1", f"{src}.mlp.bn1", True),
                      *_layer(f"{dst}.mlp2", f"{src}.mlp.fc2", f"{src}.mlp.bn2", True)]
            b += 1
    return rules + HEAD


# Source keys that the official definitions build but never use in their forward: dropped, never an error.
IGNORED = re.compile(r"(^|\.)(norm1|norm2|talking_heads)\.[a-z_]+$")

KEY_MAPS: dict[tuple[str, str], Callable[[ModelConfig], list[Rule]]] = {
    ("spikingjelly", "spikformer"): lambda m: sj_spikformer(m.depth),
    ("spikingjelly", "sdt"): lambda m: sj_sdt(m.depth),
    ("spikingjelly", "qkformer"): lambda m: sj_qkformer(m.stage_depths),
    ("spikformer_official", "spikformer"): lambda m: official_spikformer(m.depth),
    ("sdt_official", "sdt"): lambda m: official_sdt(m.depth),
    ("qkformer_official", "qkformer"): lambda m: official_qkformer(m.stage_depths),
}
# what each format's definition needs of ``model`` (its architecture), checked before any tensor
NEEDS: dict[tuple[str, str], tuple[str, str]] = {
    ("spikingjelly", "qkformer"): ("patch_embed", "imagenet"),
    ("qkformer_official", "qkformer"): ("patch_embed", "cifar"),
}


def key_map(fmt: str, model: ModelConfig) -> list[Rule] | None:
    """The rules of ``fmt`` for ``model``'s backbone (None: format ``suite``, our own names); an unknown pair raises."""
    if fmt == "suite":
        return None
    make = KEY_MAPS.get((fmt, model.backbone))
    if make is None:
        have = sorted(f for f, b in KEY_MAPS if b == model.backbone)
        raise CheckpointError(f"format {fmt!r} has no key map for model.backbone {model.backbone!r} (it has: "
                              f"{', '.join(have + ['suite'])})")
    need = NEEDS.get((fmt, model.backbone))
    if need is not None and getattr(model, need[0]) != need[1]:
        raise CheckpointError(f"format {fmt!r} defines QKFormer with model.{need[0]}: {need[1]} (this model has "
                              f"{getattr(model, need[0])})")
    return make(model)


def convert(rules: list[Rule] | None, theirs: dict[str, Tensor], ours: dict[str, Tensor], source: str
            ) -> dict[str, Tensor]:
    """Our state dict from ``theirs`` by ``rules`` (None: the same names), strict: missing, unexpected and
    mis-shaped tensors are named. ``ours`` is the backbone's own state (a policy's tensors are not asked for)."""
    if rules is None:
        rules = [Rule(k, k) for k in ours]
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing = []
    for r in rules:
        want = ours.get(r.ours)
        if r.theirs not in theirs:
            if want is not None and not (r.optional and r.ours.endswith(".bias")):
                missing.append(r.theirs)
            elif want is not None:
                out[r.ours] = torch.zeros_like(want)  # the source defines no bias here: zero is the same layer
            continue
        used.add(r.theirs)
        if want is None:
            raise CheckpointError(f"{source}: tensor {r.theirs!r} has no place in this model (it would be {r.ours!r})")
        t = r.apply(theirs[r.theirs], want.shape)
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(f"{source}: tensor {r.theirs!r} has shape {tuple(theirs[r.theirs].shape)}"
                                  f"{' (this slice ' + str(tuple(t.shape)) + ')' if r.part else ''}, the model's "
                                  f"{r.ours!r} needs {tuple(want.shape)}")
        out[r.ours] = t.to(want.dtype).clone()
    if missing:
        raise CheckpointError(f"{source}: missing keys {_names(missing)}")
    unexpected = [k for k in theirs if k not in used and not IGNORED.search(k)]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {_names(unexpected)}")
    left = [k for k in ours if k not in out]
    if left:
        raise CheckpointError(f"{source}: the model's tensors {_names(left)} have no source in the key map")
    return out


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")


def read_state_dict(path: Path, fmt: str) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (``torch.load(weights_only=True)``): a state dict, or one under ``model``,
    ``state_dict`` or ``model_state_dict`` (how training scripts save them; ours: ``model``). A file that is not
    one raises ``CheckpointError`` naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or unsafe-type errors all mean: not a checkpoint we read
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                       for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    if fmt != "suite":  # DataParallel / DDP checkpoints prefix every key
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def import_checkpoint(model: nn.Module, model_cfg: ModelConfig, path: Path, fmt: str) -> list[str]:
    """Copy a checkpoint of ``fmt`` into ``model``'s backbone (strict, ``convert``); a token or time policy's own
    tensors keep their initialisation. Returns those names."""
    own = model.state_dict()
    backbone = {k: v for k, v in own.items() if not k.startswith(POLICY_PREFIXES)}
    state = convert(key_map(fmt, model_cfg), read_state_dict(path, fmt), backbone, str(path))
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


POLICY_PREFIXES = ("token_policy.", "time_policy.")
