"""The ``chains`` testbed: generator, step oracle, corruptions, verifier, localisation, data."""

from __future__ import annotations

import json
import random
import re

import pytest

from creditbench.config import ChainsTaskConfig
from creditbench.tasks import DataError, Problem, read_jsonl, write_jsonl
from creditbench.tasks.chains import ChainsTask, Localisation

SMALL = {"n_train": 300, "n_test": 60, "min_len": 2, "max_len": 4}


def task(**knobs) -> ChainsTask:
    return ChainsTask(ChainsTaskConfig(**{**SMALL, **knobs}))


class ScriptedRng:
    """Stands in for ``random.Random`` in ``make_problem``: scripted start, ops and operands."""

    def __init__(self, start: int, ops: list[str], operands: list[int]):
        self.start, self.ops, self.operands = start, list(ops), list(operands)

    def randrange(self, n):
        assert 0 <= self.start < n
        return self.start

    def choice(self, seq):
        op = self.ops.pop(0)
        assert op in seq
        return op

    def randint(self, lo, hi):
        b = self.operands.pop(0)
        assert lo <= b <= hi
        return b


def scripted(t: ChainsTask, start: int, ops: list[str], operands: list[int]) -> Problem:
    return t.make_problem(ScriptedRng(start, ops, operands), len(ops), "hand")


def evaluate_prompt(prompt: str, modulus: int) -> int:
    """Independent oracle: parse ``a op b op c ...``, evaluate left to right modulo ``modulus``."""
    tokens = re.findall(r"\d+|[+*-]", prompt.strip())
    value = int(tokens[0])
    for op, b in zip(tokens[1::2], tokens[2::2], strict=True):
        b = int(b)
        value = {"+": value + b, "-": value - b, "*": value * b}[op] % modulus
    return value


def n_ops(prompt: str) -> int:
    return len(re.findall(r"[+*-]", prompt))


@pytest.fixture
def p7():
    """7+5*3-4 mod 100: 7+5=12, 12*3=36, 36-4=32."""
    return scripted(task(), 7, ["+", "*", "-"], [5, 3, 4])


SOLUTION_7 = "7+5=12\n12*3=36\n36-4=32\nA:32\n"


# ------------------------------------------------------------------ generator
def test_make_problem_evaluates_left_to_right_modulo(p7):
    assert p7.prompt == "7+5*3-4\n"
    assert p7.answer == "32"
    assert p7.meta["values"] == [7, 12, 36, 32]
    assert task().solution(p7) == SOLUTION_7


def test_make_problem_wraps_subtraction_and_multiplication():
    t = task()
    sub = scripted(t, 3, ["-"], [7])
    assert (sub.prompt, sub.answer) == ("3-7\n", "96")
    assert t.solution(sub) == "3-7=96\nA:96\n"
    # 12*9 = 108 -> 8; 8+95 = 103 -> 3
    t99 = task(operand_max=99)
    mul = scripted(t99, 12, ["*", "+"], [9, 95])
    assert mul.meta["values"] == [12, 8, 3]
    assert mul.answer == "3"
    small_mod = scripted(task(modulus=7), 5, ["*", "-"], [4, 6])  # 20 % 7 = 6; 6-6 = 0
    assert small_mod.answer == "0"


def test_generated_answers_match_independent_left_to_right_evaluation():
    t = task(modulus=97, operand_max=20)
    for split in ("train", "test", "test_long"):
        for p in t.generate(split):
            assert p.answer == str(evaluate_prompt(p.prompt, 97)), p
            assert t.first_error(p, t.solution(p)) is None


def test_same_data_seed_gives_identical_problems():
    assert task(data_seed=7).generate("train") == task(data_seed=7).generate("train")
    assert task(data_seed=7).generate("test_long") == task(data_seed=7).generate("test_long")


def test_different_data_seed_gives_different_problems():
    a = [p.prompt for p in task(data_seed=7).generate("test")]
    b = [p.prompt for p in task(data_seed=8).generate("test")]
    assert a != b
    assert len(set(a) & set(b)) < len(a) // 2


