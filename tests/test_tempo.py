"""TEMPO: the prefix tree's values, the branch gate, GRPO where nothing branches; a short run."""

from __future__ import annotations

import json
import math

import pytest
from conftest import small_config

from creditbench.methods import load_method
from creditbench.rollouts import group_normalise
from creditbench.train import Trainer

tempo = load_method("tempo")


def test_prefix_tree_values_are_the_mean_signal_of_the_completions_through_a_node():
    root = tempo.prefix_tree([[1, 2, 3], [1, 2, 4], [5, 6], [1, 7]], [0.5, -0.5, -0.5, 0.5])
    assert (root.count, root.value) == (4, 0.0)
    one = root.children[1]
    assert (one.count, one.value) == (3, pytest.approx(1 / 6))
    assert one.children[2].value == 0.0 and one.children[7].value == 0.5
    assert root.children[5].children[6].value == -0.5
    assert one.children[7].ends == 1 and one.ends == 0
    with pytest.raises(ValueError, match="2 sequences but 1 outcome"):
        tempo.prefix_tree([[1], [2]], [1.0])


def test_branching_tree_worked_by_hand():
    """Rewards 1, 0, 0, 1 with ``std: none``: norm = R - 0.5 = +-0.5, and V averages it.
    V(root) = 0, V(1) = 1/6, V(1,2) = 0, V(1,7) = 0.5, V(5) = -0.5; the root, (1) and
    (1,2) branch, (5) does not, so token 6 is GRPO's."""
    seqs = [[1, 2, 3], [1, 2, 4], [5, 6], [1, 7]]
    adv, gates = tempo.tempo_advantages(seqs, [1.0, 0.0, 0.0, 1.0], std="none")
    assert adv[0] == pytest.approx([0.5 + 1 / 6, 0.5 - 1 / 6, 0.5 + 0.5])
    assert adv[1] == pytest.approx([-0.5 + 1 / 6, -0.5 - 1 / 6, -0.5 - 0.5])
    assert adv[2] == pytest.approx([-0.5 - 0.5, -0.5])
    assert adv[3] == pytest.approx([0.5 + 1 / 6, 0.5 + (0.5 - 1 / 6)])
    assert gates == [[True, True, True], [True, True, True], [True, False], [True, True]]
    # the TD terms of a fully gated path telescope to V(leaf) - V(root) = norm(R)_i
    assert sum(adv[0]) - 3 * 0.5 == pytest.approx(0.5)
    # td_coef scales the TD term only; raw rewards as the value target
    half, _ = tempo.tempo_advantages(seqs, [1.0, 0.0, 0.0, 1.0], std="none", td_coef=0.5)
    assert half[0] == pytest.approx([0.5 + 1 / 12, 0.5 - 1 / 12, 0.75])
    raw, _ = tempo.tempo_advantages(seqs, [1.0, 0.0, 0.0, 1.0], std="none", value_target="reward")
    # V(root) = 0.5, V(1) = 2/3, V(1,2) = 0.5, V(1,2,3) = 1
    assert raw[0] == pytest.approx([0.5 + 1 / 6, 0.5 - 1 / 6, 0.5 + 0.5])


def test_no_branch_reduces_to_grpo():
    """Completions that share a prefix: the shared tokens do not branch (one next token,
    no completion ends there), so they carry GRPO's advantage exactly; with ``td_coef`` 0
    every token does."""
    seqs = [[9, 9, 1], [9, 9, 2], [9, 9, 3, 3]]
    rewards = [1.0, 0.0, 0.0]
    grpo = group_normalise(rewards)  # unbiased std, eps 1e-4
    adv, gates = tempo.tempo_advantages(seqs, rewards)
    for i, a in enumerate(adv):
        assert a[:2] == pytest.approx([grpo[i]] * 2)  # the non-branching tokens
        assert gates[i][:2] == [False, False]
    # at (9, 9) the TD term is V(child) - V(9, 9) = norm_i - mean(norm) = norm_i
    assert [a[2] for a in adv] == pytest.approx([2 * g for g in grpo])
    assert adv[2][3] == pytest.approx(grpo[2])  # (9, 9, 3) has one child: GRPO again
    flat, _ = tempo.tempo_advantages(seqs, rewards, td_coef=0.0)
    assert flat == [pytest.approx([g] * len(s)) for g, s in zip(grpo, seqs, strict=True)]
    # a group of identical completions has no branch at all
    same, gates = tempo.tempo_advantages([[4, 5]] * 3, [1.0, 1.0, 1.0])
    assert same == [[0.0, 0.0]] * 3 and gates == [[False, False]] * 3


def test_a_completion_that_ends_at_a_node_makes_it_branch():
    # (1) ends one completion and continues another with token 2
    seqs, rewards = [[1], [1, 2]], [1.0, 0.0]
    adv, gates = tempo.tempo_advantages(seqs, rewards, std="none")
    assert gates[1] == [False, True]  # the root has one child, (1) branches by the end
    assert adv[1] == pytest.approx([-0.5, -0.5 + (-0.5 - 0.0)])
    off, gates = tempo.tempo_advantages(seqs, rewards, std="none", end_counts_as_branch=False)
    assert gates[1] == [False, False] and off[1] == pytest.approx([-0.5, -0.5])


# ----------------------------------------------------------------------------- a short run
def test_tempo_trains_and_logs_its_branch_tokens(small_experiment, tmp_path):
    cfg = small_config(train={"steps": 2}, runs={"tempo": {"method": "tempo"}})
    run = cfg.run("tempo")
    assert (run.loss.clip, run.loss.aggregation, run.loss.beta) == (True, "grpo", 0.0)
    t = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path)
    trained = []
    advantages = t.method.advantages

    def recording(groups):
        out = advantages(groups)
        trained.extend(out)
        return out

    t.method.advantages = recording
    ledger = t.train()
    assert t.step == 2 and set(ledger["generated_tokens"]) == {"rollout"}
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    # every group of 4 completions starts at the root, a branch unless all 4 agree
    assert all(r["tempo/tokens"] > r["tempo/branch_tokens"] > 0 for r in rows)
    assert len(trained) == 2 * 4 * 4
    # where the first token is not a branch, a completion's advantages are one value
    # (GRPO's) until its first branching token
    for traj in trained:
        assert len(traj.advantages) == len(traj.completion_ids)
