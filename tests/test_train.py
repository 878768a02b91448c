"""The train loop: exact resume, the ledger's arithmetic, outputs, and failing fast."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from creditbench import faults
from creditbench.train import (
    PREEMPTED_EXIT_STATUS,
    Preempted,
    Trainer,
    checkpoint_problem,
    problems_for_step,
)


def _weights(model_dir):
    return load_file(model_dir / "model.safetensors")


def _trainer(exp, out, **train):
    run = (
        exp["cfg"]
        .run("grpo")
        .model_copy(update={"train": exp["cfg"].run("grpo").train.model_copy(update=train)})
    )
    return Trainer(run, 0, exp["base"], exp["data"], out)


def test_resumed_run_ends_bitwise_equal_to_uninterrupted_run(small_experiment, tmp_path):
    full = _trainer(small_experiment, tmp_path / "full", steps=4, checkpoint_every=2)
    full.train()

    first = _trainer(small_experiment, tmp_path / "resumed", steps=4, checkpoint_every=2)
    first.train(until_step=3)  # stops after step 3; its last checkpoint is step 3's
    assert not (tmp_path / "resumed" / "model").exists()
    assert first.step == 3
    # a fresh process: new trainer, same directory
    second = _trainer(small_experiment, tmp_path / "resumed", steps=4, checkpoint_every=2)
    second.train()
    assert second.step == 4

    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "resumed" / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows_b] == [1, 2, 3, 4]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ra, rb = json.loads(ra), json.loads(rb)
        assert ra["reward"] == rb["reward"] and ra["loss"] == rb["loss"]
        assert ra["generated_tokens"] == rb["generated_tokens"]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda c: (c / "COMPLETE").unlink(), "no COMPLETE marker"),
        (lambda c: (c / "COMPLETE").write_text("{not json"), "marker is unreadable"),
        (lambda c: (c / "model" / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda c: (c / "state.pt").unlink(), "state.pt is missing"),
        (lambda c: (c / "state.pt").write_bytes(b"\0" * 10), "state.pt has 10 bytes"),
    ],
    ids=["no-marker", "bad-marker", "missing-weights", "missing-state", "truncated-state"],
)
def test_resume_detects_a_damaged_checkpoint_and_uses_the_previous_one(
    small_experiment, tmp_path, caplog, damage, problem
):
    t = _trainer(small_experiment, tmp_path / "r", steps=4, checkpoint_every=1)
    t.train(until_step=2)
    ckpt = tmp_path / "r" / "checkpoints" / "step_000002"
    assert checkpoint_problem(ckpt) is None
    manifest = json.loads((ckpt / "COMPLETE").read_text())
    assert manifest["step"] == 2
    assert manifest["files"]["state.pt"] == (ckpt / "state.pt").stat().st_size
    assert "model/model.safetensors" in manifest["files"]
    damage(ckpt)
    assert problem in checkpoint_problem(ckpt)
    again = _trainer(small_experiment, tmp_path / "r", steps=4, checkpoint_every=1)
    with caplog.at_level("WARNING", logger="creditbench.train"):
        assert again.try_resume()
    assert again.step == 1  # step 2's checkpoint is never loaded
    assert problem in caplog.text and "step_000002" in caplog.text


def test_resume_drops_a_torn_metrics_line(small_experiment, tmp_path):
    t = _trainer(small_experiment, tmp_path / "r", steps=3, checkpoint_every=1, eval_every=0)
    t.train(until_step=2)
    partial = tmp_path / "r" / "metrics.partial.jsonl"
    with partial.open("a") as f:
        f.write('{"step": 3, "rew')  # killed while writing step 3's row
    again = _trainer(small_experiment, tmp_path / "r", steps=3, checkpoint_every=1, eval_every=0)
    again.train()
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_a_fault_spec_is_parsed_or_rejected_naming_the_entry():
    assert faults.parse("generate:2, checkpoint:13") == {("generate", 2), ("checkpoint", 13)}
    assert faults.parse(None) == set() and faults.parse("") == set()
    with pytest.raises(ValueError, match="'optimiser:2'"):
        faults.parse("optimiser:2")
    with pytest.raises(ValueError, match="'generate'"):
        faults.parse("generate")


def test_ledger_generated_tokens_equal_sum_of_sampled_completion_lengths(
    small_experiment, tmp_path
):
    t = _trainer(small_experiment, tmp_path / "l", steps=3, eval_every=1)
    sampled = []
    collect = t.method.collect

    def recording_collect(problems, step):
        groups = collect(problems, step)
        sampled.extend(
            len(tr.completion_ids) - tr.prefix_len for g in groups for tr in g.trajectories
        )
        return groups

    t.method.collect = recording_collect
    ledger = t.train()
    n_rollouts = 3 * 4 * 4  # steps x prompts x group size
    assert len(sampled) == n_rollouts
    assert ledger["generated_tokens"] == {"rollout": sum(sampled)}
    assert ledger["total_generated_tokens"] == sum(sampled)
    on_disk = json.loads((tmp_path / "l" / "ledger.json").read_text())
    assert on_disk["total_generated_tokens"] == sum(sampled)
    # evaluation is not charged to the run's training compute, but its time is recorded
    assert "eval" not in on_disk["generated_tokens"] and on_disk["seconds"]["eval"] > 0
    last = json.loads((tmp_path / "l" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["generated_tokens"] == sum(sampled)
    assert "eval/test/accuracy" in last


def test_data_position_is_a_function_of_the_step():
    a = [problems_for_step(10, 4, s, seed=0) for s in range(5)]
    assert a == [problems_for_step(10, 4, s, seed=0) for s in range(5)]
    flat = [i for step in a for i in step]
    assert sorted(flat[:10]) == list(range(10))  # one epoch covers every prompt once
    assert sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled per epoch
    assert problems_for_step(10, 4, 0, seed=1) != a[0]


def test_trainer_refuses_a_missing_initial_model(small_experiment, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Trainer(
            small_experiment["cfg"].run("grpo"),
            0,
            tmp_path / "nope",
            small_experiment["data"],
            tmp_path / "o",
        )
    assert not (tmp_path / "o").exists()


def test_grpo_raises_the_reward_on_a_fixed_prompt_pool(small_experiment, tmp_path):
    """The learning signal reaches the weights: on a pool of 16 prompts revisited every
    two steps, GRPO's sampled reward climbs well above the warm start's."""
    t = _trainer(
        small_experiment,
        tmp_path / "g",
        steps=30,
        prompts_per_step=8,
        group_size=8,
        lr=1e-4,
        checkpoint_every=100,
        eval_every=0,
    )
    t.train_problems = t.train_problems[:16]
    t.train()
    rewards = [
        json.loads(r)["reward"] for r in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()
    ]
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert last > first + 0.1, (first, last)


def test_srpo_unclipped_loss_is_minus_a_mean_logprob_in_every_minibatch(
    small_experiment, tmp_path, monkeypatch
):
    """SRPO ``training/srpo_loss.py::compute_policy_loss_srpo`` computes
    ``-(adv * mean_t log_prob).mean()`` in every minibatch (``config/srpo_math500.yaml``:
    4 minibatches of 8 prompts per batch) and never reads ``old_log_prob``. With
    ``train.minibatches: 4`` each minibatch's loss is that, on the current weights, and
    not the ratio form ``-A * mean_t pi / pi_old``; no behaviour log-probs are computed."""
    import copy

    from conftest import small_config

    from creditbench import train as train_module
    from creditbench.loss import completion_logprobs
    from creditbench.rollouts import Batch, Trajectory

    cfg = small_config(runs={"srpo": {"method": "srpo", "train": {"minibatches": 4}}})
    run = cfg.run("srpo")
    assert (run.loss.clip, run.loss.unclipped_objective, run.loss.aggregation) == (
        False,
        "logprob",
        "grpo",
    )
    t = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path / "s")
    g = torch.Generator().manual_seed(0)
    tok = t.tokenizer
    vocab = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    trajs = []
    for i, problem in enumerate(t.train_problems[:8]):
        n = int(torch.randint(4, 16, (1,), generator=g))
        ids = [vocab[int(j)] for j in torch.randint(len(vocab), (n,), generator=g)]
        traj = Trajectory(
            problem,
            t.sampler.encode_prompt(problem.prompt),
            ids,
            tok.decode(ids),
            float(i % 2),
            "rollout",
            [n],
        )
        mask = [0.0] * (i % 3) + [1.0] * (n - i % 3)  # suffix-only rows, as SRPO's resets
        trajs.append(traj.set_credit([1.5, -0.5, 1.0, -2.0][i % 4], mask))
    initial = copy.deepcopy(t.model).eval()
    records = []
    real = train_module.batch_loss

    def recording(lp, part, loss_cfg, n_items=None, n_seq=None):
        loss, st = real(lp, part, loss_cfg, n_items, n_seq)
        with torch.no_grad():
            args = (part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask)
            now = completion_logprobs(t.model, *args).double()
            old = completion_logprobs(initial, *args).double()
        records.append((loss.item(), now, old, part, n_seq))
        return loss, st

    monkeypatch.setattr(train_module, "batch_loss", recording)
    t.update(Batch.from_trajectories(trajs, tok.pad_token_id))
    assert len(records) == 4  # one micro-batch per minibatch
    assert "old_logprobs" not in t.ledger.forwarded  # never computed
    for k, (loss, now, old, part, n_seq) in enumerate(records):
        m = (part.loss_mask * part.completion_mask).double()
        adv = part.advantages[:, 0].double()
        assert n_seq == len(part) == 2
        by_hand = -(adv * (now * m).sum(-1) / m.sum(-1)).sum() / n_seq
        assert loss == pytest.approx(by_hand.item(), abs=1e-5)
        ratio_form = -(adv * (torch.exp(now - old) * m).sum(-1) / m.sum(-1)).sum() / n_seq
        assert abs(loss - ratio_form.item()) > 0.1
        if k > 0:  # later minibatches see updated weights: pi differs from pi_old
            assert (now - old).abs().max() > 1e-6


# ------------------------------------------------------------ pre-emption and the run lock
def _cli_train(exp, tmp_path, out, **train):
    """The `creditbench train` command on the small experiment, with train overrides."""
    cfg = exp["cfg"].model_dump(mode="json")
    cfg["train"].update(train)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return [
        "creditbench", "--threads", "2", "train", "-c", str(path), "--run", "grpo",
        "--seed", "0", "--init", str(exp["base"]), "--data", str(exp["data"]), "--out", str(out),
    ]  # fmt: skip


def _rows(path):
    return [json.loads(r) for r in path.read_text().splitlines()]


def _assert_same_run(a, b):
    """Two finished runs: bitwise equal weights, the same metrics (not the timings)."""
    wa, wb = _weights(a / "model"), _weights(b / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    rows_a, rows_b = _rows(a / "metrics.jsonl"), _rows(b / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("reward", "loss", "generated_tokens", "lr"):
            assert ra[key] == rb[key], key
    ledger = [json.loads((d / "ledger.json").read_text()) for d in (a, b)]
    assert ledger[0]["total_generated_tokens"] == ledger[1]["total_generated_tokens"]


PREEMPT_STEPS = 8


@pytest.fixture(scope="module")
def cli_reference(small_experiment, tmp_path_factory):
    """An uninterrupted `creditbench train` run (8 steps, a checkpoint only at the end)."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    cmd = _cli_train(small_experiment, tmp, out, steps=PREEMPT_STEPS, checkpoint_every=100)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_scoring_passes_forward_the_update_micro_batches_each_at_its_own_width(
    small_experiment, tmp_path
):
    """The behaviour and reference log-probs (``Trainer._score``) are those of the whole
    padded batch, 0 past each row's end, from one forward per micro-batch of rows of
    similar length, each no wider than its own rows."""
    from conftest import small_config

    from creditbench.rollouts import Batch, Trajectory

    cfg = small_config(train={"micro_batch_size": 3})
    t = Trainer(cfg.run("grpo"), 0, small_experiment["base"], small_experiment["data"], tmp_path)
    g = torch.Generator().manual_seed(0)
    tok = t.tokenizer
    vocab = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    trajs = []
    for problem in t.train_problems[:7]:
        n = int(torch.randint(2, 20, (1,), generator=g))
        ids = [vocab[int(j)] for j in torch.randint(len(vocab), (n,), generator=g)]
        prompt = t.sampler.encode_prompt(problem.prompt)
        trajs.append(Trajectory(problem, prompt, ids, tok.decode(ids), 0.0, "rollout", [n]))
    batch = Batch.from_trajectories([tr.set_credit(1.0) for tr in trajs], tok.pad_token_id)
    widths = []
    hook = t.model.register_forward_pre_hook(
        lambda mod, a, kw: widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            got = t._score(t.model, batch, 1.0)
    finally:
        hook.remove()
    with torch.no_grad():
        whole = t._logprobs(t.model, batch, 1.0) * batch.completion_mask
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
    assert torch.all(got[batch.completion_mask == 0] == 0)
    lengths = [len(tr.completion_ids) for tr in trajs]
    prompts = [len(tr.prompt_ids) for tr in trajs]
    parts = batch.micro_batches(3)
    assert [len(part) for part in parts] == [3, 3, 1]
    want = [
        (len(part), max(prompts[i] for i in part) + max(lengths[i] for i in part)) for part in parts
    ]
    assert widths == want


def test_sigterm_checkpoints_the_current_step_exits_75_and_the_resumed_run_ends_equal(
    small_experiment, cli_reference, tmp_path
):
    """A real SIGTERM to a real training process, once its first step is recorded: it
    finishes the step it is in, checkpoints it (no step-count checkpoint is due), exits
    with the pre-emption status, and the same command then ends bitwise equal to the
    uninterrupted run."""
    out = tmp_path / "run"
    cmd = _cli_train(small_experiment, tmp_path, out, steps=PREEMPT_STEPS, checkpoint_every=100)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out / "metrics.partial.jsonl"
    deadline = time.monotonic() + 300
    while not (partial.is_file() and partial.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_STATUS == 75, stderr[-3000:]
    assert "SIGTERM received" in stderr and "pre-empted" in stderr
    steps = [r["step"] for r in _rows(partial)]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < PREEMPT_STEPS  # stopped early
    # the checkpoint is of the step the signal came in, the last one recorded
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == [f"step_{last:06d}"]
    assert checkpoint_problem(out / "checkpoints" / f"step_{last:06d}") is None
    assert not (out / "model").exists() and not (out / "ledger.json").exists()

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(cli_reference, out)


def test_sigusr1_in_process_stops_at_the_step_boundary_with_that_steps_checkpoint(
    small_experiment, tmp_path
):
    """SIGUSR1 sent to this process from inside step 2's update: step 2 completes and is
    checkpointed, step 3 never starts, and a fresh trainer resumes to the uninterrupted
    weights."""
    full = _trainer(small_experiment, tmp_path / "full", steps=4, checkpoint_every=100)
    full.train()
    t = _trainer(small_experiment, tmp_path / "r", steps=4, checkpoint_every=100)
    update = t.update

    def update_then_signal(batch):
        if t.step == 1:  # computing step 2
            os.kill(os.getpid(), signal.SIGUSR1)
        return update(batch)

    t.update = update_then_signal
    with pytest.raises(Preempted) as stopped:
        t.train()
    assert (stopped.value.step, stopped.value.signum) == (2, signal.SIGUSR1)
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step_*")) == [
        "step_000002"
    ]
    assert [r["step"] for r in _rows(tmp_path / "r" / "metrics.partial.jsonl")] == [1, 2]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
    again = _trainer(small_experiment, tmp_path / "r", steps=4, checkpoint_every=100)
    again.train()
    _assert_same_run(tmp_path / "full", tmp_path / "r")


def test_checkpoint_minutes_checkpoints_when_that_much_time_has_passed(small_experiment, tmp_path):
    # 0.0001 minutes (6 ms) pass within every step: a checkpoint at each boundary
    t = _trainer(
        small_experiment,
        tmp_path / "r",
        steps=3,
        checkpoint_every=100,
        checkpoint_minutes=0.0001,
        keep_checkpoints=5,
    )
    t.train(until_step=2)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step_*"))
    assert names == ["step_000001", "step_000002"]
    # an hour does not pass: only the step count's (none) and the stop's checkpoints
    u = _trainer(
        small_experiment, tmp_path / "u", steps=3, checkpoint_every=100, checkpoint_minutes=60
    )
    u.train(until_step=2)
    assert sorted(p.name for p in (tmp_path / "u" / "checkpoints").glob("step_*")) == [
        "step_000002"
    ]


def test_a_second_trainer_on_the_same_run_waits_for_the_first_and_resumes_equal(
    small_experiment, cli_reference, tmp_path
):
    """Two `creditbench train` processes on one run folder (a job restarted while an
    orphan of a killed Snakemake still trains): the second waits for the first's lock,
    then resumes from its final checkpoint; the run equals the uninterrupted one."""
    out = tmp_path / "run"
    cmd = _cli_train(small_experiment, tmp_path, out, steps=PREEMPT_STEPS, checkpoint_every=100)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "metrics.partial.jsonl").is_file():  # the first holds the lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    # the first is paused while it holds the lock, so the second meets it however fast
    # the first would otherwise finish; it resumes once the second has said it waits
    os.kill(first.pid, signal.SIGSTOP)
    second_err = tmp_path / "second.err"
    with second_err.open("w") as err:
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        message = f"locked by another training process (pid {first.pid})"
        while message not in second_err.read_text():
            assert second.poll() is None and time.monotonic() < deadline, second_err.read_text()
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGCONT)
        second_out, _ = second.communicate(timeout=600)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 0, second_err.read_text()[-3000:]
    assert json.loads(second_out.splitlines()[-1])["step"] == PREEMPT_STEPS
    _assert_same_run(cli_reference, out)


