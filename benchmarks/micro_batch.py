"""Seconds per policy update of a sampled batch by micro-batch size, each micro-batch
forwarded at its batch's full width or at its own (``Batch.trimmed``).

A training step's update forwards and back-propagates every completion of the step;
a batch is padded to its longest prompt and its longest completion, and on the chains
testbed a group's completions differ in length by up to a factor of two. Micro-batches
(``train.micro_batch_size``) group rows of similar completion length
(``Batch.micro_batches``); trimmed, each pads only to its own longest row, at the cost of
one more forward and backward per micro-batch. This script samples ``--prompts x
--group`` completions from the warm-started base (the engine's sampler, the default's
sampling settings), gives each row a random advantage, and times the update's loop as
``Trainer.policy_update`` runs it (select, trim, ``completion_logprobs``, ``batch_loss``,
backward; gradients accumulated, no optimiser step), one torch thread, the best of
``--repeats``. It prints, per setting, the padded token slots forwarded (against the real
tokens), the milliseconds per update and per scoring pass (the no-grad forwards of the
behaviour or reference log-probs, ``Trainer._score``), and checks that every setting's gradient equals
the one-micro-batch gradient (the same loss).

    python benchmarks/micro_batch.py --base results/default/base
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from creditbench.config import LossConfig, SamplingConfig  # noqa: E402
from creditbench.ledger import Ledger  # noqa: E402
from creditbench.loss import batch_loss, completion_logprobs  # noqa: E402
from creditbench.rollouts import Batch  # noqa: E402
from creditbench.sampling import Sampler  # noqa: E402


def sampled_batch(model, tok, args) -> Batch:
    sampler = Sampler(model, tok, SamplingConfig(max_new_tokens=args.max_new_tokens), Ledger())
    lines = Path(args.data).read_text().splitlines()[args.offset : args.offset + args.prompts]
    prompts = [sampler.encode_prompt(json.loads(x)["prompt"]) for x in lines]
    rows = [p for p in prompts for _ in range(args.group)]
    torch.manual_seed(args.seed)
    gens = sampler.generate(rows, purpose="bench", thoughts=None)
    b, p = len(rows), max(map(len, rows))
    c = max(len(g.ids) for g in gens)
    pad = tok.pad_token_id
    batch = Batch(
        prompt_ids=torch.full((b, p), pad),
        prompt_mask=torch.zeros((b, p), dtype=torch.long),
        completion_ids=torch.full((b, c), pad),
        completion_mask=torch.zeros((b, c), dtype=torch.long),
        loss_mask=torch.zeros((b, c)),
        advantages=torch.zeros((b, c)),
    )
    signs = torch.randn(b, generator=torch.Generator().manual_seed(args.seed))
    for i, (ctx, g) in enumerate(zip(rows, gens, strict=True)):
        batch.prompt_ids[i, p - len(ctx) :] = torch.tensor(ctx)
        batch.prompt_mask[i, p - len(ctx) :] = 1
        batch.completion_ids[i, : len(g.ids)] = torch.tensor(g.ids)
        batch.completion_mask[i, : len(g.ids)] = 1
        batch.loss_mask[i, : len(g.ids)] = 1.0
        batch.advantages[i, : len(g.ids)] = signs[i]
    return batch


def update(model, batch: Batch, size: int | None, trim: bool, cfg: LossConfig) -> int:
    """One update's forwards and backwards; returns the token slots forwarded."""
    mask = batch.loss_mask * batch.completion_mask
    n_items, n_seq = float(mask.sum()), len(batch)
    slots = 0
    for idx in batch.micro_batches(size):
        part = batch.select(idx)
        if trim:
            part = part.trimmed()
        lp = completion_logprobs(
            model, part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask
        )
        loss, _ = batch_loss(lp, part, cfg, n_items, n_seq)
        loss.backward()
        slots += part.prompt_ids.numel() + part.completion_ids.numel()
    return slots


@torch.no_grad()
def score(model, batch: Batch, size: int | None, trim: bool) -> None:
    """A scoring pass (behaviour or reference log-probs, ``Trainer._score``): no grad."""
    for idx in batch.micro_batches(size):
        part = batch.select(idx)
        if trim:
            part = part.trimmed()
        completion_logprobs(
            model, part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", default="results/default/base")
    p.add_argument("--data", default="results/default/data/train.jsonl")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--offset", type=int, default=0, help="first prompt of the data file")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 32, 16, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.base)
    tok = AutoTokenizer.from_pretrained(args.base)
    model.eval()
    batch = sampled_batch(model, tok, args)
    model.train()
    cfg = LossConfig()
    real = int(batch.prompt_mask.sum() + batch.completion_mask.sum())
    print(
        f"rows {len(batch)}, real tokens {real}, width {batch.prompt_ids.size(1)} + "
        f"{batch.completion_ids.size(1)}"
    )

    def grad() -> torch.Tensor:
        return torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])

    model.zero_grad(set_to_none=True)
    update(model, batch, None, False, cfg)
    reference = grad()
    print(
        f"{'micro':>6} {'trim':>5} {'slots':>7} {'padding':>8} {'ms/update':>10} {'ms/score':>9} {'max|dgrad|':>11}"
    )
    for size in args.sizes:
        for trim in (False, True):
            times = []
            for _ in range(args.repeats):
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                slots = update(model, batch, size, trim, cfg)
                times.append(time.perf_counter() - t0)
            diff = float((grad() - reference).abs().max())
            scoring = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                score(model, batch, size, trim)
                scoring.append(time.perf_counter() - t0)
            print(
                f"{size:>6} {str(trim):>5} {slots:>7} {1 - real / slots:>8.1%} "
                f"{min(times) * 1000:>10.1f} {min(scoring) * 1000:>9.1f} {diff:>11.2e}"
            )


if __name__ == "__main__":
    main()
