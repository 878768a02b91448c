"""One policy-gradient loss for every method.

Definitions follow TRL's GRPOTrainer (trl 1.16, the parity reference in
``tests/test_trl_parity.py``) where TRL has the option; the defaults are the papers'
(``LossConfig``; each method's ``DEFAULTS`` choose its own):

- ratio ``r_t = exp(log pi_theta - log pi_old)``; when ``old_logprobs`` is ``None``
  the batch is on-policy and ``pi_old`` is the detached current policy;
- clipped: ``-min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t)``;
- unclipped, ``unclipped_objective: ratio`` (the default): ``-A_t log pi_theta`` on-policy,
  ``-r_t A_t`` when ``old_logprobs`` are given (importance-weighted, no clip: what a later
  minibatch or epoch of an unclipped run computes); ``logprob``: ``-A_t log pi_theta``
  always, behaviour log-probs unused (SRPO's code, ``training/srpo_loss.py``
  ``compute_policy_loss_srpo``, in every minibatch). The two have the same gradient on the
  first minibatch (``d r_t = d log pi_theta`` where ``r_t = 1``);
- KL: the k3 estimator ``exp(ref - logp) - (ref - logp) - 1``, clamped to
  ``[0, kl_clamp]`` when set (VinePPO's code: 10), times the ratio with
  ``kl_ratio_correction`` (TRL's ``use_bias_correction_kl``, which trl 1.16 turns on by
  default; off here, as in DeepSeekMath and VinePPO), weighted by ``beta``.
  ``kl_reduction: token_mean`` adds it to every token's loss, reduced with the policy term
  by the aggregation (TRL, DeepSeekMath); ``sequence_sum`` adds
  ``beta * (1/B) sum_i sum_t m_it kl_it`` over the B sequences of the minibatch, whatever
  the aggregation (VinePPO's ``PPOTrainer._compute_actor_loss``: ``ref_kl.sum(dim=1).mean()``);
- aggregation ``grpo``: per-sequence token mean, then batch mean (DeepSeekMath; TRL's
  ``loss_type="grpo"``); ``dapo``: token sum over the batch divided by its number of loss
  tokens (TRL 1.16's default ``loss_type``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from creditbench.config import LossConfig

if TYPE_CHECKING:
    from creditbench.rollouts import Batch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., index]`` without materialising the full log-softmax twice."""
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    # half precision: logsumexp is inexact, go row by row through log_softmax
    return torch.stack(
        [
            torch.log_softmax(row.float(), dim=-1).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
            for row, idx in zip(logits, index, strict=True)
        ]
    )


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token ``log pi(y_t | x, y_<t)`` of the completion tokens, shape ``[B, C]``.

    Prompts are left-padded and completions right-padded; explicit position ids
    make a padded row score exactly like the same row without padding.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    n = completion_ids.size(1)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        logits_to_keep=n + 1,
        use_cache=False,
    ).logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits, completion_ids)


def policy_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    num_items: float | None = None,
    num_sequences: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss over a (micro)batch; all tensors are ``[B, C]`` over completion tokens.

    ``num_items`` / ``num_sequences``: the normalisers of the whole minibatch when
    this call sees one micro-batch of it (gradient accumulation); default: this batch.
    """
    mask = mask.to(logprobs.dtype)
    advantages = advantages.to(logprobs.dtype)
    on_policy = old_logprobs is None
    old = logprobs.detach() if on_policy else old_logprobs
    log_ratio = logprobs - old
    ratio = torch.exp(log_ratio)
    stats: dict[str, float] = {}
    if cfg.clip:
        eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + eps_high)
        per_token = -torch.min(ratio * advantages, clipped * advantages)
        with torch.no_grad():
            is_clipped = ((ratio < 1 - cfg.epsilon) & (advantages < 0)) | (
                (ratio > 1 + eps_high) & (advantages > 0)
            )
            stats["clip_fraction"] = _masked_mean(is_clipped.to(mask.dtype), mask)
    elif on_policy or cfg.unclipped_objective == "logprob":
        per_token = -advantages * logprobs
    else:
        per_token = -advantages * ratio
    n_seq = num_sequences or per_token.size(0)
    kl_loss = None
    if cfg.beta > 0:
        if ref_logprobs is None:
            raise ValueError("loss.beta > 0 needs reference log-probs")
        delta = ref_logprobs - logprobs
        kl = torch.exp(delta) - delta - 1
        if cfg.kl_clamp is not None:
            kl = torch.clamp(kl, 0.0, cfg.kl_clamp)
        if cfg.kl_ratio_correction:
            kl = kl * ratio
        stats["kl"] = _masked_mean(kl.detach(), mask)
        if cfg.kl_reduction == "token_mean":
            per_token = per_token + cfg.beta * kl
        else:  # sequence_sum: summed over each sequence's tokens, averaged over sequences
            kl_loss = cfg.beta * (kl * mask).sum() / n_seq
    if cfg.aggregation == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        loss = per_seq.sum() / n_seq
    else:  # dapo
        loss = (per_token * mask).sum() / max(float(num_items or mask.sum().item()), 1.0)
    if kl_loss is not None:
        loss = loss + kl_loss
    with torch.no_grad():
        stats["ratio_mean"] = _masked_mean(ratio.detach(), mask)
    return loss, stats


def needs_old_logprobs(cfg: LossConfig, n_updates: int) -> bool:
    """Whether an update of ``n_updates`` passes (epochs x minibatches) needs the behaviour
    policy's log-probs: only a ratio does (the clipped surrogate, the unclipped ``ratio``
    objective, or a ratio-corrected KL), and only after the first pass."""
    if n_updates <= 1:
        return False
    uses_ratio = cfg.clip or cfg.unclipped_objective == "ratio"
    return uses_ratio or (cfg.beta > 0 and cfg.kl_ratio_correction)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def batch_loss(
    logprobs: torch.Tensor,
    batch: Batch,
    cfg: LossConfig,
    num_items: float | None = None,
    num_sequences: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`policy_loss` of a batch (or a micro-batch of it): its advantages, the
    trained completion tokens (``loss_mask * completion_mask``) and, where set, its
    behaviour and reference log-probs."""
    return policy_loss(
        logprobs,
        batch.advantages,
        batch.loss_mask * batch.completion_mask,
        cfg,
        old_logprobs=batch.old_logprobs,
        ref_logprobs=batch.ref_logprobs,
        num_items=num_items,
        num_sequences=num_sequences,
    )
