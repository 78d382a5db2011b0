"""Paired statistics of every variant against its reference (torch-free; ``scipy.stats`` for every distribution).

Which reference: a fine-tuned variant with a policy is compared with its compute-matched control
(``suite.config.controls``: the parent fine-tuned as long, without the policy) and also with the study's
reference; every other variant with the study's reference (``report.reference``, default its dense variant).
Evaluation overrides on the study's split (``evals.csv``, e.g. ``random_drop_ft @ keep0.5``) are compared too.

Pairing: a run is paired with the reference run that has its seed and agrees on every matrix axis both runs
have (the matrix point). With at least two pairs the comparison is *paired* (statistics of the per-seed
differences); otherwise, with at least two runs on each side at the same matrix point, it is *unpaired*
(Welch's t, ``ttest_ind(equal_var=False)``) and says so.

Per comparison and metric (accuracy, token-units % of dense, timesteps, energy):

- the per-seed values and differences, their mean and sample sd;
- the t interval at ``report.confidence`` (``ttest_1samp(...).confidence_interval``; Welch:
  ``ttest_ind(...).confidence_interval``) and, with n >= 5 pairs, a BCa bootstrap interval of the mean
  (``scipy.stats.bootstrap``, 9999 resamples, a fixed generator so reports stay byte-identical);
- the two-sided p-value of "no difference", Holm-adjusted over every comparison of the study for that metric;
- TOST equivalence at the margin ``m`` (two one-sided tests: H0 d <= -m against d > -m, and H0 d >= m against
  d < m; the TOST p is the larger; equivalent when it is below alpha = 1 - confidence). ``m`` is
  ``report.margin`` in points for the two percentages (accuracy, token-units %) and ``report.margin`` % of the
  reference's mean for timesteps and energy (which have units of their own);
- the minimum detectable effect (MDE): the smallest |d| that a two-sided t test at alpha detects with 80 % power
  at the observed sd and n. Paired: power(d) = P(|T| > t_{1-alpha/2, n-1}) with T ~ noncentral t(n-1,
  d sqrt(n) / sd); Welch: T ~ noncentral t(df_W, d / sqrt(s1^2/n1 + s2^2/n2)) with the Welch-Satterthwaite
  df_W. Solved for d with ``brentq``; and ``n_for_margin``, the number of pairs that would detect d = m.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from pydantic import ValidationError
from scipy import optimize, stats

from suite.config import Study, StudyError, format_errors
from suite.config.controls import control_of, has_policy
from suite.config.report import ReportConfig
from suite.report.content import Table
from suite.report.load import StudyRecords, fmt_value

POWER = 0.8  # of the minimum detectable effect
BOOTSTRAP_MIN_N = 5  # fewer pairs: no bootstrap interval (the resampling distribution has too few values)
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
MAX_N_FOR_MARGIN = 10_000
# (runs.csv column, name in tables, unit, margin is relative to the reference mean)
METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("accuracy", "accuracy", "pt", False),
    ("token_pct", "token-units", "pt of dense", False),
    ("timesteps_mean", "timesteps", "steps", True),
    ("energy_exact_uj", "energy", "µJ", True),
)
PAIRED, WELCH, NONE = "paired", "unpaired (Welch)", "n/a"
STATS_COLUMNS = ("label", "reference", "role", "metric", "kind", "n", "seeds", "values", "reference_values",
                 "differences", "mean_difference", "sd", "confidence", "t_low", "t_high", "bootstrap_low",
                 "bootstrap_high", "p", "p_holm", "margin", "p_tost", "equivalent", "mde_80", "n_for_margin", "note")


@dataclass(frozen=True)
class Result:
    """One comparison of one metric: ``label`` minus ``reference``."""

    label: str
    reference: str
    role: str  # "control" (the compute-matched control) or "reference" (the study's reference)
    metric: str
    kind: str  # PAIRED, WELCH or NONE
    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    ref_values: tuple[float, ...] = ()
    n: int = 0
    mean: float = math.nan
    sd: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    boot: tuple[float, float] = (math.nan, math.nan)
    p: float = math.nan
    p_holm: float = math.nan
    margin: float = math.nan
    p_tost: float = math.nan
    mde: float = math.nan
    n_for_margin: float = math.nan
    note: str = ""


# ------------------------------------------------------------------------------------------ settings


def dense_variant(study: Study) -> str:
    """The study's dense variant: ``dense`` when there is one, else the first variant trained from scratch
    without a policy, else the first variant."""
    if "dense" in study.variants:
        return "dense"
    plain = [n for n, v in study.variants.items() if not has_policy(v) and "init_from" not in v.train]
    return plain[0] if plain else next(iter(study.variants))


def report_settings(rec: StudyRecords, override: ReportConfig | None = None) -> ReportConfig:
    """The study's ``report:`` settings (``override`` wins: the study file given on the command line), checked;
    bad ones raise StudyError naming the key (``report.reference``, ``report.margin``, ``report.confidence``)."""
    source = str(rec.study_dir / "study.yaml")
    settings = override if override is not None else rec.study.report if rec.study is not None else None
    if settings is None:  # no valid study: check the raw report section, so a bad one is named, not ignored
        import yaml

        raw = yaml.safe_load(rec.study_yaml) if rec.study_yaml else None
        section = raw.get("report", {}) if isinstance(raw, dict) else {}
        try:
            settings = ReportConfig.model_validate(section or {})
        except ValidationError as exc:
            raise StudyError(source, format_errors(exc, ("report",))) from None
    variants = set(rec.variants) | set(rec.runs.get("variant", pd.Series(dtype=str)).astype(str))
    if settings.reference is not None and settings.reference not in variants:
        raise StudyError(source, [f"report.reference: {settings.reference!r} is not a variant of the study "
                                  f"(have {sorted(variants)})"])
    return settings


# ------------------------------------------------------------------------------------------ statistics


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)).
    NaN p-values (no test) stay NaN and do not count in m."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m, out, running = len(idx), [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _power(nc_per_effect: float, df: float, alpha: float, effect: float) -> float:
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * nc_per_effect
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    return power if math.isfinite(power) else float(nc > crit)  # far in the tail scipy's series gives NaN


def mde(nc_per_effect: float, df: float, alpha: float, power: float = POWER) -> float:
    """The smallest effect that a two-sided t test (``df`` degrees of freedom, non-centrality ``effect *
    nc_per_effect``) detects with ``power``: NaN without variation or without degrees of freedom."""
    if not (df > 0 and math.isfinite(nc_per_effect) and nc_per_effect > 0):
        return math.nan
    hi = 1.0 / nc_per_effect
    while _power(nc_per_effect, df, alpha, hi) < power:
        hi *= 2
    return float(optimize.brentq(lambda e: _power(nc_per_effect, df, alpha, e) - power, 0.0, hi, xtol=1e-10))


def n_for_effect(sd: float, effect: float, alpha: float, power: float = POWER) -> float:
    """The smallest number of pairs whose paired t test detects ``effect`` with ``power`` at this sd."""
    if not (sd > 0 and effect > 0):
        return math.nan
    for n in range(2, MAX_N_FOR_MARGIN + 1):
        if _power(math.sqrt(n) / sd, n - 1, alpha, effect) >= power:
            return float(n)
    return math.inf


def _quiet(fn, *args, **kwargs):
    """scipy warns (and returns NaN) on zero variance and on too few values: the table shows NaN as n/a."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def bootstrap_ci(diffs: np.ndarray, confidence: float) -> tuple[float, float]:
    """BCa bootstrap interval of the mean difference (n >= ``BOOTSTRAP_MIN_N``; NaN otherwise or when degenerate)."""
    if len(diffs) < BOOTSTRAP_MIN_N or _constant(diffs):
        return math.nan, math.nan
    res = _quiet(stats.bootstrap, (diffs,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                 method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _constant(values: np.ndarray) -> bool:
    """No variation beyond float rounding (token-units of a fixed keep ratio differ by ~1e-14 between seeds)."""
    return bool(np.ptp(values) <= 1e-9 * max(1.0, float(np.abs(values).max())))


def paired_stats(diffs: Sequence[float], confidence: float, margin: float) -> dict:
    """Mean, sd, t interval, bootstrap interval, p, TOST p, MDE and n for the margin of paired differences."""
    d = np.asarray(diffs, dtype=float)
    n, alpha = len(d), 1 - confidence
    out = {"n": n, "mean": float(d.mean()) if n else math.nan, "sd": float(d.std(ddof=1)) if n > 1 else math.nan}
    if n < 2:
        return out
    if _constant(d):  # every pair differs by the same amount: no test is defined, the interval is the point
        out["ci"] = (out["mean"], out["mean"])
        out["p_tost"] = 0.0 if abs(out["mean"]) < margin else 1.0
        return out
    test = _quiet(stats.ttest_1samp, d, 0.0)
    ci = test.confidence_interval(confidence_level=confidence)
    lower = _quiet(stats.ttest_1samp, d, -margin, alternative="greater").pvalue
    upper = _quiet(stats.ttest_1samp, d, margin, alternative="less").pvalue
    out.update(ci=(float(ci.low), float(ci.high)), p=float(test.pvalue), p_tost=float(max(lower, upper)),
               boot=bootstrap_ci(d, confidence), mde=mde(math.sqrt(n) / out["sd"], n - 1, alpha),
               n_for_margin=n_for_effect(out["sd"], margin, alpha))
    return out


def welch_stats(a: Sequence[float], b: Sequence[float], confidence: float, margin: float) -> dict:
    """The same for two unpaired samples: mean(a) - mean(b) with Welch's t (unequal variances)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    alpha = 1 - confidence
    out = {"n": min(len(x), len(y)), "mean": float(x.mean() - y.mean())}
    if len(x) < 2 or len(y) < 2:
        return out
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    out["sd"] = float(math.sqrt(va + vb))  # the standard error of the difference
    if _constant(x) and _constant(y):
        out["ci"] = (out["mean"], out["mean"])
        out["p_tost"] = 0.0 if abs(out["mean"]) < margin else 1.0
        return out
    test = _quiet(stats.ttest_ind, x, y, equal_var=False)
    ci = test.confidence_interval(confidence_level=confidence)
    lower = _quiet(stats.ttest_ind, x + margin, y, equal_var=False, alternative="greater").pvalue
    upper = _quiet(stats.ttest_ind, x - margin, y, equal_var=False, alternative="less").pvalue
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    out.update(ci=(float(ci.low), float(ci.high)), p=float(test.pvalue), p_tost=float(max(lower, upper)),
               mde=mde(1 / out["sd"], df, alpha))
    return out


# ------------------------------------------------------------------------------------------ pairing


def eval_units(rec: StudyRecords) -> pd.DataFrame:
    """Every finished run's main evaluation and every evaluation override on the study's split, one row each,
    with a ``label``: the config label, plus `` @ <override>`` for an override. Runs of a train-stage search
    (``search`` column set) are left out."""
    done = rec.done
    if "search" in done:  # a train-stage search's trial runs are settings tried, not seeds of the variant
        done = done[done["search"].isna() | (done["search"].astype(str) == "")]
    done = done.assign(label=done["config"], override="") if not done.empty else done
    frames = [done]
    if rec.evals is not None and not rec.evals.empty and "override" in rec.evals:
        ev = rec.evals
        frames.append(ev.assign(label=ev["config"] + " @ " + ev["override"].astype(str),
                                override=ev["override"].astype(str)))
    return pd.concat(frames, ignore_index=True, sort=False)


def ordered_labels(rec: StudyRecords, units: pd.DataFrame) -> list[str]:
    """``units``' labels in study order, each config's overrides after it (by name)."""
    order = {c: i for i, c in enumerate(rec.order)}
    return sorted(units["label"].unique(), key=lambda s: (order.get(s.split(" @ ")[0], len(order)), s))


def matrix_axes(rec: StudyRecords, units: pd.DataFrame) -> list[str]:
    names = [k for k in (rec.study.matrix if rec.study is not None else {}) if k not in ("seed", "include",
                                                                                          "exclude", "variant")]
    for extra in (rec.study.matrix.get("include") or []) if rec.study is not None else []:
        names += [k for k in extra if k not in ("variant", "seed")]
    names = ["T" if n == "model.T" else n for n in names]  # runs.csv names the timesteps T
    return [c for c in dict.fromkeys(names) if c in units.columns]


def same_point(row: pd.Series, ref: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """Reference rows agreeing with ``row`` on every axis both have a value for."""
    keep = pd.Series(True, index=ref.index)
    for a in axes:
        if pd.notna(row.get(a)):
            keep &= ref[a].isna() | (ref[a].astype(str) == str(row[a]))
    return keep


def _compare(label: str, mine: pd.DataFrame, ref: pd.DataFrame, role: str, axes: Sequence[str],
             settings: ReportConfig) -> list[Result]:
    """``mine`` (one label's rows) against the reference variant's main evaluations ``ref``."""
    pairs, at_point = [], pd.Series(False, index=ref.index)
    for _, row in mine.sort_values("seed").iterrows():
        point = same_point(row, ref, axes)
        at_point |= point
        match = ref[point & (ref["seed"] == row["seed"])]
        if len(match) == 1:
            pairs.append((row, match.iloc[0]))
    repeated = mine["seed"].duplicated().any()  # several runs per seed (a train-stage search's trials)
    if repeated:
        pairs = []
    ref_at = ref[at_point]
    ref_label = (pairs[0][1]["label"] if pairs else ref_at["label"].mode().iloc[0] if not ref_at.empty
                 else str(ref["variant"].iloc[0]) if not ref.empty else "")
    out = []
    for metric, _, _, relative in METRICS:
        if metric not in mine or metric not in ref:
            continue
        base = Result(label, ref_label, role, metric, NONE)
        if len(pairs) >= 2 or (len(pairs) == 1 and len(mine) == 1 and len(ref_at) == 1):
            a = [float(r[metric]) for r, _ in pairs]
            b = [float(s[metric]) for _, s in pairs]
            margin = settings.margin * (abs(float(np.mean(b))) / 100 if relative else 1)
            res = paired_stats(np.subtract(a, b), settings.confidence, margin)
            seeds = tuple(int(r["seed"]) for r, _ in pairs)
            note = "" if len(pairs) == len(mine) else f"{len(mine) - len(pairs)} run(s) without a pair left out"
            note = note or ("one seed: the difference alone, no interval or test" if len(pairs) == 1 else "")
            out.append(_result(base, PAIRED, seeds, a, b, margin, res, note))
        elif len(mine) >= 2 and len(ref_at) >= 2:
            a, b = mine[metric].astype(float).tolist(), ref_at[metric].astype(float).tolist()
            margin = settings.margin * (abs(float(np.mean(b))) / 100 if relative else 1)
            res = welch_stats(a, b, settings.confidence, margin)
            why = "several runs per seed" if repeated else "no shared seeds at this matrix point"
            out.append(_result(base, WELCH, tuple(int(s) for s in mine["seed"]), a, b, margin, res,
                               f"{why}: unpaired"))
        else:
            why = ("no reference run at this matrix point" if ref_at.empty else
                   "several runs per seed and fewer than 2 reference runs" if repeated else "fewer than 2 runs on a side")
            out.append(Result(label, ref_label, role, metric, NONE, note=why))
    return out


def _result(base: Result, kind: str, seeds: tuple[int, ...], a: list[float], b: list[float], margin: float,
            res: dict, note: str) -> Result:
    return Result(base.label, base.reference, base.role, base.metric, kind, seeds, tuple(a), tuple(b), res["n"],
                  res["mean"], res.get("sd", math.nan), res.get("ci", (math.nan, math.nan)),
                  res.get("boot", (math.nan, math.nan)), res.get("p", math.nan), math.nan, margin,
                  res.get("p_tost", math.nan), res.get("mde", math.nan), res.get("n_for_margin", math.nan), note)


def compare(rec: StudyRecords, settings: ReportConfig) -> list[Result]:
    """Every label against its control (fine-tuned variants with a policy) and against the study's reference,
    Holm-adjusted per metric over all of them."""
    units = eval_units(rec)
    if units.empty or rec.study is None and settings.reference is None and "dense" not in set(units["variant"]):
        return []
    reference = settings.reference or (dense_variant(rec.study) if rec.study is not None else "dense")
    axes = matrix_axes(rec, units)
    main = units[units["override"] == ""]
    results: list[Result] = []
    for label in ordered_labels(rec, units):
        mine = units[units["label"] == label]
        variant = str(mine["variant"].iloc[0])
        refs = []
        control = control_of(rec.study, variant) if rec.study is not None and variant in rec.variants else None
        if control is not None:
            refs.append((control, "control"))
        if variant != reference or mine["override"].iloc[0]:
            refs.append((reference, "reference"))
        for ref_variant, role in refs:
            ref = main[main["variant"] == ref_variant]
            if ref.empty:
                results += [Result(label, ref_variant, role, m, NONE, note=f"{ref_variant} has no finished run")
                            for m, *_ in METRICS if m in mine]
                continue
            results += _compare(label, mine, ref, role, axes, settings)
    for metric, *_ in METRICS:
        idx = [i for i, r in enumerate(results) if r.metric == metric]
        for i, p in zip(idx, holm([results[i].p for i in idx])):
            results[i] = replace(results[i], p_holm=p)
    return results


# ------------------------------------------------------------------------------------------ outputs


def stats_frame(results: Sequence[Result], confidence: float) -> pd.DataFrame:
    """The tidy ``stats.csv``: one row per comparison and metric, the per-seed values as space-separated lists;
    ``sd`` is the sd of the paired differences (Welch: the standard error of the difference of means)."""
    def joined(values: Sequence[float]) -> str:
        return " ".join(f"{v:.6g}" for v in values)

    rows = [{"label": r.label, "reference": r.reference, "role": r.role, "metric": r.metric, "kind": r.kind,
             "n": r.n, "seeds": " ".join(str(s) for s in r.seeds), "values": joined(r.values),
             "reference_values": joined(r.ref_values),
             "differences": joined(np.subtract(r.values, r.ref_values)) if r.kind == PAIRED else "",
             "mean_difference": r.mean, "sd": r.sd, "confidence": confidence, "t_low": r.ci[0], "t_high": r.ci[1],
             "bootstrap_low": r.boot[0], "bootstrap_high": r.boot[1], "p": r.p, "p_holm": r.p_holm,
             "margin": r.margin, "p_tost": r.p_tost, "equivalent": bool(r.p_tost < 1 - confidence),
             "mde_80": r.mde, "n_for_margin": r.n_for_margin, "note": r.note} for r in results]
    return pd.DataFrame(rows, columns=STATS_COLUMNS)  # the header even when nothing could be compared


def fmt_interval(r: Result, places: int = 2) -> str:
    """``+0.91 [-0.60, +2.43]``; the mean alone where no interval exists; n/a without a comparison."""
    if r.kind == NONE or math.isnan(r.mean):
        return "n/a"
    text = f"{r.mean:+.{places}f}"
    if not math.isnan(r.ci[0]):
        text += f" [{r.ci[0]:+.{places}f}, {r.ci[1]:+.{places}f}]"
    return text


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else "<0.001"


def verdict(r: Result, alpha: float) -> str:
    """What the accuracy row says: a difference, equivalence at the margin, or neither."""
    if r.kind == NONE:
        return "n/a"
    if r.n < 2:
        return "one seed"
    if not math.isnan(r.p_holm) and r.p_holm < alpha:
        return "differs"
    if r.p_tost < alpha:
        return f"equivalent (±{r.margin:g})"
    return "inconclusive"


def paired_rows(results: Sequence[Result], settings: ReportConfig) -> tuple[tuple[str, ...], ...]:
    """One table row per comparison: accuracy in full (interval, Holm p, TOST, MDE), the costs as intervals."""
    alpha = 1 - settings.confidence
    keys = list(dict.fromkeys((r.label, r.reference, r.role) for r in results))
    by = {(r.label, r.reference, r.role, r.metric): r for r in results}
    rows = []
    for key in keys:
        acc = by.get((*key, "accuracy"))
        if acc is None:
            continue
        n = f"{acc.n}" + ("" if acc.kind == PAIRED else " (Welch)" if acc.kind == WELCH else "")
        mde_text = "n/a" if math.isnan(acc.mde) else f"{acc.mde:.2f}"
        nfm = "" if math.isnan(acc.n_for_margin) else f" (n={fmt_value(acc.n_for_margin)})" \
            if math.isfinite(acc.n_for_margin) else f" (n>{MAX_N_FOR_MARGIN})"
        costs = [fmt_interval(by[(*key, m)], 2) if (*key, m) in by else "n/a" for m, *_ in METRICS[1:]]
        rows.append((acc.label, f"{acc.reference} ({acc.role})", n, fmt_interval(acc), _p(acc.p_holm),
                     _p(acc.p_tost), verdict(acc, alpha), mde_text + nfm, *costs))
    return tuple(rows)


PAIRED_HEADERS = ("variant", "minus", "n", "Δ accuracy (pt)", "Holm p", "TOST p", "reading", "MDE (pt)",
                  "Δ token-units (pt)", "Δ timesteps (steps)", "Δ energy (µJ)")


def paired_notes(results: Sequence[Result], settings: ReportConfig) -> tuple[str, ...]:
    conf = f"{settings.confidence * 100:g} %"
    notes = [
        f"Differences variant minus reference, mean [{conf} t interval] over the seeds both have (paired by seed and "
        "matrix point); 'minus' names the reference: the compute-matched control (the parent fine-tuned as long, "
        "without the policy) or the study's reference variant.",
        f"Holm p: two-sided paired t test of no difference, Holm-adjusted over the study's comparisons of that "
        f"metric. TOST p: equivalence at ±{settings.margin:g} pt (two one-sided t tests); 'reading' is 'differs' "
        f"when Holm p < {1 - settings.confidence:.2g}, 'equivalent' when TOST p < {1 - settings.confidence:.2g}, "
        "else 'inconclusive'.",
        f"MDE: the accuracy difference a two-sided t test at alpha {1 - settings.confidence:.2g} detects with 80 % "
        f"power at the observed sd and n (noncentral t); in brackets the pairs needed to detect ±{settings.margin:g} pt.",
        "Token-units in points of % of dense (token_pct); timesteps: timesteps_mean; energy: exact SOP convention "
        "(energy_exact_uj). Bootstrap intervals (n >= 5), p values and TOST of every metric are in stats.csv.",
    ]
    if any(r.kind == WELCH for r in results):
        notes.append("(Welch): no shared seeds at the matrix point, unpaired Welch t test of the two means.")
    return tuple(notes)


def paired_table(rec: StudyRecords, settings: ReportConfig,
                 results: Sequence[Result] | None = None) -> tuple[Table | None, pd.DataFrame]:
    """The paired table (None when nothing could be compared) and the tidy ``stats.csv`` frame (``results``:
    ``compare(rec, settings)`` when the caller has it)."""
    results = compare(rec, settings) if results is None else results
    frame = stats_frame(results, settings.confidence)
    rows = paired_rows(results, settings)
    if not rows:
        return None, frame
    return Table(f"{rec.name}: paired differences", PAIRED_HEADERS, rows, paired_notes(results, settings),
                 labels=2), frame
