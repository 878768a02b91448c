"""The analysis stage on a fake experiment with known numbers: statistics, markers, tests,
formats and figures (no model, no training: fast)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import collect, figures, tables

SEEDS = [0, 1, 2]
SUITES = ["chains_test", "chains_test_long"]
STEPS = 10
# final accuracy by run, suite: one value per seed
ACCURACY = {
    "grpo": {"chains_test": [0.40, 0.44, 0.42], "chains_test_long": [0.20, 0.22, 0.18]},
    "srpo_1x4": {"chains_test": [0.50, 0.47, 0.53], "chains_test_long": [0.25, 0.21, 0.26]},
}
METHOD = {"grpo": "grpo", "srpo_1x4": "srpo"}
# ledger totals over the run (identical across seeds); tokens per step = these / STEPS
GENERATED = {
    "grpo": {"rollout": 10_000},
    "srpo_1x4": {"rollout": 5_000, "seed": 3_000, "localisation": 200, "suffix": 6_000},
}
FORWARDED = {
    "grpo": {"rollout": 12_000, "policy_update": 30_000},
    "srpo_1x4": {
        "rollout": 6_000,
        "seed": 3_600,
        "localisation": 2_000,
        "suffix": 7_000,
        "policy_update": 33_000,
    },
}
TRAIN_SECONDS = {"grpo": [20.0, 22.0, 24.0], "srpo_1x4": [30.0, 33.0, 36.0]}
GENERATE_SECONDS = {"grpo": [10.0, 10.0, 12.5], "srpo_1x4": [14.2, 14.2, 14.2]}
T_975_DF2 = 4.302652729911275  # Student t quantile, 0.975, 2 degrees of freedom


def write_run_seed(root: Path, run: str, seed: int, suites=SUITES) -> Path:
    d = root / "runs" / run / f"seed{seed}"
    (d / "eval").mkdir(parents=True)
    i = SEEDS.index(seed) if seed in SEEDS else 0
    gen_total = sum(GENERATED[run].values())
    fwd_total = sum(FORWARDED[run].values())
    train_s = TRAIN_SECONDS[run][i]
    rows = [
        {
            "step": 0,
            "eval/test/accuracy": 0.30,
            "eval/test/stderr": 0.03,
            "generated_tokens": 0,
            "forwarded_tokens": 0,
            "seconds": 0.0,
        }
    ]
    final = ACCURACY[run]["chains_test"][i]
    for step in range(1, STEPS + 1):
        row = {
            "step": step,
            "reward": 0.3 + (0.02 if run == "grpo" else 0.03) * step + 0.01 * i * (-1) ** step,
            "trained_reward": 0.3,
            "completion_tokens": 20.0,
            "loss": 0.1,
            "lr": 1e-4,
            "step_seconds": train_s / STEPS,
            "generated_tokens": gen_total * step // STEPS,
            "forwarded_tokens": fwd_total * step // STEPS,
            "seconds": train_s * step / STEPS,
        }
        if step % 5 == 0:
            row["eval/test/accuracy"] = 0.30 + (final - 0.30) * step / STEPS
            row["eval/test/stderr"] = 0.03
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ledger = {
        "generated_tokens": GENERATED[run],
        "forwarded_tokens": FORWARDED[run],
        "seconds": {
            "collect": train_s * 0.7,
            "generate": GENERATE_SECONDS[run][i],
            "credit": 0.1,
            "update": train_s * 0.3,
            "eval": 3.0,
        },
        "total_generated_tokens": gen_total,
        "total_forwarded_tokens": fwd_total,
        "run": run,
        "method": METHOD[run],
        "seed": seed,
        "steps": STEPS,
        "train_seconds": train_s,
    }
    (d / "ledger.json").write_text(json.dumps(ledger))
    for suite in suites:
        acc = ACCURACY[run][suite][i]
        result = {
            "suite": suite,
            "model": str(d / "model"),
            "backend": "lm-eval/hf",
            "accuracy": acc,
            "stderr": math.sqrt(acc * (1 - acc) / 100),
            "n": 100,
        }
        (d / "eval" / f"{suite}.json").write_text(json.dumps(result))
    return d


def make_experiment(root: Path, runs=("grpo", "srpo_1x4"), seeds=SEEDS) -> Path:
    for run in runs:
        for seed in seeds:
            write_run_seed(root, run, seed)
    return root


@pytest.fixture
def exp(tmp_path) -> Path:
    return make_experiment(tmp_path / "results" / "fake")


def acc_row(table: pd.DataFrame, run: str, suite: str) -> pd.Series:
    return table[(table.run == run) & (table.suite == suite)].iloc[0]


# ------------------------------------------------------------------------------ collect


def test_collect_reads_tidy_frames_with_sources(exp):
    res = collect.load(exp, baseline="grpo")
    assert res.runs == ["grpo", "srpo_1x4"]
    assert len(res.final) == 2 * 3 * 2
    row = res.final[(res.final.run == "srpo_1x4") & (res.final.seed == 1)]
    row = row[row.suite == "chains_test_long"].iloc[0]
    assert row.accuracy == 0.21 and row.method == "srpo" and row.n == 100
    assert row.source == str(exp / "runs/srpo_1x4/seed1/eval/chains_test_long.json")
    c = res.curves[(res.curves.run == "grpo") & (res.curves.seed == 2)]
    assert c.step.tolist() == list(range(STEPS + 1))
    assert c.accuracy.notna().tolist() == [s in (0, 5, 10) for s in range(STEPS + 1)]
    assert c[c.step == 10].accuracy.item() == pytest.approx(0.42)
    assert math.isnan(c[c.step == 0].reward.item())  # the warm start's eval row
    assert set(res.curves.source) == {
        str(exp / f"runs/{r}/seed{s}/metrics.jsonl") for r in ACCURACY for s in SEEDS
    }
    t = res.tokens[(res.tokens.run == "srpo_1x4") & (res.tokens.seed == 0)].set_index("purpose")
    assert t.loc["suffix", "generated"] == 6_000 and t.loc["policy_update", "generated"] == 0
    assert t.loc["localisation", "forwarded"] == 2_000
    s = res.seconds[(res.seconds.run == "grpo") & (res.seconds.seed == 2)].set_index("phase")
    assert s.loc["generate", "seconds"] == 12.5 and s.loc["generate", "train_seconds"] == 24.0


def test_run_order_follows_the_given_order_else_baseline_first(exp):
    assert collect.order_runs(["srpo_1x4", "grpo", "abc"], None, "grpo") == [
        "grpo",
        "abc",
        "srpo_1x4",
    ]
    assert collect.order_runs(["grpo", "srpo_1x4"], ["srpo_1x4", "grpo"]) == ["srpo_1x4", "grpo"]
    res = collect.load(exp, runs=["srpo_1x4", "grpo"], seeds=SEEDS, suites=SUITES)
    assert res.runs == ["srpo_1x4", "grpo"]


def test_malformed_eval_json_is_an_error_naming_the_file(exp):
    bad = exp / "runs/srpo_1x4/seed1/eval/chains_test.json"
    bad.write_text('{"suite": "chains_test", "accuracy": 0.5,')
    with pytest.raises(collect.AnalysisError, match=r"seed1/eval/chains_test\.json.*malformed"):
        collect.load(exp)
    assert tables.main([str(exp), "--out", str(exp / "tables")]) == 2


def test_missing_and_bad_values_are_errors_naming_the_file(exp):
    (exp / "runs/grpo/seed2/eval/chains_test_long.json").unlink()
    with pytest.raises(collect.AnalysisError, match=r"grpo/seed2/eval/chains_test_long\.json"):
        collect.load(exp, runs=["grpo"], seeds=SEEDS, suites=SUITES)
    path = exp / "runs/grpo/seed0/eval/chains_test.json"
    path.write_text(json.dumps({"suite": "chains_test", "accuracy": None, "n": 3}))
    with pytest.raises(collect.AnalysisError, match=r"grpo/seed0/eval/chains_test\.json.*accuracy"):
        collect.final_results(collect.run_seeds(exp, ["grpo"], [0]), ["chains_test"])
    metrics = exp / "runs/grpo/seed1/metrics.jsonl"
    metrics.write_text(metrics.read_text() + "{not json\n")
    with pytest.raises(collect.AnalysisError, match=r"grpo/seed1/metrics\.jsonl:12"):
        collect.learning_curves(collect.run_seeds(exp, ["grpo"], [1]))


# ------------------------------------------------------------------------------- tables


def test_mean_and_confidence_interval_use_the_student_t_quantile(exp):
    res = collect.load(exp)
    t = tables.accuracy_table(res.final, res.runs, SUITES, "grpo")
    r = acc_row(t, "grpo", "chains_test")  # 0.40, 0.44, 0.42: mean 0.42, s = 0.02
    assert r["mean"] == pytest.approx(0.42)
    assert r.ci95 == pytest.approx(T_975_DF2 * 0.02 / math.sqrt(3))
    assert r.n_seeds == 3
    # the average over suites is taken per seed (0.30, 0.33, 0.30), then over seeds
    avg = acc_row(t, "grpo", tables.AVERAGE)
    s = np.std([0.30, 0.33, 0.30], ddof=1)
    assert avg["mean"] == pytest.approx(0.31)
    assert avg.ci95 == pytest.approx(T_975_DF2 * s / math.sqrt(3))


def test_best_mean_per_column_is_marked_and_bold(exp, tmp_path):
    res = collect.load(exp)
    t = tables.write_tables(res, SUITES, tmp_path / "t", "grpo", "results/fake")["main"]
    assert t[t.best].run.unique().tolist() == ["srpo_1x4"]
    assert len(t[t.best]) == 3  # both suites and the average
    md = (tmp_path / "t/main.md").read_text()
    # srpo_1x4 on chains_test: 0.50, 0.47, 0.53 -> 50.0 ± 7.5 (s = 0.03)
    half = T_975_DF2 * 0.03 / math.sqrt(3) * 100
    assert f"**50.0 ± {half:.1f}**" in md
    assert "| grpo | grpo | 3 | 42.0 ± 5.0 |" in md  # not bold
    tex = (tmp_path / "t/main.tex").read_text()
    assert rf"\textbf{{50.0 $\pm$ {half:.1f}}}" in tex


def test_paired_t_test_against_the_baseline_matches_scipy(exp):
    res = collect.load(exp)
    t = tables.accuracy_table(res.final, res.runs, SUITES, "grpo")
    r = acc_row(t, "srpo_1x4", "chains_test")
    a, b = ACCURACY["srpo_1x4"]["chains_test"], ACCURACY["grpo"]["chains_test"]
    d = np.subtract(a, b)  # 0.10, 0.03, 0.11
    t_stat = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert r.delta == pytest.approx(d.mean())
    assert r.n_matched == 3
    assert r.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r.p_value == pytest.approx(2 * stats.t.sf(abs(t_stat), 2))
    assert math.isnan(acc_row(t, "grpo", "chains_test").p_value)  # no test against itself


def test_difference_needs_matched_seeds(tmp_path):
    root = tmp_path / "exp"
    make_experiment(root, runs=["grpo"], seeds=[0, 1, 2])
    write_run_seed(root, "srpo_1x4", 1)  # one matched seed: a difference, no p-value
    res = collect.load(root)
    t = tables.accuracy_table(res.final, res.runs, SUITES, "grpo")
    r = acc_row(t, "srpo_1x4", "chains_test")
    assert r.n_matched == 1 and r.n_seeds == 1
    assert r.delta == pytest.approx(0.47 - 0.44)
    assert math.isnan(r.p_value) and math.isnan(r.ci95)
    tables.write_tables(res, SUITES, tmp_path / "t", "grpo", "exp")
    md = (tmp_path / "t/main.md").read_text()
    assert "47.0 (n=1)" in md and "+3.0 (p=n/a)" in md


def test_absent_baseline_skips_the_difference(exp, tmp_path):
    res = collect.load(exp)
    out = tables.write_tables(res, SUITES, tmp_path / "t", "vineppo", "results/fake")
    assert out["main"].delta.isna().all()
    assert out["efficiency"].ratio_to_baseline.isna().all()
    md = (tmp_path / "t/main.md").read_text()
    assert "Difference to" not in md and "baseline run 'vineppo' is absent" in md
    se = out["sample_efficiency"]
    assert set(se.quantity) == {"auc", "to_threshold"} and se.delta.isna().all()
    md = (tmp_path / "t/sample_efficiency.md").read_text()
    assert "No time to 50% of the gain: baseline run 'vineppo' is absent." in md
    assert "AUC difference" not in md


def test_efficiency_per_step_and_relative_to_the_baseline(exp):
    res = collect.load(exp)
    e = tables.efficiency_table(res, "grpo")

    def get(run, quantity, purpose="all"):
        sel = (e.run == run) & (e.quantity == quantity) & (e.purpose == purpose)
        return e[sel].iloc[0]

    gen = get("srpo_1x4", "generated_tokens_per_step")
    assert gen["mean"] == pytest.approx(14_200 / STEPS)
    assert gen.ratio_to_baseline == pytest.approx(1.42)
    fwd = get("srpo_1x4", "forwarded_tokens_per_step")
    assert fwd.ratio_to_baseline == pytest.approx(51_600 / 42_000)
    sec = get("srpo_1x4", "seconds_per_step")
    assert sec["mean"] == pytest.approx(3.3) and sec.ratio_to_baseline == pytest.approx(1.5)
    assert sec.ci95 == pytest.approx(T_975_DF2 * 0.3 / math.sqrt(3))
    speed = get("grpo", "generated_tokens_per_second")  # 10000 / (10, 10, 12.5)
    assert speed["mean"] == pytest.approx(np.mean([1000, 1000, 800]))
    assert get("srpo_1x4", "generated_tokens_per_second").ratio_to_baseline == pytest.approx(
        1000 / np.mean([1000, 1000, 800])
    )
    assert get("srpo_1x4", "generated_tokens_per_step", "localisation")["mean"] == 20
    assert get("grpo", "generated_tokens_per_step", "rollout").ratio_to_baseline == 1.0


def test_formats_latex_booktabs_escaped_and_csv_round_trips(exp, tmp_path):
    res = collect.load(exp)
    out = tables.write_tables(res, SUITES, tmp_path / "t", "grpo", "results/fake")
    for name in ("main", "efficiency"):
        tex = (tmp_path / f"t/{name}.tex").read_text()
        for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}"):
            assert rule in tex
        body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))
        assert "srpo\\_1x4" in body and "srpo_1x4" not in body.replace("srpo\\_1x4", "")
        back = pd.read_csv(tmp_path / f"t/{name}.csv", keep_default_na=False, na_values=[""])
        frame = out[name]
        assert list(back.columns) == list(frame.columns)
        pd.testing.assert_frame_equal(
            back, frame.reset_index(drop=True), check_dtype=False, rtol=1e-9
        )
        assert (tmp_path / f"t/{name}.html").read_text().startswith("<!DOCTYPE html>")
    assert r"chains\_test\_long" in (tmp_path / "t/main.tex").read_text()
    seeds = pd.read_csv(tmp_path / "t/seeds.csv")
    assert len(seeds) == 12 and seeds.source.str.endswith(".json").all()


def test_tables_command_line_writes_every_table_in_the_given_run_order(exp, capsys):
    out = exp / "tables"
    args = [str(exp), "--runs", "srpo_1x4,grpo", "--seeds", "0,1,2", "--suites", ",".join(SUITES)]
    assert tables.main([*args, "--out", str(out)]) == 0
    for name in ("main", "efficiency", "sample_efficiency"):
        for ext in ("md", "tex", "csv", "html"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    main_csv = pd.read_csv(out / "main.csv")
    assert main_csv.run.tolist()[:2] == ["srpo_1x4", "grpo"]
    md = (out / "main.md").read_text()
    assert md.index("| srpo_1x4 |") < md.index("| grpo | grpo |")


def test_single_seed_prints_the_mean_and_n1(tmp_path):
    root = make_experiment(tmp_path / "one", seeds=[0])
    res = collect.load(root)
    tables.write_tables(res, SUITES, tmp_path / "t", "grpo", "one")
    md = (tmp_path / "t/main.md").read_text()
    assert "| grpo | grpo | 1 | 40.0 (n=1) | 20.0 (n=1) | 30.0 (n=1) |" in md
    rows = [ln for ln in md.splitlines() if ln.startswith(("| grpo", "| srpo"))]
    assert len(rows) == 3 and not any("±" in ln for ln in rows)
    assert "(p=n/a)" in md


# ------------------------------------------------------------------------------ figures


def test_figures_are_written_as_png_and_pdf(exp, tmp_path):
    res = collect.load(exp, final=False)
    paths = figures.write_figures(res, tmp_path / "fig", band="minmax", smooth=3)
    expected = {f"{n}.{ext}" for n in figures.FIGURES for ext in ("png", "pdf")}
    assert {p.name for p in paths} == expected
    for p in paths:
        assert p.stat().st_size > 1000
    assert (tmp_path / "fig/accuracy_vs_step.pdf").read_bytes().startswith(b"%PDF")
    h, w, _ = mpimg.imread(tmp_path / "fig/accuracy_vs_step.png").shape
    # 5.5 x 3.6 inches at 200 dpi, give or take the tight bounding box
    assert 900 <= w <= 1400 and 550 <= h <= 900


def test_curves_average_over_seeds_with_the_band():
    df = pd.DataFrame(
        {
            "step": [5, 5, 5, 10, 10, 10],
            "accuracy": [0.1, 0.2, 0.6, 0.3, 0.3, 0.6],
            "generated_tokens": [100, 110, 120, 200, 220, 240],
        }
    )
    mm = figures.curve_over_seeds(df, "accuracy", "generated_tokens", "minmax")
    assert mm.x.tolist() == [110, 220] and mm.y.tolist() == pytest.approx([0.3, 0.4])
    assert mm.lo.tolist() == [0.1, 0.3] and mm.hi.tolist() == [0.6, 0.6]
    se = figures.curve_over_seeds(df, "accuracy", "step", "se")
    half = np.std([0.1, 0.2, 0.6], ddof=1) / math.sqrt(3)
    assert se.lo.iloc[0] == pytest.approx(0.3 - half) and se.hi.iloc[0] == pytest.approx(0.3 + half)
    ci = figures.curve_over_seeds(df, "accuracy", "step", "ci95")  # the tables' t interval
    assert ci.lo.iloc[0] == pytest.approx(0.3 - T_975_DF2 * half)
    assert ci.hi.iloc[0] == pytest.approx(0.3 + T_975_DF2 * half)
    curves = pd.DataFrame(
        {"run": "r", "seed": 0, "step": [0, 1, 2, 3], "reward": [np.nan, 0.0, 1.0, 0.5]}
    )
    smoothed = figures.smooth_reward(curves, 2).smoothed.tolist()
    assert smoothed == pytest.approx([0.0, 0.5, 0.75])  # trailing window of 2 steps


def test_the_warm_start_row_leads_the_table_when_the_base_was_evaluated(exp, tmp_path):
    for suite, acc in zip(SUITES, [0.30, 0.10], strict=True):
        path = exp / "base" / "eval" / f"{suite}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"suite": suite, "accuracy": acc, "stderr": 0.02, "n": 100}))
    res = collect.load(exp)
    assert res.base.run.unique().tolist() == [collect.WARM_START]
    tables.write_tables(res, SUITES, tmp_path / "t", "grpo", "results/fake")
    md = (tmp_path / "t/main.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[1] == "| warm start | – | – | 30.0 | 10.0 | 20.0 |"  # first under the header
    assert "shared initial policy" in md
    seeds = pd.read_csv(tmp_path / "t/seeds.csv")
    assert seeds.run.iloc[0] == "warm start" and len(seeds) == len(res.final) + 2


def test_no_warm_start_row_without_its_evaluation(exp, tmp_path):
    tables.write_tables(collect.load(exp), SUITES, tmp_path / "t", "grpo", "results/fake")
    assert "warm start" not in (tmp_path / "t/main.md").read_text()


# ---------------------------------------------------------------- sample efficiency, power

# Small curves worked by hand: 4 steps, an evaluation every 2 (steps 0, 2, 4), two seeds.
CURVES = {  # run: (accuracy at steps 0, 2, 4 per seed, generated tokens / step, seconds / step)
    "grpo": ([[0.2, 0.45, 0.5], [0.2, 0.3, 0.7]], 100, 2.0),
    "fast": ([[0.2, 0.6, 0.6], [0.2, 0.5, 0.8]], 200, 3.0),
    "slow": ([[0.2, 0.25, 0.3], [0.2, 0.3, 0.4]], 100, 2.0),
}
# grpo: warm start 0.2, final (0.5 + 0.7) / 2 = 0.6, gain 0.4: thresholds 0.4 (50%), 0.52 (80%)
T_975_DF1 = 12.706204736174707  # Student t quantile, 0.975, 1 degree of freedom


def t_quantile_df2(p: float) -> float:
    """Student t quantile with 2 degrees of freedom, in closed form."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def write_curve_run(root: Path, run: str, seed: int) -> None:
    """A run x seed as the trainer writes it: a step-0 evaluation line, one line per step
    with the cumulative counters, ``eval/test/...`` on every second step; its ledger."""
    accs, tok_per_step, sec_per_step = CURVES[run]
    acc = dict(zip((0, 2, 4), accs[seed], strict=True))
    d = root / "runs" / run / f"seed{seed}"
    (d / "eval").mkdir(parents=True)
    rows = []
    for step in range(5):
        row = {"step": step}
        if step:
            row.update(reward=0.5, trained_reward=0.5, loss=0.1, step_seconds=sec_per_step)
        if step in acc:
            row.update({"eval/test/accuracy": acc[step], "eval/test/stderr": 0.05})
        row.update(
            generated_tokens=tok_per_step * step,
            forwarded_tokens=3 * tok_per_step * step,
            seconds=sec_per_step * step,
        )
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ledger = {
        "generated_tokens": {"rollout": tok_per_step * 4},
        "forwarded_tokens": {"rollout": 3 * tok_per_step * 4},
        "seconds": {"collect": sec_per_step * 3, "generate": sec_per_step * 2, "update": 2.0},
        "run": run,
        "method": "grpo",
        "seed": seed,
        "steps": 4,
        "train_seconds": sec_per_step * 4,
    }
    (d / "ledger.json").write_text(json.dumps(ledger))
    result = {"suite": "chains_test", "accuracy": accs[seed][-1], "stderr": 0.05, "n": 100}
    (d / "eval" / "chains_test.json").write_text(json.dumps(result))


