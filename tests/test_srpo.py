"""SRPO / RRPO (methods/srpo.py): the pure pieces by hand, the buffer on scripted chains, and
short training runs whose ledger adds up."""

from __future__ import annotations

import json
import math
import random
from collections import Counter, deque
from types import SimpleNamespace

import pytest
import torch
from conftest import small_config

from creditbench.config import ChainsTaskConfig, LossConfig
from creditbench.ledger import Ledger
from creditbench.loss import policy_loss
from creditbench.methods import MethodContext, load_method
from creditbench.model import build_char_tokenizer
from creditbench.rollouts import Group, Trajectory
from creditbench.sampling import Generation, Sampler, SamplingConfig
from creditbench.tasks import Problem
from creditbench.tasks.chains import ChainsTask
from creditbench.train import Trainer

srpo = load_method("srpo")
TASK = ChainsTask(ChainsTaskConfig(min_len=3, max_len=3))
TOK = build_char_tokenizer(TASK.alphabet)
EOS = TOK.eos_token_id
P0 = TASK.make_problem(random.Random(0), 3, "p0")  # 3 steps + the answer line: 4 thoughts
P1 = TASK.make_problem(random.Random(1), 3, "p1")


def right(p: Problem) -> str:
    return TASK.solution(p)


def wrong(p: Problem, k: int) -> str:
    """A failed chain whose first wrong thought is ``k`` (k = 4: only the answer is wrong)."""
    lines = TASK.solution_lines(p)
    if k <= 3:
        lines[k - 1] = "0+0=1\n"  # operands are >= 1, so no true step reads 0+0
    lines[-1] = f"A:{(int(p.answer) + 1) % 100}\n"
    return "".join(lines)


def n_tok(text: str) -> int:
    """Tokens the sampler charges for a generated text: one per character plus EOS."""
    return len(text) + 1


# ===================================================================== pure pieces
@pytest.mark.parametrize(
    ("split", "n", "expected"),
    [("1x4", 8, (4, 1, 4)), ("2x4", 8, (0, 2, 4)), ("1x8", 8, (0, 1, 8)), ("1x4", 4, (0, 1, 4))],
)
def test_split_gives_base_seeds_and_suffixes(split, n, expected):
    assert srpo.parse_split(split, n) == expected


@pytest.mark.parametrize(
    ("split", "n", "match"),
    [("2x4", 4, "leaves -4 base"), ("1x4", 5, "leaves 1 base"), ("1by4", 8, "form 'SxC'")],
)
def test_split_that_does_not_fit_the_buffer_is_refused(split, n, match):
    with pytest.raises(ValueError, match=match):
        srpo.parse_split(split, n)


def test_self_reset_is_the_localised_thought_clamped_and_a_parse_failure_gives_1():
    assert srpo.reset_thought("self", 4, localised=3) == 3
    assert srpo.reset_thought("self", 4, localised=9) == 4  # out of range -> n
    assert srpo.reset_thought("self", 4, localised=0) == 1
    assert srpo.reset_thought("self", 4, localised=None) == 1  # did not parse


def test_oracle_reset_is_the_first_error_and_no_error_gives_1():
    assert srpo.reset_thought("oracle", 4, first_error=2) == 2
    assert srpo.reset_thought("oracle", 3, first_error=4) == 3  # a missing thought -> n
    assert srpo.reset_thought("oracle", 4, first_error=None) == 1
    # on a real chain: the oracle names the planted error
    assert TASK.first_error(P0, wrong(P0, 3)) == 3


def test_random_reset_is_uniform_over_1_to_n_with_a_seeded_rng():
    draws = [srpo.reset_thought("random", 3, rng=random.Random(7)) for _ in range(3)]
    assert draws == [random.Random(7).randint(1, 3)] * 3  # a function of the RNG
    rng = random.Random(0)
    counts = Counter(srpo.reset_thought("random", 3, rng=rng) for _ in range(6000))
    assert set(counts) == {1, 2, 3}
    assert all(abs(c - 2000) < 150 for c in counts.values())  # ~4.4 sd of Binomial(6000, 1/3)


