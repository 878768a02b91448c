"""Comparison tables: held-out accuracy and compute efficiency, over seeds.

``tables/main.*``: final accuracy per suite and averaged over suites (the average is taken
per seed over the suites, then over seeds), as mean ± the 95% confidence interval of the
mean over seeds (Student t with n−1 degrees of freedom; with one seed, the mean and "n=1").
The best mean per column is bold. Each run's difference to the baseline run is the mean
over matched seeds of (run − baseline), with the p-value of a paired t-test over those
seeds (``scipy.stats.ttest_rel``; "n/a" with fewer than two matched seeds).

``tables/efficiency.*``: generated and forwarded tokens per optimiser step, wall-clock
seconds per step (the ledger's ``train_seconds``: collect + credit + update, without
in-training evaluation or checkpoints), and generation speed (generated tokens per second
of the ledger's ``generate`` phase), each as mean ± 95% CI over seeds and as the ratio of
means to the baseline; then tokens per step by purpose (mean over seeds).

Formats: Markdown (``.md``), LaTeX booktabs tabulars (``.tex``), HTML (``.html``, shown
inline by ``snakemake --report``) and tidy CSV (``.csv``, raw numbers: accuracy as a
fraction). ``tables/seeds.csv`` lists every per-seed number with its source file.
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.collect import WARM_START, AnalysisError, Results, add_selection_args, load

AVERAGE = "average"  # the column of per-seed means over suites
CONFIDENCE = 0.95
ALPHA = 0.05  # two-sided significance level of the power statement (minimum detectable effect)
POWER = 0.80
ACCURACY_COLUMNS = [
    "run",
    "method",
    "suite",
    "n_seeds",
    "mean",
    "std",
    "ci95",
    "best",
    "baseline",
    "delta",
    "n_matched",
    "p_value",
    "sd_diff",
    "mde",
]
EFFICIENCY_COLUMNS = [
    "run",
    "method",
    "quantity",
    "purpose",
    "n_seeds",
    "mean",
    "std",
    "ci95",
    "ratio_to_baseline",
]
# Efficiency quantities: (key, display label, unit)
QUANTITIES = [
    ("generated_tokens_per_step", "generated tok/step", "tokens"),
    ("forwarded_tokens_per_step", "forwarded tok/step", "tokens"),
    ("seconds_per_step", "s/step", "s"),
    ("generated_tokens_per_second", "gen. tok/s", "tokens/s"),
]


# --------------------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """Mean, half-width of the Student-t confidence interval of the mean, and n.

    The half-width is ``t_{(1+c)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1); NaN for n < 2.
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return float(x.mean()), float(half), n


def paired_test(run: pd.Series, base: pd.Series) -> tuple[float, int, float]:
    """Mean difference over matched seeds, the number matched, and the paired t-test p.

    ``run`` and ``base`` are indexed by seed. p is NaN with fewer than two matched seeds or
    when every difference is the same (the t statistic is undefined).
    """
    seeds = sorted(set(run.dropna().index) & set(base.dropna().index))
    if not seeds:
        return math.nan, 0, math.nan
    a, b = run.loc[seeds].to_numpy(float), base.loc[seeds].to_numpy(float)
    delta = float(np.mean(a - b))
    if len(seeds) < 2:
        return delta, len(seeds), math.nan
    with warnings.catch_warnings():  # constant differences: scipy warns and returns NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_rel(a, b).pvalue)
    return delta, len(seeds), p


def _power_gap(ncp: float, df: int, t_crit: float, power: float) -> float:
    """Power of the two-sided one-sample t-test at noncentrality ``ncp``, minus ``power``."""
    upper = stats.nct.sf(t_crit, df, ncp)
    lower = np.nan_to_num(stats.nct.cdf(-t_crit, df, ncp))  # ~0, NaN far in the tail
    return float(upper + lower - power)


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER, exact: bool = True) -> float:
    """Minimum detectable effect of a two-sided paired (one-sample) t-test over ``n`` seeds.

    The smallest true mean difference that the test at level ``alpha`` detects with
    probability ``power``, when the differences have standard deviation ``sd`` (the one
    the experiment measured). ``exact``: from the noncentral t distribution, the δ with
    P(|T'| > t_{1−α/2, n−1}) = power for T' ~ t'(n−1, δ·√n/sd). Otherwise the standard
    approximation (t_{1−α/2, n−1} + t_{power, n−1}) · sd / √n, which is a little smaller
    for few seeds (5% at n=3). NaN for n < 2, an undefined ``sd`` or ``sd`` = 0 (every
    seed gave the same difference: the test itself is undefined, p is n/a).
    """
    if n < 2 or sd is None or math.isnan(sd) or sd == 0:
        return math.nan
    df = n - 1
    t_crit = float(stats.t.ppf(1 - alpha / 2, df))
    approx = t_crit + float(stats.t.ppf(power, df))
    if not exact:
        return approx * sd / math.sqrt(n)
    ncp = optimize.brentq(_power_gap, 0.0, 4 * approx, args=(df, t_crit, power), xtol=1e-12)
    return float(ncp) * sd / math.sqrt(n)


def paired_sd(run: pd.Series, base: pd.Series) -> float:
    """Standard deviation (ddof=1) of the per-seed differences over matched seeds."""
    seeds = sorted(set(run.dropna().index) & set(base.dropna().index))
    if len(seeds) < 2:
        return math.nan
    d = run.loc[seeds].to_numpy(float) - base.loc[seeds].to_numpy(float)
    return float(np.std(d, ddof=1))


# ------------------------------------------------------------------------- accuracy table


def per_seed_accuracy(final: pd.DataFrame, suites: Sequence[str]) -> pd.DataFrame:
    """Accuracy per run x seed x suite, plus the ``average`` over suites per run x seed.

    A seed enters the average only if it has every suite (a partial average would mix
    suites of different difficulty).
    """
    cols = ["run", "method", "seed", "suite", "accuracy"]
    df = final[cols].copy()
    if len(suites) > 1:
        g = df[df.suite.isin(suites)].groupby(["run", "method", "seed"], sort=False)
        avg = g.accuracy.agg(["mean", "count"]).reset_index()
        avg = avg[avg["count"] == len(suites)].drop(columns="count")
        avg = avg.rename(columns={"mean": "accuracy"}).assign(suite=AVERAGE)
        df = pd.concat([df, avg[cols]], ignore_index=True)
    return df


