"""``search.mode: equal_budget`` (issue 23, item 3): every variant gets the same number of evaluation-time settings of
its own knob, as a grid, scored on a validation split of the declared size; the report states each budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from suite import report
from suite.cli import main
from suite.config import SearchParam, expand, parse_study
from suite.search.budget import budget_problems, grid_values, variant_knobs

# Every kind of knob: ACT (beta_offset), random drop (keep_ratio), training-free ToMe on a dense checkpoint
# (merge r, through eval.apply), early exit (threshold), a time mask (threshold). Tiny and short: 1 seed, 1 epoch.
STUDY = """
name: eqb
dataset: {name: digits, train_subset: 300, test_subset: 60, val_fraction: 0.2}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 50, lr: 5.0e-3, warmup_epochs: 0, min_lr: 1.0e-4}
eval: {heatmap_images: 0}
execution: {progress: false}
tracking: {enabled: false}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
  drop: {tokens: {drop: {keep_ratio: 0.7}}}
  tome: {eval: {apply: {tokens.merge: {r: 1}}}}
  exit: {time: {exit: {threshold: 0.9}}}
  tmask: {time: {mask: {}}}
matrix: {seed: [0]}
search:
  mode: equal_budget
  budget: 3
  val_images: 40
  variants: [act, drop, tome, exit, tmask]
  objectives: [{metric: accuracy, direction: maximize}, {metric: token_pct, direction: minimize}]
  params:
    tokens.halting.beta_offset: {uniform: [-8.0, 0.0]}
    tokens.drop.keep_ratio: {uniform: [0.4, 1.0]}
    tokens.merge.r: {int: [0, 4]}
    time.exit.threshold: {uniform: [0.5, 0.9]}
    time.mask.threshold: {uniform: [-0.5, 0.5]}
