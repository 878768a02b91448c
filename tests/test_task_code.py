"""The ``code`` task: MBPP and HumanEval records from local files, programs checked in the
sandbox (never in this process), thoughts as lines, and its config."""

from __future__ import annotations

import json

import pytest

from creditbench.config import ConfigError, experiment_from_dict
from creditbench.tasks import DataError, make_task
from creditbench.tasks.code import code_span, extract_code

MBPP = [
    {
        "task_id": 2,
        "text": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == set((3, 4))",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {  # the sanitized variant: `prompt` and `test_imports`
        "task_id": 3,
        "prompt": "Write a python function to identify non-prime numbers.",
        "code": "import math\ndef is_not_prime(n):\n    return any(n % i == 0 for i in range(2, int(math.sqrt(n)) + 1))",
        "test_imports": ["import math"],
        "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"],
    },
]

HUMANEVAL = [
    {
        "task_id": "HumanEval/0",
        "prompt": (
            "from typing import List\n\n\n"
            "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
            '    """ Check if any two numbers are closer than threshold. {braces stay}\n'
            "    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n"
            '    """\n'
        ),
        "canonical_solution": (
            "    for i, a in enumerate(numbers):\n"
            "        for j, b in enumerate(numbers):\n"
            "            if i != j and abs(a - b) < threshold:\n"
            "                return True\n"
            "    return False\n"
        ),
        "test": (
            "def check(candidate):\n"
            "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n"
            "    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n"
        ),
        "entry_point": "has_close_elements",
    }
]

SIMILAR_OK = (
    "The shared elements are the intersection of the two sets.\n\n"
    "```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n```\n"
)
SIMILAR_WRONG = "```python\ndef similar_elements(a, b):\n    return tuple(set(a) | set(b))\n```\n"
CLOSE_OK = (
    "```python\nfrom typing import List\n\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
    "               for j, b in enumerate(numbers) if i != j)\n```"
)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(tmp_path):
    return {
        "mbpp": _write_jsonl(tmp_path / "mbpp.jsonl", MBPP),
        "humaneval": _write_jsonl(tmp_path / "humaneval.jsonl", HUMANEVAL),
    }


def _task(files, data_dir=None, **task):
    section = {
        "name": "code",
        "train": {"source": str(files["mbpp"])},
        "test": {"source": str(files["humaneval"])},
        **task,
    }
    cfg = experiment_from_dict({"task": section, "model": {"path": "org/model"}})
    return make_task(cfg.task, data_dir)


# ------------------------------------------------------------------------- data
def test_mbpp_and_humaneval_records_become_problems_with_their_tests(files):
    task = _task(files)
    train, test = task.load("train"), task.load("test")
    assert [p.id for p in train] == ["mbpp/2", "mbpp/3"]
    p = train[0]
    assert p.prompt.startswith("You are an expert Python programmer, and here is your task: ")
    assert MBPP[0]["test_list"][0] in p.prompt and "```python" in p.prompt
    assert p.meta["entry_point"] == "similar_elements" and p.meta["format"] == "mbpp"
    assert p.meta["tests"] == "\n".join(MBPP[0]["test_list"]) + "\n"
    assert train[1].meta["tests"].startswith("import math\n")  # test_imports first
    (h,) = test
    assert h.id == "HumanEval/0" and h.meta["format"] == "humaneval"
    assert HUMANEVAL[0]["prompt"].rstrip() in h.prompt  # braces in the docstring stay
    assert h.meta["header"] == "from typing import List\n\n\n"
    assert h.meta["tests"].endswith("check(has_close_elements)\n")
    assert h.answer == HUMANEVAL[0]["prompt"] + HUMANEVAL[0]["canonical_solution"]


def test_json_and_parquet_files_load_like_jsonl(files, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "he.json").write_text(json.dumps(HUMANEVAL))
    pq.write_table(pa.Table.from_pylist(HUMANEVAL), tmp_path / "he.parquet")
    expected = _task(files).load("test")
    for name in ("he.json", "he.parquet"):
        task = _task(files, test={"source": str(tmp_path / name)})
        assert [(p.id, p.prompt, p.meta["tests"]) for p in task.load("test")] == [
            (p.id, p.prompt, p.meta["tests"]) for p in expected
        ]


def test_written_data_loads_back_identically(files, tmp_path):
    task = _task(files)
    paths = task.write_data(tmp_path / "data")
    assert sorted(paths) == ["test", "train"]
    again = _task(files, data_dir=tmp_path / "data")
    for split in ("train", "test"):
        assert again.load(split) == task.load(split)


