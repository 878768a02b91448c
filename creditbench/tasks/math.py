"""The ``math`` task: math word problems (GSM8K, MATH, ...), answers checked with math-verify.

Problems come from a hub dataset or a local ``.jsonl`` / ``.json`` / ``.parquet`` file
(``task.train`` / ``task.test``, read with ``datasets``). The gold answer is a record's
final-answer field, or the last ``\\boxed{}`` of a MATH solution, or the ``#### n`` line of
a GSM8K solution. A problem's prompt is the user message (``prompt_template`` with the
question filled in); the engine wraps it in the tokenizer's chat template.

Verifier: ``R(y) = 1`` iff the completion's *last* ``\\boxed{...}`` parses and
``math_verify.verify`` finds it equal to the gold answer (``\\frac12``, ``0.5`` and
``\\dfrac{1}{2}`` are one answer). Anything else, malformed output included, is 0; the
verifier never raises. math-verify runs in worker processes, so a pathological expression
costs at most ``VERIFY_DEADLINE_S`` of wall clock in any thread (``verify_answers``). A completion cut off by the length limit is scored 0 by the engine.

Thoughts (methods/README.md, "Thoughts"), by ``segmenter``; their concatenation is always the
completion, character for character:

- ``stop`` (SRPO): a thought ends with ``stop_pattern`` (``</thought>``, kept in the
  thought); text after the last pattern is one more thought.
- ``lines`` (VinePPO, GSM8K): one thought per line, the newline kept at its end; the
  final answer line (the last line, when it holds ``\\boxed{`` or ``####``) joins the
  step before it. [choice] VinePPO's code starts a step with the newline; we end one with
  it, as the testbed does, so a reset state ends on a complete line.
- ``sentences`` (VinePPO, MATH): lines, and sentence ends (``.``, ``!``, ``?`` followed by
  blanks and a capital letter, outside ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` math, not
  after a one- or two-letter word such as ``e.g.``); a piece with fewer than
  ``min_thought_chars`` non-blank characters joins the next one (the last, the previous).

With every segmenter a piece that is only whitespace joins its neighbour (the previous,
or the next at the start), and ``max_thoughts`` caps the count: everything from thought
``max_thoughts`` on is that one thought.

SRPO's self-localisation shows the problem and the numbered thoughts of a failed
completion and asks for the first wrong one as ``\\boxed{k}``; IBPO's compare-and-correct
prompt shows a failed attempt and a sibling and asks for a minimally edited, corrected
solution. There is no step oracle (``first_error``) and no error planting (``corrupt``):
those exist on the ``chains`` testbed only, and asking this task for them names the run
setting that needs them.
"""

from __future__ import annotations

import atexit
import json
import random
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from creditbench.config import MathDataConfig, MathTaskConfig
from creditbench.tasks import DataError, Problem, SourcedSplits, merge_blank, split_lines
from creditbench.tasks.chains import Localisation  # one answer type for every task
from creditbench.thoughts import ThoughtRules
from creditbench.utils import last_braced_span

SPLITS = ("train", "test")
BOXED_RE = re.compile(r"\\boxed\s*\{")
ANSWER_LINE_MARKERS = ("\\boxed{", "####")
INTEGER_RE = re.compile(r"[+-]?[0-9]+")  # what Python's int() reads (SRPO's parser)
STEP_RE = re.compile(r"[Ss]tep\s+([0-9]+)")
# sentence ends: . ! ? then blanks and a capital, not after a 1-2 letter word (e.g., Dr.)
SENTENCE_END_RE = re.compile(r"(?<=[.!?])(?=[ \t]+[A-Z])")
ABBREVIATION_RE = re.compile(r"(?:^|[^A-Za-z])[A-Za-z]{1,2}\.$")
MATH_SPAN_RE = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)


# ----------------------------------------------------------------- answers
def last_boxed_span(text: str) -> tuple[int, int] | None:
    """Character span of the content of the last ``\\boxed{...}`` (balanced braces).

    ``None`` when there is none, or when the last one is never closed: a malformed final
    answer is no answer, even if an earlier ``\\boxed{}`` was closed.
    """
    return last_braced_span(text, BOXED_RE)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, if there is one and it is closed."""
    span = last_boxed_span(text)
    return None if span is None else text[span[0] : span[1]]


def gold_answer(text: str, answer_format: str) -> str | None:
    """The gold answer in a record's answer field (``None`` if it has none in that format)."""
    text = text.strip()
    if answer_format == "auto":
        answer_format = "gsm8k" if "####" in text else "boxed" if BOXED_RE.search(text) else "final"
    if answer_format == "final":
        return text or None
    if answer_format == "boxed":
        answer = last_boxed(text)
        return answer.strip() or None if answer is not None else None
    # GSM8K: "#### 1,234" -> "1234" (a thousands separator only)
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", answer) or None


