"""The HF sampler's own decoding loop (``creditbench.decode``) against transformers'
``generate``: the same tokens where the random numbers line up, finished rows dropped
from the forward batch, and sharded processes kept in step."""

from __future__ import annotations

import inspect
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from conftest import random_tiny_model
from transformers import GenerationConfig

from creditbench.config import SamplingConfig
from creditbench.decode import cache_keyword, decode, left_pad, logits_processors
from creditbench.kv_cache import PreallocatedCache
from creditbench.ledger import Ledger
from creditbench.model import build_char_tokenizer
from creditbench.sampling import Sampler
from creditbench.thoughts import ThoughtTracker

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ALPHABET = "0123456789+-*=\nA:?#!"
PROMPTS = ["7+5*3-4\n", "1+2\n", "12*3-4+5*6-7\n", "9-8*7\n"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def model(tok):
    return random_tiny_model(tok)


def sampler(model, tok, **cfg) -> Sampler:
    return Sampler(
        model, tok, SamplingConfig(**{"max_new_tokens": 24, "batch_size": 8, **cfg}), Ledger()
    )


def hf_generate(model, tok, s: Sampler, contexts, *, temperature, top_p=1.0, budget=24):
    """What the sampler ran before its own loop: ``generate`` on the left-padded batch
    with every knob explicit, cut at each row's first stop id."""
    ids, mask = left_pad(contexts, tok.pad_token_id)
    width = ids.size(1)
    greedy = temperature == 0
    cfg = GenerationConfig(
        max_new_tokens=budget,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
        min_p=None,
        repetition_penalty=1.0,
        eos_token_id=[tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
        suppress_tokens=s._never_sampled() or None,
    )
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    rows = []
    for row in out[:, width:].tolist():
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        rows.append(row[:cut])
    return rows


def test_greedy_tokens_equal_generate_across_a_padded_batch(model, tok):
    s = sampler(model, tok)
    contexts = [s.encode_prompt(p) for p in PROMPTS]
    budgets = [3, 24, 6, 12]  # rows end at different steps and leave the batch
    ours = s.generate(contexts, purpose="t", temperature=0, max_new_tokens=budgets)
    theirs = hf_generate(model, tok, s, contexts, temperature=0)
    assert [g.ids for g in ours] == [row[:b] for row, b in zip(theirs, budgets, strict=True)]
    assert [len(g.ids) for g in ours] == budgets


class _Old(torch.nn.Module):  # a forward from before transformers' rename
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):
        return input_ids


class _New(torch.nn.Module):  # and after it
    def forward(self, input_ids=None, cache=None, use_cache=None):
        return input_ids


class _Wrapper(torch.nn.Module):  # DDP, FSDP and DeepSpeed keep the model as .module
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_the_cache_is_passed_under_the_name_the_model_s_own_forward_takes(model):
    import peft

    assert cache_keyword(_Old()) == "past_key_values"
    assert cache_keyword(_New()) == "cache"
    assert cache_keyword(_Wrapper(_Old())) == "past_key_values"
    assert cache_keyword(_Wrapper(_New())) == "cache"
    # the installed transformers: a parameter of the Llama forward itself, also under
    # PEFT (whose forward takes **kwargs) and a process wrapper around it
    named = inspect.signature(type(model).forward).parameters
    lora = peft.get_peft_model(
        random_tiny_model(build_char_tokenizer(ALPHABET)),
        peft.LoraConfig(r=2, target_modules=["q_proj"]),
    )
    for wrapped in (model, lora, _Wrapper(lora)):
        assert cache_keyword(wrapped) in named


def test_decoding_passes_no_deprecated_cache_keyword(model, tok):
    """A cache given under a removed keyword would be dropped into ``**kwargs`` and every
    step would see one token; no deprecation warning is the check that it is not."""
    s = sampler(model, tok)
    contexts = [s.encode_prompt(p) for p in PROMPTS[:2]] * 2  # repeated: a shared prefill
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        outs = s.generate(contexts, purpose="t", temperature=0, max_new_tokens=[8] * 4)
    assert [len(g.ids) for g in outs] == [8] * 4
    assert outs[0].ids == outs[2].ids


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5)])
def test_one_row_samples_the_tokens_generate_samples_for_the_same_seed(
    model, tok, temperature, top_p
):
    """One row and no compaction: the loop draws the same random numbers as
    ``GenerationMixin._sample``, so the tokens are equal; this pins the processors
    (suppression, temperature, top-p) and their order to generate's."""
    s = sampler(model, tok)
    for seed, prompt in enumerate(PROMPTS):
        ctx = [s.encode_prompt(prompt)]
        torch.manual_seed(seed)
        want = hf_generate(model, tok, s, ctx, temperature=temperature, top_p=top_p)
        torch.manual_seed(seed)
        got = s.generate(ctx, purpose="t", temperature=temperature, top_p=top_p)
        assert got[0].ids == want[0]