def test_reset_prefix_is_the_completion_up_to_thought_h_minus_1():
    ids, ends = list(range(10)), [3, 7, 10]
    assert srpo.reset_prefix(ids, ends, 1) == []  # h = 1: resample from the prompt
    assert srpo.reset_prefix(ids, ends, 2) == [0, 1, 2]
    assert srpo.reset_prefix(ids, ends, 3) == [0, 1, 2, 3, 4, 5, 6]
    for h in (0, 4):
        with pytest.raises(ValueError, match="outside"):
            srpo.reset_prefix(ids, ends, h)


def test_suffix_mask_zeroes_the_prefix_and_the_no_mask_ablation_keeps_it():
    assert srpo.suffix_mask(5, 2) == [0, 0, 1, 1, 1]
    assert srpo.suffix_mask(5, 0) == [1] * 5  # a base chain
    assert srpo.suffix_mask(5, 2, mask_prefix=False) == [1] * 5


def _chain(reward: float, n_thoughts: int = 2, n_tokens: int = 4, prefix_len: int = 0):
    return Trajectory(
        problem=P0,
        prompt_ids=[1, 2],
        completion_ids=list(range(n_tokens)),
        text="x",
        reward=reward,
        purpose="seed",
        thought_ends=list(range(1, n_thoughts + 1)),
        prefix_len=prefix_len,
    )


def test_seed_search_draws_in_rounds_of_the_empty_slots_and_assigns_roles_in_draw_order():
    # prompt 0: ok fail ok fail ok (done in round 1); prompt 1: five ok, then a fail
    script = {0: deque([1, 0, 1, 0, 1]), 1: deque([1, 1, 1, 1, 1, 0])}
    requests_seen = []

    def draw(requests):
        requests_seen.append(list(requests))
        return [[_chain(script[k].popleft()) for _ in range(r)] for k, r in enumerate(requests)]

    s0, s1 = srpo.seed_search(draw, 2, n_base=4, n_seeds=1, max_attempts=12)
    assert requests_seen == [[5, 5], [0, 1]]
    assert [c.reward for c in s0.base] == [1, 1, 0, 1]  # the second failure is a base chain
    assert [c.reward for c in s0.seeds] == [0] and s0.draws[1] is s0.seeds[0]
    assert s0.surplus == [] and s0.attempts == 5
    assert [c.reward for c in s1.base] == [1, 1, 1, 1] and len(s1.surplus) == 1
    assert s1.seeds == [s1.draws[5]] and s1.attempts == 6


def test_seed_search_stops_at_max_attempts_and_never_seeds_a_chain_without_thoughts():
    def draw(requests):
        return [[_chain(0.0, n_thoughts=0) for _ in range(r)] for r in requests]

    (s,) = srpo.seed_search(draw, 1, n_base=0, n_seeds=2, max_attempts=5)
    # rounds of 2, 2, then the 1 attempt left; every chain failed but has no thought
    assert s.attempts == 5 and s.seeds == [] and len(s.surplus) == 5
    kept, surplus, missing = srpo.fallback_chains(s, 8, n_base=0, n_seeds=2)
    assert kept == s.draws and surplus == [] and missing == 3


