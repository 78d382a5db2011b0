"""``bench.png`` / ``bench.pdf``: one panel per benchmark part that ran; no timestamps in either file."""

from __future__ import annotations

from pathlib import Path

import torch

from suite.bench.common import (
    COLUMNS,
    INFERENCE,
    STUDY,
    TARGET_RERUN_S,
    TARGET_SMOKE_S,
    THROUGHPUT,
    TRAIN_STEP,
)


def plot(rows: list[dict], out: Path, device: str) -> list[Path]:
    """bench.png / bench.pdf: one panel per part that ran; no timestamps in either file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    parts = sorted(df.part.unique())
    style = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
             "ytick.labelsize": 7, "axes.grid": True, "axes.axisbelow": True, "grid.alpha": 0.3,
             "svg.hashsalt": "spikesuite"}
    panels = {TRAIN_STEP: [_plot_train], INFERENCE: [_plot_infer, _plot_ceiling], STUDY: [_plot_e2e],
              THROUGHPUT: [_plot_throughput]}
    todo = [(fn, df[df.part == part]) for part in parts for fn in panels[part]]
    with plt.rc_context(style):
        fig, axes = plt.subplots(1, len(todo), figsize=(3.6 * len(todo), 3.0), squeeze=False)
        for ax, (fn, d) in zip(axes[0], todo):
            fn(ax, d)
        fig.suptitle(f"spikesuite bench ({device}; medians of interleaved rounds, bars: IQR)", fontsize=9)
        fig.tight_layout()
        paths = [out / "bench.png", out / "bench.pdf"]
        fig.savefig(paths[0], dpi=150, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
        plt.close(fig)
    return paths


def _plot_train(ax, d) -> None:
    d = d[d.metric == "step_time_s"]
    names = [c.replace("spikingjelly", "sj").replace("/", "\n") for c in d.case]
    colors = ["C0" if c.endswith("ours") else "C7" for c in d.case]
    ax.bar(names, d["median"] * 1e3, yerr=d["iqr"] * 1e3 / 2, color=colors, capsize=3)
    if float(d["median"].max()) > 5 * float(d["median"].min()):  # backbones of very different cost
        ax.set_yscale("log")
    ratios = [f"{'spikformer' if c == 'ours' else c.split('/')[0]} {float(r):.2f}"
              for c, r in zip(d.case, d.ratio) if c.endswith("ours")]
    ax.set_title("1. train step ours/sj: " + ", ".join(ratios))
    ax.set_ylabel("ms per step (fwd+bwd+AdamW+reset)")


def _plot_infer(ax, d) -> None:
    """Spikformer per_step (the unprefixed cases): masked, compacted and blocks-only speedups vs f."""
    d = d[~d.case.str.contains("-once/|^sdt", regex=True)]
    fr = d[d.metric == "active_fraction"]
    f = fr["median"].to_numpy()
    order = f.argsort()
    keys = list(fr.case.to_numpy()[order])
    f = f[order]
    for kind, color, marker in (("masked", "C1", "s"), ("compact", "C0", "o")):
        sp = [float(d[(d.case == f"{k}/{kind}") & (d.metric == "images_per_s")].ratio.iloc[0]) for k in keys]
        ax.plot(f, sp, marker=marker, color=color, label=f"{kind} (end to end)")
        bl = d[(d.metric == "blocks_speedup") & d.case.isin([f"{k}/{kind}" for k in keys])]
        if kind == "compact" and len(bl) == len(keys):
            ax.plot(f, bl["median"].to_numpy()[[list(bl.case).index(f"{k}/compact") for k in keys]], marker=marker,
                    color=color, linestyle=":", label="compact (blocks only)")
    grid = torch.linspace(float(f.min()) * 0.95, 1.0, 50).numpy()
    ax.plot(grid, 1 / grid, color="k", lw=0.8, label="ideal 1/f")
    ax.plot(grid, 0.7 / grid, color="k", lw=0.8, linestyle="--", label="target 0.7/f")
    am = d[d.metric == "amdahl_ideal_speedup"].set_index("case").loc[keys, "median"].to_numpy()
    ax.plot(f, am, color="C2", lw=0.8, linestyle="-.", label="ideal with the stem (Amdahl)")
    ax.set_xlabel("active-token fraction f")
    ax.set_ylabel("speedup vs dense (images/s ratio)")
    ax.set_title("2. speedup vs dense, spikformer per_step")
    ax.legend(loc="upper right")


def _plot_ceiling(ax, d) -> None:
    """Every configuration: compacted speedup end to end (markers) and its Amdahl ceiling (dashed), vs f."""
    fr = d[d.metric == "active_fraction"]
    prefixes = list(dict.fromkeys(c.rsplit("f=", 1)[0] for c in fr.case))  # in the order the configurations ran
    for i, p in enumerate(prefixes):
        rows = fr[fr.case.str.startswith(p) & (fr.case.str.len() == len(p) + 6)].sort_values("median")
        keys, f = list(rows.case), rows["median"].to_numpy()
        sp = [float(d[(d.case == f"{k}/compact") & (d.metric == "images_per_s")].ratio.iloc[0]) for k in keys]
        am = [float(d[(d.case == k) & (d.metric == "amdahl_ideal_speedup")]["median"].iloc[0]) for k in keys]
        name = p.rstrip("/") or "spikformer"
        name += "" if "-once" in name else " per_step"
        ax.plot(f, sp, marker="o", color=f"C{i}", label=name.replace("-once", " once"))
        ax.plot(f, am, color=f"C{i}", lw=0.8, linestyle="--")
    ax.plot([], [], color="k", lw=0.8, linestyle="--", label="Amdahl ceiling")
    ax.set_xlabel("active-token fraction f")
    ax.set_ylabel("compacted speedup vs dense, end to end")
    ax.set_title("2. compacted vs Amdahl ceiling (dashed)")
    ax.legend(loc="upper right")


def _plot_e2e(ax, d) -> None:
    d = d[d.metric == "wall_s"]
    targets = [TARGET_RERUN_S if c.endswith("_rerun") else TARGET_SMOKE_S for c in d.case]
    ax.bar(list(d.case), d["median"], color="C0")
    ax.scatter(list(d.case), targets, marker="_", s=400, color="C3", label="target", zorder=3)
    ax.set_ylabel("wall time (s)")
    ax.set_title("3. study end to end")
    ax.legend()


def _plot_throughput(ax, d) -> None:
    """Part 4: per configuration, the compiled and default training steps vs eager, and counted evaluation
    images/s vs training images/s, against their targets (2x, 2.5x)."""
    keys = sorted({c.split("/")[0] for c in d.case})
    bars = [("train_compiled", "step_time_s", "compiled / eager step"),
            ("train_default", "step_time_s", "default / eager step"),
            ("eval_counted", "images_per_s", "counted eval / train images/s")]
    width = 0.8 / len(bars)
    for i, (case, metric, label) in enumerate(bars):
        vals = [float(d[(d.case == f"{k}/{case}") & (d.metric == metric)].ratio.iloc[0]) for k in keys]
        ax.bar([j + (i - 1) * width for j in range(len(keys))], vals, width, label=label)
    ax.axhline(2.0, color="0.3", ls="--", lw=0.8)
    ax.axhline(2.5, color="0.3", ls=":", lw=0.8)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("speedup (x)")
    ax.set_title("4: throughput (targets 2x, 2.5x)")
    ax.legend()
