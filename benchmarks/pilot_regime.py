"""Pilot: which ``chains`` regime can tell credit-assignment methods apart.

For each candidate regime (a few task / warm-start / model settings on top of
``experiments/saturated.yaml``, the earlier default), this builds the warm start,
reports its accuracy (in distribution and on the long suite, sampled at the training
temperature), its self-localisation accuracy against chance and how often a prefix
that holds a wrong thought still succeeds, then runs GRPO (the baseline every method is
compared with) for the experiment's step budget on a few seeds. It prints GRPO's
in-training accuracy curve, the seed-to-seed standard deviation of the final accuracy
and of the area under the curve (AUC: the mean accuracy over the evaluated steps,
trapezoidal), and the minimum detectable effect (MDE) of a paired two-sided test at
alpha 0.05 with 80% power for the default's number of seeds::

    MDE = (t_{0.975, n-1} + t_{0.80, n-1}) * sd_diff / sqrt(n),   sd_diff = sqrt(2) * sd

(``sd_diff``, the SD of a method-minus-GRPO difference over seeds, is taken as that of two
independent runs: conservative, since paired runs share the warm start and prompts).

The regime is chosen by these criteria, never by which method wins (only GRPO runs):

1. headroom: the warm start is well below the ceiling (sampled in-distribution accuracy
   at most ``--max-warm``) and GRPO does not reach it either (final at most ``--max-final``);
2. not saturated: GRPO still learns in the second half of the budget (the gain from the
   middle evaluation to the end is at least ``--min-late-gain`` of the whole gain);
3. long chains: an in-distribution solution has at least ``--min-thoughts`` thoughts on
   average, so one outcome reward is spread over many thoughts;
4. power: the MDE of the AUC is at most ``--max-mde`` (accuracy points), the size of the
   differences the credit diagnostics predict;
5. localisation: the warm start names the first wrong thought of its own failed chains
   at least twice as often as chance, so SRPO's self-localised reset differs from
   RRPO's random one.

The candidate meeting the most criteria wins, ties broken by the smaller AUC MDE. The
table goes to stdout and to ``--out`` (Markdown).

    nice -n 10 python benchmarks/pilot_regime.py --threads 1 --out results/pilot/pilot_regime.md

One process per candidate (``--candidates long``) runs them in parallel; each writes
``WORK/<name>/result.json``, and ``--reuse`` then tabulates them without recomputing. A
candidate whose warm start equals one already built (``long_slow`` shares ``long``'s)
reuses it. On a shared CPU use ``--threads 1``: torch's intra-op threads spin when the
scheduler takes their core, which slowed a 2-thread warm start about tenfold.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import yaml  # noqa: E402
from scipy import stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "saturated.yaml"

# name -> (what it changes, overrides of experiments/saturated.yaml)
LONG = {"min_len": 3, "max_len": 6, "long_min_len": 8, "long_max_len": 8}
CANDIDATES: dict[str, tuple[str, dict]] = {
    "saturated": (
        "the earlier default: 2-4 operations, long suite 6, no repairs, 3 layers",
        {},
    ),
    "long": (
        "3-6 operations (long suite 8), demonstrations repair half their slips, 3 layers",
        {
            "task": LONG,
            "warm_start": {"demo_repair_rate": 0.5},
            "sampling": {"max_new_tokens": 80},
        },
    ),
    "long_sloppy": (
        "as long, with a sloppier teacher: 60% of demonstrations slip",
        {
            "task": LONG,
            "warm_start": {"demo_error_rate": 0.6, "demo_repair_rate": 0.5},
            "sampling": {"max_new_tokens": 80},
        },
    ),
    "long_slow": (
        "as long, GRPO at a third of the learning rate (1e-4)",
        {
            "task": LONG,
            "warm_start": {"demo_repair_rate": 0.5},
            "sampling": {"max_new_tokens": 80},
            "train": {"lr": 1.0e-4},
        },
    ),
    "long_deep": (
        "as long, with a 6-layer model (same width)",
        {
            "task": LONG,
            "model": {"tiny": {"num_layers": 6}},
            "warm_start": {"demo_repair_rate": 0.5},
            "sampling": {"max_new_tokens": 80},
        },
    ),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--seeds", type=int, default=3, help="GRPO seeds per candidate")
    p.add_argument("--steps", type=int, default=40, help="GRPO steps (the default's budget)")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--eval-problems", type=int, default=100)
    p.add_argument("--long-problems", type=int, default=100)
    p.add_argument("--warm-steps", type=int, default=None, help="override warm_start.steps")
    p.add_argument("--skill-steps", type=int, default=None, help="override skill_steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--max-warm", type=float, default=0.6)
    p.add_argument("--max-final", type=float, default=0.85)
    p.add_argument("--min-late-gain", type=float, default=0.25)
    p.add_argument("--min-thoughts", type=float, default=5.0)
    p.add_argument("--max-mde", type=float, default=5.0, help="accuracy points")
    p.add_argument("--work", default="results/pilot", help="working directory")
    p.add_argument("--out", default="results/pilot/pilot_regime.md")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take a candidate's result from WORK/<name>/result.json where it exists",
    )
    return p.parse_args()


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def auc(steps: list[int], acc: list[float]) -> float:
    """Mean accuracy over the evaluated span (trapezoidal area / span)."""
    area = sum((steps[i + 1] - steps[i]) * (acc[i] + acc[i + 1]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Paired two-sided MDE for ``n`` seeds, from one arm's seed SD (sd_diff = sqrt 2 sd)."""
    df = max(n - 1, 1)
    t = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
    return t * math.sqrt(2) * sd / math.sqrt(n)


