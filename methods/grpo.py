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
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from creditbench.rollouts import Group, Trajectory, group_normalise

DEFAULTS = {"loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"}}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # DeepSeekMath and TRL (scale_rewards="group"): unbiased std, eps 1e-4.
    # "none" = Dr. GRPO-style centring only (TRL's scale_rewards="none").
    std: Literal["unbiased", "population", "none"] = "unbiased"
    eps: float = Field(1e-4, ge=0)


class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx

    def collect(self, problems, step: int) -> list[Group]:
        G = self.ctx.run.train.group_size
        return [Group(trajs) for trajs in self.ctx.rollout(problems, G, purpose="rollout")]

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        trained = []
        for group in groups:
            adv = group_normalise(group.rewards, std=self.params.std, eps=self.params.eps)
            for traj, a in zip(group.trajectories, adv, strict=True):
                trained.append(traj.set_credit(float(a)))
        return trained