def accuracy_table(
    final: pd.DataFrame, runs: Sequence[str], suites: Sequence[str], baseline: str | None
) -> pd.DataFrame:
    """One row per run x column (each suite, then ``average``): the statistics of the table."""
    per_seed = per_seed_accuracy(final, suites)
    columns = list(suites) + ([AVERAGE] if len(suites) > 1 else [])
    has_base = baseline is not None and baseline in set(per_seed.run)
    rows = []
    for col in columns:
        sub = per_seed[per_seed.suite == col]
        base = sub[sub.run == baseline].set_index("seed").accuracy if has_base else None
        for run in runs:
            r = sub[sub.run == run]
            if r.empty:
                continue
            mean, half, n = mean_ci(r.accuracy.tolist())
            delta, n_matched, p, sd_diff = math.nan, 0, math.nan, math.nan
            if has_base and run != baseline:
                delta, n_matched, p = paired_test(r.set_index("seed").accuracy, base)
                sd_diff = paired_sd(r.set_index("seed").accuracy, base)
            rows.append(
                {
                    "run": run,
                    "method": r.method.iloc[0],
                    "suite": col,
                    "n_seeds": n,
                    "mean": mean,
                    "std": float(r.accuracy.std(ddof=1)) if n > 1 else math.nan,
                    "ci95": half,
                    "best": False,
                    "baseline": baseline if has_base else "",
                    "delta": delta,
                    "n_matched": n_matched,
                    "p_value": p,
                    "sd_diff": sd_diff,
                    "mde": mde(sd_diff, n_matched),
                }
            )
    table = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    for _, idx in table.groupby("suite", sort=False).groups.items():
        means = table.loc[idx, "mean"]
        table.loc[idx, "best"] = np.isclose(means, means.max(), rtol=0, atol=1e-12)
    return table.astype({"best": bool, "n_seeds": int, "n_matched": int})


# ----------------------------------------------------------------------- efficiency table


def per_seed_efficiency(res: Results) -> pd.DataFrame:
    """Per run x seed: each efficiency quantity (purpose ``all``) and tokens per purpose."""
    rows = []
    for (run, method, seed), g in res.tokens.groupby(["run", "method", "seed"], sort=False):
        steps = int(g.steps.iloc[0])
        sec = res.seconds[(res.seconds.run == run) & (res.seconds.seed == seed)]
        phase = dict(zip(sec.phase, sec.seconds, strict=True))
        train_seconds = float(sec.train_seconds.iloc[0]) if len(sec) else math.nan
        gen_seconds = phase.get("generate", 0.0)
        values = {
            "generated_tokens_per_step": g.generated.sum() / steps,
            "forwarded_tokens_per_step": g.forwarded.sum() / steps,
            "seconds_per_step": train_seconds / steps,
            "generated_tokens_per_second": (
                g.generated.sum() / gen_seconds if gen_seconds > 0 else math.nan
            ),
        }
        base = {"run": run, "method": method, "seed": seed, "steps": steps}
        for q, v in values.items():
            rows.append({**base, "quantity": q, "purpose": "all", "value": float(v)})
        for p, gen, fwd in zip(g.purpose, g.generated, g.forwarded, strict=True):
            rows.append(
                {
                    **base,
                    "quantity": "generated_tokens_per_step",
                    "purpose": p,
                    "value": gen / steps,
                }
            )
            rows.append(
                {
                    **base,
                    "quantity": "forwarded_tokens_per_step",
                    "purpose": p,
                    "value": fwd / steps,
                }
            )
    return pd.DataFrame(rows)


def efficiency_table(res: Results, baseline: str | None) -> pd.DataFrame:
    per_seed = per_seed_efficiency(res)
    has_base = baseline is not None and baseline in set(per_seed.run)
    rows = []
    for (q, purpose), g in per_seed.groupby(["quantity", "purpose"], sort=False):
        base_mean = g[g.run == baseline].value.mean() if has_base else math.nan
        for run in res.runs:
            r = g[g.run == run]
            if r.empty:
                continue
            mean, half, n = mean_ci(r.value.tolist())
            rows.append(
                {
                    "run": run,
                    "method": r.method.iloc[0],
                    "quantity": q,
                    "purpose": purpose,
                    "n_seeds": n,
                    "mean": mean,
                    "std": float(r.value.std(ddof=1)) if n > 1 else math.nan,
                    "ci95": half,
                    "ratio_to_baseline": mean / base_mean if base_mean > 0 else math.nan,
                }
            )
    table = pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS)
    # deterministic order: quantity as listed, "all" first then purposes by name, runs in order
    q_rank = {q: i for i, (q, _, _) in enumerate(QUANTITIES)}
    r_rank = {r: i for i, r in enumerate(res.runs)}
    table = table.assign(
        _q=table.quantity.map(q_rank),
        _p=table.purpose.ne("all"),
        _r=table.run.map(r_rank),
    ).sort_values(["_q", "_p", "purpose", "_r"], kind="stable")
    return table.drop(columns=["_q", "_p", "_r"]).reset_index(drop=True)


# ---------------------------------------------------------------- sample-efficiency table

# Counters of the in-training evaluation curve: (column of ``learning_curves``, label, unit)
CURVE_AXES = [
    ("step", "steps", "steps"),
    ("generated_tokens", "generated tokens", "tokens"),
    ("seconds", "wall-clock seconds", "s"),
]
THRESHOLD_AXES = ("step", "generated_tokens")  # time to threshold and speed-up
FRACTIONS = (0.5, 0.8)  # of the baseline's final gain over the warm start
SAMPLE_EFFICIENCY_COLUMNS = [
    "run",
    "method",
    "quantity",
    "axis",
    "fraction",
    "threshold",
    "budget",
    "n_seeds",
    "n_reached",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "bound",
    "baseline",
    "delta",
    "n_matched",
    "p_value",
    "sd_diff",
    "mde",
]
SEED_COLUMNS = [
    "run",
    "method",
    "seed",
    "quantity",
    "axis",
    "fraction",
    "threshold",
    "budget",
    "value",
    "reached",
    "source",
]


