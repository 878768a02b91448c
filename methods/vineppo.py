"""VinePPO: PPO with Monte Carlo step values instead of a critic (Kazemnejad et al.,
"VinePPO: Refining Credit Assignment in RL Training of LLMs", arXiv 2410.01679; code:
McGill-NLP/VinePPO, ``MathEpisodeGeneratorWithMCAdvantages`` and ``PPOTrainer``).

Language environments can be reset to any prefix, so the value of a partial solution is
estimated by sampling the policy's own continuations from it, not by a value network.

1. Rollouts. Per prompt, G = ``train.group_size`` completions i.i.d. with the run's
   sampling settings (paper: 64 prompts x 8 per iteration, T = 0.6, top-p 0.9: those are
   the experiment's ``sampling`` section, shared by every method for fairness).
2. Steps. Each completion is split into steps y_1 .. y_n by the task's segmenter
   (``Trajectory.thought_ends``; chains: one line per step, EOS joins the last step; a
   completion with no thought is one step). States: s_0 = x0, s_k = (x0, y_1 .. y_k).
3. Monte Carlo values. From every state s_k, k = 0 .. n-1, K = ``mc_rollouts``
   continuations (paper 9) are sampled with the same sampling settings (temperature,
   top-p, the sampler's stops) and ``V(s_k)`` = their mean reward. A continuation from
   s_k may generate ``min(cap, context - |x0| - |y_1..y_k|)`` tokens (``mc_budget:
   context``, the code's ``EfficientIIDExpander._compute_max_tokens`` in
   ``tree_inference/expansion.py``: ``min(max_tokens, model_context_size - |prefix|)``
   with max_tokens = 1024, the rollouts' own limit, and model_context_size = the
   episodes' ``max_sequence_length``); one cut off by that limit scores 0 (``ctx.score``;
   code: ``unfinished_response_penalty`` 0); the terminal state has ``V(s_n) = 0``. Identical states are valued once: the code
   deduplicates its value requests by query text, and we by token ids, so s_0 (the
   prompt, shared by the G completions of a prompt) gets one estimate per prompt, as does
   any first step that two completions share. All states of the training step go to the
   sampler in one call, K continuations per state with the state's prefill computed once
   (``Sampler.generate(..., n=K)``: prefix sharing, as the code's vLLM prefix caching).
4. Step advantages, gamma = 1: ``A_k = r_k + V(s_{k+1}) - V(s_k)`` with ``r_k = 0`` except
   the last step, ``r_{n-1} = R(y)``, and ``V(s_n) = 0``; they telescope to
   ``sum_k A_k = R(y) - V(s_0)``.
5. Every token of step k carries ``A_k``; then advantages are whitened over the batch:
   ``(A - mean) / sqrt(var + eps)``, mean and unbiased variance over all trained tokens of
   every process (code: ``masked_whiten(..., distributed=True, unbiased_variance=True)``
   in ``trainers/ppo_trainer.py``, statistics all-reduced as ``get_global_statistics_no_move``
   in ``trainers/utils.py`` does: the sum and count first, then the squared deviations
   from the global mean).
6. Loss (the engine's, ``DEFAULTS``; code: ``PPOTrainer._compute_actor_loss``): PPO clipped
   surrogate, epsilon 0.2, 2 epochs over the batch (so the ratio uses the behaviour
   policy's log-probs), no critic; the policy loss is a token mean over the batch (code:
   ``masked_mean`` over the tokens of a batch), i.e. aggregation ``dapo``; the KL term to
   the initial model is ``1e-4 * clamp(k3, 0, 10)`` summed over each sequence's tokens and
   averaged over sequences (``loss.kl_reduction: sequence_sum``, ``loss.kl_clamp: 10``;
   code: ``kl_penalty_loss_type: control_variate``, clip 0..10,
   ``ref_kl.sum(dim=1).mean()``), added to the token-mean policy loss.

Choices, each a parameter below or noted here:
- ``mc_budget``: the length limit of a continuation from s_k. ``context`` (default, the
  code's rule): ``min(value_max_new_tokens, value_context - |x0| - |y_1..y_k|)``, with
  ``value_max_new_tokens`` (null: ``sampling.max_new_tokens``, the rollouts' own limit as
  in the code) and ``value_context`` the total sequence limit (null: the model's context,
  ``max_position_embeddings``; the code's DeepSeek MATH config uses 2499). A state whose
  prefix already fills ``value_context`` gets ``V = 0`` without sampling (the code asserts
  a positive budget). ``remaining`` [choice, the former default]: only the completion
  budget the prefix leaves, ``max_new_tokens - |y_1..y_k|``, so V(s_k) values the same
  length-limited environment the trajectory was sampled in (it values late states low:
  their continuations get little room). ``full``: every continuation gets
  ``max_new_tokens``. All states are sampled in one call with the largest budget; a
  continuation longer than its own budget counts as cut off (the same outcome as stopping
  it at its budget, since the tokens after the budget cannot change the ones before; the
  ledger still charges them).
- ``max_value_steps`` (code: ``max_step_for_value_estimation``; its GSM8K configs use 25,
  its MATH configs none): values are estimated for s_0 and the states after the first
  ``max_value_steps`` steps only; later states take the trajectory's own return R(y)
  (code: filled backwards from V(s_n) = 0 with gamma = 1), so their steps get A = 0.
- Whitening (``whiten``, ``whiten_std``, ``whiten_eps``; code: ``masked_whiten`` with the
  unbiased variance and ``rsqrt(var + 1e-8)``). ``whiten_across_processes`` (default true,
  the code's ``distributed=True``): under data parallelism the mean and variance are
  those of every process's tokens (``ctx.collective``), so N processes whiten as one
  process on the whole batch; false whitens each process's shard alone. [choice] The code
  whitens each optimiser micro-batch (gathered across devices) inside the update; the
  engine computes advantages once per step, so we whiten over the whole step's batch (the
  paper's "batch").
- Token to step: a token that straddles a step boundary belongs to the step it completes
  (``thought_token_ends``); the code gives it to the step of its first character. On a
  character-level tokenizer (the chains testbed) the two agree.
- The paper's optimiser settings (lr 1e-6, 8 minibatches of 64 episodes per epoch) are
  left to the experiment, like every method's. The code's ``ratio_threshold`` (a
  micro-batch whose mean ratio exceeds it is skipped) is not in the engine.

Compute ledger: the G completions are ``rollout``; the MC continuations ``mc_value``
(generated tokens: every sampled continuation token; forwarded: each distinct state's
prefill once per sampler batch, then the continuation tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from creditbench.rollouts import Group, Trajectory

DEFAULTS = {
    "loss": {
        "clip": True,
        "epsilon": 0.2,
        "beta": 1e-4,
        "aggregation": "dapo",
        "kl_reduction": "sequence_sum",
        "kl_clamp": 10.0,
    },
    "train": {"epochs": 2},
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mc_rollouts: int = Field(9, ge=1)  # K continuations per state (paper: 9)
    # continuation length limit, see the module docstring (code: _compute_max_tokens)
    mc_budget: Literal["context", "remaining", "full"] = "context"
    value_max_new_tokens: int | None = Field(None, ge=1)  # null: sampling.max_new_tokens
    value_context: int | None = Field(None, ge=1)  # null: the model's context
    max_value_steps: int | None = Field(None, ge=0)  # code: max_step_for_value_estimation
    whiten: bool = True  # code: whiten_advantages
    whiten_std: Literal["unbiased", "population"] = "unbiased"  # code: unbiased variance
    whiten_eps: float = Field(1e-8, ge=0)  # added to the variance (code: rsqrt(var + 1e-8))
    whiten_across_processes: bool = True  # code: masked_whiten(distributed=True)


# ----------------------------------------------------------------------------- credit rule
def budget_stop(stop: str, n_generated: int, budget: int) -> str:
    """Why an MC continuation stopped, under its own length budget (``mc_budget``).

    One that finished after more tokens than its budget allows was cut off: ``"length"``,
    which ``ctx.score`` scores 0 like any completion cut off by the length limit.
    """
    return "length" if n_generated > budget else stop


def value_budget(
    mode: str,
    prompt_len: int,
    prefix_len: int,
    max_new_tokens: int,
    cap: int | None = None,
    context: int | None = None,
) -> int:
    """New tokens a continuation from the state ``prompt + y[:prefix_len]`` may generate.

    ``context`` (the code's ``_compute_max_tokens``): ``min(cap, context - prompt_len -
    prefix_len)``, ``cap`` defaulting to ``max_new_tokens`` and no context limit when
    ``context`` is ``None``; ``remaining``: ``max_new_tokens - prefix_len``; ``full``:
    ``max_new_tokens``. At most 0 means the state leaves no room (``V = 0``).
    """
    if mode == "remaining":
        return max_new_tokens - prefix_len
    if mode == "full":
        return max_new_tokens
    cap = max_new_tokens if cap is None else cap
    return cap if context is None else min(cap, context - prompt_len - prefix_len)


def model_context(model) -> int | None:
    """The model's context length (``config.max_position_embeddings``), ``None`` if unknown."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def mc_value(rewards: Sequence[float]) -> float:
    """``V(s)``: the mean reward of the K continuations sampled from ``s``."""
    if len(rewards) == 0:
        raise ValueError("an MC value needs at least one continuation (mc_rollouts >= 1)")
    return float(np.mean(rewards))


