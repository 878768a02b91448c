"""Milliseconds per decoding forward of the testbed's model at several batch sizes: the
per-step floor that small sampler calls (SRPO's seed-search rounds, localisation) pay.

Each row: a prefill of ``--context`` tokens, then ``--tokens`` one-token forwards with
the engine's preallocated KV cache (``creditbench.kv_cache.PreallocatedCache``), under
the keyword the model's forward takes (``decode.cache_keyword``); the best of
``--repeats`` mean milliseconds per forward, one torch thread. The model is a
warm-started base (``--base``) or, without one, the default experiment's tiny model
untrained (a forward's cost does not depend on its weights).

    python benchmarks/forward_floor.py --base results/default/base
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from creditbench.config import load_experiment
from creditbench.decode import cache_keyword
from creditbench.kv_cache import PreallocatedCache
from creditbench.model import build_char_tokenizer, build_tiny_model
from creditbench.tasks import make_task


def model_of(args):
    if args.base and Path(args.base, "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(args.base)
    cfg = load_experiment(args.config)
    tok = build_char_tokenizer(make_task(cfg.task).alphabet)
    return build_tiny_model(cfg.model.tiny, tok)


@torch.inference_mode()
def ms_per_forward(model, batch: int, context: int, tokens: int) -> float:
    ids = torch.randint(5, model.config.vocab_size, (batch, context))
    attention = torch.ones_like(ids)
    kw = cache_keyword(model)
    cache = PreallocatedCache(model.config, capacity=context + tokens)
    model(input_ids=ids, attention_mask=attention, use_cache=True, logits_to_keep=1, **{kw: cache})
    nxt, pos = ids[:, -1:], torch.full((batch, 1), context - 1)
    t0 = time.perf_counter()
    for _ in range(tokens):
        attention = torch.cat([attention, attention.new_ones((batch, 1))], 1)
        pos = pos + 1
        model(
            input_ids=nxt,
            attention_mask=attention,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{kw: cache},
        )
    return (time.perf_counter() - t0) / tokens * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default="experiments/default.yaml")
    p.add_argument("--base", default="results/default/base")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--context", type=int, default=40)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = model_of(args).eval()
    print(f"{'batch':>6} {'ms/forward':>11} {'ms/row':>8}")
    for batch in args.batches:
        ms_per_forward(model, batch, args.context, 4)  # warm-up
        ms = min(
            ms_per_forward(model, batch, args.context, args.tokens) for _ in range(args.repeats)
        )
        print(f"{batch:>6} {ms:>11.2f} {ms / batch:>8.3f}")


if __name__ == "__main__":
    main()
