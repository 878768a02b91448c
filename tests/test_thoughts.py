"""Thought-level generation: the per-row stop rules of SRPO's agent loop in one batched decode.

The rules follow Ankur-Samanta/SRPO ``training/thought_agent_loop.py``
(``ThoughtAgentLoop._generate_thoughts_core``): a thought ends at ``</thought>`` (kept) or
after ``max_tokens_per_thought`` tokens; a thought starts only while
``len(response) + max_tokens_per_thought <= response_length``; the chain ends after
``max_thoughts`` thoughts or after the thought that contains ``\\boxed{``. A continuation
from a prefix starts with the prefix's thoughts counted and the response budget it leaves.
"""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import random_tiny_model

from creditbench.config import ChainsTaskConfig, SamplingConfig
from creditbench.ledger import Ledger
from creditbench.methods import MethodContext
from creditbench.model import build_char_tokenizer
from creditbench.sampling import Sampler
from creditbench.tasks.chains import ChainsTask
from creditbench.thoughts import ThoughtRules, ThoughtTracker

ALPHABET = "0123456789+-*=\nA:?#!"


def run_tracker(rows: list[str], budgets, rules, thoughts_done=None, stop_strings=()):
    """Feed character rows (one char = one token) to a tracker; returns (taken, reason, ends)."""
    tracker = ThoughtTracker(
        budgets,
        lambda r, a, b: rows[r][a:b],
        rules=rules,
        thoughts_done=thoughts_done,
        stop_ids={ord("$")},  # "$" plays EOS
        eos_id=ord("$"),
        stop_strings=list(stop_strings),
        delimiter_id=ord(rules.delimiter) if rules and len(rules.delimiter) == 1 else None,
    )
    for t in range(max(len(r) for r in rows)):
        for r, row in enumerate(rows):
            if t < len(row) and not tracker.done[r]:
                tracker.push(r, ord(row[t]))
    return [
        (rows[r][: tracker.length[r]], tracker.reason[r], tracker.ends[r]) for r in range(len(rows))
    ]


def test_rules_row_by_row_in_one_batch_per_thought_cap_thought_cap_answer_marker():
    """One batch, each row ended by a different rule (worked by hand, one char a token)."""
    rules = ThoughtRules(
        delimiter="|",
        max_thought_tokens=4,
        max_thoughts=3,
        answer_marker="B{",
        reserve_full_thought=False,
    )
    rows = [
        "ab|B{|zz",  # answer marker in thought 2: the chain ends after it
        "abcdefgh|x|",  # thought 1 capped at 4 tokens, thought 2 "efgh" capped, 3 "|": cap 3
        "a|b|c|d|",  # thought cap: 3 thoughts
        "ab|c$zz",  # EOS inside thought 2: the unfinished thought is a thought
        "ab|cd|ef",  # budget 7: cut by length inside thought 3
    ]
    out = run_tracker(rows, [20, 20, 20, 20, 7], rules)
    assert out[0] == ("ab|B{|", "answer", [3, 6])
    assert out[1] == ("abcdefgh|", "thoughts", [4, 8, 9])
    assert out[2] == ("a|b|c|", "thoughts", [2, 4, 6])
    assert out[3] == ("ab|c$", "eos", [3, 5])
    assert out[4] == ("ab|cd|e", "length", [3, 6, 7])


def test_a_thought_starts_only_while_a_whole_one_fits_the_budget():
    """The code's check before each call: len(response) + max_tokens_per_thought must stay
    within response_length, so no chain is cut inside a thought."""
    rules = ThoughtRules(delimiter="|", max_thought_tokens=3, max_thoughts=20)
    # budget 8: thought 1 "ab|" (3, 5 left), thought 2 "c|" (5, 3 left), thought 3 "d|" (7,
    # 1 left < 3): done before a fourth thought
    assert run_tracker(["ab|c|d|e|f|"], [8], rules) == [("ab|c|d|", "length", [3, 5, 7])]
    # a row whose budget cannot hold a whole thought is not decoded at all
    assert run_tracker(["ab|"], [2], rules) == [("", "length", [])]


