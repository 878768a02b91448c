"""Model output is untrusted: whatever a policy writes is scored, segmented, localised
and credited without raising, and scores nothing it should not.

Each case goes through the whole path a completion takes in training: the reward, the
segmenter, the step oracle, thought boundaries in token ids, and the localisation parser.
"""

from __future__ import annotations

import pytest

from creditbench.config import ChainsTaskConfig, MathTaskConfig
from creditbench.model import build_char_tokenizer
from creditbench.rollouts import thought_token_ends
from creditbench.tasks import Problem
from creditbench.tasks.chains import ChainsTask
from creditbench.tasks.math import MathTask

CHAINS = ChainsTask(ChainsTaskConfig(n_train=50, n_test=10, min_len=2, max_len=4))
MATH = MathTask(
    MathTaskConfig(name="math", train={"source": "x.jsonl"}, test={"source": "x.jsonl"})
)
TOKENIZER = build_char_tokenizer(CHAINS.alphabet)  # unknown characters become <unk>

# what a sampled policy can emit: nothing, one unbroken line, the replacement character
# a byte-level tokenizer decodes a torn multi-byte sequence to, control bytes, a flood
BAD = {
    "empty": "",
    "no-thoughts": "the answer is probably seven",
    "invalid-utf8": b"7+5=1\xff\xfe2\nA:\xc3".decode("utf-8", errors="replace"),
    "control-bytes": "\x00\x01\x1b[2J\r\n\t",
    "only-newlines": "\n\n\n\n",
    "flood": "9" * 5000,
}


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_a_chains_completion_of_any_shape_scores_zero_and_has_a_first_error(text):
    problem = CHAINS.generate("test")[0]
    assert CHAINS.reward(problem, text) == 0.0
    assert "".join(CHAINS.segment(text)) == text
    first = CHAINS.first_error(problem, text)  # a wrong completion has a first wrong thought
    assert first is not None and 1 <= first <= len(CHAINS.solution_lines(problem)) + 1


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_a_math_completion_of_any_shape_scores_zero(text):
    problem = Problem(id="p", prompt="1+1?", answer="2", meta={"question": "1+1?"})
    assert MATH.reward(problem, text) == 0.0
    assert "".join(MATH.segment(text)) == text


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_thought_boundaries_of_any_completion_cover_its_tokens(text):
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    ends = thought_token_ends(ids, TOKENIZER, CHAINS.segment)
    decoded = TOKENIZER.decode(ids, skip_special_tokens=True)
    if not CHAINS.segment(decoded):  # nothing but special tokens: no thought to credit
        assert ends == []
    else:  # every token belongs to a thought; the last thought ends at the last token
        assert ends == sorted(ends) and ends[-1] == len(ids)
        assert len(ends) == len(CHAINS.segment(decoded))


def test_an_eos_only_completion_has_no_thoughts():
    assert thought_token_ends([TOKENIZER.eos_token_id], TOKENIZER, CHAINS.segment) == []


@pytest.mark.parametrize(
    "answer", ["", "three", "\ufffd", "-1", "1e9", "4.5", "\x00", "99999999999999999999"]
)
def test_a_localisation_answer_that_is_not_a_thought_number_never_raises(answer):
    loc = CHAINS.parse_localisation(answer, 4)
    assert 1 <= loc.thought <= 4
