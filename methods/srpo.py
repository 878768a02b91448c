"""SRPO and RRPO: credit assignment with resets (Samanta et al., "Credit Assignment with
Resets in Language Model Reasoning"; code: Ankur-Samanta/SRPO, built on verl).

A failed chain is reset to a state before its (presumed) first wrong thought, and several
suffixes are resampled from there; their outcomes differ only through the suffix, so the
group-relative advantage credits the suffix tokens. Per prompt, a buffer of
N = ``train.group_size`` slots is filled by the split ``SxC``: S seeds x C suffixes, and
B = N - S*C base chains (N = 8: 1x4 -> B 4, 2x4 -> B 0, 1x8 -> B 0).

1. Seed search. Draw fresh chains until there are B base chains and S seeds, at most
   ``max_attempts`` draws per prompt (code: 12). In draw order, a chain that failed
   (reward < 1) and has at least one thought becomes a seed while fewer than S are
   found (SRPO code: a chain with no thoughts is never a seed); any other chain fills the
   base group while it has fewer than B; the rest are surplus and dropped. Seeds are used
   only to pick reset states and are not trained on.
2. Reset thought h in {1..n} of each seed (n = its thoughts), by ``reset``:
   ``self`` (SRPO): the policy localises the first wrong thought of its own failed chain
   (``task.localisation_prompt`` through the chat template, ``localisation_chat_template``;
   temperature 0.3, or 0 for 1x8; up to ``localisation_max_new_tokens`` = 4096 new tokens,
   bounded by the model's context; no stop strings); h clamped to [1, n]; a parse failure
   gives h = 1 (the task's ``parse_localisation`` follows the code's parser).
   ``random`` (RRPO): h ~ Uniform{1..n}, drawn from the step's own RNG (``ctx.step_rng``;
   the code draws from Python's global ``random``).
   ``oracle`` [choice, beyond the paper]: h = ``task.first_error`` (the step oracle, the
   paper's CPI-CARO analogue), clamped to [1, n]; an oracle that finds no wrong thought
   in a failed chain (e.g. one cut by the length limit) gives h = 1, as a parse failure.
3. Reset state x* = (x0, y_1 .. y_{h-1}) in token ids (h = 1: resample from the prompt);
   C suffixes are sampled from x*, thought by thought as every chain is. The prefix is
   part of each suffix chain's completion, and the suffix gets only what the prefix
   leaves (``thought_agent_loop.py::_generate_thoughts_core`` continuing a prefix): at
   most ``max_thoughts - (h - 1)`` thoughts, and prefix + suffix within the response
   length (``sampling.max_new_tokens``).
4. Groups: the B base chains form one group, each seed's C suffixes another; advantages
   are ``norm`` within each group (SRPO code: population std, no eps, and the whole group
   gets 0 when its std < 1e-8).
5. Mask: base chains train on every completion token, suffix chains only on the suffix
   (``mask_prefix``; False is the paper's no-mask ablation).
6. Loss (the engine's, ``DEFAULTS``): unclipped, per-sequence token mean then buffer
   mean, i.e. L = -(1/|buffer|) sum_i A_i mean_{t in m_i} log pi(y_t), no KL, and this
   log-prob form in every minibatch (``unclipped_objective: logprob``; ``srpo_loss.py``),
   never a ratio to the sampling policy, however many minibatches a batch has. The
   clipped variant is ``loss: {clip: true, aggregation: dapo}`` (PPO clip 0.2, token mean;
   verl's dual clip is not in the engine).
7. Fallback: a prompt with fewer than S seeds after ``max_attempts`` draws becomes one
   GRPO group of N chains, built as the code builds it (``fallback: code``):
   with a base group (1x4, ``srpo_agent_loop.py``) the B base chains found (the first
   B draws) plus N - B new draws; without one and several seeds (2x4,
   ``srpo_2x4_agent_loop.py``) the non-seed draws in draw order, then the failed seeds
   found, topped up with new draws, the first N; with one seed (1x8,
   ``srpo_1x8_agent_loop.py``) the first N draws, topped up. ``fallback: draw_order``
   takes the first N draws for every split. Fallback chains train on every token.

Batching: all prompts search together in rounds. In each round a prompt that is not done
draws as many chains as it has empty slots, (B - base) + (S - seeds), capped by the
attempts it has left; one draw is one chain and one attempt. A chain fills at most one
slot, so a round never draws a chain that the paper's one-at-a-time loop would not have
drawn: the outcome equals the sequential search, chain for chain. The first round draws
B + S chains per prompt. Localisation calls and suffix rollouts are batched across
prompts too.

Compute ledger: base chains and fallback chains are training rollouts (``rollout``); the
seeds and the surplus draws (drawn only because the search went on) are ``seed``;
localisation calls ``localisation``; suffixes ``suffix`` (sampled tokens only, the given
prefix is not generated). Search draws are sampled under ``seed`` and the chains that
turn out to be base or fallback chains are moved to ``rollout`` afterwards.

Per-step diagnostics (``Method.step_metrics()``, the last ``collect``'s, where the task has a
step oracle; see ``reset_diagnostics``): how often the reset thought is the true first wrong
thought (``srpo/localisation_accuracy``: the policy's own localisation for ``self``, chance
for ``random``, 1 for ``oracle``), and the correction rate, the fraction of suffixes that
succeed, from clean prefixes (h <= the first wrong thought: the reset removed the error) vs
prefixes that already contain it (``srpo/correction_clean`` / ``srpo/correction_erroneous``;
the paper reports 28.7% vs 16.3%), each with its count so that steps, seeds and processes
can be pooled. They never change what is sampled or trained.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from creditbench.rollouts import Group, Trajectory, group_normalise

DEFAULTS = {
    "loss": {"clip": False, "unclipped_objective": "logprob", "aggregation": "grpo", "beta": 0.0}
}

# SRPO temperature for the localisation call; the paper's 1x8 split localises greedily.
LOCALISATION_TEMPERATURE = {"1x4": 0.3, "2x4": 0.3, "1x8": 0.0}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: Literal["1x4", "2x4", "1x8"] = "1x4"  # seeds x suffixes; base = N - S*C
    reset: Literal["self", "random", "oracle"] = "self"  # SRPO / RRPO / step oracle
    mask_prefix: bool = True  # False: the no-mask ablation (suffix chains train on all)
    max_attempts: int = Field(12, ge=1)  # fresh draws per prompt in the seed search
    fallback: Literal["code", "draw_order"] = "code"  # no-seed buffer (7., per split)
    localisation_temperature: float | None = Field(None, ge=0)  # None: per split, above
    # SRPO code: 4096 new tokens for the localisation call (bounded by the model's context)
    localisation_max_new_tokens: int = Field(4096, gt=0)
    # the code localises through the chat template whatever the chains use
    localisation_chat_template: bool = True
    # SRPO code: population std, no eps, zero advantages when the group's std < 1e-8.
    std: Literal["unbiased", "population", "none"] = "population"
    eps: float = Field(0.0, ge=0)
    zero_std_threshold: float | None = Field(1e-8, ge=0)


# ----------------------------------------------------------------- the split
def parse_split(split: str, group_size: int) -> tuple[int, int, int]:
    """``"SxC"`` and the buffer size N -> ``(B, S, C)`` with B = N - S*C base chains.

    The paper's splits are for N = 8. Other N keep S and C and give the remaining slots
    to the base group, which must then be empty or hold at least 2 chains (a group of
    one has no signal).
    """
    m = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", split)
    if not m:
        raise ValueError(f"split {split!r} is not of the form 'SxC' (e.g. '1x4')")
    seeds, suffixes = int(m.group(1)), int(m.group(2))
    base = group_size - seeds * suffixes
    if base < 0 or base == 1:
        raise ValueError(
            f"split {split!r} needs {seeds * suffixes} suffix slots and leaves {base} base "
            f"slots in a buffer of train.group_size = {group_size}; the base group must be "
            f"empty or hold >= 2 chains (the paper's splits 1x4, 2x4, 1x8 are for N = 8)"
        )
    return base, seeds, suffixes


# ------------------------------------------------------------ 1. seed search
def is_seed_candidate(chain: Trajectory) -> bool:
    """A failed chain with at least one thought to reset into (SRPO code)."""
    return chain.reward < 1.0 and chain.n_thoughts > 0


@dataclass
class SeedSearch:
    """One prompt's search: every draw in order, and the role each was given."""

    draws: list[Trajectory] = field(default_factory=list)
    base: list[Trajectory] = field(default_factory=list)
    seeds: list[Trajectory] = field(default_factory=list)
    surplus: list[Trajectory] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return len(self.draws)


