"""Resident memory of a long training run: does it grow across steps?

Trains one run of an experiment (default: ``grpo`` of ``experiments/default.yaml``, whose
warm start it builds or reuses under ``--workdir``) for ``--steps`` steps in this process,
and samples the process's resident set size (RSS, from ``/proc/self/status``; ``VmHWM`` for
the peak) every ``--every`` steps as the trainer writes each step's metrics. It prints a table of
step, RSS and peak, and last the growth figures:

    rss_first_mib: X      (after the first --every steps, once allocators have warmed up)
    rss_last_mib: Y
    rss_growth_mib_per_100_steps: Z   (least-squares slope over the samples after the first)
    peak_mib: P

    python benchmarks/memory.py --steps 500 --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from creditbench.config import load_experiment  # noqa: E402
from creditbench.tasks import make_task  # noqa: E402
from creditbench.train import Trainer  # noqa: E402
from creditbench.warmstart import warm_start  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "experiments" / "default.yaml")
    p.add_argument("--run", default="grpo")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--every", type=int, default=25, help="steps between memory samples")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="reuse data and warm start here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cb-memory-"))
    cfg = load_experiment(
        args.config,
        overrides={
            "train": {
                "steps": args.steps,
                "checkpoint_every": max(args.steps // 5, 1),
                "eval_every": max(args.steps // 5, 1),
            }
        },
    )
    data, base = work / "data", work / "base"
    if not (data / "train.jsonl").is_file():
        make_task(cfg.task).write_data(data)
    if not (base / "config.json").is_file():
        print(f"warm start into {base} ...", flush=True)
        warm_start(cfg, data, base)

    trainer = Trainer(cfg.run(args.run), args.seed, base, data, work / "run")
    samples: list[tuple[int, float, float]] = []
    write = trainer._write  # the trainer writes one metrics row per step through it

    def sample_memory(file, metrics: dict) -> None:
        write(file, metrics)
        step = metrics.get("step", 0)
        if step and step % args.every == 0:
            samples.append((step, status_mib("VmRSS"), status_mib("VmHWM")))
            print(f"{step:6d}  rss {samples[-1][1]:8.1f} MiB  peak {samples[-1][2]:8.1f} MiB")

    trainer._write = sample_memory
    t0 = time.perf_counter()
    trainer.train()
    print(f"trained {args.steps} steps of {args.run} in {time.perf_counter() - t0:.0f} s")
    later = samples[1:] or samples
    print(f"rss_first_mib: {samples[0][1]:.1f}")
    print(f"rss_last_mib: {samples[-1][1]:.1f}")
    growth = 100 * slope([s for s, _, _ in later], [r for _, r, _ in later])
    print(f"rss_growth_mib_per_100_steps: {growth:.2f}")
    print(f"peak_mib: {max(h for _, _, h in samples):.1f}")


if __name__ == "__main__":
    main()
