"""The report's tables: results per variant (``table.md``, ``table.tex``) and evaluation overrides
(``evals.md``), every number as mean ± sample std over seeds, with the conventions written under it."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from suite import records
from suite.config.report import ReportConfig
from suite.names import STATS_TABLE
from suite.report.content import Table
from suite.report.energy import sensitivity_table
from suite.report.load import StudyRecords, budget_note, fmt_value, off_split_note, parsed_setting
from suite.report.matched import claim_table, matched_table
from suite.report.stats import compare, paired_table, report_settings
from suite.report.style import ENERGY_UNIT, STD_NOTE, Stat, ci_half, decimals, fmt_pm, slug, stat

MAIN_HEADERS = ("variant", "n seeds", "accuracy (%)", "token-units (% of dense)", "timesteps (mean)",
                f"energy ({ENERGY_UNIT}, exact)")


def _stats(frame: pd.DataFrame, metric: str) -> Stat:
    return stat(frame[metric]) if metric in frame else Stat(0, math.nan, math.nan)


def _metric_rows(groups: Sequence[pd.DataFrame], places: dict[str, int]) -> list[list[str]]:
    """The metric cells (n, accuracy, token-units (%), timesteps, energy) of each group of seeds."""
    rows = []
    for g in groups:
        acc, units, pct = _stats(g, "accuracy"), _stats(g, "token_units"), _stats(g, "token_pct")
        tokens = fmt_pm(units, places["token_units"])
        if pct.n:
            tokens += f" ({pct.mean:.1f} %)"
        rows.append([str(acc.n), fmt_pm(acc, 2), tokens, fmt_pm(_stats(g, "timesteps_mean"), 2),
                     fmt_pm(_stats(g, "energy_exact_uj"), places["energy_exact_uj"])])
    return rows


def _places(frames: Sequence[pd.DataFrame]) -> dict[str, int]:
    def means(metric: str) -> list[float]:
        return [_stats(f, metric).mean for f in frames]

    return {"token_units": decimals(means("token_units"), 4, 1), "energy_exact_uj": decimals(means("energy_exact_uj"), 4)}


def table_notes(rec: StudyRecords) -> tuple[str, ...]:
    runs = rec.runs
    notes = [
        f"Numbers: {STD_NOTE}. Accuracy: top-1 % on the {rec.split} split.",
        "Token-units: active tokens per image summed over blocks and timesteps (a merged token counts once); "
        "in brackets the mean % of the dense count (token_pct).",
        "Timesteps: mean active timesteps over modules (timesteps_mean; mean exit step for early exit).",
        f"Energy: E_MAC × MACs + E_AC × SOPs, exact SOP convention (energy_exact_uj), {rec.eval.costs.describe()}, "
        f"{ENERGY_UNIT} per image.",
        # images/s inside a study measures the machine's load (parallel workers), not the method: it is left out
        "No throughput column: wall-clock speed inside a study measures the machine's load; "
        "`spikesuite bench` measures it in isolation.",
    ]
    budget = budget_note(rec)  # how hard each variant's operating point was tuned
    if budget:
        notes.append(budget)
    bad = runs[runs.status != "done"]
    for status, g in bad.groupby("status", sort=True):
        ids = ", ".join(f"{r.run_id} ({r.variant}, seed {fmt_value(r.seed)})" for r in g.itertuples())
        notes.append(f"Not in the table, {status}: {ids}.")
    return tuple(notes)


def main_table(rec: StudyRecords) -> Table:
    done = rec.done
    configs = rec.present(done)
    groups = [done[done.config == c] for c in configs]
    rows = _metric_rows(groups, _places(groups))
    body = tuple((config, *cells) for config, cells in zip(configs, rows))
    return Table(f"{rec.name}: results per variant", MAIN_HEADERS, body, table_notes(rec))


DIAGNOSTICS_HEADERS = ("variant", "n seeds", "foreground active (%)", "background active (%)", "fg − bg (pt)",
                       "occlusion ρ", "occlusion n (images)")


def _mean_interval(values: pd.Series, confidence: float, places: int) -> str:
    """``mean [low, high]``: the mean over seeds with its t-interval (the mean alone for one seed)."""
    s = stat(values)
    if s.n == 0:
        return "–"
    if s.n < 2:
        return f"{s.mean:+.{places}f}"
    half = float(ci_half(s, confidence))
    return f"{s.mean:+.{places}f} [{s.mean - half:+.{places}f}, {s.mean + half:+.{places}f}]"


def diagnostics_table(rec: StudyRecords, confidence: float) -> Table | None:
    """Per variant with the token diagnostics (``suite.diagnostics``): foreground and background tokens active (mean
    over units), their difference with its t-interval over seeds (positive: background halted first) and the
    Spearman correlation of a token's units with its occlusion importance; None when no record carries them."""
    done = rec.done
    if "fg_active_pct" not in done or done.fg_active_pct.isna().all():
        return None
    rows = []
    for config in rec.present(done):
        g = done[(done.config == config) & done.fg_active_pct.notna()]
        if g.empty:
            continue
        occ = g.get("occlusion_spearman", pd.Series(dtype=float))
        occ_n = pd.to_numeric(g.get("occlusion_n", pd.Series(dtype=float)), errors="coerce").dropna()
        rows.append((config, str(len(g)), fmt_pm(stat(g.fg_active_pct), 1), fmt_pm(stat(g.bg_active_pct), 1),
                     _mean_interval(g.fg_active_pct - g.bg_active_pct, confidence, 1),
                     _mean_interval(occ, confidence, 2),
                     f"{int(occ_n.min())}–{int(occ_n.max())}" if len(occ_n) else "–"))
    pct = f"{confidence * 100:g} %"
    notes = (f"Active: % of foreground / background token positions of the evaluation split processed, mean over "
             f"units ({STD_NOTE}); fg − bg: their difference, mean over seeds [{pct} t-interval]; positive means "
             f"the background halts first. Foreground rule and occlusion importance: docs/halting_gates.md.",
             f"Occlusion ρ: mean over images of the within-image Spearman correlation of a token's units with the "
             f"drop of the true-class logit when its patch is blanked, mean over seeds [{pct} t-interval]; n: the "
             f"images where both vary, per seed (min–max).")
    return Table(f"{rec.name}: which tokens the policy keeps", DIAGNOSTICS_HEADERS, tuple(rows), notes)