def seed_search(
    draw: Callable[[list[int]], list[list[Trajectory]]],
    n_prompts: int,
    n_base: int,
    n_seeds: int,
    max_attempts: int,
    is_seed: Callable[[Trajectory], bool] = is_seed_candidate,
    any_process: Callable[[bool], bool] = bool,
) -> list[SeedSearch]:
    """Draw until each prompt has ``n_base`` base chains and ``n_seeds`` seeds.

    ``draw(requests)`` returns ``requests[k]`` fresh chains for prompt k (one batched call
    per round). A prompt is found when it has all its seeds; the base group is then full.
    ``any_process``: whether a round is drawn is asked of every process
    (``MethodContext.any_process``), so processes in step draw equally many rounds (a
    process whose prompts are all done draws none of its own in the others' rounds).
    """
    searches = [SeedSearch() for _ in range(n_prompts)]
    while True:
        requests = [
            min(
                (n_base - len(s.base)) + (n_seeds - len(s.seeds)),
                max_attempts - s.attempts,
            )
            for s in searches
        ]
        if not any_process(any(requests)):
            return searches
        drawn = draw(requests)
        for s, want, chains in zip(searches, requests, drawn, strict=True):
            if len(chains) != want:
                raise RuntimeError(f"draw returned {len(chains)} chains, {want} requested")
            for chain in chains:
                s.draws.append(chain)
                if len(s.seeds) < n_seeds and is_seed(chain):
                    s.seeds.append(chain)
                elif len(s.base) < n_base:
                    s.base.append(chain)
                else:
                    s.surplus.append(chain)