def test_splits_are_disjoint_and_have_requested_sizes():
    t = task(long_min_len=4, long_max_len=5)  # test_long overlaps the train lengths on purpose
    train, test, long = (t.generate(s) for s in ("train", "test", "test_long"))
    assert (len(train), len(test), len(long)) == (300, 60, 60)
    train_prompts = {p.prompt for p in train}
    assert len(train_prompts) == len(train)  # no duplicates inside a split either
    assert not train_prompts & {p.prompt for p in test}
    assert not train_prompts & {p.prompt for p in long}
    assert len({p.id for p in train}) == len(train)


def test_lengths_respect_min_max_and_long_knobs():
    t = task(min_len=2, max_len=4, long_min_len=6, long_max_len=7)
    for split, allowed in (("train", {2, 3, 4}), ("test", {2, 3, 4}), ("test_long", {6, 7})):
        lengths = [n_ops(p.prompt) for p in t.generate(split)]
        assert set(lengths) == allowed, split  # every allowed length occurs, no other
        assert all(p.meta["length"] == n_ops(p.prompt) for p in t.generate(split))


def test_generator_respects_ops_and_operand_knobs():
    t = task(ops=["*"], operand_max=3, modulus=11)
    for p in t.generate("test"):
        assert set(p.meta["ops"]) == {"*"}
        assert all(1 <= b <= 3 for b in p.meta["operands"])
        assert all(0 <= v < 11 for v in p.meta["values"])


def test_generate_rejects_unknown_split_and_impossible_counts():
    with pytest.raises(ValueError, match="unknown split"):
        task().generate("valid")
    # only 2 distinct prompts exist ("0+1", "1+1"), 5 are asked for
    t = task(min_len=1, max_len=1, ops=["+"], operand_max=1, modulus=2, n_test=5)
    with pytest.raises(ValueError, match="cannot draw 5 distinct test problems"):
        t.generate("test")


# ---------------------------------------------------------------- step oracle
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (SOLUTION_7, None),
        ("7+5=12\n12*3=36\n36-4=32\nA:32", None),  # last line may lack its newline
        ("7+5=13\n13*3=39\n39-4=35\nA:35\n", 1),  # first line wrong
        ("7+5=12\n12*3=35\n35-4=31\nA:31\n", 2),  # middle line wrong
        ("7+5=12\n12*3=36\n36-4=31\nA:31\n", 3),  # last step wrong
        ("7+5=12\n12*3=3x\n36-4=32\nA:32\n", 2),  # malformed line
        ("7+5=12\n12*4=48\n36-4=32\nA:32\n", 2),  # copy error on the operand
        ("7+5=12\n12*3=36\n36-4=32\nA:33\n", 4),  # answer line wrong: n + 1
        ("7+5=12\n12*3=36\n36-4=32\nA:32 \n", 4),  # answer line with trailing space
        ("7+5=12\n12*3=36\n", 3),  # stopped early: the missing line
        ("7+5=12\n12*3=36\n36-4=32\n", 4),  # the answer line is missing
        ("7+5=12", 2),  # unterminated but right so far, then missing
        ("", 1),
        (SOLUTION_7 + "A:32\n", 5),  # trailing extra line after a right answer: n + 2
        (SOLUTION_7 + "1", 5),
    ],
)
def test_first_error_on_hand_written_traces(p7, completion, expected):
    assert task().first_error(p7, completion) == expected


def test_corrupt_label_equals_oracle_over_many_seeds():
    t = task(min_len=2, max_len=6)
    labels = []
    for seed in range(1500):
        rng = random.Random(seed)
        p = t.make_problem(rng, rng.randint(2, 6), f"p{seed}")
        text, label = t.corrupt(p, rng)
        assert t.first_error(p, text) == label, (p, text, label)
        assert 1 <= label <= p.meta["length"] + 1
        assert text.endswith("\n")
        assert text.count("\n") == p.meta["length"] + 1  # full-length failed trace
        labels.append(label / (p.meta["length"] + 1))
    assert min(labels) < 0.3 and max(labels) == 1.0  # early and answer-line errors both occur


