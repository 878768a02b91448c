"""Seconds to sample VinePPO's MC continuations with and without a shared prefill.

The workload is one VinePPO step's value estimation on the chains testbed: a warm-started
tiny model samples ``--group`` completions for each of ``--prompts`` prompts, their
distinct states (the prompt, then the prompt plus each step but the last) are taken, the
first ``--states`` of them kept, and ``--k`` continuations are sampled from each, with the
run's default sampling (temperature 1, top-p 1, EOS only, ``--max-new-tokens``).

- ``plain``: ``Sampler.generate`` on every state repeated K times (each row prefills its
  own copy of the context);
- ``shared``: ``Sampler.generate(states, n=K)`` (each state's context prefilled once per
  batch, its KV cache expanded to its K rows).

Both run with the same seed and batch the same rows, so they sample the same tokens (the
script checks it). They alternate ``--repeats`` times; the table gives the median seconds,
the tokens forwarded and generated, and the last line ``speedup_shared: X`` (plain median
over shared median).

    python benchmarks/prefix_sharing.py --states 64 --k 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from creditbench.config import experiment_from_dict  # noqa: E402
from creditbench.ledger import Ledger  # noqa: E402
from creditbench.model import default_device, load_policy, load_tokenizer  # noqa: E402
from creditbench.rollouts import thought_token_ends  # noqa: E402
from creditbench.sampling import Sampler  # noqa: E402
from creditbench.tasks import make_task  # noqa: E402
from creditbench.warmstart import warm_start  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--states", type=int, default=64, help="distinct states to value")
    p.add_argument("--k", type=int, default=9, help="continuations per state (VinePPO K)")
    p.add_argument("--prompts", type=int, default=8, help="prompts whose rollouts give states")
    p.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=256, help="sampler rows per batch")
    p.add_argument("--hidden", type=int, default=128, help="tiny model width (default model)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--warm-steps", type=int, default=200, help="supervised warm-start steps")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="reuse data and model from here")
    return p.parse_args()


def prepare(args: argparse.Namespace, root: Path):
    cfg = experiment_from_dict(
        {
            "experiment": "prefix_sharing",
            "task": {"n_test": 100},
            "model": {
                "tiny": {
                    "hidden_size": args.hidden,
                    "num_layers": args.layers,
                    "num_heads": 4,
                    "intermediate_size": 3 * args.hidden,
                }
            },
            "warm_start": {
                "steps": args.warm_steps,
                "skill_steps": 0,
                "batch_size": 64,
                "lr": 2e-3,
                "warmup_steps": 20,
                "eval_problems": 16,
            },
            "sampling": {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size},
        }
    )
    data, base = root / "data", root / "base"
    if not (data / "train.jsonl").is_file():
        make_task(cfg.task).write_data(data)
    if not (base / "config.json").is_file():
        warm_start(cfg, data, base)
    return cfg, make_task(cfg.task, data), base


def vineppo_states(sampler: Sampler, task, args) -> list[list[int]]:
    """The distinct states of one step's rollouts, in order: s_0, then s_1 .. s_{n-1}."""
    problems = task.load("train")[: args.prompts]
    prompts = [sampler.encode_prompt(p.prompt) for p in problems]
    rollouts = sampler.generate([p for p in prompts for _ in range(args.group)], purpose="rollout")
    seen, states = set(), []
    for i, g in enumerate(rollouts):
        ends = thought_token_ends(g.ids, sampler.tokenizer, task.segment) or [len(g.ids)]
        for n in [0, *ends[:-1]]:
            ctx = prompts[i // args.group] + g.ids[:n]
            if tuple(ctx) not in seen:
                seen.add(tuple(ctx))
                states.append(ctx)
    if len(states) < args.states:
        raise SystemExit(f"only {len(states)} states; raise --prompts or --group")
    return states[: args.states]


def timed(sampler: Sampler, states, k: int, shared: bool, seed: int):
    torch.manual_seed(seed)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    if shared:
        gens = sampler.generate(states, purpose="shared", n=k)
    else:
        gens = sampler.generate([s for s in states for _ in range(k)], purpose="plain")
    sync()
    return time.perf_counter() - t0, gens


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        cfg, task, base = prepare(args, root)
        device = default_device()
        model = load_policy(base, cfg.model, device, trainable=False).eval()
        tok = load_tokenizer(base)
        run = cfg.run("grpo")
        torch.manual_seed(args.seed)
        states = vineppo_states(Sampler(model, tok, run.sampling), task, args)
        ledger = Ledger()
        sampler = Sampler(model, tok, run.sampling, ledger)
        timed(sampler, states[:4], 2, True, args.seed)  # warm up kernels and allocator
        ledger.forwarded.clear()
        ledger.generated.clear()
        seconds = {"plain": [], "shared": []}
        for r in range(args.repeats):
            t_plain, plain = timed(sampler, states, args.k, False, args.seed + r)
            t_shared, shared = timed(sampler, states, args.k, True, args.seed + r)
            if [g.ids for g in plain] != [g.ids for g in shared]:
                raise SystemExit("shared and plain sampling differ: the benchmark is invalid")
            seconds["plain"].append(t_plain)
            seconds["shared"].append(t_shared)
    lengths = [len(s) for s in states]
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.states} states x K={args.k} "
        f"= {args.states * args.k} continuations, batch {args.batch_size} rows"
    )
    print(
        f"state length: mean {statistics.mean(lengths):.1f}, max {max(lengths)} tokens; "
        f"continuation: mean {ledger.generated['shared'] / args.repeats / len(plain):.1f}"
    )
    print(f"{'variant':<8} {'median s':>9} {'min s':>8} {'forwarded':>10} {'generated':>10}")
    for name in ("plain", "shared"):
        s = seconds[name]
        print(
            f"{name:<8} {statistics.median(s):9.3f} {min(s):8.3f} "
            f"{ledger.forwarded[name] // args.repeats:10d} "
            f"{ledger.generated[name] // args.repeats:10d}"
        )
    speedup = statistics.median(seconds["plain"]) / statistics.median(seconds["shared"])
    print(f"speedup_shared: {speedup:.2f}")


if __name__ == "__main__":
    main()
