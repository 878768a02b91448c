"""Credit-assignment diagnostics at a fixed checkpoint, on a task with a step oracle.

Every method assigns its first credit at the shared warm start (``results/<exp>/base``);
there, on the testbed, the truth about credit can be estimated and each method held to it.
Four measurements (``analysis.diagnostics`` runs them, writes JSON, tables and figures):

1. **Ground-truth step values** (``sample_probes``, ``ground_truth``). A fixed probe set:
   one completion per test problem, sampled from the base at the experiment's sampling
   settings with a fixed seed, chosen to mix failures and successes. For every thought
   prefix ``s_k = (x0, y_1..y_k)``, k = 0..n-1, ``V(s_k)`` is the mean reward of M Monte
   Carlo continuations from ``s_k`` (same sampling; a continuation may use only the length
   budget the prefix leaves, and one cut by it scores 0, as in training), with its
   standard error ``sqrt(var/M)`` (unbiased variance). The true step advantage of thought
   k (1-based) is ``A*_k = V(s_k) - V(s_{k-1})`` with ``V(s_n) = R(y)`` (the completion's
   own reward closes the last thought); every token of thought k carries ``A*_k``.
2. **Advantage-truth agreement** (``ProbeContext``, ``probe_credit``). The method's own
   ``collect`` + ``advantages`` run on batches of probe problems, with the probe
   completion put in place of the first completion sampled for its problem in the
   method's first sampling call (and, for reset methods, in place of the first
   continuation of a reset into the probe's own prefix, so a failed probe that became a
   seed is credited as one of its suffixes, as SRPO would credit it). The per-token
   advantages and loss mask the method gives the probe are compared with the true step
   advantages of the same tokens (``credit_correlations``).
3. **Gradient variance** (``gradient_variance``). B independent collect -> advantages ->
   loss -> backward passes on the same training prompts (the first step's), no
   optimiser step; the loss is the engine's ``policy_loss`` as ``Trainer.update`` calls it
   on its first minibatch pass, over the whole batch. From the flattened gradients:
   ``tr(Cov) / ||mean||^2`` and the mean pairwise cosine (``gradient_stats``).
4. **VinePPO's K-sample values** (``vine_ranking``). For pairs of distinct next thoughts
   sampled from the same probe prefix: is the one with the higher K-sample MC value the one
   with the higher ground-truth value, for each K (pairs with a clear true gap only)?

5. **A learned critic against the truth** (``critic_diagnostics``; PPO's critic,
   ``methods/ppo.py``): its values of the probe states against their MC values (error,
   correlation), and its ranking of the same pairs of next thoughts as item 4, beside the
   K-sample MC ranking (VinePPO's value analysis: critics rank alternative steps barely
   above chance). ``critic_over_training`` does this at the warm start, each kept
   checkpoint and the end of a run, each against the truth of that policy.

SRPO's localisation and correction rates are per-step metrics of ``methods/srpo.py``
(``Method.step_metrics``); ``gradient_variance`` pools them over its batches at the base.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from creditbench.config import ExperimentConfig, RunConfig, SamplingConfig
from creditbench.ledger import Ledger
from creditbench.loss import batch_loss, completion_logprobs
from creditbench.methods import MethodContext, load_method
from creditbench.rollouts import Batch, Trajectory
from creditbench.tasks import Problem, make_task
from creditbench.utils import seed_everything

# [choice] tokens whose true step advantage is at least this large in magnitude count
# towards ``sign_agreement`` (smaller true advantages are within MC noise of 0)
SIGN_MIN_TRUTH = 0.1


@dataclass
class DiagnosticsSettings:
    """Sizes of the diagnostics (``analysis.diagnostics`` takes each as an option)."""

    probes: int = 16  # probe completions (one per test problem)
    pool: int = 64  # test problems sampled to choose the probes from
    failure_fraction: float = 0.5  # share of failed probes (the rest succeed), if available
    mc_rollouts: int = 64  # M: continuations per prefix for the ground-truth values
    batches: int = 6  # B: independent batches for the gradient variance
    repeats: int = 1  # independent method passes over the probe set (pooled)
    ranking_ks: tuple[int, ...] = (1, 2, 4, 8, 16)  # VinePPO K values; () skips the test
    ranking_candidates: int = 4  # next thoughts sampled per prefix to find a distinct pair
    ranking_truth_rollouts: int = 64  # continuations for the pair's ground-truth values
    ranking_min_gap: float = 0.2  # a pair's true values differ by at least this ...
    # ... and by at least this many standard errors of the difference
    ranking_min_z: float = 2.0
    seed: int = 0

    def check(self) -> DiagnosticsSettings:
        for name in ("probes", "pool", "mc_rollouts", "batches", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"diagnostics.{name} must be >= 1, got {getattr(self, name)}")
        if self.mc_rollouts < 2:
            raise ValueError("diagnostics.mc_rollouts must be >= 2 (a standard error needs 2)")
        if not 0 <= self.failure_fraction <= 1:
            raise ValueError(f"diagnostics.failure_fraction must be in [0, 1]: {self}")
        if any(k < 1 for k in self.ranking_ks):
            raise ValueError(f"diagnostics.ranking_ks must be >= 1, got {self.ranking_ks}")
        if self.ranking_ks and self.ranking_candidates < 2:
            raise ValueError("diagnostics.ranking_candidates must be >= 2 (a pair)")
        return self


# ------------------------------------------------------------------------- pure pieces
def mc_estimate(rewards: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error)`` of a Monte Carlo value: ``sqrt(var / M)``, unbiased var."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("an MC value needs at least one continuation")
    se = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.nan
    return float(r.mean()), se


def estimate_values(
    n_states: int,
    continue_fn: Callable[[list[int], int], list[list[float]]],
    m: int,
) -> list[tuple[float, float]]:
    """``(V, SE)`` of each of ``n_states`` states from ``m`` continuations each.

    ``continue_fn(state_indices, m)`` returns, per state, the rewards of ``m`` sampled
    continuations (one batched call for all states).
    """
    if n_states == 0:
        return []
    rewards = continue_fn(list(range(n_states)), m)
    if len(rewards) != n_states or any(len(r) != m for r in rewards):
        raise RuntimeError(f"continue_fn returned {[len(r) for r in rewards]}, {m} each wanted")
    return [mc_estimate(r) for r in rewards]


def true_step_advantages(values: Sequence[float], reward: float) -> list[float]:
    """``A*_k = V(s_k) - V(s_{k-1})`` for thoughts k = 1..n, with ``V(s_n) = R(y)``.

    ``values``: ``V(s_0) .. V(s_{n-1})``.
    """
    if len(values) == 0:
        raise ValueError("a completion has at least one thought")
    closed = [*map(float, values), float(reward)]
    return [closed[k] - closed[k - 1] for k in range(1, len(closed))]


def step_advantage_se(value_se: Sequence[float]) -> list[float]:
    """Standard errors of ``A*_k`` (independent estimates; ``R(y)`` is exact)."""
    se = [*map(float, value_se), 0.0]
    return [math.sqrt(se[k] ** 2 + se[k - 1] ** 2) for k in range(1, len(se))]


def step_ends(thought_ends: Sequence[int], n_tokens: int) -> list[int]:
    """Exclusive token ends of the steps; a completion with no thought is one step."""
    return list(thought_ends) or [n_tokens]


def per_token(step_values: Sequence[float], ends: Sequence[int]) -> list[float]:
    """Every token of step k carries ``step_values[k]``."""
    if len(step_values) != len(ends):
        raise ValueError(f"{len(step_values)} step values for {len(ends)} steps")
    out, start = [], 0
    for v, end in zip(step_values, ends, strict=True):
        out.extend([float(v)] * (end - start))
        start = end
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return math.nan
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc**2).sum()) * float((yc**2).sum()))
    return float((xc * yc).sum() / denom) if denom > 1e-300 else math.nan


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return math.nan
    return _pearson(_ranks(x), _ranks(y))


def credit_correlations(records: Sequence[dict]) -> dict[str, float]:
    """How a method's per-token advantages track the true step advantages.

    ``records``: one per probe pass, with per-token ``advantages``, ``mask`` (1 = trained
    on) and ``truth`` (the token's ``A*_k``). Tokens of all probes are pooled.

    - ``pearson`` / ``spearman``: over the tokens the method trains on;
    - ``pearson_all`` / ``spearman_all``: over every probe token, a masked token counting as
      advantage 0 (a method that does not train on a token gives it no credit);
    - ``pearson_within``: over trained tokens after subtracting each probe's mean (of both
      advantages and truth over its trained tokens): step-level credit within a completion
      (NaN for a sequence-level method, whose advantages are constant along a completion);
    - ``sign_agreement``: fraction of trained tokens with ``|A*| >= SIGN_MIN_TRUTH`` whose
      advantage has the sign of ``A*`` (0 counts as a disagreement);
    - ``coverage``: trained tokens / probe tokens; ``probes_trained``: probe passes with at
      least one trained token. NaN where a statistic is undefined (constant input).
    """
    adv, mask, truth, within_a, within_t = [], [], [], [], []
    trained_probes = 0
    for r in records:
        a = np.asarray(r["advantages"], dtype=np.float64)
        m = np.asarray(r["mask"], dtype=np.float64) > 0
        t = np.asarray(r["truth"], dtype=np.float64)
        if not (a.size == m.size == t.size):
            raise ValueError(f"record sizes differ: {a.size}, {m.size}, {t.size}")
        adv.append(a)
        mask.append(m)
        truth.append(t)
        if m.any():
            trained_probes += 1
            within_a.append(a[m] - a[m].mean())
            within_t.append(t[m] - t[m].mean())
    if not records:
        return {"tokens": 0, "trained_tokens": 0, "coverage": math.nan, "probes": 0}
    a, m, t = np.concatenate(adv), np.concatenate(mask), np.concatenate(truth)
    a_all = np.where(m, a, 0.0)
    clear = m & (np.abs(t) >= SIGN_MIN_TRUTH)
    wa = np.concatenate(within_a) if within_a else np.zeros(0)
    wt = np.concatenate(within_t) if within_t else np.zeros(0)
    within = math.nan if wa.size < 2 or np.allclose(wa, 0.0, atol=1e-9) else _pearson(wa, wt)
    return {
        "probes": len(records),
        "probes_trained": trained_probes,
        "tokens": int(a.size),
        "trained_tokens": int(m.sum()),
        "coverage": float(m.mean()) if a.size else math.nan,
        "pearson": _pearson(a[m], t[m]),
        "spearman": _spearman(a[m], t[m]),
        "pearson_all": _pearson(a_all, t),
        "spearman_all": _spearman(a_all, t),
        "pearson_within": within,
        "sign_agreement": float((np.sign(a[clear]) == np.sign(t[clear])).mean())
        if clear.any()
        else math.nan,
        "sign_tokens": int(clear.sum()),
    }


def gradient_stats(grads: Sequence[np.ndarray | torch.Tensor]) -> dict[str, float]:
    """Spread of B policy-gradient estimates (flattened gradients, one per batch).

    ``trace_cov``: ``sum_b ||g_b - mean||^2 / (B - 1)`` (the trace of the covariance);
    ``rel_variance``: ``trace_cov / ||mean||^2`` (the noise of one batch's estimate relative
    to the signal; ``||mean||^2`` is itself biased up by ``trace_cov / B``);
    ``cosine_mean`` / ``cosine_min``: over the B(B-1)/2 pairs of non-zero gradients;
    ``zero_batches``: batches whose gradient is exactly 0 (nothing to learn from).
    """
    g = [torch.as_tensor(x).detach().to(torch.float64).flatten() for x in grads]
    if len(g) < 2:
        raise ValueError("gradient statistics need at least 2 batches")
    stack = torch.stack(g)
    mean = stack.mean(0)
    dev = ((stack - mean) ** 2).sum(1)
    trace = float(dev.sum() / (len(g) - 1))
    mean_sq = float((mean**2).sum())
    norms = stack.norm(dim=1)
    nonzero = [i for i in range(len(g)) if float(norms[i]) > 0]
    cos = [float(stack[i] @ stack[j] / (norms[i] * norms[j])) for i, j in combinations(nonzero, 2)]
    return {
        "batches": len(g),
        "trace_cov": trace,
        "mean_sq_norm": mean_sq,
        "rel_variance": trace / mean_sq if mean_sq > 0 else math.nan,
        "grad_norm_mean": float(norms.mean()),
        "cosine_mean": float(np.mean(cos)) if cos else math.nan,
        "cosine_min": float(np.min(cos)) if cos else math.nan,
        "cosine_pairs": len(cos),
        "zero_batches": len(g) - len(nonzero),
    }


def ranking_accuracy(
    est_a: Sequence[float], est_b: Sequence[float], truth_diff: float, k: int
) -> float | None:
    """Expected accuracy of ranking a pair by K-sample values, from disjoint blocks.

    ``est_a`` / ``est_b``: independent continuation rewards of each side (not those of the
    ground truth); they are cut into ``len // k`` disjoint blocks of K, and each block's
    means are compared: 1 if their order is the true order (``truth_diff = V_a - V_b``),
    1/2 for a tie (the update cannot tell them apart: a coin flip), 0 otherwise.
    None when fewer than K rewards are given.
    """
    n = min(len(est_a), len(est_b)) // k
    if n == 0 or truth_diff == 0:
        return None
    sign = 1.0 if truth_diff > 0 else -1.0
    scores = []
    for j in range(n):
        d = float(np.mean(est_a[j * k : (j + 1) * k]) - np.mean(est_b[j * k : (j + 1) * k]))
        scores.append(0.5 if d == 0 else float(d * sign > 0))
    return float(np.mean(scores))


def summarise_values(probes: Sequence[dict]) -> dict[str, float]:
    """The ground truth's size and precision: probes, states, SEs of V and A*."""
    se = [s for p in probes for s in p["value_se"] if not math.isnan(s)]
    adv_se = [s for p in probes for s in p["step_advantage_se"] if not math.isnan(s)]
    return {
        "probes": len(probes),
        "failures": sum(p["reward"] < 1 for p in probes),
        "successes": sum(p["reward"] >= 1 for p in probes),
        "states": sum(len(p["values"]) for p in probes),
        "value_se_mean": float(np.mean(se)) if se else math.nan,
        "value_se_max": float(np.max(se)) if se else math.nan,
        "step_advantage_se_mean": float(np.mean(adv_se)) if adv_se else math.nan,
        "step_advantage_se_max": float(np.max(adv_se)) if adv_se else math.nan,
        "value_s0_mean": float(np.mean([p["values"][0] for p in probes])) if probes else math.nan,
    }


