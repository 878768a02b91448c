"""Supervised warm start: the solution format to partial accuracy, then self-localisation.

Phase 1 (``steps``) teaches the solution format on reference solutions, to a
partial accuracy so that RL groups have variance: ``demo_error_rate`` of the
demonstrations carry one slip, and ``demo_repair_rate`` of those repair it in the next
thought (the task's ``repaired``), so the policy learns to notice some of its slips. Phase 2 (``skill_steps``)
teaches the prompted skills on corrupted traces: self-localisation (SRPO) and
compare-and-correct revision (IBPO), with a ``replay_fraction`` of solving
examples so the first skill is kept; it gets its own budget because mixing
localisation into the first phase leaves it at chance.
Both phases are bounded by step counts, never by time.
"""

from __future__ import annotations

import itertools
import logging
import random
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from creditbench.config import ConfigError, ExperimentConfig, SamplingConfig
from creditbench.evaluate import evaluate_accuracy, evaluate_localisation
from creditbench.model import (
    build_char_tokenizer,
    build_tiny_model,
    default_device,
    load_policy,
    load_tokenizer,
    save_policy,
)
from creditbench.sampling import Sampler
from creditbench.schedules import get_scheduler
from creditbench.tasks import make_task
from creditbench.utils import atomic_write_json, seed_everything

log = logging.getLogger(__name__)


