"""The HF sampler's decoding loop: one batch, token by token, finished rows dropped.

transformers' ``generate`` keeps every row of a batch in each forward until the longest
one ends: a row that stopped at its answer after 30 tokens is still decoded (as padding)
for as long as the batch's longest row, 60 tokens, say. On the testbed's chains, whose
lengths vary by a factor of two within a group, that is about 40% of every batch's
decoding work (``benchmarks/decode_loop.py``). ``decode`` is the same sampling loop as
``GenerationMixin._sample`` (transformers/generation/utils.py), written for the engine's
needs: it takes the caller's KV cache (a shared prefill may already fill it), applies the
logits processors that ``generate`` would build for the sampler's ``GenerationConfig``
(transformers' own ``SuppressTokensLogitsProcessor``, ``TemperatureLogitsWarper`` and
``TopPLogitsWarper``, in generate's order), asks a ``ThoughtTracker`` after every token
whether each row is done, and removes finished rows from the batch (their cache rows
included) once enough of them have finished (``COMPACT_FRACTION``). The log-probability
of each sampled token under the raw distribution (temperature 1, no processors) is
gathered step by step, so a batch never holds its ``rows x tokens x vocabulary`` logits.

A row's tokens come from the same distribution as under ``generate``; which random
numbers a row draws depends on the batch's shape at each step, so sampled outputs are
not those of ``generate`` for the same seed (they are reproducible for the same seed and
batch). Greedy outputs are the same token for token (tested in ``tests/test_decode.py``).

Sharded models (FSDP, DeepSpeed ZeRO-3, several processes): every forward is a
collective, so, as ``generate`` does with ``synced_gpus``, a process whose rows have all
finished keeps forwarding (one placeholder row, result discarded) until every process's
rows have (one ``all_reduce`` per step, only then).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from transformers import (
    Cache,
    LogitsProcessorList,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from creditbench.thoughts import ThoughtTracker

# Finished rows are dropped from the batch once they are at least this fraction of the
# rows still in it (and always when every row still decoding has finished). Dropping
# copies the KV cache of the rows kept, so dropping at every single finish costs more
# than it saves on small batches; a quarter keeps the copies to a handful per batch
# (``benchmarks/decode_loop.py`` prints the alternatives).
COMPACT_FRACTION = 0.25


def logits_processors(
    temperature: float, top_p: float, suppress: list[int] | None
) -> LogitsProcessorList:
    """The processors ``generate`` builds for the sampler's ``GenerationConfig``
    (``suppress_tokens``, then, when sampling, the temperature and top-p warpers; top-k
    off): greedy decoding only suppresses."""
    procs = LogitsProcessorList()
    if suppress:
        procs.append(SuppressTokensLogitsProcessor(suppress))
    if temperature > 0:
        if temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    return procs


def left_pad(contexts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, ``[B, W]``: the contexts left-padded to the longest
    (``W``), as ``decode`` and ``generate`` take a batch."""
    width = max(map(len, contexts))
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, ctx in enumerate(contexts):
        ids[row, width - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
        attention[row, width - len(ctx) :] = 1
    return ids, attention


def cache_keyword(model) -> str:
    """The keyword under which ``model``'s forward takes a KV cache.

    transformers renamed ``past_key_values`` to ``cache`` (5.2x; the old name is
    deprecated and removed in 5.40, after which a cache passed under it would land in
    ``**kwargs`` unused and every decoding step would see one token of context, silently).
    The name is read from the forward of the model's own class, under any wrapper
    (DDP, FSDP, DeepSpeed: ``.module``; PEFT: ``get_base_model()``), so the engine runs on
    the transformers versions on either side of the rename (vLLM pins older ones).
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
    return _cache_keyword_of(type(model))


@functools.cache
def _cache_keyword_of(cls) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def synced_decoding(model) -> bool:
    """Whether the model's forwards are collectives across processes (ZeRO-3 or FSDP
    with more than one process): the condition under which ``generate`` sets
    ``synced_gpus`` (``GenerationMixin._prepare_generation_config`` callers in
    transformers/generation/utils.py)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module

    return bool(is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))


