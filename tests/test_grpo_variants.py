"""GRPO's variants that are parameters: RLOO's leave-one-out baseline, Dr. GRPO's
constant length normaliser, DAPO's token aggregation; hand-computed values and a run."""

from __future__ import annotations

import pytest
import torch
from conftest import small_config

from creditbench.loss import batch_loss
from creditbench.methods import MethodContext, load_method
from creditbench.rollouts import Batch, Group, Trajectory
from creditbench.tasks import Problem
from creditbench.train import Trainer

grpo = load_method("grpo")


def test_leave_one_out_baseline_by_hand():
    # rewards 1, 0, 0, 1: each minus the mean of the other three
    got = grpo.leave_one_out([1.0, 0.0, 0.0, 1.0])
    assert got == pytest.approx([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])
    # = G / (G - 1) (R - mean R)
    assert got == pytest.approx([4 / 3 * 0.5, -4 / 3 * 0.5, -4 / 3 * 0.5, 4 / 3 * 0.5])
    assert grpo.leave_one_out([1.0, 1.0, 1.0]).tolist() == [0.0, 0.0, 0.0]
    assert grpo.leave_one_out([1.0]).tolist() == [0.0]
    # with a std convention the centred rewards are scaled as GRPO's: unbiased std of
    # 1, 0, 0 is sqrt(1/3)
    scaled = grpo.leave_one_out([1.0, 0.0, 0.0], std="unbiased", eps=0.0)
    assert scaled == pytest.approx(
        [1.0 / (1 / 3) ** 0.5, -0.5 / (1 / 3) ** 0.5, -0.5 / (1 / 3) ** 0.5]
    )


class _Cfg:
    max_new_tokens = 10


class _Sampler:
    cfg = _Cfg()


def _traj(n: int, reward: float) -> Trajectory:
    problem = Problem("p", "1+1\n", "2", {})
    return Trajectory(problem, [1, 2], list(range(3, 3 + n)), "", reward, "rollout", [n])


def test_dr_grpo_scales_each_advantage_by_its_length_over_the_budget():
    ctx = MethodContext(None, None, _Sampler(), None, None, run=None)
    method = grpo.Method(grpo.Params(std="none", length_norm="max_new_tokens"), ctx)
    short, long = _traj(2, 1.0), _traj(5, 0.0)
    method.advantages([Group([short, long])])
    assert short.advantages == pytest.approx([0.5 * 2 / 10] * 2)
    assert long.advantages == pytest.approx([-0.5 * 5 / 10] * 5)
    # under aggregation grpo the loss is Dr. GRPO's sum over tokens / (B * L)
    batch = Batch.from_trajectories([short, long], pad_id=0)
    lp = torch.zeros(2, 5)
    lp.requires_grad_(True)
    cfg = small_config().run("grpo").loss
    loss, _ = batch_loss(lp, batch, cfg, None, None)
    loss.backward()
    # d loss / d logp_t = -A_i / (B L) on each real token (ratio 1, inside the clip)
    want = torch.tensor([[-0.5 / 20] * 2 + [0.0] * 3, [0.5 / 20] * 5])
    assert torch.allclose(lp.grad, want)


def test_dr_grpo_refuses_a_token_level_aggregation():
    cfg = small_config(
        runs={
            "dr": {
                "method": "grpo",
                "length_norm": "max_new_tokens",
                "loss": {"aggregation": "dapo"},
            }
        }
    )
    ctx = MethodContext(None, None, _Sampler(), None, None, run=cfg.run("dr"))
    with pytest.raises(ValueError, match="run 'dr'.*needs loss.aggregation: grpo, got 'dapo'"):
        grpo.Method(grpo.Params(**cfg.run("dr").params), ctx)


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "grpo", "baseline": "leave_one_out", "std": "none"},
        {"method": "grpo", "std": "none", "length_norm": "max_new_tokens"},
        {"method": "grpo", "loss": {"aggregation": "dapo"}},
    ],
    ids=["rloo", "dr_grpo", "dapo"],
)
def test_variant_trains_two_steps(spec, small_experiment, tmp_path):
    cfg = small_config(train={"steps": 2}, runs={"v": spec})
    run = cfg.run("v")
    t = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train()
    assert t.step == 2
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_the_extended_experiment_validates_every_new_run():
    from pathlib import Path

    from creditbench.config import load_experiment

    cfg = load_experiment(Path(__file__).resolve().parent.parent / "experiments/extended.yaml")
    runs = cfg.all_runs()
    assert {"grpo", "spo_chain", "spo_tree", "tempo", "dr_grpo", "dapo", "rloo"} <= set(runs)
    assert runs["spo_tree"].params["variant"] == "tree"
    assert runs["rloo"].params["baseline"] == "leave_one_out"
    assert runs["dr_grpo"].params["length_norm"] == "max_new_tokens"
    assert runs["dapo"].loss.aggregation == "dapo" and runs["dr_grpo"].loss.aggregation == "grpo"
    assert runs["spo_chain"].loss.beta == 1e-4 and runs["tempo"].loss.beta == 0.0
