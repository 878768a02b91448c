"""The sampler on a tiny untrained model: stops, prefixes, padding, log-probs, ledger, rollouts."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tiny_model

from creditbench.config import ChainsTaskConfig, SamplingConfig
from creditbench.ledger import Ledger
from creditbench.loss import completion_logprobs
from creditbench.methods import MethodContext
from creditbench.model import build_char_tokenizer
from creditbench.rollouts import Batch, thought_token_ends
from creditbench.sampling import Generation, Sampler
from creditbench.tasks import Problem
from creditbench.tasks.chains import ChainsTask

PROMPTS = ["7+5*3-4\n", "1+2\n", "12*3-4+5*6-7\n", "9-8*7\n"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


ALPHABET = "0123456789+-*=\nA:?#!"  # fixed, so that the random model's outputs stay put


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def model(tok):
    """Untrained and seeded; matrices redrawn with a large std so greedy outputs vary.

    At the default init, tied embeddings make greedy decoding repeat the last token. The
    pad/bos/unk embedding rows are zeroed so greedy decoding never picks them (logit 0).
    """
    return random_tiny_model(tok)


def make_sampler(model, tok, **cfg) -> Sampler:
    return Sampler(
        model, tok, SamplingConfig(**{"max_new_tokens": 16, "batch_size": 4, **cfg}), Ledger()
    )


@pytest.fixture
def sampler(model, tok):
    return make_sampler(model, tok)


def ctxs(sampler: Sampler, prompts=PROMPTS) -> list[list[int]]:
    return [sampler.encode_prompt(p) for p in prompts]


def greedy(sampler: Sampler, contexts, **kw) -> list[Generation]:
    return sampler.generate(contexts, purpose="test", temperature=0, **kw)


def test_encode_prompt_is_the_prompt_characters(sampler, tok):
    ids = sampler.encode_prompt("7+5\n")
    assert ids == [tok.convert_tokens_to_ids(c) for c in "7+5\n"]
    assert sampler.decode(ids) == "7+5\n"


# --------------------------------------------------------------------- stops
def check_cut(g: Generation, stop_ids: set[int], max_new: int, sampler: Sampler) -> None:
    assert g.text == sampler.decode(g.ids)
    assert not stop_ids & set(g.ids[:-1]), g  # nothing after the first stop token
    assert 0 < len(g.ids) <= max_new
    if g.stop == "length":
        assert len(g.ids) == max_new and g.ids[-1] not in stop_ids
    else:
        assert g.ids[-1] in stop_ids


def test_batched_sampling_cuts_each_row_at_its_first_eos(model, tok):
    torch.manual_seed(0)
    s = make_sampler(model, tok, max_new_tokens=24, batch_size=5)
    contexts = ctxs(s) * 4  # 16 rows in batches of 5
    gens = s.generate(contexts, purpose="rollout", temperature=1.0)
    assert len(gens) == 16
    assert [g.context_ids for g in gens] == contexts
    for g in gens:
        check_cut(g, {tok.eos_token_id}, 24, s)
        assert g.stop in ("eos", "length")
        assert (g.stop == "eos") == (g.ids[-1] == tok.eos_token_id)
        assert "</s>" not in g.text
    assert {g.stop for g in gens} == {"eos", "length"}  # both kinds of ending occur


def test_newline_stop_ends_after_the_first_newline(model, tok):
    torch.manual_seed(1)
    s = make_sampler(model, tok, max_new_tokens=24)
    nl = tok.convert_tokens_to_ids("\n")
    gens = s.generate(ctxs(s) * 4, purpose="rollout", stop=["\n"], temperature=1.0)
    for g in gens:
        check_cut(g, {nl, tok.eos_token_id}, 24, s)
        if g.stop == "pattern":
            assert g.text.endswith("\n") and g.text.count("\n") == 1 and g.ids[-1] == nl
        elif g.stop == "eos":
            assert g.ids[-1] == tok.eos_token_id and "\n" not in g.text
        else:
            assert g.stop == "length" and "\n" not in g.text
    assert "pattern" in {g.stop for g in gens}


def test_greedy_newline_stop_is_the_unstopped_output_cut_at_its_first_newline(sampler, tok):
    nl = tok.convert_tokens_to_ids("\n")
    # many short contexts, so that some greedy continuations of the random model hold a newline
    contexts = ctxs(sampler) + [sampler.encode(a + b) for a in "0123456789" for b in "+-*=A:"]
    free = greedy(sampler, contexts, max_new_tokens=40)
    stopped = greedy(sampler, contexts, max_new_tokens=40, stop=["\n"])
    cut_any = False
    for f, g in zip(free, stopped, strict=True):
        if nl in f.ids and (
            tok.eos_token_id not in f.ids or f.ids.index(nl) < f.ids.index(tok.eos_token_id)
        ):
            assert g.ids == f.ids[: f.ids.index(nl) + 1] and g.stop == "pattern"
            cut_any = True
        else:
            assert g.ids == f.ids and g.stop == f.stop
    assert cut_any


def multi_char_stop(sampler: Sampler, contexts) -> tuple[str, int, Generation]:
    """A two-character string that the greedy continuation of some context produces mid-way."""
    free = greedy(sampler, contexts, max_new_tokens=40)
    specials = set(sampler.tokenizer.all_special_ids)
    for row, f in enumerate(free):
        for j in range(2, len(f.ids) - 2):
            pair = f.ids[j : j + 2]
            if not specials & set(pair) and sampler.decode(pair) not in sampler.decode(
                f.ids[: j + 1]
            ):
                return sampler.decode(pair), row, f
    raise AssertionError("no usable two-character string in the greedy outputs")


def test_multi_character_stop_string_ends_generation_with_it(sampler, tok):
    contexts = ctxs(sampler)
    pattern, row, free = multi_char_stop(sampler, contexts)
    assert len(sampler.encode(pattern)) == 2  # handled as a stop string, not a stop token
    gens = greedy(sampler, contexts, max_new_tokens=40, stop=[pattern])
    g = gens[row]
    assert g.stop == "pattern"
    assert g.text.endswith(pattern) and g.text.count(pattern) == 1
    # exactly the unstopped output, cut right after the first occurrence of the pattern
    assert g.ids == free.ids[: len(g.ids)]
    assert pattern not in sampler.decode(g.ids[:-1])
    for other in gens:
        assert other.stop in ("eos", "pattern", "length")
        if other.stop == "pattern":
            assert other.text.endswith(pattern)
        else:
            assert pattern not in other.text
        assert tok.pad_token_id not in other.ids  # greedy never picks pad: none may leak in


def test_stop_string_straddling_the_context_is_not_a_match(sampler):
    """A stop string must occur in the generated text; the context's tail does not count."""
    contexts = ctxs(sampler)
    pattern, row, free = multi_char_stop(sampler, contexts)
    j = sampler.decode(free.ids).index(pattern)  # char tokenizer: char offset == token offset
    context = contexts[row] + free.ids[: j + 1]  # ends with the pattern's first character
    rest = free.ids[j + 1 :]
    g = greedy(sampler, [context], max_new_tokens=len(rest), stop=[pattern])[0]
    expected = rest
    later = sampler.decode(rest).find(pattern)
    if later >= 0:
        expected = rest[: later + len(pattern)]
    assert g.ids == expected
    assert g.stop == ("pattern" if later >= 0 else free.stop)


