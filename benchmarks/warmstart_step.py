"""Seconds per warm-start step at several ``warm_start.micro_batches``: one padded batch
against length-sorted micro-batches (``creditbench.warmstart.supervised_step``).

The batches are those of the experiment's warm start: phase 1 solving demonstrations
(with its ``demo_error_rate`` and ``demo_repair_rate``), phase 2 the skills mix
(``replay_fraction`` solving, the rest the skills in equal shares), drawn by the warm
start's ``example_makers``, ``batch_size`` examples each, drawn once and reused for
every setting, so every setting computes the same update. The table gives the share of
padded positions that are real tokens and the median milliseconds per step (forward,
backward, optimiser) over ``--steps`` steps, at ``--threads`` threads, on the
experiment's tiny model (untrained: the step's cost does not depend on its weights).

    python benchmarks/warmstart_step.py -c experiments/default.yaml --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time

import torch

from creditbench.config import SamplingConfig, load_experiment
from creditbench.model import build_char_tokenizer, build_tiny_model
from creditbench.sampling import Sampler
from creditbench.tasks import make_task
from creditbench.warmstart import example_makers, supervised_step


def batches(cfg, task, tok, n: int, rng: random.Random) -> dict[str, list]:
    """``n`` batches of each phase, drawn by the warm start's own example makers."""
    ws = cfg.warm_start
    encode_prompt = Sampler.for_task(None, tok, SamplingConfig(), task).encode_prompt
    makers = example_makers(task, task.load("train"), ws, tok, encode_prompt, rng)
    skills = [makers[k] for k in ws.skills]

    def skill_phase():
        if rng.random() < 1.0 - ws.replay_fraction:
            return rng.choice(skills)()
        return makers["solve"]()

    return {
        "solve": [[makers["solve"]() for _ in range(ws.batch_size)] for _ in range(n)],
        "skills": [[skill_phase() for _ in range(ws.batch_size)] for _ in range(n)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-c", "--config", default="experiments/default.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_experiment(args.config)
    with tempfile.TemporaryDirectory() as data:
        make_task(cfg.task).write_data(data)
        task = make_task(cfg.task, data)
        tok = build_char_tokenizer(task.alphabet)
        phases = batches(cfg, task, tok, args.steps, random.Random(0))
    model = build_tiny_model(cfg.model.tiny, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warm_start.lr)
    print(f"{cfg.experiment}: batch {cfg.warm_start.batch_size}, {args.threads} threads")
    print(f"{'phase':8} {'micro':>5} {'useful':>7} {'ms/step':>8}")
    for phase, steps in phases.items():
        for m in args.micro_batches:
            useful = padded = 0
            for pairs in steps:
                lengths = sorted(len(p) + len(t) for p, t in pairs)
                parts = min(m, len(pairs))
                bounds = [round(j * len(pairs) / parts) for j in range(parts + 1)]
                useful += sum(lengths)
                padded += sum((hi - lo) * lengths[hi - 1] for lo, hi in itertools.pairwise(bounds))
            times = []
            for pairs in steps:
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                supervised_step(model, pairs, tok.pad_token_id, m, "cpu")
                opt.step()
                times.append(time.perf_counter() - t0)
            print(
                f"{phase:8} {m:>5} {useful / padded:>7.2f} {1e3 * statistics.median(times):>8.1f}"
            )


if __name__ == "__main__":
    main()
