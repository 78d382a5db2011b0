"""The report side of issue 24 (torch-free): halted and merged tokens drawn apart in the heatmap, never as plain
(dark) image, and the dataset-level diagnostics figures; records that predate either still report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from figure_records import L, N, T, capture, write_study

from suite import report
from suite.report.figures import diagnostics, heatmaps


def _maps(sdir, rid: str, merged: bool) -> None:
    rng = np.random.default_rng(0)
    active = rng.random((4, L, T, N)) < 0.6
    arrays = {"images": np.zeros((4, 1, 8, 8), np.float32), "maps": active, "labels": np.arange(4),
              "pred": np.arange(4), "grid": np.array([4, 4])}
    if merged:
        arrays["merged"] = ~active & (rng.random((4, L, T, N)) < 0.5)
    np.savez_compressed(sdir / rid / "maps.npz", **arrays)


def test_new_records_draw_halted_and_merged_apart_and_never_as_plain_image(tmp_path, monkeypatch):
    sdir = write_study(tmp_path, "maps", {"act": {"tokens": {"halting": {}, "merge": {"r": 2}}}}, seeds=(0,))
    rid = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str}).run_id.iloc[0]
    _maps(sdir, rid, merged=True)
    seen = capture(monkeypatch, heatmaps)
    fig = heatmaps.heatmap_figure(report.load_records(sdir), "act", rid, tmp_path)
    texts = [t.get_text() for t in seen[0].legends[0].get_texts()]
    assert len(texts) == 3 and texts[1].startswith("halted") and texts[2].startswith("merged")
    assert "blue = halted" in fig.caption and "green = merged" in fig.caption
    # black images: every state is a visible tint, so no token tile is the plain (black) image
    with np.load(sdir / rid / "maps.npz") as data:
        maps, merged = data["maps"][0], data["merged"][0]
    tiles = heatmaps.mosaic(np.zeros((8, 8)), maps, (4, 4), merged=merged)
    tile_pixels = tiles[:8, 9:]  # block 0, the timestep columns (the first column is the image itself)
    tile_pixels = tile_pixels[(tile_pixels != 1.0).any(-1)]  # drop the white gaps
    assert (tile_pixels.max(-1) > 0.3).all(), "a token state drawn as the dark image"
    colours = {tuple(np.round(p, 3)) for p in tile_pixels}
    expected = {tuple(np.round(heatmaps.TINT_ALPHA * t, 3))
                for t in (heatmaps.TINT, heatmaps.HALTED_TINT, heatmaps.MERGED_TINT)}
    assert colours == expected


def test_old_records_without_a_merged_map_tint_every_inactive_token(tmp_path, monkeypatch):
    sdir = write_study(tmp_path, "maps", {"act": {"tokens": {"halting": {}}}}, seeds=(0,))
    rid = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str}).run_id.iloc[0]
    _maps(sdir, rid, merged=False)
    tiles = heatmaps.mosaic(np.zeros((8, 8)), np.zeros((L, T, N), bool), (4, 4))
    assert np.allclose(tiles[:8, 9:17], heatmaps.TINT_ALPHA * heatmaps.INACTIVE_TINT)


def _diagnostics(sdir) -> None:
    """Add foreground and occlusion details to every run of a written study (fg kept more than bg)."""
    for k, path in enumerate(sorted(sdir.glob("*/metrics.json"))):
        rec = json.loads(path.read_text())
        rec["details"]["foreground"] = {"rule": "rule", "fg_active_pct": [[90.0 - t for t in range(T)]] * L,
                                        "bg_active_pct": [[60.0 - k] * T] * L, "fg_tokens": 10.0, "bg_tokens": 6.0}
        rec["details"]["occlusion"] = {"rule": "occ", "spearman": [0.1 * k, 0.2], "images": 64, "n": 2}
        path.write_text(json.dumps(rec))


def test_diagnostics_figures_from_the_records_and_absent_for_old_ones(tmp_path, monkeypatch):
    variants = {"dense": {}, "act": {"tokens": {"halting": {}}}}
    old = write_study(tmp_path, "old", variants)
    assert diagnostics.diagnostic_figures(report.load_records(old), tmp_path / "o") == []
    sdir = write_study(tmp_path, "new", variants)
    _diagnostics(sdir)
    seen = capture(monkeypatch, diagnostics)
    figs = diagnostics.diagnostic_figures(report.load_records(sdir), tmp_path / "n")
    assert [f.stem for f in figs] == ["foreground_active", "occlusion_spearman"]
    assert all(f.skipped is None and f.paths for f in figs)
    fg_axes = seen[0].axes[:2]
    assert [a.get_title() for a in fg_axes] == ["dense (n=2)", "act (n=2)"]
    assert "n = images where both vary" in figs[1].caption and "2-2 of 64 images" in \
        seen[1].legends[0].get_texts()[0].get_text()


def test_the_diagnostics_table_gives_fg_minus_bg_and_rho_with_t_intervals_and_is_absent_for_old_records(tmp_path):
    from scipy import stats as sps

    from suite.report.tables import diagnostics_table, write_tables

    variants = {"dense": {}, "act": {"tokens": {"halting": {}}}}
    old = write_study(tmp_path, "old", variants, seeds=(0, 1, 2))
    assert diagnostics_table(report.load_records(old), 0.95) is None
    write_tables(report.load_records(old), old / "report")
    assert not (old / "report" / "diagnostics.md").exists()
    sdir = write_study(tmp_path, "new", variants, seeds=(0, 1, 2))
    runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
    act = runs.variant == "act"
    runs.loc[act, "fg_active_pct"] = [80.0, 70.0, 75.0]
    runs.loc[act, "bg_active_pct"] = [60.0, 65.0, 55.0]  # fg - bg: 20, 5, 20
    runs.loc[act, "occlusion_spearman"] = [0.1, 0.3, 0.2]
    runs.loc[act, "occlusion_n"] = [50, 64, 60]
    runs.to_csv(sdir / "runs.csv", index=False)
    table = diagnostics_table(report.load_records(sdir), 0.95)
    assert [r[0] for r in table.rows] == ["act"]  # dense records no diagnostics: no row
    d = [20.0, 5.0, 20.0]
    lo, hi = sps.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert table.rows[0][4] == f"+15.0 [{lo:+.1f}, {hi:+.1f}]"
    lo, hi = sps.ttest_1samp([0.1, 0.3, 0.2], 0.0).confidence_interval(0.95)
    assert table.rows[0][5] == f"+0.20 [{lo:+.2f}, {hi:+.2f}]" and table.rows[0][6] == "50–64"
    write_tables(report.load_records(sdir), sdir / "report")
    assert "which tokens the policy keeps" in (sdir / "report" / "diagnostics.md").read_text()
