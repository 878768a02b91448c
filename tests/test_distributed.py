"""Data-parallel training under ``accelerate launch``: two CPU processes over gloo.

- the update of two processes, each on its (uneven) share of a fixed batch, computes the
  gradient, loss and gradient norm of one process on the whole batch (global normalisers;
  unequal micro-batch counts; an extra epoch with old log-probs and a KL reference);
- ``accelerate launch ... -m creditbench.cli train`` finishes and writes its outputs once;
- a two-process run interrupted and resumed ends bitwise equal to an uninterrupted one,
  and its ledger is the sum of both processes' sampled tokens;
- on shards made uneven on purpose (one process's completions all solved, the other's
  all failed; probes, segments or rows on one process only), every method's training-time
  calls of each trained model (forwards counted by a pre-hook, backwards, optimiser
  steps) are equal on both processes, and the padding leaves the result unchanged.

On a CPU machine ``accelerate launch --cpu`` starts one process (several need mpirun), so
the launches here use ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1`` (torchrun, gloo).
This file is also the worker those launches run (``python tests/test_distributed.py``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
N = 8  # fixed trajectories; process 0 takes the first k of them (per case), process 1 the rest

# name -> (train overrides, loss overrides, trajectories of process 0)
CASES = {
    # per-sequence means over 8 sequences; micro-batches of 2: process 0 runs 2, process 1 3
    "grpo_micro": ({"micro_batch_size": 2}, {"aggregation": "grpo"}, 3),
    # token mean over the batch; two passes (old log-probs, two optimiser steps) and KL
    "dapo_epochs_kl": ({"epochs": 2}, {"aggregation": "dapo", "beta": 0.05}, 5),
}
# several minibatches, one process holding a single trajectory (fewer minibatches):
# must neither hang nor let the processes' weights drift apart
UNEVEN = ({"minibatches": 2, "micro_batch_size": 3}, {"aggregation": "dapo"}, 1)


def _run_config(cfg, train: dict, loss: dict, **more_train):
    run = cfg.run("grpo")
    return run.model_copy(
        update={
            "train": run.train.model_copy(update={**train, **more_train}),
            "loss": run.loss.model_copy(update=loss),
        }
    )


def fixed_trajectories(trainer, seed: int = 0):
    """N trajectories with random completions, advantages and loss masks (no sampling)."""
    from creditbench.rollouts import Trajectory

    g = torch.Generator().manual_seed(seed)
    tok = trainer.tokenizer
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}
    vocab = [i for i in range(len(tok)) if i not in specials]
    out = []
    for i in range(N):
        problem = trainer.train_problems[i]
        n = int(torch.randint(3, 24, (1,), generator=g))
        ids = [vocab[int(j)] for j in torch.randint(len(vocab), (n,), generator=g)]
        traj = Trajectory(
            problem=problem,
            prompt_ids=trainer.sampler.encode_prompt(problem.prompt),
            completion_ids=ids,
            text=tok.decode(ids),
            reward=float(i % 2),
            purpose="rollout",
            thought_ends=[n],
        )
        adv = (torch.randn(n, generator=g)).tolist()
        mask = (torch.rand(n, generator=g) > 0.2).float().tolist()
        out.append(traj.set_credit(adv, mask))
    return out


def update_result(trainer, trajs) -> dict:
    from creditbench.rollouts import Batch

    stats = trainer.update(Batch.from_trajectories(trajs, trainer.tokenizer.pad_token_id))
    return {
        "stats": stats,
        # the last optimiser step's (clipped) gradients and the weights after it
        "grads": {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()},
        "weights": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
    }


# training-time calls on uneven shards: run name -> the run's overrides
LOCKSTEP = {
    "oar_p": {"method": "oar", "importance": "perturbation", "perturbation_batch_size": 3},
    "oar_g": {"method": "oar", "importance": "gradient", "perturbation_batch_size": 3},
    "spo_tree": {"method": "spo", "variant": "tree", "prob_batch_size": 2},
    "ppo": {"method": "ppo", "train": {"micro_batch_size": 2, "minibatches": 2}},
    "ppo_head": {"method": "ppo", "critic": "head", "train": {"micro_batch_size": 2}},
    # a whole step (collect, credit, update) with every reward forced per process
    "ibpo": {"method": "ibpo"},
    "srpo": {"method": "srpo", "reset": "random", "max_attempts": 6},
    "vineppo": {"method": "vineppo", "mc_rollouts": 2},
    # the same steps with generation kept in step (as under FSDP / ZeRO-3): every sampler
    # call and every decoding forward is then a collective too
    "ibpo_synced": {"method": "ibpo", "sampling": {"synced": True}},
    "srpo_synced": {"method": "srpo", "max_attempts": 6, "sampling": {"synced": True}},
    "vineppo_synced": {"method": "vineppo", "mc_rollouts": 2, "sampling": {"synced": True}},
    "spo_tree_synced": {
        "method": "spo",
        "variant": "tree",
        "prob_batch_size": 2,
        "sampling": {"synced": True},
    },
}
# OAR's groups on process 0 (rewards per group); process 1 has one all-solved group
OAR_REWARDS = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]]


def solution_groups(trainer, rewards: list[list[float]]):
    """Groups of the reference solution of train problem k, with the given rewards."""
    from creditbench.rollouts import Group, Trajectory, thought_token_ends

    groups = []
    for k, group_rewards in enumerate(rewards):
        problem = trainer.train_problems[k]
        text = trainer.task.solution(problem)
        ids = trainer.sampler.encode(text)
        ends = thought_token_ends(ids, trainer.tokenizer, trainer.task.segment)
        trajs = [
            Trajectory(
                problem=problem,
                prompt_ids=trainer.sampler.encode_prompt(problem.prompt),
                completion_ids=list(ids),
                text=text,
                reward=r,
                purpose="rollout",
                thought_ends=list(ends),
            )
            for r in group_rewards
        ]
        groups.append(Group(trajs, meta={"step": 0}))
    return groups


# ------------------------------------------------------------------- launches
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``accelerate launch`` of two CPU processes."""
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *args,
    ]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


