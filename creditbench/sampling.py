"""The sampler: batched generation from token-id contexts, with stop patterns.

Contexts are token ids (a prompt, or a prompt plus a prefix of a completion): a
continuation from a prefix never goes through re-tokenised text. Every generated
and every prefilled token is charged to the ledger under the caller's purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from creditbench.config import SamplingConfig
from creditbench.ledger import Ledger


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
    def __init__(self, model, tokenizer, cfg: SamplingConfig, ledger: Ledger | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.ledger = ledger if ledger is not None else Ledger()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt ids through the chat template, as every policy call sees its prompt."""
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
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
    ) -> list[Generation]:
        """Sample one continuation per context (repeat a context to sample several).

        ``stop``: strings that end a generation (kept in the output), besides EOS.
        ``temperature`` 0 decodes greedily.
        """
        out: list[Generation] = []
        bs = self.cfg.batch_size
        with self.ledger.phase("generate"):
            for i in range(0, len(contexts), bs):
                out.extend(
                    self._generate_batch(
                        contexts[i : i + bs],
                        stop or [],
                        max_new_tokens or self.cfg.max_new_tokens,
                        self.cfg.temperature if temperature is None else temperature,
                        self.cfg.top_p if top_p is None else top_p,
                        logprobs,
                    )
                )
        self.ledger.add_tokens(
            purpose,
            generated=sum(len(g.ids) for g in out),
            forwarded=sum(len(g.context_ids) + len(g.ids) for g in out),
        )
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

    def _generate_batch(self, contexts, stop, max_new_tokens, temperature, top_p, want_logprobs):
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
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy or top_p >= 1.0 else top_p,
            top_k=None,
            eos_token_id=stop_ids,
            pad_token_id=pad,
            suppress_tokens=self._never_sampled() or None,
            return_dict_in_generate=True,
            output_logits=want_logprobs,
        )
        was_training = model.training
        model.eval()
        res = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=gen_cfg,
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
        return out

    def _cut_after(self, ids: list[int], n_chars: int) -> list[int]:
        """The shortest token prefix whose decoding has at least ``n_chars`` characters."""
        for j in range(1, len(ids) + 1):
            if len(self.decode(ids[:j])) >= n_chars:
                return ids[:j]
        return ids
