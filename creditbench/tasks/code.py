"""The ``code`` task: write a Python function that passes its tests (MBPP, HumanEval, ...).

Problems come from a hub dataset or a local ``.jsonl`` / ``.json`` / ``.parquet`` file
(``task.train`` / ``task.test``). Each record is in the MBPP format (``text`` or ``prompt``,
``code``, ``test_list``, ``test_setup_code`` or ``test_imports``) or the HumanEval format
(``prompt``, ``canonical_solution``, ``test``, ``entry_point``), told apart by its fields.
A problem's prompt is the user message (``prompt_template`` of its format, the same as the
``cb_mbpp`` / ``cb_humaneval`` evaluation suites); the engine wraps it in the tokenizer's
chat template. Its ``answer`` is the dataset's reference program, its ``meta`` holds the
tests and what the program needs before the model's code (HumanEval's imports).

Verifier: the program is the completion's last closed ```python (or unlabelled) code
block, the last one defining the function under test where one does; without a closed
block, the text after an unclosed opening fence, else the whole completion. A HumanEval
block that only continues the function (no ``def`` of it) is appended to the function's
prompt. ``R(y) = 1`` iff ``creditbench.sandbox.check_program`` runs the program and the
tests to their end within the limits (``timeout_s``, ``memory_mb``), the tests seeing
only exact-typed plain data from the program (so a result that overrides ``__eq__``, a
patched builtin or an early exit never passes); anything else is 0,
and ``reward_details`` / ``last_result`` say why (``"exit_code"``, ``"timeout"``,
``"blocked: network"``...). Model code never runs in this process. A sandbox that cannot
start at all raises ``SandboxError``: an infrastructure failure is not a wrong answer.

Thoughts (methods/README.md, "Thoughts"): one line per thought, its ``"\\n"`` kept; a blank line
joins the thought before it [choice: no thought is only whitespace]; ``max_thoughts``
caps the count (later lines join the last thought). Their concatenation is the completion.

SRPO's self-localisation shows the task and the numbered lines of a failed completion and
asks for the first wrong line as ``\\boxed{k}``; IBPO's compare-and-correct prompt shows a
failed attempt and a sibling and asks for a corrected program. There is no step oracle
(``first_error``) and no error planting (``corrupt``): those exist on the ``chains``
testbed only, and asking this task for them names the run setting that needs them.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from creditbench.config import CodeTaskConfig
from creditbench.sandbox import SandboxLimits, SandboxResult, check_program
from creditbench.tasks import DataError, Problem, SourcedSplits, merge_blank, split_lines
from creditbench.tasks.chains import Localisation  # one answer type for every task

SPLITS = ("train", "test")
FORMATS = ("mbpp", "humaneval")
PYTHON_TAGS = ("", "python", "py", "python3")
CODE_BLOCK_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)
OPEN_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n")
BOXED_INT_RE = re.compile(r"\\boxed\s*\{\s*(?:line\s*)?([0-9]+)\s*\}", re.IGNORECASE)
CACHE_SIZE = 4096  # programs already run (an RL group often repeats a completion)

_TESTBED_ONLY = {
    "first_error": (
        "has no step oracle (first_error): programs are checked as a whole; use SRPO's "
        "reset 'self' or 'random', not 'oracle'"
    ),
    "corrupt": (
        "cannot plant a known error (corrupt); it is needed by the warm start's skills "
        "phase (warm_start.skill_steps > 0), warm_start.demo_error_rate > 0 and the warm "
        "start's localisation record: set warm_start.skill_steps: 0 and demo_error_rate: 0"
    ),
    "solution_lines": "has no line-by-line reference solutions (solution_lines)",
    "alphabet": (
        "has no character alphabet (alphabet); the character-level tiny model "
        "(model.path: null) is for the chains testbed: set model.path to a pretrained model"
    ),
}


# ------------------------------------------------------------------- programs
def _defines(code: str, name: str) -> bool:
    return bool(re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.MULTILINE))


def _block_spans(completion: str) -> list[tuple[int, int]]:
    """Character spans of the contents of the closed Python (or unlabelled) code blocks."""
    return [
        m.span(2) for m in CODE_BLOCK_RE.finditer(completion) if m.group(1).lower() in PYTHON_TAGS
    ]


def code_span(completion: str, entry_point: str | None = None) -> tuple[int, int] | None:
    """Where the program is: the last closed Python block (the last one defining
    ``entry_point`` when given and one does), else the text after a last unclosed
    opening fence; ``None`` when the completion has no fenced code."""
    spans = _block_spans(completion)
    if spans:
        if entry_point:
            defining = [s for s in spans if _defines(completion[s[0] : s[1]], entry_point)]
            if defining:
                return defining[-1]
        return spans[-1]
    opening = [m for m in OPEN_FENCE_RE.finditer(completion) if m.group(1).lower() in PYTHON_TAGS]
    if opening:  # cut off (or never closed): what follows the fence
        return (opening[-1].end(), len(completion))
    return None


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The program of a completion: its code block (``code_span``), else the whole text."""
    span = code_span(completion, entry_point)
    return completion if span is None else completion[span[0] : span[1]]