def natural_key(text: str) -> tuple:
    """Sort key reading digit runs as numbers: trial2 before trial10, named overrides before search trials."""
    return (text.startswith("trial"), *[(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", text)])


def setting_text(setting: Any) -> str:
    """An override's settings for a table cell: floats to 4 significant digits, the split left out (every row of
    the table is on the study's split)."""
    value = parsed_setting(setting)
    if value is None:
        return "" if setting is None or (isinstance(setting, float) and math.isnan(setting)) else str(setting)
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items()
                     if k != "eval.split")


def evals_table(rec: StudyRecords) -> Table | None:
    """Per variant: the as-trained row, then each evaluation override (mean ± std over seeds)."""
    ev = rec.evals
    if ev is None or ev.empty:
        return None
    done = rec.done
    keyed: list[tuple[str, str, str, pd.DataFrame]] = []
    for config in rec.present(ev):
        keyed.append((config, "(as trained)", "", done[done.config == config]))
        mine = ev[ev.config == config]
        for name, g in sorted(mine.groupby("override"), key=lambda kv: natural_key(str(kv[0]))):
            keyed.append((config, str(name), setting_text(g["set"].iloc[0]) if "set" in g else "", g))
    groups = [k[3] for k in keyed]
    rows = _metric_rows(groups, _places(groups))
    headers = ("variant", "override", "set", "n seeds", *MAIN_HEADERS[2:])
    body = tuple((c, name, setting, *cells) for (c, name, setting, _), cells in zip(keyed, rows))
    notes = (f"Evaluation-time overrides of each trained checkpoint (evals.csv), {STD_NOTE}.",
             "Columns as in table.md; '(as trained)' is the run's own evaluation (runs.csv).",
             *off_split_note(rec))
    return Table(f"{rec.name}: evaluation overrides", headers, body, notes, labels=3)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(table: Table) -> str:
    """A markdown table (first column left-aligned, numbers right-aligned) with its notes as a list."""
    align = ["---"] * table.labels + ["---:"] * (len(table.headers) - table.labels)
    lines = [f"# {table.title}", "", "| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        # the report's non-ASCII symbols in math mode: no package (textcomp, siunitx) needed
        "±": r"$\pm$", "×": r"$\times$", "µ": r"$\mu$", "≤": r"$\leq$", "≥": r"$\geq$", "Δ": r"$\Delta$", "−": "-", "–": "--", "—": "---"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def header_lines(header: str) -> tuple[str, str]:
    """A header as (name, unit) on two rows, so numeric columns stay narrow: ``accuracy (%)`` -> ``accuracy``
    over ``(%)``; a header without a bracketed unit keeps the second row empty."""
    m = re.fullmatch(r"(.+?) (\(.+\))", header)
    return (m.group(1), m.group(2)) if m else (header, "")


def table_latex(table: Table, label: str, drop: Sequence[str] = ()) -> str:
    """A booktabs table environment that fits one column: the columns in ``drop`` left out, headers on two rows
    (name over unit), and the tabular scaled down to the column width only when it is wider (never enlarged;
    needs graphicx). The notes become the caption."""
    keep = [i for i, h in enumerate(table.headers) if h not in drop]
    labels = sum(1 for i in keep if i < table.labels)
    spec = "l" * labels + "r" * (len(keep) - labels)
    names, units = zip(*(header_lines(table.headers[i]) for i in keep)) if keep else ((), ())
    head = [" & ".join(tex_escape(n) for n in names) + r" \\"]
    if any(units):
        head.append(" & ".join(tex_escape(u) for u in units) + r" \\")
    notes = list(table.notes) + ([f"Left out here: {', '.join(drop)} (see table.md)."] if drop else [])
    lines = ["% generated by `spikesuite report` from the study's records; needs \\usepackage{booktabs,graphicx}",
             r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + tex_escape(table.title + ". " + " ".join(notes)) + "}",
             r"\label{" + label + "}",
             # scale only a table wider than the column: \width is the tabular's natural width here
             r"\resizebox{\ifdim\width>\columnwidth\columnwidth\else\width\fi}{!}{%",
             r"\begin{tabular}{" + spec + "}", r"\toprule", *head, r"\midrule"]
    lines += [" & ".join(tex_escape(row[i]) for i in keep) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}%", "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(path, text)
    return path


def write_tables(rec: StudyRecords, out: Path, settings: ReportConfig | None = None) -> tuple[list[Table], list[Path]]:
    """``table.md`` and ``table.tex`` (results per variant, then the paired differences), ``stats.csv`` (every
    paired statistic, ``stats.py``) and the optional ``energy_sensitivity.md`` (when a variant has a dense reference)
    ``evals.md`` (when overrides were evaluated), ``diagnostics.md`` (when records carry the token diagnostics),
    ``matched.md`` (a drop variant to compare at equal token-units) and ``claim.md`` (``report.claim`` set);
    a stale optional table goes."""
    table = main_table(rec)
    settings = settings or report_settings(rec)
    results = compare(rec, settings)  # the paired table's, and the claim's
    paired, frame = paired_table(rec, settings, results)
    tables = [table] + ([paired] if paired is not None else [])
    label = f"tab:{slug(rec.name)}"
    md = "\n".join(table_markdown(t) for t in tables)
    tex = table_latex(table, f"{label}-results")
    if paired is not None:
        tex += "\n" + table_latex(paired, f"{label}-paired")
    paths = [write_text(out / "table.md", md), write_text(out / "table.tex", tex),
             write_text(out / STATS_TABLE, frame.to_csv(index=False, float_format="%.6g"))]
    for name, optional in (("energy_sensitivity.md", sensitivity_table(rec)), ("evals.md", evals_table(rec)),
                           ("diagnostics.md", diagnostics_table(rec, settings.confidence)),
                           ("matched.md", matched_table(rec, settings)), ("claim.md", claim_table(rec, settings, results))):
        if optional is not None:
            paths.append(write_text(out / name, table_markdown(optional)))
            tables.append(optional)
        elif (out / name).exists():
            (out / name).unlink()
    return tables, paths
