"""Seconds and forwarded tokens of OAR-P's importance pass, with and without the prefix
cache (``methods/oar.py``, ``prefix_cache``).

OAR-P forwards one copy of each completion per reasoning token, that token replaced by
the pad token. The copy equals the clean sequence before the token, so with the prefix
cache it is forwarded from that token on, on the clean forward's keys and values; without
it, whole (the official code's computation). This script samples a step's completions of
the ``--run`` (OAR's own ``collect``: ``--prompts`` x the run's group size, the default's
sampling) from the warm-started base, builds OAR's probes of every completion with a
parsable answer, and times ``perturbation_importance`` both ways (one torch thread, the
best of ``--repeats``). It prints the seconds, the forwarded tokens and the largest
difference between the two importances (relative to the largest importance).

    python benchmarks/oar_perturbation.py --base results/default/base
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from creditbench.config import load_experiment  # noqa: E402
from creditbench.ledger import Ledger  # noqa: E402
from creditbench.methods import MethodContext, load_method  # noqa: E402
from creditbench.sampling import Sampler  # noqa: E402
from creditbench.tasks import make_task  # noqa: E402
from creditbench.train import problems_for_step  # noqa: E402

oar = load_method("oar")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-c", "--config", default="experiments/default.yaml")
    p.add_argument("--run", default="oar_p")
    p.add_argument("--base", default="results/default/base")
    p.add_argument("--data", default="results/default/data")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument(
        "--steps", type=int, nargs="+", default=[0, 1, 2], help="training steps' prompts"
    )
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_experiment(args.config)
    run = cfg.run(args.run)
    params = oar.Params(**run.params)
    model = AutoModelForCausalLM.from_pretrained(args.base).eval()
    tok = AutoTokenizer.from_pretrained(args.base)
    task = make_task(cfg.task, args.data)
    train = task.load("train")
    ctx = MethodContext(
        model, tok, Sampler(model, tok, run.sampling, Ledger()), task, Ledger(), run
    )
    method = oar.Method(params, ctx)
    print(
        f"{'step':>4} {'probes':>6} {'copies':>6} {'cache':>5} {'seconds':>8} {'tokens':>8} {'max rel diff':>13}"
    )
    for step in args.steps:
        torch.manual_seed(step)
        idx = problems_for_step(len(train), args.prompts, step, 0)
        groups = method.collect([train[i] for i in idx], step)
        probes = [q for g in groups for t in g.trajectories if (q := method.probe(t)) is not None]
        copies = sum(len(q.positions) for q in probes)
        results = {}
        for cache in (False, True):
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                imp, tokens = oar.perturbation_importance(
                    model, probes, tok.pad_token_id, params.perturbation_batch_size,
                    prefix_cache=cache,
                )  # fmt: skip
                best = min(best, time.perf_counter() - t0)
            results[cache] = torch.cat(imp)
            diff = ""
            if cache:
                scale = float(results[False].abs().max()) or 1.0
                diff = f"{float((results[True] - results[False]).abs().max()) / scale:.2e}"
            print(
                f"{step:>4} {len(probes):>6} {copies:>6} {str(cache):>5} {best:>8.3f} "
                f"{tokens:>8} {diff:>13}"
            )


if __name__ == "__main__":
    main()