# ---------------------------------------------------------------------- model plumbing
@dataclass
class Base:
    """The checkpoint under test, its tokenizer and the task (with its data)."""

    model: Any
    tokenizer: Any
    task: Any
    device: torch.device


def load_base(
    cfg: ExperimentConfig, base: str | Path, data: str | Path, trainable: bool = False
) -> Base:
    from creditbench.model import default_device, load_policy, load_tokenizer

    device = default_device()
    tokenizer = load_tokenizer(base)
    model = load_policy(base, cfg.model, device, trainable=trainable)
    return Base(model, tokenizer, make_task(cfg.task, data), device)


def experiment_sampling(cfg: ExperimentConfig) -> SamplingConfig:
    """The experiment's sampling section (the training temperature, length budget)."""
    return SamplingConfig(**cfg.sampling)


def _context(base: Base, sampling: SamplingConfig, run=None, seed: int = 0, cls=MethodContext):
    from creditbench.sampling import Sampler

    ledger = Ledger()
    sampler = Sampler(base.model, base.tokenizer, sampling, ledger)
    return cls(base.model, base.tokenizer, sampler, base.task, ledger, run, seed)


def _continue_fn(ctx: MethodContext, states: list[tuple[Problem, list[int], list[int]]]):
    """``continue_fn`` over ``(problem, prompt_ids, prefix_ids)`` states: continuations
    sample the rest of the completion (EOS the only stop) within the budget the prefix
    leaves; one cut by it scores 0 (``ctx.score``)."""
    max_new = ctx.sampler.cfg.max_new_tokens

    def continue_fn(indices: list[int], m: int) -> list[list[float]]:
        chosen = [states[i] for i in indices]
        contexts = [prompt + prefix for _, prompt, prefix in chosen]
        gens = ctx.sampler.generate(contexts, purpose="mc_truth", max_new_tokens=max_new, n=m)
        out = []
        for i, (problem, _, prefix) in enumerate(chosen):
            budget = max_new - len(prefix)
            rewards = []
            for g in gens[i * m : (i + 1) * m]:
                stop = "length" if len(g.ids) > budget or budget <= 0 else g.stop
                rewards.append(ctx.score(problem, ctx.sampler.decode(prefix + g.ids), stop))
            out.append(rewards)
        return out

    return continue_fn