def eval_points(curves: pd.DataFrame) -> pd.DataFrame:
    """The in-training evaluations (rows with an accuracy), by run, seed and step."""
    evals = curves[curves.accuracy.notna()]
    return evals.sort_values(["run", "seed", "step"], kind="stable").reset_index(drop=True)


def normalised_auc(x: Sequence[float], y: Sequence[float], end: float) -> float:
    """Trapezoidal area under the piecewise-linear curve y(x) from x[0] to ``end``,
    divided by ``end − x[0]``: the mean of y over that interval.

    The curve is cut at ``end`` (its value there interpolated linearly); NaN when ``end``
    is not above x[0] or beyond the last point (no extrapolation), or x is undefined.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0 or np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    if not end > x[0] or end > x[-1] * (1 + 1e-12):
        return math.nan
    keep = x < end
    xs = np.append(x[keep], end)
    ys = np.append(y[keep], np.interp(end, x, y))
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    return area / (end - x[0])


def crossing(x: Sequence[float], y: Sequence[float], threshold: float) -> float:
    """The first x at which the piecewise-linear curve y(x) reaches ``threshold``
    (interpolated linearly between the two evaluations around it); ``inf`` if it never
    does within the curve, NaN if undefined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0 or math.isnan(threshold) or np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    above = np.flatnonzero(y >= threshold)
    if len(above) == 0:
        return math.inf
    i = int(above[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (threshold - y0) / (y1 - y0) * (x1 - x0))


@dataclass
class Thresholds:
    """The baseline's warm start and final in-training accuracy and the accuracy each
    fraction of its gain stands for (NaN without a baseline or without a gain)."""

    warm: float
    final: float
    levels: dict[float, float]

    @property
    def gain(self) -> float:
        return self.final - self.warm


def baseline_thresholds(
    evals: pd.DataFrame, baseline: str | None, fractions: Sequence[float]
) -> Thresholds:
    """warm: the baseline's mean over seeds at step 0; final: its mean at its last
    evaluation; level(f) = warm + f · (final − warm), when the gain is positive."""
    nan = Thresholds(math.nan, math.nan, {f: math.nan for f in fractions})
    if not baseline:
        return nan
    base = evals[evals.run == baseline]
    if base.empty or not (base.step == 0).any():
        return nan
    warm = float(base[base.step == 0].accuracy.mean())
    last = base.loc[base.groupby("seed").step.idxmax()]
    final = float(last.accuracy.mean())
    gain = final - warm
    levels = {f: warm + f * gain if gain > 0 else math.nan for f in fractions}
    return Thresholds(warm, final, levels)


def common_budgets(evals: pd.DataFrame) -> dict[str, float]:
    """Per counter: the smallest last evaluation over every run x seed, the budget that
    every run reached (the AUC's interval ends there, so runs compare at equal budget)."""
    last = evals.loc[evals.groupby(["run", "seed"]).step.idxmax()]
    return {axis: float(last[axis].min()) for axis, _, _ in CURVE_AXES}


def sample_efficiency_per_seed(
    curves: pd.DataFrame, baseline: str | None, fractions: Sequence[float] = FRACTIONS
) -> tuple[pd.DataFrame, Thresholds, dict[str, float]]:
    """Per run x seed: the normalised AUC over each counter up to the common budget, and
    for each fraction the steps and tokens at which the curve first reaches the
    baseline's threshold (``reached`` False: not within the run, ``value`` is then the
    run's own budget, a lower bound)."""
    evals = eval_points(curves)
    if evals.empty:
        return pd.DataFrame(columns=SEED_COLUMNS), baseline_thresholds(evals, None, fractions), {}
    thr = baseline_thresholds(evals, baseline, fractions)
    budgets = common_budgets(evals)
    rows = []
    for (run, seed), g in evals.groupby(["run", "seed"], sort=False):
        base = {"run": run, "method": g.method.iloc[0], "seed": int(seed)}
        base["source"] = g.source.iloc[0]
        y = g.accuracy.to_numpy(float)
        for axis, _, _ in CURVE_AXES:
            x = g[axis].to_numpy(float)
            rows.append(
                {
                    **base,
                    "quantity": "auc",
                    "axis": axis,
                    "fraction": math.nan,
                    "threshold": math.nan,
                    "budget": budgets[axis],
                    "value": normalised_auc(x, y, budgets[axis]),
                    "reached": True,
                }
            )
        for f in fractions:
            for axis in THRESHOLD_AXES:
                x = g[axis].to_numpy(float)
                t = crossing(x, y, thr.levels[f])
                reached = not math.isinf(t)
                rows.append(
                    {
                        **base,
                        "quantity": "to_threshold",
                        "axis": axis,
                        "fraction": f,
                        "threshold": thr.levels[f],
                        "budget": float(x[-1]),
                        "value": t if reached else float(x[-1]),
                        "reached": reached and not math.isnan(t),
                    }
                )
    return pd.DataFrame(rows, columns=SEED_COLUMNS), thr, budgets


def log_ratio_ci(
    ratios: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float, float, float, float]:
    """Geometric mean of per-seed ratios with the t interval of the mean log ratio.

    Returns (geometric mean, low, high, p of the one-sample t-test of log ratio = 0,
    sd of the log ratios, minimum detectable ratio at ``POWER``: exp(mde of the log)).
    """
    logs = np.log(np.asarray(ratios, float))
    n = len(logs)
    if n == 0 or not np.isfinite(logs).all():
        return (math.nan,) * 6
    gm = float(np.exp(logs.mean()))
    if n < 2:
        return gm, math.nan, math.nan, math.nan, math.nan, math.nan
    sd = float(logs.std(ddof=1))
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    with warnings.catch_warnings():  # identical ratios: scipy warns and returns NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_1samp(logs, 0.0).pvalue)
    low, high = float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))
    return gm, low, high, p, sd, float(np.exp(mde(sd, n)))


