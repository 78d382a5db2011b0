"""``train.init_from: {checkpoint, format}`` (suite/models/convert.py, docs/checkpoints.md), without downloads:
spikingjelly's peer models' state dicts load into ours and give their logits; the official formats load state
dicts of modules whose attribute names follow the official repositories' model definitions (skeletons below,
written from those files); bad input exits 2 naming it, with nothing written; the file's sha256 is in the run id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import fire_peer, forward
from spikingjelly.activation_based import functional
from torch import nn

from suite import cli
from suite.config import ModelConfig, TimeConfig, TokenConfig, expand, load_study
from suite.models import build_model
from suite.models.convert import CheckpointError, convert, key_map, read_state_dict


def _ours(cfg: ModelConfig, classes: int = 5, channels: int = 3, image: int = 16) -> nn.Module:
    torch.manual_seed(1)
    return build_model(cfg, TokenConfig(), TimeConfig(), in_channels=channels, image_size=(image, image),
                       num_classes=classes).eval()


# ----------------------------------------------------------------------------------------- spikingjelly peers


@pytest.mark.parametrize("backbone", ["spikformer", "sdt"])
def test_spikingjelly_state_dicts_give_the_peer_logits(backbone: str) -> None:
    """(QKFormer's case: tests/test_qkformer.py::test_spikingjelly_weights_give_spikingjelly_logits.)"""
    from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer
    from spikingjelly.activation_based.model.spikformer import Spikformer

    torch.manual_seed(0)
    if backbone == "spikformer":
        peer = Spikformer(T=2, in_channels=3, img_size_h=16, img_size_w=16, patch_size=4, num_classes=5,
                          embed_dims=32, num_heads=4, depths=1)
    else:
        peer = SpikeDrivenTransformer(T=2, in_channels=3, num_classes=5, embed_dims=32, num_heads=4, depths=1,
                                      mlp_ratio=4.0, pooling_stat="0011")
    peer = fire_peer(peer)
    cfg = ModelConfig(backbone=backbone, depth=1, dim=32, heads=4, T=2, stem_pools=2)
    ours = _ours(cfg)
    ours.load_state_dict(convert(key_map("spikingjelly", cfg), peer.state_dict(), ours.state_dict(), "peer"))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        theirs = peer(x)
        functional.reset_net(peer)
        out = forward(ours, x, count=True)
    if backbone == "spikformer":  # spikingjelly's Spikformer returns the logits of every step
        assert torch.equal(out.step_logits, theirs)
    else:
        assert torch.equal(out.logits, theirs)
    assert all(0 < s / c < 1 for s, c in out.ctx.spikes.values())


# ----------------------------------------------------------------------------------------- official formats


def _cbn(cin: int, cout: int, k: int = 3, bias: bool = False, conv=nn.Conv2d, bn=nn.BatchNorm2d):
    return conv(cin, cout, k, bias=bias), bn(cout)


def _sps(cin: int, dim: int) -> nn.Module:
    """The official Spikformer SPS and SDT MS_SPS parameters: proj_conv{,1,2,3}/proj_bn{,1,2,3}, rpe_conv/rpe_bn."""
    pe = nn.Module()
    widths = [cin, dim // 8, dim // 4, dim // 2, dim]
    for i, suffix in enumerate(["", "1", "2", "3"]):
        conv, bn = _cbn(widths[i], widths[i + 1])
        setattr(pe, f"proj_conv{suffix}", conv)
        setattr(pe, f"proj_bn{suffix}", bn)
    pe.rpe_conv, pe.rpe_bn = _cbn(dim, dim)
    return pe


class _OfficialSpikformer(nn.Module):
    """ZK-Zhou/spikformer cifar10/model.py: attribute names and shapes (SPS, Block with SSA and MLP, head)."""

    def __init__(self, dim: int, depth: int, classes: int, cin: int):
        super().__init__()
        self.patch_embed = _sps(cin, dim)
        self.block = nn.ModuleList()
        for _ in range(depth):
            blk, attn, mlp = nn.Module(), nn.Module(), nn.Module()
            blk.norm1, blk.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            for x in ("q", "k", "v", "proj"):
                setattr(attn, f"{x}_linear", nn.Linear(dim, dim))
                setattr(attn, f"{x}_bn", nn.BatchNorm1d(dim))
            mlp.fc1_linear, mlp.fc1_bn = nn.Linear(dim, 4 * dim), nn.BatchNorm1d(4 * dim)
            mlp.fc2_linear, mlp.fc2_bn = nn.Linear(4 * dim, dim), nn.BatchNorm1d(dim)
            blk.attn, blk.mlp = attn, mlp
            self.block.append(blk)
        self.head = nn.Linear(dim, classes)


class _OfficialSDT(nn.Module):
    """BICLab/Spike-Driven-Transformer model/spikeformer.py, module/sps.py (MS_SPS), module/ms_conv.py."""

    def __init__(self, dim: int, depth: int, heads: int, classes: int, cin: int):
        super().__init__()
        self.patch_embed = _sps(cin, dim)
        self.block = nn.ModuleList()
        for _ in range(depth):
            blk, attn, mlp = nn.Module(), nn.Module(), nn.Module()
            for x in ("q", "k", "v"):
                setattr(attn, f"{x}_conv", nn.Conv2d(dim, dim, 1, bias=False))
                setattr(attn, f"{x}_bn", nn.BatchNorm2d(dim))
            attn.talking_heads = nn.Conv1d(heads, heads, 1, bias=False)
            attn.proj_conv, attn.proj_bn = nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim)
            mlp.fc1_conv, mlp.fc1_bn = nn.Conv2d(dim, 4 * dim, 1), nn.BatchNorm2d(4 * dim)
            mlp.fc2_conv, mlp.fc2_bn = nn.Conv2d(4 * dim, dim, 1), nn.BatchNorm2d(dim)
            blk.attn, blk.mlp = attn, mlp
            self.block.append(blk)
        self.head = nn.Linear(dim, classes)


class _OfficialQKFormer(nn.Module):
    """zhouchenlin2096/QKFormer cifar10/model.py (PatchEmbedInit, PatchEmbeddingStage, TokenSpikingTransformer with
    Token_QK_Attention, SpikingTransformer with Spiking_Self_Attention, MLP of 1x1 Conv2d)."""

    def __init__(self, dim: int, depths: tuple[int, int, int], classes: int, cin: int):
        super().__init__()
        dims = (dim // 4, dim // 2, dim)
        pe = nn.Module()
        pe.proj_conv, pe.proj_bn = _cbn(cin, dims[0] // 2)
        pe.proj1_conv, pe.proj1_bn = _cbn(dims[0] // 2, dims[0])
        pe.proj_res_conv, pe.proj_res_bn = _cbn(dims[0] // 2, dims[0], k=1)
        self.patch_embed1 = pe
        for s in (1, 2):
            st = nn.Module()
            st.proj3_conv, st.proj3_bn = _cbn(dims[s] // 2, dims[s])
            st.proj4_conv, st.proj4_bn = _cbn(dims[s], dims[s])
            st.proj_res_conv, st.proj_res_bn = _cbn(dims[s] // 2, dims[s], k=1)
            setattr(self, f"patch_embed{s + 1}", st)
        for s, n in enumerate(depths):
            blocks = nn.ModuleList()
            for _ in range(n):
                blk, attn, mlp = nn.Module(), nn.Module(), nn.Module()
                d = dims[s]
                for x in ("q", "k", "v") if s == 2 else ("q", "k"):
                    setattr(attn, f"{x}_conv", nn.Conv1d(d, d, 1, bias=False))
                    setattr(attn, f"{x}_bn", nn.BatchNorm1d(d))
                attn.proj_conv, attn.proj_bn = nn.Conv1d(d, d, 1), nn.BatchNorm1d(d)
                mlp.mlp1_conv, mlp.mlp1_bn = nn.Conv2d(d, 4 * d, 1), nn.BatchNorm2d(4 * d)
                mlp.mlp2_conv, mlp.mlp2_bn = nn.Conv2d(4 * d, d, 1), nn.BatchNorm2d(d)
                setattr(blk, "ssa" if s == 2 else "tssa", attn)
                blk.mlp = mlp
                blocks.append(blk)
            setattr(self, f"stage{s + 1}", blocks)
        self.head = nn.Linear(dim, classes)


OFFICIAL = {
    "spikformer_official": (ModelConfig(depth=2, dim=32, heads=4, T=2, linear_bias=True),
                            lambda: _OfficialSpikformer(32, 2, 5, 3),
                            {"block.1.attn.k_linear.weight": "blocks.1.k.fc.weight",
                             "patch_embed.proj_conv3.weight": "stem.stages.3.conv.weight",
                             "block.0.mlp.fc2_bn.running_var": "blocks.0.mlp2.bn.running_var"}),
    "sdt_official": (ModelConfig(backbone="sdt", depth=2, dim=32, heads=4, T=2),
                     lambda: _OfficialSDT(32, 2, 4, 5, 3),
                     {"block.1.attn.v_conv.weight": "blocks.1.v.fc.weight",
                      "patch_embed.proj_conv3.weight": "stem.final.conv.weight",
                      "block.0.mlp.fc1_bn.bias": "blocks.0.mlp1.bn.bias"}),
    "qkformer_official": (ModelConfig(backbone="qkformer", depth=4, dim=32, heads=2, T=2, patch_embed="cifar"),
                          lambda: _OfficialQKFormer(32, (1, 1, 2), 5, 3),
                          {"stage1.0.tssa.k_conv.weight": "blocks.0.k.fc.weight",
                           "stage3.1.ssa.v_bn.weight": "blocks.3.v.bn.weight",
                           "patch_embed2.proj4_conv.weight": "embeds.0.conv2.conv.weight",
                           "patch_embed3.proj_res_conv.weight": "embeds.1.res.conv.weight"}),
}


@pytest.mark.parametrize("fmt", list(OFFICIAL))
def test_official_state_dicts_load_strictly_into_ours(fmt: str) -> None:
    cfg, make, spots = OFFICIAL[fmt]
    torch.manual_seed(2)
    theirs = make().state_dict()
    for t in theirs.values():  # distinct values everywhere, so a misplaced tensor is caught
        if t.is_floating_point():
            t.copy_(torch.randn(t.shape))
    ours = _ours(cfg)
    state = convert(key_map(fmt, cfg), theirs, ours.state_dict(), fmt)
    ours.load_state_dict(state)  # strict: every tensor of ours has a source
    loaded = ours.state_dict()
    for src, dst in spots.items():
        assert torch.equal(loaded[dst], theirs[src].reshape(loaded[dst].shape)), (src, dst)
    if fmt == "sdt_official":  # no stem conv bias in the official definition: a zero bias, the same layer
        assert torch.all(loaded["stem.stages.0.conv.bias"] == 0)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.isfinite(forward(ours, x).logits).all()


def test_key_map_errors_name_the_tensor_and_both_shapes() -> None:
    cfg, make, _ = OFFICIAL["qkformer_official"]
    ours = _ours(cfg).state_dict()
    theirs = make().state_dict()
    bad = dict(theirs)
    bad["stage1.0.tssa.q_conv.weight"] = torch.zeros(3, 8, 1)
    with pytest.raises(CheckpointError, match=r"stage1\.0\.tssa\.q_conv\.weight.*\(3, 8, 1\).*blocks\.0\.q\.fc\.weight"
                                              r".*\(8, 8\)"):
        convert(key_map("qkformer_official", cfg), bad, ours, "f")
    missing = {k: v for k, v in theirs.items() if k != "head.bias"}
    with pytest.raises(CheckpointError, match="missing keys head.bias"):
        convert(key_map("qkformer_official", cfg), missing, ours, "f")
    with pytest.raises(CheckpointError, match="unexpected keys extra.weight"):
        convert(key_map("qkformer_official", cfg), {**theirs, "extra.weight": torch.zeros(1)}, ours, "f")
    with pytest.raises(CheckpointError, match="model.patch_embed: cifar"):
        key_map("qkformer_official", cfg.model_copy(update={"patch_embed": "imagenet"}))
    with pytest.raises(CheckpointError, match="no key map for model.backbone 'sdt'"):
        key_map("qkformer_official", ModelConfig(backbone="sdt"))


def test_read_state_dict_accepts_training_checkpoints_and_refuses_other_files(tmp_path: Path) -> None:
    sd = {"a.weight": torch.ones(2)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ours.pt")
    torch.save({"state_dict": {"module.a.weight": torch.ones(2)}}, tmp_path / "ddp.pt")
    assert read_state_dict(tmp_path / "ours.pt", "suite").keys() == {"a.weight"}
    assert read_state_dict(tmp_path / "ddp.pt", "spikingjelly").keys() == {"a.weight"}
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello")
    for name, why in (("list.pt", "not a state dict"), ("text.pt", "not a PyTorch checkpoint"),
                      ("none.pt", "no such checkpoint file")):
        with pytest.raises(CheckpointError, match=why):
            read_state_dict(tmp_path / name, "suite")


# ----------------------------------------------------------------------------------------- the study


STUDY = """
name: ckpt
dataset: {{name: synthetic, synthetic: {{image_size: 8, channels: 1, num_classes: 4, train_size: 32, test_size: 16}}}}
model: {{depth: 1, dim: 16, heads: 2, T: 2}}
train: {{epochs: 1, batch_size: 16, warmup_epochs: 0, init_from: {init}}}
variants:
  tuned: {{}}
"""


def _study(tmp_path: Path, init: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.format(init=init))
    return path


def _save_ours(path: Path, **kw) -> dict:
    cfg = ModelConfig(depth=1, dim=16, heads=2, T=2, **kw)
    torch.manual_seed(5)
    model = build_model(cfg, TokenConfig(), TimeConfig(), in_channels=1, image_size=(8, 8), num_classes=4)
    torch.save({"model": model.state_dict()}, path)
    return model.state_dict()


def test_the_files_sha256_is_in_the_run_id_and_the_variant_form_keeps_its_id(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    _save_ours(a)
    b.write_bytes(a.read_bytes())
    ids = {}
    for name in ("a", "b"):
        spec, = expand(load_study(_study(tmp_path, f"{{checkpoint: {tmp_path / name}.pt, format: suite}}")))
        ids[name] = spec
    assert ids["a"].config.init_sha256 == ids["b"].config.init_sha256 and len(ids["a"].config.init_sha256) == 64
    torch.save({"model": {"x": torch.ones(1)}}, b)
    spec_b, = expand(load_study(_study(tmp_path, f"{{checkpoint: {b}, format: suite}}")))
    assert spec_b.config.init_sha256 != ids["a"].config.init_sha256 and spec_b.run_id != ids["a"].run_id


@pytest.mark.parametrize("case", ["missing_file", "not_a_state_dict", "missing_keys", "unexpected_keys",
                                  "wrong_shape", "unknown_format", "no_key_map"])
def test_bad_checkpoints_exit_2_naming_it_and_write_nothing(tmp_path: Path, capsys, case: str) -> None:
    ckpt = tmp_path / "w.pt"
    sd = _save_ours(ckpt)
    fmt, expect = "suite", str(ckpt)
    if case == "missing_file":
        ckpt.unlink()
        expect = "no such file"
    elif case == "not_a_state_dict":
        torch.save([1, 2], ckpt)
        expect = "not a state dict"
    elif case == "missing_keys":
        torch.save({k: v for k, v in sd.items() if k != "head.bias"}, ckpt)
        expect = "missing keys head.bias"
    elif case == "unexpected_keys":
        torch.save({**sd, "surplus.weight": torch.zeros(2)}, ckpt)
        expect = "unexpected keys surplus.weight"
    elif case == "wrong_shape":
        torch.save({**sd, "head.weight": torch.zeros(3, 16)}, ckpt)
        expect = "tensor 'head.weight' has shape (3, 16), the model's 'head.weight' needs (4, 16)"
    elif case == "unknown_format":
        fmt, expect = "caffe", "train.init_from.file.format"
    else:
        fmt, expect = "qkformer_official", "no key map for model.backbone 'spikformer'"
    results = tmp_path / "results"
    path = _study(tmp_path, f"{{checkpoint: {ckpt}, format: {fmt}}}")
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expect in err, err
    assert not results.exists()


def test_a_run_starts_from_the_checkpoint(tmp_path: Path) -> None:
    """One tiny run at a negligible learning rate: its final weights are the file's (a fresh start would draw
    others from the run's seed)."""
    ckpt = tmp_path / "w.pt"
    saved = _save_ours(ckpt)
    results = tmp_path / "results"
    path = _study(tmp_path, f"{{checkpoint: {ckpt}, format: suite}}")
    path.write_text(path.read_text().replace("warmup_epochs: 0,", "warmup_epochs: 0, lr: 1.0e-12, min_lr: 0, "
                                             "weight_decay: 0,") + "tracking: {enabled: false}\n")
    assert cli.main(["run", str(path), "--results", str(results), "--no-progress", "--no-report"]) == 0
    final, = results.rglob("checkpoint.pt")
    weights = torch.load(final, weights_only=True)["model"]
    for name in ("stem.stages.0.conv.weight", "blocks.0.q.fc.weight", "head.weight"):
        torch.testing.assert_close(weights[name], saved[name], rtol=0, atol=1e-6)