# ------------------------------------------------------- several seeds in one process
def test_seeds_trained_one_after_another_in_one_process_equal_a_process_each(
    small_experiment, cli_reference, tmp_path
):
    """``--seed`` repeated (launch.group_seeds): seed 0, trained in the same process after
    seed 1, ends bitwise equal to seed 0 alone in its own process; the same command run
    again after the declared outputs were removed (as Snakemake does before re-running an
    incomplete job) re-finishes both from their final checkpoints, equal, no step redone."""
    cmd = _cli_train(
        small_experiment, tmp_path, tmp_path / "x", steps=PREEMPT_STEPS, checkpoint_every=100
    )
    common = cmd[: cmd.index("--seed")] + cmd[cmd.index("--init") : cmd.index("--out")]
    outs = {seed: tmp_path / f"seed{seed}" for seed in (1, 0)}
    grouped = common + [a for s, o in outs.items() for a in ("--seed", str(s), "--out", str(o))]
    proc = subprocess.run(grouped, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [s["seed"] for s in summaries] == [1, 0]
    assert [s["step"] for s in summaries] == [PREEMPT_STEPS] * 2
    _assert_same_run(cli_reference, outs[0])
    seed1_rows = _rows(outs[1] / "metrics.jsonl")
    assert [r["reward"] for r in seed1_rows] != [
        r["reward"] for r in _rows(outs[0] / "metrics.jsonl")
    ]

    for out in outs.values():
        for name in ("metrics.jsonl", "ledger.json", "model"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = subprocess.run(grouped, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_run(cli_reference, outs[0])
    assert _rows(outs[1] / "metrics.jsonl") == seed1_rows  # timings included: no step redone


def test_several_seeds_are_refused_without_one_out_each_or_with_a_seed_twice(
    small_experiment, tmp_path, capsys
):
    from creditbench import cli

    cmd = _cli_train(small_experiment, tmp_path, tmp_path / "x")[3:]  # train -c ... --out x
    assert cli.main([*cmd, "--seed", "1"]) == 2  # two seeds, one --out
    assert (
        "give one --out per --seed, in the same order (2 seeds, 1 --out)" in capsys.readouterr().err
    )
    assert cli.main([*cmd, "--seed", "0", "--out", str(tmp_path / "y")]) == 2
    assert "--seed repeats a seed: [0, 0]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing started