def test_fallback_per_split_as_the_official_loops_build_it():
    """No seed found (Ankur-Samanta/SRPO, ``_fill_rollout_buffer`` of each loop):
    1x4 (``srpo_agent_loop.py``): the 4 Group-1 chains (the first 4 draws) + 4 new draws;
    2x4 (``srpo_2x4_agent_loop.py``): successes first, then the failed parents found, the
    first 8; 1x8 (``srpo_1x8_agent_loop.py``): the first 8 draws."""
    draws = [_chain(1.0) for _ in range(12)]
    one_by_four = srpo.SeedSearch(draws=draws, base=draws[:4], surplus=draws[4:])
    kept, dropped, missing = srpo.fallback_chains(one_by_four, 8, n_base=4, n_seeds=1)
    assert kept == draws[:4] and dropped == draws[4:] and missing == 4
    one_by_eight = srpo.SeedSearch(draws=draws, surplus=draws)
    kept, dropped, missing = srpo.fallback_chains(one_by_eight, 8, n_base=0, n_seeds=1)
    assert kept == draws[:8] and dropped == draws[8:] and missing == 0
    parent = _chain(0.0)
    mixed = [parent] + draws[:11]
    two_by_four = srpo.SeedSearch(draws=mixed, seeds=[parent], surplus=draws[:11])
    kept, dropped, missing = srpo.fallback_chains(two_by_four, 8, n_base=0, n_seeds=2)
    assert kept == draws[:8] and dropped == [parent] + draws[8:11] and missing == 0
    few = srpo.SeedSearch(draws=[parent, draws[0]], seeds=[parent], surplus=[draws[0]])
    kept, _, missing = srpo.fallback_chains(few, 8, n_base=0, n_seeds=2)
    assert kept == [draws[0], parent] and missing == 6  # the parent after the successes
    # draw_order: the first N draws whatever the split
    kept, _, missing = srpo.fallback_chains(one_by_four, 8, 4, 1, rule="draw_order")
    assert kept == draws[:8] and missing == 0


def test_groups_are_normalised_separately_with_population_std_and_zero_std_rule():
    base = Group([_chain(r) for r in (1, 0, 0, 0)], kind="base")
    suffix = Group([_chain(r, n_tokens=5, prefix_len=2) for r in (1, 1, 0, 1)], kind="suffix")
    same = Group([_chain(1.0) for _ in range(4)], kind="suffix")
    tiny = Group([_chain(0.5), _chain(0.5 + 1e-9)], kind="suffix")  # std 5e-10 < 1e-8
    trained = srpo.assign_credit([base, suffix, same, tiny])
    a = [t.advantages[0] for t in trained]
    s = math.sqrt(0.25 * 0.75)  # population std of one 1 and three 0s (unbiased: 0.5)
    assert a[:4] == pytest.approx([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s])
    assert a[4:8] == pytest.approx([0.25 / s, 0.25 / s, -0.75 / s, 0.25 / s])
    assert a[8:] == [0.0] * 6
    assert all(t.advantages == [t.advantages[0]] * len(t.completion_ids) for t in trained)
    assert trained[0].loss_mask == [1.0] * 4  # base: every token
    assert trained[4].loss_mask == [0.0, 0.0, 1.0, 1.0, 1.0]  # suffix: not the prefix
    no_mask = srpo.assign_credit([suffix], mask_prefix=False)
    assert no_mask[0].loss_mask == [1.0] * 5


