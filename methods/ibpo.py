"""IBPO: Implicit Behavior Policy Optimization (arXiv 2605.16302), recoverability instance.

Source: only summaries of the paper exist (no official code), so the instance below
follows ``methods/README.md`` ("IBPO") and every gap is a named **[choice]** in ``Params``.

Algorithm, per training step:

1. Sample K = ``train.group_size`` completions ``y_1..y_K`` per prompt (stochastic
   decoding, the run's sampling settings; ledger purpose ``rollout``). The optional
   prompt perturbation of the source is not implemented.
2. For each failed completion ``y_i`` (``R(y_i) = 0``) pick a reference sibling
   ``y_ref``, preferring a correct one, and ask the policy to revise ``y_i`` given
   ``(x0, y_i, y_ref)`` with the task's compare-and-correct prompt, giving ``ŷ_i``
   (one batched generation, purpose ``revision``); ``R(ŷ_i)`` is the task's reward.
3. Reject full rewrites: a revision whose normalised edit distance to ``y_i``
   exceeds ``max_edit_distance`` is discarded ("local repair beats full rewriting").
4. Recoverability shaping: ``φ_i = ρ · 1[R(y_i) = 0 ∧ R(ŷ_i) = 1]`` for an accepted
   revision, ``φ_i = 0`` for a correct ``y_i`` and for a rejected or absent revision;
   ``R'_i = R_i + λ φ_i``; ``A_i = norm(R')_i`` over the group.
5. Token focus (variant, ``token_focus``): on a failed-but-recoverable completion
   (``φ_i > 0``) only the tokens of ``y_i`` that the revision changed (Levenshtein
   alignment of token ids) carry ``A_i``.
6. A standard GRPO update on the original completions only; revisions are scored,
   charged to the ledger and recorded in ``Trajectory.meta``, never trained on.

Sign of the signal: a recoverable failure is pushed down less than an unrecoverable
one when its group has a correct sibling (R' = 0.3 vs 0 against a 1); in an
all-failed group it is the only completion pushed up.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz.distance import Levenshtein

from creditbench.rollouts import Group, Trajectory, group_normalise

# A standard GRPO update (methods/README.md, IBPO 6): PPO clip 0.2, no KL, per-sequence mean.
DEFAULTS = {"loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"}}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # recoverability shaping: φ = rho · 1[R(y)=0 ∧ R(ŷ)=1], R' = R + lam · φ (methods/README.md)
    rho: float = Field(0.5, ge=0)
    lam: float = Field(0.6, ge=0)
    # [choice] rewrite filter: a revision is discarded when its normalised edit distance to
    # the failed completion is strictly greater than this (methods/README.md: 0.5);
    # a distance exactly at the threshold is accepted
    max_edit_distance: float = Field(0.5, ge=0, le=1)
    # [choice] unit of that distance: "token" = the policy's token ids (the unit it acts in),
    # "char" = decoded text (robust to a tokenizer segmenting the same text two ways).
    # The token-focus alignment is always over token ids, since the mask is per token.
    edit_unit: Literal["token", "char"] = "token"
    # reference sibling for a failed completion: a correct one when the group has one
    reference: Literal["prefer_correct"] = "prefer_correct"
    # [choice] which of several candidate siblings: "random" (a per-step RNG keyed on the
    # run's seed and the step, so resumed runs pick the same) or "first" (lowest index)
    reference_pick: Literal["random", "first"] = "random"
    # [choice] no correct sibling: True = a failed sibling (picked as above) is the
    # reference (the warm start teaches revision from failed references half the time);
    # False = no revision, φ = 0
    revise_when_no_correct_sibling: bool = True
    # variant: on recoverable failures only the tokens the revision changed carry A_i
    token_focus: bool = False
    # [choice] the other tokens of a focused completion: "masked" = loss mask 0 (they leave
    # the loss, and under grpo aggregation the changed tokens share the sequence's weight);
    # "zero_advantage" = advantage 0 with mask 1 (they stay in the per-sequence mean and KL)
    unfocused_tokens: Literal["masked", "zero_advantage"] = "masked"
    # [choice] an insertion has no token of y_i of its own; it marks: "next" = the token of
    # y_i at the insertion point (the decision the revision replaced by new tokens; an
    # insertion at the end marks the last token, the stop that came too early),
    # "previous" = the token before it (the first token at the start), "both"
    insertion_marks: Literal["next", "previous", "both"] = "next"
    # [choice] revision decoding: None = the run's sampling temperature (the revision is
    # another sample of the same behaviour policy, "stochastic decoding"); 0 = greedy
    revision_temperature: float | None = Field(None, ge=0)
    # None = the run's sampling.max_new_tokens; a revision cut by the limit scores 0,
    # as a rollout does
    revision_max_new_tokens: int | None = Field(None, gt=0)
    # group norm, as GRPO's source: TRL / DeepSeekMath unbiased std, eps 1e-4
    std: Literal["unbiased", "population", "none"] = "unbiased"
    eps: float = Field(1e-4, ge=0)


# ----------------------------------------------------------------- 2. reference sibling
def choose_reference(
    rewards: list[float],
    i: int,
    pick: Literal["random", "first"],
    fallback_to_failed: bool,
    rng: random.Random,
) -> int | None:
    """Index of the reference sibling for completion ``i``: a correct one if any.

    Without a correct sibling: another failed sibling if ``fallback_to_failed``, else
    ``None`` (no revision). ``pick`` chooses among the candidates.
    """
    others = [j for j in range(len(rewards)) if j != i]
    candidates = [j for j in others if rewards[j] == 1]
    if not candidates:
        if not fallback_to_failed:
            return None
        candidates = others
    if not candidates:
        return None
    return candidates[0] if pick == "first" else rng.choice(candidates)


# ------------------------------------------------------------------- 3. rewrite filter
def normalised_edit_distance(a, b) -> float:
    """Levenshtein distance / max(len(a), len(b)) (0 for two empty sequences).

    ``a`` and ``b`` are strings or lists of token ids (rapidfuzz takes either).
    """
    return float(Levenshtein.normalized_distance(a, b))


def accept_revision(distance: float, max_edit_distance: float) -> bool:
    """A local repair is kept; a full rewrite (distance above the threshold) is not."""
    return distance <= max_edit_distance


# ------------------------------------------------------------ 4. recoverability shaping
def recoverability(
    reward: float, revision_reward: float | None, accepted: bool, rho: float
) -> float:
    """``φ = ρ · 1[R(y) = 0 ∧ R(ŷ) = 1]``; 0 for a correct ``y`` or a rejected/absent revision."""
    if revision_reward is None or not accepted:
        return 0.0
    return rho if (reward == 0 and revision_reward == 1) else 0.0


def shaped_rewards(rewards: list[float], phis: list[float], lam: float) -> list[float]:
    """``R'_i = R_i + λ φ_i``, before group normalisation."""
    return [r + lam * phi for r, phi in zip(rewards, phis, strict=True)]