def test_corrupted_traces_are_rejected_by_the_verifier():
    """``corrupt`` promises a *failed* trace; a carried-forward error must not cancel out."""
    t = task(min_len=2, max_len=6)
    accepted = []
    for seed in range(3000):
        rng = random.Random(seed)
        p = t.make_problem(rng, rng.randint(2, 6), f"p{seed}")
        text, label = t.corrupt(p, rng)
        if t.reward(p, text) != 0.0:
            accepted.append((p.prompt, text, label))
    assert accepted == []


# ------------------------------------------------------------------- verifier
def test_reward_is_one_for_the_right_answer(p7):
    t = task()
    assert t.reward(p7, SOLUTION_7) == 1.0
    assert t.reward(p7, SOLUTION_7.rstrip("\n")) == 1.0
    assert t.reward(p7, "A:32\n") == 1.0  # the reward checks the outcome only
    assert t.reward(p7, "7+5=13\n13*3=39\n39-4=35\nA:35\n") == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        "36-4=32\nA: 32\n",
        "36-4=32\nA:032\n",
        "36-4=32\nA:32x\n",
        "36-4=32\nA:\n",
        "A:32\nA:32\n",  # two answer lines
        "7+5=12\n12*3=36\n36-4=32\n",  # no answer line
        "7+5=12\nA:32\n36-4=32\n",  # answer not on the last line
        "A:32\n?",
        "",
    ],
)
def test_reward_rejects_malformed_answers(p7, completion):
    assert task().reward(p7, completion) == 0.0


def test_reward_accepts_answer_zero():
    t = task()
    p = scripted(t, 3, ["-"], [3])
    assert p.answer == "0"
    assert t.reward(p, "3-3=0\nA:0\n") == 1.0
    assert t.reward(p, "3-3=0\nA:00\n") == 0.0


@pytest.mark.parametrize(
    ("text", "thoughts"),
    [
        ("7+5=12\n12*3=36\nA:36\n", ["7+5=12\n", "12*3=36\n", "A:36\n"]),
        ("7+5=12\n12*3", ["7+5=12\n", "12*3"]),
        ("\n\nA:1", ["\n", "\n", "A:1"]),
        ("", []),
    ],
)
def test_segment_keeps_newlines_and_concatenates_back(text, thoughts):
    got = task().segment(text)
    assert got == thoughts
    assert "".join(got) == text


# --------------------------------------------------------------- localisation
@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("3\n", 4, Localisation(3, True)),
        ("3", 4, Localisation(3, True)),
        (" 2\n", 4, Localisation(2, True)),
        ("9", 4, Localisation(4, True)),
        ("12\n", 4, Localisation(4, True)),
        ("0", 4, Localisation(1, True)),
        ("x", 4, Localisation(1, False)),
        ("", 4, Localisation(1, False)),
        ("-2", 4, Localisation(1, False)),
    ],
)
def test_parse_localisation_clamps_to_thoughts(text, n, expected):
    assert task().parse_localisation(text, n) == expected


