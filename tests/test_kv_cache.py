"""The sampler's preallocated KV cache against transformers' DynamicCache: the same keys,
values, logits and tokens, whatever the padding, sharing and capacity."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tiny_model
from transformers import DynamicCache, GenerationConfig

from creditbench.decode import cache_keyword
from creditbench.kv_cache import PreallocatedCache, PreallocatedLayer
from creditbench.model import build_char_tokenizer

ALPHABET = "0123456789+-*=\nA:?#!"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def model(tok):
    return random_tiny_model(tok)


def _batch(tok, texts):
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tok.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):  # left padding, as the sampler pads
        input_ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    return input_ids, mask


def test_a_layer_returns_what_concatenation_returns_and_grows_past_its_capacity():
    layer, ref = PreallocatedLayer(capacity=3), []
    gen = torch.Generator().manual_seed(0)
    for n in (2, 1, 1, 3):  # 7 positions in all: two reallocations past capacity 3
        k, v = torch.randn(2, 4, n, 5, generator=gen), torch.randn(2, 4, n, 5, generator=gen)
        ref.append((k, v))
        keys, values = layer.update(k, v)
        assert torch.equal(keys, torch.cat([r[0] for r in ref], dim=2))
        assert torch.equal(values, torch.cat([r[1] for r in ref], dim=2))
    assert layer.get_seq_length() == 7
    layer.crop(-2)
    assert layer.get_seq_length() == 5
    assert torch.equal(layer.keys, torch.cat([r[0] for r in ref], dim=2)[:, :, :5])
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert layer.keys.shape == (3, 4, 5, 5)
    assert torch.equal(layer.keys[2], torch.cat([r[0] for r in ref], dim=2)[0, :, :5])


def test_a_capacity_below_one_is_refused_by_name():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        PreallocatedLayer(0)


def test_logits_of_a_padded_prefill_and_decode_equal_dynamic_cache(model, tok):
    input_ids, mask = _batch(tok, ["7+5*3-4\n", "1+2\n", "12*3-4+5*6-7\n"])
    kw = cache_keyword(model)
    out = {}
    for name, cache in (
        ("dynamic", DynamicCache(config=model.config)),
        ("prealloc", PreallocatedCache(model.config, capacity=input_ids.size(1) + 4)),
    ):
        ids, m, logits = input_ids, mask, []
        with torch.no_grad():
            step = model(input_ids=ids, attention_mask=m, use_cache=True, **{kw: cache})
            for _ in range(4):
                logits.append(step.logits[:, -1])
                nxt = step.logits[:, -1].argmax(-1, keepdim=True)
                m = torch.cat([m, torch.ones_like(nxt)], dim=1)
                step = model(input_ids=nxt, attention_mask=m, use_cache=True, **{kw: cache})
        out[name] = torch.stack(logits)
    assert all(type(layer) is PreallocatedLayer for layer in cache.layers)
    torch.testing.assert_close(out["prealloc"], out["dynamic"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("sample", [False, True])
def test_generate_gives_the_same_tokens_with_either_cache(model, tok, sample):
    input_ids, mask = _batch(tok, ["7+5*3-4\n", "1+2\n", "9-8*7\n", "1+2\n"])
    cfg = GenerationConfig(
        max_new_tokens=12,
        do_sample=sample,
        temperature=1.0 if sample else None,
        top_p=None,
        top_k=0 if sample else None,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    seqs = {}
    for name, cache in (
        ("dynamic", DynamicCache(config=model.config)),
        # capacity below the need: the layer reallocates mid-generation
        ("prealloc", PreallocatedCache(model.config, capacity=input_ids.size(1) + 3)),
    ):
        torch.manual_seed(0)
        with torch.no_grad():
            seqs[name] = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=cfg,
                **{cache_keyword(model): cache},
            )
        assert cache.get_seq_length() > 0  # generate decoded into the cache it was given
    assert torch.equal(seqs["prealloc"], seqs["dynamic"])
    assert seqs["dynamic"].size(1) > input_ids.size(1) + 3  # it did outgrow the capacity