def _summary_row(run: str, method: str, quantity: str, axis: str, **values) -> dict:
    row = dict.fromkeys(SAMPLE_EFFICIENCY_COLUMNS, math.nan)
    row.update(run=run, method=method, quantity=quantity, axis=axis, bound="none", baseline="")
    row.update(n_seeds=0, n_reached=0, n_matched=0)
    row.update(values)
    return row


def speedup(run_t: pd.DataFrame, base_t: pd.DataFrame) -> dict:
    """``baseline time / run time`` per matched seed (``to_threshold`` rows indexed by
    seed), summarised on the log scale: mean (geometric), ci_low, ci_high, p_value,
    sd_diff (of the log ratios), mde (the minimum detectable ratio), n_matched and
    bound. A seed that did not reach the threshold counts at its budget: the run's true
    time exceeds it, so the true speed-up is smaller (``upper``: the estimate is an
    upper bound); the baseline's, so it is larger (``lower``); both: ``unknown``. No
    interval nor test for a bound."""
    seeds = sorted(set(run_t.index) & set(base_t.index))
    out = {"n_matched": len(seeds), "bound": "none"}
    if not seeds:
        return out
    r, b = run_t.loc[seeds], base_t.loc[seeds]
    if not (r.value.notna() & b.value.notna() & (r.value > 0) & (b.value > 0)).all():
        return {**out, "bound": "undefined"}
    run_censored, base_censored = bool((~r.reached).any()), bool((~b.reached).any())
    if run_censored and base_censored:
        return {**out, "bound": "unknown"}
    gm, low, high, p, sd, mdr = log_ratio_ci((b.value / r.value).tolist())
    out.update(mean=gm, ci_low=low, ci_high=high, p_value=p, sd_diff=sd, mde=mdr)
    if run_censored or base_censored:
        out.update(bound="upper" if run_censored else "lower")
        out.update(ci_low=math.nan, ci_high=math.nan, p_value=math.nan, sd_diff=math.nan)
        out.update(mde=math.nan)
    return out


def sample_efficiency_table(
    per_seed: pd.DataFrame,
    runs: Sequence[str],
    baseline: str | None,
    fractions: Sequence[float] = FRACTIONS,
) -> pd.DataFrame:
    """One row per run x quantity x counter (x fraction):

    - ``auc``: mean ± t interval over seeds; difference to the baseline over matched
      seeds with the paired t-test's p and the minimum detectable difference (``mde``).
    - ``to_threshold``: mean over seeds (seeds that did not reach the threshold counted
      at their budget: then ``bound`` = ``lower``, no interval; otherwise ``none``);
      ``n_reached``.
    - ``speedup``: baseline time / run time, the geometric mean over matched seeds with
      the t interval of the mean log ratio, the p of log ratio = 0, and ``mde`` the
      smallest ratio (> 1) detectable at 80% power; ``bound`` ``upper`` / ``lower``
      when seeds did not reach the threshold, ``unknown`` when both runs had such seeds.
    """
    has_base = bool(baseline) and baseline in set(per_seed.run)
    rows = []
    for run in runs:
        mine = per_seed[per_seed.run == run]
        if mine.empty:
            continue
        method = str(mine.method.iloc[0])
        for axis, _, _ in CURVE_AXES:
            r = mine[(mine.quantity == "auc") & (mine.axis == axis)].set_index("seed").value
            mean, half, n = mean_ci(r.tolist())
            row = _summary_row(
                run,
                method,
                "auc",
                axis,
                budget=float(mine[mine.axis == axis].budget.iloc[0]),
                n_seeds=n,
                n_reached=n,
                mean=mean,
                std=float(r.std(ddof=1)) if n > 1 else math.nan,
                ci_low=mean - half,
                ci_high=mean + half,
                baseline=baseline if has_base else "",
            )
            if has_base and run != baseline:
                sel = (per_seed.run == baseline) & (per_seed.quantity == "auc")
                b = per_seed[sel & (per_seed.axis == axis)].set_index("seed").value
                delta, n_matched, p = paired_test(r, b)
                sd = paired_sd(r, b)
                row.update(delta=delta, n_matched=n_matched, p_value=p, sd_diff=sd)
                row.update(mde=mde(sd, n_matched))
            rows.append(row)
        for f in fractions:
            for axis in THRESHOLD_AXES:
                sel = (mine.quantity == "to_threshold") & (mine.axis == axis)
                t = mine[sel & np.isclose(mine.fraction, f)].set_index("seed")
                common = {
                    "fraction": f,
                    "threshold": float(t.threshold.iloc[0]),
                    "baseline": baseline if has_base else "",
                }
                values = t.value.dropna()
                n, n_reached = len(values), int(t.reached.sum())
                common.update(budget=float(t.budget.min()), n_seeds=n, n_reached=n_reached)
                row = _summary_row(run, method, "to_threshold", axis, **common)
                if n:
                    mean, half, _ = mean_ci(values.tolist())
                    row.update(mean=mean, std=float(values.std(ddof=1)) if n > 1 else math.nan)
                    if n_reached == n:
                        row.update(ci_low=mean - half, ci_high=mean + half)
                    else:
                        row.update(bound="lower")
                rows.append(row)
                if not has_base or run == baseline:
                    continue
                sel = (per_seed.run == baseline) & (per_seed.quantity == "to_threshold")
                sel &= (per_seed.axis == axis) & np.isclose(per_seed.fraction, f)
                b = per_seed[sel].set_index("seed")
                s = _summary_row(run, method, "speedup", axis, **common)
                s.update(speedup(t, b))
                rows.append(s)
    table = pd.DataFrame(rows, columns=SAMPLE_EFFICIENCY_COLUMNS)
    return table.astype({"n_seeds": int, "n_reached": int, "n_matched": int})


# ------------------------------------------------------------------------------ display


def decimals_for(x: float) -> int:
    a = abs(x)
    if math.isnan(a) or a >= 100:
        return 0
    return 1 if a >= 10 else 2 if a >= 1 else 3


def token_decimals(x: float) -> int:
    """Token counts: whole tokens from 10 up (a decimal below, for averages like 2.5)."""
    return 0 if math.isnan(x) or abs(x) >= 10 else 1


