"""GRPO: group-relative policy optimisation (DeepSeekMath, Shao et al. 2024).

Per prompt, sample G completions i.i.d.; every completion token carries the
completion's group-normalised reward ``A[i, t] = norm(R)_i``; all completion tokens
are trained on. Loss (paper / TRL defaults): PPO-clipped surrogate, epsilon 0.2,
no KL (beta 0, as in current TRL), per-sequence token mean then batch mean.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from creditbench.rollouts import Group, Trajectory, group_normalise

DEFAULTS = {"loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"}}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # TRL / DeepSeekMath: unbiased std, eps 1e-4. "none" = Dr. GRPO-style centring only.
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