# -------------------------------------------------------------------- 1. ground truth
def sample_probes(
    ctx: MethodContext, problems: Sequence[Problem], settings: DiagnosticsSettings
) -> list[Trajectory]:
    """One completion per problem of the pool, then a mix of failures and successes.

    Completions without a thought are never probes. ``failure_fraction`` of the probes are
    failures where enough exist (the other kind fills any shortfall); probes keep the
    pool's order.
    """
    seed_everything(settings.seed)
    pool = list(problems[: settings.pool])
    drawn = [g[0] for g in ctx.rollout(pool, 1, purpose="probe")] if pool else []
    usable = [t for t in drawn if t.n_thoughts > 0]
    fails = [t for t in usable if t.reward < 1]
    wins = [t for t in usable if t.reward >= 1]
    n = min(settings.probes, len(usable))
    n_fail = min(len(fails), max(n - len(wins), round(n * settings.failure_fraction)))
    chosen = {id(t) for t in fails[:n_fail] + wins[: n - n_fail]}
    return [t for t in usable if id(t) in chosen]


def probe_record(t: Trajectory, task) -> dict:
    first_error = getattr(task, "first_error", None)
    return {
        "problem": asdict(t.problem),
        "prompt_ids": list(t.prompt_ids),
        "completion_ids": list(t.completion_ids),
        "text": t.text,
        "reward": float(t.reward),
        "stop": t.stop,
        "thought_ends": list(t.thought_ends),
        "thoughts": task.segment(t.text),
        "first_error": first_error(t.problem, t.text) if callable(first_error) else None,
    }


