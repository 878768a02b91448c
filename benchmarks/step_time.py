"""Seconds per RL step: our GRPO (``creditbench.train.Trainer``) against TRL's ``GRPOTrainer``.

Both trainers start from the same warm-started tiny model on the chains testbed and
see the same prompts in the same order, with the same settings: prompts per step,
group size, ``max_new_tokens`` / ``max_completion_length``, EOS stopping, temperature
1.0, top-p 1.0, no top-k, the same
prompt ids (chat template), plain ``model.generate`` (no vLLM), loss ``grpo`` with
beta 0 and epsilon 0.2, learning rate, AdamW (unfused, as ours), gradient clipping
1.0, one optimiser step per generation batch, float32, no activation checkpointing,
no logging, checkpointing or evaluation inside the timed steps. Both run in this
process, so torch uses the same number of threads for both, and their steps are
interleaved (TRL's step k, then ours), so a shared or throttled CPU slows both alike.

The first ``--warmup`` steps of each are run but not timed. The table reports the
mean and median seconds per step, where each trainer's time goes, and the completion
lengths: the two trainers sample different completions, and a step's generation (and
its padded update) lasts as long as its longest completion, so compare the per-decoding-
step figure too. The last line is ``ratio_ours_over_trl: X`` (mean seconds per step).

    python benchmarks/step_time.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the table

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from creditbench.config import experiment_from_dict  # noqa: E402
from creditbench.tasks import make_task  # noqa: E402
from creditbench.train import Trainer, problems_for_step  # noqa: E402
from creditbench.warmstart import warm_start  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed steps per trainer")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--hidden", type=int, default=96, help="tiny model width (default model)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--warm-steps", type=int, default=800, help="supervised warm-start steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep data and the warm-started model here and reuse them on later runs",
    )
    return p.parse_args()


def experiment(args: argparse.Namespace) -> dict:
    """The default experiment's task and model, shrunk where it only costs setup time."""
    steps = args.warmup + args.steps
    return {
        "experiment": "step_time",
        "seeds": [args.seed],
        # the default training set: choosing a step's prompts scales with its size
        "task": {"n_test": 100},
        "model": {
            "tiny": {
                "hidden_size": args.hidden,
                "num_layers": args.layers,
                "num_heads": 4,
                "intermediate_size": 3 * args.hidden,
            }
        },
        # a short warm start: completions end with EOS and rewards vary, as in a real run
        "warm_start": {
            "steps": args.warm_steps,
            "skill_steps": 0,  # the prompted skills are not used by GRPO
            "batch_size": 32,
            "lr": 3e-3,
            "warmup_steps": 20,
            "eval_problems": 16,
        },
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens},
        "train": {
            "steps": steps,
            "prompts_per_step": args.prompts,
            "group_size": args.group,
            "lr": args.lr,
            "lr_schedule": "constant_with_warmup",
            "warmup_steps": 0,
            "checkpoint_every": 10**6,  # only the final checkpoint, after the timed steps
            "eval_every": 0,
        },
        "loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"},
        "runs": {"grpo": {"method": "grpo"}},
    }


def prepare(args: argparse.Namespace, root: Path):
    cfg = experiment_from_dict(experiment(args))
    data, base = root / "data", root / "base"
    if not (data / "train.jsonl").is_file():
        make_task(cfg.task).write_data(data)
    if not (base / "config.json").is_file():
        t0 = time.perf_counter()
        record = warm_start(cfg, data, base)
        print(
            f"warm start: {time.perf_counter() - t0:.0f} s, greedy accuracy "
            f"{record['greedy']['accuracy']:.2f}, sampled {record['sampled']['accuracy']:.2f}"
        )
    return cfg, data, base


