"""Figures of an experiment: learning curves at equal steps, tokens and seconds, training
reward, compute by purpose, generation speed. Each is written as PNG (200 dpi) and PDF.

Conventions, shared by every figure (and stated in its legend or axis labels):

- One colour (and marker) per run, in run order (the config's), the same in every figure.
- Curves are the mean over seeds; the shaded band is the min–max over seeds by default
  (``--band minmax``: every seed lies inside it), ±1 standard error of the mean
  (``--band se``) or the 95% confidence interval of the mean (``--band ci95``: Student t
  with n−1 degrees of freedom, as in the tables; the experiment's rules use it). Accuracy
  bands are clipped to [0, 100]%.
- Held-out accuracy curves carry dotted lines at the sample-efficiency thresholds (the
  baseline's warm start + a fraction of its final gain) when the baseline is present.
- Sample efficiency (``sample_efficiency``): per run, the area under the accuracy curve
  over steps, generated tokens and seconds up to the common budget (mean ± 95% CI over
  seeds), and per fraction the speed-up against the baseline on a log axis (geometric
  mean over matched seeds ± the t interval of the mean log ratio; a line at 1×; open
  triangles for bounds when seeds did not reach the threshold). The statistics are
  those of ``analysis.tables`` (``tables/sample_efficiency.*``).
- Held-out accuracy is the in-training evaluation logged in ``metrics.jsonl``
  (``eval/test/accuracy``; step 0 is the warm start). Against tokens or seconds, each
  evaluation step is placed at the mean over seeds of the cumulative generated tokens
  (or training wall-clock seconds) at that step.
- Training reward is smoothed per seed with a trailing moving average over ``--smooth``
  steps (default 5; 1 = raw) before averaging over seeds.
- Compute by purpose: tokens per optimiser step charged to each purpose (ledger totals /
  steps, mean over seeds), stacked per run; generated and forwarded side by side.
- Generation speed: generated tokens per second of the ledger's ``generate`` phase; bars
  are the mean over seeds, dots the seeds, whiskers their min–max.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    EngFormatter,
    FixedLocator,
    FuncFormatter,
    NullLocator,
)
from scipy import stats  # noqa: E402

from analysis.collect import AnalysisError, Results, add_selection_args, load  # noqa: E402
from analysis.tables import (  # noqa: E402
    CONFIDENCE,
    CURVE_AXES,
    FRACTIONS,
    THRESHOLD_AXES,
    fractions_list,
    sample_efficiency_per_seed,
    sample_efficiency_table,
)

DPI = 200
FIGSIZE = (5.5, 3.6)  # inches: a paper's column-and-a-half, readable at 100%
BANDS = ("minmax", "se", "ci95")
BAND_LABEL = {
    "minmax": "band: min–max over seeds",
    "se": "band: ±1 s.e. over seeds",
    "ci95": "band: 95% CI of the mean",
}
FIGURES = (
    "accuracy_vs_step",
    "accuracy_vs_tokens",
    "accuracy_vs_seconds",
    "reward",
    "compute_by_purpose",
    "generation_speed",
    "sample_efficiency",
)
STYLE = {
    "font.size": 9,
    "axes.labelsize": 9,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by publishers
    "ps.fonttype": 42,
}


def run_colours(runs: Sequence[str]) -> dict[str, tuple]:
    """One colour per run, by its position in the run order (tab10, then tab20)."""
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    return {run: cmap(i % cmap.N) for i, run in enumerate(runs)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def run_markers(runs: Sequence[str]) -> dict[str, str]:
    """One marker per run (curves stay apart in greyscale and where they overlap)."""
    return {run: MARKERS[i % len(MARKERS)] for i, run in enumerate(runs)}


def purpose_colours(purposes: Sequence[str]) -> dict[str, tuple]:
    """One colour per purpose (sorted by name), from a palette distinct from the runs'."""
    cmap = plt.get_cmap("Set2" if len(purposes) <= 8 else "tab20b")
    return {p: cmap(i % cmap.N) for i, p in enumerate(sorted(purposes))}


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=DPI, bbox_inches="tight")
    # no creation date: the same results give the same PDF bytes
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)
    return paths