@pytest.fixture
def curve_exp(tmp_path) -> Path:
    root = tmp_path / "results" / "curves"
    for run in CURVES:
        for seed in (0, 1):
            write_curve_run(root, run, seed)
    return root


def se_row(table, run, quantity, axis, fraction=None):
    sel = (table.run == run) & (table.quantity == quantity) & (table.axis == axis)
    if fraction is not None:
        sel &= np.isclose(table.fraction, fraction)
    return table[sel].iloc[0]


def test_normalised_auc_and_crossing_on_hand_worked_curves():
    # trapezoids over (0, 0.2), (2, 0.6), (4, 0.8): (0.8 + 1.4) / 4
    assert tables.normalised_auc([0, 2, 4], [0.2, 0.6, 0.8], 4) == pytest.approx(0.55)
    # cut at 3: y(3) = 0.7, area (0.2+0.6)/2*2 + (0.6+0.7)/2*1 = 1.45, over 3
    assert tables.normalised_auc([0, 2, 4], [0.2, 0.6, 0.8], 3) == pytest.approx(1.45 / 3)
    assert math.isnan(tables.normalised_auc([0, 2, 4], [0.2, 0.6, 0.8], 5))  # no extrapolation
    # 0.5 is crossed between (2, 0.45) and (4, 0.7): 2 + 0.05 / 0.25 * 2
    assert tables.crossing([0, 2, 4], [0.2, 0.45, 0.7], 0.5) == pytest.approx(2.4)
    assert tables.crossing([0, 2, 4], [0.2, 0.45, 0.7], 0.45) == 2.0  # reached at an evaluation
    assert tables.crossing([0, 2, 4], [0.2, 0.45, 0.7], 0.2) == 0.0
    assert tables.crossing([0, 2, 4], [0.2, 0.45, 0.7], 0.71) == math.inf  # not reached
    assert tables.crossing([0, 2, 4], [0.2, 0.6, 0.5], 0.55) == pytest.approx(1.75)  # first one