def test_localisation_prompt_and_target_format(p7):
    t = task()
    failed = "7+5=13\n13*3=39\n39-4=35\nA:35\n"
    numbered = "1|7+5=13\n2|13*3=39\n3|39-4=35\n4|A:35\n"
    assert t.localisation_prompt(p7, failed) == "7+5*3-4\n" + numbered + "?"
    assert t.localisation_prompt(p7, "7+5=13") == "7+5*3-4\n1|7+5=13\n?"
    assert t.localisation_prompt(p7, "") == "7+5*3-4\n?"
    # a repair thought is numbered like any other; the target is the repaired slip
    text = "7+5=12\n12*3=35\n~12*3=36\n36-4=31\nA:31\n"
    assert t.localisation_prompt(p7, text) == (
        "7+5*3-4\n1|7+5=12\n2|12*3=35\n3|~12*3=36\n4|36-4=31\n5|A:31\n?"
    )
    # the default answer reviews the thoughts up to the first wrong one: the value each
    # wrote and its step redone; the first that differ name it
    assert t.localisation_target(t.first_error(p7, text), text, p7) == (
        "1|12=7+5=12\n2|35=12*3=36\n"
    )
    assert t.localisation_target(1, "7+5=13\n", p7) == "1|13=7+5=12\n"
    assert t.localisation_target(4, "7+5=12\n12*3=36\n36-4=32\nA:31\n", p7) == (
        "1|12=7+5=12\n2|36=12*3=36\n3|32=36-4=32\n4|31=A:32\n"  # the answer line
    )
    assert t.localisation_target(2, "7+5=12\n", p7) == "1|12=7+5=12\n2|=12*3=36\n"  # missing
    # every planted error is named back by its own review (its value always differs)
    wide = task(min_len=2, max_len=6)
    rng = random.Random(0)
    for _ in range(500):
        p = wide.make_problem(rng, rng.randint(2, 6), "p")
        failed, k = wide.corrupt(p, rng)
        n = len(wide.segment(failed))
        target = wide.localisation_target(k, failed, p)
        assert wide.parse_localisation(target, n) == Localisation(k, True), (failed, target)
    with pytest.raises(ValueError, match="pass both"):
        t.localisation_target(2, text)
    verdicts = task(localisation_answer="verdicts")
    assert verdicts.localisation_target(1) == "1-\n"
    assert verdicts.localisation_target(3) == "1+2+3-\n"
    assert verdicts.parse_localisation(verdicts.localisation_target(3), 4) == Localisation(3, True)
    index = task(localisation_answer="index")
    assert index.localisation_target(t.first_error(p7, text)) == "2\n"
    assert index.localisation_target(3) == "3\n"
    assert index.parse_localisation(index.localisation_target(3), 4) == Localisation(3, True)


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("1+2+3-\n", 5, Localisation(3, True)),
        ("1-", 5, Localisation(1, True)),
        ("1+2-3+4-\n", 5, Localisation(2, True)),  # the first thought marked wrong
        ("1+2+3+4+5+\n", 5, Localisation(5, True)),  # all right: the last (the answer line)
        ("1+2+", 5, Localisation(5, True)),  # cut short, none marked wrong: the last
        ("1+7-\n", 5, Localisation(5, True)),  # the number it wrote, clamped to [1, n]
        ("1+0-", 5, Localisation(1, True)),
        ("1+x3-", 5, Localisation(5, True)),  # verdicts read up to the first that fails
        ("+-", 5, Localisation(1, False)),
        ("1|12=7+5=12\n2|35=12*3=36\n", 5, Localisation(2, True)),  # reviewed thoughts
        ("1|12=7+5=12\n2|36=12*3=36\n3|32=36-4=32\n", 5, Localisation(5, True)),
        ("1|12=7+5=12\n2|35=12*3=36\n3|36=12*3=36\n", 5, Localisation(2, True)),
        ("1|12=7+5=12\n2|35=12*3", 5, Localisation(5, True)),  # cut short in a thought
        ("1|3=A:4\n", 5, Localisation(1, True)),
        ("3|31=36-4=32\n", 5, Localisation(3, True)),  # the number it wrote
        ("1|12=7+5=12\n9|31=36-4=32\n", 5, Localisation(5, True)),  # clamped
    ],
)
def test_parse_verdicts_names_the_first_thought_marked_wrong(text, n, expected):
    assert task().parse_localisation(text, n) == expected


# ---------------------------------------------------------------- data files
def test_write_data_round_trips_through_read_jsonl(tmp_path):
    t = task()
    paths = t.write_data(tmp_path / "data")
    assert set(paths) == {"train", "test", "test_long"}
    for split, path in paths.items():
        assert path == tmp_path / "data" / f"{split}.jsonl"
        assert read_jsonl(path) == t.generate(split)
    on_disk = ChainsTask(t.cfg, tmp_path / "data")
    assert on_disk.load("test") == t.generate("test")
    p = on_disk.load("test")[0]
    assert on_disk.reward(p, t.solution(p)) == 1.0


def test_truncated_jsonl_line_raises_data_error_naming_file_and_line(tmp_path):
    t = task()
    path = tmp_path / "test.jsonl"
    write_jsonl(path, t.generate("test")[:3])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    with pytest.raises(DataError, match=re.escape(f"{path}:3:")):
        read_jsonl(path)


