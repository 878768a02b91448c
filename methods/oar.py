"""OAR: Outcome-grounded Advantage Reshaping (Li et al., arXiv 2601.07408, ACL 2026).

Official code: github.com/Valsure/Outcome-Grounded-Advantage-Reshaping (``OAR-main.py``);
it was read to settle details, nothing is copied. Per prompt, sample G completions i.i.d.
(GRPO's ``collect``). For every completion, an importance ``I_t >= 0`` of each reasoning
token for the outcome distribution ``P_final`` (the next-token distribution where the
answer is predicted), then weights ``w_t`` that multiply the GRPO advantage:
``A[i, t] = norm(R)_i * w_t``.

- OAR-P (``importance: perturbation``): replace reasoning token t by the pad token,
  forward, ``I_t = KL(P_final || P_final^(t))``; one forward per token, batched.
- OAR-G (``importance: gradient``): a clean forward gives ``p0`` (detached); Gaussian
  noise (std ``noise_std``) on the reasoning-token input embeddings, ``J = KL(p0 || p_noisy)``,
  ``I_t = |<dJ/de_t, e_t>|`` (gradient x input; the gradient is taken at the noisy point,
  ``e_t`` is the clean embedding, as in the official code).
- Bi-level reshaping (``reshape_weights``): ``s = log1p(I)``, ``n`` = min-max normalised
  ``s``, ``tau`` = q-quantile of ``n``; below ``tau`` ``w = max(n / tau, floor)``, at or
  above ``w = 1 + ramp_beta (n - tau) / (1 - tau)``; rescaled so ``sum w = L`` (advantage
  mass preserved); tokens outside the reasoning span keep ``w = 1``.
- Loss (paper): PPO-clipped surrogate, per-sequence token mean then batch mean, no KL.

Choices where the paper leaves a point open (methods/README.md's [choice]s), each a named
parameter below or a documented behaviour:

- ``reasoning_span``: which completion tokens are "reasoning". The official code splits
  each input into segments ``before`` (intro, question, bridge) + ``reasoning`` +
  ``conclude`` + ``answer`` (``calculate_oar_hybrid_weights``: only the reasoning
  tokens are perturbed or noised, ``calculate_token_importance_perturbation`` /
  ``calculate_token_importance_gradient``; ``compute_loss`` gives the reasoning tokens
  their weights and every later token ``w = 1``). The conclusion (the answer and its
  markers) is therefore never perturbed and keeps ``w = 1``. ``before_answer_line``
  (default): reasoning is every completion token before the line that holds the answer
  (``task.answer_span``); that line (``A:36`` on the chains task, the sentence with
  ``\boxed{...}`` on math) and what follows it are the conclusion. A token that straddles
  the line start belongs to the conclusion; a completion whose answer is on its first
  line has no reasoning (``w = 1``). ``before_answer_thought``: the thoughts that end
  before the answer's thought (the same on the chains task). ``before_answer`` (the
  former default): every token before the answer value, so the answer marker (``A:``,
  ``\boxed{``) counts as reasoning.
- [choice] A completion with no parsable answer, or an empty reasoning span, gets
  ``w = 1`` everywhere (plain GRPO credit): there is no ``P_final`` to ground it in.
- ``outcome`` (the code's ``pfinal_mode``): ``last`` = the distribution at the position
  that predicts the first answer token; ``mean`` = the softmax of the *logits* averaged
  over every answer-predicting position (the code's ``answer_mean`` averages logits).
  Default (null): ``mean`` for OAR-G (``calculate_token_importance_gradient``'s default
  ``pfinal_mode="answer_mean"``) and ``last`` for OAR-P
  (``calculate_token_importance_perturbation``'s default ``pfinal_mode='last'``).
  ``P_final`` is the raw model distribution (temperature 1, as in the official code).
  The code's ``answer_joint`` mode (mean answer log-likelihood) is not implemented.
- [choice] ``quantile_interpolation``: how ``tau`` is read between order statistics
  (``torch.quantile``; ``linear`` is numpy's default, which the official code uses).
- [choice] Degenerate cases of the reshaping: all ``s`` equal (one token, or all
  importances equal) gives ``w = 1``; ``tau = 1`` gives a zero ramp (``w = 1`` at
  ``n = 1``); ``tau = 0`` puts every token on the ramp. These are the limits the official
  code reaches through its ``+1e-8`` guards, which are not reproduced here.
- [choice] Perturbation token: the tokenizer's pad token (EOS on models without one),
  attended like any token (the official code passes no attention mask).
- [choice] Completions whose group advantage is 0 (a zero-variance group) get no
  importance pass: ``A = 0 * w = 0`` whatever ``w`` is, so the compute is saved.
- [choice] ``prefix_cache`` (speed, not credit): a copy perturbed at token t equals the
  clean sequence before t, so OAR-P forwards each copy from t on, on the clean forward's
  keys and values of the tokens before it, instead of whole (the official code's
  ``calculate_token_importance_perturbation`` forwards every copy whole); the same
  ``P_final^(t)`` up to rounding, about half the forwarded tokens on the testbed
  (``benchmarks/oar_perturbation.py``). Models whose cache keeps fewer than every
  position (sliding windows) forward copies whole.
- [choice] Cost accounting (ledger): OAR-P charges ``perturbation`` with the tokens of
  the clean sequence and of every perturbed copy that are forwarded (from t on with
  ``prefix_cache``); OAR-G charges ``gradient`` with twice
  the sequence's tokens (the clean forward and the noisy forward; its backward is not
  charged separately, as the engine's ``policy_update`` counts forward + backward once).
  A sequence is the prompt plus the completion up to the last answer-predicting position
  (later tokens cannot change ``P_final`` in a causal model, so they are not forwarded).
- [choice] OAR-G's noise is drawn on the CPU from a private ``torch.Generator`` seeded
  from ``ctx.step_rng(step, "oar-noise")`` (the run's seed and the step): reproducible on
  resume, and the sampling RNG is left untouched. The step is the one ``collect(problems,
  step)`` was given, carried by its groups (``Group.meta["step"]``), so ``advantages``
  reads it from its input and not from the method's state; groups without it are
  rejected by OAR-G. One ``[L, hidden]`` draw per completion, in order, so the noise does
  not depend on ``perturbation_batch_size`` or the device.
- Importance passes run with the model in eval mode (no dropout) and leave no gradient
  on the policy's parameters (``torch.autograd.grad`` w.r.t. the input embeddings only).
- Several processes: the number of importance forwards follows from a process's
  probes, so the passes run in ``lockstep`` (``creditbench.distributed``): a process with
  fewer batches runs the missing ones on a placeholder probe and discards them, since
  under FSDP / ZeRO-3 each forward (and OAR-G's backward) is a collective. Placeholders
  are not charged to the ledger and draw no noise.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

from creditbench.decode import cache_keyword
from creditbench.distributed import lockstep
from creditbench.rollouts import Group, Trajectory, decoded_lengths, group_normalise

DEFAULTS = {"loss": {"clip": True, "epsilon": 0.2, "beta": 0.0, "aggregation": "grpo"}}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # OAR-P (counterfactual pad perturbation) or OAR-G (noisy gradient x input); no default:
    # they are two methods with a 5x cost difference, a run must say which it is.
    importance: Literal["perturbation", "gradient"]
    # P_final mode (code: pfinal_mode); null: "mean" for OAR-G, "last" for OAR-P
    outcome: Literal["last", "mean"] | None = None
    quantile: float = Field(0.25, ge=0, le=1)  # q: tau is the q-quantile of n (paper 0.25)
    quantile_interpolation: Literal["linear", "lower", "higher", "nearest", "midpoint"] = "linear"
    floor: float = Field(0.1, ge=0)  # lowest weight below tau, before rescaling (paper 0.1)
    # The ramp's beta above tau (paper 1.0); named ramp_beta so it is not read as the KL beta.
    ramp_beta: float = Field(1.0, ge=0)
    noise_std: float = Field(1e-3, gt=0)  # OAR-G: std of the embedding noise (paper 1e-3)
    # sequences per importance forward (OAR-P: perturbed copies; OAR-G: completions per
    # forward + backward); changes speed and memory, not the importances
    perturbation_batch_size: int = Field(64, gt=0)
    # OAR-P: forward each perturbed copy from its perturbed token on, on the clean pass's
    # keys and values of the tokens before it (the same importances up to rounding, about
    # half the compute); False: every copy forwarded whole, as the official code does
    prefix_cache: bool = True
    # which tokens are reasoning; the conclusion (answer line) keeps w = 1 (OAR-main.py)
    reasoning_span: Literal["before_answer_line", "before_answer_thought", "before_answer"] = (
        "before_answer_line"
    )

    @property
    def outcome_mode(self) -> str:
        """``outcome``, or the code's default for the importance: ``mean`` (OAR-G's
        ``answer_mean``) or ``last`` (OAR-P)."""
        if self.outcome is not None:
            return self.outcome
        return "mean" if self.importance == "gradient" else "last"

    # GRPO's norm(R): TRL / DeepSeekMath use the unbiased std and eps 1e-4.
    std: Literal["unbiased", "population", "none"] = "unbiased"
    eps: float = Field(1e-4, ge=0)


# ------------------------------------------------------------------ the credit rule
def reshape_weights(
    importance: torch.Tensor,
    q: float = 0.25,
    floor: float = 0.1,
    ramp_beta: float = 1.0,
    interpolation: str = "linear",
) -> torch.Tensor:
    """Bi-level weights ``w`` of the ``L`` reasoning tokens from their importances ``I``.

    ``s = log1p(I)``; ``n = (s - min s) / (max s - min s)``; ``tau`` = q-quantile of ``n``;
    ``n < tau``: ``w = max(n / tau, floor)``; ``n >= tau``: ``w = 1 + ramp_beta (n - tau) /
    (1 - tau)``; then ``w *= L / sum(w)``. All-equal ``s`` gives ``w = 1``; ``tau = 1``
    gives a zero ramp. Computed in float64.
    """
    imp = torch.as_tensor(importance, dtype=torch.float64).flatten()
    if imp.numel() == 0:
        return imp
    bad = ~torch.isfinite(imp) | (imp < 0)
    if bad.any():
        where = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"importances must be finite and >= 0; tokens {where} have {imp[where].tolist()}"
        )
    s = torch.log1p(imp)
    lo, hi = s.min(), s.max()
    if hi == lo:  # one token, or nothing to tell the tokens apart: uniform credit
        return torch.ones_like(s)
    n = (s - lo) / (hi - lo)
    tau = torch.quantile(n, q, interpolation=interpolation)
    below = n < tau  # empty when tau = 0, so n / tau is never 0 / 0
    w = torch.empty_like(n)
    w[below] = torch.clamp(n[below] / tau, min=floor)
    ramp = (n[~below] - tau) / (1 - tau) if tau < 1 else torch.zeros_like(n[~below])
    w[~below] = 1 + ramp_beta * ramp
    return w * (n.numel() / w.sum())  # mass preservation: sum w = L (w >= 1 at n = 1)


def completion_weights(n_tokens: int, span: tuple[int, int], weights: torch.Tensor) -> list[float]:
    """Per-completion-token weights: ``weights`` on ``span = (start, end)``, 1 elsewhere."""
    start, end = span
    if len(weights) != end - start:
        raise ValueError(f"{len(weights)} weights for a reasoning span of {end - start} tokens")
    out = [1.0] * n_tokens
    out[start:end] = [float(w) for w in weights]
    return out


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p(v) (log p(v) - log q(v))`` over the last dim, from log-probs."""
    return (logp.exp() * (logp - logq)).sum(-1)