def band_stats(values: pd.Series, band: str) -> tuple[float, float, float]:
    """Mean and the band's low/high edges over seeds."""
    x = values.dropna().to_numpy(float)
    mean = float(x.mean())
    if band == "minmax":
        return mean, float(x.min()), float(x.max())
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    if band == "ci95" and len(x) > 1:
        se *= float(stats.t.ppf((1 + CONFIDENCE) / 2, len(x) - 1))
    return mean, mean - se, mean + se


def curve_over_seeds(df: pd.DataFrame, y: str, x: str, band: str) -> pd.DataFrame:
    """Per step: mean x over seeds, mean y and the band of y over seeds."""
    rows = []
    for step, g in df.groupby("step", sort=True):
        if g[y].notna().sum() == 0:
            continue
        mean, lo, hi = band_stats(g[y], band)
        rows.append(
            {
                "step": step,
                "x": float(g[x].mean()),
                "y": mean,
                "lo": lo,
                "hi": hi,
                "n": int(g[y].notna().sum()),
            }
        )
    return pd.DataFrame(rows, columns=["step", "x", "y", "lo", "hi", "n"])


def _legend(ax, title: str, n_items: int) -> None:
    kw = {"title": title, "frameon": False, "alignment": "left", "title_fontsize": 8}
    if n_items > 5:  # many runs: outside, to the right, so no curve is hidden
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), **kw)
    else:
        ax.legend(loc="best", **kw)


def _legend_title(df: pd.DataFrame, runs: Sequence[str], band: str) -> str:
    """``mean of 3 seeds; band: ...`` (``1 seed, no band`` when every run has one seed)."""
    counts = sorted({df[df.run == r].seed.nunique() for r in runs if (df.run == r).any()})
    if counts == [1]:
        return "1 seed per run (no band)"
    n = "/".join(map(str, counts))
    return f"mean of {n} seeds; {BAND_LABEL[band]}"


def _percent_axis(ax, min_span: float = 2.0) -> None:
    """Percent ticks; a flat curve gets a span of ``min_span`` points, never far below 0%."""
    lo, hi = ax.get_ylim()
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if lo < 0:
        lo, hi = -0.03 * (hi - lo), hi - lo
    ax.set_ylim(lo, hi)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))  # 50%, 37.5%, 0.25%


def plot_accuracy(
    curves: pd.DataFrame,
    runs: Sequence[str],
    x: str,
    band: str,
    out_dir: Path,
    name: str,
    thresholds: dict[float, float] | None = None,
    baseline: str | None = None,
) -> list[Path]:
    """Held-out accuracy (in-training eval) against step, generated tokens or seconds;
    ``thresholds`` (fraction: accuracy) are drawn as dotted lines."""
    colours, markers = run_colours(runs), run_markers(runs)
    evals = curves[curves.accuracy.notna()]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for run in runs:
        c = curve_over_seeds(evals[evals.run == run], "accuracy", x, band)
        if c.empty:
            continue
        ax.plot(c.x, c.y * 100, marker=markers[run], ms=3.5, color=colours[run], label=run)
        lo, hi = np.clip(c.lo * 100, 0, 100), np.clip(c.hi * 100, 0, 100)
        ax.fill_between(c.x, lo, hi, color=colours[run], alpha=0.18, lw=0)
    for f, level in (thresholds or {}).items():
        if math.isnan(level):
            continue
        ax.axhline(level * 100, color="0.45", lw=0.8, ls=":", zorder=0)
        ax.annotate(
            f"{f:.0%} of {baseline}'s gain",
            (1.0, level * 100),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=6.5,
            color="0.35",
        )
    xlabel = {
        "step": "training step (optimiser updates)",
        "generated_tokens": "generated tokens, cumulative (all purposes)",
        "seconds": "training wall-clock, cumulative (s)",
    }[x]
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy (%)\nin-training eval, test split")
    _percent_axis(ax)
    if x == "generated_tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlim(left=0)
    _legend(ax, _legend_title(evals, runs, band), len(runs))
    return _save(fig, out_dir, name)