def test_processors_are_those_generate_builds(model, tok):
    s = sampler(model, tok)
    cfg = GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.9, top_k=0, suppress_tokens=[0, 1]
    )
    theirs = model._get_logits_processor(
        generation_config=cfg,
        input_ids_seq_length=4,
        encoder_input_ids=None,
        prefix_allowed_tokens_fn=None,
        logits_processor=[],
    )
    ours = logits_processors(0.7, 0.9, [0, 1])
    assert [type(p).__name__ for p in ours] == [type(p).__name__ for p in theirs]
    assert logits_processors(0, 0.9, [0, 1]).__len__() == 1  # greedy: suppression only
    assert len(logits_processors(1.0, 1.0, None)) == 0
    del s


def _forward_rows(model):
    rows: list[int] = []
    handle = model.model.register_forward_pre_hook(
        lambda mod, args, kw: rows.append(kw["input_ids"].size(0)), with_kwargs=True
    )
    return rows, handle


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_finished_rows_leave_the_batch_and_change_nothing(model, tok, fraction):
    """Rows that end early leave the forward batch (fewer rows per step than in a
    never-compacting loop), and greedy tokens and log-probs are unchanged."""
    s = sampler(model, tok)
    contexts = [s.encode_prompt(p) for p in PROMPTS]
    budgets = [3, 24, 6, 12]  # rows end at different steps

    def run(compact):
        tracker = ThoughtTracker(
            budgets, lambda r, a, b: "", stop_ids={tok.eos_token_id}, eos_id=tok.eos_token_id
        )
        ids, mask = left_pad(contexts, tok.pad_token_id)
        width = ids.size(1)
        out = torch.full((4, 24), tok.pad_token_id)
        rows, handle = _forward_rows(model)
        try:
            lps = decode(
                model,
                ids,
                mask,
                PreallocatedCache(model.config, width + 24),
                tracker,
                [0, 1, 2, 3],
                out,
                processors=logits_processors(0, 1.0, None),
                greedy=True,
                want_logprobs=True,
                compact_fraction=compact,
            )
        finally:
            handle.remove()
        gens = [out[i, : tracker.length[i]].tolist() for i in range(4)]
        return gens, [lps[i, : tracker.length[i]] for i in range(4)], rows, tracker.length

    never = run(2.0)  # a fraction above 1 never drops a row
    dropped = run(fraction)
    assert dropped[0] == never[0]
    for a, b in zip(dropped[1], never[1], strict=True):
        torch.testing.assert_close(a, b)
    assert dropped[3][0] == 3 and max(dropped[3]) > 6
    assert set(never[2]) == {4}
    assert sum(dropped[2]) < sum(never[2])
    if fraction == 0.0:  # every finish drops its row: the batch shrinks one row at a time
        assert dropped[2][1:4] == [4, 4, 3] and min(dropped[2]) == 1


def _synced_worker(rank: int, port: int, budgets: list[list[int]], out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    tok = build_char_tokenizer(ALPHABET)
    model = random_tiny_model(tok)
    s = Sampler(model, tok, SamplingConfig(max_new_tokens=24, batch_size=8), Ledger())
    contexts = [s.encode_prompt(p) for p in PROMPTS[: len(budgets[rank])]]
    ids, mask = left_pad(contexts, tok.pad_token_id)
    width = ids.size(1)
    tracker = ThoughtTracker(budgets[rank], lambda r, a, b: "")  # budgets only: no EOS
    out = torch.full((len(contexts), 24), tok.pad_token_id)
    rows, handle = _forward_rows(model)
    decode(
        model,
        ids,
        mask,
        PreallocatedCache(model.config, width + 24),
        tracker,
        list(range(len(contexts))),
        out,
        processors=logits_processors(0, 1.0, None),
        greedy=True,
        synced=True,
    )
    handle.remove()
    torch.save({"forwards": len(rows), "lengths": tracker.length}, f"{out_file}.{rank}")
    torch.distributed.destroy_process_group()


def test_sharded_processes_forward_equally_often_whatever_their_rows(tmp_path):
    """Under FSDP or ZeRO-3 each forward is a collective: a process whose rows finish
    first keeps forwarding a placeholder row until the other's have finished, so both
    make the same number of forwards (here 10, the first with the prefill, where process 0 alone
    would stop after 4)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    budgets = [[2, 4], [10, 3, 7]]
    mp.spawn(_synced_worker, args=(port, budgets, str(tmp_path / "r")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r.{k}") for k in (0, 1))
    assert r0["lengths"] == [2, 4] and r1["lengths"] == [10, 3, 7]
    assert r0["forwards"] == r1["forwards"] == 10