# ----------------------------------------------------------------------------- ours
def ours_summary(trainer: Trainer, out: Path, warm: dict[str, float], longest, args) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > args.warmup]
    seconds = trainer.ledger.seconds
    phases = {k: (seconds[k] - warm.get(k, 0.0)) / len(timed) for k in seconds}
    # step_seconds spans choosing the prompts, collect, credit and update; not the
    # metrics line, evaluation or checkpoints
    step = [r["step_seconds"] for r in timed]
    collect, credit = phases.get("collect", 0.0), phases.get("credit", 0.0)
    return {
        "seconds": step,
        "completion_tokens": statistics.mean(r["completion_tokens"] for r in timed),
        "longest": statistics.mean(longest[args.warmup :]),
        "reward": statistics.mean(r["reward"] for r in timed),
        "phases": {
            "generate": phases.get("generate", 0.0),
            "score+credit": collect - phases.get("generate", 0.0) + credit,
            "loss+backward+optimiser+rest": statistics.mean(step) - collect - credit,
        },
    }


# ------------------------------------------------------------------------------ TRL
class Lockstep(TrainerCallback):
    """Times TRL's steps and, after TRL's step k, runs our step k.

    Interleaving makes a shared or throttled CPU slow both trainers alike. A TRL step is
    timed from the end of our previous step to TRL's ``on_step_end``: its data loading,
    generation, loss, backward, clipping, optimiser and bookkeeping. Our
    ``Trainer.train(until_step=k)`` resumes from its own step k-1 checkpoint (weights,
    optimiser, RNG), so its steps are those of an uninterrupted run, and reports
    ``step_seconds`` without the resume and the checkpoint.
    """

    def __init__(self, ours: Trainer, warmup: int, trl_totals: dict[str, float]):
        self.ours, self.warmup, self.trl_totals = ours, warmup, trl_totals
        self.trl_seconds: list[float] = []
        self.ours_warm: dict[str, float] = {}  # phase clocks after the warm-up steps
        self.trl_warm: dict[str, float] = {}
        self._t0 = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trl_seconds.append(time.perf_counter() - self._t0)
        self.ours.train(until_step=state.global_step)
        if state.global_step == self.warmup:
            self.ours_warm = dict(self.ours.ledger.seconds)
            self.trl_warm = dict(self.trl_totals)
        self._t0 = time.perf_counter()


def timed(fn, name: str, totals: dict[str, float]):
    """Wrap a bound method so its seconds add up in ``totals[name]`` (TRL code unchanged)."""

    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            totals[name] += time.perf_counter() - t0

    return wrapper


