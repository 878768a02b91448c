"""Credit-assignment diagnostics of an experiment: compute (``truth``, ``run``) and report.

The computations are ``creditbench.diagnostics`` (they need the base model); this module is
their command line and turns their JSON into tables and figures::

    python -m analysis.diagnostics truth  -c CONFIG --base DIR --data DIR --out truth.json
    python -m analysis.diagnostics run    -c CONFIG --run R --base DIR --data DIR \\
                                          --truth truth.json --out runs/R.json
    python -m analysis.diagnostics report EXPERIMENT_DIR --runs ... --seeds ... \\
                                          --tables DIR --figures DIR

Outputs (``results/<exp>/``): ``diagnostics/truth.json`` (probe set, V(s_k) with standard
errors, A*_k, VinePPO's ranking test), ``diagnostics/runs/<run>.json`` (per-token
advantages on the probes, their correlations with A*, gradient variance, SRPO's step
metrics at the base), ``tables/diagnostics.{md,tex,html,csv}`` (+ ``diagnostics_srpo.csv``,
``diagnostics_vineppo.csv``) and ``figures/diagnostics_{correlation,vine_ranking,
srpo_localisation}.{png,pdf}``.

SRPO's localisation accuracy and correction rates over training come from the runs'
``metrics.jsonl`` (``srpo/...`` keys, logged per step where the task has a step oracle); a
run whose metrics lack them is reported at the base only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.collect import (  # noqa: E402
    AnalysisError,
    csv_list,
    read_json,
    read_jsonl,
    run_seeds,
)
from analysis.figures import FIGSIZE, STYLE, _save, run_colours  # noqa: E402
from analysis.tables import (  # noqa: E402
    Cell,
    Table,
    _write,
    fmt_num,
    to_html,
    to_latex,
    to_markdown,
)

TABLE_COLUMNS = [
    "run",
    "method",
    "coverage",
    "pearson",
    "spearman",
    "pearson_all",
    "spearman_all",
    "pearson_within",
    "sign_agreement",
    "trained_tokens",
    "tokens",
    "probes",
    "probes_trained",
    "rel_variance",
    "cosine_mean",
    "cosine_min",
    "grad_norm_mean",
    "zero_batches",
    "batches",
    "source",
]
SRPO_COLUMNS = [
    "run",
    "reset",
    "split",
    "stage",
    "localisation_accuracy",
    "resets_with_oracle",
    "correction_clean",
    "suffixes_clean",
    "correction_erroneous",
    "suffixes_erroneous",
    "reset_offset",
    "steps",
    "source",
]
VINE_COLUMNS = ["k", "accuracy", "se", "pairs", "source"]
FIGURES = ("diagnostics_correlation", "diagnostics_vine_ranking", "diagnostics_srpo_localisation")


# ----------------------------------------------------------------------------- compute
def _settings(args) -> object:
    from creditbench.diagnostics import DiagnosticsSettings

    s = DiagnosticsSettings()
    for key in vars(s):
        value = getattr(args, key, None)
        if value is not None:
            setattr(s, key, tuple(value) if key == "ranking_ks" else value)
    return s.check()


def _load(args, trainable: bool):
    import torch

    from creditbench.config import load_experiment
    from creditbench.diagnostics import load_base

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_experiment(args.config)
    return cfg, load_base(cfg, args.base, args.data, trainable=trainable)


def finite(obj):
    """``obj`` with every NaN or infinity as None (``null``: strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def cmd_truth(args) -> int:
    from creditbench.diagnostics import ground_truth
    from creditbench.utils import atomic_write_json

    settings = _settings(args)
    cfg, base = _load(args, trainable=False)
    truth = ground_truth(cfg, base, settings, split=args.split)
    truth = finite(truth)
    atomic_write_json(args.out, truth)
    summary = {**truth["summary"], "seconds": round(truth["seconds"], 1)}
    if "ranking" in truth:
        summary["ranking"] = {k: v["accuracy"] for k, v in truth["ranking"]["accuracy"].items()}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_run(args) -> int:
    from creditbench.diagnostics import diagnose_run
    from creditbench.utils import atomic_write_json

    truth = read_json(args.truth)
    settings = _settings(args)
    cfg, base = _load(args, trainable=True)
    out = diagnose_run(cfg, args.run, base, truth, settings)
    out = finite(out)
    atomic_write_json(args.out, out)
    print(
        json.dumps(
            {
                "run": args.run,
                **{k: out["credit"]["summary"].get(k) for k in ("pearson", "spearman")},
                **{k: out["gradient"]["stats"][k] for k in ("rel_variance", "cosine_mean")},
                "seconds": {k: round(v, 1) for k, v in out["seconds"].items()},
            },
            indent=2,
        )
    )
    return 0


def cmd_critic(args) -> int:
    """A critic-owning run's critic over training (``critic_over_training``): JSON and a
    Markdown table beside it (``<out>`` with ``.md``)."""
    import torch

    from creditbench.config import load_experiment
    from creditbench.diagnostics import critic_over_training, critic_table
    from creditbench.utils import atomic_write_json, atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = _settings(args)
    cfg = load_experiment(args.config)
    rows = critic_over_training(cfg, args.run, args.run_dir, args.base, args.data, settings)
    atomic_write_json(args.out, finite({"run": args.run, "points": rows}))
    table = critic_table(rows)
    atomic_write_text(Path(args.out).with_suffix(".md"), table)
    print(table)
    return 0


# ------------------------------------------------------------------------------ frames
def _nan(x) -> float:
    return math.nan if x is None else float(x)


def method_frame(runs: Sequence[str], run_files: dict[str, Path]) -> pd.DataFrame:
    """One row per run: advantage-truth agreement and gradient spread."""
    rows = []
    for run in runs:
        path = run_files[run]
        data = read_json(path)
        if data.get("run", run) != run:
            raise AnalysisError(f"{path}: holds run {data.get('run')!r}, not {run!r}")
        try:
            c, g = data["credit"]["summary"], data["gradient"]["stats"]
        except KeyError as e:
            raise AnalysisError(f"{path}: missing {e.args[0]!r}") from None
        rows.append(
            {
                "run": run,
                "method": data.get("method", ""),
                **{k: _nan(c.get(k)) for k in TABLE_COLUMNS[2:9]},
                **{k: c.get(k, 0) for k in ("trained_tokens", "tokens", "probes")},
                "probes_trained": c.get("probes_trained", 0),
                **{k: _nan(g.get(k)) for k in ("rel_variance", "cosine_mean", "cosine_min")},
                "grad_norm_mean": _nan(g.get("grad_norm_mean")),
                "zero_batches": g.get("zero_batches", 0),
                "batches": g.get("batches", 0),
                "source": str(path),
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def srpo_training_rows(exp_dir: Path, run: str, seeds: Sequence[int] | None) -> list[dict]:
    """The ``srpo/...`` metrics rows of a run's seeds (none if not logged or not trained)."""
    rows = []
    try:
        items = run_seeds(exp_dir, [run], seeds)
    except AnalysisError:
        return rows
    for rs in items:
        if not rs.metrics.is_file():
            continue
        for rec in read_jsonl(rs.metrics):
            if "srpo/resets" in rec:
                rows.append({**rec, "seed": rs.seed, "source": str(rs.metrics)})
    return rows


def srpo_frame(
    exp_dir: Path, runs: Sequence[str], run_files: dict[str, Path], seeds
) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """Per SRPO-family run: its step metrics at the base (pooled over the diagnostic
    batches) and over training (pooled over steps and seeds, from metrics.jsonl)."""
    from creditbench.diagnostics import pool_srpo_metrics

    rows, curves = [], {}
    for run in runs:
        data = read_json(run_files[run])
        if data.get("method") != "srpo":
            continue
        params = data.get("params", {})
        at_base = data["gradient"].get("step_metrics")
        training = srpo_training_rows(exp_dir, run, seeds)
        curves[run] = training
        for stage, pooled, steps, source in (
            ("base", at_base, 0, str(run_files[run])),
            (
                "training",
                pool_srpo_metrics(training) if training else None,
                len(training),
                ";".join(sorted({r["source"] for r in training})),
            ),
        ):
            if pooled is None:
                continue
            rows.append(
                {
                    "run": run,
                    "reset": params.get("reset", ""),
                    "split": params.get("split", ""),
                    "stage": stage,
                    "localisation_accuracy": _nan(pooled.get("srpo/localisation_accuracy")),
                    "resets_with_oracle": pooled.get("srpo/resets_with_oracle", 0.0),
                    "correction_clean": _nan(pooled.get("srpo/correction_clean")),
                    "suffixes_clean": pooled.get("srpo/suffixes_clean", 0.0),
                    "correction_erroneous": _nan(pooled.get("srpo/correction_erroneous")),
                    "suffixes_erroneous": pooled.get("srpo/suffixes_erroneous", 0.0),
                    "reset_offset": _nan(pooled.get("srpo/reset_offset")),
                    "steps": steps,
                    "source": source,
                }
            )
    return pd.DataFrame(rows, columns=SRPO_COLUMNS), curves


def vine_frame(truth: dict, source: str) -> pd.DataFrame:
    ranking = truth.get("ranking")
    if not ranking:
        return pd.DataFrame(columns=VINE_COLUMNS)
    rows = [
        {
            "k": int(k),
            "accuracy": _nan(v["accuracy"]),
            "se": _nan(v["se"]),
            "pairs": v["pairs"],
            "source": source,
        }
        for k, v in ranking["accuracy"].items()
    ]
    return pd.DataFrame(rows, columns=VINE_COLUMNS).sort_values("k").reset_index(drop=True)


# ------------------------------------------------------------------------------ tables
def _f(x: float, d: int = 2) -> str:
    return fmt_num(x, d)


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _rate(x: float, n: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f} (n={int(n)})"


def display_tables(
    methods: pd.DataFrame,
    srpo: pd.DataFrame,
    vine: pd.DataFrame,
    truth: dict,
    vine_ks: dict[str, int],
) -> list[Table]:
    s = truth["summary"]
    settings = truth.get("settings", {})
    m = settings.get("mc_rollouts", "?")
    tables = []
    best = {
        col: methods[col].max() if methods[col].notna().any() else math.nan
        for col in ("pearson", "spearman", "pearson_all", "spearman_all", "cosine_mean")
    }
    low_var = methods.rel_variance.min() if methods.rel_variance.notna().any() else math.nan
    rows = []
    for r in methods.itertuples():
        row = [Cell(r.run), Cell(r.method), Cell(_pct(r.coverage))]
        for col in ("pearson", "spearman", "pearson_all", "spearman_all"):
            v = getattr(r, col)
            row.append(Cell(_f(v), bool(v == best[col])))
        row += [Cell(_f(r.pearson_within)), Cell(_pct(r.sign_agreement))]
        row.append(Cell(fmt_num(r.rel_variance), bool(r.rel_variance == low_var)))
        row.append(Cell(_f(r.cosine_mean), bool(r.cosine_mean == best["cosine_mean"])))
        rows.append(row)
    batches = sorted(set(methods.batches.astype(int))) if len(methods) else []
    tables.append(
        Table(
            title="Credit assignment at the warm start",
            header=[
                "run",
                "method",
                "trained tok. %",
                "r",
                "ρ",
                "r (all)",
                "ρ (all)",
                "r within",
                "sign agr. %",
                "grad rel. var.",
                "grad cos.",
            ],
            rows=rows,
            notes=[
                f"Probe set: {s['probes']} test completions sampled from the warm start "
                f"({s['failures']} failed, {s['successes']} correct), one method pass each. "
                "r / ρ: Pearson / Spearman correlation between the method's per-token "
                "advantage and the true step advantage A*_k = V(s_k) − V(s_{k−1}) of the "
                "token's thought, over the tokens the method trains on; (all): over every "
                "probe token, an untrained token counting as advantage 0; r within: Pearson "
                "after removing each completion's mean (credit within a completion; – for "
                "a constant advantage along it). trained tok. %: share of probe tokens "
                "trained on. sign agr. %: trained tokens with |A*| ≥ 0.1 whose advantage "
                "has A*'s sign.",
                f"Gradient: {'/'.join(map(str, batches))} independent batches of the first "
                "training step's prompts at the warm start; grad rel. var.: trace of the "
                "covariance of the flattened policy gradient / squared norm of its mean; "
                "grad cos.: mean cosine similarity over pairs of batches. Bold: best (highest "
                "correlation or cosine, lowest variance).",
            ],
        )
    )
    tables.append(
        Table(
            title="Ground truth",
            header=["probes", "failed", "correct", "states", "M", "SE(V) mean", "SE(V) max"]
            + ["SE(A*) mean", "SE(A*) max", "V(s_0) mean"],
            rows=[
                [
                    Cell(str(s["probes"])),
                    Cell(str(s["failures"])),
                    Cell(str(s["successes"])),
                    Cell(str(s["states"])),
                    Cell(str(m)),
                    *(
                        Cell(_f(s[k], 3))
                        for k in (
                            "value_se_mean",
                            "value_se_max",
                            "step_advantage_se_mean",
                            "step_advantage_se_max",
                            "value_s0_mean",
                        )
                    ),
                ]
            ],
            notes=[
                "V(s_k): mean reward of M continuations from the first k thoughts of a probe "
                "(the budget the prefix leaves; cut off scores 0); SE: sqrt(var/M). "
                "A*_k = V(s_k) − V(s_{k−1}), V(s_n) = the probe's reward; "
                "SE(A*) = sqrt(SE_k² + SE_{k−1}²)."
            ],
            align="rrrrrrrrrr",
        )
    )
    if len(srpo):
        rows = [
            [
                Cell(r.run),
                Cell(r.reset),
                Cell(r.split),
                Cell(r.stage + ("" if r.stage == "base" else f" ({int(r.steps)} steps)")),
                Cell(_rate(r.localisation_accuracy, r.resets_with_oracle)),
                Cell(_rate(r.correction_clean, r.suffixes_clean)),
                Cell(_rate(r.correction_erroneous, r.suffixes_erroneous)),
                Cell(_f(r.reset_offset)),
            ]
            for r in srpo.itertuples()
        ]
        tables.append(
            Table(
                title="SRPO: localisation and correction from clean vs erroneous prefixes",
                header=[
                    "run",
                    "reset",
                    "split",
                    "stage",
                    "reset = 1st error %",
                    "clean prefix: success %",
                    "erroneous prefix: success %",
                    "h − e",
                ],
                rows=rows,
                notes=[
                    "reset = 1st error %: resets whose thought h is the oracle's first wrong "
                    "thought e (clamped to the seed's thoughts; self: the policy's own "
                    "localisation, a parse failure counts wrong; random: chance; oracle: 100). "
                    "Success %: suffixes that reach the right answer, from clean prefixes "
                    "(h ≤ e, the reset removed the error) and from prefixes that still contain "
                    "it (h > e); the paper reports 28.7% vs 16.3%. n: resets / suffixes. "
                    "h − e: mean offset of the reset (negative: too early). base: the "
                    "diagnostic batches at the warm start; training: every logged step and "
                    "seed (srpo/... in metrics.jsonl)."
                ],
                align="llllrrrr",
            )
        )
    if len(vine):
        own = ", ".join(f"{run}: K={k}" for run, k in vine_ks.items())
        ranking = truth.get("ranking", {})
        tables.append(
            Table(
                title="VinePPO: ranking next thoughts by K-sample values",
                header=["K", "accuracy %", "± SE", "pairs"],
                rows=[
                    [
                        Cell(str(r.k)),
                        Cell(_pct(r.accuracy)),
                        Cell(_pct(r.se)),
                        Cell(str(int(r.pairs))),
                    ]
                    for r in vine.itertuples()
                ],
                notes=[
                    f"Pairs of distinct next thoughts sampled from the same probe prefix "
                    f"({ranking.get('pairs', 0)} pairs from {ranking.get('prefixes', 0)} "
                    f"prefixes; {ranking.get('clear_pairs', 0)} with a clear ground-truth gap, "
                    f"≥ {settings.get('ranking_min_gap')} and ≥ "
                    f"{settings.get('ranking_min_z')} SE, from "
                    f"{settings.get('ranking_truth_rollouts')} continuations each). Accuracy: "
                    "the higher K-sample value (independent continuations) picks the thought "
                    "with the higher true value; ties count 1/2 (chance: 50%); expected over "
                    "disjoint blocks of K. SE over pairs."
                    + (f" The experiment's VinePPO runs use {own}." if own else "")
                ],
                align="rrrr",
            )
        )
    return tables


# ----------------------------------------------------------------------------- figures
def plot_correlation(methods: pd.DataFrame, out: Path) -> list[Path]:
    measures = [
        ("pearson", "Pearson r (trained tokens)"),
        ("spearman", "Spearman ρ (trained tokens)"),
        ("pearson_all", "Pearson r (all tokens, untrained = 0)"),
    ]
    runs = list(methods.run)
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 0.75 * len(runs) + 2), FIGSIZE[1]))
    xs = np.arange(len(runs))
    width = 0.8 / len(measures)
    cmap = plt.get_cmap("Set2")
    for i, (col, label) in enumerate(measures):
        vals = methods[col].to_numpy(float)
        pos = xs + (i - (len(measures) - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(vals), width, color=cmap(i), label=label, edgecolor="white")
        for x, v in zip(pos, vals, strict=True):
            if math.isnan(v):
                ax.annotate(
                    "n/a",
                    (x, 0),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(
        xs, runs, rotation=30 if len(runs) > 3 else 0, ha="right" if len(runs) > 3 else "center"
    )
    ax.set_ylabel("correlation with the true\nstep advantage A*_k")
    ax.set_ylim(
        min(-0.1, np.nanmin(methods[[c for c, _ in measures]].to_numpy(float), initial=0) - 0.05),
        1.0,
    )
    ax.grid(axis="x", visible=False)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        title="per-token advantages vs A*",
    )
    return _save(fig, out, "diagnostics_correlation")


def plot_vine_ranking(
    vine: pd.DataFrame, vine_ks: dict[str, int], runs: Sequence[str], out: Path
) -> list[Path]:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    if len(vine):
        ok = vine.accuracy.notna()
        ax.errorbar(
            vine.k[ok],
            100 * vine.accuracy[ok],
            yerr=100 * vine.se[ok].fillna(0.0),
            marker="o",
            ms=4,
            capsize=3,
            color="tab:blue",
            label="ranking accuracy ± SE",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(vine.k), [str(k) for k in vine.k])
        ax.minorticks_off()
    else:
        ax.text(0.5, 0.5, "ranking test not run", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(50, color="grey", ls="--", lw=1, label="chance (ties count 1/2)")
    colours = run_colours(list(runs))  # each run's colour in every figure
    for run, k in vine_ks.items():
        ax.axvline(k, color=colours[run], ls=":", lw=1.2, label=f"{run}: K={k}")
    ax.set_xlabel("K (Monte Carlo continuations per value estimate)")
    ax.set_ylabel("pairs ranked as the ground truth (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", frameon=False)
    return _save(fig, out, "diagnostics_vine_ranking")


def _window_rate(rows: list[dict], rate: str, count: str, window: int) -> pd.DataFrame:
    """Per step: the count-weighted rate over the trailing ``window`` steps, all seeds."""
    if not rows:
        return pd.DataFrame(columns=["step", "rate", "n"])
    df = pd.DataFrame(
        {
            "step": [int(r["step"]) for r in rows],
            "num": [
                (_nan(r.get(rate)) if r.get(rate) is not None else 0.0) * float(r.get(count) or 0)
                for r in rows
            ],
            "n": [float(r.get(count) or 0) if r.get(rate) is not None else 0.0 for r in rows],
        }
    )
    per = df.groupby("step").sum().sort_index()
    roll = per.rolling(window, min_periods=1).sum()
    roll = roll[roll.n > 0]
    return pd.DataFrame({"step": roll.index, "rate": roll.num / roll.n, "n": roll.n})


def plot_srpo_localisation(
    srpo: pd.DataFrame, curves: dict[str, list[dict]], runs: Sequence[str], window: int, out: Path
) -> list[Path]:
    colours = run_colours(list(runs))
    fig, ax = plt.subplots(figsize=FIGSIZE)
    shown = 0
    for run in [r for r in runs if r in curves]:
        c = _window_rate(
            curves[run], "srpo/localisation_accuracy", "srpo/resets_with_oracle", window
        )
        base = srpo[(srpo.run == run) & (srpo["stage"] == "base")]
        if len(c):
            ax.plot(c.step, 100 * c.rate, color=colours[run], label=run)
            shown += 1
        if len(base) and not math.isnan(base.localisation_accuracy.iloc[0]):
            ax.plot(
                [0],
                [100 * base.localisation_accuracy.iloc[0]],
                marker="o",
                ms=5,
                color=colours[run],
                ls="none",
                label=None if len(c) else f"{run} (base only)",
            )
            shown += 1
    if not shown:
        ax.text(0.5, 0.5, "no SRPO run", ha="center", va="center", transform=ax.transAxes)
    elif not any(curves.values()):
        ax.text(
            0.02,
            0.02,
            "training metrics not logged (srpo/... in metrics.jsonl): base only",
            transform=ax.transAxes,
            fontsize=7,
            color="grey",
        )
    ax.set_xlabel("training step (step 0, dots: the warm start, diagnostic batches)")
    ax.set_ylabel(
        f"reset at the first wrong thought (%)\ncount-weighted over {window} steps, all seeds"
    )
    ax.set_ylim(0, 100)
    ax.set_xlim(left=-0.5)
    if shown:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, out, "diagnostics_srpo_localisation")


# ------------------------------------------------------------------------------ report
def vine_run_ks(runs: Sequence[str], run_files: dict[str, Path]) -> dict[str, int]:
    out = {}
    for run in runs:
        data = read_json(run_files[run])
        if data.get("method") == "vineppo":
            out[run] = int(data.get("params", {}).get("mc_rollouts", 9))
    return out


def write_report(
    exp_dir: str | Path,
    runs: Sequence[str] | None,
    seeds: Sequence[int] | None,
    tables_dir: str | Path,
    figures_dir: str | Path,
    smooth: int = 5,
) -> dict[str, pd.DataFrame]:
    exp = Path(exp_dir)
    diag = exp / "diagnostics"
    truth_path = diag / "truth.json"
    truth = read_json(truth_path)
    if runs is None:
        runs = sorted(p.stem for p in (diag / "runs").glob("*.json"))
    if not runs:
        raise AnalysisError(f"{diag / 'runs'}: no run diagnostics")
    run_files = {r: diag / "runs" / f"{r}.json" for r in runs}
    methods = method_frame(runs, run_files)
    srpo, curves = srpo_frame(exp, runs, run_files, seeds)
    vine = vine_frame(truth, str(truth_path))
    vine_ks = vine_run_ks(runs, run_files)
    source = re.sub(r"/+$", "", str(exp_dir))
    tables = display_tables(methods, srpo, vine, truth, vine_ks)
    t_out = Path(tables_dir)
    heading = f"Credit-assignment diagnostics: {source}"
    _write(t_out / "diagnostics.md", to_markdown(tables, heading))
    _write(
        t_out / "diagnostics.tex",
        to_latex(tables, f"generated by analysis.diagnostics from {source}"),
    )
    _write(t_out / "diagnostics.html", to_html(tables, heading))
    _write(t_out / "diagnostics.csv", methods.to_csv(index=False, float_format="%.10g"))
    _write(t_out / "diagnostics_srpo.csv", srpo.to_csv(index=False, float_format="%.10g"))
    _write(t_out / "diagnostics_vineppo.csv", vine.to_csv(index=False, float_format="%.10g"))
    f_out = Path(figures_dir)
    with plt.rc_context(STYLE):
        plot_correlation(methods, f_out)
        plot_vine_ranking(vine, vine_ks, runs, f_out)
        plot_srpo_localisation(srpo, curves, runs, smooth, f_out)
    return {"methods": methods, "srpo": srpo, "vineppo": vine}


# -------------------------------------------------------------------------- command line
def _ints(text: str) -> list[int]:
    return [int(x) for x in csv_list(text)]


def _compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", required=True, help="experiment config (results/<exp>/config.json)"
    )
    p.add_argument("--base", required=True, help="the checkpoint under test (results/<exp>/base)")
    p.add_argument("--data", required=True, help="the experiment's data directory")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--seed", type=int, help="seed of every sampling step (default 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.diagnostics",
        description="Credit-assignment diagnostics at the warm start: ground truth, "
        "per-run probes, report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("truth", help="probe set, ground-truth step values, VinePPO ranking test")
    _compute_args(t)
    t.add_argument("--split", default="test", help="problems the probes come from (default test)")
    t.add_argument("--probes", type=int, help="probe completions (default 16)")
    t.add_argument("--pool", type=int, help="problems sampled to choose them from (default 64)")
    t.add_argument(
        "--failure-fraction",
        dest="failure_fraction",
        type=float,
        help="share of failed probes (default 0.5)",
    )
    t.add_argument(
        "--mc-rollouts",
        dest="mc_rollouts",
        type=int,
        help="continuations per prefix, M (default 64)",
    )
    t.add_argument(
        "--ranking-ks",
        dest="ranking_ks",
        type=_ints,
        help="VinePPO K values, comma-separated (default 1,2,4,8,16; empty: skip)",
    )
    t.add_argument(
        "--ranking-candidates",
        dest="ranking_candidates",
        type=int,
        help="next thoughts sampled per prefix (default 4)",
    )
    t.add_argument(
        "--ranking-truth-rollouts",
        dest="ranking_truth_rollouts",
        type=int,
        help="continuations per side for the pair's truth (default 64)",
    )
    t.add_argument(
        "--ranking-min-gap",
        dest="ranking_min_gap",
        type=float,
        help="least true value gap of a counted pair (default 0.2)",
    )
    t.add_argument(
        "--ranking-min-z",
        dest="ranking_min_z",
        type=float,
        help="... in standard errors of the gap (default 2)",
    )
    t.set_defaults(func=cmd_truth)
    r = sub.add_parser("run", help="one run's advantages on the probes and gradient variance")
    _compute_args(r)
    r.add_argument("--run", required=True, help="run name (the config's runs table)")
    r.add_argument("--truth", required=True, help="truth.json of the same base")
    r.add_argument("--batches", type=int, help="independent batches for the gradient (default 6)")
    r.add_argument("--repeats", type=int, help="method passes over the probe set (default 1)")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser(
        "critic",
        help="a run's critic (PPO) over training: value error and next-thought ranking "
        "against the MC truth, beside VinePPO's K-sample ranking",
    )
    _compute_args(c)  # --base: the warm start the run trained from
    c.add_argument("--run", required=True, help="run name (a method that owns a critic)")
    c.add_argument("--run-dir", dest="run_dir", required=True, help="results/<exp>/runs/R/seedK")
    for flag, key, kind in (
        ("--probes", "probes", int),
        ("--pool", "pool", int),
        ("--failure-fraction", "failure_fraction", float),
        ("--mc-rollouts", "mc_rollouts", int),
        ("--ranking-ks", "ranking_ks", _ints),
        ("--ranking-candidates", "ranking_candidates", int),
        ("--ranking-truth-rollouts", "ranking_truth_rollouts", int),
        ("--ranking-min-gap", "ranking_min_gap", float),
        ("--ranking-min-z", "ranking_min_z", float),
    ):
        c.add_argument(flag, dest=key, type=kind, help="as for truth")
    c.set_defaults(func=cmd_critic)
    rep = sub.add_parser("report", help="tables and figures from the diagnostics JSON")
    rep.add_argument("experiment", help="experiment directory, e.g. results/default")
    rep.add_argument("--runs", type=csv_list, help="runs in table order (default: all found)")
    rep.add_argument("--seeds", type=_ints, help="seeds whose metrics.jsonl to read (default all)")
    rep.add_argument("--tables", required=True, help="output directory for the tables")
    rep.add_argument("--figures", required=True, help="output directory for the figures")
    rep.add_argument(
        "--smooth",
        type=int,
        default=5,
        help="steps pooled per point of the SRPO training curve (default 5)",
    )
    rep.set_defaults(func=cmd_report)
    return parser


def cmd_report(args) -> int:
    if args.smooth < 1:
        raise AnalysisError(f"--smooth must be >= 1, got {args.smooth}")
    write_report(args.experiment, args.runs, args.seeds, args.tables, args.figures, args.smooth)
    print(Path(args.tables, "diagnostics.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AnalysisError as e:
        print(f"analysis: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