def fmt_num(x: float, decimals: int | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    d = decimals_for(x) if decimals is None else decimals
    return f"{x:,.{d}f}"


def fmt_mean_ci(mean: float, half: float, n: int, scale: float = 1.0, decimals=None) -> str:
    """``mean ± half`` (same decimals); the mean and ``(n=1)`` for one seed."""
    if n == 0 or math.isnan(mean):
        return "–"
    d = decimals_for(mean * scale) if decimals is None else decimals
    if n == 1 or math.isnan(half):
        return f"{fmt_num(mean * scale, d)} (n={n})"
    return f"{fmt_num(mean * scale, d)} ± {fmt_num(half * scale, d)}"


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def fmt_delta(delta: float, n_matched: int, p: float, scale: float = 100.0) -> str:
    if n_matched == 0 or math.isnan(delta):
        return "n/a"
    value = round(delta * scale, 1)
    sign = "−" if value < 0 else "+"  # a true minus sign ($-$ in LaTeX)
    return f"{sign}{abs(value):.1f} ({fmt_p(p)})"


@dataclass
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    """A display table: a header, rows of cells, a title and notes (rendered per format)."""

    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    align: str = ""  # LaTeX column spec; default: l for the first two columns, r after

    def spec(self) -> str:
        n = len(self.header)
        return self.align or ("l" * min(2, n) + "r" * max(0, n - 2))


def to_markdown(tables: Sequence[Table], heading: str) -> str:
    out = [f"# {heading}", ""]
    for t in tables:
        out += [f"## {t.title}", ""]
        out.append("| " + " | ".join(t.header) + " |")
        out.append("|" + "|".join(":--" if c == "l" else "--:" for c in t.spec()) + "|")
        for row in t.rows:
            texts = [f"**{c.text}**" if c.bold else c.text for c in row]
            out.append("| " + " | ".join(x.replace("|", "\\|") for x in texts) + " |")
        out.append("")
        out += [f"{note}  " for note in t.notes]
        if t.notes:
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {
    "±": r"$\pm$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "–": "--",
    "−": "$-$",
    "<": r"$<$",
    ">": r"$>$",
}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return "".join(_LATEX_SYMBOLS.get(ch, ch) for ch in out)


def to_latex(tables: Sequence[Table], source: str) -> str:
    """booktabs tabulars (one per table), to be ``\\input`` inside a table float."""
    out = [f"% {source}", "% requires \\usepackage{booktabs}"]
    for t in tables:
        out += ["", f"% {latex_escape(t.title)}"]
        out += [f"% {latex_escape(n)}" for n in t.notes]
        out.append(f"\\begin{{tabular}}{{{t.spec()}}}")
        out.append("\\toprule")
        out.append(" & ".join(latex_escape(h) for h in t.header) + " \\\\")
        out.append("\\midrule")
        for row in t.rows:
            cells = [
                f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text)
                for c in row
            ]
            out.append(" & ".join(cells) + " \\\\")
        out.append("\\bottomrule")
        out.append("\\end{tabular}")
    return "\n".join(out) + "\n"


def to_html(tables: Sequence[Table], heading: str) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{esc(heading)}</title>",
        "<style>body{font-family:sans-serif;font-size:14px}"
        "table{border-collapse:collapse;margin-bottom:0.5em}"
        "th,td{padding:3px 10px;border-bottom:1px solid #ddd}"
        "th{border-bottom:2px solid #333}td.r,th.r{text-align:right}"
        "p.note{color:#444;margin:0.2em 0}</style>",
        "</head><body>",
        f"<h1>{esc(heading)}</h1>",
    ]
    for t in tables:
        cls = ["r" if c == "r" else "l" for c in t.spec()]
        out.append(f"<h2>{esc(t.title)}</h2>")
        out.append("<table><thead><tr>")
        out += [f'<th class="{k}">{esc(h)}</th>' for h, k in zip(t.header, cls, strict=True)]
        out.append("</tr></thead><tbody>")
        for row in t.rows:
            cells = [
                f'<td class="{k}">' + (f"<b>{esc(c.text)}</b>" if c.bold else esc(c.text)) + "</td>"
                for c, k in zip(row, cls, strict=True)
            ]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table>")
        out += [f'<p class="note">{esc(n)}</p>' for n in t.notes]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------- main tables


def _steps_note(res: Results) -> list[str]:
    """A warning line when runs trained for different numbers of steps (fairness rules)."""
    if res.tokens.steps.nunique() <= 1:
        return []
    steps = res.tokens.groupby("run", sort=False).steps.unique()
    listing = ", ".join(f"{run}: {'/'.join(map(str, sorted(v)))}" for run, v in steps.items())
    return [f"Note: the runs trained for different numbers of steps ({listing})."]


def base_row(base: pd.DataFrame | None, columns: Sequence[str]) -> list[Cell] | None:
    """The warm start's row: one evaluation of the shared initial policy (no seeds)."""
    if base is None or base.empty:
        return None
    acc = base.set_index("suite").accuracy
    cells = [Cell(WARM_START), Cell("–"), Cell("–")]
    for col in columns:
        if col == AVERAGE:
            value = acc.mean() if all(s in acc.index for s in columns if s != AVERAGE) else None
        else:
            value = acc.get(col)
        cells.append(Cell("–" if value is None else fmt_num(100.0 * value, 1)))
    return cells


