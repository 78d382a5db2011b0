"""Paired statistics of the report (``suite/report/stats.py``) and the compute-matched controls of fine-tuned
variants (``suite/config/controls.py``): numbers against scipy and hand computation, pairing, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from suite.config import StudyError, expand, parse_study
from suite.config.controls import control_of
from suite.config.report import ReportConfig
from suite.report import build_report
from suite.report.load import load_records
from suite.report.stats import (
    NONE,
    PAIRED,
    WELCH,
    compare,
    holm,
    mde,
    n_for_effect,
    paired_stats,
    welch_stats,
)

ROOT = Path(__file__).resolve().parent.parent
DIFFS = [0.5, 1.2, -0.3, 0.9, 1.5, 0.1]


# ------------------------------------------------------------------------------------------ numbers


def test_paired_numbers_equal_scipy_and_hand_computation():
    d = np.array(DIFFS)
    n, conf, margin = len(d), 0.9, 1.0
    res = paired_stats(d, conf, margin)
    sem = d.std(ddof=1) / math.sqrt(n)
    assert res["mean"] == pytest.approx(d.mean()) and res["sd"] == pytest.approx(d.std(ddof=1))
    lo, hi = stats.t.interval(conf, n - 1, loc=d.mean(), scale=sem)
    assert res["ci"] == pytest.approx((lo, hi))
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(d.mean() / sem), n - 1))
    # TOST by hand: the larger of the two one-sided p values
    p_low = stats.t.sf((d.mean() + margin) / sem, n - 1)
    p_high = stats.t.cdf((d.mean() - margin) / sem, n - 1)
    assert res["p_tost"] == pytest.approx(max(p_low, p_high))
    # n >= 5: a BCa bootstrap interval, the same as scipy's with the same generator
    boot = stats.bootstrap((d,), np.mean, confidence_level=conf, n_resamples=9999, method="BCa",
                           rng=np.random.default_rng(0)).confidence_interval
    assert res["boot"] == pytest.approx((boot.low, boot.high))
    assert boot.low < d.mean() < boot.high
    assert math.isnan(paired_stats(d[:4], conf, margin).get("boot", (math.nan,))[0])  # n < 5: none


def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.01, math.nan, 0.02])  # NaN (no test) stays NaN and does not count in m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_minimum_detectable_effect_has_80_percent_power():
    sd, n, alpha = 1.3, 4, 0.05
    effect = mde(math.sqrt(n) / sd, n - 1, alpha)
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n) / sd
    assert stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) == pytest.approx(0.8, abs=1e-6)
    # large n: the normal approximation (z_0.975 + z_0.8) sd / sqrt(n)
    big = 2000
    approx = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / math.sqrt(big)
    assert mde(math.sqrt(big) / sd, big - 1, alpha) == pytest.approx(approx, rel=0.01)
    # the pairs needed for a 1-unit effect: the first n whose MDE is at most 1
    need = n_for_effect(sd, 1.0, alpha)
    assert mde(math.sqrt(need) / sd, need - 1, alpha) <= 1.0 < mde(math.sqrt(need - 1) / sd, need - 2, alpha)


def test_welch_equals_scipy():
    a, b = [70.1, 71.3, 69.8, 72.0], [68.2, 70.5, 69.0]
    res = welch_stats(a, b, 0.95, 1.0)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert res["p"] == pytest.approx(ref.pvalue) and res["ci"] == pytest.approx((ci.low, ci.high))
    assert res["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    low = stats.ttest_ind(np.add(a, 1.0), b, equal_var=False, alternative="greater").pvalue
    high = stats.ttest_ind(np.subtract(a, 1.0), b, equal_var=False, alternative="less").pvalue
    assert res["p_tost"] == pytest.approx(max(low, high))


# ------------------------------------------------------------------------------------------ pairing

STUDY = {
    "name": "pairs",
    "dataset": {"name": "digits"},
    "model": {"depth": 2, "T": 2},
    "train": {"epochs": 2},
    "variants": {"dense": {}, "act": {"tokens": {"halting": {}}}},
    "matrix": {"model.T": [2, 4], "seed": [0, 1, 2]},
}


def _records(root: Path, rows: list[dict], study: dict = STUDY) -> Path:
    sdir = root / study["name"]
    sdir.mkdir(parents=True)
    for r in rows:
        r.setdefault("status", "done")
        r.setdefault("token_pct", 100.0)
        r.setdefault("timesteps_mean", float(r["T"]))
        r.setdefault("energy_exact_uj", 1.0 + r["accuracy"] / 100)
    pd.DataFrame(rows).sample(frac=1.0, random_state=3).to_csv(sdir / "runs.csv", index=False)  # order is no key
    (sdir / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return sdir


def _acc(variant: str, T: int, seed: int) -> float:
    return 80 + 3 * seed + (2 if T == 4 else 0) + {"dense": 0.0, "act": 0.5 + 0.2 * seed * T}[variant]


def test_pairs_by_seed_and_matrix_point(tmp_path):
    rows = [{"run_id": f"{v[:3]}{T}{s}aaaaaaa"[:12], "variant": v, "seed": s, "T": T, "accuracy": _acc(v, T, s)}
            for v in ("dense", "act") for T in (2, 4) for s in (0, 1, 2)]
    rec = load_records(_records(tmp_path, rows))
    got = {(r.label, r.metric): r for r in compare(rec, ReportConfig())}
    for T in (2, 4):
        r = got[(f"act (T={T})", "accuracy")]
        assert r.kind == PAIRED and r.reference == f"dense (T={T})" and r.seeds == (0, 1, 2)
        want = [_acc("act", T, s) - _acc("dense", T, s) for s in (0, 1, 2)]
        assert np.subtract(r.values, r.ref_values) == pytest.approx(want)
        assert r.mean == pytest.approx(np.mean(want))
        assert r.p == pytest.approx(stats.ttest_1samp(want, 0.0).pvalue)
    ps = [got[(f"act (T={T})", "accuracy")].p for T in (2, 4)]
    assert [got[(f"act (T={T})", "accuracy")].p_holm for T in (2, 4)] == pytest.approx(holm(ps))


def test_unpaired_rows_use_welch(tmp_path):
    study = {**STUDY, "matrix": {"seed": [0, 1, 2]}}
    rows = [{"run_id": f"d{s}aaaaaaaaaa"[:12], "variant": "dense", "seed": s, "T": 2, "accuracy": 80.0 + s}
            for s in (0, 1, 2)]
    rows += [{"run_id": f"a{s}aaaaaaaaaa"[:12], "variant": "act", "seed": s, "T": 2, "accuracy": 81.0 + s * s}
             for s in (3, 4, 5)]  # no shared seed
    rec = load_records(_records(tmp_path, rows, study))
    r = next(r for r in compare(rec, ReportConfig()) if r.label == "act" and r.metric == "accuracy")
    assert r.kind == WELCH and "unpaired" in r.note
    ref = stats.ttest_ind([81.0 + s * s for s in (3, 4, 5)], [80.0, 81.0, 82.0], equal_var=False)
    assert r.p == pytest.approx(ref.pvalue)
    out = build_report(rec.study_dir, mlflow=False)
    table = (rec.study_dir / "report" / "table.md").read_text()
    assert "3 (Welch)" in table and "unpaired Welch" in table
    frame = pd.read_csv(rec.study_dir / "report" / "stats.csv")
    assert rec.study_dir / "report" / "stats.csv" in out
    row = frame[(frame.label == "act") & (frame.metric == "accuracy")].iloc[0]
    assert row.kind == WELCH and row.p == pytest.approx(ref.pvalue, rel=1e-5)


def test_stats_csv_and_tables_carry_the_paired_numbers(tmp_path):
    rows = [{"run_id": f"{v[:3]}{T}{s}aaaaaaa"[:12], "variant": v, "seed": s, "T": T, "accuracy": _acc(v, T, s)}
            for v in ("dense", "act") for T in (2, 4) for s in (0, 1, 2)]
    sdir = _records(tmp_path, rows)
    build_report(sdir, mlflow=False)
    frame = pd.read_csv(sdir / "report" / "stats.csv")
    row = frame[(frame.label == "act (T=2)") & (frame.metric == "accuracy")].iloc[0]
    want = [_acc("act", 2, s) - _acc("dense", 2, s) for s in (0, 1, 2)]
    assert [float(x) for x in row.differences.split()] == pytest.approx(want)
    assert row.seeds == "0 1 2" and row.kind == PAIRED
    ci = stats.ttest_1samp(want, 0.0).confidence_interval(0.95)
    assert (row.t_low, row.t_high) == pytest.approx((ci.low, ci.high), rel=1e-5)
    md = (sdir / "report" / "table.md").read_text()
    assert "paired differences" in md and f"{np.mean(want):+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]" in md
    assert "paired differences" in (sdir / "report" / "table.tex").read_text()
    assert "paired differences" in (sdir / "report.html").read_text()


# ------------------------------------------------------------------------------------------ controls

FT = {
    "name": "ft",
    "dataset": {"name": "digits"},
    "model": {"depth": 2, "T": 2},
    "train": {"epochs": 3},
    "variants": {
        "dense": {},
        "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense", "epochs": 1, "lr": 1.0e-4}},
        "seenn_ft": {"time": {"exit": {"criterion": "confidence", "threshold": 0.9}},
                     "train": {"init_from": "dense", "loss": "tet", "epochs": 1, "lr": 1.0e-4}},
        "long_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense", "epochs": 2, "lr": 1.0e-4}},
    },
    "matrix": {"seed": [0, 1]},
}


def test_fine_tuned_variants_get_their_control(tmp_path):
    study = parse_study(yaml.safe_dump(FT, sort_keys=False))
    assert list(study.variants)[:4] == list(FT["variants"])  # declared first, controls after
    ctl = study.variants["dense_ft"]
    assert ctl.tokens.halting is None and ctl.train == {"init_from": "dense", "epochs": 1, "lr": 1.0e-4}
    # SEENN's TET loss is the method's: it shares act_ft's control; another schedule gets its own
    assert control_of(study, "act_ft") == control_of(study, "seenn_ft") == "dense_ft"
    assert control_of(study, "long_ft") == "dense_ft2" and study.variants["dense_ft2"].train["epochs"] == 2
    assert control_of(study, "dense") is None
    specs = expand(study)
    parents = {s.config.seed: s.run_id for s in specs if s.variant == "dense"}
    for s in specs:
        if s.variant == "dense_ft":
            assert s.parent == parents[s.config.seed] and s.config.train.epochs == 1 and s.config.train.loss == "ce"
    # the declared runs keep their ids: the same study with the control declared under another name adds none
    declared = {**FT, "variants": {**FT["variants"], "more": {"train": {"init_from": "dense", "epochs": 1,
                                                                        "lr": 1.0e-4}}}}
    again = parse_study(yaml.safe_dump(declared, sort_keys=False))
    assert control_of(again, "act_ft") == control_of(again, "seenn_ft") == "more"
    assert control_of(again, "long_ft") == "dense_ft" and "dense_ft2" not in again.variants  # only long_ft's added
    ids = {s.variant: s.run_id for s in specs if s.config.seed == 0}
    ids_again = {s.variant: s.run_id for s in expand(again) if s.config.seed == 0}
    assert all(ids_again[v] == ids[v] for v in FT["variants"])
    # a study written back (study.yaml in the records) validates to the same variants
    assert list(parse_study(yaml.safe_dump(study.model_dump(mode="json", exclude_none=True), sort_keys=False)).variants) == \
        list(study.variants)
    # spikesuite plan lists the controls
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(FT, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "suite", "plan", str(path), "--results", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(" dense_ft ") == 2 and out.stdout.count(" dense_ft2 ") == 2


def test_committed_fine_tuned_studies_plan_their_controls():
    from suite.config import load_study

    study = load_study(ROOT / "studies" / "adaptive_fashion_mnist.yaml")
    assert control_of(study, "act_ft") == control_of(study, "tmask_ft") == control_of(study, "seenn_ft") == "dense_ft"
    assert control_of(study, "act_ft_int") == "dense_int_ft"
    assert {s.variant for s in expand(study)} >= {"dense_ft", "dense_int_ft"}


def test_report_pairs_a_fine_tuned_variant_with_its_control(tmp_path):
    study = {**FT, "variants": {k: FT["variants"][k] for k in ("dense", "act_ft")}}
    rows = [{"run_id": f"{v[:4]}{s}aaaaaaaa"[:12], "variant": v, "seed": s, "T": 2, "accuracy": 80 + s + off}
            for v, off in (("dense", 0.0), ("act_ft", 1.0), ("dense_ft", 0.7)) for s in (0, 1, 2)]
    rec = load_records(_records(tmp_path, rows, study))
    acc = {(r.label, r.role): r for r in compare(rec, ReportConfig()) if r.metric == "accuracy"}
    assert acc[("act_ft", "control")].reference == "dense_ft"
    assert acc[("act_ft", "control")].mean == pytest.approx(0.3)
    assert acc[("act_ft", "reference")].reference == "dense"
    assert acc[("dense_ft", "reference")].mean == pytest.approx(0.7)
    assert ("dense_ft", "control") not in acc


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("report", "key"), [({"reference": "nope"}, "report.reference"),
                                             ({"margin": -1.0}, "report.margin"),
                                             ({"confidence": 1.0}, "report.confidence"),
                                             ({"confidence": 0}, "report.confidence")])
def test_bad_report_settings_exit_2_naming_the_key(tmp_path, report, key):
    with pytest.raises(StudyError) as err:
        parse_study(yaml.safe_dump({**STUDY, "report": report}))
    assert key in str(err.value)
    rows = [{"run_id": f"d{s}aaaaaaaaaa"[:12], "variant": "dense", "seed": s, "T": 2, "accuracy": 80.0 + s}
            for s in (0, 1)]
    sdir = _records(tmp_path, rows, {**STUDY, "report": report})  # a records dir whose study.yaml is bad
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "report": report}))
    for target in (sdir, path):
        out = subprocess.run([sys.executable, "-m", "suite", "report", str(target), "--results", str(tmp_path)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 2, (target, out.stdout, out.stderr)
        assert key in out.stderr
        assert not (sdir / "report").exists() and not (sdir / "report.html").exists()


def test_study_file_report_settings_win_over_the_records(tmp_path):
    rows = [{"run_id": f"{v[:3]}{s}aaaaaaaaa"[:12], "variant": v, "seed": s, "T": 2, "accuracy": 80.0 + s + (v == "act")}
            for v in ("dense", "act") for s in (0, 1, 2)]
    study = {**STUDY, "matrix": {"seed": [0, 1, 2]}}
    sdir = _records(tmp_path, rows, study)
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump({**study, "report": {"reference": "act", "confidence": 0.9}}))
    out = subprocess.run([sys.executable, "-m", "suite", "report", str(path), "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(sdir / "report" / "stats.csv")
    assert set(frame.reference) == {"act"} and set(frame.confidence) == {0.9}
    assert set(frame.label) == {"dense"}
    assert NONE not in set(frame.kind)