def probe_trajectory(rec: dict, purpose: str = "probe") -> Trajectory:
    """A probe record (``truth.json``) back into a ``Trajectory``."""
    p = rec["problem"]
    return Trajectory(
        problem=Problem(id=p["id"], prompt=p["prompt"], answer=p["answer"], meta=p["meta"]),
        prompt_ids=list(rec["prompt_ids"]),
        completion_ids=list(rec["completion_ids"]),
        text=rec["text"],
        reward=float(rec["reward"]),
        purpose=purpose,
        thought_ends=list(rec["thought_ends"]),
        stop=rec.get("stop", "eos"),
        meta={"diagnostic_probe": rec["problem"]["id"]},
    )


def ground_truth(
    cfg: ExperimentConfig, base: Base, settings: DiagnosticsSettings, split: str = "test"
) -> dict:
    """The probe set, ``V(s_k)`` with standard errors, ``A*_k`` and per-token truth."""
    settings.check()
    t0 = time.perf_counter()
    ctx = _context(base, experiment_sampling(cfg))
    problems = base.task.load(split)
    probes = sample_probes(ctx, problems, settings)
    if not probes:
        raise RuntimeError(
            f"no probe completion with a thought in {settings.pool} {split} problems"
        )
    records = [probe_record(t, base.task) for t in probes]
    states, owner = [], []
    for i, t in enumerate(probes):
        for prefix_len in [0, *step_ends(t.thought_ends, len(t.completion_ids))[:-1]]:
            states.append((t.problem, t.prompt_ids, t.completion_ids[:prefix_len]))
            owner.append(i)
    seed_everything(settings.seed + 1)
    estimates = estimate_values(len(states), _continue_fn(ctx, states), settings.mc_rollouts)
    for rec in records:
        rec["values"], rec["value_se"] = [], []
    for i, (v, se) in zip(owner, estimates, strict=True):
        records[i]["values"].append(v)
        records[i]["value_se"].append(se)
    for rec in records:
        ends = step_ends(rec["thought_ends"], len(rec["completion_ids"]))
        rec["step_advantages"] = true_step_advantages(rec["values"], rec["reward"])
        rec["step_advantage_se"] = step_advantage_se(rec["value_se"])
        rec["token_truth"] = per_token(rec["step_advantages"], ends)
    out = {
        "settings": asdict(settings),
        "split": split,
        "sampling": experiment_sampling(cfg).model_dump(),
        "probes": records,
        "summary": summarise_values(records),
    }
    if settings.ranking_ks:
        seed_everything(settings.seed + 2)
        out["ranking"] = vine_ranking(ctx, probes, settings)
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------- 5. VinePPO's K-sample values
def vine_ranking(
    ctx: MethodContext, probes: Sequence[Trajectory], settings: DiagnosticsSettings
) -> dict:
    """Ranking accuracy of K-sample MC values vs the ground truth, for each K.

    From every prefix ``s_k`` of every probe (k = 0..n-1), ``ranking_candidates`` next
    thoughts are sampled (stopping at the task's thought stop); the first two distinct ones
    form the pair (a prefix with no two distinct candidates gives none). A side whose
    thought ended the completion (EOS or the length limit) is terminal: its value is its
    reward, exactly. Otherwise its true value comes from ``ranking_truth_rollouts``
    continuations and, independently, ``max(ranking_ks)`` continuations give the K-sample
    estimates (``ranking_accuracy``: disjoint blocks of K). A pair counts when its true
    gap is at least ``ranking_min_gap`` and ``ranking_min_z`` standard errors.
    """
    s = settings
    task, sampler = ctx.task, ctx.sampler
    max_new = sampler.cfg.max_new_tokens
    stop = [getattr(task, "thought_stop", "\n")]
    prefixes = []  # (probe, prefix ids)
    for t in probes:
        for n in [0, *step_ends(t.thought_ends, len(t.completion_ids))[:-1]]:
            if max_new - n > 0:
                prefixes.append((t, list(t.completion_ids[:n])))
    gens = sampler.generate(
        [t.prompt_ids + px for t, px in prefixes],
        purpose="ranking_thoughts",
        stop=stop,
        max_new_tokens=max_new,
        n=s.ranking_candidates,
    )
    pairs = []
    for i, (t, px) in enumerate(prefixes):
        cands = gens[i * s.ranking_candidates : (i + 1) * s.ranking_candidates]
        first = cands[0]
        other = next((g for g in cands[1:] if g.ids != first.ids), None)
        if other is None:
            continue
        sides = []
        for g in (first, other):
            ids = px + list(g.ids)
            budget_cut = len(ids) > max_new
            terminal = g.stop != "pattern" or budget_cut
            stop_kind = "length" if budget_cut else g.stop
            text = sampler.decode(ids)
            sides.append(
                {
                    "thought": sampler.decode(list(g.ids)),
                    "ids": ids,
                    "terminal": terminal,
                    "reward": ctx.score(t.problem, text, stop_kind) if terminal else None,
                }
            )
        pairs.append(
            {"problem": t.problem, "prompt_ids": t.prompt_ids, "prefix": px, "sides": sides}
        )
    # ground truth and independent K-sample estimates of every non-terminal side
    open_sides = [(p, side) for p in pairs for side in p["sides"] if not side["terminal"]]
    states = [(p["problem"], p["prompt_ids"], side["ids"]) for p, side in open_sides]
    k_max = max(s.ranking_ks)
    fn = _continue_fn(ctx, states)
    truth = fn(list(range(len(states))), s.ranking_truth_rollouts) if states else []
    est = fn(list(range(len(states))), k_max) if states else []
    for (_, side), tr, es in zip(open_sides, truth, est, strict=True):
        side["value"], side["value_se"] = mc_estimate(tr)
        side["estimates"] = es
    for p in pairs:
        for side in p["sides"]:
            if side["terminal"]:
                side["value"], side["value_se"] = side["reward"], 0.0
                side["estimates"] = [side["reward"]] * k_max
    records, per_k = [], {k: [] for k in s.ranking_ks}
    for p in pairs:
        a, b = p["sides"]
        gap = a["value"] - b["value"]
        se = math.sqrt(a["value_se"] ** 2 + b["value_se"] ** 2)
        clear = abs(gap) >= s.ranking_min_gap and abs(gap) >= s.ranking_min_z * se
        acc = {k: ranking_accuracy(a["estimates"], b["estimates"], gap, k) for k in s.ranking_ks}
        if clear:
            for k, v in acc.items():
                if v is not None:
                    per_k[k].append(v)
        records.append(
            {
                "problem_id": p["problem"].id,
                "prefix_tokens": len(p["prefix"]),
                "thoughts": [a["thought"], b["thought"]],
                "terminal": [a["terminal"], b["terminal"]],
                "values": [a["value"], b["value"]],
                "value_se": [a["value_se"], b["value_se"]],
                "gap": gap,
                "gap_se": se,
                "clear": clear,
                "accuracy": {str(k): v for k, v in acc.items()},
                # the states themselves, for a learned critic's ranking (critic_diagnostics)
                "prompt_ids": list(p["prompt_ids"]),
                "side_ids": [list(a["ids"]), list(b["ids"])],
            }
        )
    accuracy = {}
    for k, xs in per_k.items():
        x = np.asarray(xs, dtype=np.float64)
        accuracy[str(k)] = {
            "accuracy": float(x.mean()) if x.size else math.nan,
            "se": float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan,
            "pairs": int(x.size),
        }
    return {
        "prefixes": len(prefixes),
        "pairs": len(pairs),
        "clear_pairs": sum(r["clear"] for r in records),
        "accuracy": accuracy,
        "records": records,
    }


