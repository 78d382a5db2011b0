"""Hand-written records shaped like a study directory ``spikesuite run`` writes (runs.csv, study.yaml,
``<run_id>/metrics.json`` details, ``status.json``, evals.csv, ``search/<variant>/trials.csv``), and a way to keep
the figures a module saves open for inspection; shared by the figure tests (nothing trains)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

L, T, N = 2, 4, 16
DENSE_UNITS = L * T * N
LAYERS = ["stem.0", "block0.q", "block0.attn", "block1.q", "block1.attn", "head"]



def _row(rid: str, variant: str, seed: int, k: int, steps: float, pct: float, acc: float) -> dict:
    energy = 2.0 * pct / 100 * steps / T
    kinds = {"stem": 0.4 * energy, "attention": 0.25 * energy, "mlp": 0.34 * energy, "head": 0.01 * energy}
    return {"run_id": rid, "status": "done", "variant": variant, "seed": seed, "T": T, "accuracy": acc,
            "token_units": pct / 100 * DENSE_UNITS, "token_pct": pct, "dense_token_units": float(DENSE_UNITS),
            "timesteps_mean": steps, "energy_exact_uj": energy, **{f"energy_exact_uj_{n}": v for n, v in kinds.items()},
            "images_per_s": 1000.0 + k}


def write_study(root: Path, name: str, variants: dict[str, dict], dataset: str = "digits", seeds=(0, 1),
                timesteps: dict[str, float] | None = None, evals: dict[str, list[tuple[str, float, float]]] | None = None,
                search_trials: pd.DataFrame | None = None) -> Path:
    """A study directory: every variant x seed done, with metrics.json details (firing rates, a depth histogram for
    halting variants, an exit histogram for early-exit ones), status.json, study.yaml and, when given, evals.csv
    (variant -> [(override, accuracy offset, token-units offset)]) and search/<first variant>/trials.csv."""
    rng = np.random.default_rng(len(variants))
    sdir = root / name
    sdir.mkdir(parents=True)
    rows, ev = [], []
    for k, (variant, cfg) in enumerate(variants.items()):
        for seed in seeds:
            rid = f"{k:04d}{seed:02d}abcdef"[:12]
            steps = (timesteps or {}).get(variant, float(T))
            pct = 100.0 if not cfg.get("tokens") else 60.0 + 3 * k % 35
            row = _row(rid, variant, seed, k, steps, pct, 90.0 + (k % 7) * 0.5 + rng.random())
            rows.append(row)
            details = {"firing_rates": {layer: float(0.05 + 0.1 * rng.random()) for layer in LAYERS}}
            if cfg.get("tokens", {}).get("halting") is not None:
                hist = rng.random(L * T + 1)
                details["depth_histogram"] = (hist / hist.sum()).tolist()
            if cfg.get("time", {}).get("exit") is not None:
                details["exit_histogram"] = [int(v) for v in rng.integers(5, 50, T)]
            (sdir / rid).mkdir()
            (sdir / rid / "status.json").write_text(json.dumps({"state": "done", "host": "testhost"}))
            (sdir / rid / "metrics.json").write_text(json.dumps({"run_id": rid, "metrics": row, "details": details}))
            for override, dacc, dunits in (evals or {}).get(variant, []):
                ev.append({"run_id": rid, "variant": variant, "seed": seed, "T": T, "override": override,
                           "set": json.dumps({"tokens.halting.beta_offset": -1}), "accuracy": row["accuracy"] + dacc,
                           "token_units": row["token_units"] + dunits,
                           "token_pct": 100 * (row["token_units"] + dunits) / DENSE_UNITS, "timesteps_mean": steps,
                           "energy_exact_uj": row["energy_exact_uj"]})
    pd.DataFrame(rows).to_csv(sdir / "runs.csv", index=False)
    if ev:
        pd.DataFrame(ev).to_csv(sdir / "evals.csv", index=False)
    study = {"name": name, "dataset": {"name": dataset}, "model": {"backbone": "spikformer", "depth": L, "T": T},
             "variants": variants, "matrix": {"seed": list(seeds)}}
    if search_trials is not None:
        first = next(v for v, cfg in variants.items() if "halting" in cfg.get("tokens", {}))
        study["search"] = {"variants": [first], "per_variant": True, "stage": "eval", "split": "val",
                           "objectives": [{"metric": "accuracy", "direction": "maximize"},
                                          {"metric": "energy_exact_uj", "direction": "minimize"}],
                           "params": {"tokens.halting.beta_offset": {"uniform": [-4.0, 0.0]}}, "n_trials": 12}
        (sdir / "search" / first).mkdir(parents=True)
        search_trials.to_csv(sdir / "search" / first / "trials.csv", index=False)
    (sdir / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return sdir


def many_variants(n: int) -> dict[str, dict]:
    """``n`` variants: dense first, then halting, merge and early-exit ones in turn (v01 halts)."""
    kinds = [{"time": {"exit": {"threshold": 0.9}}}, {"tokens": {"halting": {}}}, {"tokens": {"merge": {"r": 2}}}]
    return {"dense": {}, **{f"v{i:02d}": kinds[i % 3] for i in range(1, n)}}


def capture(monkeypatch, module) -> list:
    """Figures passed to ``module.save`` (still open while the test inspects them after the call)."""
    seen: list = []
    real = module.save

    def keep(fig, out, stem, *args, **kwargs):
        seen.append(fig)
        paths = real(fig, out, stem, *args, **kwargs)
        FigureCanvasAgg(fig).draw()  # closing took the figure's canvas: a new one lays it out as saved
        return paths

    monkeypatch.setattr(module, "save", keep)
    return seen