# ------------------------------------------------------------- verification
# math-verify bounds its parse and verify with signal.alarm, which works in a main thread
# only, and not at all while a C routine runs (sympy's integer powers: 9^{9^{9^{9}}} holds
# the GIL for minutes). So every check runs in a worker process of its own, in that
# process's main thread with math-verify's limits, and the caller waits for it on the wall
# clock: a worker that overruns ``VERIFY_DEADLINE_S`` is killed and the answer is wrong.
VERIFY_TIMEOUT_S = 5  # math-verify's own limit on each parse and verify, in the worker
VERIFY_DEADLINE_S = 20.0  # the caller's wall clock on one check, worker start included
_MAX_IDLE_WORKERS = 8
_WORKER = "from creditbench.tasks.math import _verify_worker; _verify_worker()"


def _verify_worker() -> None:
    """A worker's loop: one JSON request per line on stdin, one answer per line on stdout."""
    import sys

    from math_verify import parse, verify

    @lru_cache(maxsize=65536)  # a problem's gold is parsed once
    def parse_gold(gold: str, timeout: int):
        return parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)

    for line in sys.stdin:
        parsed = equal = False
        try:
            request = json.loads(line)
            timeout = int(request["timeout"])
            gold = parse_gold(request["gold"], timeout)
            pred = parse(f"\\boxed{{{request['predicted']}}}", parsing_timeout=timeout)
            parsed = bool(gold) and bool(pred)
            equal = parsed and bool(verify(gold, pred, timeout_seconds=timeout))
        except Exception:  # malformed output of any kind is a wrong answer
            equal = False
        sys.stdout.write(json.dumps({"parsed": parsed, "equal": equal}) + "\n")
        sys.stdout.flush()