def state_values(estimated: Sequence[float], n_steps: int, reward: float) -> list[float]:
    """``V(s_0) .. V(s_{n-1})`` from the estimates of the first states.

    States past the estimated ones (``max_value_steps``) take the return from there, which
    with gamma = 1 and a reward only at the end is ``R(y)``.
    """
    if not 1 <= len(estimated) <= n_steps:
        raise ValueError(f"{len(estimated)} estimated values for a {n_steps}-step trajectory")
    return [float(v) for v in estimated] + [float(reward)] * (n_steps - len(estimated))


def step_advantages(values: Sequence[float], reward: float) -> list[float]:
    """``A_k = r_k + V(s_{k+1}) - V(s_k)`` for k = 0 .. n-1 (gamma = 1).

    ``values``: ``V(s_0) .. V(s_{n-1})``; the terminal state has ``V(s_n) = 0``, and
    ``r_k = 0`` except ``r_{n-1} = R(y)``.
    """
    n = len(values)
    if n == 0:
        raise ValueError("a trajectory has at least one step")
    next_values = [*values[1:], 0.0]  # V(s_n) = 0: nothing follows the terminal state
    rewards = [0.0] * (n - 1) + [float(reward)]
    return [r + v_next - v for r, v_next, v in zip(rewards, next_values, values, strict=True)]


