"""Seconds per evaluation of one model by lm-eval batch size (``eval.batch_size``).

An evaluation job of the testbed runs lm-eval on each of its models: both suites, the
experiment's problems and samples (mean@k at the training temperature), its lm-eval model
(``creditbench-hf`` in the default: lm-eval's ``hf`` with each batch decoded by the
engine's loop, finished rows leaving the batch). A batch's forward costs about the same
from 1 to 16 rows and grows slowly beyond (``benchmarks/forward_floor.py``), and a batch
shrinks as its rows finish, so the batch size sets how many forwards a suite takes. This
script runs the same evaluation in this process for each ``--batch-sizes`` (one torch
thread, the model loaded by lm-eval each time, as a job does), ``--repeats`` times, and
prints the best seconds per evaluation and each suite's accuracy (sampled, so the same
in distribution from one batch size to another, not draw for draw). A second table times
the in-training evaluation (``creditbench.evaluate.evaluate_accuracy``: ``train.eval_problems``
test problems x ``eval.samples``, the engine's sampler) by ``sampling.batch_size`` (rows
per sampler batch), ``--sampler-batch-sizes``.

    python benchmarks/eval_batch.py -c experiments/default.yaml --model results/default/base
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from creditbench.config import load_experiment  # noqa: E402
from creditbench.evaluate import evaluate_accuracy  # noqa: E402
from creditbench.lmeval import evaluate_suites  # noqa: E402
from creditbench.tasks import make_task  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-c", "--config", default="experiments/default.yaml")
    p.add_argument("--model", default="results/default/base")
    p.add_argument("--data", default="results/default/data")
    p.add_argument("--batch-sizes", nargs="+", default=["64", "128", "256", "512"])
    p.add_argument("--sampler-batch-sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    cfg = load_experiment(args.config)
    ev = cfg.eval
    task = make_task(cfg.task, args.data)
    suites = ev.suites or ["chains_test"]
    print(
        f"suites {suites}, problems {ev.problems}, samples {ev.samples}, "
        f"temperature {ev.temperature}, model {ev.lm_eval_model}"
    )
    print(f"{'batch':>6} {'s/eval':>8}  " + "  ".join(f"{s:>16}" for s in suites))
    with tempfile.TemporaryDirectory() as tmp:
        for bs in args.batch_sizes:
            size = bs if bs == "auto" else int(bs)
            best, acc = float("inf"), {}
            for r in range(args.repeats):
                jobs = {
                    s: (Path(tmp, f"{bs}-{r}-{s}.json"), task.data_dir / f"{task.suites[s]}.jsonl")
                    for s in suites
                }
                t0 = time.perf_counter()
                res = evaluate_suites(
                    args.model,
                    jobs,
                    backend=ev.lm_eval_model,
                    limit=ev.problems,
                    batch_size=size,
                    seed=ev.seed,
                    max_length=ev.max_length,
                    max_gen_toks=ev.max_gen_toks,
                    temperature=ev.temperature,
                    samples=ev.samples,
                )
                best = min(best, time.perf_counter() - t0)
                acc = {s: res[s]["accuracy"] for s in suites}
            print(f"{bs:>6} {best:>8.2f}  " + "  ".join(f"{acc[s]:>16.3f}" for s in suites))
    in_training(cfg, task, args)


def in_training(cfg, task, args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = cfg.run(next(iter(cfg.runs)))
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    problems = task.load("test")[: run.train.eval_problems]
    print(f"in-training evaluation: {len(problems)} problems x {run.eval.samples} samples")
    print(f"{'rows':>6} {'s/eval':>8} {'accuracy':>9}")
    for rows in args.sampler_batch_sizes:
        sampling = run.sampling.model_copy(update={"batch_size": rows})
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = evaluate_accuracy(
                model, tok, task, problems, sampling,
                temperature=run.eval.temperature, samples=run.eval.samples, seed=run.eval.seed,
            )  # fmt: skip
            best = min(best, time.perf_counter() - t0)
        print(f"{rows:>6} {best:>8.2f} {res['accuracy']:>9.3f}")


if __name__ == "__main__":
    main()
