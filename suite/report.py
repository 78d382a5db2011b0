"""Figures and tables regenerated from records alone (never retrains)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from suite import records  # noqa: E402


def load_runs(study_dir: Path) -> pd.DataFrame:
    path = study_dir / records.RUNS_TABLE
    if not path.exists():
        raise FileNotFoundError(f"no runs table at {path}: run the study first (spikesuite run STUDY)")
    return pd.read_csv(path)


def save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    plt.close(fig)
    return paths


def accuracy_vs_tokens(runs: pd.DataFrame, out: Path) -> list[Path]:
    """Accuracy versus token-units per image: one marker per variant, mean +- std over seeds."""
    done = runs[runs.status == "done"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for variant, g in done.groupby("variant", sort=True):
        ax.errorbar(g.token_units.mean(), g.accuracy.mean(), xerr=g.token_units.std(ddof=0),
                    yerr=g.accuracy.std(ddof=0), fmt="o", capsize=3, label=f"{variant} (n={len(g)})")
    ax.set_xlabel("token-units per image (sum over blocks x timesteps)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return save(fig, out, "accuracy_vs_tokens")


def build_report(study_dir: Path) -> list[Path]:
    runs = load_runs(study_dir)
    out = study_dir / "report"
    return accuracy_vs_tokens(runs, out)