class _Worker:
    def __init__(self):
        import os
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parents[2])  # where the creditbench package is
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # math-verify logs its timeouts
            env=env,
            start_new_session=True,  # a terminal's ^C reaches the caller, which ends it
        )
        self.buffer = b""

    def ask(self, request: dict, deadline: float) -> dict | None:
        """The worker's answer, or ``None`` (worker killed) when it overran ``deadline``."""
        import os
        import select
        import time

        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            return None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the worker died (memory, a signal)
                self.kill()
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            return None

    def kill(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


@atexit.register
def _end_workers() -> None:
    with _idle_lock:
        workers, _idle[:] = list(_idle), []
    for w in workers:
        w.kill()


def verify_answers(gold: str, predicted: str, deadline_s: float | None = None) -> tuple[bool, bool]:
    """``(parsed, equal)``: whether both answers parse, and whether math-verify finds them
    equal, within ``deadline_s`` (default ``VERIFY_DEADLINE_S``) of wall clock in any
    thread; an overrun is ``(False, False)``. Never raises."""
    import time

    deadline = time.monotonic() + (VERIFY_DEADLINE_S if deadline_s is None else deadline_s)
    with _idle_lock:
        worker = _idle.pop() if _idle else None
    try:
        if worker is None:
            worker = _Worker()
    except OSError:
        return False, False
    answer = worker.ask(
        {"gold": gold, "predicted": predicted, "timeout": VERIFY_TIMEOUT_S}, deadline
    )
    if answer is None:
        return False, False
    with _idle_lock:
        if len(_idle) < _MAX_IDLE_WORKERS:
            _idle.append(worker)
            worker = None
    if worker is not None:
        worker.kill()
    return bool(answer.get("parsed")), bool(answer.get("equal"))


def answers_match(gold: str, predicted: str, deadline_s: float | None = None) -> bool:
    """math-verify's equivalence of two answers (LaTeX or plain), bounded by the wall clock
    in every thread (``verify_answers``); never raises."""
    return verify_answers(gold, predicted, deadline_s)[1]


# --------------------------------------------------------------- segmenters
def boxed_reward(gold: str, completion: str) -> float:
    """1.0 iff the completion's last ``\\boxed{}`` equals ``gold`` (math-verify); never raises.

    The training reward, and the score of the task's own evaluation suite (``math_test``).
    """
    try:
        predicted = last_boxed(completion)
        if predicted is None or not predicted.strip():
            return 0.0
        return float(answers_match(gold, predicted))
    except Exception:
        return 0.0


def gsm8k_reward(gold: str, completion: str) -> float:
    """1.0 iff the completion's last ``#### n`` line states ``gold`` (math-verify); never raises."""
    try:
        predicted = gold_answer(completion, "gsm8k")
        return float(predicted is not None and answers_match(gold, predicted.splitlines()[0]))
    except Exception:
        return 0.0


def _merge_short(pieces: list[str], min_chars: int) -> list[str]:
    """A piece with fewer than ``min_chars`` non-blank characters joins the next one
    (the last piece joins the previous one)."""
    out: list[str] = []
    carry = ""
    for piece in pieces:
        piece = carry + piece
        if len(piece.strip()) < min_chars:
            carry = piece
        else:
            out.append(piece)
            carry = ""
    if carry:
        if out:
            out[-1] += carry
        else:
            out.append(carry)
    return out


def split_after(text: str, stop: str) -> list[str]:
    """Pieces that end right after each ``stop`` (kept); a non-empty remainder is a piece."""
    pieces, start = [], 0
    while (k := text.find(stop, start)) >= 0:
        pieces.append(text[start : k + len(stop)])
        start = k + len(stop)
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def split_sentences(text: str) -> list[str]:
    """Lines, and each line at its sentence ends outside math."""
    pieces = []
    for line in split_lines(text):
        in_math = [m.span() for m in MATH_SPAN_RE.finditer(line)]
        cuts = [
            m.start()
            for m in SENTENCE_END_RE.finditer(line)
            if not any(a < m.start() < b for a, b in in_math)
            and not ABBREVIATION_RE.search(line[: m.start()])
        ]
        bounds = [0, *cuts, len(line)]
        pieces.extend(line[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a)
    return pieces


def cap_thoughts(pieces: list[str], max_thoughts: int | None) -> list[str]:
    if max_thoughts is None or len(pieces) <= max_thoughts:
        return pieces
    return pieces[: max_thoughts - 1] + ["".join(pieces[max_thoughts - 1 :])]


# Testbed-only parts of the task interface, and the settings that ask for them.
_TESTBED_ONLY = {
    "first_error": (
        "has no step oracle (first_error); it is needed by SRPO's `reset: oracle` and by "
        "the warm start's localisation record: use `reset: self` or `reset: random`"
    ),
    "corrupt": (
        "cannot plant a known error (corrupt); it is needed by the warm start's skills "
        "phase (warm_start.skill_steps > 0), warm_start.demo_error_rate > 0 and the warm "
        "start's localisation record: set warm_start.skill_steps: 0 and demo_error_rate: 0"
    ),
    "solution": (
        "has no reference solutions in the policy's answer format (solution); it is needed "
        "by the warm start's format phase: set warm_start.steps: 0 (start from a pretrained "
        "instruct model)"
    ),
    "solution_lines": "has no reference solutions in the policy's answer format",
    "alphabet": (
        "has no character alphabet (alphabet); the character-level tiny model "
        "(model.path: null) is for the chains testbed: set model.path to a pretrained model"
    ),
}


class MathTask(SourcedSplits):
    name = "math"

    def __init__(self, cfg: MathTaskConfig, data_dir: str | Path | None = None):
        self.cfg = cfg
        self.data_dir = Path(data_dir) if data_dir is not None else None
        # the thought stop pattern (SRPO); None: thoughts are found in text afterwards
        self.thought_stop = cfg.stop_pattern if cfg.segmenter == "stop" else None
        # generated thought by thought where a thought ends with a stop pattern (SRPO)
        self.thought_rules = (
            ThoughtRules(
                delimiter=cfg.stop_pattern,
                max_thought_tokens=cfg.max_thought_tokens,
                max_thoughts=cfg.max_thoughts,
                answer_marker=cfg.answer_marker,
            )
            if self.thought_stop
            else None
        )
        self.stop_strings = list(cfg.stop_strings)  # end every rollout (VinePPO)
        self.system_prompt = cfg.system_prompt
        # the local evaluation suite (engine sampler backend) on the test split
        self.suites = {cfg.suite: "test"}

    def __getattr__(self, attr: str) -> Any:
        # only reached for attributes the task does not have: getattr(task, "first_error",
        # None) stays None (the engine's feature test), a direct use gets the reason
        if attr in _TESTBED_ONLY:
            raise AttributeError(f"task 'math' {_TESTBED_ONLY[attr]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    # ------------------------------------------------------------------ data
    def format_prompt(self, question: str) -> str:
        """The user message of a problem (``str.replace``: LaTeX braces need no escaping)."""
        return self.cfg.prompt_template.replace("{question}", question)

    def read_source(self, split: str) -> list[Problem]:
        """The problems of ``split`` from its configured source, subsampled if asked."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        src: MathDataConfig = getattr(self.cfg, split)
        dataset, where = _load_records(src)
        indices = list(range(len(dataset)))
        if src.limit is not None and src.limit < len(indices):
            rng = random.Random(f"math-{src.subsample_seed}-{split}")
            indices = sorted(rng.sample(indices, src.limit))
            dataset = dataset.select(indices)
        records = dataset.to_list()
        return [
            self._problem(rec, i, split, src, where)
            for i, rec in zip(indices, records, strict=True)
        ]

    def _problem(self, rec: Any, i: int, split: str, src: MathDataConfig, where) -> Problem:
        def bad(msg: str) -> DataError:
            return DataError(f"{where(i)}: {msg}")

        if not isinstance(rec, dict):
            raise bad(f"a record must be an object, got {type(rec).__name__}")
        fields = {"question_field": src.question_field, "answer_field": src.answer_field}
        if src.id_field is not None:
            fields["id_field"] = src.id_field
        for key, name in fields.items():
            if rec.get(name) is None:
                raise bad(f"no {name!r} (task.{split}.{key}); the record has {sorted(rec)[:10]}")
        question, raw = rec[src.question_field], rec[src.answer_field]
        if not isinstance(question, str) or not question.strip():
            raise bad(f"{src.question_field!r} must be a non-empty string, got {question!r:.80}")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise bad(f"{src.answer_field!r} must be a string or a number, got {raw!r:.80}")
        answer = gold_answer(str(raw), src.answer_format)
        if answer is None:
            raise bad(
                f"no gold answer in {src.answer_field!r} with answer_format "
                f"{src.answer_format!r}: {str(raw)[-120:]!r}"
            )
        pid = str(rec[src.id_field]) if src.id_field is not None else f"{split}-{i}"
        meta = {"question": question, "source": src.source, "index": i}
        if isinstance(raw, str) and raw.strip() != answer:
            meta["solution"] = raw  # the dataset's reference solution, for the record
        return Problem(id=pid, prompt=self.format_prompt(question), answer=answer, meta=meta)

    # ------------------------------------------------------------- verifier
    def reward(self, problem: Problem, completion: str) -> float:
        """1.0 iff the completion's answer (its last ``\\boxed{}``, or its ``#### n`` line
        with ``completion_answer: gsm8k``) equals the gold answer by math-verify."""
        if self.cfg.completion_answer == "gsm8k":
            return gsm8k_reward(problem.answer, completion)
        return boxed_reward(problem.answer, completion)

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        """Character span of the final answer (the content of the last ``\\boxed{}``)."""
        span = last_boxed_span(completion)
        return span if span is not None and span[1] > span[0] else None

    # -------------------------------------------------------------- thoughts
    def segment(self, completion: str) -> list[str]:
        """Thoughts ``y_1 .. y_n``; ``"".join(segment(y)) == y``."""
        c = self.cfg
        if c.segmenter == "stop":
            pieces = split_after(completion, c.stop_pattern)
        elif c.segmenter == "lines":
            pieces = split_lines(completion)
        else:
            pieces = split_sentences(completion)
        pieces = merge_blank(pieces)
        if c.segmenter == "lines" and len(pieces) > 1:
            if any(m in pieces[-1] for m in ANSWER_LINE_MARKERS):
                pieces = pieces[:-2] + [pieces[-2] + pieces[-1]]
        elif c.segmenter == "sentences":
            pieces = _merge_short(pieces, c.min_thought_chars)
        return cap_thoughts(pieces, c.max_thoughts)

    def _thought_text(self, thought: str) -> str:
        text = thought.strip()
        if self.thought_stop and text.endswith(self.thought_stop):
            text = text[: -len(self.thought_stop)].rstrip()
        return text

    def _question(self, problem: Problem) -> str:
        return problem.meta.get("question", problem.prompt)

    # ---------------------------------------------------------- localisation
    def localisation_prompt(self, problem: Problem, completion: str) -> str:
        """SRPO: ask the policy for the first wrong thought of its own failed completion.

        Laid out as the SRPO code lays it out (Ankur-Samanta/SRPO,
        ``training/thought_ics_agent_loop.py::_localize_error``, autonomy level 2): the
        problem, the chain as lines ``Step i: <thought>`` (the stop pattern removed), the
        statement that its answer is wrong, a request for the step where the error
        originated rather than where it shows, and a final line ``\\boxed{N}``. The
        wording is this project's own.
        """
        thoughts = self.segment(completion)
        steps = "".join(f"\nStep {k}: {self._thought_text(t)}" for k, t in enumerate(thoughts, 1))
        n = max(len(thoughts), 1)
        return (
            "Find the first erroneous step in your earlier solution to this problem.\n\n"
            f"Problem: {self._question(problem)}\n\n"
            f"Your reasoning, which reaches a wrong final answer:\n{steps}\n\n"
            "Since the final answer is wrong, some step contains an error. Look for the step "
            "where the error originated (a misread problem, an unjustified assumption, a "
            "wrong calculation or a flawed deduction), which may look fine for a few steps "
            "before the answer shows it, not the step where it becomes visible. A step is "
            "wrong if its claims cannot be justified from the problem and the correct steps "
            "before it.\n\n"
            "Do not solve the problem again; only name that step. Choose exactly one step "
            f"number from 1 to {n}, and end your response with \\boxed{{N}} on its own line, "
            "where N is the number of the first erroneous step (not the answer to the "
            "problem), with nothing after it."
        )

    def localisation_target(self, first_wrong: int, completion=None, problem=None) -> str:
        return f"\\boxed{{{first_wrong}}}"

    def parse_localisation(self, text: str, n_thoughts: int) -> Localisation:
        """SRPO's parser (``thought_ics_agent_loop.py::_parse_error_step``): the last
        brace-balanced ``\\boxed{N}`` with N an integer in 1..n; otherwise the last
        "Step N" (or "step N") in the prose with N in 1..n; otherwise h = 1, unparsed.
        (A boxed 0, "no error", also gives h = 1 there.)"""
        n = max(n_thoughts, 1)
        try:
            answer = last_boxed(text)
            if answer is not None and INTEGER_RE.fullmatch(answer.strip()):
                k = int(answer.strip())
                if 1 <= k <= n:
                    return Localisation(k, True)
                if k == 0:
                    return Localisation(1, False)
            named = STEP_RE.findall(text)
            if named and 1 <= int(named[-1]) <= n:
                return Localisation(int(named[-1]), True)
        except Exception:  # any malformed model output is a parse failure
            pass
        return Localisation(1, False)

    # --------------------------------------------------------------- revision
    def revision_prompt(self, problem: Problem, failed: str, reference: str) -> str:
        """IBPO's compare-and-correct: revise ``failed`` given a sibling ``reference``."""
        fmt = (
            f"End every step with {self.cfg.stop_pattern}. " if self.thought_stop else ""
        ) + "Put your final answer within \\boxed{}."
        return (
            f"Problem:\n{self._question(problem)}\n\n"
            f"Attempt A (its final answer is wrong):\n{failed.strip()}\n\n"
            f"Attempt B (another attempt at the same problem):\n{reference.strip()}\n\n"
            "Compare the two attempts and find where attempt A goes wrong. Then write "
            "attempt A again in full, corrected: keep its steps that are right and change "
            f"only what is needed to fix it. {fmt}"
        )


# ------------------------------------------------------------------ loading
def _load_records(src: MathDataConfig):
    """A source as a ``datasets.Dataset``, and ``where(i)``: how an error names record ``i``."""
    local = src.source.lower().endswith((".jsonl", ".json", ".parquet"))
    if not local:
        return _load_hub(src)
    path = Path(src.source).expanduser()
    if not path.is_file():
        raise DataError(f"data file {src.source!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        _check_jsonl(path)  # exact line numbers for malformed lines
    try:
        from datasets import load_dataset

        dataset = load_dataset(
            "parquet" if suffix == ".parquet" else "json", data_files=str(path), split="train"
        )
    except Exception as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if suffix == ".jsonl":
        lines = _record_lines(path)

        def where(i: int) -> str:
            return f"{path}:{lines[i]}" if i < len(lines) else f"{path}: record {i}"
    else:

        def where(i: int) -> str:
            return f"{path}: record {i}"

    return dataset, where


def _check_jsonl(path: Path) -> None:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise TypeError(f"a record must be an object, got {type(rec).__name__}")
            except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
                raise DataError(
                    f"{path}:{lineno}: invalid record ({type(e).__name__}: {e})"
                ) from None


def _record_lines(path: Path) -> list[int]:
    with path.open("rb") as f:
        return [n for n, raw in enumerate(f, 1) if raw.strip()]


def _load_hub(src: MathDataConfig):
    name = f"{src.source!r} (config {src.config!r}, split {src.split!r})"
    try:
        from datasets import load_dataset

        dataset = load_dataset(src.source, src.config, split=src.split)
    except Exception as e:
        raise DataError(f"cannot load hub dataset {name}: {type(e).__name__}: {e}") from None

    def where(i: int) -> str:
        return f"dataset {name} record {i}"

    return dataset, where