def test_auc_over_steps_tokens_and_seconds_at_the_common_budget(curve_exp):
    res = collect.load(curve_exp)
    per_seed, thr, budgets = tables.sample_efficiency_per_seed(res.curves, "grpo")
    assert budgets == {"step": 4.0, "generated_tokens": 400.0, "seconds": 8.0}
    assert (thr.warm, thr.final) == (pytest.approx(0.2), pytest.approx(0.6))
    assert thr.levels == {0.5: pytest.approx(0.4), 0.8: pytest.approx(0.52)}
    t = tables.sample_efficiency_table(per_seed, res.runs, "grpo")
    # over steps, (y0 + 2 y2 + y4) / 4 per seed: grpo 0.4, 0.375; fast 0.5, 0.5; slow 0.25, 0.3
    r = se_row(t, "fast", "auc", "step")
    assert r["mean"] == pytest.approx(0.5) and r["std"] == pytest.approx(0.0, abs=1e-12)
    g = se_row(t, "grpo", "auc", "step")
    half = T_975_DF1 * np.std([0.4, 0.375], ddof=1) / math.sqrt(2)
    assert g["mean"] == pytest.approx(0.3875)
    assert (g.ci_low, g.ci_high) == (pytest.approx(0.3875 - half), pytest.approx(0.3875 + half))
    # paired differences 0.1 and 0.125
    assert r.delta == pytest.approx(0.1125) and r.n_matched == 2
    assert r.sd_diff == pytest.approx(0.025 / math.sqrt(2))
    t_stat = 0.1125 / (0.025 / math.sqrt(2) / math.sqrt(2))
    assert r.p_value == pytest.approx(2 * stats.t.sf(t_stat, 1))
    # fast spends 200 tokens a step: cut at 400 tokens (its step 2): (0.2 + y2) / 2
    r = se_row(t, "fast", "auc", "generated_tokens")
    assert r["mean"] == pytest.approx(np.mean([0.4, 0.35]))
    assert r.delta == pytest.approx(np.mean([0.4 - 0.4, 0.35 - 0.375]))
    # 3 s a step, cut at 8 s between (6, y2) and (12, y4): y(8) = y2 + (y4 - y2) / 3
    # seed 0: (0.2 + 0.6) / 2 * 6 + (0.6 + 0.6) / 2 * 2 = 3.6; seed 1: 2.1 + 1.1 = 3.2
    r = se_row(t, "fast", "auc", "seconds")
    assert r["mean"] == pytest.approx(np.mean([3.6 / 8, 3.2 / 8]))
    assert r.budget == 8.0