def run_candidate(name: str, overrides: dict, args) -> dict:
    from creditbench.config import experiment_from_dict
    from creditbench.evaluate import evaluate_accuracy
    from creditbench.tasks import make_task
    from creditbench.train import Trainer
    from creditbench.warmstart import warm_start

    data = merge(yaml.safe_load(BASE.read_text()), overrides)
    data["experiment"] = f"pilot_{name}"
    data["train"] = {
        **data.get("train", {}),
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eval_problems": args.eval_problems,
        "checkpoint_every": args.steps,
    }
    if args.warm_steps is not None:
        data["warm_start"]["steps"] = args.warm_steps
    if args.skill_steps is not None:
        data["warm_start"]["skill_steps"] = args.skill_steps
    data["runs"] = {"grpo": {"method": "grpo"}}
    data.pop("diagnostics", None)
    cfg = experiment_from_dict(data, source=f"pilot:{name}")
    root = Path(args.work) / name
    t0 = time.perf_counter()
    shared = same_warm_start(cfg, args)  # a candidate with the same warm start, already built
    if shared is not None:
        data_dir, base_dir = shared / "data", shared / "base"
        record = json.loads((base_dir / "warmstart.json").read_text())
    else:
        data_dir, base_dir = root / "data", root / "base"
        make_task(cfg.task).write_data(data_dir)
        record = warm_start(cfg, data_dir, base_dir)
    task = make_task(cfg.task, data_dir)
    warm_seconds = time.perf_counter() - t0
    run = cfg.run("grpo")
    long_problems = task.load("test_long")[: args.long_problems]

    def long_accuracy(model, tokenizer) -> float:
        return evaluate_accuracy(
            model, tokenizer, task, long_problems, run.sampling,
            temperature=run.eval.temperature, samples=run.eval.samples, seed=run.eval.seed,
        )["accuracy"]  # fmt: skip

    from creditbench.model import load_policy, load_tokenizer

    base_tok = load_tokenizer(base_dir)
    base_model = load_policy(base_dir, cfg.model, trainable=False)
    warm_long = long_accuracy(base_model, base_tok)
    test = task.load("test")[: ws_eval(cfg)]
    thoughts = statistics.mean(len(task.segment(task.solution(p))) for p in test)
    curves, finals, aucs, longs, step_secs = [], [], [], [], []
    for seed in range(args.seeds):
        out = root / "runs" / f"seed{seed}"
        trainer = Trainer(run, seed, base_dir, data_dir, out)
        trainer.train()
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["step"], r["eval/test/accuracy"]) for r in rows if "eval/test/accuracy" in r]
        steps, acc = [s for s, _ in evals], [a for _, a in evals]
        curves.append(acc)
        finals.append(acc[-1])
        aucs.append(auc(steps, acc))
        step_secs.extend(r["step_seconds"] for r in rows if "step_seconds" in r)
        longs.append(long_accuracy(trainer.model, trainer.tokenizer))
    mean_curve = [statistics.mean(c[i] for c in curves) for i in range(len(curves[0]))]
    sd_final = statistics.stdev(finals) if len(finals) > 1 else float("nan")
    sd_auc = statistics.stdev(aucs) if len(aucs) > 1 else float("nan")
    loc = record["localisation"] or {}
    return {
        "name": name,
        "what": CANDIDATES[name][0],
        "parameters": record["parameters"],
        "thoughts": thoughts,
        "warm_greedy": record["greedy"]["accuracy"],
        "warm_sampled": record["sampled"]["accuracy"],
        "warm_long": warm_long,
        "loc_own": loc.get("own_accuracy"),
        "loc_own_chance": loc.get("own_chance"),
        "loc_planted": loc.get("corrupted_accuracy"),
        "loc_planted_chance": loc.get("corrupted_chance"),
        "recovery_clean": loc.get("own_recovery_clean"),
        "recovery_erroneous": loc.get("own_recovery_erroneous"),
        "recovery_after_slip": loc.get("own_recovery_after_slip"),
        "eval_steps": steps,
        "curve": mean_curve,
        "finals": finals,
        "aucs": aucs,
        "final": statistics.mean(finals),
        "auc": statistics.mean(aucs),
        "sd_final": sd_final,
        "sd_auc": sd_auc,
        "mde_final": mde(sd_final, args.seeds),
        "mde_auc": mde(sd_auc, args.seeds),
        "long_final": statistics.mean(longs),
        "step_seconds": statistics.mean(step_secs),
        "warm_seconds": warm_seconds,
        "warm_start_from": shared.name if shared is not None else name,
        "seconds": time.perf_counter() - t0,
    }


