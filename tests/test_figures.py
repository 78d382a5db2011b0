"""How the report's figures and tables are drawn (issue 19): colours and markers, legends, clipped and overlapping
points, search fronts, sizes, fonts, units, the paper style, table.tex and published reference markers.

Records are written here by hand, shaped like a study directory ``spikesuite run`` writes (runs.csv, study.yaml,
``<run_id>/metrics.json`` details, ``status.json``, evals.csv, ``search/<variant>/trials.csv``); nothing trains.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from figure_records import L, N, T, capture, many_variants, write_study
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread
from matplotlib.lines import Line2D

from suite import report
from suite.report.figures import layers, pareto, search, summary
from suite.report.figures.marks import mark_clipped
from suite.report.published import backbone_matches
from suite.report.style import (
    COLUMN_IN,
    DOUBLE_COLUMN_IN,
    DPI,
    MAX_WIDTH_IN,
    PALETTE,
    STYLE,
    metric_label,
    variant_style,
)
from suite.report.tables import table_latex


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def trials_table() -> pd.DataFrame:
    """12 trials whose Pareto set has ties (equal objectives), as eval-stage searches give."""
    acc = [98.4, 98.1, 98.4, 98.4, 95.1, 97.9, 95.4, 98.1, 98.1, 98.4, 98.1, 98.1]
    energy = [1.49, 1.49, 1.49, 1.49, 0.99, 1.61, 0.99, 1.32, 1.32, 1.49, 1.32, 1.32]
    return pd.DataFrame({"trial": range(12), "state": "COMPLETE", "variant": "v01",
                         "tokens.halting.beta_offset": np.linspace(-4, 0, 12), "accuracy": acc,
                         "energy_exact_uj": energy})


def overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """13 variants (as baselines_digits), overrides far below the variants, a search, built once."""
    variants = many_variants(13)
    evals = {"v01": [("beta-2", -3.0, -20.0), ("beta-8", -40.0, -60.0)], "v04": [("beta-8", -45.0, -50.0)]}
    sdir = write_study(tmp_path_factory.mktemp("big"), "big", variants, evals=evals,
                       timesteps={v: float(T) for v in variants}, search_trials=trials_table())
    report.build_report(sdir, mlflow=False)
    return sdir


# ----------------------------------------------------------------------------------------------- 1. colours


def test_distinct_colour_and_marker_for_24_variants():
    pairs = [variant_style(i) for i in range(24)]
    assert len({c for c, _ in pairs}) == 24 and len(set(pairs)) == 24  # no colour repeats up to 24
    assert len(set(variant_style(i) for i in range(96))) == 96  # past 24 the pairs still differ
    assert [variant_style(i) for i in range(24)] == pairs  # stable
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in PALETTE], dtype=float)
    far = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1)) + np.eye(len(rgb)) * 1e9
    assert far.min() > 40  # no two near-identical shades


def test_colours_follow_the_study_order(big):
    rec = report.load_records(big)
    from suite.report.style import style

    assert [style(rec, c) for c in rec.order] == [variant_style(i) for i in range(len(rec.order))]


def test_legends_show_markers_not_errorbar_caps(big, tmp_path, monkeypatch):
    rec = report.load_records(big)
    seen = capture(monkeypatch, pareto)
    axis = pareto.pareto_axes(rec.eval.costs.describe())[0]
    pareto.pareto_figure(rec, axis, None, "", tmp_path)
    legends = [ax.get_legend() for ax in seen[0].axes if ax.get_legend() is not None]
    assert len(legends) == len(seen[0].axes) > 1  # 13 variants: panels by family, each with its own legend
    handles = [h for legend in legends for h in legend.legend_handles]
    assert not any(isinstance(h, ErrorbarContainer) for h in handles)
    variants = [h for h in handles if h.get_label().endswith("(n=2)")]
    assert {h.get_label() for h in variants} == {f"{c} (n=2)" for c in rec.order}
    assert all(isinstance(h, Line2D) and h.get_marker() not in (None, "None", "") for h in variants)
    assert all(h.get_linestyle() == "None" for h in variants)  # the marker alone, as drawn


# ----------------------------------------------------------------------------------------------- 2. clipping


def test_points_below_the_axes_are_counted_at_the_edge(big, tmp_path, monkeypatch):
    rec = report.load_records(big)
    seen = capture(monkeypatch, pareto)
    axis = pareto.pareto_axes(rec.eval.costs.describe())[0]
    fig = pareto.pareto_figure(rec, axis, None, "", tmp_path)
    ax = seen[0].axes[0]
    marks = [t.get_text() for t in ax.texts if t.get_text().startswith("▼")]
    assert sorted(marks) == ["▼1", "▼1"]  # v01's and v04's beta-8 override, each in its variant's colour
    assert "2 override point(s) below" in fig.caption
    ylo = ax.get_ylim()[0]
    assert ylo > 50  # the axes did not stretch down to the collapsed overrides


def test_mark_clipped_counts_each_edge():
    fig, ax = plt.subplots()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    n = mark_clipped(ax, [(5, -1), (6, -3), (5, 5), (12, 5), (-1, 20)], "red")
    texts = sorted(t.get_text() for t in ax.texts)
    plt.close(fig)
    assert n == 4 and texts == ["▲1", "▶1", "▼2"]


def test_points_sit_at_their_true_x_and_dense_is_on_top(big, tmp_path, monkeypatch):
    """No dodging: a point that moved sideways would claim a cost it does not have (every variant here is at T = 4)."""
    rec = report.load_records(big)
    seen = capture(monkeypatch, pareto)
    axis = pareto.pareto_axes(rec.eval.costs.describe())[1]  # every variant at T = 4
    fig = pareto.pareto_figure(rec, axis, None, "", tmp_path)
    for ax in seen[0].axes:
        points = [(c.lines[0].get_xdata()[0], c.lines[0].get_zorder(), c.lines[0].get_markeredgecolor())
                  for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert points and {p[0] for p in points} == {float(T)}
        dense_z = points[0][1]  # dense is the study's first variant, the reference of every panel
        assert dense_z > max(p[1] for p in points[1:]) and points[0][2] == "black"
    assert "spread" not in fig.caption and "true x" in fig.caption


# ----------------------------------------------------------------------------------------------- 3. search


def test_search_front_accuracy_on_y_with_readable_labels(big, tmp_path, monkeypatch):
    seen = capture(monkeypatch, search)
    paths = search.search_figure(trials_table(), ["accuracy", "energy_exact_uj"], ["maximize", "minimize"], "s",
                                 tmp_path, "front", split="val")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    fig = seen[0]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "validation accuracy (%)" and ax.get_xlabel() == "energy (µJ per image, exact)"
    assert "validation split" in fig._suptitle.get_text()
    labels = [t for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == ["0, 2, 3 +1", "6", "7, 8, 10 +1"]  # ties share one label
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert metric_label("token_pct") == "token-units (% of dense)"
    assert metric_label("accuracy", "test") == "test accuracy (%)" and metric_label("accuracy") == "accuracy (%)"
    assert search.objective_pairs(["token_pct", "accuracy"], [False, True]) == [(0, 1)]
    assert search.objective_pairs(["accuracy", "token_pct"], [True, False]) == [(1, 0)]


def test_report_search_figure_names_the_split(big):
    page = (big / "report.html").read_text()
    assert "scored on the val split" in page and 'src="report/search_pareto_v01.png"' in page


def test_search_own_figure_redraws_as_the_reports(big, tmp_path):
    sdir = tmp_path / "big"
    shutil.copytree(big, sdir)
    paths = search.redraw_search_figures(report.load_records(sdir))
    assert [p.relative_to(sdir).as_posix() for p in paths] == ["search/v01/pareto.png", "search/v01/pareto.pdf"]
    assert paths[0].read_bytes() == (big / "report" / "search_pareto_v01.png").read_bytes()


# ----------------------------------------------------------------------------------------------- 4. sizes


def test_every_figure_is_page_shaped(big):
    pngs = sorted((big / "report").glob("*.png"))
    assert len(pngs) >= 9
    for png in pngs:
        h, w = imread(png).shape[:2]
        assert w <= (MAX_WIDTH_IN + 0.3) * DPI, (png.name, w)  # 0.3 in: the tight crop's padding
        assert 0.25 <= h / w <= 1.6, (png.name, w, h)


# ----------------------------------------------------------------------------------------------- 5. fonts


def test_pdfs_embed_truetype_not_type3(big):
    pdfs = sorted((big / "report").glob("*.pdf"))
    assert pdfs
    for pdf in pdfs:
        data = pdf.read_bytes()
        assert b"/Type3" not in data, pdf.name
        assert b"/FontFile2" in data, pdf.name  # the TrueType font program is embedded
    assert STYLE["pdf.fonttype"] == STYLE["ps.fonttype"] == 42


# ----------------------------------------------------------------------------------------------- 6. units


def test_units_use_micro_and_times_signs(big, tmp_path, monkeypatch):
    md = (big / "report" / "table.md").read_text()
    assert "energy (µJ, exact)" in md and "E_MAC × MACs" in md and "uJ" not in md
    tex = (big / "report" / "table.tex").read_text()
    assert r"$\mu$J" in tex and r"$\times$" in tex and "µ" not in tex and "×" not in tex
    assert not re.search(r"[^\x00-\x7f]", tex)  # plain ASCII: compiles with any LaTeX engine and inputenc
    axes = pareto.pareto_axes("E_MAC 4.6 pJ, E_AC 0.9 pJ")
    assert "µJ" in axes[2].label and "×" in axes[0].label
    rec = report.load_records(big)
    seen = capture(monkeypatch, summary)
    summary.energy_figure(rec, tmp_path)
    assert "µJ" in seen[0].axes[0].get_xlabel()


# ----------------------------------------------------------------------------------------------- 7. paper


def _media_box_width(pdf: Path) -> float:
    m = re.search(rb"/MediaBox \[\s*([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)\s*\]", pdf.read_bytes())
    assert m, pdf
    return float(m.group(3)) - float(m.group(1))


def test_paper_style_writes_column_sized_figures(tmp_path, monkeypatch):
    sdir = write_study(tmp_path, "columns", many_variants(5))
    paths = report.build_report(sdir, mlflow=False)
    assert not (sdir / "report" / "paper").exists()  # the default style writes none
    seen = capture(monkeypatch, pareto)
    paths = report.build_report(sdir, mlflow=False, style="paper")
    paper = sorted(p.name for p in paths if p.parent.name == "paper")
    assert paper == sorted(f"accuracy_vs_{m}_{s}.pdf" for m in ("tokens", "timesteps", "energy")
                           for s in ("1col", "2col"))
    for name in paper:
        want = COLUMN_IN if name.endswith("_1col.pdf") else DOUBLE_COLUMN_IN
        assert _media_box_width(sdir / "report" / "paper" / name) == pytest.approx(want * 72, abs=0.05)
    paper_figs = [f for f in seen if not f.axes[0].get_title()]  # paper figures carry no title
    assert len(paper_figs) == 6
    for fig in paper_figs:
        (legend,) = fig.legends
        renderer = fig.canvas.get_renderer()
        assert not overlap(legend.get_window_extent(renderer), fig.axes[0].get_window_extent(renderer))
    with pytest.raises(ValueError, match="report style"):
        report.build_report(sdir, mlflow=False, style="poster")
    report.build_report(sdir, mlflow=False)  # back to default: the paper figures go with the style
    assert not list((sdir / "report").glob("paper/*.pdf"))


# ----------------------------------------------------------------------------------------------- 8. table.tex


def check_tex_structure(tex: str) -> None:
    """booktabs rules in order, balanced braces, every row with as many cells as the column spec."""
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
    body = tex.split(r"\toprule")[1].split(r"\bottomrule")[0].replace(r"\midrule", "")
    rows = [r for r in body.split(r" \\") if r.strip()]
    assert rows and all(len(re.split(r"(?<!\\)&", r)) == len(spec) for r in rows)
    assert r"\resizebox{\ifdim\width>\columnwidth\columnwidth\else\width\fi}{!}" in tex  # never wider than a column


def test_table_tex_fits_a_column_and_compiles(big, tmp_path):
    tex = (big / "report" / "table.tex").read_text()
    check_tex_structure(tex)
    assert r"\begin{tabular}{lrrrrr}" in tex
    small = report.Table("t", ("variant", "acc (%)"), (("x_y", "1.0 ± 0.1"),))
    check_tex_structure(table_latex(small, "tab:t"))
    engine = shutil.which("pdflatex")
    if engine is None:
        return  # structure checked above; CI machines without TeX stop here
    doc = ("\\documentclass[twocolumn]{article}\\usepackage{booktabs,graphicx}\\begin{document}\n"
           + tex + "\\end{document}\n")
    (tmp_path / "t.tex").write_text(doc)
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]


# ----------------------------------------------------------------------------------------------- 9. published


CIFAR_VARIANTS = {"dense": {}, "static_t2": {"model": {"T": 2}}, "act": {"tokens": {"halting": {}}}}


def test_published_markers_on_a_cifar10_study(tmp_path, monkeypatch):
    sdir = write_study(tmp_path, "cifar", CIFAR_VARIANTS, dataset="cifar10",
                       timesteps={"dense": 4.0, "static_t2": 2.0, "act": 4.0})
    rec = report.load_records(sdir)
    published, note = report.published_for(rec.dataset, {"spikformer"})
    assert published is not None and "ResNet-19" in note  # SEENN-II's ResNet is another backbone: not drawn
    assert all(backbone_matches(r, ["spikformer"]) for _, r in published.iterrows())
    axis = pareto.pareto_axes(rec.eval.costs.describe())[1]  # timesteps: published numbers have them
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(layout="constrained")
        drawn = pareto.draw_pareto(ax, rec, axis, published)
    labels = [h.get_label() for h in drawn.handles]
    assert pareto.PUBLISHED_LABEL in labels
    hollow = [c for c in ax.collections if len(c.get_offsets()) == len(drawn.published)]
    assert hollow and np.allclose(np.asarray(hollow[0].get_offsets())[:, 1], drawn.published.accuracy)
    assert set(drawn.published.method) >= {"Spikformer"} and "SEENN-II" not in set(drawn.published.method)
    plt.close(fig)
    # end to end: the report's accuracy-vs-timesteps figure labels them P1, P2... and the caption keys them
    seen = capture(monkeypatch, pareto)
    report.build_report(sdir, mlflow=False)
    timesteps_fig = next(f for f in seen if "timesteps" in f.axes[0].get_title())
    assert {"P1", "P2"} <= {t.get_text() for t in timesteps_fig.axes[0].texts}
    assert pareto.PUBLISHED_LABEL in [t.get_text() for t in timesteps_fig.legends[0].get_texts()]
    page = (sdir / "report.html").read_text()
    assert "P1 Spikformer" in page


def test_published_backbone_matching():
    row = pd.Series({"backbone": "Spikingformer-4-384", "method": "Spikingformer"})
    assert not backbone_matches(row, ["spikformer"])
    assert backbone_matches(pd.Series({"backbone": None, "method": "Dynamic SpikFormer (Datta)"}), ["spikformer"])
    assert backbone_matches(pd.Series({"backbone": "SDT-2-512", "method": "Spike-driven Transformer"}), ["sdt"])
    frame, note = report.published_for("cifar10", {"sdt"})
    assert frame is not None and set(frame.backbone) == {"SDT-2-512"}
    frame, note = report.published_for("cifar10")  # no backbone given: every row of the dataset
    assert frame is not None and "ResNet-19" in set(frame.backbone)


def test_published_energies_outside_our_range_are_counted_at_the_edge(tmp_path):
    sdir = write_study(tmp_path, "cifar", CIFAR_VARIANTS, dataset="cifar10")
    rec = report.load_records(sdir)
    published = pd.DataFrame({"accuracy": [95.0, 94.0], "energy_mj": [7.7, 12.4], "timesteps": [4.0, 4.0],
                              "token_reduction": [np.nan, np.nan], "method": ["A", "B"], "backbone": ["X", "Y"],
                              "confidence": ["read", "read"]})
    axis = pareto.pareto_axes("")[2]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(layout="constrained")
        drawn = pareto.draw_pareto(ax, rec, axis, published)
    assert drawn.published_out == 2 and ax.get_xlim()[1] < 100  # our µJ range kept, 7700 µJ counted at the edge
    assert sum(int(t.get_text()[1:]) for t in ax.texts if t.get_text()[:1] in ("▶", "▲")) == 2
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- 10. details


def test_firing_legend_outside_the_lines(big, tmp_path, monkeypatch):
    rec = report.load_records(big)
    seen = capture(monkeypatch, layers)
    layers.firing_figure(rec, tmp_path)
    fig = seen[0]
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert not overlap(legend.get_window_extent(renderer), fig.axes[0].get_window_extent(renderer))
    assert all(h.get_marker() not in (None, "None") for h in legend.legend_handles)


def test_early_exit_axis_has_whole_steps(big, tmp_path, monkeypatch):
    rec = report.load_records(big)
    seen = capture(monkeypatch, summary)
    assert summary.exit_figure(rec, tmp_path).skipped is None
    ticks = seen[0].axes[0].get_xticks()
    assert list(ticks) == list(range(1, T + 1))


def test_heatmap_legend_says_what_the_records_tell(tmp_path, monkeypatch):
    from suite.report.figures import heatmaps

    sdir = write_study(tmp_path, "maps", {"act": {"tokens": {"halting": {}}}}, seeds=(0,))
    rid = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str}).run_id.iloc[0]
    rng = np.random.default_rng(0)
    np.savez_compressed(sdir / rid / "maps.npz", images=rng.normal(size=(4, 1, 8, 8)).astype(np.float32),
                        maps=rng.random((4, L, T, N)) < 0.7, labels=np.arange(4), pred=np.arange(4),
                        grid=np.array([4, 4]))
    seen = capture(monkeypatch, heatmaps)
    fig = heatmaps.heatmap_figure(report.load_records(sdir), "act", rid, tmp_path)
    texts = [t.get_text() for t in seen[0].legends[0].get_texts()]
    assert len(texts) == 2 and "halted or merged" in texts[1]
    assert "drawn alike" in fig.caption  # maps.npz holds one active/inactive mask: merged = halted on the page