def agree_max(value: int, device) -> int:
    """The largest ``value`` over processes (one ``all_reduce``): what a synced sampler's
    processes agree on before a collective step (batches in a call, whether any process
    runs a shared prefill, whether any is still decoding)."""
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


@torch.inference_mode()
def decode(
    model,
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    cache: Cache,
    tracker: ThoughtTracker,
    rows: list[int],
    out: torch.Tensor,
    *,
    processors: LogitsProcessorList,
    greedy: bool,
    want_logprobs: bool = False,
    synced: bool | None = None,
    compact_fraction: float | None = None,
) -> torch.Tensor | None:
    """Decode a left-padded batch until the tracker has ended every row.

    ``input_ids``/``attention``: ``[B, W]`` contexts, left-padded; ``cache`` holds the
    KV of the first ``cache.get_seq_length()`` positions (0, or ``W - 1`` after a shared
    prefill). ``rows[i]``: the tracker row of batch row i. ``out``: the caller's
    ``[B, max_new_tokens]`` buffer, filled in place with each row's generated ids (what
    the tracker's ``decode`` callback reads; left as it was after a row's end), whose
    width is the decoding budget. Returns, with ``want_logprobs``, the ``[B,
    max_new_tokens]`` raw log-probabilities of those ids (0 after a row's end).
    ``processors``: applied to each step's logits before choosing (``logits_processors``,
    or what ``generate`` builds for a model's generation config); they see no input ids,
    so only processors that need none belong here. ``greedy``: the argmax, else a draw.
    """
    batch = input_ids.size(0)
    device = input_ids.device
    synced = synced_decoding(model) if synced is None else synced
    max_new_tokens = out.size(1)
    if compact_fraction is None:
        compact_fraction = COMPACT_FRACTION
    lps = torch.zeros((batch, max_new_tokens)) if want_logprobs else None

    start = cache.get_seq_length()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # as the shared prefill
    step_ids = input_ids[:, start:]
    step_pos = positions[:, start:]
    cache_kw = cache_keyword(model)
    alive = torch.arange(batch)  # batch row of each row still in the forward batch
    running = [not tracker.done[r] for r in rows]  # per row still in the batch
    t = 0  # the next generated position; a synced process may forward past its budget
    while True:
        local = any(running) and t < max_new_tokens
        if not (agree_max(local, device) if synced else local):
            break
        logits = (
            model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=step_pos,
                **{cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1, :]
            .float()
        )
        if not local:  # a placeholder forward: another process is still decoding
            step_ids = step_ids[:, -1:]
            step_pos = step_pos[:, -1:] + 1
            attention = torch.cat([attention, attention.new_ones((attention.size(0), 1))], 1)
            t += 1
            continue
        scores = processors(None, logits)
        if greedy:
            nxt = scores.argmax(dim=-1)
        else:
            nxt = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1)[:, 0]
        nxt_cpu = nxt.cpu()
        live = torch.tensor(running)
        out[alive[live], t] = nxt_cpu[live]
        if want_logprobs:
            raw = F.log_softmax(logits, dim=-1).gather(-1, nxt[:, None])[:, 0]
            lps[alive[live], t] = raw.cpu()[live]
        tokens = nxt_cpu.tolist()
        for i, b in enumerate(alive.tolist()):
            if running[i] and tracker.push(rows[b], tokens[i]):
                running[i] = False
        n_running = sum(running)
        finished = len(running) - n_running
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        attention = torch.cat([attention, attention.new_ones((attention.size(0), 1))], 1)
        if finished and n_running and finished >= compact_fraction * len(running):
            keep = [i for i, r in enumerate(running) if r]
            keep_t = torch.tensor(keep, device=device)
            cache.batch_select_indices(keep_t)
            attention, step_ids, step_pos = attention[keep_t], step_ids[keep_t], step_pos[keep_t]
            alive = alive[torch.tensor(keep)]
            running = [True] * len(keep)
        elif n_running == 0 and synced and len(running) > 1:  # keep one placeholder row
            keep_t = torch.tensor([0], device=device)
            cache.batch_select_indices(keep_t)
            attention, step_ids, step_pos = attention[keep_t], step_ids[keep_t], step_pos[keep_t]
            alive, running = alive[:1], [False]
        t += 1
    return lps