@pytest.fixture(scope="module")
def launched(small_experiment, tmp_path_factory):
    """One two-process launch of this file's worker: the fixed-batch updates and the
    interrupted / uninterrupted runs."""
    root = tmp_path_factory.mktemp("dist")
    cfg = small_experiment["cfg"]
    cases = {
        name: _run_config(cfg, train, loss).model_dump(mode="json")
        for name, (train, loss, _) in {**CASES, "uneven": UNEVEN}.items()
    }
    spec = {
        "cases": cases,
        "splits": {name: c[2] for name, c in {**CASES, "uneven": UNEVEN}.items()},
        "run": _run_config(cfg, {}, {}, steps=3, checkpoint_every=1).model_dump(mode="json"),
        "base": str(small_experiment["base"]),
        "data": str(small_experiment["data"]),
        "out": str(root),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    launch([str(Path(__file__).resolve()), "worker", str(root / "spec.json")], cwd=root)
    return root


@pytest.fixture(scope="module")
def lockstep_launched(small_experiment, tmp_path_factory):
    """One two-process launch: every LOCKSTEP case on uneven shards, calls counted."""
    from conftest import small_config

    root = tmp_path_factory.mktemp("lockstep")
    cfg = small_config(runs=LOCKSTEP)
    spec = {
        "lockstep": {name: cfg.run(name).model_dump(mode="json") for name in LOCKSTEP},
        "base": str(small_experiment["base"]),
        "data": str(small_experiment["data"]),
        "out": str(root),
    }
    (root / "spec.json").write_text(json.dumps(spec))
    launch([str(Path(__file__).resolve()), "lockstep", str(root / "spec.json")], cwd=root)
    return {r: json.loads((root / f"calls_rank{r}.json").read_text()) for r in (0, 1)}


@pytest.mark.parametrize("case", sorted(LOCKSTEP))
def test_uneven_shards_call_every_trained_model_equally_often(lockstep_launched, case):
    """Under FSDP / ZeRO-3 each of these calls is a collective: unequal counts deadlock."""
    a, b = lockstep_launched[0][case], lockstep_launched[1][case]
    assert a["work"] != b["work"]  # the shards did differ in what they had to compute
    assert a["calls"] == b["calls"], (a, b)
    # (a synced SPO-tree step whose rewards are all equal per process trains nothing)
    assert (
        a["calls"]["policy_forward"]
        or a["calls"].get("critic_forward")
        or case == "spo_tree_synced"
    )
    if case.endswith("_synced"):  # the sampler calls and every decoding forward in step
        assert a["sampling"] == b["sampling"], (a["sampling"], b["sampling"])
        assert a["sampling"]["generate"] >= 1 and a["sampling"]["policy_forward"] > 0


def test_lockstep_padding_keeps_the_one_process_result(small_experiment, lockstep_launched):
    """Process 0's OAR-G weights (its probes; process 1 only kept in step) are those of
    one process on the same groups: the placeholder passes draw no noise, change nothing."""
    from conftest import small_config

    from creditbench.train import Trainer

    run = small_config(runs=LOCKSTEP).run("oar_g")
    out = small_experiment["root"] / "lockstep_one"
    one = Trainer(run, 0, small_experiment["base"], small_experiment["data"], out)
    trained = one.method.advantages(solution_groups(one, OAR_REWARDS))
    two = lockstep_launched[0]["oar_g"]["advantages"]
    assert len(two) == len(trained)
    for got, t in zip(two, trained, strict=True):
        assert got == pytest.approx(t.advantages, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_compute_the_one_process_update(small_experiment, launched, case, tmp_path):
    from creditbench.train import Trainer

    train, loss, _ = CASES[case]
    run = _run_config(small_experiment["cfg"], train, loss)
    one = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path)
    ref = update_result(one, fixed_trajectories(one))
    two = torch.load(launched / f"update_{case}.pt", weights_only=False)

    assert two["world"] == 2 and two["wrapped"] == "DistributedDataParallel"
    assert two["sampler_model"] == two["bare_model"] == "LlamaForCausalLM"
    for key in ("loss", "grad_norm"):
        assert two["stats"][key] == pytest.approx(ref["stats"][key], rel=1e-5, abs=1e-7), key
    assert ref["stats"]["grad_norm"] > 1e-3  # a real gradient, not a vanishing one
    for name, g in ref["grads"].items():
        # (weights after AdamW are no test of the gradient's scale: its first steps are
        # about lr * sign(grad))
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_uneven_minibatches_keep_the_processes_in_step(launched):
    """One process holds one trajectory (one minibatch, one micro-batch), the other seven."""
    a, b = (torch.load(launched / f"uneven_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert a["steps"] == b["steps"] == 2  # both ran both minibatches' optimiser steps
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name


def test_resumed_two_process_run_is_bitwise_equal_and_writes_once(launched):
    from safetensors.torch import load_file

    full, resumed = launched / "full", launched / "resumed"
    a, b = (
        load_file(full / "model/model.safetensors"),
        load_file(resumed / "model/model.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = {
        d: [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (full, resumed)
    }
    assert [r["step"] for r in rows[resumed]] == [1, 2, 3]  # one line per step, not per process
    for ra, rb in zip(rows[full], rows[resumed], strict=True):
        for key in ("reward", "loss", "grad_norm", "generated_tokens", "trained_sequences"):
            assert ra[key] == rb[key], key
        assert ra["trained_sequences"] == 16  # 4 prompts x 4 samples over both processes
    # the ledger sums both processes' sampled tokens
    sampled = sum(json.loads((full / f"sampled_rank{r}.json").read_text()) for r in (0, 1))
    ledger = json.loads((full / "ledger.json").read_text())
    assert ledger["generated_tokens"] == {"rollout": sampled}
    assert ledger["num_processes"] == 2
    assert rows[full][-1]["generated_tokens"] == sampled
    ckpts = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]  # keep_checkpoints, no stray temporaries
    assert sorted(p.name for p in (full / "checkpoints/step_000003").iterdir()) == [
        "COMPLETE",
        "model",
        "rng_rank1.pt",
        "state.pt",
    ]


def test_accelerate_launch_of_the_cli_trains(small_experiment, tmp_path):
    cfg = yaml.safe_load(json.dumps(small_experiment["cfg"].model_dump(mode="json")))
    cfg["train"] = {**cfg["train"], "steps": 2, "checkpoint_every": 1}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = launch(
        [
            "-m",
            "creditbench.cli",
            "train",
            "-c",
            str(tmp_path / "cfg.yaml"),
            "--run",
            "grpo",
            "--seed",
            "0",
            "--init",
            str(small_experiment["base"]),
            "--data",
            str(small_experiment["data"]),
            "--out",
            str(out),
        ],
        cwd=REPO,
    )
    assert '"step": 2' in res.stdout
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["trained_sequences"] == 16 for r in rows)
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["steps"] == 2 and ledger["num_processes"] == 2
    assert ledger["total_generated_tokens"] == rows[-1]["generated_tokens"] > 0
    assert (out / "model/config.json").is_file()
    assert not list(out.glob(".*tmp*")) and not list((out / "checkpoints").glob(".tmp*"))


def test_prompts_per_step_must_divide_over_the_processes(small_experiment, tmp_path):
    from creditbench.config import ConfigError
    from creditbench.distributed import shard
    from creditbench.train import Trainer

    assert shard(list(range(8)), 2, 1, "x") == [4, 5, 6, 7]
    assert shard(list(range(8)), 1, 0, "x") == list(range(8))

    class TwoProcesses:  # the launch environment, as far as the check before any work sees it
        num_processes, process_index, is_main_process = 2, 0, True
        distributed_type = "MULTI_CPU"

    run = _run_config(small_experiment["cfg"], {"prompts_per_step": 5}, {})
    with pytest.raises(ConfigError, match=r"prompts_per_step \(5\) must be divisible .* \(2\)"):
        Trainer(
            run,
            0,
            small_experiment["base"],
            small_experiment["data"],
            tmp_path,
            accelerator=TwoProcesses(),
        )


# ---------------------------------------------------------------------- worker
def worker(spec_path: str) -> None:
    """Run under ``accelerate launch``: every process runs this; rank 0 reports."""
    from creditbench.config import RunConfig
    from creditbench.train import Trainer

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    base, data = spec["base"], spec["data"]

    for name, run_dict in spec["cases"].items():
        run = RunConfig.model_validate(run_dict)
        t = Trainer(run, 0, base, data, out / f"case_{name}")
        trajs = fixed_trajectories(t)
        k = spec["splits"][name]
        mine = trajs[:k] if t.rank == 0 else trajs[k:]
        steps = []
        orig_step = t.optimizer.step

        def counting_step(*a, _orig=orig_step, _steps=steps, **kw):
            _steps.append(1)
            return _orig(*a, **kw)

        t.optimizer.step = counting_step
        res = update_result(t, mine)
        res.update(
            world=t.world,
            steps=len(steps),
            wrapped=type(t.model_wrapped).__name__,
            sampler_model=type(t.sampler.model).__name__,
            bare_model=type(t.ctx.model).__name__,
        )
        if name == "uneven":
            torch.save(res, out / f"uneven_rank{t.rank}.pt")
        elif t.rank == 0:
            torch.save(res, out / f"update_{name}.pt")

    run = RunConfig.model_validate(spec["run"])
    full = Trainer(run, 0, base, data, out / "full")
    sampled = []
    collect = full.method.collect

    def recording_collect(problems, step):
        groups = collect(problems, step)
        sampled.extend(len(tr.completion_ids) for g in groups for tr in g.trajectories)
        return groups

    full.method.collect = recording_collect
    full.train()
    (out / "full" / f"sampled_rank{full.rank}.json").write_text(json.dumps(sum(sampled)))
    first = Trainer(run, 0, base, data, out / "resumed")
    first.train(until_step=2)
    second = Trainer(run, 0, base, data, out / "resumed")  # as a fresh launch would
    second.train()


def lockstep_worker(spec_path: str) -> None:
    """Every LOCKSTEP case on shards made uneven on purpose; each process writes its call
    counts (forward pre-hooks on every trained model, backwards, optimiser steps)."""
    from creditbench.config import RunConfig
    from creditbench.distributed import shard
    from creditbench.rollouts import Batch, Group
    from creditbench.train import Trainer, problems_for_step

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    report = {}
    for name, run_dict in spec["lockstep"].items():
        t = Trainer(RunConfig.model_validate(run_dict), 0, spec["base"], spec["data"], out / name)
        rank, method = t.rank, t.method
        calls: dict[str, int] = {}

        def count(key, fn=None, _calls=calls):
            _calls.setdefault(key, 0)

            def counted(*a, **kw):
                _calls[key] += 1
                return fn(*a, **kw) if fn is not None else None

            return counted

        modules = {"policy": t.model, "reference": t.ref_model}
        if "critic" in t.ctx.owned:
            modules["critic"] = t.ctx.owned["critic"].unwrapped
            opt = t.ctx.owned["critic"].optimizer
            opt.step = count("critic_step", opt.step)
        for key, module in modules.items():
            if module is not None:
                module.register_forward_pre_hook(count(f"{key}_forward"))
        t.accelerator.backward = count("backward", t.accelerator.backward)
        t.optimizer.step = count("policy_step", t.optimizer.step)
        entry: dict = {}
        if name.startswith("oar"):  # process 1: one all-solved group, no probe at all
            groups = solution_groups(t, OAR_REWARDS if rank == 0 else [[1.0] * 4])
            trained = method.advantages(groups)
            entry["work"] = sum("oar" in tr.meta for tr in trained)
            entry["advantages"] = [list(tr.advantages) for tr in trained]
        elif name == "spo_tree":  # process 1's segments all have advantage 0: none kept
            (group,) = solution_groups(t, [[1.0] * 5])
            for tr in group.trajectories:
                tr.meta["spo_advantage"] = 0.5 if rank == 0 else 0.0
            method._select_segments([group], 0)
            entry["work"] = sum(tr.meta["spo_kept"] for tr in group.trajectories)
        elif name.startswith("ppo"):  # process 0: 3 rows, process 1: 5
            trajs = fixed_trajectories(t)
            mine = trajs[:3] if rank == 0 else trajs[3:]
            method.update(method.advantages([Group(mine)]), 0)
            entry["work"] = len(mine)
        else:  # a whole step: process 0's rewards all 1, process 1's all 0
            t.ctx.score = lambda problem, text, stop, _r=float(rank == 0): _r
            gen = t.sampler.generate
            generated = {"calls": 0}

            def generate(*a, _gen=gen, _n=generated, **kw):
                _n["calls"] += 1
                return _gen(*a, **kw)

            t.sampler.generate = generate
            run = t.run.train
            step = problems_for_step(len(t.train_problems), run.prompts_per_step, 0, 0)
            problems = [t.train_problems[i] for i in shard(step, t.world, rank, "prompts")]
            with t._generating(), t.sampler.rollouts(0):
                groups = method.collect(problems, 0)
            # unsynced generation is local (vLLM, DDP): only recorded; synced, its sampler
            # calls and forwards are kept in step
            entry["work"] = [generated["calls"], sum(t.ledger.generated.values())]
            entry["sampling"] = {"generate": generated["calls"], **calls}
            for key in calls:
                calls[key] = 0
            trained = method.advantages(groups)
            buffer = [tr for g in groups for tr in g.trajectories]
            rows = t._batch_rows(trained, buffer)
            if rows:  # (SPO-tree keeps no segment of a group whose rewards are all equal)
                t.update(Batch.from_trajectories(rows, t.tokenizer.pad_token_id))
        entry["calls"] = dict(calls)
        report[name] = entry
    (out / f"calls_rank{t.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2])
    elif sys.argv[1:2] == ["lockstep"]:
        lockstep_worker(sys.argv[2])


def test_srpo_step_metrics_pool_every_process_shard(small_experiment, tmp_path):
    """Each process localises and resets its own prompts; the logged SRPO metrics count
    the resets of all of them (not the main process's shard)."""
    cfg = yaml.safe_load(json.dumps(small_experiment["cfg"].model_dump(mode="json")))
    cfg["train"] = {**cfg["train"], "steps": 1, "checkpoint_every": 1}
    cfg["runs"] = {
        "srpo_oracle": {
            "method": "srpo",
            "split": "1x4",
            "reset": "oracle",
            "train": {"group_size": 8},
        }
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    common = ["-c", str(tmp_path / "cfg.yaml"), "--run", "srpo_oracle", "--seed", "0"]
    common += ["--init", str(small_experiment["base"]), "--data", str(small_experiment["data"])]
    launch(["-m", "creditbench.cli", "train", *common, "--out", str(out)], cwd=REPO)
    (row,) = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    prompts = cfg["train"]["prompts_per_step"]
    assert row["srpo/prompts"] == prompts  # both processes' prompts (2 each)
    seeded = prompts - row["srpo/fallback_prompts"]
    assert row["srpo/resets"] == row["srpo/resets_with_oracle"] == seeded  # S = 1 per prompt
    assert row["srpo/localisation_accuracy"] == (1.0 if seeded else None)  # the oracle's resets
