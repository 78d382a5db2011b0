"""Study files: validation with key paths, expansion, run-id stability."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from study_texts import BASE

from suite.config import StudyError, apply_overrides, expand, parse_study, run_id


def problems(text: str) -> list[str]:
    with pytest.raises(StudyError) as exc:
        parse_study(text, "s.yaml")
    return exc.value.problems


def test_expansion_product_and_stable_ids():
    study = parse_study(BASE)
    specs = expand(study)
    assert [(s.variant, s.config.seed) for s in specs] == [("dense", 0), ("dense", 1), ("act", 0), ("act", 1)]
    again = expand(parse_study(BASE))
    assert [s.run_id for s in specs] == [s.run_id for s in again]
    assert len({s.run_id for s in specs}) == 4
    # the id depends on the resolved settings only: reordering keys or renaming the study keeps it
    reordered = BASE.replace("name: t", "name: other").replace("{depth: 1, dim: 16, heads: 2, T: 2}",
                                                               "{T: 2, heads: 2, dim: 16, depth: 1}")
    assert [s.run_id for s in expand(parse_study(reordered))] == [s.run_id for s in specs]
    assert run_id(specs[0].config) == specs[0].run_id


def test_axis_include_exclude():
    text = BASE.replace("matrix: {seed: [0, 1]}", """matrix:
  seed: [0]
  model.T: [1, 2]
  tokens.halting.beta: [5.0, 10.0]
  exclude: [{variant: dense, model.T: 1}]
  include: [{variant: act, seed: 3}]""")
    specs = expand(parse_study(text))
    combos = sorted((s.variant, s.config.seed, s.config.model.T,
                     s.config.tokens.halting.beta if s.config.tokens.halting else None) for s in specs)
    # dense ignores the halting axis (no such policy) and loses T=1; act gets 2x2 plus the include
    assert combos == [("act", 0, 1, 5.0), ("act", 0, 1, 10.0), ("act", 0, 2, 5.0), ("act", 0, 2, 10.0),
                      ("act", 3, 2, 10.0), ("dense", 0, 2, None)]


@pytest.mark.parametrize("edit, expected", [
    (("halting: {}", "halting: {epz: 0.1}"), "variants.act.tokens.halting.epz: unknown key"),
    (("epochs: 1", "epochs: -1"), "train.epochs: Input should be greater than or equal to 1"),
    (("epochs: 1", "epochs: one"), "train.epochs: Input should be a valid integer"),
    (("name: synthetic", "name: mnist"), "dataset.name: Input should be"),
    (("name: t", "name: ../escape"), "name: String should match pattern"),
    (("heads: 2", "heads: 3"), "model: Value error, dim (16) must be divisible by heads (3)"),
    (("matrix: {seed: [0, 1]}", "matrix: {seed: []}"), "matrix.seed: an axis must be a non-empty list"),
    (("matrix: {seed: [0, 1]}", "matrix: {model.dpeth: [1]}"), "matrix.model.dpeth: unknown key"),
    (("variants:", "variantz: {}\nvariants:"), "variantz: unknown key"),
])
def test_schema_errors_name_the_key(edit, expected):
    found = problems(BASE.replace(*edit))
    assert any(p.startswith(expected) for p in found), found


def test_non_mapping_and_empty_and_tags():
    assert problems("") == ["the study file is empty"]
    assert "must be a mapping" in problems("- a\n- b\n")[0]
    assert "invalid YAML" in problems("name: !!python/object/apply:os.system ['echo hi']\n")[0]


def test_exclude_everything():
    text = BASE.replace("matrix: {seed: [0, 1]}", "matrix: {seed: [0], exclude: [{seed: 0}]}")
    assert problems(text) == ["matrix: expands to no runs (check exclude and the axis lists)"]


def test_cli_bad_study_exits_2_and_writes_nothing(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("halting: {}", "halting: {epz: 0.1}"))
    results = tmp_path / "results"
    for cmd in ("run", "plan"):
        proc = subprocess.run([sys.executable, "-m", "suite", cmd, str(bad), "--results", str(results)],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "variants.act.tokens.halting.epz: unknown key" in proc.stderr
    assert not results.exists()


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("studies/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_studies_validate(path: Path):
    from suite.config import load_study

    assert expand(load_study(path))


def test_eval_apply_is_validated():
    text = BASE.replace("dense: {}", "dense: {eval: {apply: {train.lr: 0.1}}}")
    assert any("eval.apply.train.lr: not an evaluation-time setting" in p for p in problems(text))


def test_apply_overrides_leaves_the_callers_values_alone():
    """A policy dict set by one key and refined by a deeper one (eval.apply + an override) is copied first."""
    spec = expand(parse_study("name: s\nvariants: {dense: {}}\n"))[0]
    apply = {"tokens.merge": {"r": 3}}
    cfg = apply_overrides(spec.config, {**apply, "tokens.merge.metric": "residual"})
    assert cfg.tokens.merge.r == 3 and cfg.tokens.merge.metric == "residual"
    assert apply == {"tokens.merge": {"r": 3}}


# ------------------------------------------------------------------------------------------ run-id hash policy

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
STUDIES = Path(__file__).resolve().parent.parent / "studies"


def _reference_specs():
    from suite.config import load_study

    for study_dir in sorted(p for p in REFERENCE.iterdir() if (p / "runs.csv").is_file()):  # not mlartifacts/
        for spec in expand(load_study(STUDIES / f"{study_dir.name}.yaml")):
            yield study_dir, spec


def test_a_new_defaulted_field_keeps_the_committed_run_ids():
    """The hash policy: a setting added later (``added_field``) stays out of the run id at its default, so every
    committed reference record keeps planning as done; set to another value it makes a new run."""
    from pydantic import create_model

    from suite import records
    from suite.config import ModelConfig, RunConfig, added_field

    Model = create_model("ModelConfig", __base__=ModelConfig, future_knob=(int, added_field(3)))
    Run = create_model("RunConfig", __base__=RunConfig, model=(Model, Model()))
    n = 0
    for study_dir, spec in _reference_specs():
        assert records.run_state(study_dir / spec.run_id, spec.run_id) == "done", (study_dir.name, spec.run_id)
        grown = Run.model_validate(spec.config.model_dump())
        assert grown.model.future_knob == 3 and "future_knob" in grown.model_dump(mode="json")["model"]
        assert run_id(grown) == spec.run_id
        moved = grown.model_copy(update={"model": grown.model.model_copy(update={"future_knob": 4})})
        assert run_id(moved) != spec.run_id
        n += 1
    assert n >= 70  # all four reference studies were checked


def test_backbone_is_a_later_field_and_an_axis():
    """``model.backbone`` was added after schema 1: at its default it changes no id; an unknown one names the key
    and the known backbones; the registry and the schema list the same backbones."""
    from typing import get_args

    from suite.config.model import BackboneName
    from suite.models import BACKBONES

    assert set(BACKBONES) == set(get_args(BackboneName))
    plain = expand(parse_study(BASE))
    explicit = expand(parse_study(BASE.replace("model: {depth: 1", "model: {backbone: spikformer, depth: 1")))
    assert [s.run_id for s in plain] == [s.run_id for s in explicit]
    assert all(s.config.model.backbone == "spikformer" for s in plain)
    lines = problems(BASE.replace("  act: {tokens: {halting: {}}}", "  act: {tokens: {halting: {}}}\n"
                                                                     "  other: {model: {backbone: vgg}}"))
    assert any(line.startswith("variants.other.model.backbone:") and "spikformer" in line for line in lines), lines


def test_schema_and_report_import_no_torch(tmp_path):
    """``suite.config`` (every schema, expansion) and ``spikesuite report`` run without the training stack."""
    import shutil

    shutil.copytree(REFERENCE / "atsnn_digits", tmp_path / "atsnn_digits")
    code = ("import sys, suite.config, suite.names\n"
            "from suite.config import load_study, expand\n"
            "from suite.cli import main\n"
            "expand(load_study('studies/smoke.yaml'))\n"
            f"assert main(['report', {str(tmp_path / 'atsnn_digits')!r}]) == 0\n"
            "heavy = sorted(m for m in ('torch', 'mlflow', 'spikingjelly', 'torchvision') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent,
                   env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert (tmp_path / "atsnn_digits" / "report.html").is_file()
