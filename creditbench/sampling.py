"""The sampler: batched generation from token-id contexts, with stop patterns.

Contexts are token ids (a prompt, or a prompt plus a prefix of a completion): a
continuation from a prefix never goes through re-tokenised text. Every generated
and every prefilled token is charged to the ledger under the caller's purpose.

Prefix sharing: ``generate(contexts, n=K)`` samples K continuations of each context
and runs each context's prefill once per batch, expanding its KV cache to the K rows
(what vLLM's prefix caching does for identical requests). The outputs are those of
``generate`` on each context repeated K times; the ledger charges the shared prefill
once (per batch: a context whose K rows are split over two batches is prefilled, and
charged, in each).

Batches: rows (each context's K copies, in order) go to ``generate`` in batches of at
most ``sampling.batch_size`` rows and, with ``sampling.max_batch_tokens``, of at most
that many KV positions (rows x (longest context + largest budget)), cut greedily in
order (``batch_spans``). Greedy outputs do not depend on the cut; sampled ones come
from another stream of random numbers when the batches change.

Thought-level generation: a task with a stop pattern (``task.thought_rules``, see
``creditbench.thoughts``) has its chains generated thought by thought, as SRPO's agent
loop does, by per-row stop rules inside the same batched decode: a thought ends at the
delimiter or at its token cap, and a row ends after the thought cap, after the thought
with the answer marker, or when a whole thought no longer fits its budget. The thought
boundaries come back with each generation. Each row has its own token budget and its own
count of thoughts already in its context (a continuation from a reset state).

Backends (``sampling.backend``): this class is ``hf`` (transformers' ``generate`` on the
trainer's live model); ``vllm`` is ``creditbench.vllm_backend.VLLMSampler``, the same
interface on a colocated vLLM engine. ``Sampler.for_rollouts`` picks one for the
trainer, which enters ``sampler.rollouts(step)`` around each step's sampling.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import Cache

from creditbench import faults
from creditbench.config import SamplingConfig
from creditbench.decode import (
    agree_max,
    cache_keyword,
    left_pad,
    logits_processors,
    synced_decoding,
)
from creditbench.decode import decode as decode_batch
from creditbench.kv_cache import PreallocatedCache
from creditbench.ledger import Ledger
from creditbench.tasks import chat_messages
from creditbench.thoughts import LENGTH, ThoughtRules, ThoughtTracker


@dataclass
class Generation:
    context_ids: list[int]
    ids: list[int]  # generated tokens, the stop token or pattern included
    text: str  # decoded ids, special tokens removed
    stop: str  # "eos", "pattern", "length"; with thought rules also "answer", "thoughts"
    logprobs: list[float] | None = None  # log pi(token) under the raw model distribution (T = 1)
    thought_ends: list[int] | None = None  # with thought rules: exclusive ends in ``ids``
    # the tokens the ledger charged as forwarded for this row: its share of the batch's
    # prefill (``prefill_shares``) plus ``ids``; a call's rows sum to its charge
    forwarded: int = 0


def prefill_shares(contexts: list[list[int]]) -> list[int]:
    """Per row of one batch, the context tokens the sampler charges for its prefill
    (``Sampler._shared_prefill``): every context in full when none repeats (or every
    context is a single token); else a distinct context's first row carries its ``len - 1``
    shared tokens plus its own last token, and every further row only its last token.
    The shares sum to the batch's charge, so a method that re-charges some rows to another
    purpose (SRPO's seed search) moves exactly what was charged for them."""
    if not contexts:
        return []
    if len({tuple(c) for c in contexts}) == len(contexts) or max(map(len, contexts)) < 2:
        return [len(c) for c in contexts]
    seen: set[tuple[int, ...]] = set()
    shares = []
    for c in contexts:
        shares.append(1 if tuple(c) in seen else len(c))
        seen.add(tuple(c))
    return shares


def batch_spans(
    context_lens: list[int],
    budgets: list[int],
    batch_size: int,
    max_batch_tokens: int | None = None,
) -> list[tuple[int, int]]:
    """The ``generate`` batches of rows in order, as ``[start, end)`` spans.

    Greedy, in order: a row joins the current batch while the batch keeps at most
    ``batch_size`` rows and, with ``max_batch_tokens``, rows x (longest context + largest
    budget in the batch) <= ``max_batch_tokens``, the KV positions of a left-padded batch
    (``sampling.max_batch_tokens``); otherwise it starts the next batch. A row alone is
    always a batch (even one over the budget). Rows are never reordered, so every row's
    generation and the output order are those of one batch.
    """
    spans: list[tuple[int, int]] = []
    start, width, budget = 0, 0, 0
    for i, (n, b) in enumerate(zip(context_lens, budgets, strict=True)):
        rows = i - start + 1
        w, m = max(width, n), max(budget, b)
        fits = rows <= batch_size and (
            max_batch_tokens is None or rows * (w + m) <= max_batch_tokens
        )
        if i > start and not fits:
            spans.append((start, i))
            start, w, m = i, n, b
        width, budget = w, m
    if context_lens:
        spans.append((start, len(context_lens)))
    return spans


class Sampler:
    def __init__(
        self,
        model,
        tokenizer,
        cfg: SamplingConfig,
        ledger: Ledger | None = None,
        system_prompt: str | None = None,
        chat_template: bool = True,
        thought_rules: ThoughtRules | None = None,
        stop_strings: list[str] = (),
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.ledger = ledger if ledger is not None else Ledger()
        self.system_prompt = system_prompt  # the task's, before every user turn
        self.chat_template = chat_template  # false: the prompt text as is (SFT checkpoints)
        self.thought_rules: ThoughtRules | None = thought_rules  # the task's, by default
        self.stop_strings: list[str] = list(stop_strings)  # the task's extra stop strings

    @classmethod
    def for_task(cls, model, tokenizer, cfg: SamplingConfig, task, ledger: Ledger | None = None):
        """A sampler that prompts and stops as ``task`` asks: its system prompt, the chat
        template unless the task turns it off (``chat_template: false``, SFT checkpoints),
        its thought rules (``task.thought_rules``) and its extra stop strings
        (``task.stop_strings``), which every generation applies unless told otherwise."""
        return cls(
            model,
            tokenizer,
            cfg,
            ledger,
            system_prompt=getattr(task, "system_prompt", None),
            chat_template=getattr(task.cfg, "chat_template", True),
            thought_rules=getattr(task, "thought_rules", None),
            stop_strings=list(getattr(task, "stop_strings", ()) or ()),
        )

    @classmethod
    def for_rollouts(
        cls,
        model,
        tokenizer,
        cfg: SamplingConfig,
        task,
        ledger: Ledger | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
    ) -> Sampler:
        """The training rollouts' sampler: ``for_task`` on the backend ``cfg.backend`` names.

        ``hf``: this class (``generate`` on the live model). ``vllm``: a
        ``creditbench.vllm_backend.VLLMSampler`` (imported only then, so the project runs
        without vLLM installed), whose per-request seeds derive from ``seed`` and
        ``rank``. Either way the trainer enters ``sampler.rollouts(step)`` around a step's
        sampling (the vLLM engine takes the model's current weights there).
        """
        if cfg.backend == "hf":
            return cls.for_task(model, tokenizer, cfg, task, ledger)
        if cfg.backend == "vllm":
            from creditbench.vllm_backend import VLLMSampler

            return VLLMSampler.for_task(model, tokenizer, cfg, task, ledger, seed=seed, rank=rank)
        raise ValueError(f"sampling.backend must be 'hf' or 'vllm', got {cfg.backend!r}")

    def rollouts(self, step: int):
        """A step's sampling (the trainer's ``collect``): ``generate`` calls inside sample
        from the model's weights as they are on entry. Here a no-op (``generate`` runs the
        live model); an engine with its own copy of the weights syncs them on entry."""
        return nullcontext()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, text: str, chat: bool | None = None) -> list[int]:
        """Prompt ids as every policy call sees its prompt: through the chat template, or
        the text as is with the tokenizer's special tokens (``chat_template: false``).
        ``chat`` overrides the task's setting for one call (SRPO localises through the
        chat template whatever the chains use); a tokenizer without a chat template
        always takes the text as is."""
        chat = self.chat_template if chat is None else chat
        if not chat or not getattr(self.tokenizer, "chat_template", None):
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        ids = self.tokenizer.apply_chat_template(
            chat_messages(text, self.system_prompt), tokenize=True, add_generation_prompt=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in recent versions
            ids = ids["input_ids"]
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def generate(
        self,
        contexts: list[list[int]],
        *,
        purpose: str,
        stop: list[str] | None = None,
        max_new_tokens: int | list[int] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        logprobs: bool = False,
        n: int = 1,
        thoughts: ThoughtRules | Literal["task"] | None = "task",
        thoughts_done: list[int] | None = None,
    ) -> list[Generation]:
        """Sample ``n`` continuations per context, context by context (context 0's ``n`` first).

        ``stop``: strings that end a generation (kept in the output), besides EOS.
        ``max_new_tokens``: one budget, or one per context (a continuation from a prefix
        gets what the prefix leaves). ``temperature`` 0 decodes greedily.
        ``thoughts``: ``"task"`` (default) applies the task's thought rules and extra stop
        strings (chains and suffixes: every method generates thought by thought where
        the task has a stop pattern); explicit ``ThoughtRules``; or None, a free run
        that stops only at EOS, ``stop`` and the budget (prompted side calls such as
        localisation and revision). ``thoughts_done``: per context, the thoughts its
        prefix already holds (they count toward the thought cap).
        Contexts that repeat in a batch (``n`` > 1, or the same prompt given twice) share
        their prefill (KV cache computed once, then expanded); the result is that of
        passing them one by one, and the ledger charges the shared prefill once.
        """
        if n < 1:
            raise ValueError(f"n (continuations per context) must be >= 1, got {n}")
        budget = self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        budgets = list(budget) if isinstance(budget, (list, tuple)) else [budget] * len(contexts)
        done = list(thoughts_done) if thoughts_done is not None else [0] * len(contexts)
        if len(budgets) != len(contexts) or len(done) != len(contexts):
            raise ValueError(
                f"{len(contexts)} contexts, {len(budgets)} budgets, {len(done)} thought counts"
            )
        rules = self.thought_rules if thoughts == "task" else thoughts
        stops = list(stop or []) + (self.stop_strings if thoughts == "task" else [])
        rows = [
            (c, b, d) for c, b, d in zip(contexts, budgets, done, strict=True) for _ in range(n)
        ]
        out: list[Generation] = []
        forwarded = 0
        spans = batch_spans(
            [len(c) for c, _, _ in rows],
            [b for _, b, _ in rows],
            self.cfg.batch_size,
            self.cfg.max_batch_tokens,
        )
        synced = self.is_synced()
        if synced:  # every process runs as many batches: placeholders on the short ones
            spans = spans + [None] * (agree_max(len(spans), self._device()) - len(spans))
        with self.ledger.phase("generate"):
            for span in spans:
                if span is None:
                    self._placeholder_batch()
                    continue
                i, j = span
                chunk = rows[i:j]
                gens, prefill = self._generate_batch(
                    [c for c, _, _ in chunk],
                    stops,
                    [b for _, b, _ in chunk],
                    self.cfg.temperature if temperature is None else temperature,
                    self.cfg.top_p if top_p is None else top_p,
                    logprobs,
                    rules=rules,
                    thoughts_done=[d for _, _, d in chunk],
                    synced=synced,
                )
                out.extend(gens)
                forwarded += prefill + sum(len(g.ids) for g in gens)
                faults.point("generate")
        self.ledger.add_tokens(purpose, generated=sum(len(g.ids) for g in out), forwarded=forwarded)
        return out

    def is_synced(self) -> bool:
        """Whether this sampler's generation is kept in step with the other processes'
        (``sampling.synced``; null: when the model is sharded, ``decode.synced_decoding``).
        In step, every ``generate`` call runs as many batches on every process, each
        batch's shared prefill and decoding steps are collectives, and a call with no rows
        on this process still takes part; methods call ``generate`` equally often on every
        process (``MethodContext.any_process`` where a call depends on the data)."""
        if self.cfg.synced is None:
            return synced_decoding(self.model)
        dist = torch.distributed
        return bool(
            self.cfg.synced
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )

    def _device(self):
        return next(self.model.parameters()).device

    def _placeholder_batch(self) -> None:
        """This process's part in a batch that only other processes have rows for: one
        placeholder row (a pad token, no budget) takes part in their shared prefill and
        decoding steps; its outputs are discarded and nothing is charged."""
        pad = self.tokenizer.pad_token_id
        ids = torch.full((1, 1), pad, dtype=torch.long, device=self._device())
        attention = torch.ones_like(ids)
        was_training = self.model.training
        self.model.eval()
        cache, _ = self._shared_prefill(ids, attention, [[pad]], capacity=2, synced=True)
        decode_batch(
            self.model,
            ids,
            attention,
            cache,
            ThoughtTracker([0], lambda row, start, end: ""),
            [0],
            torch.empty((1, 0), dtype=torch.long),
            processors=logits_processors(0, 1.0, None),
            greedy=True,
            synced=True,
        )
        self.model.train(was_training)

    def _never_sampled(self) -> list[int]:
        """Pad, BOS and UNK never belong inside a completion (unless one doubles as EOS)."""
        tok = self.tokenizer
        special = {tok.pad_token_id, tok.bos_token_id, tok.unk_token_id} - {None, tok.eos_token_id}
        return sorted(special)

    def _stop_ids_and_strings(self, stop: list[str]) -> tuple[list[int], list[str]]:
        eos = self.tokenizer.eos_token_id
        ids, strings = [eos], []
        for s in stop:
            enc = self.encode(s)
            if len(enc) == 1:
                ids.append(enc[0])  # single-token patterns stop like EOS (cheap)
            else:
                strings.append(s)
        return ids, strings

    def new_cache(self, capacity: int) -> Cache:
        """The KV cache of one batch: ``capacity`` positions per row, preallocated
        (``creditbench.kv_cache``; transformers' ``DynamicCache`` gives the same tokens,
        slower: ``benchmarks/kv_cache.py``)."""
        return PreallocatedCache(self.model.config, capacity)

    def _shared_prefill(
        self, input_ids, attention, contexts, capacity: int, synced: bool = False
    ) -> tuple[Cache, int]:
        """The KV cache of each row's context but its last token, once per distinct context.

        Returns the cache expanded to all rows (empty when no context repeats in the
        batch, or every context is one token: ``generate`` then prefills every row) and the
        number of tokens it forwarded: each distinct context's ``len - 1`` tokens once,
        plus each row's last context token (which ``generate`` forwards itself, row by
        row). The cache holds ``capacity`` positions per row (``creditbench.kv_cache``).
        """
        first: dict[tuple[int, ...], int] = {}  # distinct context -> its index in ``rep``
        rep, owner = [], []  # a row of each distinct context; each row's distinct context
        for row, c in enumerate(contexts):
            if tuple(c) not in first:
                first[tuple(c)] = len(rep)
                rep.append(row)
            owner.append(first[tuple(c)])
        cache = self.new_cache(capacity)
        shared = not (len(rep) == len(contexts) or input_ids.size(1) < 2)
        if synced and agree_max(shared, input_ids.device) and not shared:
            self.model(input_ids=input_ids[:1, :1], use_cache=False, logits_to_keep=1)  # in step
        if not shared:
            return cache, sum(len(c) for c in contexts)
        device = input_ids.device
        rep = torch.tensor(rep, device=device)
        mask = attention[rep, :-1]
        self.model(
            input_ids=input_ids[rep, :-1],
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),  # as generate: pads at 0
            **{cache_keyword(self.model): cache},
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_select_indices(torch.tensor(owner, device=device))
        return cache, sum(len(c) - 1 for c in first) + len(contexts)

    def _generate_batch(
        self,
        contexts,
        stop,
        budgets,
        temperature,
        top_p,
        want_logprobs,
        rules: ThoughtRules | None = None,
        thoughts_done: list[int] | None = None,
        synced: bool = False,
    ) -> tuple[list[Generation], int]:
        """One padded batch; returns its generations and the context tokens it forwarded.

        Every row's stops (EOS, stop strings, its budget, the thought rules) are applied
        by a ``ThoughtTracker`` as tokens arrive; a row that may not start at all (no
        budget or no thought left) is not decoded and comes back empty.
        """
        tok, model = self.tokenizer, self.model
        stop_ids, stop_strings = self._stop_ids_and_strings(stop)
        delimiter_id = None
        if rules is not None:
            enc = self.encode(rules.delimiter)
            delimiter_id = enc[0] if len(enc) == 1 else None
        new: torch.Tensor | None = None  # [active rows, budget]: generated ids, filled in place

        def decode(row: int, start: int, end: int) -> str:  # row's generated ids [start, end)
            return tok.decode(new[active_pos[row], start:end], skip_special_tokens=True)

        tracker = ThoughtTracker(
            budgets,
            decode,
            rules=rules,
            thoughts_done=thoughts_done,
            stop_ids=set(stop_ids),
            eos_id=tok.eos_token_id,
            stop_strings=stop_strings,
            delimiter_id=delimiter_id,
        )
        active = [r for r in range(len(contexts)) if not tracker.done[r]]
        active_pos = {r: i for i, r in enumerate(active)}
        lp = None
        prefilled = 0
        if active:
            ctxs = [contexts[r] for r in active]
            device = next(model.parameters()).device
            pad = tok.pad_token_id
            input_ids, attention = left_pad(ctxs, pad)
            width = input_ids.size(1)
            budget = max(budgets[r] for r in active)
            new = torch.full((len(ctxs), budget), pad, dtype=torch.long)
            was_training = model.training
            model.eval()
            input_ids, attention = input_ids.to(device), attention.to(device)
            cache, prefilled = self._shared_prefill(
                input_ids, attention, ctxs, capacity=width + budget, synced=synced
            )
            # Every sampling knob is explicit (``decode.logits_processors``): no top-k, no
            # repetition penalty, nothing filled in from a hub model's generation_config.
            lp = decode_batch(
                model,
                input_ids,
                attention,
                cache,
                tracker,
                active,
                new,
                processors=logits_processors(temperature, top_p, self._never_sampled()),
                greedy=temperature == 0,
                want_logprobs=want_logprobs,
                synced=synced,
            )
            model.train(was_training)
        elif synced:  # no row of this batch may start here: the others still decode
            self._placeholder_batch()
        shares = prefill_shares([contexts[r] for r in active])
        out = []
        for r, ctx in enumerate(contexts):
            n = tracker.length[r]
            ids = new[active_pos[r], :n].tolist() if r in active_pos else []
            share = shares[active_pos[r]] if r in active_pos else 0
            out.append(
                Generation(
                    context_ids=list(ctx),
                    ids=ids,
                    text=self.decode(ids),
                    stop=tracker.reason[r] or LENGTH,
                    logprobs=(
                        lp[active_pos[r], :n].tolist()
                        if lp is not None and r in active_pos
                        else ([] if want_logprobs else None)
                    ),
                    thought_ends=list(tracker.ends[r]) if rules is not None else None,
                    forwarded=share + len(ids),
                )
            )
        assert sum(shares) == prefilled, (shares, prefilled)  # the ledger's count, row by row
        return out, prefilled