def test_a_continuation_counts_the_prefix_thoughts_and_gets_the_budget_it_leaves():
    """A suffix after h - 1 = 18 prefix thoughts may add 20 - 18 = 2 thoughts."""
    rules = ThoughtRules(delimiter="|", max_thoughts=20)
    assert run_tracker(["a|b|c|"], [50], rules, thoughts_done=[18]) == [
        ("a|b|", "thoughts", [2, 4])
    ]
    # a prefix that already holds the thought cap leaves nothing to generate
    assert run_tracker(["a|"], [50], rules, thoughts_done=[20]) == [("", "thoughts", [])]


def test_a_delimiter_of_several_tokens_and_a_lone_eos_after_the_last_thought():
    rules = ThoughtRules(delimiter="</t>", answer_marker="B{")
    out = run_tracker(["x</t>yB{1}</t>q", "x</t>$"], [40, 40], rules)
    assert out[0] == ("x</t>yB{1}</t>", "answer", [5, 14])
    assert out[1] == ("x</t>$", "eos", [6])  # the EOS joins the last thought


def test_stop_strings_end_a_row_without_thought_rules():
    out = run_tracker(["abPQcd", "abcdef"], [10, 4], None, stop_strings=["PQ"])
    assert out == [("abPQ", "pattern", []), ("abcd", "length", [])]


# ------------------------------------------------------------- the sampler, for real
@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return random_tiny_model(tok)


def expected_cut(ids: list[int], tok, rules: ThoughtRules, budget: int, done: int = 0):
    """The free run's ids cut where the rules end the chain, by a plain reading of the
    official loop: call by call, each call up to the delimiter or the per-thought cap."""
    eos, delim = tok.eos_token_id, tok.convert_tokens_to_ids(rules.delimiter)
    out, ends, pos = [], [], 0
    while True:
        if rules.max_thoughts is not None and done + len(ends) >= rules.max_thoughts:
            return out, "thoughts", ends
        left = budget - len(out)
        if left <= 0 or (rules.max_thought_tokens and left < rules.max_thought_tokens):
            return out, "length", ends
        thought, ended = [], False
        while pos < len(ids) and len(out) + len(thought) < budget:
            t = ids[pos]
            pos += 1
            thought.append(t)
            if t in (eos, delim) or len(thought) == rules.max_thought_tokens:
                ended = True
                break
        out += thought
        if thought and thought[-1] == eos:
            if len(thought) == 1 and ends:
                ends[-1] = len(out)
            else:
                ends.append(len(out))
            return out, "eos", ends
        if thought:
            ends.append(len(out))
        if not ended:  # the budget ran out inside the thought
            return out, "length", ends
        if rules.answer_marker in tok.decode(thought):
            return out, "answer", ends


def test_greedy_thought_level_generation_is_the_free_run_cut_by_the_rules(model, tok):
    """Greedy decoding is deterministic: one batched thought-level decode must give each
    row exactly the free run cut by the rules, row by row, with the boundaries."""
    sampler = Sampler(model, tok, SamplingConfig(max_new_tokens=40, batch_size=64), Ledger())
    contexts = [sampler.encode(a + b) for a in "0123456789" for b in "+-*=A:"]
    free = sampler.generate(contexts, purpose="free", temperature=0, thoughts=None)
    free_ids = [g.ids for g in free]
    # the random model seldom writes a newline: delimit thoughts by its most frequent
    # character and mark answers by its second (the rules do not care which)
    counts = collections.Counter(c for g in free for c in g.text)
    (delim, _), (marker, _) = counts.most_common(2)
    assert sum(delim in g.text for g in free) >= 20
    seen = set()
    for rules in (
        ThoughtRules(delimiter=delim, max_thought_tokens=4, max_thoughts=3, answer_marker=marker),
        ThoughtRules(delimiter=delim, max_thought_tokens=6, max_thoughts=5, answer_marker=marker),
        ThoughtRules(delimiter=delim, answer_marker=marker),
    ):
        budgets = [40 - (k % 5) * 7 for k in range(len(contexts))]  # per-row budgets
        done = [k % 3 for k in range(len(contexts))]
        gens = sampler.generate(
            contexts,
            purpose="thoughts",
            temperature=0,
            thoughts=rules,
            max_new_tokens=budgets,
            thoughts_done=done,
        )
        for k, g in enumerate(gens):
            ids, reason, ends = expected_cut(free_ids[k], tok, rules, budgets[k], done[k])
            # a free run shorter than the budget ended by EOS or length 40; compare what it has
            if len(ids) <= len(free_ids[k]):
                assert (g.ids, g.stop, g.thought_ends) == (ids, reason, ends), (k, rules)
                seen.add(reason)
    assert {"thoughts", "length", "eos"} <= seen