# ----------------------------------------------------------------- 2. probing a method
class ProbeContext(MethodContext):
    """A ``MethodContext`` whose rollouts hand the method the probe completions.

    ``arm(probes)`` before a ``collect``: in the first ``rollout`` call after it, the first
    completion sampled for each probe's problem is replaced by (a copy of) the probe. In a
    later call that continues given prefixes (a reset), the first continuation of a failed
    probe's problem whose prefix is a prefix of the probe is replaced by the probe, with
    that ``prefix_len``: a reset method (SRPO) makes a failed first draw its seed and
    trains only on the suffixes from its reset state, of which the probe's own tail is one
    sample. Each copy carries ``meta["diagnostic_probe"]`` (the problem id). Replaced
    samples were drawn (the RNG streams are those of an unprobed step), and the probe's
    tokens are charged to the ledger too, so a method's ledger transfers stay valid.
    """

    def arm(self, probes: Sequence[Trajectory]) -> None:
        self._probes = {t.problem.id: t for t in probes}
        self._calls = 0
        self._reset_done: set[str] = set()

    def _copy(self, probe: Trajectory, purpose: str, prefix_len: int) -> Trajectory:
        n = len(probe.completion_ids) - prefix_len
        self.ledger.add_tokens(purpose, generated=n, forwarded=n + len(probe.prompt_ids))
        return Trajectory(
            problem=probe.problem,
            prompt_ids=list(probe.prompt_ids),
            completion_ids=list(probe.completion_ids),
            text=probe.text,
            reward=probe.reward,
            purpose=purpose,
            thought_ends=list(probe.thought_ends),
            prefix_len=prefix_len,
            stop=probe.stop,
            meta={"diagnostic_probe": probe.problem.id},
        )

    def rollout(self, problems, n, purpose, prefixes=None, **sampling):
        out = super().rollout(problems, n, purpose, prefixes, **sampling)
        probes = getattr(self, "_probes", {})
        self._calls = getattr(self, "_calls", 0) + 1
        if not probes:
            return out
        if self._calls == 1:
            seen = set()
            for k, problem in enumerate(problems):
                if problem.id in probes and problem.id not in seen and out[k]:
                    seen.add(problem.id)
                    out[k][0] = self._copy(probes[problem.id], purpose, 0)
        elif prefixes is not None:
            for k, (problem, prefix) in enumerate(zip(problems, prefixes, strict=True)):
                probe = probes.get(problem.id)
                if (
                    probe is None
                    or probe.reward >= 1
                    or problem.id in self._reset_done
                    or not out[k]
                    or list(probe.completion_ids[: len(prefix)]) != list(prefix)
                    or len(prefix) >= len(probe.completion_ids)
                ):
                    continue
                self._reset_done.add(problem.id)
                out[k][0] = self._copy(probe, purpose, len(prefix))
        return out