def fallback_chains(
    search: SeedSearch, group_size: int, n_base: int, n_seeds: int, rule: str = "code"
) -> tuple[list, list, int]:
    """7. No seed found: ``(kept, dropped, missing)``: the chains kept for the GRPO group
    (in order), the draws dropped, and how many new draws top the group up to N.

    ``code`` follows the official loops: with a base group (1x4) the base chains found
    plus new draws; without one and several seeds (2x4) the non-seed draws, then the
    seeds found, the first N; with one seed (1x8) the first N draws. ``draw_order``: the
    first N draws for every split.
    """
    if rule == "draw_order" or (n_base == 0 and n_seeds == 1):
        order = list(search.draws)
    elif n_base > 0:
        order = list(search.base)
    elif rule == "code":
        seeds = {id(t) for t in search.seeds}
        order = [t for t in search.draws if id(t) not in seeds] + list(search.seeds)
    else:
        raise ValueError(f"unknown fallback rule {rule!r}; expected code or draw_order")
    kept = order[:group_size]
    ids = {id(t) for t in kept}
    dropped = [t for t in search.draws if id(t) not in ids]
    return kept, dropped, group_size - len(kept)


# --------------------------------------------------------- 2. reset thought
def reset_thought(
    reset: str,
    n_thoughts: int,
    *,
    localised: int | None = None,
    first_error: int | None = None,
    rng=None,
) -> int:
    """The reset thought h in [1, n] of a seed with ``n_thoughts`` thoughts.

    ``self``: ``localised`` is the policy's answer (None: it did not parse -> 1);
    ``random``: ``rng.randint(1, n)``; ``oracle``: ``first_error`` (None: the oracle finds
    no wrong thought -> 1). Out-of-range answers are clamped to [1, n].
    """
    n = max(n_thoughts, 1)
    if reset == "random":
        return rng.randint(1, n)
    if reset == "self":
        h = localised
    elif reset == "oracle":
        h = first_error
    else:
        raise ValueError(f"unknown reset rule {reset!r}; expected self, random or oracle")
    return 1 if h is None else min(max(int(h), 1), n)


# ---------------------------------------------------------- 3. reset state
def reset_prefix(completion_ids: list[int], thought_ends: list[int], h: int) -> list[int]:
    """Token ids of y_1 .. y_{h-1}: the completion up to the end of thought h - 1."""
    if not 1 <= h <= max(len(thought_ends), 1):
        raise ValueError(f"reset thought {h} is outside [1, {len(thought_ends)}]")
    return [] if h == 1 else list(completion_ids[: thought_ends[h - 2]])


