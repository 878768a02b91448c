"""TEMPO: Tree-Estimated Mean Prefix Value for Policy Optimization (Tran, Yao and Yu,
"Exploiting Tree Structure for Credit Assignment in RL Training of LLMs", arXiv 2509.18314).

No official code was found: this is our instance of the published description, and every
point the description leaves open is a [choice] parameter below (``methods/README.md``,
TEMPO).

1. Rollouts: GRPO's. Per prompt, G = ``train.group_size`` completions i.i.d.
2. Prefix-to-Tree (P2T): the group's completions, as token ids, form a prefix tree (a
   trie); node ``s`` is a token prefix shared by one or more completions. Its value
   ``V(s)`` is the mean, over the completions that pass through ``s``, of their outcome
   signal: ``value_target: normalised`` (default [choice]: the group-normalised reward
   ``norm(R)_i``, GRPO's advantage, so V and GRPO's term share one scale) or ``reward``
   (the raw ``R_i``). The root (the prompt) holds every completion; a leaf one.
3. Branch gate: a node branches when the group continues it in at least two ways, its
   distinct next tokens plus, as one more way, any completion that ends there
   (``end_counts_as_branch``, default true [choice]).
4. Advantage of token ``y_t`` of completion i, taken at state ``s_t = (x0, y_<t)``:
   ``A[i, t] = norm(R)_i + td_coef * 1[s_t branches] * (V(s_{t+1}) - V(s_t))`` with
   ``td_coef`` 1.0 [choice]. At a node that does not branch every completion through it
   takes the same next token, so ``V(s_{t+1}) = V(s_t)`` and the TD term is 0 even
   without the gate: TEMPO is GRPO there, and on a group without shared prefixes it is
   GRPO at every token but the first (where all G completions start from the root).
5. Loss (``DEFAULTS``, GRPO's; [choice], the paper builds on GRPO): clipped, epsilon 0.2,
   no KL, ``aggregation: grpo``.

``norm`` is GRPO's (``std: unbiased``, ``eps`` 1e-4). The tree costs no sampling or
forward passes: only the group's own rollouts (ledger ``rollout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from creditbench.rollouts import Group, Trajectory, group_normalise

DEFAULTS = {"loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"}}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    std: Literal["unbiased", "population", "none"] = "unbiased"  # GRPO's norm
    eps: float = Field(1e-4, ge=0)
    td_coef: float = Field(1.0, ge=0)  # [choice] weight of the branch-gated TD term
    # [choice] what V(s) averages: the completions' normalised rewards or raw rewards
    value_target: Literal["normalised", "reward"] = "normalised"
    # [choice] a completion that ends at a node counts as one more way to continue it
    end_counts_as_branch: bool = True


# ----------------------------------------------------------------------------- credit rule
class _Node:
    __slots__ = ("children", "total", "count", "ends")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.total = 0.0  # sum of the outcome signals of the completions through this node
        self.count = 0  # completions through this node
        self.ends = 0  # completions that end here

    @property
    def value(self) -> float:
        return self.total / self.count

    def branches(self, end_counts: bool) -> bool:
        return len(self.children) + (1 if end_counts and self.ends else 0) >= 2


def prefix_tree(sequences: Sequence[Sequence[int]], signals: Sequence[float]) -> _Node:
    """P2T: the trie of ``sequences`` with each node's signal sum and count."""
    if len(sequences) != len(signals):
        raise ValueError(f"{len(sequences)} sequences but {len(signals)} outcome signals")
    root = _Node()
    for seq, v in zip(sequences, signals, strict=True):
        node = root
        node.total += float(v)
        node.count += 1
        for tok in seq:
            node = node.children.setdefault(int(tok), _Node())
            node.total += float(v)
            node.count += 1
        node.ends += 1
    return root


def branch_td(
    sequences: Sequence[Sequence[int]],
    signals: Sequence[float],
    end_counts_as_branch: bool = True,
) -> tuple[list[list[float]], list[list[bool]]]:
    """Per sequence and token: ``1[s_t branches] (V(s_{t+1}) - V(s_t))`` and the gate.

    ``V`` is the mean of ``signals`` over the sequences through a node (``prefix_tree``).
    """
    root = prefix_tree(sequences, signals)
    tds, gates = [], []
    for seq in sequences:
        node, td, gate = root, [], []
        for tok in seq:
            child = node.children[int(tok)]
            branch = node.branches(end_counts_as_branch)
            gate.append(branch)
            td.append(child.value - node.value if branch else 0.0)
            node = child
        tds.append(td)
        gates.append(gate)
    return tds, gates


def tempo_advantages(
    sequences: Sequence[Sequence[int]],
    rewards: Sequence[float],
    std: str = "unbiased",
    eps: float = 1e-4,
    td_coef: float = 1.0,
    value_target: str = "normalised",
    end_counts_as_branch: bool = True,
) -> tuple[list[list[float]], list[list[bool]]]:
    """``A[i, t] = norm(R)_i + td_coef * 1[s_t branches] (V(s_{t+1}) - V(s_t))`` for one
    group's completions (token ids), and the branch gates."""
    norm = group_normalise(rewards, std=std, eps=eps)
    signals = norm if value_target == "normalised" else np.asarray(rewards, dtype=np.float64)
    tds, gates = branch_td(sequences, list(signals), end_counts_as_branch)
    adv = [[float(a) + td_coef * d for d in td] for a, td in zip(norm, tds, strict=True)]
    return adv, gates


# ----------------------------------------------------------------------------- the method
class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx
        self._counts = {"branch_tokens": 0, "tokens": 0}

    def collect(self, problems, step: int) -> list[Group]:
        G = self.ctx.run.train.group_size
        return [Group(trajs) for trajs in self.ctx.rollout(problems, G, purpose="rollout")]

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p, trained = self.params, []
        self._counts = {"branch_tokens": 0, "tokens": 0}
        for group in groups:
            adv, gates = tempo_advantages(
                [t.completion_ids for t in group.trajectories],
                group.rewards,
                std=p.std,
                eps=p.eps,
                td_coef=p.td_coef,
                value_target=p.value_target,
                end_counts_as_branch=p.end_counts_as_branch,
            )
            for traj, a, g in zip(group.trajectories, adv, gates, strict=True):
                self._counts["branch_tokens"] += sum(g)
                self._counts["tokens"] += len(g)
                trained.append(traj.set_credit(a))
        return trained

    def step_metrics(self) -> dict[str, float | None]:
        """Branching tokens of the last step's completions, with their count."""
        c = self._counts
        rate = c["branch_tokens"] / c["tokens"] if c["tokens"] else None
        return {
            "tempo/branch_tokens": float(c["branch_tokens"]),
            "tempo/tokens": float(c["tokens"]),
            "tempo/branch_rate": rate,
        }
