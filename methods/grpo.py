"""GRPO: group-relative policy optimisation (DeepSeekMath, Shao et al. 2024).

Per prompt, sample G completions i.i.d.; every completion token carries the
completion's group-normalised reward ``A[i, t] = norm(R)_i`` (unbiased std, eps 1e-4,
as DeepSeekMath and TRL's ``scale_rewards="group"``); all completion tokens are trained on.

Loss (``DEFAULTS``, the DeepSeekMath paper's): PPO-clipped surrogate, epsilon 0.2, no KL
(beta 0), per-sequence token mean then batch mean (``aggregation: grpo``). TRL 1.16's
``GRPOTrainer`` differs in two defaults: its ``loss_type`` is ``"dapo"`` (a token mean
over the batch: ``loss: {aggregation: dapo}`` here), and ``use_bias_correction_kl=True``
multiplies the k3 KL by the importance ratio (``loss: {kl_ratio_correction: true}``; it
matters only when beta > 0). Its ``beta`` (0.0) and ``epsilon`` (0.2) are ours.
``tests/test_trl_parity.py`` checks loss and gradients against TRL for both settings.

Variants that change only the advantage (runs of this file, ``methods/README.md``):

- RLOO (Ahmadian et al. 2024, arXiv 2402.14740; Kool et al. 2019): ``baseline:
  leave_one_out`` centres each reward on the mean of the group's *other* rewards,
  ``A_i = R_i - mean_{j != i} R_j = G / (G - 1) (R_i - mean R)``, with ``std: none``
  (no scaling; TRL's ``RLOOTrainer`` likewise leaves scaling off by default). With a std
  convention the centred rewards are divided by ``std(R) + eps`` as GRPO's are.
- Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): ``std: none`` and ``length_norm:
  max_new_tokens``: each completion's token sum divided by the generation budget L =
  ``sampling.max_new_tokens`` instead of its own length (TRL ``loss_type="dr_grpo"``
  divides by ``max_completion_length``). The engine's ``aggregation: grpo`` takes a
  per-sequence token mean, so the method scales sequence i's advantage by ``n_i / L``
  (``n_i`` its trained tokens): ``(1/B) sum_i (1/n_i) sum_t (n_i / L) A_i l_t = (1/(B L))
  sum_i sum_t A_i l_t``, Dr. GRPO's loss exactly (the clipped surrogate is linear in a
  positive scale of A). It needs ``aggregation: grpo``.
- DAPO's token-level aggregation is the engine's ``loss: {aggregation: dapo}``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from creditbench.rollouts import Group, Trajectory, group_normalise

DEFAULTS = {"loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"}}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # DeepSeekMath and TRL (scale_rewards="group"): unbiased std, eps 1e-4.
    # "none" = Dr. GRPO-style centring only (TRL's scale_rewards="none").
    std: Literal["unbiased", "population", "none"] = "unbiased"
    eps: float = Field(1e-4, ge=0)
    # group_mean: GRPO's baseline (the group's mean reward); leave_one_out: RLOO's (the
    # mean of the other completions' rewards)
    baseline: Literal["group_mean", "leave_one_out"] = "group_mean"
    # sequence: the loss's per-sequence token mean as it is; max_new_tokens: Dr. GRPO's
    # constant normaliser (needs loss.aggregation: grpo), see the module docstring
    length_norm: Literal["sequence", "max_new_tokens"] = "sequence"


def leave_one_out(rewards, std: str = "none", eps: float = 1e-4) -> np.ndarray:
    """RLOO: ``R_i - mean_{j != i} R_j``, then divided by ``std(R) + eps`` unless ``std`` is
    ``none`` (``unbiased`` or ``population`` convention). A group of one gets 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2:
        return np.zeros_like(r)
    centred = r - (r.sum() - r) / (r.size - 1)
    if std == "none" or np.all(r == r[0]):
        return centred
    return centred / (float(r.std(ddof=1 if std == "unbiased" else 0)) + eps)


def length_scale(n_trained: int, max_new_tokens: int) -> float:
    """Dr. GRPO under the per-sequence token mean: the factor ``n_i / L`` on sequence i's
    advantage that turns its token mean into its token sum over the budget L."""
    if max_new_tokens < 1:
        raise ValueError(f"length_norm: max_new_tokens needs a budget >= 1, got {max_new_tokens}")
    return n_trained / max_new_tokens


class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx
        run = getattr(ctx, "run", None)
        dr_grpo = params.length_norm == "max_new_tokens"
        if dr_grpo and run is not None and run.loss.aggregation != "grpo":
            raise ValueError(
                f"run {run.name!r}: length_norm: max_new_tokens (Dr. GRPO) rescales the "
                f"per-sequence token mean and needs loss.aggregation: grpo, got "
                f"{run.loss.aggregation!r}"
            )

    def collect(self, problems, step: int) -> list[Group]:
        G = self.ctx.run.train.group_size
        return [Group(trajs) for trajs in self.ctx.rollout(problems, G, purpose="rollout")]

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p, trained = self.params, []
        for group in groups:
            if p.baseline == "leave_one_out":
                adv = leave_one_out(group.rewards, std=p.std, eps=p.eps)
            else:
                adv = group_normalise(group.rewards, std=p.std, eps=p.eps)
            for traj, a in zip(group.trajectories, adv, strict=True):
                if p.length_norm == "max_new_tokens":
                    n = len(traj.completion_ids)
                    a = a * length_scale(n, self.ctx.sampler.cfg.max_new_tokens)
                trained.append(traj.set_credit(float(a)))
        return trained