def test_record_missing_a_field_raises_data_error_with_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "a", "prompt": "1+1\n", "answer": "2"})
    path.write_text(good + "\n\n" + json.dumps({"id": "b", "prompt": "1+2\n"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3:")):
        read_jsonl(path)
    path.write_text(good + "\n[1, 2]\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2:")):
        read_jsonl(path)


def test_non_utf8_line_raises_data_error_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "a", "prompt": "1+1\n", "answer": "2"}).encode()
    path.write_bytes(good + b"\n" + good[:10] + b"\xff\xfe" + good[10:] + b"\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2")):
        read_jsonl(path)


def test_missing_data_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ChainsTask(ChainsTaskConfig(), tmp_path).load("train")


def test_corrupt_terminates_when_every_upstream_error_cancels():
    # mod 10, "*5*2" maps every value to 0: no error before the answer line can show
    task = ChainsTask(ChainsTaskConfig(modulus=10))
    problem = Problem(
        "x",
        "3*5*2\n",
        "0",
        {"ops": ["*", "*"], "operands": [5, 2], "values": [3, 5, 0], "length": 2},
    )
    rng = random.Random(1)
    for _ in range(50):
        text, k = task.corrupt(problem, rng)
        assert task.reward(problem, text) == 0.0
        assert task.first_error(problem, text) == k


# -------------------------------------------------------------------- repairs
REPAIRED_7 = "7+5=12\n12*3=35\n~12*3=36\n36-4=32\nA:32\n"  # slip at 2, repaired by 3


@pytest.mark.parametrize(
    ("completion", "first_wrong", "unrepaired", "repairs", "reward"),
    [
        (SOLUTION_7, None, None, 0, 1.0),
        (REPAIRED_7, 2, None, 1, 1.0),  # a repaired slip: still the first wrong thought
        (REPAIRED_7.rstrip("\n"), 2, None, 1, 1.0),
        ("7+5=12\n12*4=48\n~12*3=36\n36-4=32\nA:32\n", 2, None, 1, 1.0),  # a copy error
        ("7+5=13\n~7+5=12\n12*3=35\n~12*3=36\n36-4=32\nA:32\n", 1, None, 2, 1.0),
        ("7+5=12\n12*3=36\n36-4=31\n~36-4=32\nA:32\n", 3, None, 1, 1.0),  # the last step
        # a wrong repair: the redo is itself wrong
        ("7+5=12\n12*3=35\n~12*3=37\n37-4=33\nA:33\n", 2, 2, 0, 0.0),
        # a repair whose arithmetic is right but not of the step (wrong operand copied)
        ("7+5=12\n12*3=35\n~12*4=48\n36-4=32\nA:32\n", 2, 2, 0, 0.0),
        # a repair of a right line is a wrong thought, even with the right answer after it
        ("7+5=12\n~7+5=12\n12*3=36\n36-4=32\nA:32\n", 2, 2, 0, 0.0),
        # a repair after a carried line: it redoes the slip and supersedes the lines since
        ("7+5=12\n12*3=35\n35-4=31\n~12*3=36\n36-4=32\nA:32\n", 2, None, 1, 1.0),
        ("7+5=13\n13*3=39\n39-4=35\n~7+5=12\n12*3=36\n36-4=32\nA:32\n", 1, None, 1, 1.0),
        # a redo of the carried line, not of the slip, is a wrong repair
        ("7+5=12\n12*3=35\n35-4=31\n~36-4=32\nA:32\n", 2, 2, 0, 0.0),
        # only the pending slip can be repaired: once repaired, a second repair is wrong
        ("7+5=12\n12*3=35\n~12*3=36\n36-4=32\n~12*3=36\nA:32\n", 2, 5, 1, 0.0),
        # a wrong answer line ends the chance: a slip pending there stays unrepaired
        ("7+5=12\n12*3=35\n35-4=31\nA:31\n~12*3=36\n36-4=32\nA:32\n", 2, 2, 0, 0.0),
        # a repair of a repair, of the answer line, as the first thought
        ("7+5=12\n12*3=35\n~12*3=36\n~12*3=36\n36-4=32\nA:32\n", 2, 4, 1, 0.0),
        ("7+5=12\n12*3=36\n36-4=32\nA:31\n~A:32\n", 4, 4, 0, 0.0),
        ("~7+5=12\n12*3=36\n36-4=32\nA:32\n", 1, 1, 0, 0.0),
        # an early answer line cannot be repaired into a step
        ("7+5=12\nA:32\n~12*3=36\n36-4=32\nA:32\n", 2, 2, 0, 0.0),
        # repaired, then a later unrepaired slip: the localisation target is the first slip
        ("7+5=12\n12*3=35\n~12*3=36\n36-4=31\nA:31\n", 2, 4, 1, 0.0),
        # repaired, then stopped early: the missing line is unrepaired
        ("7+5=12\n12*3=35\n~12*3=36\n", 2, 4, 1, 0.0),
    ],
)
def test_repairs_under_the_oracle_and_the_verifier(
    p7, completion, first_wrong, unrepaired, repairs, reward
):
    t = task()
    reading = t.read(p7, completion)
    assert reading.first_wrong == first_wrong == t.first_error(p7, completion)
    assert reading.unrepaired == unrepaired
    assert reading.repairs == repairs
    assert reading.repair_thoughts == completion.count("~")
    assert t.reward(p7, completion) == reward