def test_rollouts_and_suffixes_follow_the_task_rules(model, tok):
    """``ctx.rollout`` generates with the task's rules; a suffix after a prefix of two
    thoughts gets the response length minus the prefix and the thought cap minus two."""
    task = ChainsTask(ChainsTaskConfig(min_len=2, max_len=2, n_train=10, n_test=10))
    sampler = Sampler.for_task(
        model, tok, SamplingConfig(max_new_tokens=24, batch_size=64), task, Ledger()
    )
    sampler.thought_rules = ThoughtRules(delimiter="\n", max_thoughts=4, answer_marker="A:")
    run = type("Run", (), {"name": "t"})()
    ctx = MethodContext(model, tok, sampler, task, sampler.ledger, run)
    problem = task.load("train")[0]
    prefix = sampler.encode("1+1=2\n2+2=4\n")
    (group,) = ctx.rollout([problem], 6, purpose="suffix", prefixes=[prefix])
    for t in group:
        assert t.completion_ids[: len(prefix)] == prefix and t.prefix_len == len(prefix)
        assert len(t.completion_ids) <= 24  # prefix + suffix within the response length
        assert t.thought_ends[:2] == [6, 12]
        assert t.n_thoughts <= 4
        if t.stop == "thoughts":
            assert t.n_thoughts == 4
    (fresh,) = ctx.rollout([problem], 6, purpose="rollout")
    assert all(len(t.completion_ids) <= 24 and t.n_thoughts <= 4 for t in fresh)
    # the group shares its prompt's prefill: 1 forward of the prompt but its last token,
    # plus each row's last prompt token and sampled tokens
    prompt = len(sampler.encode_prompt(problem.prompt))
    generated = sum(len(t.completion_ids) for t in fresh)
    assert sampler.ledger.forwarded["rollout"] == (prompt - 1) + 6 + generated


def test_the_math_task_generates_as_the_srpo_agent_loop():
    """``segmenter: stop`` gives the code's rules (``thought_agent_config.yaml``: 256 tokens a
    thought, 20 thoughts, ``</thought>`` kept, the chain ends after ``\\boxed{``); the
    VinePPO segmenters generate freely, with the task's stop strings."""
    from creditbench.config import MathTaskConfig
    from creditbench.tasks.math import MathTask

    data = {"source": "x.jsonl"}
    srpo = MathTask(MathTaskConfig(name="math", train=data, test=data))
    assert srpo.thought_rules == ThoughtRules(
        delimiter="</thought>", max_thought_tokens=256, max_thoughts=20, answer_marker="\\boxed{"
    )
    vine = MathTask(
        MathTaskConfig(
            name="math", train=data, test=data, segmenter="lines", stop_strings=["\n\n\nProblem:"]
        )
    )
    assert vine.thought_rules is None and vine.stop_strings == ["\n\n\nProblem:"]
    # the rules on text written the math way, one character a token: a delimiter of several
    # tokens, the per-thought cap, and the chain ending after the boxed thought
    rules = ThoughtRules(
        delimiter="</thought>",
        max_thought_tokens=30,
        answer_marker="\\boxed{",
        reserve_full_thought=False,
    )
    boxed = "x=2</thought>" + "y" * 20 + "</thought>" + "so \\boxed{2}.</thought>more</thought>"
    capped = "y" * 65 + "</thought>"
    out = run_tracker([boxed, capped], [200, 75], rules)
    assert out[0] == (boxed[:66], "answer", [13, 43, 66])
    assert out[1] == (capped, "length", [30, 60, 75])