def ibpo_advantages(
    rewards: list[float],
    phis: list[float],
    lam: float,
    std: Literal["unbiased", "population", "none"] = "unbiased",
    eps: float = 1e-4,
) -> list[float]:
    """``A_i = norm(R')_i`` for one group."""
    return [float(a) for a in group_normalise(shaped_rewards(rewards, phis, lam), std, eps)]


# ---------------------------------------------------------------------- 5. token focus
def edited_token_mask(
    source: list[int], revision: list[int], insertion_marks: Literal["next", "previous", "both"]
) -> list[float]:
    """1 on the tokens of ``source`` that the revision changed, 0 elsewhere.

    rapidfuzz's Levenshtein alignment (one of the minimal ones) of ``source`` into
    ``revision``: a replaced or deleted token is marked; an insertion before token
    ``p`` marks token ``p`` ("next"), ``p - 1`` ("previous") or both, clamped to
    ``[0, len(source) - 1]``.
    """
    n = len(source)
    mask = [0.0] * n
    if n == 0:
        return mask
    for op in Levenshtein.editops(source, revision):
        if op.tag in ("replace", "delete"):
            mask[op.src_pos] = 1.0
            continue
        marks = []
        if insertion_marks in ("next", "both"):
            marks.append(min(op.src_pos, n - 1))
        if insertion_marks in ("previous", "both"):
            marks.append(max(op.src_pos - 1, 0))
        for p in marks:
            mask[p] = 1.0
    return mask


