"""PPO with a critic (methods/ppo.py): GAE and the value loss by hand, the credit the critic
gives, the critic's update and ledger, and a killed PPO run resuming bitwise equal."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from conftest import small_config
from safetensors.torch import load_file

from creditbench.diagnostics import _context, load_base
from creditbench.methods import load_method
from creditbench.rollouts import Group, Trajectory

ppo = load_method("ppo")


# ----------------------------------------------------------------------- pure functions
def test_gae_on_a_three_token_trajectory_by_hand():
    # R = 1, V = (0.5, 0.25, 0.75), V(s_3) = 0
    rewards = ppo.token_rewards(3, 1.0)
    assert rewards == [0.0, 0.0, 1.0]
    values = [0.5, 0.25, 0.75]
    # gamma 1, lam 0.5: delta = (0.25 - 0.5, 0.75 - 0.25, 1 - 0.75) = (-0.25, 0.5, 0.25)
    # A_2 = 0.25, A_1 = 0.5 + 0.5 * 0.25 = 0.625, A_0 = -0.25 + 0.5 * 0.625 = 0.0625
    adv, ret = ppo.gae(rewards, values, gamma=1.0, lam=0.5)
    assert adv == pytest.approx([0.0625, 0.625, 0.25])
    assert ret == pytest.approx([0.5625, 0.875, 1.0])
    # gamma 0.9, lam 1: delta = (0.9 * 0.25 - 0.5, 0.9 * 0.75 - 0.25, 1 - 0.75)
    #                         = (-0.275, 0.425, 0.25)
    # A_2 = 0.25, A_1 = 0.425 + 0.9 * 0.25 = 0.65, A_0 = -0.275 + 0.9 * 0.65 = 0.31
    adv, ret = ppo.gae(rewards, values, gamma=0.9, lam=1.0)
    assert adv == pytest.approx([0.31, 0.65, 0.25])
    assert ret == pytest.approx([0.81, 0.9, 1.0])
    # lam 0: one-step TD errors
    adv, _ = ppo.gae(rewards, values, gamma=1.0, lam=0.0)
    assert adv == pytest.approx([-0.25, 0.5, 0.25])


def test_gae_with_gamma_and_lambda_one_is_the_return_minus_the_value():
    """The code's PPO settings (gamma 1, lam 1): A_t = R(y) - V(s_t), returns = R(y)."""
    values = [0.3, -0.2, 0.9, 0.1]
    adv, ret = ppo.gae(ppo.token_rewards(4, 1.0), values, 1.0, 1.0)
    assert adv == pytest.approx([1 - v for v in values])
    assert ret == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match="3 rewards for 2 values"):
        ppo.gae([0, 0, 1], [0.1, 0.2], 1.0, 1.0)
    with pytest.raises(ValueError, match="at least one token"):
        ppo.token_rewards(0, 1.0)


def test_value_loss_is_the_clipped_squared_error_by_hand():
    values = torch.tensor([[0.5, 0.9, 0.9]], requires_grad=True)
    old = torch.tensor([[0.4, 0.4, 0.4]])
    returns = torch.tensor([[1.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    # token 0: V inside [0.2, 0.6]: both terms (0.5 - 1)^2 = 0.25
    # token 1: clipped V 0.6: max((0.9)^2, (0.6)^2) = 0.81 (unclipped term, gradient flows)
    # token 2: clipped V 0.6: max((0.1)^2, (0.4)^2) = 0.16 (clipped term: no gradient)
    loss, st = ppo.value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.81 + 0.16) / 3)
    assert st["clip_fraction"] == pytest.approx(1 / 3)
    assert st["mse"] == pytest.approx((0.25 + 0.81 + 0.01) / 3)
    loss.backward()
    # d/dV of 0.5 (V - G)^2 / 3 = (V - G) / 3 where the unclipped term wins, else 0
    assert values.grad[0].tolist() == pytest.approx([(0.5 - 1) / 3, 0.9 / 3, 0.0])
    # no clipping; a masked token and the minibatch's token count as the normaliser
    loss, st = ppo.value_loss(
        values.detach(), old, returns, torch.tensor([[1.0, 1.0, 0.0]]), None, num_tokens=4
    )
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.81) / 4)
    assert st["clip_fraction"] == 0.0


# ------------------------------------------------------------------ the method on a model
def _method(exp, **params):
    cfg = small_config(runs={"ppo": {"method": "ppo", **params}})
    run = cfg.run("ppo")
    base = load_base(cfg, exp["base"], exp["data"], trainable=True)
    ctx = _context(base, run.sampling, run, seed=0)
    return ppo.Method(ppo.Params(**run.params), ctx), ctx, run


