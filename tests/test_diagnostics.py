"""Credit-assignment diagnostics: the estimators on hand cases, the probing context on the
small warm start, SRPO's step metrics, and the stage end to end (truth -> runs -> report)."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_config

from analysis import diagnostics as report
from creditbench import diagnostics as diag
from creditbench.rollouts import group_normalise
from creditbench.tasks import make_task


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------- hand cases
def test_mc_values_of_known_success_probabilities_lie_within_their_standard_errors():
    probs = [0.0, 0.1, 0.5, 0.9, 1.0]
    rng = np.random.default_rng(0)

    def continue_fn(indices, m):
        return [list((rng.random(m) < probs[i]).astype(float)) for i in indices]

    m = 400
    est = diag.estimate_values(len(probs), continue_fn, m)
    for p, (v, se) in zip(probs, est, strict=True):
        assert abs(v - p) <= 3 * se + 1e-12
        assert se == pytest.approx(math.sqrt(p * (1 - p) / m), abs=0.01)
    assert est[0] == (0.0, 0.0) and est[-1] == (1.0, 0.0)
    assert diag.mc_estimate([1, 0, 1, 1]) == pytest.approx((0.75, math.sqrt(0.25 / 4)))


def test_true_step_advantages_close_with_the_reward_and_telescope():
    values = [0.5, 0.75, 0.25]  # V(s_0), V(s_1), V(s_2) of a 3-thought completion
    adv = diag.true_step_advantages(values, reward=0.0)
    assert adv == pytest.approx([0.25, -0.5, -0.25])
    assert sum(adv) == pytest.approx(0.0 - values[0])
    assert diag.true_step_advantages([0.4], 1.0) == pytest.approx([0.6])
    se = diag.step_advantage_se([0.03, 0.04, 0.05])
    assert se == pytest.approx([0.05, math.sqrt(0.0016 + 0.0025), 0.05])
    assert diag.per_token(adv, [2, 3, 6]) == pytest.approx([0.25, 0.25, -0.5] + [-0.25] * 3)
    assert diag.step_ends([], 5) == [5]


def test_correlations_pool_probes_and_count_untrained_tokens_as_zero():
    rec = [
        {"advantages": [1.0, 1.0, -1.0], "mask": [1, 1, 1], "truth": [0.5, 0.5, -0.5]},
        {"advantages": [9.0, 2.0, -2.0], "mask": [0, 1, 1], "truth": [0.0, 1.0, -1.0]},
    ]
    c = diag.credit_correlations(rec)
    assert c["tokens"] == 6 and c["trained_tokens"] == 5 and c["coverage"] == pytest.approx(5 / 6)
    assert c["pearson"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0)
    a = np.array([1, 1, -1, 0, 2, -2.0])
    t = np.array([0.5, 0.5, -0.5, 0, 1, -1.0])
    assert c["pearson_all"] == pytest.approx(np.corrcoef(a, t)[0, 1])
    assert c["sign_agreement"] == 1.0 and c["sign_tokens"] == 5
    # a sequence-level method: constant along each completion, no within-completion credit
    grpo = [
        {"advantages": [0.7] * 3, "mask": [1] * 3, "truth": [0.1, -0.4, 0.0]},
        {"advantages": [-0.7] * 2, "mask": [1] * 2, "truth": [0.2, -0.3]},
    ]
    g = diag.credit_correlations(grpo)
    assert math.isnan(g["pearson_within"]) and math.isfinite(g["pearson"])
    nothing = diag.credit_correlations([{"advantages": [0.0], "mask": [0], "truth": [0.3]}])
    assert nothing["coverage"] == 0 and math.isnan(nothing["pearson"])


def test_gradient_statistics_of_a_hand_case():
    s = diag.gradient_stats([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert s["trace_cov"] == pytest.approx(1.0)  # (0.5 + 0.5) / (2 - 1)
    assert s["mean_sq_norm"] == pytest.approx(0.5)
    assert s["rel_variance"] == pytest.approx(2.0)
    assert s["cosine_mean"] == pytest.approx(0.0) and s["cosine_pairs"] == 1
    same = diag.gradient_stats([torch.tensor([1.0, 2.0])] * 3 + [torch.zeros(2)])
    assert same["zero_batches"] == 1 and same["cosine_mean"] == pytest.approx(1.0)


def test_ranking_accuracy_averages_disjoint_blocks_and_ties_count_half():
    a = [1, 0, 1, 1]
    b = [0, 0, 1, 0]
    # K=1 blocks: (1,0) right, (0,0) tie, (1,1) tie, (1,0) right -> (1 + .5 + .5 + 1) / 4
    assert diag.ranking_accuracy(a, b, truth_diff=0.3, k=1) == pytest.approx(0.75)
    assert diag.ranking_accuracy(a, b, truth_diff=-0.3, k=1) == pytest.approx(0.25)
    # K=2 blocks: means (.5 vs 0) right, (1 vs .5) right
    assert diag.ranking_accuracy(a, b, truth_diff=0.3, k=2) == 1.0
    assert diag.ranking_accuracy(a, b, truth_diff=0.3, k=8) is None


def test_srpo_reset_diagnostics_split_clean_and_erroneous_prefixes():
    srpo = pytest.importorskip("creditbench.methods").load_method("srpo")
    rec = [
        # localised right (h = e = 2): clean prefix, 2 of 4 suffixes succeed
        dict(reset="self", reset_thought=2, localisation_parsed=True, oracle_first_error=2,
             seed_thoughts=4, suffix_rewards=[1, 1, 0, 0]),
        # too late (h = 3 > e = 1): the prefix keeps the error, nothing succeeds
        dict(reset="self", reset_thought=3, localisation_parsed=True, oracle_first_error=1,
             seed_thoughts=4, suffix_rewards=[0, 0, 0, 0]),
        # parse failure (h = 1 = e): clean but counted wrong; 1 of 4 succeeds
        dict(reset="self", reset_thought=1, localisation_parsed=False, oracle_first_error=1,
             seed_thoughts=4, suffix_rewards=[0, 1, 0, 0]),
        dict(reset="self", reset_thought=1, localisation_parsed=True, oracle_first_error=None,
             seed_thoughts=2, suffix_rewards=[1, 1, 1, 1]),
    ]  # fmt: skip
    m = srpo.reset_diagnostics(rec)
    assert m["srpo/resets"] == 4 and m["srpo/resets_with_oracle"] == 3
    assert m["srpo/localisation_accuracy"] == pytest.approx(1 / 3)
    assert m["srpo/resets_clean"] == 2 and m["srpo/suffixes_clean"] == 8
    assert m["srpo/correction_clean"] == pytest.approx(3 / 8)
    assert m["srpo/correction_erroneous"] == 0.0 and m["srpo/suffixes_erroneous"] == 4
    assert m["srpo/correction_clean_group"] == 1.0 and m["srpo/correction_erroneous_group"] == 0
    assert m["srpo/reset_offset"] == pytest.approx((0 + 2 + 0) / 3)
    pooled = diag.pool_srpo_metrics([m, srpo.reset_diagnostics(rec[:1])])
    assert pooled["srpo/resets_with_oracle"] == 4
    assert pooled["srpo/localisation_accuracy"] == pytest.approx(2 / 4)
    assert pooled["srpo/correction_erroneous"] == 0.0
    assert srpo.reset_diagnostics([])["srpo/correction_clean"] is None
    # processes' shards pooled by the method (as the trainer does under DDP) give the
    # metrics of all their resets together
    shards = [srpo.reset_diagnostics(rec[:1]), srpo.reset_diagnostics(rec[1:])]
    together = srpo.Method.pool_step_metrics(shards)
    for key, value in m.items():
        assert together[key] == pytest.approx(value), key
    assert srpo.Method.pool_step_metrics([{}, {}]) == {}  # no step oracle: nothing logged


# ------------------------------------------------------------------- on the warm start
RUNS = {
    "grpo": {"method": "grpo"},
    "srpo_1x4": {"method": "srpo", "split": "1x4", "train": {"group_size": 8}},
    "srpo_oracle_1x4": {
        "method": "srpo",
        "split": "1x4",
        "reset": "oracle",
        "train": {"group_size": 8},
    },
}
SIZES = dict(probes=4, pool=24, mc_rollouts=8, batches=2, ranking_ks=(1, 2, 4))
SIZES.update(ranking_truth_rollouts=8, ranking_candidates=3, ranking_min_gap=0.1)


@pytest.fixture(scope="module")
def cfg():
    return small_config(runs=RUNS)


@pytest.fixture(scope="module")
def base(cfg, small_experiment):
    return diag.load_base(cfg, small_experiment["base"], small_experiment["data"], trainable=True)


def _probe(task, problem, text, sampler, tokenizer):
    from creditbench.rollouts import Trajectory, thought_token_ends

    ids = sampler.encode(text) + [tokenizer.eos_token_id]
    return Trajectory(
        problem=problem,
        prompt_ids=sampler.encode_prompt(problem.prompt),
        completion_ids=ids,
        text=sampler.decode(ids),
        reward=task.reward(problem, text),
        purpose="probe",
        thought_ends=thought_token_ends(ids, tokenizer, task.segment),
    )


def test_the_probe_context_hands_grpo_the_probe_and_its_advantage_is_group_normalised(cfg, base):
    run = cfg.run("grpo")
    ctx = diag._context(base, run.sampling, run, cls=diag.ProbeContext)
    problems = base.task.load("test")[:3]
    probes = [
        _probe(base.task, p, base.task.solution(p), ctx.sampler, base.tokenizer) for p in problems
    ]
    method = diag.build_method(run, ctx)
    torch.manual_seed(0)
    ctx.arm(probes[:2])  # the third problem gets no probe
    groups = method.collect(problems, 0)
    for g, p in zip(groups[:2], probes[:2], strict=True):
        first = g.trajectories[0]
        assert first.completion_ids == p.completion_ids and first.reward == 1.0
        assert first.meta["diagnostic_probe"] == p.problem.id
    assert "diagnostic_probe" not in groups[2].trajectories[0].meta
    rewards = groups[0].rewards
    trained = method.advantages(groups)
    r = np.asarray(rewards)
    want = 0.0 if r.std() == 0 else (r[0] - r.mean()) / (r.std(ddof=1) + 1e-4)
    assert trained[0].advantages == pytest.approx([want] * len(probes[0].completion_ids))
    assert want == pytest.approx(group_normalise(rewards)[0])
    # later, unarmed calls are plain rollouts
    ctx.arm([])
    again = method.collect(problems[:1], 1)
    assert "diagnostic_probe" not in again[0].trajectories[0].meta


def test_a_failed_probe_is_srpos_seed_and_is_credited_as_a_suffix_of_its_reset(cfg, base):
    run = cfg.run("srpo_oracle_1x4")
    ctx = diag._context(base, run.sampling, run, cls=diag.ProbeContext)
    problem = base.task.load("test")[5]
    lines = base.task.solution_lines(problem)
    n = len(lines)
    bad = lines[:1] + ["1+1=7\n"] + lines[2 : n - 1] + ["A:999\n"]
    probe = _probe(base.task, problem, "".join(bad), ctx.sampler, base.tokenizer)
    assert probe.reward == 0 and base.task.first_error(problem, probe.text) == 2
    method = diag.build_method(run, ctx)
    torch.manual_seed(1)
    ctx.arm([probe])
    groups = method.collect([problem], 0)
    trained = method.advantages(groups)
    copy, kind, n_copies = diag._find_probe(trained, groups, problem.id)
    assert kind == "suffix" and n_copies == 1
    assert copy.meta["reset_thought"] == 2  # the oracle's first wrong thought
    assert copy.prefix_len == probe.thought_ends[0]  # the prefix y_1 is masked
    assert copy.loss_mask == [0.0] * copy.prefix_len + [1.0] * (
        len(copy.completion_ids) - copy.prefix_len
    )
    metrics = method.step_metrics()  # SRPO logs its oracle metrics every step
    assert metrics["srpo/resets"] == 1 and metrics["srpo/localisation_accuracy"] == 1.0
    assert metrics["srpo/resets_clean"] == 1 and metrics["srpo/suffixes_clean"] == 4


@pytest.fixture(scope="module")
def stage(cfg, base, small_experiment, tmp_path_factory):
    """The stage end to end through its command line: truth, grpo + srpo_1x4, report."""
    exp = tmp_path_factory.mktemp("exp")
    cfg_path = exp / "config.json"
    cfg_path.write_text(cfg.model_dump_json())
    common = ["-c", str(cfg_path), "--base", str(small_experiment["base"])]
    common += ["--data", str(small_experiment["data"]), "--threads", "1"]
    truth = exp / "diagnostics" / "truth.json"
    sizes = [
        "--probes=4",
        "--pool=24",
        "--mc-rollouts=8",
        "--ranking-ks=1,2,4",
        "--ranking-truth-rollouts=8",
        "--ranking-candidates=3",
        "--ranking-min-gap=0.1",
    ]
    assert report.main(["truth", *common, "--out", str(truth), *sizes]) == 0
    for run in ("grpo", "srpo_1x4"):
        out = exp / "diagnostics" / "runs" / f"{run}.json"
        args = ["run", *common, "--run", run, "--truth", str(truth), "--out", str(out)]
        assert report.main([*args, "--batches=2"]) == 0
    # SRPO's step metrics as the training loop logs them (a metrics.jsonl line per step)
    run = cfg.run("srpo_1x4")
    ctx = diag._context(base, run.sampling, run)
    method = diag.build_method(run, ctx)
    problems = base.task.load("train")[:4]
    rows = []
    for step in range(2):
        method.collect(problems, step)
        rows.append({"step": step + 1, "reward": 0.5, **method.step_metrics()})
    seed_dir = exp / "runs" / "srpo_1x4" / "seed0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["report", str(exp), "--runs", "grpo,srpo_1x4", "--seeds", "0"]
    assert (
        report.main([*args, "--tables", str(exp / "tables"), "--figures", str(exp / "figures")])
        == 0
    )
    return {"exp": exp, "truth": json.loads(truth.read_text()), "rows": rows}


def test_ground_truth_of_the_probe_set(stage):
    truth = stage["truth"]
    s = truth["summary"]
    assert s["probes"] == 4 and s["failures"] == 2 and s["successes"] == 2
    for p in truth["probes"]:
        n = len(p["thought_ends"])
        assert len(p["values"]) == len(p["value_se"]) == len(p["step_advantages"]) == n
        assert all(0 <= v <= 1 for v in p["values"])
        assert all(0 <= se <= 0.5 / math.sqrt(7) + 1e-9 for se in p["value_se"])
        assert sum(p["step_advantages"]) == pytest.approx(p["reward"] - p["values"][0])
        assert len(p["token_truth"]) == len(p["completion_ids"])
        assert (p["first_error"] is None) == (p["reward"] == 1)
    assert 0 <= s["value_se_mean"] <= s["value_se_max"] <= 0.5
    ranking = truth["ranking"]
    assert set(ranking["accuracy"]) == {"1", "2", "4"}
    for v in ranking["accuracy"].values():
        assert v["pairs"] == ranking["clear_pairs"]
        assert v["pairs"] == 0 or 0 <= v["accuracy"] <= 1


def test_run_diagnostics_are_finite_and_in_range(stage):
    for run in ("grpo", "srpo_1x4"):
        d = json.loads((stage["exp"] / "diagnostics" / "runs" / f"{run}.json").read_text())
        c, g = d["credit"]["summary"], d["gradient"]["stats"]
        assert c["probes"] == 4 and 0 <= c["coverage"] <= 1
        for key in ("pearson", "spearman", "pearson_all", "spearman_all"):
            assert c[key] is None or -1 - 1e-9 <= c[key] <= 1 + 1e-9  # null: undefined
        assert g["batches"] == 2 and g["rel_variance"] >= 0 and g["grad_norm_mean"] > 0
        # a batch with no signal (every group constant) has a zero gradient and no cosine
        cosine_pairs = (2 - g["zero_batches"]) * (1 - g["zero_batches"]) // 2
        assert g["cosine_pairs"] == cosine_pairs
        assert -1 <= g["cosine_mean"] <= 1 if cosine_pairs else g["cosine_mean"] is None
        for r in d["credit"]["records"]:
            assert len(r["advantages"]) == len(r["mask"]) == len(r["truth"])
    grpo = json.loads((stage["exp"] / "diagnostics" / "runs" / "grpo.json").read_text())
    assert grpo["credit"]["summary"]["coverage"] == 1.0  # GRPO trains on every token
    assert all(len(set(r["advantages"])) == 1 for r in grpo["credit"]["records"])
    assert grpo["gradient"]["step_metrics"] is None
    srpo = json.loads((stage["exp"] / "diagnostics" / "runs" / "srpo_1x4.json").read_text())
    base_metrics = srpo["gradient"]["step_metrics"]
    assert base_metrics["srpo/resets"] >= 1 and base_metrics["srpo/prompts"] == 2 * 4 * 1
    for rec in srpo["credit"]["records"]:  # failed probes: suffix copies, prefix masked
        if rec["reward"] == 0 and rec["trained"]:
            assert rec["group_kind"] == "suffix"
            assert rec["mask"][: rec["prefix_len"]] == [0.0] * rec["prefix_len"]


def test_report_writes_the_tables_and_figures(stage):
    exp = stage["exp"]
    for ext in ("md", "tex", "csv", "html"):
        assert (exp / "tables" / f"diagnostics.{ext}").stat().st_size > 0
    table = pd.read_csv(exp / "tables" / "diagnostics.csv")
    assert list(table.run) == ["grpo", "srpo_1x4"]
    assert table.rel_variance.notna().all() and (table.coverage <= 1).all()
    md = (exp / "tables" / "diagnostics.md").read_text()
    assert "Credit assignment at the warm start" in md and "SRPO" in md and "VinePPO" in md
    srpo = pd.read_csv(exp / "tables" / "diagnostics_srpo.csv")
    assert list(srpo["stage"]) == ["base", "training"]
    pooled = diag.pool_srpo_metrics(stage["rows"])
    got = srpo[srpo["stage"] == "training"].iloc[0]
    assert got.resets_with_oracle == pooled["srpo/resets_with_oracle"]
    assert got.steps == 2
    vine = pd.read_csv(exp / "tables" / "diagnostics_vineppo.csv")
    assert list(vine.k) == [1, 2, 4]
    for name in report.FIGURES:
        png = exp / "figures" / f"{name}.png"
        assert mpimg.imread(png).shape[0] > 100
        assert (exp / "figures" / f"{name}.pdf").stat().st_size > 0


def test_the_task_used_has_a_step_oracle(cfg):
    assert callable(make_task(cfg.task).first_error)