def tested_function(code: str, tests: list[str]) -> str:
    """MBPP's function under test: the reference's function that the tests call."""
    for name in re.findall(r"^def\s+(\w+)\s*\(", code, re.MULTILINE):
        if any(re.search(rf"\b{re.escape(name)}\s*\(", t) for t in tests):
            return name
    return ""


# ---------------------------------------------------------------------- task
class CodeTask(SourcedSplits):
    name = "code"
    thought_stop = "\n"  # a thought is one line, newline included

    def __init__(self, cfg: CodeTaskConfig, data_dir: str | Path | None = None):
        self.cfg = cfg
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.system_prompt = cfg.system_prompt
        self.suites = {cfg.suite: "test"}  # the local evaluation suite (engine backend)
        self.limits = SandboxLimits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb)
        self.last_result: SandboxResult | None = None  # of the latest reward() call
        self._cache: OrderedDict[tuple[str, str], SandboxResult] = OrderedDict()
        self._lock = threading.Lock()

    def __getattr__(self, attr: str) -> Any:
        # only reached for attributes the task does not have: getattr(task, "first_error",
        # None) stays None (the engine's feature test), a direct use gets the reason
        if attr in _TESTBED_ONLY:
            raise AttributeError(f"task 'code' {_TESTBED_ONLY[attr]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    # ------------------------------------------------------------------ data
    def format_prompt(self, fmt: str, problem: str, tests: str = "", entry_point: str = "") -> str:
        """The user message (``str.replace``: braces in code need no escaping)."""
        return (
            self.cfg.prompt_template[fmt]
            .replace("{tests}", tests)
            .replace("{entry_point}", entry_point)
            .replace("{problem}", problem)  # last: the problem's own text stays as it is
        )

    def read_source(self, split: str) -> list[Problem]:
        """The problems of ``split`` from its configured source, subsampled if asked."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        src = getattr(self.cfg, split)
        records, where = _load_records(src)
        indices = list(range(len(records)))
        if src.limit is not None and src.limit < len(indices):
            rng = random.Random(f"code-{src.subsample_seed}-{split}")
            indices = sorted(rng.sample(indices, src.limit))
        return [self.to_problem(records[i], split, i, where(i)) for i in indices]

    def to_problem(self, rec: Any, split: str, i: int, where: str = "") -> Problem:
        """One record (MBPP or HumanEval format) as a problem with its tests in ``meta``."""
        where = where or f"{split} record {i}"
        if not isinstance(rec, dict):
            raise DataError(f"{where}: a record must be an object, got {type(rec).__name__}")
        if "test_list" in rec:
            return self._mbpp(rec, split, i, where)
        if "entry_point" in rec and "test" in rec:
            return self._humaneval(rec, split, i, where)
        raise DataError(
            f"{where}: neither an MBPP record (test_list) nor a HumanEval record "
            f"(entry_point, test); the record has {sorted(rec)[:10]}"
        )

    def _mbpp(self, rec: dict, split: str, i: int, where: str) -> Problem:
        text = rec.get("text") or rec.get("prompt")
        tests, code = rec.get("test_list"), rec.get("code")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: MBPP record needs a non-empty 'text' (or 'prompt')")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise DataError(f"{where}: MBPP 'test_list' must be a non-empty list of strings")
        if not isinstance(code, str):
            raise DataError(f"{where}: MBPP record needs its reference 'code'")
        setup = rec.get("test_setup_code") or "\n".join(rec.get("test_imports") or [])
        entry = tested_function(code, tests)
        listed = "\n".join(tests)
        meta = {
            "format": "mbpp",
            "problem": text.strip(),
            "entry_point": entry,
            "header": "",
            "tests": "\n".join([setup, *tests]).strip() + "\n",
            "source": getattr(self.cfg, split).source,
            "index": i,
        }
        return Problem(
            id=_problem_id(rec, "mbpp", split, i),
            prompt=self.format_prompt("mbpp", text.strip(), listed, entry),
            answer=code,
            meta=meta,
        )

    def _humaneval(self, rec: dict, split: str, i: int, where: str) -> Problem:
        for key in ("prompt", "test", "entry_point"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise DataError(f"{where}: HumanEval record needs a non-empty {key!r}")
        prompt, entry = rec["prompt"], rec["entry_point"]
        definition = re.search(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.MULTILINE)
        meta = {
            "format": "humaneval",
            "problem": prompt,
            "entry_point": entry,
            # what the function's prompt has before it: imports and helper functions
            "header": prompt[: definition.start()] if definition else "",
            "tests": f"{rec['test']}\n\ncheck({entry})\n",
            "source": getattr(self.cfg, split).source,
            "index": i,
        }
        return Problem(
            id=_problem_id(rec, "humaneval", split, i),
            prompt=self.format_prompt("humaneval", prompt.rstrip(), "", entry),
            answer=prompt + (rec.get("canonical_solution") or ""),
            meta=meta,
        )

    def solution(self, problem: Problem) -> str:
        """The reference program as a completion in the answer format (a code block)."""
        return f"```python\n{problem.answer.strip()}\n```\n"

    # ------------------------------------------------------------- verifier
    def program(self, problem: Problem, completion: str) -> str:
        """What runs before the tests: the completion's code, after the task's header."""
        m = problem.meta
        entry = m.get("entry_point") or None
        code = extract_code(completion, entry)
        if m.get("format") == "humaneval" and entry and not _defines(code, entry):
            return m["problem"] + code  # the block continues the function's prompt
        return m.get("header", "") + code

    def reward_details(self, problem: Problem, completion: str) -> SandboxResult:
        """The sandbox's result for the completion's program with the problem's tests."""
        program, tests = self.program(problem, completion), problem.meta["tests"]
        key = (program, tests)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is None:
            cached = check_program(program, tests, self.limits)
            with self._lock:
                self._cache[key] = cached
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        self.last_result = cached
        return cached

    def reward(self, problem: Problem, completion: str) -> float:
        """1.0 iff the program passes every test in the sandbox (``reward_details``: why)."""
        return float(self.reward_details(problem, completion).ok)

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        """Character span of the final answer: the program's code block."""
        span = code_span(completion)
        return span if span is not None and span[1] > span[0] else None

    # -------------------------------------------------------------- thoughts
    def segment(self, completion: str) -> list[str]:
        """Thoughts ``y_1 .. y_n``, one per line; ``"".join(segment(y)) == y``."""
        pieces = merge_blank(split_lines(completion))  # blank lines join a neighbour
        cap = self.cfg.max_thoughts
        if cap is not None and len(pieces) > cap:
            pieces = pieces[: cap - 1] + ["".join(pieces[cap - 1 :])]
        return pieces

    # ---------------------------------------------------------- localisation
    def localisation_prompt(self, problem: Problem, completion: str) -> str:
        """SRPO: ask the policy for the first wrong line of its own failed completion."""
        thoughts = self.segment(completion)
        numbered = "\n".join(f"{k}: {t.rstrip()}" for k, t in enumerate(thoughts, 1))
        n = max(len(thoughts), 1)
        return (
            "The following answer to a programming task fails the task's tests. Its lines "
            f"are numbered from 1 to {len(thoughts)}.\n\n"
            f"Task:\n{problem.meta.get('problem', problem.prompt)}\n\n"
            f"Answer:\n{numbered}\n\n"
            "Find the first line that contains an error: wrong logic, a wrong value, or "
            "code that does not do what the task asks. Put the number of that line "
            f"(from 1 to {n}) within \\boxed{{}}."
        )

    def localisation_target(self, first_wrong: int, completion=None, problem=None) -> str:
        return f"\\boxed{{{first_wrong}}}"

    def parse_localisation(self, text: str, n_thoughts: int) -> Localisation:
        """SRPO: the last ``\\boxed{k}``, ``k`` clamped to ``[1, n]``; unparsed: ``h = 1``."""
        matches = BOXED_INT_RE.findall(text)
        if not matches:
            return Localisation(1, False)
        return Localisation(min(max(int(matches[-1]), 1), max(n_thoughts, 1)), True)

    # --------------------------------------------------------------- revision
    def revision_prompt(self, problem: Problem, failed: str, reference: str) -> str:
        """IBPO's compare-and-correct: revise ``failed`` given a sibling ``reference``."""
        return (
            f"Task:\n{problem.meta.get('problem', problem.prompt)}\n\n"
            f"Attempt A (it fails the tests):\n{failed.strip()}\n\n"
            f"Attempt B (another attempt at the same task):\n{reference.strip()}\n\n"
            "Compare the two attempts and find where attempt A goes wrong. Then write "
            "attempt A again in full, corrected: keep what is right and change only what is "
            "needed to fix it. Write the whole function in a single ```python code block."
        )


def _problem_id(rec: dict, fmt: str, split: str, i: int) -> str:
    task_id = rec.get("task_id")
    if isinstance(task_id, str) and task_id:
        return task_id  # HumanEval: "HumanEval/0"
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        return f"{fmt}/{task_id}"  # MBPP: 11 -> "mbpp/11"
    return f"{split}-{i}"


# ------------------------------------------------------------------ loading
def _load_records(src: CodeTaskConfig.CodeData) -> tuple[list[Any], Any]:
    """The records of a source, and ``where(i)``: how an error names record ``i``."""
    name = src.source.lower()
    if not name.endswith((".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")):
        return _load_hub(src)
    path = Path(src.source).expanduser()
    if not path.is_file():
        raise DataError(f"data file {src.source!r} does not exist")
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq

            records = pq.read_table(path).to_pylist()
        except Exception as e:
            raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
        return records, lambda i: f"{path}: record {i}"
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if name.endswith((".jsonl", ".jsonl.gz")):
        records, lines = [], []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e})") from None
            lines.append(lineno)
        return records, lambda i: f"{path}:{lines[i]}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a list of records")
    return data, lambda i: f"{path}: record {i}"


def _load_hub(src: CodeTaskConfig.CodeData) -> tuple[list[Any], Any]:
    name = f"{src.source!r} (config {src.config!r}, split {src.split!r})"
    try:
        from datasets import load_dataset

        records = load_dataset(src.source, src.config, split=src.split).to_list()
    except Exception as e:
        raise DataError(f"cannot load hub dataset {name}: {type(e).__name__}: {e}") from None
    return records, lambda i: f"dataset {name} record {i}"