def _trajs(ctx, n=6):
    problems = ctx.task.load("train")[:n]
    out = []
    for i, prob in enumerate(problems):
        text = ["1+2=3\n", "A:7", "3*3=9\nA:9"][i % 3]
        ids = ctx.tokenizer(text, add_special_tokens=False).input_ids
        out.append(
            Trajectory(
                prob,
                ctx.prompt_ids(prob),
                ids,
                ctx.sampler.decode(ids),
                float(i % 2),
                "rollout",
                [len(ids)],
            )
        )
    return out


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_ppo_credit_is_gae_of_the_critics_values(small_experiment, critic):
    """A critic whose head predicts the constant b: A_t = R - b on every token with the
    code's gamma = lam = 1 (unwhitened), and only the last token carries R - b with
    lam = 0; the returns are R."""
    m, ctx, run = _method(small_experiment, critic=critic, whiten=False)
    assert run.loss.beta == 1e-4 and run.loss.aggregation == "dapo" and run.train.epochs == 2
    head = m.critic.unwrapped.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(0.25)
    trajs = _trajs(ctx)
    trained = m.advantages([Group(trajs)])
    for t in trained:
        assert t.advantages == pytest.approx([t.reward - 0.25] * len(t.completion_ids))
        assert t.meta["returns"] == pytest.approx([t.reward] * len(t.completion_ids))
        assert t.meta["values"] == pytest.approx([0.25] * len(t.completion_ids))
    m0, ctx0, _ = _method(small_experiment, critic=critic, whiten=False, lam=0.0)
    with torch.no_grad():
        m0.critic.unwrapped.head.weight.zero_()
        m0.critic.unwrapped.head.bias.fill_(0.25)
    for t in m0.advantages([Group(_trajs(ctx0))]):
        n = len(t.completion_ids)
        assert t.advantages == pytest.approx([0.0] * (n - 1) + [t.reward - 0.25])
    # whitened (the default): zero mean, unit unbiased std over the batch's tokens
    mw, ctxw, _ = _method(small_experiment, critic=critic)
    flat = torch.tensor([a for t in mw.advantages([Group(_trajs(ctxw))]) for a in t.advantages])
    assert flat.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert flat.std().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_the_critic_learns_the_returns_and_is_charged_to_the_ledger(small_experiment, critic):
    m, ctx, run = _method(small_experiment, critic=critic, critic_lr=3e-3)
    trajs = _trajs(ctx)
    tokens = sum(len(t.prompt_ids) + len(t.completion_ids) for t in trajs)
    before = ctx.ledger.forwarded.get("critic_forward", 0)
    m.advantages([Group(trajs)])
    assert ctx.ledger.forwarded["critic_forward"] - before == tokens
    first = m.update(trajs, 0)
    assert m.critic.steps == run.train.epochs * run.train.minibatches == 2
    if critic == "separate":  # 2 epochs x 1 minibatch, forward + backward of the batch
        assert ctx.ledger.forwarded["critic_update"] == 2 * tokens
    else:  # the head on the completion tokens; the trunk's forward is a critic forward
        completion = sum(len(t.completion_ids) for t in trajs)
        assert ctx.ledger.forwarded["critic_update"] == 2 * completion
        assert ctx.ledger.forwarded["critic_forward"] == 2 * tokens
    assert {"critic/loss", "critic/mse", "critic/clip_fraction", "critic/grad_norm"} <= set(first)
    for _ in range(15):
        m.advantages([Group(trajs)])  # fresh V_old for the clip, as every training step
        last = m.update(trajs, 1)
    assert last["critic/mse"] < 0.5 * first["critic/mse"], (first, last)
    # the policy is not touched by the critic's update
    if critic == "head":
        assert all(p.grad is None for p in ctx.model.parameters())


def test_a_bad_ppo_parameter_is_rejected_naming_it():
    from creditbench.config import ConfigError

    with pytest.raises(ConfigError, match="critic"):
        small_config(runs={"ppo": {"method": "ppo", "critic": "shared"}})
    with pytest.raises(ConfigError, match="value_clip"):
        small_config(runs={"ppo": {"method": "ppo", "value_clip": -1}})


# --------------------------------------------------------------- killed and resumed run
def _cli(exp, tmp_path, out, critic):
    cfg = exp["cfg"].model_dump(mode="json")
    cfg["train"].update(steps=4, checkpoint_every=2, eval_every=0)
    cfg["runs"] = {"ppo": {"method": "ppo", "critic": critic, "critic_lr": 1e-3}}
    path = tmp_path / f"config_{critic}.json"
    path.write_text(json.dumps(cfg))
    return [
        "creditbench", "--threads", "1", "train", "-c", str(path), "--run", "ppo",
        "--seed", "0", "--init", str(exp["base"]), "--data", str(exp["data"]), "--out", str(out),
    ]  # fmt: skip