def accuracy_display(
    table: pd.DataFrame,
    runs: Sequence[str],
    suites: Sequence[str],
    baseline: str | None,
    base: pd.DataFrame | None = None,
) -> list[Table]:
    columns = list(suites) + ([AVERAGE] if len(suites) > 1 else [])
    ci = f"{round(CONFIDENCE * 100)}% CI"
    acc_rows, delta_rows = [], []
    start = base_row(base, columns)
    if start is not None:
        acc_rows.append(start)
    has_base = bool(len(table)) and bool(table.baseline.iloc[0])
    for run in runs:
        sub = table[table.run == run].set_index("suite")
        if sub.empty:
            continue
        seeds = int(sub.n_seeds.max())
        method = str(sub.method.iloc[0])
        acc = [Cell(run), Cell(method), Cell(str(seeds))]
        for col in columns:
            if col not in sub.index:
                acc.append(Cell("–"))
                continue
            r = sub.loc[col]
            acc.append(Cell(fmt_mean_ci(r["mean"], r.ci95, r.n_seeds, 100.0, 1), bool(r.best)))
        acc_rows.append(acc)
        if has_base and run != baseline:
            matched = int(sub.n_matched.max())
            row = [Cell(run), Cell(method), Cell(str(matched))]
            for col in columns:
                if col not in sub.index:
                    row += [Cell("n/a"), Cell("n/a")]
                    continue
                r = sub.loc[col]
                row.append(Cell(fmt_delta(r.delta, r.n_matched, r.p_value)))
                row.append(Cell(fmt_mde(r.mde)))
            delta_rows.append(row)
    tables = [
        Table(
            title="Held-out accuracy (%)",
            header=["run", "method", "seeds", *columns],
            rows=acc_rows,
            notes=[
                f"Mean ± {ci} over seeds (Student t, n−1 degrees of freedom); "
                "n=1: a single seed, no interval. Bold: best mean per column."
                + (
                    f" '{AVERAGE}': per seed, the mean over the {len(suites)} suites; "
                    "then over seeds (seeds with every suite)."
                    if len(suites) > 1
                    else ""
                )
                + (
                    f" '{WARM_START}': the shared initial policy every run starts from, "
                    "evaluated once the same way."
                    if start is not None
                    else ""
                )
            ],
        )
    ]
    if has_base and delta_rows:
        tables.append(
            Table(
                title=f"Difference to {baseline} (accuracy points)",
                header=["run", "method", "seeds", *[h for c in columns for h in (c, "MDE")]],
                rows=delta_rows,
                notes=[
                    f"Mean over matched seeds of (run − {baseline}) in percentage points; "
                    "p: paired t-test over matched seeds (scipy.stats.ttest_rel), "
                    "n/a with fewer than two matched seeds. seeds: matched seeds.",
                    f"MDE: minimum detectable effect, the smallest true difference that "
                    f"this paired t-test detects with {round(POWER * 100)}% power at "
                    f"α={ALPHA:g} (two-sided; noncentral t, n−1 degrees of freedom), from "
                    "the seed-to-seed standard deviation of the differences measured here. "
                    "A |difference| below the MDE with p ≥ 0.05 means the experiment could "
                    "not have seen an effect of that size, not that there is none.",
                ],
            )
        )
    elif baseline:
        tables[0].notes.append(f"No difference table: baseline run {baseline!r} is absent.")
    return tables


def efficiency_display(table: pd.DataFrame, res: Results, baseline: str | None) -> list[Table]:
    has_base = bool(baseline) and baseline in res.runs
    ci = f"{round(CONFIDENCE * 100)}% CI"
    steps = res.tokens.groupby("run", sort=False).steps.unique()
    totals = table[table.purpose == "all"]
    unit = {q: u for q, _, u in QUANTITIES}
    header = ["run", "method", "steps"]
    for _, label, _ in QUANTITIES:
        header += [label] + ([f"× {baseline}"] if has_base else [])
    rows = []
    for run in res.runs:
        sub = totals[totals.run == run].set_index("quantity")
        if sub.empty:
            continue
        step_text = "/".join(map(str, sorted(steps.get(run, []))))
        row = [Cell(run), Cell(str(sub.method.iloc[0])), Cell(step_text)]
        for q, _, _ in QUANTITIES:
            if q not in sub.index:
                row += [Cell("–")] + ([Cell("–")] if has_base else [])
                continue
            r = sub.loc[q]
            d = token_decimals(r["mean"]) if unit[q] == "tokens" else None
            row.append(Cell(fmt_mean_ci(r["mean"], r.ci95, r.n_seeds, decimals=d)))
            if has_base:
                ratio = r.ratio_to_baseline
                row.append(Cell("–" if math.isnan(ratio) else f"{ratio:.2f}×"))
        rows.append(row)
    notes = [
        f"Mean ± {ci} over seeds (n=1: one seed). Tokens and seconds per optimiser step; "
        "s/step: wall-clock of the training steps (collect, credit, update; no in-training "
        "evaluation or checkpoints); gen. tok/s: generated tokens per second of the "
        "'generate' phase." + (f" × {baseline}: ratio of means to {baseline}." if has_base else "")
    ]
    if baseline and not has_base:
        notes.append(f"No ratios: baseline run {baseline!r} is absent.")
    notes += _steps_note(res)
    tables = [Table("Compute per step", header, rows, notes)]
    by_purpose = table[table.purpose != "all"]
    for q, what in (
        ("generated_tokens_per_step", "Generated"),
        ("forwarded_tokens_per_step", "Forwarded"),
    ):
        sub = by_purpose[by_purpose.quantity == q]
        totals_by_purpose = sub.groupby("purpose")["mean"].max()
        purposes = sorted(totals_by_purpose[totals_by_purpose > 0].index)
        if not purposes:
            continue
        p_rows = []
        for run in res.runs:
            r = sub[sub.run == run].set_index("purpose")
            if r.empty:
                continue
            row = [Cell(run), Cell(str(r.method.iloc[0]))]
            row += [
                Cell(fmt_num(m, token_decimals(m)) if p in r.index else "–")
                for p in purposes
                for m in [r["mean"].get(p, math.nan)]
            ]
            p_rows.append(row)
        tables.append(
            Table(
                f"{what} tokens per step by purpose",
                ["run", "method", *purposes],
                p_rows,
                ["Mean over seeds; '–': the run charged nothing to that purpose."],
            )
        )
    return tables


def fmt_count(x: float, unit: str) -> str:
    """A budget or a time on a counter: whole steps/tokens with separators, seconds."""
    if math.isnan(x):
        return "–"
    if unit == "s":
        return fmt_num(x, 1 if abs(x) < 100 else 0)
    return fmt_num(x, 0 if unit == "tokens" or float(x).is_integer() else 1)


