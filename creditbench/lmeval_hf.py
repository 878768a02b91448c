"""lm-eval's HF model with its generation through the engine's decoding loop.

``eval.lm_eval_model: creditbench-hf`` evaluates with lm-eval's own ``HFLM`` (its request
building, chat template, batching, stop-sequence post-processing and metrics are all
lm-eval's) except for one method: ``HFLM._model_generate``, which calls transformers'
``generate`` on each padded batch (lm_eval/models/huggingface.py), runs here through
``creditbench.decode``, whose rows leave the batch as soon as they stop. The tokens are
drawn from the same distribution: the logits processors are those ``generate`` builds for
the model's generation config updated with the task's generation keywords
(``GenerationMixin._get_logits_processor``), the stops are lm-eval's ``until`` strings
and the model's EOS ids, and the budget is lm-eval's ``max_length``. Greedy outputs are
the same token for token (``tests/test_lmeval_hf.py``); sampled ones come from another
stream of random numbers.

A processor that reads the generated ids (a repetition penalty, say) is refused by name:
the loop hands processors no ids. ``hf`` remains lm-eval's model untouched.
"""

from __future__ import annotations

import copy

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from creditbench.decode import decode
from creditbench.kv_cache import PreallocatedCache
from creditbench.thoughts import ThoughtTracker

# processors that ignore the ids so far (the loop passes none)
ID_FREE = (
    MinPLogitsWarper,
    SuppressTokensLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def generation_processors(model, generation_kwargs: dict, prompt_len: int):
    """``(processors, greedy, eos_ids)`` for one lm-eval batch: what ``generate`` would
    build from ``model.generation_config`` updated with ``generation_kwargs``."""
    cfg = copy.deepcopy(model.generation_config)
    unused = cfg.update(**generation_kwargs)
    if unused:
        raise ValueError(f"lm-eval generation keywords not understood: {sorted(unused)}")
    procs = model._get_logits_processor(
        generation_config=cfg,
        input_ids_seq_length=prompt_len,
        encoder_input_ids=None,
        prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(),
    )
    bad = [type(p).__name__ for p in procs if not isinstance(p, ID_FREE)]
    if bad:
        raise ValueError(
            f"eval.lm_eval_model 'creditbench-hf' cannot apply {bad} (they read the generated "
            "ids); use lm_eval_model 'hf'"
        )
    eos = cfg.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    return procs, not cfg.do_sample, eos_ids


@register_model("creditbench-hf")
class CreditbenchLM(HFLM):
    """``HFLM`` whose ``_model_generate`` decodes with ``creditbench.decode``."""

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        attention = generation_kwargs.pop("attention_mask", None)
        if attention is None:
            attention = torch.ones_like(context)
        # as HFLM: an unset temperature is 0, which means greedy unless sampling is asked
        generation_kwargs.setdefault("temperature", 0.0)
        if generation_kwargs["temperature"] == 0.0 and generation_kwargs.get("do_sample") is None:
            generation_kwargs["do_sample"] = False
        if generation_kwargs.get("do_sample") is False:
            generation_kwargs.pop("temperature", None)
        generation_kwargs.pop("use_cache", None)
        model, tok = self.model, self.tokenizer
        batch, width = context.shape
        budget = max(max_length - width, 0)
        procs, greedy, eos_ids = generation_processors(model, generation_kwargs, width)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos_ids or [0])[0]
        out = torch.full((batch, budget), pad, dtype=torch.long)

        def text(row: int, start: int, end: int) -> str:  # as lm-eval's stop criteria
            return tok.decode(out[row, start:end].tolist(), skip_special_tokens=False)

        tracker = ThoughtTracker(
            [budget] * batch,
            text,
            stop_ids=set(eos_ids),
            eos_id=eos_ids[0] if eos_ids else None,
            stop_strings=list(stop),
        )
        if budget:
            with torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ):
                decode(
                    model,
                    context,
                    attention,
                    PreallocatedCache(model.config, width + budget),
                    tracker,
                    list(range(batch)),
                    out,
                    processors=procs,
                    greedy=greedy,
                )
        return torch.cat([context.cpu(), out], dim=1)