def focus_credit(
    advantage: float, edited: list[float], unfocused: Literal["masked", "zero_advantage"]
) -> tuple[list[float], list[float] | None]:
    """Per-token ``(advantages, loss_mask)`` of a focused completion."""
    if unfocused == "masked":
        return [advantage] * len(edited), list(edited)
    return [advantage * m for m in edited], None


# ------------------------------------------------------------------------- the method
class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx

    def collect(self, problems, step: int) -> list[Group]:
        p, task, sampler = self.params, self.ctx.task, self.ctx.sampler
        # 1. K completions per prompt
        K = self.ctx.run.train.group_size
        groups = [Group(trajs) for trajs in self.ctx.rollout(problems, K, purpose="rollout")]
        # 2. a reference sibling per failed completion (a per-step RNG: the same picks on
        # resume, and the sampling RNG streams are left untouched)
        rng = self.ctx.step_rng(step, "ibpo-reference")
        jobs: list[tuple[Trajectory, int, Trajectory]] = []
        for group in groups:
            rewards = group.rewards
            for i, traj in enumerate(group.trajectories):
                traj.meta.update(
                    reference=None,
                    revision=None,
                    revision_ids=None,
                    revision_reward=None,
                    edit_distance=None,
                    accepted=None,
                    phi=0.0,
                )
                if traj.reward != 0:
                    continue
                ref = choose_reference(
                    rewards, i, p.reference_pick, p.revise_when_no_correct_sibling, rng
                )
                if ref is not None:
                    jobs.append((traj, ref, group.trajectories[ref]))
        if not self.ctx.any_process(bool(jobs)):  # (in step: revise where any process does)
            return groups
        # ... and the policy's revision given (x0, y_i, y_ref), one batched call
        contexts = [
            sampler.encode_prompt(task.revision_prompt(traj.problem, traj.text, ref_traj.text))
            for traj, _, ref_traj in jobs
        ]
        revisions = sampler.generate(
            contexts,
            purpose="revision",
            temperature=p.revision_temperature,
            max_new_tokens=p.revision_max_new_tokens,
        )
        for (traj, ref, _), rev in zip(jobs, revisions, strict=True):
            rev_reward = self.ctx.score(traj.problem, rev.text, rev.stop)
            # 3. the rewrite filter
            if p.edit_unit == "token":
                distance = normalised_edit_distance(traj.completion_ids, rev.ids)
            else:
                distance = normalised_edit_distance(traj.text, rev.text)
            accepted = accept_revision(distance, p.max_edit_distance)
            traj.meta.update(
                reference=ref,
                revision=rev.text,
                revision_ids=list(rev.ids),
                revision_reward=rev_reward,
                edit_distance=distance,
                accepted=accepted,
                # 4. recoverability φ_i
                phi=recoverability(traj.reward, rev_reward, accepted, p.rho),
            )
        return groups

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p = self.params
        trained = []
        for group in groups:
            phis = [t.meta.get("phi", 0.0) for t in group.trajectories]
            adv = ibpo_advantages(group.rewards, phis, p.lam, p.std, p.eps)
            for traj, a, phi in zip(group.trajectories, adv, phis, strict=True):
                if p.token_focus and phi > 0:
                    # 5. only the tokens the revision changed carry A_i
                    edited = edited_token_mask(
                        traj.completion_ids, traj.meta["revision_ids"], p.insertion_marks
                    )
                    traj.meta["focus_tokens"] = int(sum(edited))
                    # no changed token (an identical revision, possible only when y_i was cut
                    # by the length limit): nothing to focus on, plain GRPO credit below
                    if any(edited):
                        trained.append(
                            traj.set_credit(*focus_credit(a, edited, p.unfocused_tokens))
                        )
                        continue
                trained.append(traj.set_credit(a))
        return trained
