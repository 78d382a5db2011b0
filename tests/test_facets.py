"""Figures that survive review (issue 23, item 4): panels by family with at most six series, error bars that are
t-intervals of the mean, the front's bootstrap band, x as % of the dense reference, values that hold by construction
left out of means, and byte-identical files for identical records.

Records are written by hand (``tests/test_figures.py``'s ``write_study``); nothing trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from figure_records import capture, many_variants, write_study
from matplotlib.container import ErrorbarContainer
from scipy import stats as sps

from suite import records, report
from suite.metrics import similarity_by_construction, temporal_similarity_mean
from suite.report.figures import PAPER_DIR, facets, pareto, temporal
from suite.report.figures.facets import MAX_SERIES, config_family
from suite.report.style import STYLE

FAMILY_VARIANTS = {
    "dense": {},
    "static_t2": {"model": {"T": 2}},
    "tome": {"eval": {"apply": {"tokens.merge": {"r": 2}}}},
    "act": {"tokens": {"halting": {}}},
    "tmask": {"time": {"mask": {}}},
    "seenn": {"time": {"exit": {"threshold": 0.9}}},
    "dense_int": {"model": {"stem": "integrate"}},
    "dense_sdt": {"model": {"backbone": "sdt"}},
}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write_configs(sdir: Path, models: dict[str, dict]) -> None:
    """A ``config.yaml`` per run with its variant's model section (``write_study`` writes none), as runs do."""
    study = yaml.safe_load((sdir / "study.yaml").read_text())
    runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
    for r in runs.itertuples():
        model = {**study["model"], **models.get(r.variant, {})}
        (sdir / r.run_id / "config.yaml").write_text(yaml.safe_dump({"run_id": r.run_id, "config": {"model": model}}))


# ----------------------------------------------------------------------------------------------- families


def test_family_comes_from_what_a_config_changes(tmp_path):
    sdir = write_study(tmp_path, "fam", FAMILY_VARIANTS)
    write_configs(sdir, {v: cfg.get("model", {}) for v, cfg in FAMILY_VARIANTS.items()})
    rec = report.load_records(sdir)
    got = {c: config_family(rec, c) for c in rec.order}
    assert got == {"dense": "reference", "static_t2": "time", "tome": "token", "act": "token", "tmask": "time",
                   "seenn": "time", "dense_int": "stem", "dense_sdt": "backbone"}
    panels = facets.facets(rec, list(rec.order))
    assert [p.title for p in panels] == ["token", "time", "stem", "backbone"]
    assert all(p.reference == "dense" and p.series[0] == "dense" for p in panels)
    assert sorted(c for p in panels for c in p.configs) == sorted(set(rec.order) - {"dense"})
    # six or fewer configs: one panel, no families
    assert [p.series for p in facets.facets(rec, list(rec.order)[:5])] == [tuple(rec.order[:5])]


def _token_figures(sdir: Path, out: Path) -> list[Path]:
    """The accuracy-vs-token-units figure of the report and of the paper style (one and two columns) of ``sdir``,
    as ``build_report(style="paper")`` draws them (the other axes are drawn by the same code, and slow to draw)."""
    rec = report.load_records(sdir)
    axis = pareto.pareto_axes("")[0]
    with plt.rc_context(STYLE):
        return list(pareto.pareto_figure(rec, axis, None, "", out).paths) + pareto.paper_figures(
            rec, axis, None, out / PAPER_DIR)


def test_no_paper_style_panel_has_over_six_series(tmp_path, monkeypatch):
    """24 variants (the size of backbones_digits): every panel of the accuracy-vs-cost figure, paper style
    included, holds at most six series, and together the panels show every variant."""
    sdir = write_study(tmp_path, "wide", many_variants(24))
    seen = capture(monkeypatch, pareto)
    paths = _token_figures(sdir, tmp_path / "out")
    assert sorted(p.name for p in paths if p.parent.name == PAPER_DIR) == ["accuracy_vs_tokens_1col.pdf",
                                                                         "accuracy_vs_tokens_2col.pdf"]
    rec = report.load_records(sdir)
    assert len(seen) == 3  # the report's figure, the two paper figures
    for fig in seen:
        shown = set()
        assert len(fig.axes) > 1
        for ax in fig.axes:
            series = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert 0 < len(series) <= MAX_SERIES, len(series)
            shown |= {t.get_text() for t in ax.get_legend().get_texts() if t.get_text().endswith("(n=2)")}
        assert shown == {f"{c} (n=2)" for c in rec.order}


# ----------------------------------------------------------------------------------------------- intervals


def test_error_bars_are_t_intervals_of_the_mean(tmp_path, monkeypatch):
    """Three seeds: each point's bars span the 95 % t-interval of its mean (scipy.stats.t.interval), in x and y."""
    sdir = write_study(tmp_path, "ci", {"dense": {}, "act": {"tokens": {"halting": {}}}}, seeds=(0, 1, 2))
    runs = pd.read_csv(sdir / "runs.csv")
    act = runs[runs.variant == "act"]
    act.loc[:, "token_pct"] = [50.0, 61.0, 55.5]  # a spread in x too
    runs.loc[act.index, "token_pct"] = act.token_pct
    runs.to_csv(sdir / "runs.csv", index=False)
    rec = report.load_records(sdir)
    seen = capture(monkeypatch, pareto)
    fig = pareto.pareto_figure(rec, pareto.pareto_axes("")[0], None, "", tmp_path)
    assert "95 % confidence interval of the mean" in fig.caption and "Student t" in fig.caption
    (ax,) = seen[0].axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    for container, variant in zip(bars, ["dense", "act"]):
        g = runs[runs.variant == variant]
        xcol, ycol = container.lines[2]  # x bars then y bars
        for col, metric in ((xcol, "token_pct"), (ycol, "accuracy")):
            v = g[metric].to_numpy(float)
            (seg,) = col.get_segments()
            ends = sorted(seg[:, 0] if metric == "token_pct" else seg[:, 1])
            if np.ptp(v) == 0:  # dense: every seed at 100 %, no spread, a bar of length 0
                assert ends[0] == pytest.approx(ends[1])
                continue
            lo, hi = sps.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
            assert ends == pytest.approx([lo, hi], rel=1e-9), (variant, metric)