def build_method(run: RunConfig, ctx: MethodContext, methods_dir=None):
    module = load_method(run.method, methods_dir)
    return module.Method(module.Params(**run.params), ctx)


def _find_probe(trained: Sequence[Trajectory], groups, pid: str):
    """The trained copy of probe ``pid`` (the first), its group kind and count of copies."""
    copies = [t for t in trained if t.meta.get("diagnostic_probe") == pid]
    if not copies:
        return None, None, 0
    kind = next(
        (g.kind for g in groups for t in g.trajectories if t is copies[0]),
        None,
    )
    return copies[0], kind, len(copies)


def probe_credit(
    run: RunConfig,
    base: Base,
    truth: dict,
    settings: DiagnosticsSettings,
    methods_dir=None,
) -> dict:
    """Item 2: the per-token advantages ``run``'s method gives each probe completion."""
    ctx = _context(base, run.sampling, run, settings.seed, cls=ProbeContext)
    method = build_method(run, ctx, methods_dir)
    recs = truth["probes"]
    per_step = run.train.prompts_per_step
    out = []
    chunk_seed = 0
    for rep in range(settings.repeats):
        for start in range(0, len(recs), per_step):
            chunk = recs[start : start + per_step]
            probes = [probe_trajectory(r) for r in chunk]
            seed_everything(settings.seed + 7919 * (1 + chunk_seed))
            chunk_seed += 1
            ctx.arm(probes)
            groups = method.collect([p.problem for p in probes], 0)
            trained = method.advantages(groups)
            for j, (rec, probe) in enumerate(zip(chunk, probes, strict=True)):
                copy, kind, n_copies = _find_probe(trained, groups, probe.problem.id)
                n_tok = len(probe.completion_ids)
                if copy is None:
                    adv, mask = [0.0] * n_tok, [0.0] * n_tok
                else:
                    adv = list(copy.advantages)
                    mask = [1.0] * n_tok if copy.loss_mask is None else list(copy.loss_mask)
                out.append(
                    {
                        "probe": start + j,
                        "repeat": rep,
                        "problem_id": probe.problem.id,
                        "reward": probe.reward,
                        "trained": copy is not None,
                        "group_kind": kind,
                        "copies": n_copies,
                        "prefix_len": 0 if copy is None else copy.prefix_len,
                        "reset_thought": None if copy is None else copy.meta.get("reset_thought"),
                        "advantages": adv,
                        "mask": mask,
                        "truth": list(rec["token_truth"]),
                    }
                )
    ctx.arm([])
    return {"records": out, "summary": credit_correlations(out)}


# ---------------------------------------------------------------- 3. gradient variance
def policy_gradient(model, batch: Batch, run: RunConfig, params: list) -> torch.Tensor:
    """The flattened gradient of the engine's loss on ``batch`` at the current weights.

    As ``Trainer.update``'s first optimiser step sees it, with the whole batch as one
    minibatch: the behaviour and reference log-probs equal the current ones (on-policy, at
    the checkpoint both are the model itself, so the clipped surrogate's and the k3 KL's
    gradients are those at ratio 1), normalisers over the batch, micro-batches of
    ``train.micro_batch_size`` sorted by length.
    """
    loss_cfg, t = run.loss, run.train
    temperature = run.sampling.temperature
    device = next(model.parameters()).device
    batch = batch.to(device)

    def logprobs(b: Batch) -> torch.Tensor:
        return completion_logprobs(
            model, b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, temperature
        )

    with torch.no_grad():
        if loss_cfg.beta > 0:
            batch.ref_logprobs = logprobs(batch)
        if t.epochs * t.minibatches > 1:
            batch.old_logprobs = logprobs(batch) if loss_cfg.beta == 0 else batch.ref_logprobs
    mask = batch.loss_mask * batch.completion_mask
    n_items, n_seq = float(mask.sum()), len(batch)
    for p in params:
        p.grad = None
    for rows in batch.micro_batches(t.micro_batch_size):
        part = batch.select(rows)
        loss, _ = batch_loss(logprobs(part), part, loss_cfg, n_items, n_seq)
        loss.backward()
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )
    for p in params:
        p.grad = None
    return flat.detach().to("cpu", torch.float64)