def token_advantages(
    advantages: Sequence[float], step_ends: Sequence[int], n_tokens: int
) -> list[float]:
    """Every token of step k carries ``A_k``; ``step_ends`` are exclusive token offsets."""
    if len(advantages) != len(step_ends) or not step_ends or step_ends[-1] != n_tokens:
        raise ValueError(
            f"{len(advantages)} step advantages for step ends {list(step_ends)} of a "
            f"{n_tokens}-token completion (one per step, the last end = the length)"
        )
    out, start = [], 0
    for a, end in zip(advantages, step_ends, strict=True):
        if end < start:
            raise ValueError(f"step ends {list(step_ends)} are not increasing")
        out.extend([float(a)] * (end - start))
        start = end
    return out


def whiten(
    advantages: Sequence[Sequence[float]],
    masks: Sequence[Sequence[float] | None] | None = None,
    std: Literal["unbiased", "population"] = "unbiased",
    eps: float = 1e-8,
    collective=None,
) -> list[list[float]]:
    """``(A - mean) / sqrt(var + eps)``, mean and variance over the masked tokens of the batch.

    ``masks``: per-sequence token masks (``None``: every token); masked-out tokens do not
    enter the statistics but are transformed alike (they carry no loss). ``std``:
    ``unbiased`` divides the squared deviations by (tokens - 1), ``population`` by tokens;
    a batch with a single token has variance 0.

    ``collective`` (a ``creditbench.distributed.Collective``; ``None``: one process): the
    batch is the union of every process's ``advantages``. As VinePPO's
    ``get_global_statistics_no_move`` (``trainers/utils.py``): the masked sum and count are
    summed over processes, giving the global mean, then the squared deviations from it.
    Every process must call it (a process with no tokens too: it contributes zeros).
    """
    masks = masks or [None] * len(advantages)
    flat = np.concatenate([np.asarray(a, dtype=np.float64) for a in advantages] or [[]])
    weight = np.concatenate(
        [
            np.ones(len(a)) if m is None else np.asarray(m, dtype=np.float64)
            for a, m in zip(advantages, masks, strict=True)
        ]
        or [[]]
    )

    def total(values: list[float]) -> list[float]:
        return values if collective is None else collective.sum(values)

    weighted_sum, count = total([float((flat * weight).sum()), float(weight.sum())])
    mean = weighted_sum / count if count > 0 else 0.0
    (sq_dev,) = total([float(((flat - mean) ** 2 * weight).sum())])
    if count == 0:
        return [list(map(float, a)) for a in advantages]
    dof = count - 1 if std == "unbiased" else count
    var = sq_dev / dof if dof > 0 else 0.0
    scale = 1.0 / np.sqrt(var + eps) if var + eps > 0 else 1.0
    out, start = [], 0
    for a in advantages:
        out.append([float(x) for x in (flat[start : start + len(a)] - mean) * scale])
        start += len(a)
    return out


def step_ends(traj: Trajectory) -> list[int]:
    """Exclusive token ends of the trajectory's steps; a completion with no thought is one step."""
    return list(traj.thought_ends) or [len(traj.completion_ids)]


# ----------------------------------------------------------------------------- the method