def test_limit_draws_a_seeded_subsample(files):
    a = _task(files, train={"source": str(files["mbpp"]), "limit": 1})
    b = _task(files, train={"source": str(files["mbpp"]), "limit": 1})
    assert len(a.load("train")) == 1 and a.load("train") == b.load("train")


def test_malformed_records_name_the_file_and_line(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(MBPP[0]) + "\n\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:3: neither an MBPP record"):
        _task(files, train={"source": str(bad)}).load("train")
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: invalid JSON"):
        _task(files, train={"source": str(bad)}).load("train")
    with pytest.raises(DataError, match="does not exist"):
        _task(files, train={"source": str(tmp_path / "missing.jsonl")}).load("train")


# ---------------------------------------------------------------------- rewards
def test_correct_solution_is_rewarded_one(files):
    task = _task(files)
    p = task.load("train")[0]
    assert task.reward(p, SIMILAR_OK) == 1.0
    assert task.last_result.ok and task.last_result.reason is None
    assert task.reward(p, task.solution(p)) == 1.0  # the reference as a completion
    p3 = task.load("train")[1]
    assert task.reward(p3, task.solution(p3)) == 1.0


def test_wrong_solution_is_rewarded_zero_with_the_reason(files):
    task = _task(files)
    p = task.load("train")[0]
    assert task.reward(p, SIMILAR_WRONG) == 0.0
    details = task.reward_details(p, SIMILAR_WRONG)
    assert (details.ok, details.reason) == (False, "exit_code")
    assert "AssertionError" in details.stderr
    assert task.reward(p, "I do not know.") == 0.0  # no code: the raw text fails to compile
    assert task.last_result.reason == "syntax"


def test_hostile_solution_is_rewarded_zero_with_timeout(files):
    task = _task(files, timeout_s=1.0)
    p = task.load("train")[0]
    hostile = "```python\ndef similar_elements(a, b):\n    while True:\n        pass\n```"
    assert task.reward(p, hostile) == 0.0
    assert task.last_result.reason == "timeout"
    assert task.last_result.seconds < 3.0
    network = "```python\nimport urllib.request\nurllib.request.urlopen('http://example.com')\n```"
    assert task.reward(p, network) == 0.0
    assert task.last_result.reason == "blocked: network"


def test_early_exit_is_not_a_pass(files):
    task = _task(files)
    p = task.load("train")[0]
    assert task.reward(p, "```python\nimport sys\nsys.exit(0)\n```") == 0.0
    assert task.last_result.reason == "early_exit"


def test_humaneval_function_or_continuation_passes(files):
    task = _task(files)
    (p,) = task.load("test")
    assert task.reward(p, CLOSE_OK) == 1.0
    body_only = "```python\n" + HUMANEVAL[0]["canonical_solution"] + "```"
    assert task.reward(p, body_only) == 1.0  # appended to the function's prompt
    # without its own import: the prompt's header (typing.List) comes first
    no_import = CLOSE_OK.replace("from typing import List\n\n", "")
    assert task.reward(p, no_import) == 1.0
    assert task.reward(p, task.solution(p)) == 1.0
    assert task.reward(p, CLOSE_OK.replace("< threshold", "> threshold")) == 0.0


# ---------------------------------------------------------------- code blocks
def test_code_is_extracted_from_the_last_python_block():
    text = "Try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\nOutput:\n```text\n3\n```\n"
    assert extract_code(text) == "x = 2\n"
    both = "```python\ndef f():\n    return 1\n```\nUsage:\n```python\nprint(f())\n```"
    assert extract_code(both, "f") == "def f():\n    return 1\n"  # the block defining f
    assert extract_code(both) == "print(f())\n"
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    assert extract_code("def f(): return 1") == "def f(): return 1"  # no fence: the text
    span = code_span(SIMILAR_OK)
    assert SIMILAR_OK[span[0] : span[1]].startswith("def similar_elements")


def test_answer_span_is_the_program(files):
    task = _task(files)
    start, end = task.answer_span(SIMILAR_OK)
    assert SIMILAR_OK[start:end] == extract_code(SIMILAR_OK)
    assert task.answer_span("no code here") is None


# -------------------------------------------------------------------- thoughts
def test_thoughts_are_lines_and_concatenate_to_the_completion(files):
    task = _task(files)
    text = "\nPlan:\n\n```python\ndef f():\n    return 1\n```"
    thoughts = task.segment(text)
    assert "".join(thoughts) == text
    assert thoughts == ["\nPlan:\n\n", "```python\n", "def f():\n", "    return 1\n", "```"]
    capped = _task(files, max_thoughts=2).segment(text)
    assert len(capped) == 2 and "".join(capped) == text