def gradient_variance(
    run: RunConfig,
    base: Base,
    problems: Sequence[Problem],
    settings: DiagnosticsSettings,
    methods_dir=None,
) -> dict:
    """Item 3 (and SRPO's step metrics pooled over the same batches)."""
    ctx = _context(base, run.sampling, run, settings.seed)
    method = build_method(run, ctx, methods_dir)
    model = base.model
    params = [p for p in model.parameters() if p.requires_grad]
    grads, per_batch, metrics = [], [], []
    for b in range(settings.batches):
        seed_everything(settings.seed + 104729 * (b + 1))
        groups = method.collect(list(problems), 0)
        trained = method.advantages(groups)
        if hasattr(method, "step_metrics"):
            metrics.append(method.step_metrics())
        model.train()
        if trained:
            batch = Batch.from_trajectories(trained, base.tokenizer.pad_token_id)
            g = policy_gradient(model, batch, run, params)
            tokens = float((batch.loss_mask * batch.completion_mask).sum())
        else:
            g = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
            tokens = 0.0
        grads.append(g)
        buffer = [t for grp in groups for t in grp.trajectories]
        per_batch.append(
            {
                "grad_norm": float(g.norm()),
                "trained_sequences": len(trained),
                "loss_tokens": tokens,
                "nonzero_advantage_sequences": sum(
                    any(a != 0 for a in t.advantages) for t in trained
                ),
                "buffer_reward": float(np.mean([t.reward for t in buffer])) if buffer else None,
            }
        )
    return {
        "prompts": [p.id for p in problems],
        "stats": gradient_stats(grads),
        "per_batch": per_batch,
        "step_metrics": pool_srpo_metrics(metrics) if any(metrics) else None,
    }


# (rate, count) pairs of SRPO's step metrics: a rate is pooled weighted by its count
SRPO_RATES = {
    "srpo/localisation_accuracy": "srpo/resets_with_oracle",
    "srpo/reset_offset": "srpo/resets_with_oracle",
    "srpo/correction_clean": "srpo/suffixes_clean",
    "srpo/correction_erroneous": "srpo/suffixes_erroneous",
    "srpo/correction_clean_group": "srpo/resets_clean",
    "srpo/correction_erroneous_group": "srpo/resets_erroneous",
}
SRPO_COUNTS = (
    "srpo/resets",
    "srpo/resets_with_oracle",
    "srpo/resets_clean",
    "srpo/resets_erroneous",
    "srpo/suffixes_clean",
    "srpo/suffixes_erroneous",
    "srpo/fallback_prompts",
    "srpo/prompts",
)


def pool_srpo_metrics(rows: Sequence[dict]) -> dict[str, float | None]:
    """Pool rows of SRPO step metrics (``metrics.jsonl`` lines or ``step_metrics()``)."""
    out: dict[str, float | None] = {}
    for key in SRPO_COUNTS:
        out[key] = float(sum(float(r.get(key) or 0.0) for r in rows))
    for rate, count in SRPO_RATES.items():
        num = den = 0.0
        for r in rows:
            v, n = r.get(rate), float(r.get(count) or 0.0)
            if v is not None and n > 0 and not (isinstance(v, float) and math.isnan(v)):
                num += float(v) * n
                den += n
        out[rate] = num / den if den > 0 else None
    return out


def training_prompts(run: RunConfig, task, seed: int) -> list[Problem]:
    """The first training step's prompts of ``run`` with data seed ``seed``."""
    from creditbench.train import problems_for_step

    train = task.load("train")
    idx = problems_for_step(len(train), run.train.prompts_per_step, 0, seed)
    return [train[i] for i in idx]


@dataclass
class RunDiagnostics:
    run: str
    method: str
    params: dict
    loss: dict
    credit: dict = field(default_factory=dict)
    gradient: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def diagnose_run(
    cfg: ExperimentConfig,
    run_name: str,
    base: Base,
    truth: dict,
    settings: DiagnosticsSettings,
) -> dict:
    """Items 2 and 3 (and SRPO's metrics at the base) for one run of the experiment."""
    settings.check()
    run = cfg.run(run_name)
    # every method starts from the same weights: each measurement reloads nothing, and
    # nothing here steps an optimiser, so the weights stay the checkpoint's
    t0 = time.perf_counter()
    credit = probe_credit(run, base, truth, settings, cfg.methods_dir)
    t1 = time.perf_counter()
    problems = training_prompts(run, base.task, settings.seed)
    gradient = gradient_variance(run, base, problems, settings, cfg.methods_dir)
    t2 = time.perf_counter()
    rd = RunDiagnostics(
        run=run_name,
        method=run.method,
        params=run.params,
        loss=run.loss.model_dump(),
        credit=credit,
        gradient=gradient,
        seconds={"credit": t1 - t0, "gradient": t2 - t1},
    )
    out = asdict(rd)
    out["settings"] = asdict(settings)
    return out


# ------------------------------------------------------------- 5. a learned critic
def _pair_score(diff: float, truth_diff: float) -> float:
    """1 when ``diff`` orders a pair as the truth does, 1/2 for a tie, else 0."""
    if diff == 0:
        return 0.5
    return float((diff > 0) == (truth_diff > 0))


