"""Figures of an experiment: learning curves at equal steps, tokens and seconds, training
reward, compute by purpose, generation speed. Each is written as PNG (200 dpi) and PDF.

Conventions, shared by every figure (and stated in its legend or axis labels):

- One colour (and marker) per run, in run order (the config's), the same in every figure.
- Curves are the mean over seeds; the shaded band is the min–max over seeds by default
  (``--band minmax``: every seed lies inside it) or ±1 standard error of the mean
  (``--band se``).
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
from matplotlib.ticker import EngFormatter, FuncFormatter  # noqa: E402

from analysis.collect import AnalysisError, Results, add_selection_args, load  # noqa: E402

DPI = 200
FIGSIZE = (5.5, 3.6)  # inches: a paper's column-and-a-half, readable at 100%
BANDS = ("minmax", "se")
BAND_LABEL = {"minmax": "band: min–max over seeds", "se": "band: ±1 s.e. over seeds"}
FIGURES = (
    "accuracy_vs_step",
    "accuracy_vs_tokens",
    "accuracy_vs_seconds",
    "reward",
    "compute_by_purpose",
    "generation_speed",
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
    curves: pd.DataFrame, runs: Sequence[str], x: str, band: str, out_dir: Path, name: str
) -> list[Path]:
    """Held-out accuracy (in-training eval) against step, generated tokens or seconds."""
    colours, markers = run_colours(runs), run_markers(runs)
    evals = curves[curves.accuracy.notna()]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for run in runs:
        c = curve_over_seeds(evals[evals.run == run], "accuracy", x, band)
        if c.empty:
            continue
        ax.plot(c.x, c.y * 100, marker=markers[run], ms=3.5, color=colours[run], label=run)
        ax.fill_between(c.x, c.lo * 100, c.hi * 100, color=colours[run], alpha=0.18, lw=0)
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


def write_figures(
    res: Results, out_dir: str | Path, band: str = "minmax", smooth: int = 5
) -> list[Path]:
    """Every figure of ``FIGURES`` as PNG and PDF in ``out_dir``."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if smooth < 1:
        raise ValueError(f"smooth (window in steps) must be >= 1, got {smooth}")
    out = Path(out_dir)
    paths = []
    with plt.rc_context(STYLE):
        for x, name in (
            ("step", "accuracy_vs_step"),
            ("generated_tokens", "accuracy_vs_tokens"),
            ("seconds", "accuracy_vs_seconds"),
        ):
            paths += plot_accuracy(res.curves, res.runs, x, band, out, name)
        paths += plot_reward(res.curves, res.runs, band, smooth, out)
        paths += plot_compute_by_purpose(res.tokens, res.runs, out)
        paths += plot_generation_speed(res.tokens, res.seconds, res.runs, out)
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
    args = parser.parse_args(argv)
    try:
        res = load(args.experiment, args.runs, args.seeds, [], args.baseline, final=False)
        for path in write_figures(res, args.out, args.band, args.smooth):
            print(path)
    except AnalysisError as e:
        print(f"analysis: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
