"""The two rollout backends side by side on the chains testbed, one run.

A warm-started tiny Llama whose head_dim both backends support (32: by default hidden
64, 2 heads, 3 layers; vLLM's CPU attention has no kernel for 24) samples, with each
backend:

- ``rollout``: one GRPO step's rollouts (``--prompts`` prompts x ``--group`` chains,
  temperature 1, the task's thought rules), ``--repeats`` times; tokens/s = generated
  tokens over the median seconds;
- the engine's start-up (``LLM(...)`` on a config-only directory, then the first weight
  push) and one weight push;
- one SRPO 1x4 step and one VinePPO step (``collect`` and ``advantages``: seeds,
  localisation, suffixes; rollouts and MC values) through the trainer with the vLLM
  backend: the prompt tokens the engine looked up in its prefix cache and found there
  (forwards saved), beside the ledger's forwarded count (which charges what the HF
  sampler forwards, so that runs compare across backends).

Run it in the vLLM environment (``bash scripts/vllm_cpu_env.sh``):

    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/rollout_backends.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

from creditbench.config import experiment_from_dict  # noqa: E402
from creditbench.ledger import Ledger  # noqa: E402
from creditbench.model import load_policy, load_tokenizer  # noqa: E402
from creditbench.sampling import Sampler  # noqa: E402
from creditbench.tasks import make_task  # noqa: E402
from creditbench.warmstart import warm_start  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--hidden", type=int, default=64, help="tiny model width")
    p.add_argument("--heads", type=int, default=2, help="attention heads (head_dim 32)")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--warm-steps", type=int, default=400, help="supervised warm-start steps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--block-size", type=int, default=32, help="vLLM KV block (the prefix cache's unit)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="reuse data and model from here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args()


def config(args, runs=None):
    return experiment_from_dict(
        {
            "experiment": "rollout_backends",
            "task": {
                "n_test": 100,
                "min_len": getattr(args, "min_len", 3),
                "max_len": getattr(args, "max_len", 6),
                "modulus": getattr(args, "modulus", 100),
            },
            "model": {
                "tiny": {
                    "hidden_size": args.hidden,
                    "num_layers": args.layers,
                    "num_heads": args.heads,
                    "intermediate_size": 3 * args.hidden,
                }
            },
            "warm_start": {
                "steps": args.warm_steps,
                "skill_steps": 100,
                "batch_size": 64,
                "lr": getattr(args, "warm_lr", 2e-3),
                "demo_error_rate": getattr(args, "demo_error_rate", 0.0),
                "demo_repair_rate": getattr(args, "demo_repair_rate", 0.0),
                "warmup_steps": 20,
                "eval_problems": 16,
            },
            "sampling": {
                "max_new_tokens": args.max_new_tokens,
                "vllm": {"block_size": args.block_size},
            },
            "train": {
                "prompts_per_step": args.prompts // 2,
                "group_size": args.group,
                "eval_every": 0,
                "checkpoint_every": 1000,
            },
            "runs": runs or {"grpo": {"method": "grpo"}},
        }
    )


def rollout_speed(sampler, prompts, group, repeats):
    secs, tokens = [], 0
    for r in range(repeats):
        torch.manual_seed(r)
        if hasattr(sampler, "step"):
            sampler.step, sampler.call = r, 0
        t0 = time.perf_counter()
        gens = sampler.generate(prompts, purpose="rollout", n=group)
        secs.append(time.perf_counter() - t0)
        tokens = sum(len(g.ids) for g in gens)
    med = statistics.median(secs)
    return {"seconds": med, "generated": tokens, "tokens_per_s": tokens / med}


def method_step(args, root, method, params):
    """One collect + advantages step of ``method`` through the trainer on vLLM."""
    from creditbench.train import Trainer

    cfg = config(args, {"m": {"method": method, **params}})
    run = cfg.run("m")
    run = run.model_copy(update={"sampling": run.sampling.model_copy(update={"backend": "vllm"})})
    t = Trainer(run, args.seed, root / "base", root / "data", root / f"run_{method}")
    problems = t.train_problems[: run.train.prompts_per_step]
    try:
        t0 = time.perf_counter()
        with t.sampler.rollouts(0):
            before = t.sampler.prefix_cache_stats()
            groups = t.method.collect(problems, 0)
            t.method.advantages(groups)
            after = t.sampler.prefix_cache_stats()
        seconds = time.perf_counter() - t0
    finally:
        t.sampler.close()
    queried = after["queries"] - before["queries"]
    hits = after["hits"] - before["hits"]
    return {
        "seconds": seconds,
        "prompt_tokens": queried,
        "cache_hits": hits,
        "prefilled": queried - hits,
        "hit_rate": hits / queried if queried else 0.0,
        "generated": t.ledger.total_generated,
        "ledger_forwarded": t.ledger.total_forwarded,
    }


def main() -> None:
    args = parse_args()
    from creditbench.vllm_backend import VLLMSampler

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        cfg = config(args)
        if not (root / "data" / "train.jsonl").is_file():
            make_task(cfg.task).write_data(root / "data")
        if not (root / "base" / "config.json").is_file():
            warm_start(cfg, root / "data", root / "base")
        task = make_task(cfg.task, root / "data")
        tok = load_tokenizer(root / "base")
        model = load_policy(root / "base", cfg.model, torch.device("cpu")).eval()
        sampling = cfg.run("grpo").sampling
        hf = Sampler.for_task(model, tok, sampling, task, Ledger())
        prompts = [hf.encode_prompt(p.prompt) for p in task.load("train")[: args.prompts]]
        vcfg = sampling.model_copy(update={"backend": "vllm"})
        vs = VLLMSampler.for_task(model, tok, vcfg, task, Ledger(), seed=args.seed)
        t0 = time.perf_counter()
        vs.start_engine()
        startup = time.perf_counter() - t0
        first_push = vs.sync_seconds
        with torch.no_grad():
            model.lm_head.weight.mul_(1.0)  # bump the version: a real push
        t0 = time.perf_counter()
        vs.sync_weights()
        push = time.perf_counter() - t0
        res = {
            "model": {
                "hidden": args.hidden,
                "layers": args.layers,
                "head_dim": args.hidden // args.heads,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            "threads": torch.get_num_threads(),
            "engine_startup_s": startup,
            "engine_construct_s": vs.startup_seconds,
            "weight_push_s": push,
            "first_push_s": first_push,
            "rollout": {
                "hf": rollout_speed(hf, prompts, args.group, args.repeats),
                "vllm": rollout_speed(vs, prompts, args.group, args.repeats),
            },
        }
        vs.close()
        res["srpo_1x4"] = method_step(args, root, "srpo", {"split": "1x4"})
        res["vineppo"] = method_step(args, root, "vineppo", {})
    r = res["rollout"]
    print(f"model: {res['model']}, torch threads {res['threads']}, KV block {args.block_size}")
    print(
        f"engine start-up: {startup:.1f} s (LLM() {vs.startup_seconds:.1f} s); "
        f"weight push {push * 1e3:.1f} ms"
    )
    print("| backend | rollout seconds | generated tokens | tokens/s |")
    print("|---|---|---|---|")
    for k in ("hf", "vllm"):
        print(f"| {k} | {r[k]['seconds']:.2f} | {r[k]['generated']} | {r[k]['tokens_per_s']:.0f} |")
    print(
        "| step (vLLM) | prompt tokens looked up | found cached (saved) | prefilled | hit rate "
        "| ledger forwarded | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in ("srpo_1x4", "vineppo"):
        s = res[k]
        print(
            f"| {k} | {s['prompt_tokens']} | {s['cache_hits']} | {s['prefilled']} | "
            f"{s['hit_rate']:.1%} | {s['ledger_forwarded']} | {s['seconds']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