def test_steps_and_tokens_to_threshold_with_interpolation_and_not_reached(curve_exp):
    res = collect.load(curve_exp)
    per_seed, _, _ = tables.sample_efficiency_per_seed(res.curves, "grpo")
    t = tables.sample_efficiency_table(per_seed, res.runs, "grpo")
    # 0.4: grpo 0.2/0.25*2 = 1.6, 2 + 0.1/0.4*2 = 2.5; fast 0.2/0.4*2 = 1.0, 0.2/0.3*2 = 4/3
    g = se_row(t, "grpo", "to_threshold", "step", 0.5)
    assert g["mean"] == pytest.approx(2.05) and g.n_reached == 2 and g.bound == "none"
    half = T_975_DF1 * np.std([1.6, 2.5], ddof=1) / math.sqrt(2)
    assert g.ci_high == pytest.approx(2.05 + half)
    f = se_row(t, "fast", "to_threshold", "generated_tokens", 0.5)
    assert f["mean"] == pytest.approx(np.mean([200.0, 800 / 3]))  # 200 tokens a step
    # 0.52: grpo seed 0 ends at 0.5 (not reached: counted at its budget, 4), seed 1 3.1
    g = se_row(t, "grpo", "to_threshold", "step", 0.8)
    assert g.n_reached == 1 and g.bound == "lower" and g["mean"] == pytest.approx(3.55)
    text = tables.fmt_time(g, "steps")  # a lower bound of the mean, shown as such
    assert text.startswith("> 3.") and text.endswith(" (1/2 reached)")
    assert math.isnan(g.ci_low)
    s = se_row(t, "slow", "to_threshold", "step", 0.8)
    assert s.n_reached == 0 and s.budget == 4 and s.bound == "lower"
    # slow reaches 0.4 at its last evaluation in seed 1 only
    s = se_row(t, "slow", "to_threshold", "step", 0.5)
    assert s.n_reached == 1 and s["mean"] == 4.0
    seeds = per_seed[(per_seed.run == "slow") & (per_seed.quantity == "to_threshold")]
    seeds = seeds[(seeds.axis == "step") & np.isclose(seeds.fraction, 0.5)]
    assert seeds.reached.tolist() == [False, True] and seeds.value.tolist() == [4.0, 4.0]