# ----------------------------------------------------- where the answer and reasoning are
def answer_token_span(decoded_ends: list[int], char_span: tuple[int, int]) -> tuple[int, int]:
    """Token span ``[a0, a1)`` covering the answer's characters ``[c0, c1)``.

    ``decoded_ends[j]`` = ``len(decode(ids[:j + 1]))``; the first answer token is the one
    whose decoding passes ``c0``, the last the one that reaches ``c1``.
    """
    c0, c1 = char_span
    a0 = next(j for j, e in enumerate(decoded_ends) if e > c0)
    a1 = next(j for j, e in enumerate(decoded_ends) if e >= c1) + 1
    return a0, a1


def line_start_token(decoded_ends: list[int], text: str, c0: int) -> int:
    """Index of the first token of the line holding character ``c0`` of ``text``: the
    first token whose decoding reaches past the line's first character (a token that
    straddles the line start is on the line)."""
    start = text.rfind("\n", 0, c0) + 1
    return next(j for j, e in enumerate(decoded_ends) if e > start)


def reasoning_span(
    a0: int, thought_ends: list[int], mode: str, line_start: int | None = None
) -> tuple[int, int]:
    """Completion tokens that count as reasoning (see ``Params.reasoning_span``).

    ``a0``: the first answer token; ``line_start``: the first token of the answer's line
    (``line_start_token``, needed by ``before_answer_line``).
    """
    if mode == "before_answer":
        return 0, a0
    if mode == "before_answer_line":
        if line_start is None:
            raise ValueError("reasoning_span 'before_answer_line' needs the answer line's start")
        return 0, min(line_start, a0)
    return 0, max((e for e in thought_ends if e <= a0), default=0)