def test_localisation_prompt_numbers_lines_and_parses_a_boxed_line(files):
    task = _task(files)
    p = task.load("train")[0]
    prompt = task.localisation_prompt(p, SIMILAR_WRONG)
    assert "1: ```python" in prompt and "3:     return tuple(set(a) | set(b))" in prompt
    assert p.meta["problem"] in prompt
    assert task.parse_localisation("The bug is here: \\boxed{3}", 4).thought == 3
    assert task.parse_localisation("\\boxed{9}", 4).thought == 4
    loc = task.parse_localisation("line three", 4)
    assert (loc.thought, loc.parsed) == (1, False)
    assert "Attempt A" in task.revision_prompt(p, SIMILAR_WRONG, SIMILAR_OK)


def test_testbed_only_features_are_absent_with_a_reason(files):
    task = _task(files)
    assert getattr(task, "first_error", None) is None  # SRPO's feature test
    with pytest.raises(AttributeError, match="no step oracle"):
        task.first_error  # noqa: B018
    with pytest.raises(AttributeError, match="warm_start.skill_steps: 0"):
        task.corrupt  # noqa: B018
    with pytest.raises(AttributeError, match="set model.path"):
        task.alphabet  # noqa: B018


# ---------------------------------------------------------------------- config
def test_config_validates_the_code_section(files):
    good = {
        "name": "code",
        "train": {"source": "org/mbpp", "config": "full"},
        "test": {"source": "x.jsonl"},
    }
    cfg = experiment_from_dict({"task": good}).task
    assert (cfg.train.source, cfg.train.config, cfg.timeout_s) == ("org/mbpp", "full", 5.0)
    assert set(cfg.prompt_template) == {"mbpp", "humaneval"}
    custom = experiment_from_dict(
        {"task": {**good, "prompt_template": {"mbpp": "Solve: {problem}"}}}
    )
    assert custom.task.prompt_template["mbpp"] == "Solve: {problem}"
    assert custom.task.prompt_template["humaneval"] == cfg.prompt_template["humaneval"]
    bad = [
        ({**good, "train": {"source": "not a source"}}, "task.train.source"),
        ({**good, "prompt_template": {"mbpp": "no placeholder"}}, "must contain '{problem}'"),
        ({**good, "prompt_template": {"java": "{problem}"}}, "'mbpp' or 'humaneval'"),
        ({**good, "timeout_s": 0}, "task.timeout_s"),
        ({**good, "sandbox": True}, "task.sandbox"),
        ({"name": "code", "train": {"source": "x.jsonl"}}, "task.test"),
    ]
    for section, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            experiment_from_dict({"task": section})