def test_default_loss_is_srpos_unclipped_buffer_mean_of_suffix_token_means():
    cfg = LossConfig(**srpo.DEFAULTS["loss"])
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g)
    adv = torch.tensor([0.5, -1.0, 2.0])[:, None].expand(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float)
    loss, _ = policy_loss(logp.requires_grad_(), adv, mask, cfg)
    means = (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    assert loss.item() == pytest.approx((-(adv[:, 0] * means).sum() / 3).item())


# ========================================================= the buffer, on scripted chains
class ScriptedSampler(Sampler):
    """The real encode/decode, with generations read from a per-prompt script.

    Fresh draws (``seed``, ``rollout``) pop a chain; ``suffix`` pops True (continue the
    prefix correctly) or False (continue it to a wrong answer); ``localisation`` pops an
    answer. Charges the ledger as the real sampler does.
    """

    def __init__(self, script: dict[str, dict[str, list]]):
        super().__init__(None, TOK, SamplingConfig(), Ledger())
        self.script = {p: {k: deque(v) for k, v in s.items()} for p, s in script.items()}
        self.calls, self.contexts = [], []

    def generate(self, contexts, *, purpose, n=1, **kw):
        contexts = [c for c in contexts for _ in range(n)]  # n continuations per context
        self.calls.append((purpose, len(contexts), kw))
        self.contexts.extend((purpose, list(c)) for c in contexts)
        out = []
        for c in contexts:
            context = self.decode(c)
            prompt = context.split("\n")[0] + "\n"
            queue = self.script[prompt][purpose]
            if purpose == "suffix":
                given = context[len(prompt) :].count("\n")  # thoughts in the prefix
                lines = TASK.solution_lines(_problem(prompt))
                if not queue.popleft():
                    lines[-1] = "A:999\n"
                text = "".join(lines[given:])
            else:
                text = queue.popleft()
            ids = self.encode(text) + [EOS]
            out.append(
                Generation(list(c), ids, self.decode(ids), "eos", forwarded=len(c) + len(ids))
            )
        self.ledger.add_tokens(
            purpose,
            generated=sum(len(g.ids) for g in out),
            forwarded=sum(len(g.context_ids) + len(g.ids) for g in out),
        )
        return out


def _problem(prompt: str) -> Problem:
    return next(p for p in (P0, P1) if p.prompt == prompt)


def make_method(script, group_size=8, task=TASK, **params):
    sampler = ScriptedSampler(script)
    run = SimpleNamespace(name="t", train=SimpleNamespace(group_size=group_size))
    ctx = MethodContext(None, TOK, sampler, task, sampler.ledger, run)
    return srpo.Method(srpo.Params(**params), ctx), sampler


def test_1x4_first_failure_is_the_seed_the_next_four_the_base_and_suffixes_are_masked():
    draws = [right(P0), wrong(P0, 2), right(P0), wrong(P0, 3), right(P0)]
    m, sampler = make_method(
        {P0.prompt: {"seed": draws, "localisation": ["2\n"], "suffix": [True, False, True, True]}}
    )
    groups = m.collect([P0], step=0)
    assert [g.kind for g in groups] == ["base", "suffix"]
    base, suffix = groups
    assert [t.text for t in base.trajectories] == [draws[0], draws[2], draws[3], draws[4]]
    assert base.rewards == [1, 1, 0, 1] and base.meta == {"attempts": 5}
    assert {k: suffix.meta[k] for k in ("reset_thought", "localisation_parsed")} == {
        "reset_thought": 2,
        "localisation_parsed": True,
    }
    assert suffix.meta["oracle_first_error"] == 2 and suffix.meta["seed_text"] == draws[1]
    first = TASK.solution_lines(P0)[0]  # y_1 of the seed (correct; y_2 is the error)
    for t in suffix.trajectories:
        assert t.prefix_len == len(first) and t.text.startswith(first)
        assert t.meta["reset_thought"] == 2 and t.purpose == "suffix"
    assert suffix.rewards == [1, 0, 1, 1]
    # localisation: the seed's prompt through the chat template, temperature 0.3, a free
    # run of up to 4096 tokens (thought_agent_config.yaml: localization_max_tokens)
    loc = [c for c in sampler.calls if c[0] == "localisation"]
    assert loc == [
        ("localisation", 1, {"temperature": 0.3, "max_new_tokens": [4096], "thoughts": None})
    ]
    assert [c for purpose, c in sampler.contexts if purpose == "localisation"] == [
        sampler.encode_prompt(TASK.localisation_prompt(P0, draws[1]))
    ]

    trained = m.advantages(groups)
    s = math.sqrt(0.25 * 0.75)
    assert [t.advantages[0] for t in trained] == pytest.approx(
        [0.25 / s, 0.25 / s, -0.75 / s, 0.25 / s, 0.25 / s, -0.75 / s, 0.25 / s, 0.25 / s]
    )
    assert trained[0].loss_mask == [1.0] * len(trained[0].completion_ids)
    n = len(trained[4].completion_ids)
    assert trained[4].loss_mask == [0.0] * len(first) + [1.0] * (n - len(first))

    ledger = sampler.ledger
    assert ledger.generated == {
        "seed": n_tok(draws[1]),
        "rollout": sum(n_tok(t.text) for t in base.trajectories),
        "localisation": n_tok("2\n"),
        "suffix": sum(len(t.completion_ids) - t.prefix_len for t in suffix.trajectories),
    }
    prompt_len = len(sampler.encode_prompt(P0.prompt))
    assert ledger.forwarded["rollout"] == sum(prompt_len + n_tok(t.text) for t in base.trajectories)


def test_1x4_search_goes_on_in_rounds_and_charges_the_surplus_draw_to_seed():
    draws = [right(P0)] * 5 + [wrong(P0, 1)]
    m, sampler = make_method(
        {P0.prompt: {"seed": draws, "localisation": ["1\n"], "suffix": [True] * 4}}
    )
    base, suffix = m.collect([P0], step=0)
    assert [(c[0], c[1]) for c in sampler.calls if c[0] == "seed"] == [("seed", 5), ("seed", 1)]
    assert base.rewards == [1, 1, 1, 1] and base.meta["attempts"] == 6
    assert suffix.meta["reset_thought"] == 1
    assert all(t.prefix_len == 0 for t in suffix.trajectories)  # h = 1: from the prompt
    assert sampler.ledger.generated["seed"] == n_tok(right(P0)) + n_tok(wrong(P0, 1))
    assert sampler.ledger.generated["rollout"] == 4 * n_tok(right(P0))


def test_1x4_without_a_seed_falls_back_to_its_four_base_chains_and_four_new_draws():
    """``srpo_agent_loop.py::_fill_rollout_buffer``, phase 2: Group 1 (the first 4 draws)
    topped up to 8 with new chains; the other draws of the search are dropped."""
    # a failure with no thought ("") is never a seed, so all 12 attempts are spent
    draws = [right(P0), ""] + [right(P0)] * 10
    m, sampler = make_method({P0.prompt: {"seed": draws, "rollout": [right(P0)] * 4}})
    (group,) = m.collect([P0], step=0)
    assert group.kind == "fallback" and group.meta == {"attempts": 12, "seeds_found": 0}
    assert [t.text for t in group.trajectories] == draws[:4] + [right(P0)] * 4
    assert {c[0] for c in sampler.calls} == {"seed", "rollout"}  # no localisation, no suffix
    trained = m.advantages([group])
    s = math.sqrt(7 / 8 * 1 / 8)
    assert [t.advantages[0] for t in trained] == pytest.approx(
        [1 / 8 / s, -7 / 8 / s] + [1 / 8 / s] * 6
    )
    assert all(t.loss_mask == [1.0] * len(t.completion_ids) for t in trained)
    assert sampler.ledger.generated == {
        "rollout": 7 * n_tok(right(P0)) + n_tok(""),
        "seed": 8 * n_tok(right(P0)),
    }


def test_draw_order_fallback_tops_up_with_fresh_rollouts_when_max_attempts_is_below_n():
    draws = [right(P0)] * 6
    m, sampler = make_method(
        {P0.prompt: {"seed": draws, "rollout": [right(P0), wrong(P0, 2)]}},
        max_attempts=6,
        fallback="draw_order",
    )
    (group,) = m.collect([P0], step=0)
    assert group.kind == "fallback" and group.rewards == [1] * 7 + [0]
    assert [c[:2] for c in sampler.calls] == [("seed", 5), ("seed", 1), ("rollout", 2)]
    # all six search draws were moved to rollout; the seed search cost nothing
    assert sampler.ledger.generated == {
        "rollout": 7 * n_tok(right(P0)) + n_tok(wrong(P0, 2)),
    }


def test_2x4_two_seeds_each_with_its_own_suffix_group_and_no_base_group():
    draws = [right(P0), wrong(P0, 1), wrong(P0, 3)]
    m, sampler = make_method(
        {P0.prompt: {"seed": draws, "localisation": ["3\n", "x"], "suffix": [True, False] * 4}},
        split="2x4",
    )
    groups = m.collect([P0], step=0)
    assert [g.kind for g in groups] == ["suffix", "suffix"]
    assert [(g.meta["seed_text"], g.meta["reset_thought"]) for g in groups] == [
        (draws[1], 3),  # wrong localisation (truth 1) is used as given
        (draws[2], 1),  # "x" does not parse -> 1
    ]
    assert [g.meta["localisation_parsed"] for g in groups] == [True, False]
    assert [g.meta["oracle_first_error"] for g in groups] == [1, 3]
    lines = draws[1].splitlines(keepends=True)
    assert all(t.prefix_len == len(lines[0] + lines[1]) for t in groups[0].trajectories)
    assert all(t.prefix_len == 0 for t in groups[1].trajectories)
    assert [g.rewards for g in groups] == [[1, 0, 1, 0], [1, 0, 1, 0]]
    assert [(c[0], c[1]) for c in sampler.calls] == [
        ("seed", 2),
        ("seed", 1),
        ("localisation", 2),
        ("suffix", 8),
    ]
    assert sampler.ledger.generated["seed"] == sum(n_tok(d) for d in draws)
    assert "rollout" not in sampler.ledger.generated


def test_2x4_falls_back_when_only_one_seed_is_found_successes_first():
    """``srpo_2x4_agent_loop.py``, phase 2: the successes, then the failed parent, the first 8."""
    draws = [wrong(P0, 2)] + [right(P0)] * 6
    m, _ = make_method(
        {P0.prompt: {"seed": draws, "rollout": [right(P0)]}}, split="2x4", max_attempts=7
    )
    (group,) = m.collect([P0], step=0)
    assert group.kind == "fallback" and group.meta["seeds_found"] == 1
    assert [t.text for t in group.trajectories] == [right(P0)] * 6 + [draws[0], right(P0)]


def test_1x8_localises_greedily_clamps_an_out_of_range_answer_and_samples_eight_suffixes():
    m, sampler = make_method(
        {P0.prompt: {"seed": [wrong(P0, 2)], "localisation": ["9\n"], "suffix": [True] * 8}},
        split="1x8",
    )
    (group,) = m.collect([P0], step=0)
    assert group.kind == "suffix" and len(group.trajectories) == 8
    assert group.meta["reset_thought"] == 4  # 9 clamped to n = 4
    lines = wrong(P0, 2).splitlines(keepends=True)
    assert all(t.prefix_len == len("".join(lines[:3])) for t in group.trajectories)
    assert [c[2]["temperature"] for c in sampler.calls if c[0] == "localisation"] == [0.0]


def test_random_reset_draws_from_the_step_rng_and_makes_no_localisation_call():
    draws = [wrong(P0, 2)] + [right(P0)] * 4
    m, sampler = make_method({P0.prompt: {"seed": draws, "suffix": [True] * 4}}, reset="random")
    random.seed(3)
    _, suffix = m.collect([P0], step=5)
    expected = m.ctx.step_rng(5, "srpo-random").randint(1, 4)
    assert suffix.meta["reset_thought"] == expected
    # the global RNG plays no part: reseeding it changes nothing
    random.seed(4)
    m2, _ = make_method({P0.prompt: {"seed": draws, "suffix": [True] * 4}}, reset="random")
    assert m2.collect([P0], step=5)[1].meta["reset_thought"] == expected
    assert suffix.meta["localisation_parsed"] is None
    assert "localisation" not in sampler.ledger.generated


def test_oracle_reset_is_the_seeds_first_wrong_thought():
    draws = [right(P0), wrong(P0, 3), right(P0), right(P0), right(P0)]
    m, sampler = make_method({P0.prompt: {"seed": draws, "suffix": [True] * 4}}, reset="oracle")
    _, suffix = m.collect([P0], step=0)
    assert suffix.meta["reset_thought"] == 3
    assert all(t.meta["oracle_first_error"] == 3 for t in suffix.trajectories)
    assert "localisation" not in sampler.ledger.generated


def test_prompts_are_batched_together_and_keep_their_own_groups():
    script = {
        P0.prompt: {
            "seed": [wrong(P0, 2)] + [right(P0)] * 4,
            "localisation": ["2\n"],
            "suffix": [True] * 4,
        },
        P1.prompt: {
            "seed": [right(P1)] * 4 + [wrong(P1, 4)],
            "localisation": ["4\n"],
            "suffix": [False] * 4,
        },
    }
    m, sampler = make_method(script)
    groups = m.collect([P0, P1], step=0)
    assert [(g.kind, g.trajectories[0].problem.id) for g in groups] == [
        ("base", "p0"),
        ("suffix", "p0"),
        ("base", "p1"),
        ("suffix", "p1"),
    ]
    assert [(c[0], c[1]) for c in sampler.calls] == [
        ("seed", 10),
        ("localisation", 2),
        ("suffix", 8),
    ]
    assert groups[3].rewards == [0] * 4 and groups[3].meta["reset_thought"] == 4


def test_oracle_reset_needs_a_task_with_a_step_oracle():
    class NoOracle:
        name = "no_oracle"

    with pytest.raises(ValueError, match="step oracle"):
        make_method({}, task=NoOracle(), reset="oracle")


def test_a_split_that_does_not_fit_the_run_is_refused_with_the_run_name():
    with pytest.raises(ValueError, match="run 't': params.split.*group_size = 4"):
        make_method({}, group_size=4, split="2x4")
    with pytest.raises(ValueError, match="max_attempts = 3"):
        make_method({}, max_attempts=3)


# ============================================================ short training runs
RUNS = {
    "srpo_1x4": {},
    "srpo_2x4": {"split": "2x4"},
    "srpo_1x8": {"split": "1x8"},
    "rrpo_1x4": {"reset": "random"},
    "srpo_oracle_1x4": {"reset": "oracle"},
    "srpo_1x4_clip": {"loss": {"clip": True, "aggregation": "dapo"}},
    "srpo_1x4_nomask": {"mask_prefix": False},
}
STEPS, PROMPTS = 2, 2


@pytest.fixture(scope="module")
def runs_config():
    train = {"group_size": 8, "steps": STEPS, "prompts_per_step": PROMPTS}
    return small_config(
        runs={name: {"method": "srpo", "train": train, **spec} for name, spec in RUNS.items()}
    )


@pytest.mark.parametrize("name", list(RUNS))
def test_training_run_ledger_adds_up_by_purpose(name, runs_config, small_experiment, tmp_path):
    run = runs_config.run(name)
    assert run.loss.clip is (name == "srpo_1x4_clip")
    trainer = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path)
    sampled, groups = Counter(), []
    generate, collect = trainer.sampler.generate, trainer.method.collect

    def recording_generate(contexts, *, purpose, **kw):
        out = generate(contexts, purpose=purpose, **kw)
        sampled[purpose] += sum(len(g.ids) for g in out)
        return out

    def recording_collect(problems, step):
        new = collect(problems, step)
        groups.extend(new)
        return new

    trainer.sampler.generate = recording_generate
    trainer.method.collect = recording_collect
    ledger = trainer.train()["generated_tokens"]

    trained = [t for g in groups for t in g.trajectories]
    assert len(trained) == STEPS * PROMPTS * 8
    assert sum(ledger.values()) == sum(sampled.values())  # every sampled token, once
    fresh = [t for g in groups if g.kind in ("base", "fallback") for t in g.trajectories]
    suffix = [t for g in groups if g.kind == "suffix" for t in g.trajectories]
    assert ledger.get("rollout", 0) == sum(len(t.completion_ids) for t in fresh)
    assert ledger.get("suffix", 0) == sampled["suffix"]
    assert sampled["suffix"] == sum(len(t.completion_ids) - t.prefix_len for t in suffix)
    assert ledger.get("seed", 0) + ledger.get("rollout", 0) == sampled["seed"] + sampled["rollout"]
    seeds = [g.meta["seed_tokens"] for g in groups if g.kind == "suffix"]
    assert ledger.get("seed", 0) >= sum(seeds)
    if run.params["reset"] == "self":
        assert ledger["localisation"] == sampled["localisation"] > 0
    else:
        assert "localisation" not in ledger and sampled["localisation"] == 0
    for g in groups:
        if g.kind == "suffix":
            assert g.meta["oracle_first_error"] is not None
            masked = [t.loss_mask.count(0.0) for t in g.trajectories]
            want = 0 if name == "srpo_1x4_nomask" else g.trajectories[0].prefix_len
            assert masked == [want] * len(g.trajectories)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["trained_sequences"] for r in rows] == [PROMPTS * 8] * STEPS
    assert all(math.isfinite(r["loss"]) for r in rows)
