"""SPO: cut points, segment advantages, the probability mask, tree values and segment
advantages worked by hand; short training runs of the chain and the tree variants."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import small_config

from creditbench.methods import load_method
from creditbench.rollouts import Trajectory
from creditbench.tasks import Problem
from creditbench.train import Trainer

spo = load_method("spo")

PROBS = [0.95, 0.5, 0.99, 0.3, 0.8, 0.92, 0.1]  # low (< 0.9) at tokens 1, 3, 4, 6


# ------------------------------------------------------------------ SPO-chain's rule
def test_cut_points_are_every_interval_th_low_probability_token():
    assert spo.cut_points(PROBS, 0.9, interval=1) == [1, 3, 4, 6]
    assert spo.cut_points(PROBS, 0.9, interval=2) == [1, 4]
    assert spo.cut_points(PROBS, 0.9, interval=5) == [1]  # the code's default interval
    assert spo.cut_points(PROBS, 0.5, interval=1) == [3, 6]  # strictly below the threshold
    assert spo.cut_points([0.2, 0.99], 0.9, 1) == [0]  # a cut at token 0: the prompt state
    assert spo.cut_points([0.99, 0.95], 0.9, 1) == []
    with pytest.raises(ValueError, match="cutpoint_interval must be >= 1"):
        spo.cut_points(PROBS, 0.9, 0)


def test_segment_advantages_by_hand():
    # cuts before tokens 1 and 4 with V = 0.5 and 0.25, R = 1, 7 tokens: token 0 precedes
    # the first cut (0), tokens 1-3 carry 0.25 - 0.5, tokens 4-6 carry 1 - 0.25
    got = spo.segment_advantages([1, 4], [0.5, 0.25], 1.0, 7)
    assert got == pytest.approx([0.0, -0.25, -0.25, -0.25, 0.75, 0.75, 0.75])
    # a cut at token 0 values the prompt: the first segment is credited against it
    got = spo.segment_advantages([0, 3], [0.4, 0.8], 0.0, 5)
    assert got == pytest.approx([0.4, 0.4, 0.4, -0.8, -0.8])
    assert spo.segment_advantages([], [], 1.0, 3) == [0.0, 0.0, 0.0]  # no cut: no credit
    with pytest.raises(ValueError, match="2 cut points but 1 values"):
        spo.segment_advantages([1, 2], [0.5], 1.0, 4)
    with pytest.raises(ValueError, match="must increase within 0..3"):
        spo.segment_advantages([2, 1], [0.5, 0.5], 1.0, 4)


def test_probability_mask_zeroes_and_masks_confident_tokens():
    adv = [0.0, -0.25, -0.25, -0.25, 0.75, 0.75, 0.75]
    masked, mask = spo.mask_confident(adv, PROBS, 0.9)
    assert masked == [0.0, -0.25, 0.0, -0.25, 0.75, 0.0, 0.75]
    assert mask == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    # exactly at the threshold: neither zeroed (p > 0.9) nor trained (p < 0.9), as the code
    assert spo.mask_confident([1.0], [0.9], 0.9) == ([1.0], [0.0])


# ------------------------------------------------------------------ SPO-tree's rule
def _leaf(reward: float) -> spo.TreeNode:
    problem = Problem("p", "1+1\n", "2", {})
    t = Trajectory(problem, [1], [2], "", reward, "rollout", [1])
    return spo.TreeNode(t, 0)


def test_tree_values_are_means_of_the_children_values():
    """root -> a (R 1), b -> (b1 R 0, b2 R 1), c (R 0): V(b) = 1/2, V(root) = (1 + 1/2 + 0) / 3."""
    root, a, b, c, b1, b2 = (
        spo.TreeNode(None, -1),
        _leaf(1.0),
        _leaf(0.0),
        _leaf(0.0),
        _leaf(0.0),
        _leaf(1.0),
    )
    root.children, b.children = [a, b, c], [b1, b2]
    assert spo.tree_values(root) == pytest.approx(0.5)
    assert (a.value, b.value, c.value) == (1.0, 0.5, 0.0)
    # the leaves below are 1, 0, 1, 0: their mean is also 1/2 here, but a node weighs its
    # children equally: with b2 = 0 the root is (1 + 0 + 0) / 3, not the leaf mean 1/4
    b2.traj.reward = 0.0
    assert spo.tree_values(root) == pytest.approx(1 / 3)


def test_tree_segment_advantages_by_hand():
    siblings = [1.0, 0.5, 0.0]  # population std sqrt(1/6)
    assert spo.tree_advantage(1.0, 0.5, siblings, "rloo") == 0.5
    assert spo.tree_advantage(0.0, 0.5, siblings, "rloo") == -0.5
    assert spo.tree_advantage(1.0, 0.5, siblings, "grpo") == pytest.approx(0.5 / (1 / 6) ** 0.5)
    # all siblings alike: 0 / (0 + 1e-8)
    assert spo.tree_advantage(1.0, 1.0, [1.0, 1.0], "grpo") == 0.0


def test_a_prefix_cut_inside_a_thought_keeps_its_whole_thoughts_only():
    # ends 7 and 12: a 12-token prefix that ends with the delimiter closes its thought
    assert spo.complete_thought_ends([7, 12], 12, "7+5=12\n12*3\n", "\n") == [7, 12]
    assert spo.complete_thought_ends([7, 12], 12, "7+5=12\n12*3", "\n") == [7]
    assert spo.complete_thought_ends([7, 12], 12, "x", None) == [7]


def test_bad_branch_factors_are_refused_with_the_value():
    with pytest.raises(ValueError, match=r"branch_factors .* got \[6, 0\]"):
        spo.Params(variant="tree", branch_factors=[6, 0])
    with pytest.raises(ValueError, match="branch_factors"):
        spo.Params(variant="tree", branch_factors=[])


def test_defaults_are_the_codes():
    p = spo.Params()
    assert (p.variant, p.prob_threshold, p.cutpoint_interval, p.mc_rollouts) == ("chain", 0.9, 5, 9)
    assert (p.branch_factors, p.segment_tokens, p.tree_advantage) == ([6, 6, 6], 600, "rloo")
    assert (p.drop_zero_advantage, p.max_segments_per_prompt, p.prob_mask) == (True, 32, True)
    loss = small_config(runs={"s": {"method": "spo"}}).run("s").loss
    assert (loss.clip, loss.epsilon, loss.beta, loss.aggregation) == (True, 0.2, 1e-4, "dapo")
    assert (loss.kl_reduction, loss.kl_clamp) == ("sequence_sum", None)


# ------------------------------------------------------------------ short training runs
def _train(small_experiment, tmp_path, spec):
    cfg = small_config(train={"steps": 2}, runs={"s": {"method": "spo", **spec}})
    t = Trainer(cfg.run("s"), 0, small_experiment["base"], small_experiment["data"], tmp_path)
    groups, sampled = [], {}
    collect, generate = t.method.collect, t.sampler.generate

    def recording_collect(problems, step):
        out = collect(problems, step)
        groups.extend(out)
        return out

    def recording_generate(contexts, *, purpose, **kw):
        out = generate(contexts, purpose=purpose, **kw)
        sampled[purpose] = sampled.get(purpose, 0) + sum(len(g.ids) for g in out)
        return out

    t.method.collect, t.sampler.generate = recording_collect, recording_generate
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    ledger = t.train()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    changed = any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    return t, groups, sampled, ledger, rows, changed


def test_spo_chain_trains_with_cut_point_values_and_the_probability_mask(
    small_experiment, tmp_path
):
    t, groups, sampled, ledger, rows, changed = _train(
        small_experiment, tmp_path, {"mc_rollouts": 2, "cutpoint_interval": 1}
    )
    assert t.step == 2 and changed and all(math.isfinite(r["loss"]) for r in rows)
    assert ledger["generated_tokens"] == sampled and sampled["mc_value"] > 0
    assert ledger["forwarded_tokens"]["token_probs"] == sum(
        len(tr.prompt_ids) + len(tr.completion_ids) for g in groups for tr in g.trajectories
    )
    assert all(r["spo/cuts"] > 0 for r in rows)
    for g in groups:
        for tr in g.trajectories:
            probs, cuts = tr.meta["spo_probs"], tr.meta["spo_cuts"]
            assert cuts == [i for i, p in enumerate(probs) if p < 0.9]
            assert len(tr.meta["spo_values"]) == len(cuts)
            assert all(0.0 <= v <= 1.0 for v in tr.meta["spo_values"])
            # trained exactly on the tokens below the threshold
            assert tr.loss_mask == [1.0 if p < 0.9 else 0.0 for p in probs]
    # whitened per step: the first step's trained tokens have mean 0 and unbiased std 1
    flat = torch.tensor(
        [
            a
            for g in groups[:4]
            for tr in g.trajectories
            for a, m in zip(tr.advantages, tr.loss_mask, strict=True)
            if m
        ],
        dtype=torch.float64,
    )
    assert abs(flat.mean().item()) < 1e-6 and flat.std().item() == pytest.approx(1.0, abs=1e-5)


def test_spo_tree_trains_on_segments_credited_against_their_parent(small_experiment, tmp_path):
    spec = {
        "variant": "tree",
        "branch_factors": [2, 2, 2],
        "segment_tokens": 8,
        "max_segments_per_prompt": 6,
    }
    t, groups, sampled, ledger, rows, changed = _train(small_experiment, tmp_path, spec)
    assert t.step == 2 and changed and all(math.isfinite(r["loss"]) for r in rows)
    assert ledger["generated_tokens"] == sampled and sampled["tree_expansion"] > 0
    assert len(groups) == 2 * 4  # one tree per prompt
    for g in groups:
        depth0 = [tr for tr in g.trajectories if tr.meta["spo_depth"] == 0]
        assert len(depth0) == 2 and all(tr.prefix_len == 0 for tr in depth0)
        # V(root) is the mean of its children's values
        assert g.meta["root_value"] == pytest.approx(sum(tr.meta["spo_value"] for tr in depth0) / 2)
        kept = [tr for tr in g.trajectories if tr.meta["spo_kept"]]
        assert len(kept) <= 6
        for tr in g.trajectories:
            assert tr.meta["spo_advantage"] == pytest.approx(
                tr.meta["spo_value"] - tr.meta["spo_parent_value"]
            )
            # a segment below depth 0 continues an 8-token segment of its parent
            assert tr.prefix_len == 8 * tr.meta["spo_depth"]
            assert len(tr.completion_ids) - tr.prefix_len <= (8 if tr.meta["spo_depth"] < 2 else 48)
        for tr in kept:
            assert tr.meta["spo_advantage"] != 0  # zero-advantage segments are dropped
            # the context (the parent's path) is never trained
            assert tr.loss_mask[: tr.prefix_len] == [0.0] * tr.prefix_len
            probs = tr.meta["spo_probs"]
            assert tr.loss_mask[tr.prefix_len :] == [
                1.0 if p < 0.9 else 0.0 for p in probs[tr.prefix_len :]
            ]
    assert [r["spo/kept_segments"] for r in rows] == [
        sum(tr.meta["spo_kept"] for g in groups[4 * s : 4 * s + 4] for tr in g.trajectories)
        for s in range(2)
    ]