# ------------------------------------------------------ 4-5. credit and mask
def suffix_mask(n_tokens: int, prefix_len: int, mask_prefix: bool = True) -> list[float]:
    """m[t]: 0 on the given prefix, 1 on sampled tokens (all 1 without prefix masking)."""
    n_masked = min(prefix_len, n_tokens) if mask_prefix else 0
    return [0.0] * n_masked + [1.0] * (n_tokens - n_masked)


def assign_credit(
    groups: list[Group],
    mask_prefix: bool = True,
    std: str = "population",
    eps: float = 0.0,
    zero_std_threshold: float | None = 1e-8,
) -> list[Trajectory]:
    """``norm`` within each group; every token of a chain carries its A_i, masked."""
    trained = []
    for group in groups:
        adv = group_normalise(
            group.rewards, std=std, eps=eps, zero_std_threshold=zero_std_threshold
        )
        for traj, a in zip(group.trajectories, adv, strict=True):
            mask = suffix_mask(len(traj.completion_ids), traj.prefix_len, mask_prefix)
            trained.append(traj.set_credit(float(a), mask))
    return trained


# ----------------------------------------------------------- diagnostics
def reset_diagnostics(resets: list[dict]) -> dict[str, float | None]:
    """Per-step SRPO diagnostics against the step oracle, from one record per reset state.

    A record holds ``reset`` (the rule), ``reset_thought`` h, ``localisation_parsed``,
    ``oracle_first_error`` e (None: no oracle, or none found), ``seed_thoughts`` n and
    ``suffix_rewards`` (the rewards of the C suffixes from that reset state). Resets without
    an oracle answer are counted in ``srpo/resets`` only.

    - ``srpo/localisation_accuracy``: fraction of resets whose h equals the oracle's reset
      thought ``clamp(e, 1, n)``; under ``self`` an answer that did not parse counts wrong.
    - clean prefix: ``h <= e`` (the reset state y_1..y_{h-1} has no wrong thought);
      erroneous: ``h > e``. ``srpo/correction_clean`` / ``_erroneous``: mean reward of the
      suffixes from such states (their fraction that succeed); ``..._group``: fraction of
      such suffix groups with at least one success. A rate over no item is None.
    - ``srpo/reset_offset``: mean of ``h - clamp(e, 1, n)`` (negative: reset too early).
    """
    with_oracle = [r for r in resets if r["oracle_first_error"] is not None]
    correct, offsets = [], []
    suffixes = {"clean": [], "erroneous": []}
    groups = {"clean": [], "erroneous": []}
    for r in with_oracle:
        h, e, n = r["reset_thought"], r["oracle_first_error"], max(r["seed_thoughts"], 1)
        target = min(max(e, 1), n)
        parsed = r["reset"] != "self" or bool(r["localisation_parsed"])
        correct.append(float(parsed and h == target))
        offsets.append(float(h - target))
        kind = "clean" if h <= e else "erroneous"
        rewards = [float(x) for x in r["suffix_rewards"]]
        suffixes[kind].extend(rewards)
        groups[kind].append(float(any(x >= 1.0 for x in rewards)))

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    out: dict[str, float | None] = {
        "srpo/resets": float(len(resets)),
        "srpo/resets_with_oracle": float(len(with_oracle)),
        "srpo/localisation_accuracy": mean(correct),
        "srpo/reset_offset": mean(offsets),
    }
    for kind in ("clean", "erroneous"):
        out[f"srpo/resets_{kind}"] = float(len(groups[kind]))
        out[f"srpo/suffixes_{kind}"] = float(len(suffixes[kind]))
        out[f"srpo/correction_{kind}"] = mean(suffixes[kind])
        out[f"srpo/correction_{kind}_group"] = mean(groups[kind])
    return out