def smooth_reward(curves: pd.DataFrame, window: int) -> pd.DataFrame:
    """Per run x seed, the trailing moving average of the reward over ``window`` steps."""
    df = curves[(curves.step > 0) & curves.reward.notna()].sort_values(["run", "seed", "step"])
    df = df.assign(
        smoothed=df.groupby(["run", "seed"], sort=False).reward.transform(
            lambda s: s.rolling(window, min_periods=1).mean()
        )
    )
    return df


def plot_reward(
    curves: pd.DataFrame, runs: Sequence[str], band: str, window: int, out_dir: Path
) -> list[Path]:
    colours = run_colours(runs)
    df = smooth_reward(curves, window)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for run in runs:
        c = curve_over_seeds(df[df.run == run], "smoothed", "step", band)
        if c.empty:
            continue
        ax.plot(c.x, c.y, color=colours[run], label=run)
        ax.fill_between(c.x, c.lo, c.hi, color=colours[run], alpha=0.18, lw=0)
    ax.set_xlabel("training step (optimiser updates)")
    smoothing = "raw" if window <= 1 else f"moving average over {window} steps"
    ax.set_ylabel(f"training reward (mean over rollouts)\n{smoothing}")
    ax.set_xlim(left=0)
    _legend(ax, _legend_title(df, runs, band), len(runs))
    return _save(fig, out_dir, "reward")