def fmt_time(row: pd.Series, unit: str) -> str:
    """Time to threshold: mean ± CI; a lower bound when seeds did not reach it."""
    n, k = int(row.n_seeds), int(row.n_reached)
    if n == 0 or math.isnan(row["mean"]):
        return "n/a"
    if k == 0:
        return f"not reached (> {fmt_count(row.budget, unit)})"
    if k < n:
        return f"> {fmt_count(row['mean'], unit)} ({k}/{n} reached)"
    if n == 1:
        return f"{fmt_count(row['mean'], unit)} (n=1)"
    d = {"tokens": 0, "steps": 1}.get(unit, decimals_for(row["mean"]))
    return f"{fmt_num(row['mean'], d)} ± {fmt_num((row.ci_high - row.ci_low) / 2, d)}"


def fmt_ratio(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.2f}×"


def fmt_speedup(row: pd.Series) -> str:
    """Speed-up: geometric mean [95% CI]; a bound or n/a when seeds did not reach."""
    if row.bound == "upper":
        missing = f"{row.n_seeds - row.n_reached}/{row.n_seeds}"
        return f"< {fmt_ratio(row['mean'])} ({missing} seeds not reached)"
    if row.bound == "lower":
        return f"> {fmt_ratio(row['mean'])} ({row.baseline}: seeds not reached)"
    if row.bound == "unknown":
        return "n/a (neither reached)"
    if row.n_matched == 0 or math.isnan(row["mean"]):
        return "n/a"
    if math.isnan(row.ci_low):
        return f"{fmt_ratio(row['mean'])} (n={row.n_matched})"
    return f"{fmt_ratio(row['mean'])} [{row.ci_low:.2f}, {row.ci_high:.2f}]"


def fmt_mde(x: float, scale: float = 100.0) -> str:
    return "n/a" if math.isnan(x) else fmt_num(x * scale, 1)


def sample_efficiency_display(
    table: pd.DataFrame,
    runs: Sequence[str],
    baseline: str | None,
    thresholds: Thresholds,
    warm: float,
) -> list[Table]:
    """AUC per counter (mean ± CI), its difference to the baseline with p and MDE, and per
    fraction the steps and tokens to the threshold with the speed-up against the baseline."""
    ci = f"{round(CONFIDENCE * 100)}% CI"
    power = f"{round(POWER * 100)}% power, α={ALPHA:g} two-sided"
    if table.empty:
        return [
            Table(
                "Sample efficiency",
                ["run", "method"],
                [],
                ["No in-training evaluation in metrics.jsonl (train.eval_every: 0): no curve."],
            )
        ]
    auc = table[table.quantity == "auc"]
    unit = {axis: u for axis, _, u in CURVE_AXES}
    budget = {a: float(auc[auc.axis == a].budget.iloc[0]) for a, _, _ in CURVE_AXES}
    short = {"step": "steps", "generated_tokens": "tokens", "seconds": "seconds"}
    cols = [f"{short[a]} 0–{fmt_count(budget[a], unit[a])}" for a, _, _ in CURVE_AXES]
    has_base = bool(baseline) and bool((table.baseline != "").any())
    best = {a: auc[auc.axis == a]["mean"].max() for a, _, _ in CURVE_AXES}
    rows, delta_rows = [], []
    if not math.isnan(warm):
        rows.append([Cell(WARM_START), Cell("–"), Cell("–")] + [Cell(fmt_num(100 * warm, 1))] * 3)
    for run in runs:
        sub = auc[auc.run == run].set_index("axis")
        if sub.empty:
            continue
        method = str(sub.method.iloc[0])
        row = [Cell(run), Cell(method), Cell(str(int(sub.n_seeds.max())))]
        for a, _, _ in CURVE_AXES:
            r = sub.loc[a]
            half = (r.ci_high - r.ci_low) / 2
            is_best = bool(np.isclose(r["mean"], best[a], rtol=0, atol=1e-12))
            row.append(Cell(fmt_mean_ci(r["mean"], half, r.n_seeds, 100.0, 1), is_best))
        rows.append(row)
        if has_base and run != baseline:
            d = [Cell(run), Cell(method), Cell(str(int(sub.n_matched.max())))]
            for a, _, _ in CURVE_AXES:
                r = sub.loc[a]
                d += [Cell(fmt_delta(r.delta, r.n_matched, r.p_value)), Cell(fmt_mde(r.mde))]
            delta_rows.append(d)
    tables = [
        Table(
            "Area under the held-out accuracy curve (mean accuracy over the budget, %)",
            ["run", "method", "seeds", *cols],
            rows,
            [
                "Per seed: the trapezoidal area under the in-training accuracy curve "
                "(eval/test/accuracy in metrics.jsonl, step 0 = warm start) from 0 to the "
                "common budget, divided by the budget: the mean accuracy over the interval. "
                "The common budget is the smallest final counter over every run x seed "
                "(shown in the header), so runs compare at equal steps, equal generated "
                "tokens and equal training wall-clock; a curve is interpolated linearly "
                f"at the budget. Mean ± {ci} over seeds (Student t). Bold: best mean."
                + (
                    f" '{WARM_START}': the step-0 evaluation (a flat curve)."
                    if not math.isnan(warm)
                    else ""
                )
            ],
        )
    ]
    if delta_rows:
        header = ["run", "method", "seeds"]
        for a, _, _ in CURVE_AXES:
            header += [short[a], "MDE"]
        tables.append(
            Table(
                f"AUC difference to {baseline} (accuracy points)",
                header,
                delta_rows,
                [
                    f"Mean over matched seeds of (run − {baseline}), p of the paired t-test. "
                    f"MDE: the minimum detectable effect, the smallest true difference a "
                    f"paired t-test over these seeds detects with {power} (noncentral t), "
                    "from the seed-to-seed standard deviation of the differences measured "
                    "here: |Δ| below it with p ≥ 0.05 is 'could not have seen one', not "
                    "'no difference'."
                ],
            )
        )
    fractions = sorted(table.fraction.dropna().unique())
    for f in fractions:
        level = thresholds.levels.get(f, math.nan)
        sub_f = table[np.isclose(table.fraction, f)]
        title = f"Steps and tokens to {f:.0%} of {baseline}'s gain"
        if math.isnan(level):
            why = (
                f"baseline run {baseline!r} is absent"
                if not has_base
                else f"{baseline} did not improve on the warm start "
                f"({100 * thresholds.warm:.1f}% to {100 * thresholds.final:.1f}%)"
            )
            tables[0].notes.append(f"No time to {f:.0%} of the gain: {why}.")
            continue
        header = ["run", "method", "seeds"]
        for a in THRESHOLD_AXES:
            header += [short[a], f"× fewer {short[a]}", "MDE"]
        f_rows = []
        for run in runs:
            mine = sub_f[sub_f.run == run]
            if mine.empty:
                continue
            row = [Cell(run), Cell(str(mine.method.iloc[0])), Cell(str(int(mine.n_seeds.max())))]
            for a in THRESHOLD_AXES:
                t = mine[(mine.quantity == "to_threshold") & (mine.axis == a)].iloc[0]
                row.append(Cell(fmt_time(t, unit[a])))
                s = mine[(mine.quantity == "speedup") & (mine.axis == a)]
                if run == baseline:
                    row += [Cell("reference"), Cell("–")]
                elif s.empty:
                    row += [Cell("n/a"), Cell("n/a")]
                else:
                    s = s.iloc[0]
                    row += [Cell(fmt_speedup(s)), Cell(fmt_ratio(s.mde))]
            f_rows.append(row)
        tables.append(
            Table(
                f"{title} (held-out accuracy ≥ {100 * level:.1f}%)",
                header,
                f_rows,
                [
                    f"Threshold: {baseline}'s warm start ({100 * thresholds.warm:.1f}%, mean "
                    f"over its seeds at step 0) + {f:g} × its final gain (to "
                    f"{100 * thresholds.final:.1f}%, mean over its seeds at its last "
                    "evaluation). Per seed, the first step (generated tokens) at which the "
                    "curve reaches it, interpolated linearly between evaluations; mean ± "
                    f"{ci} over seeds. A seed that never reached it counts at its budget: "
                    "'> m (k/n reached)' is a lower bound of the mean; 'not reached (> B)': "
                    "no seed reached it within B.",
                    f"× fewer: {baseline}'s time / the run's, per matched seed; the geometric "
                    f"mean [{ci}: t interval of the mean log ratio]; above 1 the run needs "
                    "fewer. '<' / '>': a bound, when the run's / the baseline's seeds did not "
                    f"reach the threshold. MDE: the smallest speed-up (or 1/slow-down) a "
                    f"t-test of the log ratios detects with {power} (noncentral t), from "
                    "their measured seed-to-seed spread.",
                ],
            )
        )
    return tables