def time_both(cfg, data: Path, base: Path, runs: Path, args) -> tuple[dict, dict]:
    run = cfg.run("grpo")
    ours = Trainer(run, args.seed, base, data, runs / "ours")
    task = make_task(run.task, data)
    problems = task.load("train")
    t, s = run.train, run.sampling
    n_steps = args.warmup + args.steps
    # Our step k trains on problems_for_step(k); an unshuffled dataset in that order makes
    # TRL's sampler hand out exactly the same prompts, step by step.
    order = [
        i
        for step in range(n_steps)
        for i in problems_for_step(len(problems), t.prompts_per_step, step, args.seed)
    ]
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": problems[i].prompt}] for i in order],
            "problem": order,
        }
    )
    # Batched generation runs until the longest completion of the step ends: record it.
    ours_longest: list[int] = []
    sample = ours.sampler.generate

    def ours_generate(*a, **kw):
        gens = sample(*a, **kw)
        ours_longest.append(max(len(g.ids) for g in gens))
        return gens

    ours.sampler.generate = ours_generate
    eos = ours.tokenizer.eos_token_id
    lengths: list[int] = []
    trl_longest: list[int] = []
    rewards: list[float] = []

    def reward(completions, completion_ids, problem, **kwargs):
        out = []
        for completion, ids, i in zip(completions, completion_ids, problem, strict=True):
            lengths.append(len(ids))
            # as our rollouts: a completion cut off by the length limit scores 0
            finished = bool(ids) and ids[-1] == eos
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            out.append(task.reward(problems[i], text) if finished else 0.0)
        rewards.extend(out)
        trl_longest.append(max(len(ids) for ids in completion_ids))
        return out

    config = GRPOConfig(
        output_dir=str(runs / "trl"),
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        max_steps=n_steps,
        per_device_train_batch_size=t.prompts_per_step * t.group_size,
        num_generations=t.group_size,
        gradient_accumulation_steps=1,  # one generation batch per optimiser step, as ours
        num_iterations=t.epochs,
        shuffle_dataset=False,
        max_completion_length=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=0,
        use_vllm=False,
        loss_type="grpo",
        beta=run.loss.beta,
        epsilon=run.loss.epsilon,
        scale_rewards="group",
        learning_rate=t.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_betas[0],
        adam_beta2=t.adam_betas[1],
        max_grad_norm=t.max_grad_norm,
        optim="adamw_torch",  # TRL's default is the fused AdamW; ours is torch.optim.AdamW
        bf16=False,  # TRL defaults to bf16 autocast; ours trains in float32
        activation_checkpointing=False,  # TRL defaults to it; ours does not checkpoint
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=str(base), reward_funcs=reward, args=config, train_dataset=dataset)
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict
    totals: dict[str, float] = defaultdict(float)
    trainer._generate_single_turn = timed(trainer._generate_single_turn, "generate", totals)
    trainer._generate_and_score_completions = timed(
        trainer._generate_and_score_completions, "collect", totals
    )
    lockstep = Lockstep(ours, args.warmup, totals)
    trainer.add_callback(lockstep)
    trainer.train()

    seconds = lockstep.trl_seconds[args.warmup :]
    per_step = {k: (totals[k] - lockstep.trl_warm.get(k, 0.0)) / len(seconds) for k in totals}
    n_warm_seqs = args.warmup * t.prompts_per_step * t.group_size
    theirs = {
        "seconds": seconds,
        "completion_tokens": statistics.mean(lengths[n_warm_seqs:]),
        "longest": statistics.mean(trl_longest[args.warmup :]),
        "reward": statistics.mean(rewards[n_warm_seqs:]),
        "phases": {
            "generate": per_step["generate"],
            "score+credit": per_step["collect"] - per_step["generate"],
            "loss+backward+optimiser+rest": statistics.mean(seconds) - per_step["collect"],
        },
    }
    return ours_summary(ours, runs / "ours", lockstep.ours_warm, ours_longest, args), theirs


# ----------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    # deprecation notices raised inside TRL / transformers, not by anything set here
    warnings.filterwarnings("ignore", category=FutureWarning)
    with tempfile.TemporaryDirectory(prefix="step_time_") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        cfg, data, base = prepare(args, root)
        ours, trl = time_both(cfg, data, base, Path(tmp) / "runs", args)

    print(
        f"\n{args.steps} timed steps after {args.warmup} warm-up steps; "
        f"{args.prompts} prompts x {args.group} completions, max_new_tokens {args.max_new_tokens}, "
        f"{torch.get_num_threads()} torch threads, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    print(f"{'':40s}{'ours':>10s}{'trl':>10s}{'ours/trl':>10s}")

    def line(name: str, a: float, b: float, fmt: str = ".3f") -> None:
        ratio = f"{a / b:10.2f}" if b else f"{'-':>10s}"
        print(f"{name:40s}{a:10{fmt}}{b:10{fmt}}{ratio}")

    line("s/step mean", statistics.mean(ours["seconds"]), statistics.mean(trl["seconds"]))
    line("s/step median", statistics.median(ours["seconds"]), statistics.median(trl["seconds"]))
    for phase in ours["phases"]:
        line(f"  {phase} s/step", ours["phases"][phase], trl["phases"][phase])
    line("completion tokens / seq", ours["completion_tokens"], trl["completion_tokens"], ".1f")
    line("longest completion / step", ours["longest"], trl["longest"], ".1f")
    line(
        "ms / decoding step (longest completion)",
        1e3 * ours["phases"]["generate"] / ours["longest"],
        1e3 * trl["phases"]["generate"] / trl["longest"],
    )
    line("reward", ours["reward"], trl["reward"])
    ratio = statistics.mean(ours["seconds"]) / statistics.mean(trl["seconds"])
    print(f"ratio_ours_over_trl: {ratio:.3f}")


if __name__ == "__main__":
    main()
