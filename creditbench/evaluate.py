"""Accuracy and self-localisation on held-out problems with the engine's own sampler.

Used for the warm-start record and the learning curves during training (fast,
in-process). Final numbers of a run come from lm-evaluation-harness as well.
Evaluation draws from its own seeded RNG and never disturbs the training RNG.
"""

from __future__ import annotations

import math
import random

import torch

from creditbench.config import SamplingConfig
from creditbench.ledger import Ledger
from creditbench.sampling import Sampler
from creditbench.tasks import Problem


def _stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def evaluate_accuracy(
    model,
    tokenizer,
    task,
    problems: list[Problem],
    sampling: SamplingConfig,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int = 0,
    ledger: Ledger | None = None,
) -> dict:
    """Mean reward over ``samples`` completions per problem (greedy when temperature is 0)."""
    sampler = Sampler.for_task(
        model, tokenizer, sampling, task, ledger if ledger is not None else Ledger()
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prompts = [sampler.encode_prompt(p.prompt) for p in problems]
        contexts = [c for c in prompts for _ in range(samples)]
        gens = sampler.generate(contexts, purpose="eval", temperature=temperature)
    rewards = [
        0.0 if g.stop == "length" else task.reward(problems[i // samples], g.text)
        for i, g in enumerate(gens)
    ]
    acc = sum(rewards) / len(rewards)
    per_problem = [
        sum(rewards[i * samples : (i + 1) * samples]) / samples for i in range(len(problems))
    ]
    mixed = sum(0 < x < 1 for x in per_problem) / len(problems) if samples > 1 else None
    return {
        "accuracy": acc,
        "stderr": _stderr(acc, len(rewards)),
        "n": len(rewards),
        "mixed_group_fraction": mixed,
        "mean_completion_tokens": sum(len(g.ids) for g in gens) / len(gens),
    }


def evaluate_localisation(
    model,
    tokenizer,
    task,
    problems: list[Problem],
    sampling: SamplingConfig,
    seed: int = 0,
    own_samples: int = 4,
    recovery_samples: int = 2,
) -> dict:
    """How well the policy names the first wrong thought, greedily, and how often it
    recovers from a prefix of a failed chain (``_recovery``; 0 samples: not measured).

    ``corrupted``: on traces with one planted error (the warm-start distribution);
    ``own``: on the policy's own failed completions, judged by the step oracle.
    Chance level is reported for comparison (uniform over the thoughts).
    """
    sampler = Sampler.for_task(model, tokenizer, sampling, task, Ledger())
    rng = random.Random(f"localisation-{seed}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        corrupted = [(p, *task.corrupt(p, rng)) for p in problems]
        own = []
        gens = sampler.generate(
            [sampler.encode_prompt(p.prompt) for p in problems for _ in range(own_samples)],
            purpose="eval",
        )
        for i, g in enumerate(gens):
            p = problems[i // own_samples]
            if task.reward(p, g.text) == 0:
                truth = task.first_error(p, g.text)
                if truth is not None:
                    own.append((p, g.text, truth))
        result = {}
        for name, items in (("corrupted", corrupted), ("own", own)):
            if not items:
                result[f"{name}_accuracy"], result[f"{name}_n"] = None, 0
                continue
            contexts = [
                sampler.encode_prompt(task.localisation_prompt(p, text)) for p, text, _ in items
            ]
            # room for the longest answer the task's format could give, and a little more
            budgets = [
                len(sampler.encode(task.localisation_target(max(len(task.segment(t)), 1), t, p)))
                + 2
                for p, t, _ in items
            ]
            outs = sampler.generate(
                contexts, purpose="eval", temperature=0.0, max_new_tokens=budgets, thoughts=None
            )
            hits, chance = 0, 0.0
            for (_, text, truth), o in zip(items, outs, strict=True):
                n = len(task.segment(text))
                hits += task.parse_localisation(o.text, n).thought == min(truth, max(n, 1))
                chance += 1.0 / max(n, 1)
            result[f"{name}_accuracy"] = hits / len(items)
            result[f"{name}_chance"] = chance / len(items)
            result[f"{name}_n"] = len(items)
        if recovery_samples:
            result.update(_recovery(sampler, task, own, sampling, rng, recovery_samples, "own"))
            result.update(
                _recovery(sampler, task, corrupted, sampling, rng, recovery_samples, "corrupted")
            )
    return result


def _recovery(sampler, task, items, sampling, rng, samples: int, name: str) -> dict:
    """Success rate of continuations from prefixes of failed chains, by kind of prefix.

    For a failed chain with first wrong thought ``e`` (a thought it holds) and a reset
    thought ``h`` (the prefix is thoughts ``1 .. h-1``, as SRPO resets): ``clean``, ``h``
    uniform in ``[1, e]``; ``erroneous``, ``h`` uniform in ``[e+1, n]`` (the prefix holds
    the wrong thought); ``after_slip``, ``h = e + 1`` (the prefix ends with it, so the next
    thought may repair it). ``samples`` continuations per prefix at the sampling
    temperature; one cut by the budget scores 0.
    """
    states = {"clean": [], "erroneous": [], "after_slip": []}
    for p, text, e in items:
        thoughts = task.segment(text)
        n = len(thoughts)
        if e > n:  # the first wrong thought is a missing one: no erroneous prefix
            continue
        states["clean"].append((p, thoughts[: rng.randint(1, e) - 1]))
        if e < n:  # the answer line cannot be repaired: an erroneous prefix ends before it
            states["erroneous"].append((p, thoughts[: rng.randint(e + 1, n) - 1]))
            states["after_slip"].append((p, thoughts[:e]))
    out = {}
    for kind, chosen in states.items():
        key = f"{name}_recovery_{kind}"
        if not chosen:
            out[key], out[f"{key}_n"] = None, 0
            continue
        prefixes = ["".join(t) for _, t in chosen]
        pre_ids = [sampler.tokenizer(x, add_special_tokens=False)["input_ids"] for x in prefixes]
        contexts = [
            sampler.encode_prompt(p.prompt) + ids
            for (p, _), ids in zip(chosen, pre_ids, strict=True)
        ]
        budgets = [max(sampling.max_new_tokens - len(ids), 1) for ids in pre_ids]
        gens = sampler.generate(contexts, purpose="eval", max_new_tokens=budgets, n=samples)
        wins = [
            0.0
            if g.stop == "length"
            else task.reward(chosen[i // samples][0], prefixes[i // samples] + g.text)
            for i, g in enumerate(gens)
        ]
        out[key], out[f"{key}_n"] = sum(wins) / len(wins), len(chosen)
    return out
