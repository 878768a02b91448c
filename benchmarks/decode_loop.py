"""Seconds per sampled batch: transformers' ``generate`` against the HF sampler's own loop
(``creditbench.decode``), which drops finished rows from the batch, at several
``COMPACT_FRACTION`` settings.

Both decode the same left-padded contexts (the chains testbed's prompts, each repeated
``--group`` times) with the same model, budget and sampling settings (temperature 1, top-p
1, EOS the only stop), so they do the same useful work; ``generate`` also decodes every
finished row until the batch's longest ends. The table gives the best of ``--repeats``
seconds per batch, the generated tokens, and the row-steps each forward computed (the
loop's batch shrinks). One thread; the model is a warm-started base (``--base``; default
``results/default/base``, built by ``snakemake --cores all results/default/base/config.json``).

    python benchmarks/decode_loop.py --prompts 8 --group 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402

from creditbench import decode as decode_module  # noqa: E402
from creditbench.config import SamplingConfig  # noqa: E402
from creditbench.ledger import Ledger  # noqa: E402
from creditbench.sampling import Sampler  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", default="results/default/base")
    p.add_argument("--data", default="results/default/data/train.jsonl")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.base).eval()
    tok = AutoTokenizer.from_pretrained(args.base)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=4096)
    sampler = Sampler(model, tok, cfg, Ledger())
    problems = [json.loads(x) for x in Path(args.data).read_text().splitlines()][: args.prompts]
    contexts = [sampler.encode_prompt(pr["prompt"]) for pr in problems]
    rows = [c for c in contexts for _ in range(args.group)]
    ids, mask = decode_module.left_pad(rows, tok.pad_token_id)
    width = ids.size(1)

    forward_rows: list[int] = []
    model.model.register_forward_pre_hook(
        lambda mod, a, kw: forward_rows.append(kw["input_ids"].size(0)), with_kwargs=True
    )

    def with_generate():
        gen = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            eos_token_id=[tok.eos_token_id],
            pad_token_id=tok.pad_token_id,
        )
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        new = out[:, width:].tolist()
        return sum(r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else len(r) for r in new)

    def with_loop(fraction: float):
        def run():
            decode_module.COMPACT_FRACTION = fraction
            gens = sampler.generate(rows, purpose="bench", thoughts=None)
            return sum(len(g.ids) for g in gens)

        return run

    cases = [("generate", with_generate)] + [
        (f"loop, compact at {f:g}", with_loop(f)) for f in (0.0, 0.125, 0.25, 0.5, 2.0)
    ]
    print(f"{len(rows)} rows ({args.prompts} prompts x {args.group}), budget {args.max_new_tokens}")
    print(f"{'decoder':<24} {'s/batch':>8} {'tokens':>7} {'row-steps':>9} {'tokens/s':>9}")
    for name, fn in cases:
        best, tokens, steps = float("inf"), 0, 0
        for r in range(args.repeats):
            torch.manual_seed(r)
            forward_rows.clear()
            t = time.perf_counter()
            tokens = fn()
            best = min(best, time.perf_counter() - t)
            steps = sum(forward_rows[1:])  # decoding steps' rows (the prefill excluded)
        print(f"{name:<24} {best:8.3f} {tokens:7d} {steps:9d} {tokens / best:9.0f}")
    decode_module.COMPACT_FRACTION = 0.25


if __name__ == "__main__":
    main()