@dataclass
class Probe:
    """One completion as the importance passes see it.

    ``ids``: prompt + completion up to the last answer-predicting position; ``P_final``
    comes from the logits of the last ``n_pred`` positions (1 for ``last``); ``offset``:
    where the completion starts in ``ids``; ``span``: the reasoning tokens, in completion
    coordinates.
    """

    ids: list[int]
    n_pred: int
    offset: int
    span: tuple[int, int]

    @property
    def positions(self) -> range:  # reasoning tokens, in ``ids`` coordinates
        return range(self.offset + self.span[0], self.offset + self.span[1])


def make_probe(
    prompt_ids: list[int],
    completion_ids: list[int],
    answer: tuple[int, int],
    span: tuple[int, int],
    outcome: str,
) -> Probe:
    a0, a1 = answer
    # position p predicts token p + 1: the answer tokens a0..a1-1 are predicted at a0-1..a1-2
    end = a0 if outcome == "last" else a1 - 1
    n_pred = 1 if outcome == "last" else a1 - a0
    return Probe(list(prompt_ids) + list(completion_ids[:end]), n_pred, len(prompt_ids), span)


# ------------------------------------------------------------------ forward passes
def pad_left(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask. The mask comes from the lengths, not from
    ``ids != pad``: a reasoning token replaced by the pad token is still attended."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attention[row, width - len(s) :] = 1
    return ids.to(device), attention.to(device)


def outcome_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_pred: list[int],
    inputs_embeds: torch.Tensor | None = None,
    cache: Cache | None = None,
) -> torch.Tensor:
    """``log P_final`` per row, ``[B, V]``: log-softmax of the logits averaged over each
    row's last ``n_pred`` positions (left padding keeps them at the end of every row).

    ``cache``: the KV of positions the inputs follow, which ``attention_mask`` covers
    before the inputs' own columns (it is filled further by this call); a fresh cache
    keeps the inputs' KV (``prefix_cache``)."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as creditbench.loss does
    width = (input_ids if inputs_embeds is None else inputs_embeds).size(1)
    k = max(n_pred)
    inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    if cache is not None:
        inputs[cache_keyword(model)] = cache
    logits = model(
        **inputs,
        attention_mask=attention_mask,
        position_ids=positions[:, -width:],
        logits_to_keep=k,
        use_cache=cache is not None,
    ).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    n = torch.tensor(n_pred, device=logits.device)
    keep = torch.arange(k, device=logits.device) >= (k - n)[:, None]  # [B, k]
    mean = (logits * keep[..., None]).sum(1) / n[:, None]
    return torch.log_softmax(mean, dim=-1)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def placeholder_probe(pad_id: int) -> Probe:
    """Two pad tokens, the second a reasoning token: the input of a pass that only keeps
    the processes in step (``lockstep``); its result is discarded."""
    return Probe([pad_id, pad_id], 1, 1, (0, 1))


def _full_copies(model, probes, chunk, pad_id, device):
    """``log P_final`` of perturbed copies ``(k, j, pos)``, each forwarded whole."""
    seqs = []
    for k, _, pos in chunk:
        seq = list(probes[k].ids)
        seq[pos] = pad_id
        seqs.append(seq)
    ids, attention = pad_left(seqs, pad_id, device)
    logq = outcome_logprobs(model, ids, attention, [probes[k].n_pred for k, _, _ in chunk])
    return logq, sum(len(s) for s in seqs)


def _suffix_start(probe: Probe, pos: int) -> int:
    """The first token a copy perturbed at ``pos`` forwards over the prefix cache: the
    perturbed token, or the first answer-predicting position if that comes earlier."""
    return min(pos, len(probe.ids) - probe.n_pred)


def _placeholder_forward(model, pad_id: int, device) -> None:
    """A forward that only keeps the processes in step (``lockstep``); discarded."""
    ids, attention = pad_left([[pad_id]], pad_id, device)
    outcome_logprobs(model, ids, attention, [1])


def _suffix_copies(model, probes, cache, row, shift, chunk, pad_id, device):
    """``log P_final`` of perturbed copies ``(k, j, pos)``, each forwarded from its
    perturbed token on, after the clean pass's KV of the tokens before it.

    A copy of probe k perturbed at ``pos`` equals the clean sequence before ``pos``: in a
    causal model those positions' keys and values are the clean pass's, so only the
    tokens from ``_suffix_start`` on are forwarded. ``cache``: the clean pass's per-layer
    ``(keys, values)``, ``[B, heads, W, d]``: probe k in row ``row[k]``, left-padded by
    ``shift[k]``. The batch's prefixes are right-aligned in a cache of the longest one
    and its suffixes left-padded to the longest: ``[pad | prefix | pad | suffix]`` under
    one attention mask, positions counted over the real tokens (as the clean pass does)."""
    starts = [_suffix_start(probes[k], pos) for k, _, pos in chunk]
    width_p = max(starts)
    rows = torch.tensor([row[k] for k, _, _ in chunk], device=device)
    cols = torch.tensor(
        [
            [shift[k] + t - width_p + i for i in range(width_p)]
            for (k, _, _), t in zip(chunk, starts, strict=True)
        ],
        device=device,
    ).clamp(min=0)  # the columns left of a row's prefix are masked out
    layers = [
        (
            keys[rows[:, None], :, cols].transpose(1, 2),
            values[rows[:, None], :, cols].transpose(1, 2),
        )
        for keys, values in cache
    ]
    suffixes = []
    for (k, _, pos), t in zip(chunk, starts, strict=True):
        seq = list(probes[k].ids[t:])
        seq[pos - t] = pad_id
        suffixes.append(seq)
    ids, suffix_mask = pad_left(suffixes, pad_id, device)
    prefix_mask = torch.tensor(
        [[int(i >= width_p - t) for i in range(width_p)] for t in starts], device=device
    )
    attention = torch.cat([prefix_mask, suffix_mask], dim=1)
    logq = outcome_logprobs(
        model, ids, attention, [probes[k].n_pred for k, _, _ in chunk],
        cache=DynamicCache(ddp_cache_data=layers),
    )  # fmt: skip
    return logq, sum(len(s) for s in suffixes)


def _full_attention_layers(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's ``(keys, values)`` of a filled cache, or None where a layer does not
    keep every position (a sliding window, a linear-attention state): no prefix reuse."""
    layers = []
    for layer in getattr(cache, "layers", None) or []:
        if type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None:
            return None
        layers.append((layer.keys, layer.values))
    return layers or None