@pytest.mark.parametrize("critic", ["separate", "head"])
def test_a_killed_ppo_run_resumes_bitwise_equal_critic_included(small_experiment, tmp_path, critic):
    """SIGKILL after step 3's policy step (its checkpoint is step 2's): the same command
    resumes and ends with the policy, the critic and the metrics of an uninterrupted run."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.run(
        _cli(small_experiment, tmp_path, full, critic), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "CREDITBENCH_FAULT": "optimizer:3"}
    cmd = _cli(small_experiment, tmp_path, killed, critic)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (killed / "model").exists() and not (killed / "owned").exists()
    ckpts = sorted(p.name for p in (killed / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000002"]
    state = torch.load(killed / "checkpoints" / ckpts[0] / "state.pt", weights_only=False)
    assert set(state["owned"]) == {"critic"} and state["owned"]["critic"]["steps"] == 4
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2/4 [00:00<?" in proc.stderr  # its progress bar starts at the checkpoint

    wa, wb = (
        load_file(full / "model" / "model.safetensors"),
        load_file(killed / "model" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = torch.load(full / "owned" / "critic.pt", weights_only=True)
    cb = torch.load(killed / "owned" / "critic.pt", weights_only=True)
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    init = ppo.ValueModel(ca["head.weight"].shape[1], seed=0).head.weight
    assert not torch.equal(ca["head.weight"], init)  # the critic was trained
    if critic == "separate":
        assert any(k.startswith("backbone.") for k in ca)
    else:
        assert set(ca) == {"head.weight", "head.bias"}
    rows = [
        [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (full, killed)
    ]
    assert [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    for ra, rb in zip(*rows, strict=True):
        for key in ("reward", "loss", "critic/loss", "critic/mse", "generated_tokens"):
            assert ra[key] == rb[key], key
    ledgers = [json.loads((d / "ledger.json").read_text()) for d in (full, killed)]
    assert ledgers[0]["forwarded_tokens"] == ledgers[1]["forwarded_tokens"]
    assert ledgers[0]["forwarded_tokens"]["critic_forward"] > 0
    assert ledgers[0]["forwarded_tokens"]["critic_update"] > 0


# ------------------------------------------------------------------ critic diagnostics
def _truth():
    """Two probes (states by prefix length) and three ranking pairs, one of them unclear."""
    probes = [
        {"prompt_ids": [1], "completion_ids": [5, 6, 7], "thought_ends": [1, 3],
         "values": [0.5, 0.8]},
        {"prompt_ids": [2], "completion_ids": [8, 9], "thought_ends": [2], "values": [0.25]},
    ]  # fmt: skip
    records = [
        # open vs open: truth a > b
        {"prompt_ids": [1], "side_ids": [[5, 6], [5, 9]], "terminal": [False, False],
         "values": [0.9, 0.1], "gap": 0.8, "clear": True},
        # terminal (reward 1) vs open: truth a > b
        {"prompt_ids": [2], "side_ids": [[8], [9]], "terminal": [True, False],
         "values": [1.0, 0.4], "gap": 0.6, "clear": True},
        # not clear: never scored
        {"prompt_ids": [2], "side_ids": [[7], [6]], "terminal": [False, False],
         "values": [0.5, 0.45], "gap": 0.05, "clear": False},
    ]  # fmt: skip
    mc = {"1": {"accuracy": 0.6, "se": 0.1, "pairs": 2}, "16": {"accuracy": 0.9, "pairs": 2}}
    return {"probes": probes, "ranking": {"records": records, "accuracy": mc}}


def test_critic_diagnostics_score_value_error_and_ranking_by_hand():
    from creditbench.diagnostics import critic_diagnostics, critic_table

    truth = _truth()
    true_v = {(1,): 0.5, (1, 5): 0.8, (2,): 0.25, (1, 5, 6): 0.9, (1, 5, 9): 0.1, (2, 9): 0.4}
    seen = []

    def exact(states):
        seen.extend(states)
        return [true_v[(*p, *s)] for p, s in states]

    res = critic_diagnostics(truth, exact)
    # the probe states s_0 = prompt, s_1 = prompt + first thought; the open ranking sides
    assert seen[:3] == [([1], []), ([1], [5]), ([2], [])]
    assert seen[3:] == [([1], [5, 6]), ([1], [5, 9]), ([2], [9])]
    assert res["value_error"]["mae"] == 0 and res["value_error"]["states"] == 3
    assert res["ranking"]["critic"] == {"accuracy": 1.0, "se": 0.0, "pairs": 2}
    assert res["ranking"]["mc"]["16"]["accuracy"] == 0.9

    # a constant critic: off by (0.5 - 0.5, 0.5 - 0.8, 0.5 - 0.25); ties the open pair (1/2)
    # and ranks the terminal side (1.0) above the open one (0.5): (0.5 + 1) / 2
    res = critic_diagnostics(truth, lambda states: [0.5] * len(states))
    ve = res["value_error"]
    assert ve["mae"] == pytest.approx((0 + 0.3 + 0.25) / 3)
    assert ve["bias"] == pytest.approx((0 - 0.3 + 0.25) / 3)
    assert ve["rmse"] == pytest.approx(((0.09 + 0.0625) / 3) ** 0.5)
    assert res["ranking"]["critic"]["accuracy"] == 0.75
    # a reversed critic: both pairs wrong (the terminal side 1.0 vs 1 - 0.4 = 0.6 is right)
    res = critic_diagnostics(truth, lambda st: [1 - true_v[(*p, *s)] for p, s in st])
    assert res["ranking"]["critic"]["accuracy"] == 0.5
    assert res["value_error"]["pearson"] == pytest.approx(-1.0)
    table = critic_table([{"point": "step 0", **res}])
    assert "| step 0 | 2 | 50.0 ± 50.0 | 60.0 ± 10.0 | 90.0 |" in table


@pytest.mark.parametrize(
    "name",
    [f"ppo_{m}_{t}.yaml" for m in ("rhomath-1.1b", "deepseekmath-7b") for t in ("math", "gsm8k")],
)
def test_the_ppo_configs_carry_the_vineppo_papers_ppo_baseline(name):
    """McGill-NLP/VinePPO configs/polIter_*_ppo_*.jsonnet: trainers/ppo_MATH.jsonnet (gamma
    1.0, cliprange_value 0.2, whitened advantages, a separate critic from the SFT checkpoint,
    2 epochs) with lam1.jsonnet (lam 1), refKl0.0001 and klLoss (KL 1e-4 in the loss,
    clamped to [0, 10], summed per sequence)."""
    from pathlib import Path

    from creditbench.config import load_experiment

    cfg = load_experiment(Path(__file__).resolve().parent.parent / "paper_configs" / name)
    run = cfg.run("ppo")
    p = ppo.Params(**run.params)
    assert (p.critic, p.gamma, p.lam, p.value_clip, p.whiten) == ("separate", 1.0, 1.0, 0.2, True)
    assert p.critic_lr is None and run.train.lr == 1e-6  # the critic takes the actor's lr
    assert run.train.epochs == 2 and run.train.max_grad_norm == 1.0
    loss = run.loss
    assert (loss.clip, loss.epsilon, loss.beta, loss.kl_clamp) == (True, 0.2, 1e-4, 10.0)
    assert (loss.kl_reduction, loss.aggregation) == ("sequence_sum", "dapo")


def test_the_critic_over_training_is_loaded_from_the_run_and_scored(small_experiment, tmp_path):
    """A 2-step PPO run (value head, a checkpoint each step): the warm start's initial
    critic and each kept point's critic are scored against that policy's truth; the critic
    loaded from the run's files gives the trained critic's values exactly."""
    from creditbench.diagnostics import DiagnosticsSettings, critic_over_training, critic_table
    from creditbench.train import Trainer

    exp = small_experiment
    cfg = small_config(
        runs={"ppo": {"method": "ppo", "critic": "head", "critic_lr": 1e-2}},
        train={"steps": 2, "checkpoint_every": 1, "keep_checkpoints": 1},
    )
    trainer = Trainer(cfg.run("ppo"), 0, exp["base"], exp["data"], tmp_path / "run")
    trainer.train()
    settings = DiagnosticsSettings(
        probes=2, pool=8, mc_rollouts=4, ranking_ks=(1, 2), ranking_candidates=3,
        ranking_truth_rollouts=4, ranking_min_gap=0.0, ranking_min_z=0.0,
    )  # fmt: skip
    rows = critic_over_training(cfg, "ppo", tmp_path / "run", exp["base"], exp["data"], settings)
    assert [r["point"] for r in rows] == ["step 0", "step 2"]  # the final is step 2's
    for r in rows:
        assert r["value_error"]["states"] >= 2
        assert r["ranking"]["critic"]["pairs"] == r["ranking"]["mc"]["1"]["pairs"]
    assert "| step 0 |" in critic_table(rows) and "MC K=2" in critic_table(rows)
    # the critic as the run saved it is the trained critic (values of the same states)
    from creditbench.diagnostics import _context, build_method, load_base, load_owned

    base = load_base(cfg, tmp_path / "run" / "model", exp["data"])  # final: has a tokenizer
    method = build_method(cfg.run("ppo"), _context(base, cfg.run("ppo").sampling, cfg.run("ppo")))
    load_owned(method, tmp_path / "run" / "owned")
    probe = trainer.train_problems[0]
    states = [(trainer.sampler.encode_prompt(probe.prompt), [])]
    assert method.state_values(states) == trainer.method.state_values(states)
    fresh = build_method(cfg.run("ppo"), _context(base, cfg.run("ppo").sampling, cfg.run("ppo")))
    assert fresh.state_values(states) != method.state_values(states)