def test_speed_up_against_the_baseline_on_the_log_scale_and_its_bounds(curve_exp):
    res = collect.load(curve_exp)
    per_seed, _, _ = tables.sample_efficiency_per_seed(res.curves, "grpo")
    t = tables.sample_efficiency_table(per_seed, res.runs, "grpo")
    # 50%: grpo / fast per seed = 1.6 / 1.0 and 2.5 / (4/3)
    ratios = np.array([1.6, 2.5 * 3 / 4])
    logs = np.log(ratios)
    half = T_975_DF1 * logs.std(ddof=1) / math.sqrt(2)
    r = se_row(t, "fast", "speedup", "step", 0.5)
    assert r["mean"] == pytest.approx(math.sqrt(1.6 * 1.875))  # geometric mean
    assert r.ci_low == pytest.approx(math.exp(logs.mean() - half))
    assert r.ci_high == pytest.approx(math.exp(logs.mean() + half))
    assert r.p_value == pytest.approx(stats.ttest_1samp(logs, 0).pvalue)
    assert r.mde == pytest.approx(math.exp(tables.mde(logs.std(ddof=1), 2)))
    assert r.bound == "none"
    tok = se_row(t, "fast", "speedup", "generated_tokens", 0.5)  # twice the tokens per step
    assert tok["mean"] == pytest.approx(r["mean"] / 2)
    # 80%: a grpo seed did not reach: its budget (4) stands for its time, a lower bound
    r = se_row(t, "fast", "speedup", "step", 0.8)
    fast_80 = [0.32 / 0.4 * 2, 2 + 0.02 / 0.3 * 2]  # 1.6, 2.1333
    assert r.bound == "lower"
    assert r["mean"] == pytest.approx(math.sqrt(4 / fast_80[0] * 3.1 / fast_80[1]))
    assert math.isnan(r.ci_low) and math.isnan(r.p_value)
    # slow did not reach 0.4 in seed 0: an upper bound, (1.6 / 4 * 2.5 / 4) ** 0.5 = 0.5
    r = se_row(t, "slow", "speedup", "step", 0.5)
    assert r.bound == "upper" and r["mean"] == pytest.approx(0.5)
    # 80%: neither slow nor one grpo seed reached it: unknown
    r = se_row(t, "slow", "speedup", "step", 0.8)
    assert r.bound == "unknown" and math.isnan(r["mean"])
    assert t[(t.run == "grpo") & (t.quantity == "speedup")].empty  # not against itself