@torch.no_grad()
def perturbation_importance(
    model,
    probes: list[Probe],
    pad_id: int,
    batch_size: int,
    collective=None,
    prefix_cache: bool = True,
) -> tuple[list[torch.Tensor], int]:
    """OAR-P: ``I_t = KL(P_final || P_final^(t))`` with token t replaced by ``pad_id``.

    Returns one float64 importance vector per probe and the number of forwarded tokens
    (every clean sequence, and of every perturbed copy the tokens forwarded). Probes go
    ``batch_size`` at a time through a clean forward; their perturbed copies, sorted by
    length, ``batch_size`` per forward. ``prefix_cache``: a copy is forwarded from its
    perturbed token on, on the clean forward's keys and values of the tokens before it
    (``_suffix_copies``: the same logits up to rounding, about half the tokens of a
    copy); False forwards every copy whole (the official code's computation). A model
    whose cache keeps fewer than every position forwards copies whole. ``collective``:
    every process makes as many forwards as the one with the most (placeholders,
    discarded; one agreement per probe batch).
    """
    device = next(model.parameters()).device
    forwarded = 0
    importance = [torch.zeros(len(p.positions), dtype=torch.float64) for p in probes]
    for block in lockstep(collective, _chunks(list(range(len(probes))), batch_size)):
        copies = []
        if block is None:  # another process has more probes: placeholder forwards
            _placeholder_forward(model, pad_id, device)
        else:
            chunk = [probes[k] for k in block]
            ids, attention = pad_left([p.ids for p in chunk], pad_id, device)
            fresh = DynamicCache() if prefix_cache else None
            logp = outcome_logprobs(model, ids, attention, [p.n_pred for p in chunk], cache=fresh)
            clean = dict(zip(block, logp, strict=True))
            forwarded += sum(len(p.ids) for p in chunk)
            cache = _full_attention_layers(fresh) if fresh is not None else None
            row = {k: i for i, k in enumerate(block)}
            shift = {k: ids.size(1) - len(probes[k].ids) for k in block}
            copies = [(k, j, pos) for k in block for j, pos in enumerate(probes[k].positions)]
            # similar suffix lengths share a forward, so each pads little
            copies.sort(key=lambda c: len(probes[c[0]].ids) - _suffix_start(probes[c[0]], c[2]))
        for part in lockstep(collective, _chunks(copies, batch_size)):
            if part is None:
                _placeholder_forward(model, pad_id, device)
                continue
            if cache is not None:
                logq, n = _suffix_copies(model, probes, cache, row, shift, part, pad_id, device)
            else:
                logq, n = _full_copies(model, probes, part, pad_id, device)
            logp = torch.stack([clean[k] for k, _, _ in part])
            kl = kl_divergence(logp, logq).clamp(min=0)  # rounding
            for (k, j, _), value in zip(part, kl.tolist(), strict=True):
                importance[k][j] = value
            forwarded += n
    return importance, forwarded