# ------------------------------------------------------- prefixes and padding
def test_continuation_from_a_prefix_equals_the_rest_of_the_whole_greedy_output(sampler):
    contexts = ctxs(sampler)
    whole = greedy(sampler, contexts, max_new_tokens=16)
    for ctx, w in zip(contexts, whole, strict=True):
        for k in (1, len(w.ids) // 2):
            if k >= len(w.ids):
                continue
            cont = greedy(sampler, [ctx + w.ids[:k]], max_new_tokens=16 - k)[0]
            assert cont.context_ids == ctx + w.ids[:k]
            assert cont.ids == w.ids[k:]
            assert cont.stop == w.stop


def test_left_padding_does_not_change_greedy_outputs(sampler):
    contexts = ctxs(sampler)
    assert len({len(c) for c in contexts}) == len(contexts)  # different lengths: padding needed
    batched = greedy(sampler, contexts, max_new_tokens=20)
    for ctx, b in zip(contexts, batched, strict=True):
        alone = greedy(sampler, [ctx], max_new_tokens=20)[0]
        assert (alone.ids, alone.stop, alone.text) == (b.ids, b.stop, b.text)
        assert sampler.tokenizer.pad_token_id not in b.ids  # greedy never picks pad (see model)


def test_batch_size_does_not_change_greedy_outputs(model, tok):
    contexts = ctxs(make_sampler(model, tok)) * 2
    one = greedy(make_sampler(model, tok, batch_size=1), contexts)
    three = greedy(make_sampler(model, tok, batch_size=3), contexts)
    assert [g.ids for g in one] == [g.ids for g in three]


# ------------------------------------------------------------------ logprobs
def rescored(model, tok, gens: list[Generation]) -> list[list[float]]:
    fake = []
    for g in gens:
        fake.append(
            type(
                "T",
                (),
                {
                    "prompt_ids": g.context_ids,
                    "completion_ids": g.ids,
                    "advantages": [0.0] * len(g.ids),
                    "loss_mask": None,
                },
            )
        )
    batch = Batch.from_trajectories(fake, tok.pad_token_id)
    with torch.no_grad():
        lp = completion_logprobs(
            model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
        )
    return [lp[i, : len(g.ids)].tolist() for i, g in enumerate(gens)]


def test_greedy_logprobs_equal_a_forward_pass(sampler, model, tok):
    gens = greedy(sampler, ctxs(sampler), logprobs=True, max_new_tokens=12)
    for g, ref in zip(gens, rescored(model, tok, gens), strict=True):
        assert len(g.logprobs) == len(g.ids)
        assert g.logprobs == pytest.approx(ref, abs=1e-4)
        assert all(lp <= 0 for lp in g.logprobs)


def test_sampled_logprobs_are_under_the_untempered_model(sampler, model, tok):
    torch.manual_seed(2)
    gens = sampler.generate(
        ctxs(sampler) * 2, purpose="t", temperature=0.5, logprobs=True, stop=["\n"]
    )
    for g, ref in zip(gens, rescored(model, tok, gens), strict=True):
        assert g.logprobs == pytest.approx(ref, abs=1e-4)


def test_logprobs_are_none_unless_asked(sampler):
    assert all(g.logprobs is None for g in greedy(sampler, ctxs(sampler)[:2]))


# -------------------------------------------------------------------- ledger
def test_ledger_counts_generated_and_forwarded_tokens_by_purpose(sampler):
    torch.manual_seed(3)
    contexts = ctxs(sampler) * 2
    gens = sampler.generate(contexts, purpose="suffix", temperature=1.0, stop=["\n"])
    more = greedy(sampler, contexts[:3])
    led = sampler.ledger
    assert led.generated["suffix"] == sum(len(g.ids) for g in gens)
    assert led.forwarded["suffix"] == sum(
        len(c) + len(g.ids) for c, g in zip(contexts, gens, strict=True)
    )
    assert led.generated["test"] == sum(len(g.ids) for g in more)
    assert led.forwarded["test"] == sum(len(g.context_ids) + len(g.ids) for g in more)
    assert set(led.generated) == {"suffix", "test"}
    assert led.seconds["generate"] > 0


def test_each_generation_carries_its_share_of_the_charge(model, tok):
    """``Generation.forwarded``: a repeated context's prefill is charged to its first row
    (its ``len - 1`` shared tokens and its last), every further row its last context token;
    the rows of a call sum to the ledger's charge (what SRPO's re-charging moves)."""
    from creditbench.sampling import prefill_shares

    assert prefill_shares([[1, 2, 3], [4, 5]]) == [3, 2]  # nothing repeats: in full
    assert prefill_shares([[1, 2, 3], [1, 2, 3], [4, 5], [1, 2, 3]]) == [3, 1, 2, 1]
    assert prefill_shares([[7], [7]]) == [1, 1]  # single tokens: nothing to share
    assert prefill_shares([]) == []
    torch.manual_seed(0)
    for batch_size in (16, 4):  # one batch; batches of 4 rows: [a a a b], [b b]
        sampler = make_sampler(model, tok, batch_size=batch_size)
        a, b = ctxs(sampler)[:2]
        gens = sampler.generate([a, b], purpose="seed", n=3, temperature=1.0)
        assert sampler.ledger.forwarded["seed"] == sum(g.forwarded for g in gens)
        shares = [g.forwarded - len(g.ids) for g in gens]
        assert shares == (
            [len(a), 1, 1, len(b), 1, 1] if batch_size == 16 else [len(a), 1, 1, len(b), len(b), 1]
        )


# --------------------------------------------------------------- thought ends
@pytest.mark.parametrize(
    ("text", "eos", "ends"),
    [
        ("7+5=12\n12*3=36\nA:36\n", False, [7, 15, 20]),
        ("7+5=12\n12*3=36\nA:36\n", True, [7, 15, 21]),  # EOS belongs to the last thought
        ("7+5=12\n12*3", False, [7, 11]),
        ("\n", True, [2]),
        ("", True, []),
    ],
)
def test_thought_token_ends_on_char_tokens(tok, text, eos, ends):
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    got = thought_token_ends(ids, tok, ChainsTask(ChainsTaskConfig()).segment)
    assert got == ends


# ------------------------------------------------------------------ rollouts
def context(model, tok, sampler) -> MethodContext:
    return MethodContext(
        model=model,
        tokenizer=tok,
        sampler=sampler,
        task=ChainsTask(ChainsTaskConfig()),
        ledger=sampler.ledger,
        run=None,
    )


PROBLEMS = [
    Problem(
        "a",
        "7+5*3-4\n",
        "32",
        {"ops": ["+", "*", "-"], "operands": [5, 3, 4], "values": [7, 12, 36, 32], "length": 3},
    ),
    Problem("b", "1+2\n", "3", {"ops": ["+"], "operands": [2], "values": [1, 3], "length": 1}),
]


def test_rollout_continues_prefixes_and_marks_them(model, tok, sampler):
    ctx = context(model, tok, sampler)
    prefixes = [sampler.encode("7+5=12\n"), sampler.encode("1+2=")]
    torch.manual_seed(4)
    groups = ctx.rollout(
        PROBLEMS, 3, purpose="suffix", prefixes=prefixes, stop=["\n"], max_new_tokens=8
    )
    assert [len(g) for g in groups] == [3, 3]
    for problem, prefix, group in zip(PROBLEMS, prefixes, groups, strict=True):
        for tr in group:
            assert tr.problem is problem
            assert tr.prompt_ids == sampler.encode_prompt(problem.prompt)
            assert tr.completion_ids[: len(prefix)] == prefix
            assert tr.prefix_len == len(prefix)
            assert len(tr.completion_ids) > len(prefix)
            assert tr.text == sampler.decode(tr.completion_ids)
            assert tr.purpose == "suffix"
            assert tr.thought_ends == thought_token_ends(tr.completion_ids, tok, ctx.task.segment)
            expected = 0.0 if tr.stop == "length" else ctx.task.reward(problem, tr.text)
            assert tr.reward == expected
    # the ledger charges only the sampled tokens as generated, the whole context as forwarded
    sampled = sum(len(tr.completion_ids) - tr.prefix_len for g in groups for tr in g)
    assert sampler.ledger.generated["suffix"] == sampled


class ScriptedSampler:
    """Returns fixed generations, to test how ``rollout`` scores them."""

    def __init__(self, inner: Sampler, texts_and_stops: list[tuple[str, str]]):
        self.inner, self.script = inner, texts_and_stops
        self.encode_prompt, self.decode, self.encode = (
            inner.encode_prompt,
            inner.decode,
            inner.encode,
        )
        self.ledger, self.eos = inner.ledger, inner.tokenizer.eos_token_id
        self.cfg = inner.cfg

    def generate(self, contexts, purpose, n=1, **kw):
        contexts = [c for c in contexts for _ in range(n)]
        assert len(contexts) == len(self.script)
        return [
            Generation(
                context_ids=c,
                ids=self.encode(text) + ([self.eos] if stop == "eos" else []),
                text=text,
                stop=stop,
            )
            for c, (text, stop) in zip(contexts, self.script, strict=True)
        ]


def test_rollout_rewards_zero_on_length_truncated_completions(model, tok, sampler):
    tail = "36-4=32\nA:32"
    script = [(tail, "length"), (tail, "eos"), (tail + "\n", "pattern"), ("36-4=31\nA:31", "eos")]
    ctx = context(model, tok, ScriptedSampler(sampler, script))
    prefix = sampler.encode("7+5=12\n12*3=36\n")
    (group,) = ctx.rollout(PROBLEMS[:1], 4, purpose="rollout", prefixes=[prefix])
    assert [tr.stop for tr in group] == ["length", "eos", "pattern", "eos"]
    assert [tr.reward for tr in group] == [0.0, 1.0, 1.0, 0.0]
    assert group[0].text == "7+5=12\n12*3=36\n36-4=32\nA:32"
    assert [tr.n_thoughts for tr in group] == [4, 4, 4, 4]