def same_warm_start(cfg, args) -> Path | None:
    """The work folder of another candidate whose warm start this one shares (same task,
    model and warm-start sections), if it is built; its data and base are then reused."""
    from creditbench.config import experiment_from_dict

    mine = (cfg.task, cfg.model, cfg.warm_start)
    for other, (_, over) in CANDIDATES.items():
        folder = Path(args.work) / other
        if other == cfg.experiment.removeprefix("pilot_"):
            continue
        if not (folder / "base" / "warmstart.json").is_file():
            continue
        data = merge(yaml.safe_load(BASE.read_text()), over)
        data["runs"] = {"grpo": {"method": "grpo"}}
        data.pop("diagnostics", None)
        if args.warm_steps is not None:
            data["warm_start"]["steps"] = args.warm_steps
        if args.skill_steps is not None:
            data["warm_start"]["skill_steps"] = args.skill_steps
        theirs = experiment_from_dict(data, source=f"pilot:{other}")
        if (theirs.task, theirs.model, theirs.warm_start) == mine:
            return folder
    return None


def ws_eval(cfg) -> int:
    return cfg.warm_start.eval_problems


def criteria(r: dict, args) -> dict[str, bool]:
    gain = r["curve"][-1] - r["curve"][0]
    mid = r["curve"][len(r["curve"]) // 2]
    return {
        "headroom": r["warm_sampled"] <= args.max_warm and r["final"] <= args.max_final,
        "not saturated": gain > 0 and (r["curve"][-1] - mid) >= args.min_late_gain * gain,
        "long chains": r["thoughts"] >= args.min_thoughts,
        "power": 100 * r["mde_auc"] <= args.max_mde,
        "localisation": (r["loc_own"] or 0.0) >= 2 * (r["loc_own_chance"] or 1.0),
    }


def pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def table(results: list[dict], args, chosen: str) -> str:
    lines = [
        f"GRPO, {args.steps} steps, {args.seeds} seeds; accuracy in % (mean@4 at the training "
        f"temperature); MDE: paired, two-sided alpha 0.05, 80% power, n = {args.seeds}.",
        "",
        "| regime | thoughts | params | warm start (greedy / sampled / long) | "
        "localisation own (chance) | planted (chance) | recovery clean / erroneous / "
        "after slip | GRPO final (SD) | AUC (SD) | MDE final / AUC | long final | "
        "s/step | criteria met |",
        "|" + "---|" * 13,
    ]
    for r in results:
        met = criteria(r, args)
        lines.append(
            f"| {'**' + r['name'] + '**' if r['name'] == chosen else r['name']} "
            f"| {r['thoughts']:.1f} | {r['parameters'] / 1e6:.2f} M "
            f"| {pct(r['warm_greedy'])} / {pct(r['warm_sampled'])} / {pct(r['warm_long'])} "
            f"| {pct(r['loc_own'])} ({pct(r['loc_own_chance'])}) "
            f"| {pct(r['loc_planted'])} ({pct(r['loc_planted_chance'])}) "
            f"| {pct(r['recovery_clean'])} / {pct(r['recovery_erroneous'])} / "
            f"{pct(r['recovery_after_slip'])} "
            f"| {pct(r['final'])} ({pct(r['sd_final'])}) | {pct(r['auc'])} ({pct(r['sd_auc'])}) "
            f"| {pct(r['mde_final'])} / {pct(r['mde_auc'])} | {pct(r['long_final'])} "
            f"| {r['step_seconds']:.2f} | {', '.join(k for k, v in met.items() if v) or 'none'} |"
        )
    lines += ["", "GRPO's mean in-training curve (accuracy % at steps):", ""]
    for r in results:
        pts = " ".join(f"{s}:{pct(a)}" for s, a in zip(r["eval_steps"], r["curve"], strict=True))
        lines.append(f"- {r['name']} ({r['what']}): {pts}")
    lines += ["", "Per seed (final / AUC, %):", ""]
    for r in results:
        per = ", ".join(f"{pct(f)} / {pct(a)}" for f, a in zip(r["finals"], r["aucs"], strict=True))
        lines.append(
            f"- {r['name']}: {per}; "
            + (
                f"warm start {r['warm_seconds']:.0f} s"
                if r.get("warm_start_from", r["name"]) == r["name"]
                else f"the warm start of {r['warm_start_from']}"
            )
            + f", all {r['seconds']:.0f} s"
        )
    return "\n".join(lines)


def choose(results: list[dict], args) -> tuple[str, str]:
    def key(r):
        return (-sum(criteria(r, args).values()), r["mde_auc"])

    best = min(results, key=key)
    met = criteria(best, args)
    why = (
        f"{best['name']} meets {sum(met.values())} of {len(met)} criteria "
        f"({', '.join(k for k, v in met.items() if v) or 'none'}"
        f"{'; misses ' + ', '.join(k for k, v in met.items() if not v) if not all(met.values()) else ''})"
        f", the most of any candidate, with an AUC MDE of {pct(best['mde_auc'])} points"
    )
    return best["name"], why


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    for name in args.candidates:
        saved = Path(args.work) / name / "result.json"
        if args.reuse and saved.is_file():
            r = {**json.loads(saved.read_text()), "what": CANDIDATES[name][0]}
        else:
            r = run_candidate(name, CANDIDATES[name][1], args)
            saved.write_text(json.dumps(r))
        print(json.dumps({k: v for k, v in r.items() if k not in ("what",)}), flush=True)
        results.append(r)
    chosen, why = choose(results, args)
    text = table(results, args, chosen)
    spent = sum(r["seconds"] for r in results)
    text += f"\n\nChosen: **{chosen}**: {why}. Pilot compute: {spent:.0f} s over the candidates.\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