# -------------------------------------------------------------------------------- write


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_tables(
    res: Results,
    suites: Sequence[str],
    out_dir: str | Path,
    baseline: str | None,
    source: str,
    fractions: Sequence[float] = FRACTIONS,
) -> dict[str, pd.DataFrame]:
    """Write ``main``, ``efficiency``, ``sample_efficiency`` (md, tex, html, csv),
    ``seeds.csv`` and ``sample_efficiency_seeds.csv`` into ``out_dir``."""
    out = Path(out_dir)
    acc = accuracy_table(res.final, res.runs, suites, baseline)
    eff = efficiency_table(res, baseline)
    main_tables = accuracy_display(acc, res.runs, suites, baseline, res.base)
    main_tables[0].notes += _steps_note(res)
    eff_tables = efficiency_display(eff, res, baseline)
    se_seeds, thresholds, _ = sample_efficiency_per_seed(res.curves, baseline, fractions)
    se = sample_efficiency_table(se_seeds, res.runs, baseline, fractions)
    evals = eval_points(res.curves)
    warm = float(evals[evals.step == 0].accuracy.mean()) if len(evals) else math.nan
    se_tables = sample_efficiency_display(se, res.runs, baseline, thresholds, warm)
    se_tables[0].notes += _steps_note(res)
    for name, heading, tables, frame in (
        ("main", f"Held-out accuracy: {source}", main_tables, acc),
        ("efficiency", f"Compute efficiency: {source}", eff_tables, eff),
        ("sample_efficiency", f"Sample efficiency: {source}", se_tables, se),
    ):
        _write(out / f"{name}.md", to_markdown(tables, heading))
        _write(out / f"{name}.tex", to_latex(tables, f"generated by analysis.tables from {source}"))
        _write(out / f"{name}.html", to_html(tables, heading))
        _write(out / f"{name}.csv", frame.to_csv(index=False, float_format="%.10g"))
    with_base = res.base is not None and not res.base.empty
    seeds = pd.concat([res.base, res.final], ignore_index=True) if with_base else res.final.copy()
    order = [WARM_START, *res.runs] if with_base else res.runs
    seeds["run"] = pd.Categorical(seeds.run, categories=order, ordered=True)
    seeds = seeds.sort_values(["run", "suite", "seed"], kind="stable")
    _write(out / "seeds.csv", seeds.to_csv(index=False, float_format="%.10g"))
    _write(out / "sample_efficiency_seeds.csv", se_seeds.to_csv(index=False, float_format="%.10g"))
    return {"main": acc, "efficiency": eff, "sample_efficiency": se}


def fractions_list(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x]
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must lie in (0, 1], got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.tables",
        description="Accuracy and efficiency tables (md, tex, html, csv) of an experiment.",
    )
    add_selection_args(parser)
    parser.add_argument("--out", required=True, help="output directory (results/<exp>/tables)")
    parser.add_argument(
        "--fractions",
        type=fractions_list,
        default=list(FRACTIONS),
        help="comma-separated fractions of the baseline's gain for the time to threshold "
        f"(default: {','.join(map(str, FRACTIONS))})",
    )
    args = parser.parse_args(argv)
    try:
        res = load(args.experiment, args.runs, args.seeds, args.suites, args.baseline)
        suites = args.suites or sorted(res.final.suite.unique())
        if not suites:
            raise AnalysisError(f"{args.experiment}: no evaluation results (eval/<suite>.json)")
        baseline = args.baseline or None
        if baseline and baseline not in res.runs:
            print(f"analysis: baseline run {baseline!r} absent; no differences", file=sys.stderr)
        source = re.sub(r"/+$", "", str(args.experiment))
        write_tables(res, suites, args.out, baseline, source, args.fractions)
    except AnalysisError as e:
        print(f"analysis: error: {e}", file=sys.stderr)
        return 2
    for name in ("main", "efficiency", "sample_efficiency"):
        print(Path(args.out, f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