def reasoning_noise(
    probes: list[Probe], hidden_size: int, std: float, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """OAR-G's Gaussian noise: one ``[L, hidden]`` CPU draw per probe, in order
    (``generator=None`` draws from the global torch RNG)."""
    return [torch.randn(len(p.positions), hidden_size, generator=generator) * std for p in probes]


def gradient_importance(
    model,
    probes: list[Probe],
    pad_id: int,
    noise: list[torch.Tensor],
    batch_size: int,
    collective=None,
) -> tuple[list[torch.Tensor], int]:
    """OAR-G: ``I_t = |<dJ/de_t, e_t>|``, ``J = KL(p0 || p_noisy)``, noise on reasoning tokens.

    ``noise[k]`` is added to probe k's reasoning-token embeddings. Rows of a batch do not
    interact, so the gradient of the summed ``J`` gives each row its own gradient. Only
    the input embeddings are differentiated: the parameters' ``.grad`` is left untouched.
    Returns float64 importances per probe and the forwarded tokens (clean + noisy).
    ``collective``: every process makes as many passes as the one with the most (on a
    placeholder probe with zero noise, discarded).
    """
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    importance: list[torch.Tensor] = []
    forwarded = 0
    hidden = embed.weight.shape[-1]
    for chunk in lockstep(collective, _chunks(list(range(len(probes))), batch_size)):
        if chunk is None:  # another process has more batches: the same pass, discarded
            p = placeholder_probe(pad_id)
            gradient_importance(model, [p], pad_id, [torch.zeros(1, hidden)], 1)
            continue
        ps = [probes[k] for k in chunk]
        n_pred = [p.n_pred for p in ps]
        ids, attention = pad_left([p.ids for p in ps], pad_id, device)
        with torch.no_grad():
            p0 = outcome_logprobs(model, ids, attention, n_pred)  # the clean forward, detached
            embeds = embed(ids)
        embeds = embeds.detach().requires_grad_(True)
        width = ids.size(1)
        delta = torch.zeros_like(embeds, requires_grad=False)
        for row, (k, p) in enumerate(zip(chunk, ps, strict=True)):
            shift = width - len(p.ids)
            delta[row, shift + p.positions.start : shift + p.positions.stop] = noise[k].to(
                device=device, dtype=embeds.dtype
            )
        with torch.enable_grad():
            logq = outcome_logprobs(model, ids, attention, n_pred, inputs_embeds=embeds + delta)
            j = kl_divergence(p0, logq).sum()
            (grad,) = torch.autograd.grad(j, embeds)
        dtype = torch.promote_types(embeds.dtype, torch.float32)  # bf16 models: dot in fp32
        saliency = (grad.to(dtype) * embeds.detach().to(dtype)).sum(-1).abs()  # [B, width]
        for row, p in enumerate(ps):
            shift = width - len(p.ids)
            sl = slice(shift + p.positions.start, shift + p.positions.stop)
            importance.append(saliency[row, sl].to("cpu", torch.float64))
        forwarded += 2 * sum(len(p.ids) for p in ps)
    return importance, forwarded


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------ the method
class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx
        if ctx is not None and not hasattr(getattr(ctx, "task", None), "answer_span"):
            raise ValueError(
                f"OAR needs the task's answer_span (where P_final is read); "
                f"task {getattr(ctx.task, 'name', ctx.task)!r} has none"
            )

    def collect(self, problems, step: int) -> list[Group]:
        """GRPO's groups; each carries its training step (``meta["step"]``: OAR-G's noise)."""
        G = self.ctx.run.train.group_size
        return [
            Group(trajs, meta={"step": step})
            for trajs in self.ctx.rollout(problems, G, purpose="rollout")
        ]

    def probe(self, traj: Trajectory) -> Probe | None:
        """Where the answer and the reasoning are; ``None`` when there is nothing to reshape."""
        char_span = self.ctx.task.answer_span(traj.text)
        if char_span is None:
            return None
        ends = decoded_lengths(traj.completion_ids, self.ctx.tokenizer)
        answer = answer_token_span(ends, char_span)
        line = line_start_token(ends, traj.text, char_span[0])
        span = reasoning_span(answer[0], traj.thought_ends, self.params.reasoning_span, line)
        if span[1] <= span[0]:
            return None
        p = self.params
        return make_probe(traj.prompt_ids, traj.completion_ids, answer, span, p.outcome_mode)

    def noise_generator(self, step: int) -> torch.Generator:
        """OAR-G's private noise RNG at ``step`` (a function of the run's seed and the step)."""
        seed = self.ctx.step_rng(step, "oar-noise").getrandbits(63)
        return torch.Generator().manual_seed(seed)

    @staticmethod
    def step_of(groups: list[Group]) -> int:
        """The training step the groups were collected at (``collect`` records it)."""
        steps = {g.meta.get("step") for g in groups}
        if len(steps) != 1 or None in steps:
            raise ValueError(
                f"OAR-G seeds its noise from the training step, which collect() records in "
                f"each group's meta['step']; these groups have {sorted(map(str, steps))}"
            )
        return int(steps.pop())

    def importance(self, probes: list[Probe], step: int) -> list[torch.Tensor]:
        """Importances of every probe's reasoning tokens, charged to the ledger; ``step``
        seeds OAR-G's noise."""
        p, model, ledger = self.params, self.ctx.model, self.ctx.ledger
        pad_id = self.ctx.tokenizer.pad_token_id
        coll = self.ctx.lockstep
        with ledger.phase(p.importance), _eval_mode(model):
            if p.importance == "perturbation":
                imp, forwarded = perturbation_importance(
                    model, probes, pad_id, p.perturbation_batch_size, coll, p.prefix_cache
                )
            else:
                hidden = model.get_input_embeddings().weight.shape[-1]
                noise = reasoning_noise(probes, hidden, p.noise_std, self.noise_generator(step))
                imp, forwarded = gradient_importance(
                    model, probes, pad_id, noise, p.perturbation_batch_size, coll
                )
        ledger.add_tokens(p.importance, forwarded=forwarded)
        return imp

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p = self.params
        trained, todo = [], []
        for group in groups:
            adv = group_normalise(group.rewards, std=p.std, eps=p.eps)
            for traj, a in zip(group.trajectories, adv, strict=True):
                trained.append(traj.set_credit(float(a)))  # w = 1 unless reshaped below
                probe = self.probe(traj) if a != 0 else None  # A = 0 * w: skip the pass
                if probe is not None:
                    todo.append((traj, float(a), probe))
        if todo or self.ctx.lockstep is not None:  # several processes: every one passes
            step = self.step_of(groups) if p.importance == "gradient" else 0
            importances = self.importance([pr for _, _, pr in todo], step)
            for (traj, a, probe), imp in zip(todo, importances, strict=True):
                w = reshape_weights(imp, p.quantile, p.floor, p.ramp_beta, p.quantile_interpolation)
                weights = completion_weights(len(traj.completion_ids), probe.span, w)
                traj.set_credit([a * x for x in weights])
                traj.meta["oar"] = {"span": probe.span, "importance": imp.tolist()}
        return trained