def critic_diagnostics(
    truth: dict, state_values: Callable[[list[tuple[list[int], list[int]]]], list[float]]
) -> dict:
    """A critic's value error on the probe states and its ranking of the value-ranking pairs.

    ``state_values(states)``: the critic's ``V(s)`` of ``(prompt_ids, prefix_ids)`` states
    (PPO: ``Method.state_values``). Value error, over every probe state ``s_k``
    (k = 0..n-1) against its MC value (``truth["probes"][i]["values"]``): mean absolute
    error, RMSE, bias (mean of critic - MC) and Pearson correlation. Ranking, over the
    pairs of ``truth["ranking"]`` with a clear, non-zero true gap: 1 when the critic orders the two
    next-thought states as the truth does, 1/2 for a tie, 0 otherwise; a terminal side
    (the thought ended the completion) takes its reward, as in the K-sample ranking (its
    return is known to the learner). Beside it, the K-sample MC accuracies of item 4.
    """
    states, mc = [], []
    for rec in truth["probes"]:
        ends = step_ends(rec["thought_ends"], len(rec["completion_ids"]))
        for k, prefix_len in enumerate([0, *ends[:-1]]):
            states.append((list(rec["prompt_ids"]), list(rec["completion_ids"][:prefix_len])))
            mc.append(float(rec["values"][k]))
    v = np.asarray(state_values(states) if states else [], dtype=np.float64)
    m = np.asarray(mc, dtype=np.float64)
    err = v - m
    value_error = {
        "states": int(m.size),
        "mae": float(np.abs(err).mean()) if m.size else math.nan,
        "rmse": float(np.sqrt((err**2).mean())) if m.size else math.nan,
        "bias": float(err.mean()) if m.size else math.nan,
        "pearson": _pearson(v, m),
        "critic_mean": float(v.mean()) if v.size else math.nan,
        "mc_mean": float(m.mean()) if m.size else math.nan,
    }
    ranking = truth.get("ranking") or {}
    # a pair counts where the K-sample ranking counts it: a clear, non-zero true gap
    records = [r for r in ranking.get("records", []) if r["clear"] and r["gap"] != 0]
    open_states = [
        (r["prompt_ids"], side)
        for r in records
        for side, term in zip(r["side_ids"], r["terminal"], strict=True)
        if not term
    ]
    open_values = iter(state_values(open_states) if open_states else [])
    scores = []
    for r in records:
        pair = [
            float(val) if term else float(next(open_values))
            for val, term in zip(r["values"], r["terminal"], strict=True)
        ]
        scores.append(_pair_score(pair[0] - pair[1], r["gap"]))
    x = np.asarray(scores, dtype=np.float64)
    critic_rank = {
        "accuracy": float(x.mean()) if x.size else math.nan,
        "se": float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan,
        "pairs": int(x.size),
    }
    return {
        "value_error": value_error,
        "ranking": {"critic": critic_rank, "mc": ranking.get("accuracy", {})},
    }


def load_owned(method, owned: dict[str, dict] | str | Path | None) -> None:
    """Load a method's owned state (a critic) from ``{name: module state dict}``, a run's
    ``owned/`` folder, or a checkpoint's ``state.pt``; None keeps the initial state."""
    if owned is None:
        return
    if isinstance(owned, (str, Path)):
        path = Path(owned)
        if path.is_dir():
            owned = {n: torch.load(path / f"{n}.pt", weights_only=True) for n in method.ctx.owned}
        else:
            saved = torch.load(path, weights_only=False).get("owned", {})
            owned = {n: st["module"] for n, st in saved.items()}
    for name, st in method.ctx.owned.items():
        if name not in owned or owned[name] is None:
            raise KeyError(f"no saved state for the method's {name!r} (found {sorted(owned)})")
        st.unwrapped.load_state_dict(owned[name])


def critic_over_training(
    cfg: ExperimentConfig,
    run_name: str,
    run_dir: str | Path,
    init_model: str | Path,
    data: str | Path,
    settings: DiagnosticsSettings,
) -> list[dict]:
    """``critic_diagnostics`` of a run's critic at the warm start (its initial critic),
    at each kept checkpoint and at the end, each against the ground truth (values and
    ranking pairs) of the policy at that point."""
    run = cfg.run(run_name)
    run_dir = Path(run_dir)
    points: list[tuple[str, Path, object]] = [("step 0", Path(init_model), None)]
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: p.name)
    for c in ckpts:
        points.append((f"step {int(c.name.split('_')[1])}", c / "model", c / "state.pt"))
    if (run_dir / "model").is_dir() and (run_dir / "owned").is_dir():
        steps = json.loads((run_dir / "ledger.json").read_text()).get("steps", "end")
        points.append((f"step {steps} (final)", run_dir / "model", run_dir / "owned"))
    out = []
    for label, model_dir, owned in points:
        if any(o["point"] == label.split(" (")[0] for o in out):
            continue  # the final state is the last checkpoint's
        t0 = time.perf_counter()
        # a checkpoint's model/ holds the weights only: the tokenizer is the warm start's
        base = load_base(cfg, init_model, data)
        if model_dir != Path(init_model):
            from creditbench.model import load_policy

            base.model = load_policy(model_dir, cfg.model, base.device, trainable=False)
        truth = ground_truth(cfg, base, settings)
        ctx = _context(base, run.sampling, run, settings.seed)
        method = build_method(run, ctx, cfg.methods_dir)
        if not hasattr(method, "state_values"):
            raise TypeError(f"run {run_name!r}: method {run.method!r} has no critic values")
        load_owned(method, owned)
        res = critic_diagnostics(truth, method.state_values)
        res.update(point=label.split(" (")[0], seconds=time.perf_counter() - t0)
        res["truth_summary"] = truth["summary"]
        out.append(res)
    return out


def critic_table(rows: Sequence[dict]) -> str:
    """Markdown: the critic's ranking accuracy beside the K-sample MC ranking, and its value
    error, one row per point of training."""
    ks = sorted({int(k) for r in rows for k in r["ranking"]["mc"]})

    def cell(d: dict) -> str:
        if not d or d.get("pairs", 0) == 0 or math.isnan(d.get("accuracy", math.nan)):
            return "–"
        se = d.get("se", math.nan)
        return f"{100 * d['accuracy']:.1f}" + ("" if math.isnan(se) else f" ± {100 * se:.1f}")

    head = ["point", "pairs", "critic", *[f"MC K={k}" for k in ks], "MAE", "RMSE", "bias", "r"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ve, rk = r["value_error"], r["ranking"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["point"],
                    str(rk["critic"]["pairs"]),
                    cell(rk["critic"]),
                    *[cell(rk["mc"].get(str(k), {})) for k in ks],
                    f"{ve['mae']:.3f}",
                    f"{ve['rmse']:.3f}",
                    f"{ve['bias']:+.3f}",
                    f"{ve['pearson']:.2f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