def mc_state_values(
    ctx,
    trajs: list[Trajectory],
    prefixes: list[list[int]],
    *,
    K: int,
    mc_budget: str,
    value_max_new_tokens: int | None,
    value_context: int | None,
) -> list[list[float]]:
    """Monte Carlo values of states, ``K`` continuations each: ``prefixes[j]`` lists the
    completion prefix lengths of ``trajs[j]`` to value; the result has one value for each.

    A state (its token ids) shared by several trajectories is sampled once; all states go
    in one sampler call, each with its own budget (``value_budget``; no room left: V = 0)
    and its prefix's thoughts counted toward the thought cap.
    """
    max_new = ctx.sampler.cfg.max_new_tokens
    context = value_context or model_context(ctx.model)
    index: dict[tuple[int, ...], int] = {}  # distinct state (token ids) -> its slot
    states: list[tuple[Trajectory, int]] = []  # a trajectory holding it, prefix length
    owned: list[list[int]] = []  # per trajectory: the slots of its states
    for t, lengths in zip(trajs, prefixes, strict=True):
        slots = []
        for prefix_len in lengths:
            key = (*t.prompt_ids, *t.completion_ids[:prefix_len])
            if key not in index:
                index[key] = len(states)
                states.append((t, prefix_len))
            slots.append(index[key])
        owned.append(slots)
    budgets = [
        value_budget(mc_budget, len(t.prompt_ids), n, max_new, value_max_new_tokens, context)
        for t, n in states
    ]
    sampled = [i for i, b in enumerate(budgets) if b > 0]
    gens = []
    if ctx.any_process(bool(sampled)):  # in step: sample where any process has states
        gens = ctx.sampler.generate(  # each state its own budget; its steps count
            [
                states[i][0].prompt_ids + states[i][0].completion_ids[: states[i][1]]
                for i in sampled
            ],
            purpose="mc_value",
            max_new_tokens=[budgets[i] for i in sampled],
            thoughts_done=[
                sum(e <= states[i][1] for e in states[i][0].thought_ends) for i in sampled
            ],
            n=K,
        )
    values = [0.0] * len(states)
    for k, i in enumerate(sampled):
        t, n = states[i]
        prefix = t.completion_ids[:n]
        rewards = [
            ctx.score(
                t.problem,
                ctx.sampler.decode(prefix + g.ids),
                budget_stop(g.stop, len(g.ids), budgets[i]),
            )
            for g in gens[k * K : (k + 1) * K]
        ]
        values[i] = mc_value(rewards)
    return [[values[s] for s in slots] for slots in owned]


class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx

    def collective(self):
        """The processes whose tokens the whitening pools (``None``: this process alone)."""
        if not self.params.whiten_across_processes:
            return None
        return getattr(self.ctx, "collective", None)

    def collect(self, problems, step: int) -> list[Group]:
        G = self.ctx.run.train.group_size
        groups = [Group(trajs) for trajs in self.ctx.rollout(problems, G, purpose="rollout")]
        self.estimate_values([t for g in groups for t in g.trajectories])
        return groups

    def estimate_values(self, trajs: list[Trajectory]) -> None:
        """Set ``meta["mc_values"]`` = ``V(s_0) .. V(s_{n-1})`` of every trajectory."""
        p = self.params
        prefixes = []  # per trajectory: s_0 = prompt, s_k = prompt + y_1..y_k
        for t in trajs:
            ends = step_ends(t)
            n_est = (
                len(ends) if p.max_value_steps is None else min(len(ends), p.max_value_steps + 1)
            )
            prefixes.append([0, *ends[: n_est - 1]])
        estimated = mc_state_values(
            self.ctx,
            trajs,
            prefixes,
            K=p.mc_rollouts,
            mc_budget=p.mc_budget,
            value_max_new_tokens=p.value_max_new_tokens,
            value_context=p.value_context,
        )
        for t, values in zip(trajs, estimated, strict=True):
            t.meta["mc_values"] = state_values(values, len(step_ends(t)), t.reward)
            t.meta["mc_estimated_states"] = len(values)

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        trajs = [t for g in groups for t in g.trajectories]
        per_token = []
        for t in trajs:
            step_adv = step_advantages(t.meta["mc_values"], t.reward)
            t.meta["step_advantages"] = step_adv
            per_token.append(token_advantages(step_adv, step_ends(t), len(t.completion_ids)))
        if self.params.whiten:
            per_token = whiten(
                per_token,
                [t.loss_mask for t in trajs],
                std=self.params.whiten_std,
                eps=self.params.whiten_eps,
                collective=self.collective(),
            )
        return [t.set_credit(a) for t, a in zip(trajs, per_token, strict=True)]
