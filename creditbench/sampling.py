"""The sampler: batched generation from token-id contexts, with stop patterns.

Contexts are token ids (a prompt, or a prompt plus a prefix of a completion): a
continuation from a prefix never goes through re-tokenised text. Every generated
and every prefilled token is charged to the ledger under the caller's purpose.

Prefix sharing: ``generate(contexts, n=K)`` samples K continuations of each context
and runs each context's prefill once per batch, expanding its KV cache to the K rows
(what vLLM's prefix caching does for identical requests). The outputs are those of
``generate`` on each context repeated K times; the ledger charges the shared prefill
once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from creditbench import faults
from creditbench.config import SamplingConfig
from creditbench.ledger import Ledger
from creditbench.tasks import chat_messages


@dataclass
class Generation:
    context_ids: list[int]
    ids: list[int]  # generated tokens, the stop token or pattern included
    text: str  # decoded ids, special tokens removed
    stop: str  # "eos", "pattern" or "length"
    logprobs: list[float] | None = None  # log pi(token) under the raw model distribution (T = 1)


class StopOnStrings(StoppingCriteria):
    """Stop a row once its *generated* text contains a stop string.

    Only tokens after ``context_width`` are decoded, so a pattern that started in the
    context never matches, and any tokenizer (character-level included) works.
    """

    def __init__(self, tokenizer, stops: list[str], context_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, stops, context_width
        self.tail = max(len(s) for s in stops)  # every token decodes to >= 1 character

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.width :][:, -self.tail :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        hit = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


class Sampler:
    def __init__(
        self,
        model,
        tokenizer,
        cfg: SamplingConfig,
        ledger: Ledger | None = None,
        system_prompt: str | None = None,
        chat_template: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.ledger = ledger if ledger is not None else Ledger()
        self.system_prompt = system_prompt  # the task's, before every user turn
        self.chat_template = chat_template  # false: the prompt text as is (SFT checkpoints)

    @classmethod
    def for_task(cls, model, tokenizer, cfg: SamplingConfig, task, ledger: Ledger | None = None):
        """A sampler that prompts as ``task`` asks: its system prompt, and the chat template
        unless the task turns it off (``chat_template: false``, SFT checkpoints)."""
        return cls(
            model,
            tokenizer,
            cfg,
            ledger,
            system_prompt=getattr(task, "system_prompt", None),
            chat_template=getattr(task.cfg, "chat_template", True),
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt ids through the chat template, as every policy call sees its prompt."""
        if not self.chat_template:
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        ids = self.tokenizer.apply_chat_template(
            chat_messages(text, self.system_prompt), tokenize=True, add_generation_prompt=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in recent versions
            ids = ids["input_ids"]
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate(
        self,
        contexts: list[list[int]],
        *,
        purpose: str,
        stop: list[str] | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        logprobs: bool = False,
        n: int = 1,
    ) -> list[Generation]:
        """Sample ``n`` continuations per context, context by context (context 0's ``n`` first).

        ``stop``: strings that end a generation (kept in the output), besides EOS.
        ``temperature`` 0 decodes greedily.
        ``n`` > 1 shares each context's prefill across its ``n`` rows of a batch (KV cache
        computed once, then expanded); the result is that of passing each context ``n``
        times in a row, and the ledger charges the shared prefill once.
        """
        if n < 1:
            raise ValueError(f"n (continuations per context) must be >= 1, got {n}")
        rows = [c for c in contexts for _ in range(n)]
        out: list[Generation] = []
        forwarded = 0
        bs = self.cfg.batch_size
        with self.ledger.phase("generate"):
            for i in range(0, len(rows), bs):
                gens, prefill = self._generate_batch(
                    rows[i : i + bs],
                    stop or [],
                    max_new_tokens or self.cfg.max_new_tokens,
                    self.cfg.temperature if temperature is None else temperature,
                    self.cfg.top_p if top_p is None else top_p,
                    logprobs,
                    share_prefill=n > 1,
                )
                out.extend(gens)
                forwarded += prefill + sum(len(g.ids) for g in gens)
                faults.point("generate")
        self.ledger.add_tokens(purpose, generated=sum(len(g.ids) for g in out), forwarded=forwarded)
        return out

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

    def _shared_prefill(self, input_ids, attention, contexts) -> tuple[DynamicCache | None, int]:
        """The KV cache of each row's context but its last token, once per distinct context.

        Returns the cache expanded to all rows (``None`` when no context repeats in the
        batch, or every context is one token) and the number of tokens it forwarded:
        each distinct context's ``len - 1`` tokens once, plus each row's last context token
        (which ``generate`` forwards itself, row by row).
        """
        first: dict[tuple[int, ...], int] = {}  # distinct context -> its index in ``rep``
        rep, owner = [], []  # a row of each distinct context; each row's distinct context
        for row, c in enumerate(contexts):
            if tuple(c) not in first:
                first[tuple(c)] = len(rep)
                rep.append(row)
            owner.append(first[tuple(c)])
        if len(rep) == len(contexts) or input_ids.size(1) < 2:
            return None, sum(len(c) for c in contexts)
        device = input_ids.device
        rep = torch.tensor(rep, device=device)
        mask = attention[rep, :-1]
        cache = DynamicCache(config=self.model.config)
        self.model(
            input_ids=input_ids[rep, :-1],
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),  # as generate: pads at 0
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_select_indices(torch.tensor(owner, device=device))
        return cache, sum(len(c) - 1 for c in first) + len(contexts)

    def _generate_batch(
        self,
        contexts,
        stop,
        max_new_tokens,
        temperature,
        top_p,
        want_logprobs,
        share_prefill: bool = False,
    ) -> tuple[list[Generation], int]:
        """One padded batch; returns its generations and the context tokens it forwarded."""
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        pad = tok.pad_token_id
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ctx in enumerate(contexts):  # left padding
            input_ids[row, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
            attention[row, width - len(ctx) :] = 1
        stop_ids, stop_strings = self._stop_ids_and_strings(stop)
        greedy = temperature == 0
        # Every sampling knob is explicit: transformers otherwise fills unset ones from the
        # model's generation_config.json (a hub model's top_k, say), which would silently
        # sample from a different distribution than the run's config says.
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None if greedy else 0,
            min_p=None,
            repetition_penalty=1.0,
            eos_token_id=stop_ids,
            pad_token_id=pad,
            suppress_tokens=self._never_sampled() or None,
            return_dict_in_generate=True,
            output_logits=want_logprobs,
        )
        was_training = model.training
        model.eval()
        input_ids, attention = input_ids.to(device), attention.to(device)
        cache, prefilled = None, sum(len(c) for c in contexts)
        if share_prefill:
            cache, prefilled = self._shared_prefill(input_ids, attention, contexts)
        res = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=gen_cfg,
            **({"past_key_values": cache} if cache is not None else {}),
            stopping_criteria=StoppingCriteriaList(
                [StopOnStrings(tok, stop_strings, width)] if stop_strings else []
            ),
        )
        model.train(was_training)
        new = res.sequences[:, width:].cpu()
        lp = None
        if want_logprobs:
            logits = torch.stack(res.logits, dim=1).float().cpu()  # [B, T, V], raw (pre-warping)
            lp = F.log_softmax(logits, dim=-1).gather(-1, new[:, : logits.size(1), None])[..., 0]
        eos = tok.eos_token_id
        out = []
        for row, ctx in enumerate(contexts):
            ids = new[row].tolist()
            # generate pads a finished row; cut at its first stop token or stop string
            cut = next((j for j, t in enumerate(ids) if t in stop_ids), None)
            head = ids if cut is None else ids[:cut]
            reason = "length"
            if stop_strings:
                text = self.decode(head)
                ends = [text.find(s) + len(s) for s in stop_strings if s in text]
                if ends:
                    ids, reason = self._cut_after(head, min(ends)), "pattern"
            if reason == "length" and cut is not None:
                ids, reason = ids[: cut + 1], "eos" if ids[cut] == eos else "pattern"
            out.append(
                Generation(
                    context_ids=list(ctx),
                    ids=ids,
                    text=self.decode(ids),
                    stop=reason,
                    logprobs=lp[row, : len(ids)].tolist() if lp is not None else None,
                )
            )
        return out, prefilled

    def _cut_after(self, ids: list[int], n_chars: int) -> list[int]:
        """The shortest token prefix whose decoding has at least ``n_chars`` characters."""
        for j in range(1, len(ids) + 1):
            if len(self.decode(ids[:j])) >= n_chars:
                return ids[:j]
        return ids
