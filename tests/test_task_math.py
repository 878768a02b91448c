"""The ``math`` task: data from local files, the math-verify reward, the thought segmenters,
the SRPO / IBPO prompts, and the config section."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from creditbench.config import ConfigError, MathTaskConfig, experiment_from_dict
from creditbench.tasks import DataError, Problem, make_task
from creditbench.tasks import math as mathtask
from creditbench.tasks.math import MathTask, boxed_reward, gold_answer, last_boxed

GSM8K = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
        "as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "A shop sells 1,000 pens a day. How many pens does it sell in 2 days?",
        "answer": "It sells 1,000 * 2 = 2,000 pens.\n#### 2,000",
    },
    {
        "question": "What is 7 - 3?",
        "answer": "7 - 3 = 4\n#### 4",
    },
]
MATH = [
    {
        "problem": "What is $\\frac{1}{4} + \\frac{1}{4}$?",
        "solution": "We add: $\\frac14 + \\frac14 = \\frac24 = \\boxed{\\frac{1}{2}}$.",
        "level": "Level 1",
    },
    {
        "problem": "Solve $x^2 = 9$ for $x > 0$.",
        "solution": "Since $x > 0$, $x = \\boxed{3}$.",
        "level": "Level 2",
    },
]


def write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    for i, line in (raw_lines or {}).items():
        lines.insert(i, line)
    path.write_text("\n".join(lines) + "\n")
    return path


def task_for(train: dict, test: dict | None = None, **kw) -> MathTask:
    cfg = MathTaskConfig(name="math", train=train, test=test or train, **kw)
    return MathTask(cfg)


@pytest.fixture
def gsm8k_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)


@pytest.fixture
def math_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "math.jsonl", MATH)


def problem(answer: str) -> Problem:
    return Problem(id="p", prompt="q", answer=answer, meta={"question": "q"})


TASK = task_for({"source": "x.jsonl"})  # the verifier and segmenters need no data


# ========================================================================== data
def test_gsm8k_records_give_the_hash_line_answer_and_the_templated_prompt(gsm8k_file):
    task = task_for({"source": str(gsm8k_file)})
    problems = task.load("train")
    assert [p.answer for p in problems] == ["72", "2000", "4"]  # thousands separator dropped
    assert [p.id for p in problems] == ["train-0", "train-1", "train-2"]
    p = problems[0]
    assert p.prompt == task.cfg.prompt_template.replace("{question}", GSM8K[0]["question"])
    assert p.prompt.startswith("Natalia sold clips") and "</thought>" in p.prompt
    assert p.meta["question"] == GSM8K[0]["question"]
    assert p.meta["solution"] == GSM8K[0]["answer"]  # the reference solution is kept
    assert task.reward(p, "So she sold \\boxed{72} clips.") == 1.0


def test_math_records_give_the_last_boxed_answer_of_the_solution(math_file):
    task = task_for(
        {"source": str(math_file), "question_field": "problem", "answer_field": "solution"},
        prompt_template="Problem: {question} Answer in \\boxed{}.",
    )
    problems = task.load("test")
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "3"]
    assert problems[0].prompt == f"Problem: {MATH[0]['problem']} Answer in \\boxed{{}}."
    assert [p.id for p in problems] == ["test-0", "test-1"]
    assert task.reward(problems[0], "... = \\boxed{0.5}") == 1.0


def test_a_final_answer_field_is_taken_as_is_and_an_id_field_names_the_problem(tmp_path):
    path = write_jsonl(
        tmp_path / "final.jsonl",
        [{"uid": "a1", "q": "1/2?", "final": "0.5"}, {"uid": "a2", "q": "2?", "final": 2}],
    )
    task = task_for(
        {
            "source": str(path),
            "question_field": "q",
            "answer_field": "final",
            "answer_format": "final",
            "id_field": "uid",
        }
    )
    problems = task.load("train")
    assert [(p.id, p.answer) for p in problems] == [("a1", "0.5"), ("a2", "2")]
    assert "solution" not in problems[0].meta


def test_json_and_parquet_files_read_like_jsonl(tmp_path):
    import pandas as pd

    (tmp_path / "g.json").write_text(json.dumps(GSM8K))
    pd.DataFrame(GSM8K).to_parquet(tmp_path / "g.parquet")
    for name in ("g.json", "g.parquet"):
        problems = task_for({"source": str(tmp_path / name)}).load("train")
        assert [p.answer for p in problems] == ["72", "2000", "4"], name


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("a\n#### 1,234", "auto", "1234"),
        ("a\n#### 1,2", "gsm8k", "1,2"),  # not a thousands separator: kept
        ("so $\\boxed{\\frac{a}{b}}$.", "auto", "\\frac{a}{b}"),
        ("\\boxed{1} then \\boxed{2}", "boxed", "2"),
        (" 17 ", "auto", "17"),
        ("no marker", "gsm8k", None),
        ("no box", "boxed", None),
        ("\\boxed{}", "boxed", None),
    ],
)
def test_gold_answer_formats(text, fmt, expected):
    assert gold_answer(text, fmt) == expected


def test_subsampling_is_seeded_and_keeps_dataset_order(tmp_path):
    records = [{"question": f"q{i}?", "answer": f"#### {i}"} for i in range(30)]
    path = write_jsonl(tmp_path / "many.jsonl", records)

    def ids(seed):
        src = {"source": str(path), "limit": 5, "subsample_seed": seed}
        return [p.id for p in task_for(src).load("train")]

    a, b = ids(0), ids(0)
    assert a == b and len(a) == 5 and len(set(a)) == 5
    assert [int(x.split("-")[1]) for x in a] == sorted(int(x.split("-")[1]) for x in a)
    assert ids(1) != a


def test_the_data_step_writes_both_splits_and_load_reads_them_back(gsm8k_file, math_file, tmp_path):
    cfg = MathTaskConfig(
        name="math",
        train={"source": str(gsm8k_file)},
        test={"source": str(math_file), "question_field": "problem", "answer_field": "solution"},
    )
    paths = make_task(cfg).write_data(tmp_path / "data")
    assert set(paths) == {"train", "test"}
    task = make_task(cfg, tmp_path / "data")
    assert isinstance(task, MathTask)
    assert task.load("train") == MathTask(cfg).load("train")
    assert [p.answer for p in task.load("test")] == ["\\frac{1}{2}", "3"]
    assert task.suites == {"math_test": "test"}


def test_an_invalid_json_line_is_a_data_error_naming_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", GSM8K, raw_lines={2: '{"question": "x", '})
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid record"):
        task_for({"source": str(path)}).load("train")


def test_invalid_utf8_is_a_data_error_naming_the_line(tmp_path):
    path = write_jsonl(tmp_path / "bytes.jsonl", GSM8K[:1])
    path.write_bytes(path.read_bytes() + b'{"question": "\xff", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match=r"bytes\.jsonl:2: invalid record \(UnicodeDecodeError"):
        task_for({"source": str(path)}).load("train")


def test_a_missing_field_is_a_data_error_naming_file_line_and_setting(tmp_path):
    records = [GSM8K[0], {"question": "x?"}, GSM8K[1]]
    path = write_jsonl(tmp_path / "miss.jsonl", records, raw_lines={1: ""})  # a blank line
    with pytest.raises(
        DataError, match=r"miss\.jsonl:3: no 'answer' \(task\.train\.answer_field\)"
    ):
        task_for({"source": str(path)}).load("train")


def test_an_answer_without_the_configured_marker_is_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "nomark.jsonl", [{"question": "x?", "answer": "42"}])
    with pytest.raises(DataError, match=r"nomark\.jsonl:1: no gold answer .* 'gsm8k'"):
        task_for({"source": str(path), "answer_format": "gsm8k"}).load("train")


def test_an_empty_question_and_a_missing_file_are_data_errors(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"question": " ", "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"empty\.jsonl:1: 'question' must be a non-empty"):
        task_for({"source": str(path)}).load("train")
    with pytest.raises(DataError, match="does not exist"):
        task_for({"source": str(tmp_path / "nope.jsonl")}).load("train")


# ======================================================================== reward
@pytest.mark.parametrize(
    ("gold", "completion"),
    [
        ("0.5", "Half of it: \\boxed{\\frac12}."),
        ("0.5", "$\\boxed{\\dfrac{1}{2}}$"),
        ("\\frac{1}{2}", "The answer is \\boxed{0.5}"),
        ("\\frac{1}{2}", "\\boxed{1/2}"),
        ("72", "48 + 24 = 72</thought>\n\\boxed{72}</thought>"),
        ("72", "\\boxed{72.0}"),
        ("2000", "\\boxed{2,000}"),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}"),
        ("3", "so \\boxed{x = 3}"),
        ("4", "first \\boxed{5}, no wait: \\boxed{4}"),  # the last box counts
    ],
)
def test_a_correct_boxed_answer_in_any_equivalent_form_scores_1(gold, completion):
    assert TASK.reward(problem(gold), completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{13}",  # wrong
        "the answer is 12",  # no box
        "",
        "\\boxed{12} and then \\boxed{13}",  # the last box is the answer
        "\\boxed{12",  # never closed
        "\\boxed{12} then \\boxed{1",  # the last box is never closed
        "\\boxed{}",
        "\\boxed{\\frac{1}{}",
        "\\boxed{1\ud800}",  # a lone surrogate: not valid unicode
        "\\boxed{\ufffd\ufffd}",  # replacement characters from undecodable bytes
        "\\boxed{\x00}",
        "\\boxed{" + "(" * 500 + "}",
    ],
)
def test_a_wrong_missing_or_malformed_answer_scores_0_and_never_raises(completion):
    assert TASK.reward(problem("12"), completion) == 0.0


def test_answer_span_is_the_content_of_the_last_box():
    text = "a \\boxed{1} b \\boxed{\\frac{1}{2}}."
    start, end = TASK.answer_span(text)
    assert text[start:end] == "\\frac{1}{2}"
    assert TASK.answer_span("no box") is None
    assert TASK.answer_span("\\boxed{}") is None
    assert last_boxed("x \\boxed {7}") == "7"


# ==================================================================== segmenters
def seg(segmenter: str, text: str, **kw) -> list[str]:
    task = task_for({"source": "x.jsonl"}, segmenter=segmenter, **kw)
    thoughts = task.segment(text)
    assert "".join(thoughts) == text  # the concatenation invariant
    return thoughts


def test_stop_segmenter_ends_a_thought_with_the_pattern_kept():
    text = (
        "First, 48/2 = 24.</thought>\nThen 48 + 24 = 72.</thought>\n"
        "So the answer is \\boxed{72}.</thought>\n"
    )
    assert seg("stop", text) == [
        "First, 48/2 = 24.</thought>",
        "\nThen 48 + 24 = 72.</thought>",
        "\nSo the answer is \\boxed{72}.</thought>\n",  # trailing blank joins the last
    ]


def test_stop_segmenter_keeps_unterminated_text_as_a_last_thought():
    assert seg("stop", "a</thought> b") == ["a</thought>", " b"]
    assert seg("stop", "no pattern at all") == ["no pattern at all"]
    assert seg("stop", "") == []
    assert seg("stop", "x<step>y<step>", stop_pattern="<step>") == ["x<step>", "y<step>"]


def test_stop_segmenter_caps_thoughts_at_max_thoughts():
    text = "".join(f"s{i}</thought>" for i in range(1, 26))
    thoughts = seg("stop", text)
    assert len(thoughts) == 20  # SRPO's default cap
    assert thoughts[18] == "s19</thought>"
    assert thoughts[19] == "".join(f"s{i}</thought>" for i in range(20, 26))
    assert len(seg("stop", text, max_thoughts=3)) == 3


def test_lines_segmenter_splits_on_newlines_and_joins_the_final_answer_line():
    gsm8k = (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "#### 72"
    )
    assert seg("lines", gsm8k) == [
        "Natalia sold 48/2 = 24 clips in May.\n",
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
    ]
    boxed = "\nStep 1: 2 + 2 = 4\n\nStep 2: 4 * 3 = 12\nThe answer is \\boxed{12}.\n"
    assert seg("lines", boxed) == [
        "\nStep 1: 2 + 2 = 4\n\n",  # blank lines join a neighbour
        "Step 2: 4 * 3 = 12\nThe answer is \\boxed{12}.\n",
    ]
    assert seg("lines", "a\nb\nc") == ["a\n", "b\n", "c"]  # no answer line: no join
    assert seg("lines", "\\boxed{1}") == ["\\boxed{1}"]
    assert seg("lines", "a\r\nb") == ["a\r\n", "b"]  # "\n" only ends a line


def test_sentences_segmenter_splits_lines_and_sentence_ends_and_merges_short_pieces():
    text = (
        "We need the sum of the two fractions. Both have the denominator four. "
        "So $\\frac14 + \\frac14 = 0.5$. Dr. Smith agrees with this.\n"
        "Ok.\n"
        "The final answer is therefore $\\boxed{\\frac{1}{2}}$."
    )
    assert seg("sentences", text) == [
        "We need the sum of the two fractions.",
        " Both have the denominator four.",
        " So $\\frac14 + \\frac14 = 0.5$.",
        " Dr. Smith agrees with this.\n",  # "Dr." ends no sentence
        "Ok.\nThe final answer is therefore $\\boxed{\\frac{1}{2}}$.",  # short piece joins next
    ]


def test_sentences_segmenter_never_splits_inside_math_and_joins_a_short_tail():
    text = "Let $a = 1. B$ be the value of the thing here. Done."
    assert seg("sentences", text) == ["Let $a = 1. B$ be the value of the thing here. Done."]
    assert seg("sentences", "A long enough first sentence. Short.", min_thought_chars=20) == [
        "A long enough first sentence. Short."
    ]
    assert seg("sentences", "A long enough first sentence. Short.", min_thought_chars=0) == [
        "A long enough first sentence.",
        " Short.",
    ]
    assert seg("sentences", "") == []
    abbreviation = "This works in many cases, e.g. Alpha and Beta. And in one more case here."
    assert seg("sentences", abbreviation, min_thought_chars=0) == [
        "This works in many cases, e.g. Alpha and Beta.",
        " And in one more case here.",
    ]


# ================================================================= localisation
FAILED = "2 + 2 = 5.</thought>\nSo the answer is \\boxed{5}.</thought>"


def test_localisation_prompt_lists_the_steps_as_the_srpo_code_and_asks_for_a_box():
    """Layout of Ankur-Samanta/SRPO ``thought_ics_agent_loop.py::_localize_error``: the
    chain as ``Step i: <thought>`` lines, the stop pattern removed, a boxed step number."""
    p = Problem(id="p", prompt="templated", answer="4", meta={"question": "What is 2 + 2?"})
    prompt = TASK.localisation_prompt(p, FAILED)
    assert "Problem: What is 2 + 2?" in prompt and "templated" not in prompt
    assert "\nStep 1: 2 + 2 = 5.\nStep 2: So the answer is \\boxed{5}." in prompt
    assert "</thought>" not in prompt  # the stop pattern is not shown
    assert "from 1 to 2" in prompt and "\\boxed{N}" in prompt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The first error is in step \\boxed{2}.", (2, True)),
        ("\\boxed{1}", (1, True)),
        ("maybe \\boxed{4} no: \\boxed{ 2 }", (2, True)),  # the last box
        ("\\boxed{+3}", (3, True)),  # int() reads it
        # a box outside 1..n falls back to the last "Step N" of the prose, else 1
        ("Step 2 looks fine, the error is in Step 3. \\boxed{9}", (3, True)),
        ("\\boxed{9}", (1, False)),
        ("\\boxed{0}", (1, False)),  # "no error": h = 1
        ("\\boxed{Thought 3}", (1, False)),  # not an integer, no "Step N"
        ("the first error is in step 2", (2, True)),  # no box: the prose
        ("Step 7", (1, False)),  # out of range
        ("\\boxed{two}", (1, False)),
        ("\\boxed{2", (1, False)),
        ("", (1, False)),
        ("\\boxed{\ud800}", (1, False)),
    ],
)
def test_parse_localisation_as_the_srpo_code_parses_it(text, expected):
    """``thought_ics_agent_loop.py::_parse_error_step``: last balanced box with an int in
    1..n, else the last "Step N" in 1..n, else 1."""
    loc = TASK.parse_localisation(text, 3)
    assert (loc.thought, loc.parsed) == expected
    assert TASK.parse_localisation(TASK.localisation_target(2), 3).thought == 2


def test_revision_prompt_shows_both_attempts_and_asks_for_a_minimal_fix():
    p = Problem(id="p", prompt="templated", answer="4", meta={"question": "What is 2 + 2?"})
    prompt = TASK.revision_prompt(p, FAILED, "2 + 2 = 4.</thought>\n\\boxed{4}</thought>")
    assert prompt.index("Attempt A") < prompt.index("2 + 2 = 5.") < prompt.index("Attempt B")
    assert "What is 2 + 2?" in prompt and "\\boxed{}" in prompt
    assert "End every step with </thought>" in prompt


def test_testbed_only_parts_are_absent_and_say_which_setting_needs_them():
    assert getattr(TASK, "first_error", None) is None  # the engine's feature test
    assert not hasattr(TASK, "corrupt")
    with pytest.raises(AttributeError, match="no step oracle.*reset: oracle"):
        TASK.first_error(problem("1"), "x")
    with pytest.raises(AttributeError, match="warm_start.skill_steps"):
        TASK.corrupt(problem("1"), None)
    with pytest.raises(AttributeError, match="model.path"):
        _ = TASK.alphabet


def test_system_prompt_goes_first_in_the_chat_messages():
    task = task_for({"source": "x.jsonl"}, system_prompt="Be brief.")
    assert task.messages("hi") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert TASK.messages("hi") == [{"role": "user", "content": "hi"}]


# ======================================================================== config
def math_section(**kw) -> dict:
    return {"name": "math", "train": {"source": "t.jsonl"}, "test": {"source": "e.jsonl"}, **kw}


def test_config_fills_per_segmenter_defaults():
    cfg = experiment_from_dict({"task": math_section()})
    assert isinstance(cfg.task, MathTaskConfig)
    assert cfg.task.segmenter == "stop" and cfg.task.max_thoughts == 20
    assert "</thought>" in cfg.task.prompt_template
    lines = experiment_from_dict({"task": math_section(segmenter="lines")}).task
    assert lines.max_thoughts is None and "</thought>" not in lines.prompt_template
    again = MathTaskConfig.model_validate(lines.model_dump())  # a dumped config reloads as is
    assert again == lines
    hub = math_section(train={"source": "openai/gsm8k", "config": "main", "split": "train"})
    assert experiment_from_dict({"task": hub}).task.train.config == "main"


@pytest.mark.parametrize(
    ("section", "match"),
    [
        (math_section(segmenter="words"), r"task\.segmenter: Input should be 'stop', 'lines'"),
        (
            math_section(train={"source": "t.jsonl", "questoin_field": "q"}),
            r"task\.train\.questoin_field: unknown key",
        ),
        (math_section(prompt_template="no placeholder"), r"task\.prompt_template: .*\{question\}"),
        (math_section(train={"source": "t.csv"}), r"task\.train\.source: .*neither a local"),
        (math_section(max_thoughts=0), r"task\.max_thoughts: Input should be greater than 0"),
        ({"name": "math", "train": {"source": "t.jsonl"}}, r"task\.test: Field required"),
    ],
)
def test_a_bad_math_task_field_is_a_config_error_naming_the_key(section, match):
    with pytest.raises(ConfigError, match=match):
        experiment_from_dict({"task": section})


def test_gsm8k_style_completions_are_read_from_their_answer_line(tmp_path):
    from creditbench.tasks import Problem
    from creditbench.tasks.math import gsm8k_reward

    p = Problem(id="0", prompt="q", answer="1280")
    assert gsm8k_reward(p.answer, "48*2=96\nso 1,280 in all\n#### 1,280") == 1.0
    assert gsm8k_reward(p.answer, "#### 1280\n") == 1.0
    assert gsm8k_reward(p.answer, "#### 128") == 0.0
    assert gsm8k_reward(p.answer, "\\boxed{1280}") == 0.0  # no answer line
    assert gsm8k_reward(p.answer, "#### ") == 0.0


def test_plain_prompts_skip_the_chat_template():
    from creditbench.config import SamplingConfig
    from creditbench.model import build_char_tokenizer
    from creditbench.sampling import Sampler
    from creditbench.tasks.chains import ALPHABET

    tok = build_char_tokenizer(ALPHABET)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    chat = Sampler(None, tok, SamplingConfig()).encode_prompt("1+2")
    plain = Sampler(None, tok, SamplingConfig(), chat_template=False).encode_prompt("1+2")
    assert plain[-3:] == tok("1+2", add_special_tokens=False)["input_ids"]
    assert chat == tok("1+2=", add_special_tokens=False)["input_ids"]


# -------------------------------------------------------- verification is bounded
PATHOLOGICAL = "9^{9^{9^{9}}}"  # sympy evaluates the integer tower: minutes, GIL held


def _in_thread(fn, *args):
    """``fn(*args)`` in a thread that is not the main one, and the seconds it took."""
    out = {}

    def run():
        t = time.monotonic()
        out["value"] = fn(*args)
        out["seconds"] = time.monotonic() - t

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the check did not return within 60 s"
    return out["value"], out["seconds"]


def test_pathological_answer_scores_zero_within_the_clock_off_the_main_thread():
    """math-verify's own timeout is signal.alarm (math_verify/utils.py: ``timeout``), which
    a thread other than the main one cannot use: there the check runs in a worker process
    under math-verify's limit, and the reward is 0 within about that limit."""
    from creditbench.lmeval import score_math

    completion = f"So the answer is \\boxed{{{PATHOLOGICAL}}}."
    bound = 2 * mathtask.VERIFY_TIMEOUT_S + 5  # gold and answer parse, verify, start-up
    for fn, args in ((boxed_reward, ("1", completion)), (score_math, (completion, "1"))):
        value, seconds = _in_thread(fn, *args)
        assert value == 0.0 and seconds < bound, (fn.__name__, value, seconds)
    value, seconds = _in_thread(boxed_reward, "\\frac{1}{2}", "\\boxed{0.5}")
    assert value == 1.0


def test_a_check_that_overruns_its_deadline_is_wrong_and_the_next_one_works():
    t = time.monotonic()
    assert mathtask.verify_answers("1", PATHOLOGICAL, deadline_s=1.0) == (False, False)
    assert time.monotonic() - t < 1.0 + 2.0  # the worker is killed at the deadline
    assert mathtask.answers_match("\\frac{1}{2}", "0.5", deadline_s=30.0)
    assert mathtask.verify_answers("1", "2") == (True, False)
