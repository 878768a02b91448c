"""The warm start's supervised step: length-sorted micro-batches give the one-batch update."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import random_tiny_model

from creditbench.model import build_char_tokenizer
from creditbench.warmstart import _supervised_batch, supervised_step

ALPHABET = "0123456789+-*=\nA:?#!"


def _pairs(tok, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Prompts and targets of very different lengths, as the testbed's solving and
    localisation examples are."""
    rng = random.Random(seed)
    ids = [tok.convert_tokens_to_ids(c) for c in "0123456789+-*="]
    return [
        (
            [rng.choice(ids) for _ in range(rng.randint(3, 30))],
            [rng.choice(ids) for _ in range(rng.randint(1, 25))] + [tok.eos_token_id],
        )
        for _ in range(n)
    ]


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("micro_batches", [2, 4, 7, 64])
def test_micro_batches_give_the_one_batch_loss_and_gradient(micro_batches):
    tok = build_char_tokenizer(ALPHABET)
    model = random_tiny_model(tok)
    pairs = _pairs(tok, 13, seed=micro_batches)

    # the reference: one right-padded batch, transformers' mean over target tokens
    ids, attention, labels = _supervised_batch(pairs, tok.pad_token_id)
    model.zero_grad()
    ref = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    ref.backward()
    ref_grads = _grads(model)

    model.zero_grad()
    loss = supervised_step(model, pairs, tok.pad_token_id, micro_batches, "cpu")
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    for got, want in zip(_grads(model), ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_micro_batches_pad_less_and_hold_every_pair_once():
    """Sorted by length, the parts' padded positions are fewer than the batch's, and the
    parts together hold every pair's targets once (their label counts add up)."""
    tok = build_char_tokenizer(ALPHABET)
    model = random_tiny_model(tok)
    pairs = _pairs(tok, 16, seed=0)
    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["input_ids"].numel(), int((kwargs["labels"] != -100).sum())))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        supervised_step(model, pairs, tok.pad_token_id, 4, "cpu")
    finally:
        handle.remove()
    width = max(len(p) + len(t) for p, t in pairs)
    assert len(seen) == 4
    assert sum(n for n, _ in seen) < 16 * width
    assert sum(k for _, k in seen) == sum(len(t) for _, t in pairs)
