"""Plain rollout data: ``Trajectory``, ``Group`` and the padded ``Batch``, and the group norm.

A method samples ``Group``s of ``Trajectory``s and assigns each trained trajectory a
per-token advantage ``A[i, t]`` and loss mask ``m[i, t]`` over its completion
tokens; the engine pads those into a ``Batch`` for the loss.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from creditbench.tasks import Problem


@dataclass
class Trajectory:
    problem: Problem
    prompt_ids: list[int]
    completion_ids: list[int]  # prefix given from a reset (if any) + sampled tokens
    text: str  # decoded completion
    reward: float
    purpose: str  # what sampled it: rollout, seed, suffix, ... (ledger purpose)
    thought_ends: list[int]  # exclusive token offsets of each thought in completion_ids
    prefix_len: int = 0  # leading completion tokens that were given, not sampled
    stop: str = "eos"  # why sampling stopped: eos, pattern or length
    forwarded: int = 0  # tokens the ledger charged as forwarded for sampling it
    advantages: list[float] | None = None  # per completion token, set by the method
    loss_mask: list[float] | None = None  # per completion token; None = all tokens
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_thoughts(self) -> int:
        return len(self.thought_ends)

    def set_credit(self, advantages: list[float] | float, loss_mask: list[float] | None = None):
        """Per-token advantages (a scalar is broadcast over the completion) and mask."""
        n = len(self.completion_ids)
        if isinstance(advantages, (int, float)):
            advantages = [float(advantages)] * n
        if len(advantages) != n or (loss_mask is not None and len(loss_mask) != n):
            raise ValueError(
                f"credit has {len(advantages)} advantages / "
                f"{None if loss_mask is None else len(loss_mask)} mask entries for {n} tokens"
            )
        self.advantages = [float(a) for a in advantages]
        self.loss_mask = None if loss_mask is None else [float(m) for m in loss_mask]
        return self


@dataclass
class Group:
    """Completions that share a conditioning state and are normalised together."""

    trajectories: list[Trajectory]
    kind: str = "base"  # base, suffix, fallback, ...
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]


def group_normalise(
    rewards: list[float] | np.ndarray,
    std: Literal["unbiased", "population", "none"] = "unbiased",
    eps: float = 1e-4,
    zero_std_threshold: float | None = None,
) -> np.ndarray:
    """``norm(r) = (r - mean(r)) / (std(r) + eps)``.

    ``std``: ``unbiased`` (TRL / DeepSeekMath), ``population`` (SRPO's code), or
    ``none`` (centre only). ``zero_std_threshold``: if the group's std is below it,
    every advantage is 0 (SRPO's code uses 1e-8). A constant group always gets 0
    (no signal), whatever ``eps``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0 or np.all(r == r[0]):
        return np.zeros_like(r)
    centred = r - r.mean()
    if std == "none":
        return centred
    s = 0.0 if r.size == 1 else float(r.std(ddof=1 if std == "unbiased" else 0))
    if zero_std_threshold is not None and s < zero_std_threshold:
        return np.zeros_like(r)
    return centred / (s + eps)


# each tokenizer's decoding of single token ids, filled as ids are met
_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def thought_token_ends(ids: list[int], tokenizer, segment) -> list[int]:
    """Exclusive token offsets where each thought of the decoded text ends.

    Thought boundaries are found in text by the task's segmenter and mapped back to
    the first token whose decoding reaches them (BPE tokens may straddle a boundary;
    the token that completes the boundary closes the thought).
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    bounds, pos = [], 0
    for thought in segment(text):
        pos += len(thought)
        bounds.append(pos)
    if not bounds:
        return []
    ends, j = [], 0
    lengths = decoded_lengths(ids, tokenizer)
    for b in bounds:
        while j < len(ids) and lengths[j] < b:
            j += 1
        ends.append(min(j + 1, len(ids)))
    # trailing special tokens (EOS) belong to the last thought
    ends[-1] = len(ids)
    return ends


def decoded_lengths(ids: list[int], tokenizer) -> list[int]:
    """``len(decode(ids[:j+1]))`` for every j, in one pass when tokens decode independently."""
    cache = _PIECES.setdefault(tokenizer, {})
    pieces = []
    for t in ids:
        if t not in cache:  # a token's own decoding never changes: decode each id once
            cache[t] = tokenizer.decode([t], skip_special_tokens=True)
        pieces.append(cache[t])
    joined = "".join(pieces)
    if joined == tokenizer.decode(ids, skip_special_tokens=True):
        return list(np.cumsum([len(p) for p in pieces]))
    return [len(tokenizer.decode(ids[: j + 1], skip_special_tokens=True)) for j in range(len(ids))]


@dataclass
class Batch:
    """Padded tensors for the loss: prompts left-padded, completions right-padded."""

    prompt_ids: torch.Tensor  # [B, P]
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] 1 on real completion tokens
    loss_mask: torch.Tensor  # [B, C] m[i, t]: 1 where the token is trained on
    advantages: torch.Tensor  # [B, C] A[i, t]
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids.size(0)

    @classmethod
    def from_trajectories(cls, trajs: list[Trajectory], pad_id: int) -> Batch:
        if not trajs:
            raise ValueError("cannot build a batch from no trajectories")
        missing = [i for i, t in enumerate(trajs) if t.advantages is None]
        if missing:
            raise ValueError(f"trajectories {missing[:5]} have no advantages (call set_credit)")
        b = len(trajs)
        p = max(len(t.prompt_ids) for t in trajs)
        c = max(max(len(t.completion_ids) for t in trajs), 1)
        prompt_ids = torch.full((b, p), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((b, p), dtype=torch.long)
        completion_ids = torch.full((b, c), pad_id, dtype=torch.long)
        completion_mask = torch.zeros((b, c), dtype=torch.long)
        loss_mask = torch.zeros((b, c), dtype=torch.float32)
        advantages = torch.zeros((b, c), dtype=torch.float32)
        for i, t in enumerate(trajs):
            n_p, n_c = len(t.prompt_ids), len(t.completion_ids)
            prompt_ids[i, p - n_p :] = torch.tensor(t.prompt_ids)
            prompt_mask[i, p - n_p :] = 1
            if n_c:
                completion_ids[i, :n_c] = torch.tensor(t.completion_ids)
                completion_mask[i, :n_c] = 1
                advantages[i, :n_c] = torch.tensor(t.advantages)
                loss_mask[i, :n_c] = 1.0 if t.loss_mask is None else torch.tensor(t.loss_mask)
        return cls(prompt_ids, prompt_mask, completion_ids, completion_mask, loss_mask, advantages)

    def to(self, device) -> Batch:
        return Batch(
            **{
                k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                for k, v in self.__dict__.items()
            }
        )

    def micro_batches(self, size: int | None) -> list[list[int]]:
        """Row indices in micro-batches of ``size`` rows (``None``: one micro-batch), rows
        of similar completion length together, so that each pads little."""
        by_length = self.completion_mask.sum(-1).argsort().tolist()
        size = size or len(self) or 1
        return [by_length[s : s + size] for s in range(0, len(self), size)]

    def select(self, idx: torch.Tensor | list[int]) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Batch(
            **{k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        )

    def trimmed(self) -> Batch:
        """This batch without its all-padding columns: the prompts' leading ones and the
        completions' trailing ones (those of rows longer than any kept). A micro-batch of
        short rows, selected from a batch padded to its longest row, is then forwarded at
        its own width. The loss is unchanged (the columns dropped are masked out of every
        sum; no normaliser counts them) and so are the log-probs of the columns kept, up
        to rounding (the attention's sums run over fewer masked keys)."""
        prompt_cols = self.prompt_mask.any(0).nonzero()
        completion_cols = self.completion_mask.any(0).nonzero()
        p = self.prompt_ids.size(1) - int(prompt_cols.min()) if len(prompt_cols) else 0
        c = int(completion_cols.max()) + 1 if len(completion_cols) else 1
        if p == self.prompt_ids.size(1) and c == self.completion_ids.size(1):
            return self
        out = {}
        for k, v in self.__dict__.items():  # every tensor but the prompt's is [B, C]
            if k in ("prompt_ids", "prompt_mask"):
                out[k] = v[:, v.size(1) - p :]
            else:
                out[k] = v[:, :c] if isinstance(v, torch.Tensor) else v
        return Batch(**out)