# ------------------------------------------------------------------ method
class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx
        self.N = ctx.run.train.group_size
        try:
            self.B, self.S, self.C = parse_split(params.split, self.N)
        except ValueError as e:
            raise ValueError(f"run {ctx.run.name!r}: params.split: {e}") from None
        if params.max_attempts < self.B + self.S:
            raise ValueError(
                f"run {ctx.run.name!r}: params.max_attempts = {params.max_attempts} cannot "
                f"find {self.B} base chains and {self.S} seeds; use >= {self.B + self.S}"
            )
        if params.reset == "oracle" and not callable(getattr(ctx.task, "first_error", None)):
            raise ValueError(
                f"run {ctx.run.name!r}: reset 'oracle' needs a task with a step oracle "
                f"(first_error); task {ctx.task.name!r} has none: use 'self' or 'random'"
            )
        self.temperature = (
            LOCALISATION_TEMPERATURE[params.split]
            if params.localisation_temperature is None
            else params.localisation_temperature
        )
        self.last_metrics: dict[str, float | None] = {}

    def step_metrics(self) -> dict[str, float | None]:
        """Diagnostics of the last ``collect`` (``reset_diagnostics``; empty without a
        step oracle). Counts and rates, so that steps and processes can be pooled."""
        return dict(self.last_metrics)

    @staticmethod
    def pool_step_metrics(rows: list[dict]) -> dict[str, float | None]:
        """Several processes' ``step_metrics`` as one: counts summed, rates weighted by
        their counts (the metrics of all the processes' resets together)."""
        if not any(rows):
            return {}
        from creditbench.diagnostics import pool_srpo_metrics

        return pool_srpo_metrics(rows)

    # --------------------------------------------------------------- sample
    def collect(self, problems, step: int) -> list[Group]:
        p, ctx = self.params, self.ctx
        # 1. seed search, all prompts in rounds, drawn as "seed"
        searches = seed_search(
            self._draw(problems, "seed"),
            len(problems),
            self.B,
            self.S,
            p.max_attempts,
            any_process=ctx.any_process,
        )
        found = [len(s.seeds) == self.S for s in searches]

        # 7. fallback: the code's GRPO group per split, topped up with fresh rollouts
        fallback: dict[int, list[Trajectory]] = {}
        top_up = [0] * len(problems)
        for k, s in enumerate(searches):
            if found[k]:
                self._recharge(s.base, "seed", "rollout")  # base chains are rollouts
            else:
                fallback[k], _, top_up[k] = fallback_chains(s, self.N, self.B, self.S, p.fallback)
                self._recharge(fallback[k], "seed", "rollout")
        if ctx.any_process(any(top_up)):
            for k, extra in enumerate(self._draw(problems, "rollout")(top_up)):
                fallback.get(k, []).extend(extra)

        # 2. reset thought h of every seed; 3. reset state x* = (x0, y_1 .. y_{h-1})
        seeds = [(k, seed) for k, s in enumerate(searches) if found[k] for seed in s.seeds]
        localised = self._localise([(problems[k], seed) for k, seed in seeds])
        rng = ctx.step_rng(step, f"srpo-{p.reset}")  # RRPO's draws, reproducible on resume
        resets = []  # (prompt index, prefix ids, prefix thought ends, group meta)
        for (k, seed), loc in zip(seeds, localised, strict=True):
            oracle = self._oracle(problems[k], seed)
            h = reset_thought(
                p.reset,
                seed.n_thoughts,
                localised=loc.thought if loc is not None and loc.parsed else None,
                first_error=oracle,
                rng=rng,
            )
            meta = {
                "reset": p.reset,
                "reset_thought": h,
                "localisation_parsed": None if loc is None else loc.parsed,
                "oracle_first_error": oracle,
                "seed_thoughts": seed.n_thoughts,
                "seed_tokens": len(seed.completion_ids),
                "seed_reward": seed.reward,
                "seed_text": seed.text,
                "attempts": searches[k].attempts,
            }
            prefix = reset_prefix(seed.completion_ids, seed.thought_ends, h)
            resets.append((k, prefix, seed.thought_ends[: h - 1], meta))

        # 3. C suffixes from every reset state, in one batched call
        suffixes = []
        if ctx.any_process(bool(resets)):
            suffixes = ctx.rollout(
                [problems[k] for k, _, _, _ in resets],
                self.C,
                purpose="suffix",
                prefixes=[prefix for _, prefix, _, _ in resets],
                prefix_thought_ends=[ends for _, _, ends, _ in resets],
            )

        self.last_metrics = self._diagnostics(resets, suffixes, searches, found)

        # 4. groups, prompt by prompt: the base group, then one suffix group per seed
        by_prompt: dict[int, list[Group]] = {}
        for (k, _, _, meta), trajs in zip(resets, suffixes, strict=True):
            for t in trajs:
                keys = ("reset_thought", "localisation_parsed", "oracle_first_error")
                t.meta.update({key: meta[key] for key in keys})
            by_prompt.setdefault(k, []).append(Group(trajs, kind="suffix", meta=meta))
        groups: list[Group] = []
        for k, s in enumerate(searches):
            if not found[k]:
                meta = {"attempts": s.attempts, "seeds_found": len(s.seeds)}
                groups.append(Group(fallback[k], kind="fallback", meta=meta))
                continue
            if self.B:
                groups.append(Group(s.base, kind="base", meta={"attempts": s.attempts}))
            groups.extend(by_prompt[k])
        return groups

    # --------------------------------------------------------------- credit
    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p = self.params
        return assign_credit(groups, p.mask_prefix, p.std, p.eps, p.zero_std_threshold)

    # -------------------------------------------------------------- helpers
    def _draw(self, problems, purpose: str):
        """``draw(requests)``: ``requests[k]`` fresh chains of prompt k, one sampler call."""

        def draw(requests: list[int]) -> list[list[Trajectory]]:
            flat = [pr for pr, r in zip(problems, requests, strict=True) for _ in range(r)]
            chains = [g[0] for g in self.ctx.rollout(flat, 1, purpose=purpose)]  # [] takes part
            out, i = [], 0
            for r in requests:
                out.append(chains[i : i + r])
                i += r
            return out

        return draw

    def _localise(self, items):
        """SRPO's self-localisation of every seed in one call (None where not asked)."""
        if self.params.reset != "self" or not self.ctx.any_process(bool(items)):
            return [None] * len(items)
        ctx = self.ctx
        contexts = [
            ctx.sampler.encode_prompt(
                ctx.task.localisation_prompt(problem, seed.text),
                chat=self.params.localisation_chat_template,
            )
            for problem, seed in items
        ]
        window = getattr(getattr(ctx.model, "config", None), "max_position_embeddings", None)
        budgets = [
            min(self.params.localisation_max_new_tokens, max(window - len(c), 1))
            if window
            else self.params.localisation_max_new_tokens
            for c in contexts
        ]
        outs = ctx.sampler.generate(  # a free run: no thought rules (the code: no stops)
            contexts,
            purpose="localisation",
            temperature=self.temperature,
            max_new_tokens=budgets,
            thoughts=None,
        )
        return [
            ctx.task.parse_localisation(o.text, seed.n_thoughts)
            for o, (_, seed) in zip(outs, items, strict=True)
        ]

    def _oracle(self, problem, seed: Trajectory) -> int | None:
        """The step oracle's first wrong thought, where the task has one (diagnostics)."""
        first_error = getattr(self.ctx.task, "first_error", None)
        return first_error(problem, seed.text) if callable(first_error) else None

    def _diagnostics(self, resets, suffixes, searches, found) -> dict[str, float | None]:
        """``reset_diagnostics`` of this step's resets (nothing without a step oracle)."""
        if not callable(getattr(self.ctx.task, "first_error", None)):
            return {}
        records = [
            {**meta, "suffix_rewards": [t.reward for t in trajs]}
            for (_, _, _, meta), trajs in zip(resets, suffixes, strict=True)
        ]
        out = reset_diagnostics(records)
        out["srpo/fallback_prompts"] = float(sum(not f for f in found))
        out["srpo/prompts"] = float(len(searches))
        return out

    def _recharge(self, chains: list[Trajectory], src: str, dst: str) -> None:
        """Move chains sampled under ``src`` to ``dst`` in the ledger, as the sampler
        charged them: generated = sampled tokens, forwarded = each chain's charge (its
        share of a prefill shared with the prompt's other draws, plus its tokens)."""
        if not chains:
            return
        generated = sum(len(t.completion_ids) - t.prefix_len for t in chains)
        forwarded = sum(t.forwarded for t in chains)
        self.ctx.ledger.transfer(src, dst, generated=generated, forwarded=forwarded)
        for t in chains:
            t.purpose = dst
