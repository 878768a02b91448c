"""GRPO and SRPO 1x4 on the testbed through each rollout backend: reward curves side by side.

The same warm start, seed, prompts and settings for both backends (the model and testbed
of ``benchmarks/rollout_backends.py``; ``--workdir`` shares its data and warm start); the
only difference is ``sampling.backend``. With sampling the two backends draw different
chains (different random streams), so the curves agree in trend, not token for token.
Prints one table per method (step, HF reward, vLLM reward) and the mean reward of the
first and last ``--window`` steps.

    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/backend_reward_curves.py --steps 12

A warm start that samples a few percent right gives GRPO almost no signal in a few
steps. The default experiment's arithmetic (``--modulus 10``) and imperfect teacher
(``--demo-error-rate 0.4 --demo-repair-rate 0.5``) start well above that, below the
ceiling:

    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/backend_reward_curves.py \
        --steps 16 --modulus 10 --demo-error-rate 0.4 --demo-repair-rate 0.5 \
        --warm-steps 1000 --warm-lr 3e-3 --lr 3e-4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout_backends import config  # noqa: E402

from creditbench.tasks import make_task  # noqa: E402
from creditbench.warmstart import warm_start  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step x 2")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--pool", type=int, default=16, help="train prompts revisited")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--warm-steps", type=int, default=400)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--min-len", type=int, default=3, help="operations per chain, at least")
    p.add_argument("--max-len", type=int, default=6, help="operations per chain, at most")
    p.add_argument("--modulus", type=int, default=100, help="chains' modulus (default run: 10)")
    p.add_argument("--warm-lr", type=float, default=2e-3, help="warm start learning rate")
    p.add_argument("--demo-error-rate", type=float, default=0.0, help="(default run: 0.4)")
    p.add_argument("--demo-repair-rate", type=float, default=0.0, help="(default run: 0.5)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["grpo", "srpo_1x4"])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


RUNS = {"grpo": {"method": "grpo"}, "srpo_1x4": {"method": "srpo", "split": "1x4"}}


def train(args, root: Path, name: str, backend: str) -> tuple[list[float], float]:
    from creditbench.train import Trainer

    run = config(args, {name: RUNS[name]}).run(name)
    run = run.model_copy(
        update={
            "sampling": run.sampling.model_copy(update={"backend": backend}),
            "train": run.train.model_copy(update={"steps": args.steps, "lr": args.lr}),
        }
    )
    out = root / "runs" / f"{name}_{backend}"
    t0 = time.perf_counter()
    t = Trainer(run, args.seed, root / "base", root / "data", out)
    t.train_problems = t.train_problems[: args.pool]
    try:
        t.train()
    finally:
        if hasattr(t.sampler, "close"):
            t.sampler.close()
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["reward"] for r in rows if "reward" in r], time.perf_counter() - t0


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        cfg = config(args)
        if not (root / "data" / "train.jsonl").is_file():
            make_task(cfg.task).write_data(root / "data")
        if not (root / "base" / "config.json").is_file():
            warm_start(cfg, root / "data", root / "base")
        res = {}
        for name in args.methods:
            res[name] = {b: train(args, root, name, b) for b in ("hf", "vllm")}
    w = args.window
    for name, by in res.items():
        (hf, hf_s), (vl, vl_s) = by["hf"], by["vllm"]
        print(
            f"\n{name}: seed {args.seed}, {args.steps} steps ({hf_s:.0f} s HF, {vl_s:.0f} s vLLM)"
        )
        print("| step | reward (hf) | reward (vllm) |")
        print("|---|---|---|")
        for i, (a, b) in enumerate(zip(hf, vl, strict=True), start=1):
            print(f"| {i} | {a:.3f} | {b:.3f} |")
        for k, c in (("hf", hf), ("vllm", vl)):
            print(
                f"{name} {k}: first {w} steps {sum(c[:w]) / w:.3f}, last {w} {sum(c[-w:]) / w:.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