def plot_compute_by_purpose(tokens: pd.DataFrame, runs: Sequence[str], out_dir: Path):
    """Stacked bars per run: tokens per step by purpose, generated (left), forwarded (right)."""
    per_step = tokens.assign(
        generated=tokens.generated / tokens.steps, forwarded=tokens.forwarded / tokens.steps
    )
    present = [r for r in runs if (per_step.run == r).any()]
    # a purpose a run never charged counts 0 for each of its seeds
    means = (
        per_step.pivot_table(
            index=["run", "seed"], columns="purpose", values=["generated", "forwarded"]
        )
        .fillna(0.0)
        .groupby(level="run")
        .mean()
    )
    purposes = sorted(tokens.purpose.unique())
    colours = purpose_colours(purposes)
    width = max(FIGSIZE[0] * 1.5, 1.2 * len(present) + 3)
    fig, axes = plt.subplots(1, 2, figsize=(width, FIGSIZE[1]), sharey=False)
    xs = np.arange(len(present))
    for ax, kind in zip(axes, ("generated", "forwarded"), strict=True):
        bottom = np.zeros(len(present))
        for p in purposes:
            if (kind, p) not in means.columns:
                continue
            vals = means[(kind, p)].reindex(present).fillna(0.0).to_numpy()
            if not vals.any():
                continue
            ax.bar(xs, vals, 0.65, bottom=bottom, color=colours[p], label=p, edgecolor="white")
            bottom += vals
        for x, total in zip(xs, bottom, strict=True):  # the total on top of each bar
            ax.annotate(
                EngFormatter(sep="", places=1)(total) if total >= 1000 else f"{total:.0f}",
                (x, total),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_ylim(0, max(bottom.max(), 1.0) * 1.12)  # room for the totals
        ax.set_xticks(xs, present, rotation=30 if len(present) > 3 else 0, ha="right")
        if len(present) <= 3:
            for lab in ax.get_xticklabels():
                lab.set_ha("center")
        ax.set_ylabel(f"{kind} tokens per step")
        ax.set_title(f"{kind.capitalize()} tokens", loc="left")
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(axis="x", visible=False)
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    order = sorted(handles)
    fig.legend(
        [handles[k] for k in order],
        order,
        title="purpose (mean over seeds)",
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        frameon=False,
    )
    fig.tight_layout()
    return _save(fig, out_dir, "compute_by_purpose")


def generation_speed(tokens: pd.DataFrame, seconds: pd.DataFrame) -> pd.DataFrame:
    """Per run x seed: generated tokens per second of the ``generate`` phase."""
    gen = tokens.groupby(["run", "seed"]).generated.sum()
    phase = seconds[seconds.phase == "generate"].set_index(["run", "seed"]).seconds
    speed = (gen / phase.where(phase > 0)).dropna()
    return speed.rename("tokens_per_second").reset_index()


def plot_generation_speed(
    tokens: pd.DataFrame, seconds: pd.DataFrame, runs: Sequence[str], out_dir: Path
) -> list[Path]:
    colours = run_colours(runs)
    speed = generation_speed(tokens, seconds)
    present = [r for r in runs if (speed.run == r).any()]
    fig, ax = plt.subplots(figsize=(max(3.5, 0.9 * len(present) + 2), FIGSIZE[1]))
    for i, run in enumerate(present):
        v = speed[speed.run == run].tokens_per_second.to_numpy()
        mean = v.mean()
        ax.bar(i, mean, 0.6, color=colours[run], alpha=0.85)
        ax.errorbar(
            i, mean, yerr=[[mean - v.min()], [v.max() - mean]], color="black", capsize=4, lw=1
        )
        jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
        ax.plot(i + jitter, v, "o", color="black", markersize=3, zorder=3)
    ax.set_xticks(range(len(present)), present, rotation=30 if len(present) > 3 else 0)
    if len(present) > 3:
        for lab in ax.get_xticklabels():
            lab.set_ha("right")
    ax.set_ylabel("generation speed\n(generated tokens / s of generate phase)")
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(axis="x", visible=False)
    ax.set_title("bars: mean over seeds; dots: seeds; whiskers: min–max", loc="left", fontsize=8)
    return _save(fig, out_dir, "generation_speed")


AXIS_MARKERS = {"step": "o", "generated_tokens": "s", "seconds": "^"}
AXIS_NAMES = {axis: label for axis, label, _ in CURVE_AXES}
AXIS_SHORT = {"step": "steps", "generated_tokens": "tokens", "seconds": "seconds"}


def _forest_rows(ax, runs: Sequence[str]) -> None:
    """Runs top to bottom on the y axis, as in the tables."""
    ax.set_yticks(range(len(runs)), runs)
    ax.set_ylim(len(runs) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


def plot_sample_efficiency(
    table: pd.DataFrame,
    runs: Sequence[str],
    baseline: str | None,
    warm: float,
    out_dir: Path,
) -> list[Path]:
    """AUC per run and counter (mean ± CI) and, per fraction, the speed-up against the
    baseline on a log axis (geometric mean ± CI of matched seeds; bounds as open carets)."""
    colours = run_colours(runs)
    present = [r for r in runs if (table.run == r).any()]
    if not present:  # no in-training evaluation: say so rather than draw empty axes
        fig, ax = plt.subplots(figsize=FIGSIZE)
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            "no in-training evaluation in metrics.jsonl\n(train.eval_every: 0)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        return _save(fig, out_dir, "sample_efficiency")
    speed = table[(table.quantity == "speedup") & table.threshold.notna()]
    fractions = sorted(speed.fraction.dropna().unique())  # no threshold: no speed-up panel
    n_panels = 1 + len(fractions)
    height = max(2.4, 0.42 * len(present) + 1.5)
    fig, axes = plt.subplots(
        1, n_panels, figsize=(3.3 * n_panels + 1.0, height), sharey=True, squeeze=False
    )
    axes = axes[0]
    offsets = dict(zip(AXIS_MARKERS, (-0.22, 0.0, 0.22), strict=True))
    ax = axes[0]
    auc = table[table.quantity == "auc"]
    for i, run in enumerate(present):
        for axis, marker in AXIS_MARKERS.items():
            r = auc[(auc.run == run) & (auc.axis == axis)]
            if r.empty or math.isnan(r["mean"].iloc[0]):
                continue
            r = r.iloc[0]
            err = None
            if not math.isnan(r.ci_low):  # clipped to the possible 0-100%
                low, high = max(r.ci_low, 0.0), min(r.ci_high, 1.0)
                err = [[100 * (r["mean"] - low)], [100 * (high - r["mean"])]]
            ax.errorbar(
                100 * r["mean"],
                i + offsets[axis],
                xerr=err,
                fmt=marker,
                ms=4.5,
                color=colours[run],
                ecolor=colours[run],
                elinewidth=1.1,
                capsize=2,
            )
    if not math.isnan(warm):
        ax.axvline(100 * warm, color="0.45", lw=0.8, ls="--", zorder=0)
        ax.annotate(
            "warm start",
            (100 * warm, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2),
            textcoords="offset points",
            fontsize=6.5,
            color="0.35",
            va="top",
        )
    lo, hi = ax.get_xlim()
    if hi - lo < 5:  # flat results: a readable span of 5 points
        lo, hi = (lo + hi) / 2 - 2.5, (lo + hi) / 2 + 2.5
    lo, hi = max(lo, -0.04 * hi), min(hi, 100 + 0.04 * (100 - lo))  # accuracy is in 0-100%
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("mean held-out accuracy over the\ncommon budget (normalised AUC)")
    if baseline and not fractions and (table.quantity == "to_threshold").any():
        ax.set_title(
            f"Area under the accuracy curve (no speed-up: {baseline} did not\n"
            "improve on the warm start, so there is no threshold)",
            loc="left",
        )
    else:
        ax.set_title("Area under the accuracy curve", loc="left")
    _forest_rows(ax, present)
    spd_offsets = dict(zip(THRESHOLD_AXES, (-0.15, 0.15), strict=True))
    for ax, f in zip(axes[1:], fractions, strict=True):
        ax.set_xscale("log")
        ax.axvline(1.0, color="0.3", lw=0.9, zorder=0)
        lows, highs = [1.0], [1.0]
        for i, run in enumerate(present):
            if run == baseline:
                ax.annotate(
                    "reference (1×)",
                    (1.0, i),
                    xytext=(4, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                    color="0.35",
                )
                continue
            for axis in THRESHOLD_AXES:
                r = speed[(speed.run == run) & (speed.axis == axis) & np.isclose(speed.fraction, f)]
                if r.empty:
                    continue
                r = r.iloc[0]
                y = i + spd_offsets[axis]
                if math.isnan(r["mean"]):
                    ax.annotate(
                        "n/a: neither reached" if r.bound == "unknown" else "n/a",
                        (1.0, y),
                        xytext=(4, 0),
                        textcoords="offset points",
                        va="center",
                        fontsize=6.5,
                        color="0.35",
                    )
                    continue
                if r.bound in ("upper", "lower"):  # a bound: an open caret pointing its way
                    caret = "<" if r.bound == "upper" else ">"
                    ax.plot(r["mean"], y, caret, ms=6, mfc="white", color=colours[run], mew=1.2)
                    who = "" if r.bound == "upper" else f"{baseline} "
                    ax.annotate(  # on the side the caret does not point to
                        f"{AXIS_SHORT[axis]}: {who}not reached",
                        (r["mean"], y),
                        xytext=(6, 0) if r.bound == "upper" else (-6, 0),
                        textcoords="offset points",
                        ha="left" if r.bound == "upper" else "right",
                        va="center",
                        fontsize=6.5,
                        color=colours[run],
                    )
                    lows.append(r["mean"])
                    highs.append(r["mean"])
                    continue
                err = None
                if not math.isnan(r.ci_low):
                    err = [[r["mean"] - r.ci_low], [r.ci_high - r["mean"]]]
                    lows.append(r.ci_low)
                    highs.append(r.ci_high)
                ax.errorbar(
                    r["mean"],
                    y,
                    xerr=err,
                    fmt=AXIS_MARKERS[axis],
                    ms=4.5,
                    color=colours[run],
                    elinewidth=1.1,
                    capsize=2,
                )
                lows.append(r["mean"])
                highs.append(r["mean"])
        lo, hi = min(lows), max(highs)
        span = max(hi / lo, 4.0)  # at least 0.5x to 2x around the data
        mid = math.sqrt(lo * hi)
        left, right = mid / math.sqrt(span) / 1.15, mid * math.sqrt(span) * 1.15
        ax.set_xlim(left, right)
        decades = range(math.floor(math.log10(left)), math.ceil(math.log10(right)) + 1)
        ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if left <= m * 10.0**e <= right]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        level = speed[np.isclose(speed.fraction, f)].threshold.iloc[0]
        ax.set_title(f"Speed-up to {f:.0%} of {baseline}'s gain", loc="left")
        ax.set_xlabel(
            f"{baseline}'s steps (tokens) / the run's to reach\n"
            f"{100 * level:.1f}% held-out accuracy (log scale; > 1: faster)"
        )
        _forest_rows(ax, present)
    handles = [
        plt.Line2D([], [], ls="", marker=m, color="0.25", ms=4.5, label=AXIS_NAMES[a])
        for a, m in AXIS_MARKERS.items()
    ]
    handles += [
        plt.Line2D(
            [],
            [],
            ls="",
            marker="<",
            mfc="white",
            color="0.25",
            ms=6,
            label="bound (seeds did not reach)",
        )
    ]
    fig.legend(
        handles=handles,
        title="over / at equal   (mean over seeds, whiskers: 95% CI)",
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(handles),
        frameon=False,
        title_fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
    return _save(fig, out_dir, "sample_efficiency")


def write_figures(
    res: Results,
    out_dir: str | Path,
    band: str = "minmax",
    smooth: int = 5,
    baseline: str | None = "grpo",
    fractions: Sequence[float] = FRACTIONS,
) -> list[Path]:
    """Every figure of ``FIGURES`` as PNG and PDF in ``out_dir``."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if smooth < 1:
        raise ValueError(f"smooth (window in steps) must be >= 1, got {smooth}")
    out = Path(out_dir)
    baseline = baseline if baseline in res.runs else None
    per_seed, thresholds, _ = sample_efficiency_per_seed(res.curves, baseline, fractions)
    table = sample_efficiency_table(per_seed, res.runs, baseline, fractions)
    evals = res.curves[res.curves.accuracy.notna()]
    warm = float(evals[evals.step == 0].accuracy.mean()) if len(evals) else math.nan
    paths = []
    with plt.rc_context(STYLE):
        for x, name in (
            ("step", "accuracy_vs_step"),
            ("generated_tokens", "accuracy_vs_tokens"),
            ("seconds", "accuracy_vs_seconds"),
        ):
            paths += plot_accuracy(
                res.curves, res.runs, x, band, out, name, thresholds.levels, baseline
            )
        paths += plot_reward(res.curves, res.runs, band, smooth, out)
        paths += plot_compute_by_purpose(res.tokens, res.runs, out)
        paths += plot_generation_speed(res.tokens, res.seconds, res.runs, out)
        paths += plot_sample_efficiency(table, res.runs, baseline, warm, out)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.figures",
        description="Learning-curve and compute figures (PNG and PDF) of an experiment.",
    )
    add_selection_args(parser)
    parser.add_argument("--out", required=True, help="output directory (results/<exp>/figures)")
    parser.add_argument(
        "--band", choices=BANDS, default="minmax", help="band over seeds (default: minmax)"
    )
    parser.add_argument(
        "--smooth", type=int, default=5, help="reward moving-average window in steps (default 5)"
    )
    parser.add_argument(
        "--fractions",
        type=fractions_list,
        default=list(FRACTIONS),
        help="fractions of the baseline's gain for the speed-up panels "
        f"(default: {','.join(map(str, FRACTIONS))})",
    )
    args = parser.parse_args(argv)
    try:
        res = load(args.experiment, args.runs, args.seeds, [], args.baseline, final=False)
        paths = write_figures(
            res, args.out, args.band, args.smooth, args.baseline or None, args.fractions
        )
        for path in paths:
            print(path)
    except AnalysisError as e:
        print(f"analysis: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