def test_sample_efficiency_tables_show_bounds_not_reached_and_mde(curve_exp, tmp_path):
    res = collect.load(curve_exp)
    out = tables.write_tables(res, ["chains_test"], tmp_path / "t", "grpo", "results/curves")
    md = (tmp_path / "t/sample_efficiency.md").read_text()
    assert "| run | method | seeds | steps 0–4 | tokens 0–400 | seconds 0–8.0 |" in md
    assert "| warm start | – | – | 20.0 | 20.0 | 20.0 |" in md
    assert "| run | method | seeds | steps | MDE | tokens | MDE | seconds | MDE |" in md
    header = (
        "| run | method | seeds | steps | × fewer steps | MDE | tokens | × fewer tokens | MDE |"
    )
    assert md.count(header) == 2  # 50% and 80%
    assert "to 50% of grpo's gain (held-out accuracy ≥ 40.0%)" in md
    assert "to 80% of grpo's gain (held-out accuracy ≥ 52.0%)" in md
    lines = md.splitlines()
    slow = [ln for ln in lines if ln.startswith("| slow |")]
    # AUC over steps: slow 0.25, 0.3 against grpo 0.4, 0.375: differences −0.15, −0.075
    slow_mde = 100 * tables.mde(0.075 / math.sqrt(2), 2)
    assert slow[1].startswith(f"| slow | grpo | 2 | −11.3 (p=0.205) | {slow_mde:.1f} |")
    assert "| > 4 (1/2 reached) | < 0.50× (1/2 seeds not reached) |" in slow[2]
    assert "| not reached (> 4) | n/a (neither reached) |" in slow[3]
    fast = [ln for ln in lines if ln.startswith("| fast |")]
    lo, hi = se_row(out["sample_efficiency"], "fast", "speedup", "step", 0.5)[["ci_low", "ci_high"]]
    assert f"| 1.73× [{lo:.2f}, {hi:.2f}] |" in fast[2]
    assert "> 1.91× (grpo: seeds not reached)" in fast[3]  # (4 / 1.6 · 3.1 / 2.133) ** 0.5
    grpo = [ln for ln in lines if ln.startswith("| grpo |")]
    assert "| 2.0 ± 5.7 | reference | – |" in grpo[1]  # 2.05 ± 12.7 * 0.636 / √2
    back = pd.read_csv(tmp_path / "t/sample_efficiency.csv", keep_default_na=False, na_values=[""])
    assert list(back.columns) == tables.SAMPLE_EFFICIENCY_COLUMNS
    pd.testing.assert_frame_equal(
        back, out["sample_efficiency"], check_dtype=False, rtol=1e-9, check_exact=False
    )
    seeds = pd.read_csv(tmp_path / "t/sample_efficiency_seeds.csv")
    assert len(seeds) == 3 * 2 * (3 + 2 * 2) and seeds.source.str.endswith("metrics.jsonl").all()
    tex = (tmp_path / "t/sample_efficiency.tex").read_text()
    assert r"$<$ 0.50$\times$ (1/2 seeds not reached)" in tex