def _supervised_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded inputs with labels only on the target tokens."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        seq = torch.tensor(p + t)
        ids[i, : len(seq)] = seq
        attention[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(t)
    return ids, attention, labels


def supervised_step(
    model, pairs: list[tuple[list[int], list[int]]], pad_id: int, micro_batches: int, device
) -> float:
    """Accumulate the gradient of one batch's mean target-token loss; return the loss.

    The pairs are sorted by length and cut into ``micro_batches`` contiguous parts, each
    right-padded to its own longest pair: every part's summed token loss is divided by
    the whole batch's target-token count (``num_items_in_batch``, the normaliser
    transformers' ``Trainer`` passes under gradient accumulation), so the accumulated
    gradient and the returned loss are those of the one padded batch.
    """
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    n_items = sum(len(t) for _, t in pairs)
    parts = min(micro_batches, len(pairs))
    bounds = [round(j * len(pairs) / parts) for j in range(parts + 1)]
    total = 0.0
    for lo, hi in itertools.pairwise(bounds):
        ids, attention, labels = _supervised_batch([pairs[i] for i in order[lo:hi]], pad_id)
        loss = model(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            labels=labels.to(device),
            num_items_in_batch=n_items,
        ).loss
        loss.backward()
        total += loss.item()
    return total


def example_makers(task, train, ws, tokenizer, encode_prompt, rng: random.Random) -> dict:
    """The warm start's example makers, each drawing one ``(prompt ids, target ids + EOS)``
    pair from ``train`` (the task's training problems) with ``rng``: ``solve`` (a demonstration, with
    ``demo_error_rate`` slips, ``demo_repair_rate`` of them repaired), ``localisation``
    (name the first wrong thought of a corrupted trace) and ``revision`` (compare and
    correct). ``ws``: the ``WarmStartConfig``; ``encode_prompt``: the sampler's."""
    eos = [tokenizer.eos_token_id]

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def solving_pair():
        p = rng.choice(train)
        if ws.demo_error_rate and rng.random() < ws.demo_error_rate:
            if ws.demo_repair_rate and rng.random() < ws.demo_repair_rate:
                target = task.repaired(p, rng)[0]  # a slip that the next thought repairs
            else:
                target = task.corrupt(p, rng)[0]  # an imperfect demonstration
        else:
            target = task.solution(p)
        return encode_prompt(p.prompt), encode(target) + eos

    def localisation_pair():
        p = rng.choice(train)
        text, first_wrong = task.corrupt(p, rng)
        return encode_prompt(task.localisation_prompt(p, text)), encode(
            task.localisation_target(first_wrong, text, p)
        ) + eos

    def revision_pair():
        # the reference is a correct sibling half of the time, another failure otherwise;
        # the target is always the local repair, i.e. the correct solution
        p = rng.choice(train)
        failed, _ = task.corrupt(p, rng)
        reference = task.solution(p) if rng.random() < 0.5 else task.corrupt(p, rng)[0]
        return encode_prompt(task.revision_prompt(p, failed, reference)), encode(
            task.solution(p)
        ) + eos

    return {"solve": solving_pair, "localisation": localisation_pair, "revision": revision_pair}


def warm_start(cfg: ExperimentConfig, data_dir: str | Path, out_dir: str | Path) -> dict:
    """Train (or load) the base policy shared by every run; save it and its record."""
    ws = cfg.warm_start
    out_dir = Path(out_dir)
    task = make_task(cfg.task, data_dir)
    testbed = getattr(task, "corrupt", None) is not None  # reference solutions, planted errors
    if not testbed and (ws.steps or ws.skill_steps):
        raise ConfigError(
            f"warm_start.steps ({ws.steps}) and skill_steps ({ws.skill_steps}) train on the "
            f"testbed's reference solutions; task {cfg.task.name!r} has none: set both to 0 "
            "(the base is then the model itself)"
        )
    if ws.steps == 0 and cfg.model.path is None:
        raise ConfigError("warm_start.steps is 0 but model.path is null: nothing to start from")
    train = task.load("train")
    test = task.load("test")[: ws.eval_problems]
    seed_everything(ws.seed)
    device = default_device()
    if cfg.model.path is None:
        tokenizer = build_char_tokenizer(task.alphabet)
        model = build_tiny_model(cfg.model.tiny, tokenizer).to(device)
    else:
        tokenizer = load_tokenizer(cfg.model.path)
        model = load_policy(cfg.model.path, cfg.model, device, trainable=True)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("warm start: %d parameters on %s", n_params, device)

    # prompts encoded exactly as the sampler will encode them in RL and evaluation
    encode_prompt = Sampler.for_task(model, tokenizer, SamplingConfig(), task).encode_prompt

    rng = random.Random(f"warmstart-{ws.seed}")
    makers = example_makers(task, train, ws, tokenizer, encode_prompt, rng)
    solving_pair = makers["solve"]

    phases = [
        ("solve", ws.steps, []),
        ("skills", ws.skill_steps, [makers[k] for k in ws.skills]),
    ]
    history = []
    model.train()
    for phase, steps, skills in phases:
        if steps == 0:
            continue
        skill_share = 1.0 - ws.replay_fraction if skills else 0.0
        opt = torch.optim.AdamW(model.parameters(), lr=ws.lr, weight_decay=ws.weight_decay)
        sched = get_scheduler(
            "cosine",
            opt,
            num_warmup_steps=min(ws.warmup_steps, steps // 2),
            num_training_steps=steps,
        )
        bar = tqdm(range(steps), desc=f"warm start ({phase})", mininterval=2.0)
        for step in bar:
            pairs = [
                rng.choice(skills)() if rng.random() < skill_share else solving_pair()
                for _ in range(ws.batch_size)
            ]
            opt.zero_grad(set_to_none=True)
            loss = supervised_step(model, pairs, tokenizer.pad_token_id, ws.micro_batches, device)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss:.3f}")
                history.append({"phase": phase, "step": step, "loss": loss})
    model.eval()
    sampling = cfg.run(next(iter(cfg.runs))).sampling
    record = {
        "parameters": n_params,
        "steps": ws.steps,
        "skill_steps": ws.skill_steps,
        "skills": ws.skills,
        "greedy": evaluate_accuracy(model, tokenizer, task, test, sampling, temperature=0.0),
        "sampled": evaluate_accuracy(
            model, tokenizer, task, test, sampling, temperature=sampling.temperature, samples=8
        ),
        "localisation": (
            evaluate_localisation(model, tokenizer, task, test[:200], sampling) if testbed else None
        ),
        "loss_history": history,
    }
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(model, tokenizer, tmp)
    atomic_write_json(tmp / "warmstart.json", record)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return record
