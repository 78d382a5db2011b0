"""The learning-curves figure (suite/report/figures/curves.py) from hand-written histories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from figure_records import capture, write_study
from scipy import stats as sps

from suite import report
from suite.report.figures import curves

VARIANTS = {"dense": {}, "tome": {"eval": {"apply": {"tokens.merge": {"r": 2}}}},
            "act_ft": {"tokens": {"halting": {}}, "train": {"init_from": "dense", "epochs": 2}}}
VAL = {0: [50.0, 70.0, 75.0, 76.0], 1: [52.0, 69.0, 74.0, 74.5], 2: [48.0, 71.0, 77.0, 77.2]}


def _histories(sdir, seeds=(0, 1, 2)) -> None:
    runs = pd.read_csv(sdir / "runs.csv", dtype={"run_id": str})
    for _, r in runs.iterrows():
        if r.variant == "act_ft":
            h = {"epoch": [1, 2], "train_acc": [70.0, 71.0], "val_acc": [76.0 + r.seed, 77.0]}
        else:  # tome shares dense's training: the same history file
            h = {"epoch": [1, 2, 3, 4], "train_acc": [40.0, 60.0, 70.0, 72.0], "val_acc": VAL[r.seed]}
        pd.DataFrame(h).to_csv(sdir / r.run_id / "history.csv", index=False)


def test_curves_continue_fine_tuning_after_the_parent_and_state_the_last_epochs_gain(tmp_path, monkeypatch):
    sdir = write_study(tmp_path, "c", VARIANTS, seeds=(0, 1, 2))
    rec = report.load_records(sdir)
    assert curves.curves_figure(rec, sdir / "report") is None  # no history: no figure, nothing written
    _histories(sdir)
    rec = report.load_records(sdir)
    assert list(curves.histories(rec)) == ["dense", "act_ft"]  # tome repeats dense's histories: drawn once
    seen = capture(monkeypatch, curves)
    fig = curves.curves_figure(rec, sdir / "report")
    ax = seen[0].axes[0]
    xs = [tuple(line.get_xdata()) for line in ax.lines if len(line.get_xdata())]
    assert (1, 2, 3, 4) in xs and (5, 6) in xs  # act_ft's two epochs follow dense's four
    gains = [VAL[s][-1] - VAL[s][-2] for s in (0, 1, 2)]
    half = sps.t.ppf(0.975, 2) * np.std(gains, ddof=1) / np.sqrt(3)
    mean = float(np.mean(gains))
    assert f"dense {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] pt (n=3)" in fig.caption
    assert "act_ft" not in fig.caption.split("last epoch (mean")[1]  # fine-tuned runs are not asked to plateau
    assert (sdir / "report" / "learning_curves.png").exists()


def test_the_report_draws_the_curves_once_histories_exist(tmp_path):
    sdir = write_study(tmp_path, "r", VARIANTS, seeds=(0, 1))
    _histories(sdir)
    paths = report.build_report(sdir, mlflow=False)
    assert sdir / "report" / "learning_curves.pdf" in paths
    assert "Learning curves" in (sdir / "report.html").read_text()


@pytest.mark.parametrize("frames, expected", [([pd.DataFrame({"val_acc": [1.0]})], 0),
                                              ([pd.DataFrame({"val_acc": [1.0, 3.0]})] * 2, 2)])
def test_last_gain_needs_two_epochs(frames, expected):
    mean, _, n = curves.last_gain(frames)
    assert n == expected and (n == 0 or mean == 2.0)