def test_minimum_detectable_effect_by_hand_and_by_simulation():
    # approximation: (t_{0.975, 2} + t_{0.8, 2}) * sd / sqrt(3), quantiles in closed form
    approx = (t_quantile_df2(0.975) + t_quantile_df2(0.8)) * 0.02 / math.sqrt(3)
    assert t_quantile_df2(0.975) == pytest.approx(T_975_DF2)
    assert tables.mde(0.02, 3, exact=False) == pytest.approx(approx)
    assert approx == pytest.approx(5.3633129 * 0.02 / math.sqrt(3))
    exact = tables.mde(0.02, 3)
    assert 1.04 * approx < exact < 1.07 * approx  # few seeds: the approximation is optimistic
    # the exact MDE has 80% power: simulate paired experiments with that true difference
    rng = np.random.default_rng(12)
    d = rng.normal(exact, 0.02, size=(400_000, 3))
    t_stat = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(3))
    assert np.mean(np.abs(t_stat) > T_975_DF2) == pytest.approx(0.80, abs=0.003)
    # many seeds: the two agree; degenerate inputs
    assert tables.mde(1.0, 50) == pytest.approx(tables.mde(1.0, 50, exact=False), rel=2e-3)
    assert math.isnan(tables.mde(0.02, 1)) and math.isnan(tables.mde(0.0, 3))