# ------------------------------------------------------------ rewards not gamed
# One problem in both formats: the training reward (CodeTask.reward) and the code suites'
# scoring function (experiments/tasks/code/utils.py: process_results, as lm-eval calls it)
# must give every gaming program 0 and every honest one 1.
ADD_MBPP = {
    "task_id": 901,
    "text": "Write a function to add two numbers.",
    "code": "def add(a, b):\n    return a + b",
    "test_list": ["assert add(1, 2) == 3", "assert abs(add(0.5, 0.25) - 0.75) < 1e-9"],
    "test_setup_code": "",
    "challenge_test_list": [],
}
ADD_HUMANEVAL = {
    "task_id": "HumanEval/901",
    "prompt": 'def add(a, b):\n    """ The sum of a and b. """\n',
    "canonical_solution": "    return a + b\n",
    "test": (
        "def check(candidate):\n"
        "    assert candidate(1, 2) == 3\n"
        "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
    ),
    "entry_point": "add",
}
ANYTHING = (
    "class Anything:\n"
    "    def __eq__(self, other):\n        return True\n"
    "    def __ne__(self, other):\n        return False\n"
    "    def __lt__(self, other):\n        return True\n"
    "    def __sub__(self, other):\n        return self\n"
    "    def __abs__(self):\n        return 0\n"
    "    __hash__ = object.__hash__\n"
)
GAMING = {
    "result overrides __eq__": ANYTHING + "def add(a, b):\n    return Anything()\n",
    "subclass of int": (
        "class Three(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __sub__(self, other):\n        return Three(0)\n"
        "    def __abs__(self):\n        return 0\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Three(0)\n"
    ),
    "subclass of list": (
        "class Same(list):\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Same()\n"
    ),
    "gaming object inside a plain tuple": ANYTHING
    + "def add(a, b):\n    return (Anything(),)[0:1][0]\n",
    "patches builtins": (
        ANYTHING + "import builtins, json, os, sys\n"
        "real_import = builtins.__import__\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.type = lambda *a: int\n"
        "builtins.repr = lambda *a: '3'\n"
        "builtins.abs = lambda x: 0\n"
        'json.dumps = lambda *a, **k: \'["ok", ["I", "3"]]\'\n'
        "json.loads = lambda *a, **k: ['ok', ['I', '3']]\n"
        "builtins.print = lambda *a, **k: None\n"
        "sys.exit = lambda *a: None\n"
        "os._exit = lambda *a: None\n"
        "builtins.__import__ = lambda *a, **k: real_import(*a, **k)\n"
        "def add(a, b):\n    return Anything()\n"
    ),
    "shadows a builtin the tests use": (
        "def abs(x):\n    return 0\ndef add(a, b):\n    return 3\n"
    ),
    "sys.exit(0) at import": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
    "os._exit(0) at import": "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n",
    "raises SystemExit at import": "def add(a, b):\n    return 0\nraise SystemExit\n",
    "os._exit(0) in the call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "raises SystemExit(0) in the call": "def add(a, b):\n    raise SystemExit(0)\n",
    "forges the verdict and the answers": (
        "import os, sys\n"
        "def add(a, b):\n    return 3\n"
        "frame, seen = sys._getframe(), []\n"
        "while frame is not None:\n"
        "    seen += [v for v in frame.f_locals.values() if isinstance(v, (bytes, str))]\n"
        "    frame = frame.f_back\n"
        "for s in seen:\n"
        "    s = s.decode() if isinstance(s, bytes) else s\n"
        "    sys.stderr.write('\\ncreditbench-sandbox: done ' + s + '\\n')\n"
        "sys.stderr.flush()\n"
        "for fd in range(3, 64):\n"
        '    for line in (b\'["names", {"callables": ["add"]}]\\n\',\n'
        '                 b\'["ok", "x", ["I", "3"]]\\n\', b\'["bye", "x"]\\n\'):\n'
        "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\n"
        "os._exit(0)\n"
    ),
}
HONEST = {
    "sum": "def add(a, b):\n    return a + b\n",
    "an internal class, a plain result": (
        "class Acc:\n    def __init__(self):\n        self.v = 0\n"
        "    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    acc = Acc()\n    acc.v = a\n    acc.v += b\n    return acc.v\n"
    ),
    "prints and imports": (
        "import math\ndef add(a, b):\n    print('adding', a, b)\n    return math.fsum([a, b])\n"
    ),
}


def _suite_utils():
    """The code suites' utils module, loaded from its file as lm-eval loads it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "tasks" / "code" / "utils.py"
    spec = importlib.util.spec_from_file_location("cb_code_utils_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _both_rewards(files, program: str) -> dict[str, float]:
    """The program's reward as training and as the code suites give it, in both formats."""
    task = _task(files, timeout_s=5.0)
    utils = _suite_utils()
    response = f"```python\n{program}```\n"
    mbpp = task.to_problem(ADD_MBPP, "train", 0)
    humaneval = task.to_problem(ADD_HUMANEVAL, "test", 0)
    mbpp_doc = {**ADD_MBPP, **utils._mbpp(ADD_MBPP)}
    humaneval_doc = {**ADD_HUMANEVAL, **utils._humaneval(ADD_HUMANEVAL)}
    return {
        "train mbpp": task.reward(mbpp, response),
        "train humaneval": task.reward(humaneval, response),
        "suite mbpp": utils.process_results(mbpp_doc, [response])["pass@1"],
        "suite humaneval": utils.process_results(humaneval_doc, [response])["pass@1"],
    }


@pytest.mark.parametrize("name", list(GAMING))
def test_gaming_program_scores_zero_in_training_and_the_suites(files, name):
    assert _both_rewards(files, GAMING[name]) == dict.fromkeys(
        ["train mbpp", "train humaneval", "suite mbpp", "suite humaneval"], 0.0
    )


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_program_scores_one_in_training_and_the_suites(files, name):
    assert _both_rewards(files, HONEST[name]) == dict.fromkeys(
        ["train mbpp", "train humaneval", "suite mbpp", "suite humaneval"], 1.0
    )