"""
GRIDS = {"act": ("tokens.halting.beta_offset", [-8.0, -4.0, 0.0]),
         "drop": ("tokens.drop.keep_ratio", [0.4, 0.7, 1.0]),
         "tome": ("tokens.merge.r", [0, 2, 4]),
         "exit": ("time.exit.threshold", [0.5, 0.7, 0.9]),
         "tmask": ("time.mask.threshold", [-0.5, 0.0, 0.5])}


@pytest.fixture(autouse=True)
def _own_tracking_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write(tmp_path: Path, text: str = STUDY) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_grid_values():
    assert grid_values(SearchParam(uniform=(-8.0, 0.0)), 5) == [-8.0, -6.0, -4.0, -2.0, 0.0]
    assert grid_values(SearchParam(log_uniform=(0.001, 0.1)), 3) == pytest.approx([0.001, 0.01, 0.1])
    assert grid_values(SearchParam(int=(0, 8)), 3) == [0, 4, 8]
    assert grid_values(SearchParam(uniform=(0.0, 1.0)), 1) == [0.5]
    assert grid_values(SearchParam(choice=[1, 2, 3]), 3) == [1, 2, 3]
    assert "fewer than search.budget" in grid_values(SearchParam(int=(0, 2)), 4)
    assert "has 2 values" in grid_values(SearchParam(choice=[1, 2]), 3)


def test_each_variant_has_its_own_one_knob_from_its_policies():
    study = parse_study(STUDY)
    knobs, problems = variant_knobs(study, expand(study))
    assert not problems and not budget_problems(study, expand(study))
    assert knobs == {v: key for v, (key, _) in GRIDS.items()}
    # a merge config takes r or threshold: tome, which sets r, keeps r as its knob; a range nobody takes is an error
    both = parse_study(STUDY.replace("    tokens.merge.r: {int: [0, 4]}\n", "    tokens.merge.r: {int: [0, 4]}\n"
                                     "    tokens.merge.threshold: {uniform: [0.5, 0.9]}\n"))
    knobs, problems = variant_knobs(both, expand(both))
    assert knobs["tome"] == "tokens.merge.r" and problems == [
        "search.params.tokens.merge.threshold: the knob of none of the search variants (act: "
        "tokens.halting.beta_offset, drop: tokens.drop.keep_ratio, tome: tokens.merge.r, exit: time.exit.threshold, "
        "tmask: time.mask.threshold); remove it"]


def test_equal_budget_gives_every_variant_the_same_settings(tmp_path, capsys):
    """Five variants, five kinds of knob: each one grid-sampled Optuna study of exactly ``budget`` trials whose
    settings are the grid, every trial scored on ``val_images`` validation images; the report states the budgets."""
    path, results = write(tmp_path), tmp_path / "results"
    assert main(["search", str(path), "--results", str(results)]) == 0
    sdir = results / "eqb"
    for variant, (key, grid) in GRIDS.items():
        trials = pd.read_csv(sdir / "search" / variant / "trials.csv")
        assert len(trials) == 3 and set(trials.state) == {"COMPLETE"} and set(trials.variant) == {variant}
        knobs = [c for c in trials.columns if "." in c]
        assert knobs == [key]  # its own knob alone
        assert sorted(trials[key]) == pytest.approx(grid)
    # every trial scored on the declared number of validation images
    runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
    for rid in runs[runs.variant != "dense"].run_id:
        for trial in (sdir / rid / "evals").glob("trial[0-9].json"):
            doc = json.loads(trial.read_text())
            assert doc["set"]["eval.split"] == "val" and doc["metrics"]["eval_images"] == 40
    report.build_report(sdir, mlflow=False)
    text = (sdir / "report" / "table.md").read_text()
    line = next(n for n in text.splitlines() if n.startswith("- Tuning budget"))
    assert "equal_budget: 3 grid settings" in line and "on 40 validation images" in line
    for variant, (key, _) in GRIDS.items():
        assert f"{variant} 3 ({key})" in line
    assert "not tuned (0): dense." in line
    page = (sdir / "report.html").read_text()
    assert "Tuning budget" in page


BAD = [
    (("  val_images: 40\n", "  val_images: 500\n"),
     "search.val_images: 500 images declared, but the validation split of the searched runs holds 60"),
    (("  budget: 3\n", ""), "search.budget: equal_budget needs the number of settings"),
    (("tokens.merge.r: {int: [0, 4]}", "tokens.merge.r: {int: [0, 1]}"),
     "search.params.tokens.merge.r: the int range [0, 1] holds 2 values, fewer than search.budget (3)"),
    (("    time.mask.threshold: {uniform: [-0.5, 0.5]}\n", ""),
     "search.variants.4: 'tmask' has none of its evaluation-time settings in search.params (its policies declare: "
     "time.mask.threshold)"),
    (("  tmask: {time: {mask: {}}}", "  tmask: {time: {mask: {}}, tokens: {halting: {}}}"),
     "search.knobs.tmask: 'tmask' has several evaluation-time settings"),
    (("  mode: equal_budget\n", "  mode: equal_budget\n  stage: train\n"), "search.stage: equal_budget tunes"),
    (("  mode: equal_budget\n", "  mode: equal_budget\n  split: test\n"),
     "search.split: equal_budget selects on the validation split"),
]


@pytest.mark.parametrize("edit, expected", BAD)
def test_bad_equal_budget_blocks_exit_2_before_writing(tmp_path, capsys, edit, expected):
    assert edit[0] in STUDY
    path, results = write(tmp_path, STUDY.replace(*edit)), tmp_path / "results"
    assert main(["search", str(path), "--results", str(results)]) == 2
    assert expected in capsys.readouterr().err
    assert not results.exists()


def test_at_least_5000_validation_images_where_the_dataset_has_them():
    text = (STUDY.replace("name: digits, train_subset: 300, test_subset: 60, val_fraction: 0.2",
                          "name: fashion_mnist, train_subset: 6000, val_fraction: 0.1")
            .replace("  val_images: 40\n", "  val_images: 600\n"))
    study = parse_study(text)
    problems = budget_problems(study, expand(study))
    assert any(p.startswith("search.val_images: 600 validation images; fashion_mnist's training pool holds 60000, "
                            "so equal_budget selects on at least 5000") for p in problems)
    fine = parse_study(text.replace("train_subset: 6000", "train_subset: 50000").replace("val_images: 600",
                                                                                          "val_images: 5000"))
    assert not budget_problems(fine, expand(fine))


def test_val_images_follows_the_data_split():
    """The torch-free count equals the split suite.data carves."""
    from suite.data import load_data

    for text in ("{name: digits, train_subset: 300, val_fraction: 0.2}", "{name: digits, val_fraction: 0.1}",
                 "{name: synthetic, val_fraction: 0.25}"):
        cfg = parse_study(STUDY.replace("{name: digits, train_subset: 300, test_subset: 60, val_fraction: 0.2}",
                                        text)).dataset
        assert cfg.val_images() == len(load_data(cfg).val), text
    assert np.isclose(parse_study(STUDY).dataset.val_images(), 60)
