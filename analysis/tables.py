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
from scipy import stats

from analysis.collect import WARM_START, AnalysisError, Results, add_selection_args, load

AVERAGE = "average"  # the column of per-seed means over suites
CONFIDENCE = 0.95
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
            delta, n_matched, p = math.nan, 0, math.nan
            if has_base and run != baseline:
                delta, n_matched, p = paired_test(r.set_index("seed").accuracy, base)
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
                    row.append(Cell("n/a"))
                    continue
                r = sub.loc[col]
                row.append(Cell(fmt_delta(r.delta, r.n_matched, r.p_value)))
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
                header=["run", "method", "seeds", *columns],
                rows=delta_rows,
                notes=[
                    f"Mean over matched seeds of (run − {baseline}) in percentage points; "
                    "p: paired t-test over matched seeds (scipy.stats.ttest_rel), "
                    "n/a with fewer than two matched seeds. seeds: matched seeds."
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


# -------------------------------------------------------------------------------- write


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_tables(
    res: Results, suites: Sequence[str], out_dir: str | Path, baseline: str | None, source: str
) -> dict[str, pd.DataFrame]:
    """Write ``main``, ``efficiency`` (md, tex, html, csv) and ``seeds.csv`` into ``out_dir``."""
    out = Path(out_dir)
    acc = accuracy_table(res.final, res.runs, suites, baseline)
    eff = efficiency_table(res, baseline)
    main_tables = accuracy_display(acc, res.runs, suites, baseline, res.base)
    main_tables[0].notes += _steps_note(res)
    eff_tables = efficiency_display(eff, res, baseline)
    for name, heading, tables, frame in (
        ("main", f"Held-out accuracy: {source}", main_tables, acc),
        ("efficiency", f"Compute efficiency: {source}", eff_tables, eff),
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
    return {"main": acc, "efficiency": eff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.tables",
        description="Accuracy and efficiency tables (md, tex, html, csv) of an experiment.",
    )
    add_selection_args(parser)
    parser.add_argument("--out", required=True, help="output directory (results/<exp>/tables)")
    args = parser.parse_args(argv)
    try:
        res = load(args.experiment, args.runs, args.seeds, args.suites, args.baseline, curves=False)
        suites = args.suites or sorted(res.final.suite.unique())
        if not suites:
            raise AnalysisError(f"{args.experiment}: no evaluation results (eval/<suite>.json)")
        baseline = args.baseline or None
        if baseline and baseline not in res.runs:
            print(f"analysis: baseline run {baseline!r} absent; no differences", file=sys.stderr)
        source = re.sub(r"/+$", "", str(args.experiment))
        write_tables(res, suites, args.out, baseline, source)
    except AnalysisError as e:
        print(f"analysis: error: {e}", file=sys.stderr)
        return 2
    for name in ("main", "efficiency"):
        print(Path(args.out, f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
