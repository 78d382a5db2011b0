"""The committed reference results (results/reference/, see results/README.md) regenerate from their records:
`spikesuite report` rebuilds every committed report file (tables and page byte for byte, figures byte for byte
or, under another matplotlib build, pixel for pixel), and each search figure is the one its trials.csv draws."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml

from suite import report

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
STUDIES = ("atsnn_digits", "tmask_digits", "baselines_digits", "atsnn_fashion_mnist", "backbones_digits",
           "adaptive_fashion_mnist", "adaptive_fashion_mnist_recipe", "halting_gates", "qkformer_digits",
           "events_simulated", "halting_gates_fashion_mnist", "adaptive_fashion_mnist_full")


def same_figure(a: Path, b: Path) -> bool:
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix != ".png":  # a PDF may differ in bytes across builds; its PNG twin is compared by pixels
        return same_figure(a.with_suffix(".png"), b.with_suffix(".png"))
    x, y = mpimg.imread(a), mpimg.imread(b)
    return x.shape == y.shape and float(np.abs(x - y).mean()) < 2e-3


def test_every_reference_study_is_committed():
    for name in STUDIES:
        sdir = REFERENCE / name
        runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
        assert set(runs.status) == {"done"}, name
        for rid in runs.run_id:  # the records the report reads (checkpoints are ignored by git, not committed)
            assert (sdir / rid / "metrics.json").is_file() and (sdir / rid / "history.csv").is_file()
        assert (sdir / "environment.json").is_file() and (sdir / "report.html").is_file()


@pytest.mark.parametrize("name", STUDIES)
def test_report_regenerates_the_committed_outputs(tmp_path, name):
    src, dst = REFERENCE / name, tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", "report.html"))
    report.build_report(dst, mlflow=False)
    committed = sorted(p.relative_to(src) for p in (src / "report").rglob("*") if p.is_file())
    assert committed == sorted(p.relative_to(dst) for p in (dst / "report").rglob("*") if p.is_file())
    for rel in committed:
        if rel.suffix in (".png", ".pdf"):
            assert same_figure(src / rel, dst / rel), rel
        else:
            assert (src / rel).read_text() == (dst / rel).read_text(), rel
    assert (src / "report.html").read_text() == (dst / "report.html").read_text()
    # each search's own figure (search/<variant>/pareto.png) is the report's, drawn from trials.csv
    study = yaml.safe_load((src / "study.yaml").read_text())
    for variant, trials in report.search_tables(src):
        stem = f"search_pareto_{report.slug(variant)}" if variant else "search_pareto"
        assert same_figure(trials.parent / "pareto.png", dst / "report" / f"{stem}.png"), trials
    assert bool(report.search_tables(src)) == ("search" in study)


def test_the_post_hoc_drop_evaluations_are_committed_and_nox_reruns_them():
    """adaptive_fashion_mnist_full's random_drop_ft runs were evaluated after the study at keep 0.3 and 0.4
    (`spikesuite evaluate`): each run holds both, at the keep ratio's token-units, and `nox -s reference` names
    exactly those runs, so a rerun from scratch reproduces the drop curve that report/matched.md reads."""
    sdir = REFERENCE / "adaptive_fashion_mnist_full"
    runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
    drop = sorted(runs.loc[runs.variant == "random_drop_ft", "run_id"])
    assert len(drop) == 5
    evals = pd.read_csv(sdir / "evals.csv", dtype={"run_id": str})
    for keep, pct in (("0.3", 30.6), ("0.4", 40.8)):
        rows = evals[evals.override == f"keep{keep}"].set_index("run_id")
        assert sorted(rows.index) == drop, keep
        assert rows.token_pct.round(1).eq(pct).all(), keep
    noxfile = ast.parse((REFERENCE.parent.parent / "noxfile.py").read_text())
    named = next(ast.literal_eval(node.value) for node in noxfile.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "FULL_DROP_RUNS" for t in node.targets))
    assert sorted(named) == drop