def test_main_table_shows_the_mde_beside_each_difference(exp, tmp_path):
    res = collect.load(exp)
    out = tables.write_tables(res, SUITES, tmp_path / "t", "grpo", "results/fake")
    r = acc_row(out["main"], "srpo_1x4", "chains_test")
    sd = np.std([0.10, 0.03, 0.11], ddof=1)
    assert r.sd_diff == pytest.approx(sd) and r.mde == pytest.approx(tables.mde(sd, 3))
    assert 3.26 * sd < r.mde < 3.27 * sd  # 3 seeds: about 3.26 sd of the differences
    md = (tmp_path / "t/main.md").read_text()
    header = "| run | method | seeds | chains_test | MDE | chains_test_long | MDE | average | MDE |"
    assert header in md
    assert f"| srpo_1x4 | srpo | 3 | +8.0 (p=0.086) | {100 * r.mde:.1f} |" in md
    assert "could not have seen" in md
    # the existing columns stay
    main_csv = pd.read_csv(tmp_path / "t/main.csv")
    assert list(main_csv.columns[:12]) == tables.ACCURACY_COLUMNS[:12]
    assert {"sd_diff", "mde"} <= set(main_csv.columns)


def test_without_in_training_evaluations_the_table_says_so(exp, tmp_path):
    for metrics in exp.glob("runs/*/seed*/metrics.jsonl"):
        rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
        rows = [{k: v for k, v in r.items() if not k.startswith("eval/")} for r in rows]
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tables.write_tables(collect.load(exp), SUITES, tmp_path / "t", "grpo", "fake")
    assert out["sample_efficiency"].empty
    assert "No in-training evaluation" in (tmp_path / "t/sample_efficiency.md").read_text()
    paths = figures.write_figures(collect.load(exp, final=False), tmp_path / "fig")
    assert (tmp_path / "fig/sample_efficiency.png") in paths