def test_blind_repair_of_every_line_scores_zero():
    """Writing every step and then "repairing" it (a free second try) is never rewarded."""
    t = task(min_len=2, max_len=6)
    for seed in range(300):
        rng = random.Random(seed)
        p = t.make_problem(rng, rng.randint(2, 6), f"p{seed}")
        steps = t.solution_lines(p)
        blind = "".join(line + "~" + line for line in steps[:-1]) + steps[-1]
        assert t.reward(p, blind) == 0.0
        assert t.read(p, blind).first_wrong == 2  # the first repair of a right line
        # a slip then a blind repair of every later (right) line fails as well
        text, k = t.repaired(p, rng)
        lines = t.segment(text)
        tail = "".join(ln + "~" + ln for ln in lines[k + 1 : -1])
        if tail:
            assert t.reward(p, "".join(lines[: k + 1]) + tail + lines[-1]) == 0.0


def test_repaired_demonstrations_parse_back_with_the_oracle():
    t = task(min_len=2, max_len=6)
    slips, delays = [], []
    for seed in range(1500):
        rng = random.Random(seed)
        p = t.make_problem(rng, rng.randint(2, 6), f"p{seed}")
        text, k = t.repaired(p, rng)
        reading = t.read(p, text)
        assert reading == type(reading)(k, None, 1, 1), (p, text, k)
        assert t.first_error(p, text) == k
        assert t.reward(p, text) == 1.0
        assert set(text) <= set(t.alphabet)
        lines = t.segment(text)
        at = next(i for i, line in enumerate(lines) if line.startswith("~"))
        assert lines[at] == "~" + t.solution_lines(p)[k - 1]  # the repair redoes the slip
        assert lines[k - 1] != t.solution_lines(p)[k - 1]
        assert k <= at <= p.meta["length"]  # after the slip and its carried lines
        assert "".join(lines[: k - 1] + lines[at + 1 :]) == "".join(
            t.solution_lines(p)[: k - 1] + t.solution_lines(p)[k:]
        )  # everything else is the reference solution
        # without its repair line the demonstration is a failed trace: slip at k
        cut = "".join(lines[:at] + lines[at + 1 :])
        assert t.first_error(p, cut) == k
        slips.append(k / p.meta["length"])
        delays.append(at - k)
    assert min(slips) < 0.3 and max(slips) == 1.0  # early and last-step slips both occur
    assert delays.count(0) > 300 and max(delays) >= 4  # at once, and after carried lines
    # repair_max_delay 0: every repair comes in the next thought
    t0 = task(min_len=2, max_len=6, repair_max_delay=0)
    rng = random.Random(0)
    for _ in range(200):
        p = t0.make_problem(rng, rng.randint(2, 6), "p")
        text, k = t0.repaired(p, rng)
        assert t0.segment(text)[k].startswith("~")


def test_repair_mark_is_in_the_tokenizer_vocabulary():
    from creditbench.model import build_char_tokenizer

    tok = build_char_tokenizer(ChainsTask.alphabet)
    ids = tok(REPAIRED_7, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert len(ids) == len(REPAIRED_7)
    assert tok.decode(ids) == REPAIRED_7