def test_front_band_is_the_bootstrap_interval_of_the_attained_front():
    grid = np.linspace(0, 10, 11)
    assert np.allclose(pareto.attained([(2.0, 80.0), (5.0, 90.0)], grid)[[1, 2, 5, 10]], [np.nan, 80, 90, 90],
                       equal_nan=True)
    # identical seeds: every resample gives the same front, so the band is the front
    same = [(np.array([2.0, 2.0]), np.array([80.0, 80.0])), (np.array([5.0, 5.0]), np.array([90.0, 90.0]))]
    lo, hi = pareto.front_band(same, grid)
    front = pareto.attained([(2.0, 80.0), (5.0, 90.0)], grid)
    assert np.allclose(lo, front, equal_nan=True) and np.allclose(hi, front, equal_nan=True)
    # spread seeds: the band widens, contains the front of the means, and is the same on every call
    spread = [(np.array([1.5, 2.5, 2.0]), np.array([76.0, 84.0, 80.0])), (np.array([5.0, 5.0, 5.0]),
                                                                            np.array([85.0, 95.0, 90.0]))]
    lo, hi = pareto.front_band(spread, grid)
    again = pareto.front_band(spread, grid)
    assert np.array_equal(lo, again[0], equal_nan=True) and np.array_equal(hi, again[1], equal_nan=True)
    at = grid >= 5
    assert (lo[at] < 90 - 1).all() and (hi[at] > 90 + 1).all()


def test_token_axis_is_percent_of_the_dense_reference(tmp_path, monkeypatch):
    sdir = write_study(tmp_path, "pct", {"dense": {}, "act": {"tokens": {"halting": {}}}})
    rec = report.load_records(sdir)
    axis = pareto.pareto_axes("")[0]
    assert axis.metric == "token_pct" and "% of the dense reference" in axis.label
    seen = capture(monkeypatch, pareto)
    pareto.pareto_figure(rec, axis, None, "", tmp_path)
    dense = next(c for c in seen[0].axes[0].containers if isinstance(c, ErrorbarContainer))
    assert dense.lines[0].get_xdata()[0] == pytest.approx(100.0)


def test_faceted_figures_are_byte_identical_for_identical_records(tmp_path):
    """Panels, t-intervals and the bootstrap band (a seeded generator) give the same bytes from the same records."""
    first = write_study(tmp_path / "a", "same", many_variants(8), seeds=(0, 1, 2))
    second = tmp_path / "b" / "same"
    shutil.copytree(first, second)
    one, two = _token_figures(first, first / "report"), _token_figures(second, second / "report")
    assert any(p.parent.name == PAPER_DIR for p in one) and len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a.relative_to(first) == b.relative_to(second) and a.read_bytes() == b.read_bytes(), a.name


# ----------------------------------------------------------------------------------------------- by construction


def test_similarity_by_construction_is_left_out_of_the_mean():
    sims = {"block0": 1.0, "block1": 0.8, "block2": 0.6}
    assert similarity_by_construction("once", list(sims)) == ("block0",)
    assert similarity_by_construction("integrate", list(sims)) == ("block0",)
    assert similarity_by_construction("per_step", list(sims)) == ()
    assert temporal_similarity_mean(sims, "once") == pytest.approx(0.7)
    assert temporal_similarity_mean(sims, "per_step") == pytest.approx(0.8)
    assert temporal_similarity_mean({"block0": 1.0}, "integrate") is None
    row = {"temporal_similarity": 0.8}
    records.restate_similarity(row, {"temporal_similarity": sims}, "integrate")
    assert row["temporal_similarity"] == pytest.approx(0.7)


def test_temporal_figure_marks_block0_of_a_stem_run_once(tmp_path, monkeypatch):
    variants = {"dense": {}, "dense_once": {"model": {"stem": "once"}}}
    sdir = write_study(tmp_path, "stem", variants)
    write_configs(sdir, {v: cfg.get("model", {}) for v, cfg in variants.items()})
    for path in sdir.glob("*/metrics.json"):  # the records as committed: a mean that still counts block 0
        doc = json.loads(path.read_text())
        once = doc["metrics"]["variant"] == "dense_once"
        doc["details"]["temporal_similarity"] = {"block0": 1.0 if once else 0.3, "block1": 0.6}
        doc["metrics"]["temporal_similarity"] = 0.8 if once else 0.45
        path.write_text(json.dumps(doc))
    runs = pd.read_csv(sdir / "runs.csv")
    runs["temporal_similarity"] = np.where(runs.variant == "dense_once", 0.8, 0.45)
    runs.to_csv(sdir / "runs.csv", index=False)
    rec = report.load_records(sdir)
    means = rec.done.groupby("variant").temporal_similarity.mean()
    assert means["dense_once"] == pytest.approx(0.6) and means["dense"] == pytest.approx(0.45)
    seen = capture(monkeypatch, temporal)
    fig = temporal.temporal_figure(rec, tmp_path / "out")
    assert "by construction" in fig.caption
    (ax,) = seen[0].axes
    hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and hollow[0].get_ydata()[0] == pytest.approx(1.0)
    labels = [t.get_text() for t in seen[0].legends[0].get_texts()]
    assert "dense_once (n=2, mean 0.60)" in labels and any("by construction" in lab for lab in labels)
