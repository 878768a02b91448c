"""Tokens per second of thought-level generation against a free run of the same lengths.

Thought-level generation (``creditbench.thoughts``) applies SRPO's per-row stop rules
inside the one batched decode. Its cost over a free run is the tracking of every row's
state at every token. To measure only that cost, both variants decode greedily from the
same contexts with a tiny untrained model, and the thought rules chosen never end a row
before the free run does (the delimiter only ends thoughts; no thought cap, no answer
marker): both produce the same tokens, which the script checks. A third variant applies
SRPO-like rules that do end rows (a per-thought cap, a thought cap, an answer marker),
for its tokens per second; and a fourth, ``per_thought_calls``, generates the same chains
as the official agent loop's structure would on this engine, one ``generate`` call per
thought for every row (what thought-level generation replaces).

    python benchmarks/thought_generation.py --rows 256 --max-new-tokens 64

Prints a table of median seconds, generated tokens and tokens/s per variant, and the line
``thought_level_over_free: X`` (free tokens/s over thought-level tokens/s; target <= 1.2).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import time

import torch

from creditbench.config import SamplingConfig, TinyModelConfig
from creditbench.ledger import Ledger
from creditbench.model import build_char_tokenizer, build_tiny_model
from creditbench.sampling import Sampler
from creditbench.thoughts import ThoughtRules

ALPHABET = "0123456789+-*=\nA:?#!"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=256, help="contexts decoded together")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def model_and_tokenizer(hidden: int, layers: int):
    tok = build_char_tokenizer(ALPHABET)
    cfg = TinyModelConfig(
        hidden_size=hidden, num_layers=layers, num_heads=4, intermediate_size=3 * hidden
    )
    model = build_tiny_model(cfg, tok).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights so that greedy outputs vary (as tests/test_sampling)
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        unused = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
        model.get_input_embeddings().weight[unused] = 0.0
    return model, tok


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def per_thought_calls(sampler: Sampler, contexts, rules: ThoughtRules, budget: int):
    """One ``generate`` per thought for every unfinished row (the agent loop's shape)."""
    free = ThoughtRules(delimiter=rules.delimiter, max_thought_tokens=rules.max_thought_tokens)
    rows = [list(c) for c in contexts]
    out = [[] for _ in contexts]
    thoughts = [0] * len(contexts)
    live = list(range(len(contexts)))
    while live:
        gens = sampler.generate(
            [rows[r] for r in live],
            purpose="x",
            temperature=0,
            thoughts=dataclasses.replace(free, max_thoughts=1),
            max_new_tokens=[budget - len(out[r]) for r in live],
        )
        still = []
        for r, g in zip(live, gens, strict=True):
            out[r] += g.ids
            rows[r] += g.ids
            thoughts[r] += 1
            ended = (
                not g.ids
                or g.stop in ("eos", "length")
                or (rules.answer_marker and rules.answer_marker in g.text)
                or (rules.max_thoughts and thoughts[r] >= rules.max_thoughts)
            )
            if not ended:
                still.append(r)
        live = still
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = model_and_tokenizer(args.hidden, args.layers)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.rows)
    sampler = Sampler(model, tok, cfg, Ledger())
    starts = [a + b for a in "0123456789" for b in "+-*=A:?#!"]
    contexts = [sampler.encode(starts[k % len(starts)] + str(k)) for k in range(args.rows)]

    def run(rules):
        return sampler.generate(contexts, purpose="x", temperature=0, thoughts=rules)

    t_free, free = timed(lambda: run(None), args.repeats)
    counts = collections.Counter(c for g in free for c in g.text)
    (delim, _), (marker, _) = counts.most_common(2)
    same = ThoughtRules(delimiter=delim)
    t_same, same_out = timed(lambda: run(same), args.repeats)
    if [g.ids for g in same_out] != [g.ids for g in free]:
        raise SystemExit("thought-level generation did not reproduce the free run")
    srpo = ThoughtRules(delimiter=delim, max_thought_tokens=8, max_thoughts=6, answer_marker=marker)
    t_srpo, srpo_out = timed(lambda: run(srpo), args.repeats)
    t_calls, calls_out = timed(
        lambda: per_thought_calls(sampler, contexts, srpo, args.max_new_tokens), args.repeats
    )
    if calls_out != [g.ids for g in srpo_out]:
        raise SystemExit("per-thought calls and the one decode sampled different chains")

    rows = [
        ("free run", t_free, sum(len(g.ids) for g in free)),
        ("thought-level, same tokens", t_same, sum(len(g.ids) for g in same_out)),
        ("thought-level, SRPO-like rules", t_srpo, sum(len(g.ids) for g in srpo_out)),
        ("one call per thought, same rules", t_calls, sum(len(ids) for ids in calls_out)),
    ]
    print(
        f"rows {args.rows}, max_new_tokens {args.max_new_tokens}, threads "
        f"{torch.get_num_threads()}, repeats {args.repeats} (median seconds)"
    )
    print("| variant | seconds | generated tokens | tokens/s |")
    print("|:--|--:|--:|--:|")
    for name, t, n in rows:
        print(f"| {name} | {t:.3f} | {n} | {n / t:,.0f} |")
    ratio = (rows[0][2] / t_free) / (rows[1][2] / t_same)
    print(f"thought_level_over_free: {ratio:.3f}")
    print(
        f"one_decode_over_per_thought_calls: {(rows[2][2] / t_srpo) / (rows[3][2] / t_calls):.2f}"
    )


if __name__ == "__main__":
    main()
