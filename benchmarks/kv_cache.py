"""Seconds of the HF sampler's generation with transformers' ``DynamicCache`` against the
sampler's ``PreallocatedCache`` (``creditbench/kv_cache.py``), on the testbed.

Two workloads of a training job, on the warm-started default model (``--base``; a
freshly initialised model of the default's size if the folder is missing):

- ``eval``: the in-training evaluation point, ``--problems`` test prompts x 4 samples
  at temperature 1 (contexts repeat, so the shared prefill is used);
- ``mc``: VinePPO's Monte Carlo values, K = 4 continuations of every thought-boundary
  prefix of 64 sampled chains (long contexts: the cache copy grows with them).

Each workload runs with both caches from the same seed, interleaved round by round, so a
load that changes during the run slows both alike; the table gives the median seconds,
the speed-up and whether the generated tokens are identical (they must be).

    python benchmarks/kv_cache.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from creditbench.config import load_experiment
from creditbench.model import build_char_tokenizer, build_tiny_model, load_policy, load_tokenizer
from creditbench.sampling import Sampler
from creditbench.tasks import make_task


class DynamicCacheSampler(Sampler):
    """The sampler as it was: transformers' cache, grown by concatenation."""

    def new_cache(self, capacity: int):
        return DynamicCache(config=self.model.config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/default.yaml")
    ap.add_argument("--base", type=Path, default=Path("results/default/base"))
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_experiment(args.config)
    task = make_task(cfg.task)
    if (args.base / "config.json").is_file():
        model = load_policy(args.base, cfg.model, trainable=False)
        tok, origin = load_tokenizer(args.base), str(args.base)
    else:
        tok = build_char_tokenizer(task.alphabet)
        torch.manual_seed(0)
        model, origin = build_tiny_model(cfg.model.tiny, tok).eval(), "untrained"
    sampling = cfg.run(next(iter(cfg.runs))).sampling
    samplers = {
        "DynamicCache": DynamicCacheSampler.for_task(model, tok, sampling, task),
        "PreallocatedCache": Sampler.for_task(model, tok, sampling, task),
    }
    problems = task.generate("test")[: args.problems]
    prompts = [samplers["PreallocatedCache"].encode_prompt(p.prompt) for p in problems]
    torch.manual_seed(0)
    chains = samplers["PreallocatedCache"].generate(prompts[:64], purpose="rollout")
    prefixes = [
        g.context_ids + g.ids[:end] for g in chains for end in [0, *(g.thought_ends or [])[:-1]]
    ]
    budgets = [sampling.max_new_tokens - (len(p) - len(prompts[0])) for p in prefixes]
    workloads = {
        "eval": lambda s: s.generate([c for c in prompts for _ in range(4)], purpose="eval"),
        "mc": lambda s: s.generate(
            prefixes, purpose="mc", n=4, max_new_tokens=[max(b, 1) for b in budgets]
        ),
    }
    times = {(w, c): [] for w in workloads for c in samplers}
    tokens: dict[tuple[str, str], list[list[int]]] = {}
    for _ in range(args.rounds):
        for w, fn in workloads.items():
            for c, s in samplers.items():
                torch.manual_seed(1)
                t = time.perf_counter()
                out = fn(s)
                times[w, c].append(time.perf_counter() - t)
                tokens[w, c] = [g.ids for g in out]
    print(f"model: {origin}; torch threads: {args.threads}; rounds: {args.rounds}")
    print(f"mc: {len(prefixes)} prefixes x 4 continuations; eval: {len(prompts)} prompts x 4")
    print("| workload | cache | seconds (median) | generated tokens | speed-up | identical |")
    print("|---|---|---|---|---|---|")
    for w in workloads:
        ref = statistics.median(times[w, "DynamicCache"])
        for c in samplers:
            med = statistics.median(times[w, c])
            same = tokens[w, c] == tokens[w, "DynamicCache"]
            n = sum(map(len, tokens[w, c]))
            print(f"| {w} | {c} | {med:.2f} | {n} | {ref / med:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
