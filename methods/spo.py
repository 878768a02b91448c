"""SPO: Segment Policy Optimization (Guo, Xu, Liu, Ye and Qiu, "Segment Policy Optimization:
Effective Segment-Level Credit Assignment in RL for Large Language Models", arXiv
2505.23564; code AIFrameResearch/SPO, built on the VinePPO code base).

A completion is cut into segments; each segment's value is estimated by Monte Carlo and a
segment is credited with the value it adds. Two instances (``variant``):

**SPO-chain** (short chains of thought; the code's ``MathEpisodeGeneratorWithMCAdvantages``
in ``src/treetune/episode_generators/math_episode_generator_with_mc_advantages.py``):

1. Rollouts: G = ``train.group_size`` completions per prompt (``rollout``).
2. Token probabilities ``p_t = pi(y_t | x0, y_<t)`` of the sampling policy at the sampling
   temperature, one forward pass per completion (ledger ``token_probs``; the code's
   ``trainer.get_episodes_w_actor_logps``, logits divided by the temperature).
3. Cut points (``cut_points``; ``_create_value_estimation_requests``): the tokens with
   ``p_t < prob_threshold`` (0.9), every ``cutpoint_interval``-th of them (5, the code's
   default), starting with the first. A cut at token t is the state ``(x0, y_<t)``, before
   the low-probability token: each segment starts with one.
4. Values: ``V`` of each cut state = the mean reward of ``mc_rollouts`` (9, the code's
   ``9rolls.jsonnet`` in its Rho-1.1B configs; 4 in its DeepSeek-R1-Distill configs)
   continuations (``mc_value``); identical states valued once. A continuation may generate
   ``min(value_max_new_tokens, value_context - |x0| - t)`` tokens (the rollouts' own
   expander, ``EfficientIIDExpander._compute_max_tokens``, as VinePPO's ``mc_budget:
   context``); one cut off scores 0.
5. Segment advantages (``segment_advantages``; ``_compute_token_advantages``): with cuts
   ``t_0 < .. < t_m`` the tokens ``[t_k, t_{k+1})`` carry ``V(t_{k+1}) - V(t_k)`` and the
   last segment ``[t_m, n)`` carries ``R(y) - V(t_m)``; tokens before the first cut carry
   0 (the code estimates no prompt value unless ``t_0 = 0``); no cut: every token 0.
   Tokens with ``p_t > prob_threshold`` then get 0 (unconditional in the code).
6. Probability mask (``prob_mask``, the code's ``use_prob_mask: true``): only tokens with
   ``p_t < prob_threshold`` are trained (``PPOTrainer._compute_actor_loss``:
   ``action_mask & (exp(old_logprobs) < 0.9)``) and enter the whitening statistics.
7. Whitening (``whiten``): ``(A - mean) / sqrt(var + 1e-8)``, unbiased, over the trained
   tokens of the step's batch on every process (``trainers/utils.py::masked_whiten`` with
   the prob mask, ``distributed=True``); no token below the threshold in the whole batch:
   over every token (the code's fallback to the plain mask).

**SPO-tree** (long chains of thought; ``HybridEpisodeGenerator`` in
``episode_generators/hybrid_episode_generator.py`` with ``HybridInferenceStrategy`` in
``inference_strategies/hybrid_inference_strategy.py``, settings in
``configs/polIter_qwen1b_spo_tree_MATH.jsonnet``):

1. Tree per prompt: the root (the prompt) gets ``branch_factors[0]`` (6) segments of at
   most ``segment_tokens`` (M = 600) tokens; a segment cut off at M is an internal node
   and gets ``branch_factors[d]`` continuations at depth d (6-6-6, the code's
   ``branch_factor_666``); the segments of the last depth run to the response length
   (the code's ``max_tokens=None`` at ``max_depth - 1``). A segment that ends (EOS,
   answer, thought cap), or reaches the response length, is a leaf scored by the verifier
   (cut off: 0).
2. Values (``tree_values``; ``_construct_tree``): a leaf's value is its reward, a node's the
   mean of its children's values (``node["reward"] = np.mean(child_rewards)``).
3. Segment advantage (``tree_advantage``; ``TreeEpisodeUtils.extract_edges_from_tree``):
   every non-root node is a training sequence, its parent's text the context and its
   segment the trained tokens, with ``A = V(node) - V(parent)`` (``tree_advantage:
   rloo``, the code's default ``adv_method``) or ``(V(node) - V(parent)) / (std of the
   parent's children's values + 1e-8)`` (``grpo``; population std, ``np.std``).
4. Segments with ``A = 0`` are dropped (``drop_zero_advantage``, the code's
   ``only_adv_greater_than_zero: true``, which keeps ``advantage + prover_advantage != 0``,
   i.e. ``V(node) != V(parent)``); then at most ``max_segments_per_prompt`` (32) per prompt
   are kept, drawn from the step RNG (``OnPolicyReplayBuffer.get_edges``).
5. The same probability mask and whitening as the chain (the tree configs inherit
   ``use_prob_mask: true`` and ``whiten_advantages: true``); the probabilities come from
   one forward pass over each kept segment with its context (``_add_logprobs_to_edges``).

Loss (``DEFAULTS``; ``configs/trainers/ppo_MATH.jsonnet`` with ``refKl0.0001``,
``klLoss`` and ``no_critic``): PPO clipped, epsilon 0.2; the policy loss a token mean over
the batch (``masked_mean``: ``aggregation: dapo``); KL ``1e-4 * k3`` summed over each
sequence's tokens and averaged over sequences (``kl_reduction: sequence_sum``; the code's
clamp is [0, 1e9]: none). Epochs: the engine's 1 (the code's DeepSeek-R1-Distill chain and
all tree configs; its Rho-1.1B chain configs use 2: ``train: {epochs: 2}``).

Deviations from the official code (also in ``methods/README.md``): the tree's replay
buffer keeps segments that were not drawn for up to 8 later iterations (ours: this step's
only); a cut state or a tree segment may end inside a thought, and the continuation's
thought rules then start a new thought at the cut; the probabilities of the tree's
segments are computed for the kept segments only; the code's ``ratio_threshold``
micro-batch skipping is not in the engine; whitening once over the step's batch (the code:
per optimiser micro-batch).

Several processes: the token-probability forwards run in ``lockstep``
(``creditbench.distributed``), so a process that kept fewer tree segments (or none) still
makes as many forwards as the others (placeholders, discarded and not charged).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from creditbench.distributed import lockstep
from creditbench.loss import completion_logprobs
from creditbench.methods import DEFAULT_METHODS_DIR, load_method
from creditbench.rollouts import Group, Trajectory

# VinePPO's MC value rules (continuation budget, cut-off scoring) and its whitening: SPO's
# code is VinePPO's, and these are its functions unchanged
_vine = load_method("vineppo", DEFAULT_METHODS_DIR)

DEFAULTS = {
    "loss": {
        "clip": True,
        "epsilon": 0.2,
        "beta": 1e-4,
        "aggregation": "dapo",
        "kl_reduction": "sequence_sum",
        "kl_clamp": None,
    },
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["chain", "tree"] = "chain"
    # cut points and the probability mask (code: 0.9 in both places)
    prob_threshold: float = Field(0.9, gt=0, le=1)
    prob_mask: bool = True  # code: use_prob_mask
    # chain
    cutpoint_interval: int = Field(5, ge=1)  # code default; its configs: interval5
    mc_rollouts: int = Field(9, ge=1)  # code: 9rolls (Rho-1.1B), 4 (R1-Distill)
    value_max_new_tokens: int | None = Field(None, ge=1)  # null: sampling.max_new_tokens
    value_context: int | None = Field(None, ge=1)  # null: the model's context
    # tree
    branch_factors: list[int] = [6, 6, 6]  # code: branch_factor_666, max_depth 3
    segment_tokens: int = Field(600, ge=1)  # code: M (polIter_qwen1b_spo_tree_MATH)
    tree_advantage: Literal["rloo", "grpo"] = "rloo"  # code: adv_method
    drop_zero_advantage: bool = True  # code: only_adv_greater_than_zero
    max_segments_per_prompt: int | None = Field(32, ge=1)  # code: OnPolicyReplayBuffer
    # whitening (code: masked_whiten, unbiased, rsqrt(var + 1e-8), distributed)
    whiten: bool = True
    whiten_eps: float = Field(1e-8, ge=0)
    whiten_across_processes: bool = True
    # sequences per forward pass for the token probabilities (speed and memory only)
    prob_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if not self.branch_factors or any(b < 1 for b in self.branch_factors):
            raise ValueError(
                f"branch_factors must list at least one depth, each >= 1; got {self.branch_factors}"
            )
        return self


# ----------------------------------------------------------------------------- credit rule
def cut_points(probs: Sequence[float], threshold: float = 0.9, interval: int = 5) -> list[int]:
    """Token indices t with ``p_t < threshold``, every ``interval``-th from the first.

    A cut at t is the state before token t (the prefix ``y_<t``); t = 0 is the prompt.
    """
    if interval < 1:
        raise ValueError(f"cutpoint_interval must be >= 1, got {interval}")
    low = [t for t, p in enumerate(probs) if p < threshold]
    return low[::interval]


def segment_advantages(
    cuts: Sequence[int], values: Sequence[float], reward: float, n_tokens: int
) -> list[float]:
    """SPO-chain's per-token advantages, before the probability mask.

    ``values[k]`` = V(state before token ``cuts[k]``). Tokens ``[t_k, t_{k+1})`` carry
    ``V_{k+1} - V_k``, the last segment ``[t_m, n)`` ``R - V_m``; tokens before the first
    cut carry 0, and so does every token when there is no cut.
    """
    if len(cuts) != len(values):
        raise ValueError(f"{len(cuts)} cut points but {len(values)} values")
    if any(not 0 <= t < n_tokens for t in cuts) or list(cuts) != sorted(set(cuts)):
        raise ValueError(f"cut points {list(cuts)} must increase within 0..{n_tokens - 1}")
    out = [0.0] * n_tokens
    bounds = [*cuts, n_tokens]
    ends = [*values[1:], reward]
    for k, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        a = float(ends[k]) - float(values[k])
        out[start:end] = [a] * (end - start)
    return out


def mask_confident(
    advantages: Sequence[float], probs: Sequence[float], threshold: float
) -> tuple[list[float], list[float]]:
    """The code's probability rule: advantage 0 where ``p > threshold``; trained (mask 1)
    only where ``p < threshold``."""
    adv = [0.0 if p > threshold else float(a) for a, p in zip(advantages, probs, strict=True)]
    mask = [1.0 if p < threshold else 0.0 for p in probs]
    return adv, mask


class TreeNode:
    """One segment of SPO-tree: its trajectory (the path from the root), its children."""

    def __init__(self, traj: Trajectory | None, depth: int, parent: TreeNode | None = None):
        self.traj, self.depth, self.parent = traj, depth, parent
        self.children: list[TreeNode] = []
        self.value: float | None = None


def tree_values(node: TreeNode) -> float:
    """A leaf's value is its reward, a node's the mean of its children's values."""
    if not node.children:
        node.value = float(node.traj.reward)
    else:
        node.value = float(np.mean([tree_values(c) for c in node.children]))
    return node.value


