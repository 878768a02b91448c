"""Warm-start steps per second of the default tiny model, by torch CPU threads.

The default's tiny model (0.36 M parameters, hidden size 96) multiplies small matrices:
on an idle CPU a second intra-op thread helps, but on a CPU that other processes share
a thread that waits for its peers loses its core, and each step stalls.
This times the warm start's supervised step (the default's batch of 32 reference
solutions, forward, backward, AdamW) with each thread count, interleaved round by round
so a load that changes during the run slows every setting alike, and prints steps per
second and the speed-up over the largest count. Measured on the 2-core machine, idle: 2
threads 16.97 steps/s, 1 thread 11.92 (0.70x); under a load of 6-16 other processes 1
thread was 9.9x faster than 2. The workflow's warm start runs alone, so it takes 2 threads
(``experiments/rules/common.smk``); the training and evaluation jobs, which run
side by side, take one each.

    python benchmarks/torch_threads.py --threads 1 2 --steps 40
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from creditbench.config import load_experiment
from creditbench.model import build_char_tokenizer, build_tiny_model
from creditbench.tasks import make_task
from creditbench.warmstart import _supervised_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/default.yaml")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = load_experiment(args.config)
    task = make_task(cfg.task)
    problems = task.generate("train")[:2000]
    tokenizer = build_char_tokenizer(task.alphabet)
    torch.manual_seed(0)
    model = build_tiny_model(cfg.model.tiny, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warm_start.lr)
    rng = random.Random(0)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def step() -> None:
        chosen = rng.sample(problems, cfg.warm_start.batch_size)
        pairs = [(encode(p.prompt), encode(task.solution(p))) for p in chosen]
        ids, attention, labels = _supervised_batch(pairs, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates: dict[int, list[float]] = {n: [] for n in args.threads}
    for _ in range(args.rounds):
        for n in args.threads:
            torch.set_num_threads(n)
            step()  # warm-up at this setting
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[n].append(args.steps / (time.perf_counter() - start))
    top = max(args.threads)
    base = statistics.median(rates[top])
    print(f"| torch threads | steps/s (median of rounds) | rounds | vs {top} threads |")
    print("|---|---|---|---|")
    for n in args.threads:
        med = statistics.median(rates[n])
        each = ", ".join(f"{r:.2f}" for r in rates[n])
        print(f"| {n} | {med:.2f} | {each} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