def tree_advantage(
    value: float, parent_value: float, sibling_values: Sequence[float], rule: str = "rloo"
) -> float:
    """``V(node) - V(parent)`` (``rloo``), or that over the population std of the parent's
    children's values plus 1e-8 (``grpo``)."""
    a = float(value) - float(parent_value)
    if rule == "grpo":
        return a / (float(np.std(sibling_values)) + 1e-8)
    return a


def complete_thought_ends(ends: Sequence[int], n: int, text: str, delimiter: str | None) -> list:
    """The thought ends of a prefix of ``n`` tokens that close a whole thought: an end at
    ``n`` only if the prefix ends with the thought delimiter (else it cuts a thought)."""
    kept = [e for e in ends if e < n]
    if n in ends and delimiter is not None and text.endswith(delimiter):
        kept.append(n)
    return kept


# ----------------------------------------------------------------------------- forward passes
@contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def sampled_token_probs(
    model,
    trajs: Sequence[Trajectory],
    pad_id: int,
    temperature: float,
    batch_size: int = 16,
    collective=None,
) -> list[np.ndarray]:
    """``pi(y_t | x0, y_<t)`` of every completion token at ``temperature``, per trajectory.

    ``collective``: every process makes as many forwards as the one with the most
    batches (``lockstep``; a placeholder of one pad token each way, discarded)."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    chunks = [trajs[s : s + batch_size] for s in range(0, len(trajs), batch_size)]
    with _eval_mode(model):
        for chunk in lockstep(collective, chunks):
            if chunk is None:  # another process has more batches: keep in step
                one = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
                completion_logprobs(model, one, torch.ones_like(one), one, torch.ones_like(one))
                continue
            p = max(len(t.prompt_ids) for t in chunk)
            c = max(max(len(t.completion_ids) for t in chunk), 1)
            pi = torch.full((len(chunk), p), pad_id, dtype=torch.long)
            pm = torch.zeros((len(chunk), p), dtype=torch.long)
            ci = torch.full((len(chunk), c), pad_id, dtype=torch.long)
            cm = torch.zeros((len(chunk), c), dtype=torch.long)
            for i, t in enumerate(chunk):
                pi[i, p - len(t.prompt_ids) :] = torch.tensor(t.prompt_ids)
                pm[i, p - len(t.prompt_ids) :] = 1
                if t.completion_ids:
                    ci[i, : len(t.completion_ids)] = torch.tensor(t.completion_ids)
                    cm[i, : len(t.completion_ids)] = 1
            lp = completion_logprobs(
                model, pi.to(device), pm.to(device), ci.to(device), cm.to(device), temperature
            )
            probs = lp.float().exp().cpu().numpy()
            out.extend(
                probs[i, : len(t.completion_ids)].astype(np.float64) for i, t in enumerate(chunk)
            )
    return out


# ----------------------------------------------------------------------------- the method
class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx
        self._counts: dict[str, float] = {}

    # -- shared
    def token_probs(self, trajs: list[Trajectory]) -> list[np.ndarray]:
        ctx = self.ctx
        probs = sampled_token_probs(
            ctx.model,
            trajs,
            ctx.tokenizer.pad_token_id,
            ctx.run.sampling.temperature,
            self.params.prob_batch_size,
            self.ctx.lockstep,
        )
        ctx.ledger.add_tokens(
            "token_probs", forwarded=sum(len(t.prompt_ids) + len(t.completion_ids) for t in trajs)
        )
        return probs

    def collective(self):
        if not self.params.whiten_across_processes:
            return None
        return getattr(self.ctx, "collective", None)

    def collect(self, problems, step: int) -> list[Group]:
        if self.params.variant == "tree":
            return self.collect_tree(problems, step)
        return self.collect_chain(problems, step)

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p = self.params
        if p.variant == "tree":
            trajs, per_token, masks = self.tree_credit(groups)
        else:
            trajs, per_token, masks = self.chain_credit(groups)
        if p.whiten:  # every process, trajectories or not: the statistics are pooled
            stats_masks = masks if p.prob_mask else [None] * len(trajs)
            if p.variant == "tree":  # the context is no part of the sequence's tokens
                stats_masks = [
                    t.meta["spo_segment_mask"] if m is None else m
                    for t, m in zip(trajs, stats_masks, strict=True)
                ]
            n_low = sum(sum(m) for m in masks)
            coll = self.collective()
            if coll is not None:
                (n_low,) = coll.sum([float(n_low)])
            if p.prob_mask and n_low == 0:  # the code's fallback: the plain mask
                stats_masks = [t.meta.get("spo_segment_mask") for t in trajs]
            per_token = _vine.whiten(
                per_token, stats_masks, std="unbiased", eps=p.whiten_eps, collective=coll
            )
        out = []
        for t, a, m in zip(trajs, per_token, masks, strict=True):
            if not p.prob_mask:
                m = t.meta.get("spo_segment_mask")
            out.append(t.set_credit(a, m))
        return out

    # -- SPO-chain
    def collect_chain(self, problems, step: int) -> list[Group]:
        p, ctx = self.params, self.ctx
        G = ctx.run.train.group_size
        groups = [Group(trajs) for trajs in ctx.rollout(problems, G, purpose="rollout")]
        trajs = [t for g in groups for t in g.trajectories]
        for t, probs in zip(trajs, self.token_probs(trajs), strict=True):
            t.meta["spo_probs"] = probs.tolist()
            t.meta["spo_cuts"] = cut_points(probs, p.prob_threshold, p.cutpoint_interval)
        self.estimate_cut_values(trajs)
        self._counts = {
            "cuts": float(sum(len(t.meta["spo_cuts"]) for t in trajs)),
            "completions": float(len(trajs)),
        }
        return groups

    def estimate_cut_values(self, trajs: list[Trajectory]) -> None:
        """``meta["spo_values"]``: the MC value of every cut state (VinePPO's estimator)."""
        p = self.params
        values = _vine.mc_state_values(
            self.ctx,
            trajs,
            [t.meta["spo_cuts"] for t in trajs],
            K=p.mc_rollouts,
            mc_budget="context",
            value_max_new_tokens=p.value_max_new_tokens,
            value_context=p.value_context,
        )
        for t, cut_values in zip(trajs, values, strict=True):
            t.meta["spo_values"] = cut_values

    def chain_credit(self, groups):
        p = self.params
        trajs, per_token, masks = [], [], []
        for g in groups:
            for t in g.trajectories:
                adv = segment_advantages(
                    t.meta["spo_cuts"], t.meta["spo_values"], t.reward, len(t.completion_ids)
                )
                adv, mask = mask_confident(adv, t.meta["spo_probs"], p.prob_threshold)
                trajs.append(t)
                per_token.append(adv)
                masks.append(mask)
        return trajs, per_token, masks

    # -- SPO-tree
    def _rules_delimiter(self) -> str | None:
        rules = getattr(self.ctx.sampler, "thought_rules", None)
        return getattr(rules, "delimiter", None)

    def collect_tree(self, problems, step: int) -> list[Group]:
        p, ctx = self.params, self.ctx
        L = ctx.sampler.cfg.max_new_tokens
        depth_count = len(p.branch_factors)
        roots = [TreeNode(None, -1) for _ in problems]
        frontier = [(problem, root) for problem, root in zip(problems, roots, strict=True)]
        delimiter = self._rules_delimiter()
        for d, b in enumerate(p.branch_factors):
            if not ctx.any_process(bool(frontier)):  # in step: while any process expands
                break
            last = d == depth_count - 1
            # one rollout call per distinct length limit (prefixes of one depth share theirs)
            by_limit: dict[int, list] = {}
            for problem, node in frontier:
                n = 0 if node.traj is None else len(node.traj.completion_ids)
                limit = L if last else min(n + p.segment_tokens, L)
                by_limit.setdefault(limit, []).append((problem, node))
            new_frontier = []
            # in step, as many calls as the process with the most limits (none: no rows)
            for call in lockstep(ctx.lockstep, list(by_limit.items())):
                limit, items = call if call is not None else (L, [])
                prefixes = [
                    [] if nd.traj is None else list(nd.traj.completion_ids) for _, nd in items
                ]
                ends = [
                    []
                    if nd.traj is None
                    else complete_thought_ends(
                        nd.traj.thought_ends, len(nd.traj.completion_ids), nd.traj.text, delimiter
                    )
                    for _, nd in items
                ]
                out = ctx.rollout(
                    [pr for pr, _ in items],
                    b,
                    purpose="rollout" if d == 0 else "tree_expansion",
                    prefixes=prefixes if d > 0 else None,
                    prefix_thought_ends=ends if d > 0 else None,
                    max_new_tokens=limit,
                )
                for (problem, parent), samples in zip(items, out, strict=True):
                    for t in samples:
                        child = TreeNode(t, d, parent)
                        parent.children.append(child)
                        internal = t.stop == "length" and len(t.completion_ids) < L and not last
                        if internal:
                            new_frontier.append((problem, child))
            frontier = new_frontier
        groups = []
        for root in roots:
            tree_values(root)
            nodes = []
            stack = list(reversed(root.children))
            while stack:
                node = stack.pop()
                nodes.append(node)
                stack.extend(reversed(node.children))
            for node in nodes:
                t = node.traj
                siblings = [c.value for c in node.parent.children]
                t.meta["spo_value"] = node.value
                t.meta["spo_parent_value"] = node.parent.value
                t.meta["spo_advantage"] = tree_advantage(
                    node.value, node.parent.value, siblings, p.tree_advantage
                )
                t.meta["spo_depth"] = node.depth
                if node.children:  # an internal node's reward: its tree value
                    t.reward = node.value
            groups.append(
                Group(
                    [nd.traj for nd in nodes],
                    kind="tree",
                    meta={"step": step, "root_value": root.value},
                )
            )
        self._select_segments(groups, step)
        return groups

    def _select_segments(self, groups: list[Group], step: int) -> None:
        """Drop zero-advantage segments, draw at most ``max_segments_per_prompt`` per
        prompt, and compute the kept segments' token probabilities."""
        p = self.params
        rng = self.ctx.step_rng(step, "spo-tree")
        kept_all = []
        for g in groups:
            kept = [
                t
                for t in g.trajectories
                if not (p.drop_zero_advantage and t.meta["spo_advantage"] == 0)
            ]
            if p.max_segments_per_prompt is not None and len(kept) > p.max_segments_per_prompt:
                chosen = set(map(id, rng.sample(kept, p.max_segments_per_prompt)))
                kept = [t for t in kept if id(t) in chosen]
            for t in g.trajectories:
                t.meta["spo_kept"] = any(t is k for k in kept)
            kept_all.extend(kept)
        probs = self.token_probs(kept_all)  # every process: its forwards are collectives
        for t, pr in zip(kept_all, probs, strict=True):
            t.meta["spo_probs"] = pr.tolist()
        self._counts = {
            "segments": float(sum(len(g.trajectories) for g in groups)),
            "kept_segments": float(len(kept_all)),
        }

    def tree_credit(self, groups):
        p = self.params
        trajs, per_token, masks = [], [], []
        for g in groups:
            for t in g.trajectories:
                if not t.meta.get("spo_kept"):
                    continue
                n, start = len(t.completion_ids), t.prefix_len
                segment = [0.0] * start + [1.0] * (n - start)
                t.meta["spo_segment_mask"] = segment
                a = t.meta["spo_advantage"]
                probs = t.meta["spo_probs"]
                mask = [
                    s * (1.0 if pr < p.prob_threshold else 0.0)
                    for s, pr in zip(segment, probs, strict=True)
                ]
                trajs.append(t)
                per_token.append([a * s for s in segment])
                masks.append(mask)
        return trajs, per_token, masks

    def step_metrics(self) -> dict[str, float | None]:
        """Chain: cut points per completion; tree: segments and those kept, with counts."""
        c = self._counts
        if "cuts" in c:
            rate = c["cuts"] / c["completions"] if c["completions"] else None
            return {
                "spo/cuts": c["cuts"],
                "spo/completions": c["completions"],
                "spo/cuts_per_completion": rate,
            }
        if "segments" in c:
            return {"spo/segments": c["segments"], "spo/kept_segments": c["kept_segments"]}
        return {}
