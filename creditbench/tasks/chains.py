"""The synthetic ``chains`` testbed: modular arithmetic chains with an exact step oracle.

A problem is a start value and a chain of operations, read left to right, modulo
``modulus``::

    prompt      7+5*3-4\n
    solution    7+5=12\n12*3=36\n36-4=32\nA:32\n

Every line of the solution is one thought and can be checked on its own, so the
first wrong thought of any completion is known (the step oracle). The
self-localisation prompt appends a (failed) completion, its thoughts numbered
(``1|7+5=12``), and a ``?``; the expected answer names its first wrong thought. By
default (``localisation_answer: review``) it reviews the thoughts in order up to it:
each is the value the thought wrote and the step redone (``1|12=7+5=12\n2|35=12*3=36\n``:
thought 2 wrote 35 where the step gives 36), and the first thought whose two values differ
is the one named; so the skill is reading a line and redoing a step, as in solving.
``verdicts`` gives a mark per thought (``1+2-``), ``index`` the 1-based index alone
(``2``), which asks a model to check every line within one token. The revision prompt
(compare-and-correct, for IBPO) appends a failed completion, ``#``, a reference
completion and ``!``; the expected answer is a corrected solution.

Repairs. A later thought may notice and repair an earlier slip: a *repair thought* is
``~`` followed by a correct redo of the slipped step's line; the lines written since the
slip (computed from the wrong value) are superseded, and the chain continues from the
repaired value. The repair may come at once or after some carried lines::

    solution    7+5=12\n12*3=35\n~12*3=36\n36-4=32\nA:32\n
    solution    7+5=12\n12*3=35\n35-4=31\n~12*3=36\n36-4=32\nA:32\n

The step oracle reads a completion line by line against the reference solution
(``read``). A step line is right iff it equals the reference line of its step. The first
wrong step line is the *slip*; a repair thought is right iff a slip is pending (no repair
or answer line since) and the repair is the reference line of the slip's step: it then
replaces the slip and every line after it. Anything else is a wrong thought: a repair
with no slip pending (so "repair every line blindly" fails), a wrong repair, a repair of
a line other than the slip, of a repair or of the answer line, a repair as the first
thought. The answer line is never repaired: a slip still pending there stays wrong.

- ``first_error`` is the first wrong thought, repaired or not: a repaired slip is still
  the first wrong thought (SRPO's localisation target; what the policy should have
  written differently), while ``read(...).unrepaired`` is the first wrong thought that
  no repair fixed.
- ``reward`` checks the outcome (one well-formed final ``A:<n>`` line with the right
  value); a completion with a repair thought must also be right under the oracle's
  reading: every repair valid and every line no repair replaced equal to the reference.
  So a chain through repairs earns its reward only by computing every step right, the
  repairs included; one without repairs is judged by its outcome, as before (a wrong
  thought whose effect cancels, or that a later line silently drops, still earns the
  reward there, while the oracle names it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from creditbench.config import ChainsTaskConfig
from creditbench.tasks import Problem, SourcedSplits
from creditbench.thoughts import ThoughtRules

REPAIR = "~"  # a repair thought: "~" + the redone step line
NUMBER = "|"  # localisation prompts number the thoughts: "2|12*3=35\n"
ALPHABET = "0123456789+-*=\nA:?#!" + REPAIR + NUMBER
ANSWER_RE = re.compile(r"A:(0|[1-9][0-9]*)")
LOCALISE_RE = re.compile(r"\s*([0-9]+)")
VERDICT_RE = re.compile(r"([0-9]+)([+-])")  # one verdict: a thought's number, + right, - wrong
REVIEW_RE = re.compile(r"([0-9]+)\|([^=\n]*)=([^\n]*)\n")  # number|written=redone step
THOUGHT_RE = re.compile(r"[^\n]*\n|[^\n]+$")  # "\n" only: other line breaks stay inside a thought
SPLITS = ("train", "test", "test_long")


def _apply(op: str, a: int, b: int, modulus: int) -> int:
    if op == "+":
        return (a + b) % modulus
    if op == "-":
        return (a - b) % modulus
    return (a * b) % modulus


def _value(line: str) -> str:
    """The value a thought states: after its last ``=``, or after ``A:``."""
    line = line.removeprefix(REPAIR)
    return line.rsplit("=", 1)[-1] if "=" in line else line.removeprefix("A:")


@dataclass(frozen=True)
class Localisation:
    """A parsed self-localisation answer: the reset thought ``h`` and whether it parsed."""

    thought: int
    parsed: bool


@dataclass(frozen=True)
class Reading:
    """The step oracle's reading of a completion (1-based thought indices, None: none).

    ``first_wrong``: the first wrong thought, a repaired slip included (``first_error``);
    ``unrepaired``: the first wrong thought that no repair fixed (None: the completion is
    the reference solution once its repairs are applied); ``repairs``: valid repairs;
    ``repair_thoughts``: thoughts that start with the repair mark.
    """

    first_wrong: int | None
    unrepaired: int | None
    repairs: int
    repair_thoughts: int


def extract_answer(completion: str) -> str | None:
    """The final answer if the completion ends in exactly one well-formed answer line."""
    lines = [ln for ln in completion.split("\n") if ln != ""]
    if not lines or sum(ln.startswith("A:") for ln in lines) != 1:
        return None
    match = ANSWER_RE.fullmatch(lines[-1])
    return match.group(1) if match else None


def reference_lines(problem: Problem) -> list[str]:
    """The reference solution's thoughts: one line per step, then the answer line."""
    m = problem.meta
    v = m["values"]
    lines = [f"{v[k]}{m['ops'][k]}{m['operands'][k]}={v[k + 1]}\n" for k in range(m["length"])]
    return lines + [f"A:{v[-1]}\n"]


def verify(problem: Problem, completion: str) -> float:
    """1 for the right final answer; with a repair thought, only if the oracle's reading
    of the whole completion is right too (see the module docstring). Needs only the
    problem record (its ``meta``), so an evaluation harness can call it on a data row."""
    answer = extract_answer(completion)
    if answer is None or answer != problem.answer:
        return 0.0
    if REPAIR in completion:
        return float(read_completion(problem, completion).unrepaired is None)
    return 1.0


def read_completion(problem: Problem, completion: str) -> Reading:
    """The step oracle's reading of ``completion`` against the reference solution.

    Step lines are matched to the reference in order. The first wrong step line opens a
    pending slip; a valid repair (the reference line of the slip's step) closes it and
    the reading goes on from the step after the slip, the lines in between superseded.
    A missing thought (the completion stopped early) is wrong at its position, and so is
    a thought after the answer line. A trailing unterminated line counts as if it ended
    with a newline.
    """
    expected = reference_lines(problem)
    steps = len(expected) - 1  # the last reference line is the answer line
    thoughts = THOUGHT_RE.findall(completion)
    first = unrepaired = None
    slip: tuple[int, int] | None = None  # (step, thought) of the pending slip
    j = repairs = marks = 0  # j: the next reference line
    for i, got in enumerate(thoughts, start=1):
        if not got.endswith("\n"):
            got += "\n"
        if got.startswith(REPAIR):
            marks += 1
            if slip is not None and got[len(REPAIR) :] == expected[slip[0]]:
                repairs += 1
                j, slip = slip[0] + 1, None
                continue
            first = first or i  # no slip pending, a wrong redo, or a redo of another line
            unrepaired = unrepaired or (slip[1] if slip is not None else i)
            slip = None
            continue
        if j < len(expected) and got == expected[j]:
            j += 1
            continue
        first = first or i
        if got.startswith("A:") or j >= steps:  # a wrong answer line, or one after it
            unrepaired = unrepaired or (slip[1] if slip is not None else i)
            slip = None
        elif slip is None:
            slip = (j, i)  # later lines carry it until a repair supersedes them
        j += 1
    if slip is not None:
        unrepaired = unrepaired or slip[1]
    if j < len(expected):  # stopped early: the missing line is wrong
        first = first or len(thoughts) + 1
        unrepaired = unrepaired or len(thoughts) + 1
    return Reading(first, unrepaired, repairs, marks)


class ChainsTask(SourcedSplits):
    """The testbed: its splits are generated (deterministic per ``data_seed``)."""

    SPLITS = SPLITS
    name = "chains"
    alphabet = ALPHABET
    thought_stop = "\n"  # a thought is one line, newline included
    # generated thought by thought: the chain ends after the answer line (as SRPO's loop
    # ends after the thought with \boxed{}); the response length bounds the rest
    thought_rules = ThoughtRules(delimiter="\n", answer_marker="A:")
    # lm-eval suites (experiments/tasks/chains/) backed by this task's local splits
    suites = {"chains_test": "test", "chains_test_long": "test_long"}

    def __init__(self, cfg: ChainsTaskConfig, data_dir: str | Path | None = None):
        self.cfg = cfg
        self.data_dir = Path(data_dir) if data_dir is not None else None

    # ------------------------------------------------------------------ data
    def make_problem(self, rng: random.Random, length: int, pid: str) -> Problem:
        c = self.cfg
        start = rng.randrange(c.modulus)
        ops = [rng.choice(c.ops) for _ in range(length)]
        operands = [rng.randint(1, c.operand_max) for _ in range(length)]
        values = [start]
        for op, b in zip(ops, operands, strict=True):
            values.append(_apply(op, values[-1], b, c.modulus))
        prompt = (
            str(start) + "".join(f"{op}{b}" for op, b in zip(ops, operands, strict=True)) + "\n"
        )
        meta = {"ops": ops, "operands": operands, "values": values, "length": length}
        return Problem(id=pid, prompt=prompt, answer=str(values[-1]), meta=meta)

    def generate(self, split: str) -> list[Problem]:
        """Deterministic problems of a split (same ``data_seed`` → same problems)."""
        c = self.cfg
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split == "train":
            held_out = {p.prompt for s in ("test", "test_long") for p in self.generate(s)}
            n, lo, hi = c.n_train, c.min_len, c.max_len
        else:
            held_out = set()
            n = c.n_test
            lo, hi = (c.min_len, c.max_len) if split == "test" else (c.long_min_len, c.long_max_len)
        rng = random.Random(f"chains-{c.data_seed}-{split}")
        out, seen = [], set(held_out)
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n:
                raise ValueError(
                    f"cannot draw {n} distinct {split} problems with these knobs "
                    f"(lengths {lo}-{hi}, ops {c.ops}, operand_max {c.operand_max}); lower the count"
                )
            p = self.make_problem(rng, rng.randint(lo, hi), f"{split}-{len(out)}")
            if p.prompt in seen:
                continue
            seen.add(p.prompt)
            out.append(p)
        return out

    def read_source(self, split: str) -> list[Problem]:
        return self.generate(split)

    # -------------------------------------------------------------- solutions
    def solution_lines(self, problem: Problem) -> list[str]:
        return reference_lines(problem)

    def solution(self, problem: Problem) -> str:
        return "".join(self.solution_lines(problem))

    def repaired(self, problem: Problem, rng: random.Random) -> tuple[str, int]:
        """A right solution with one slip that a later thought repairs: ``(text, slip)``.

        The slip (a wrong result or a wrong copied operand, as in ``corrupt``) is at a
        uniformly drawn step line (the answer line cannot be repaired). The repair comes
        after ``d`` carried lines (computed from the wrong value, as ``corrupt`` writes
        them), ``d`` uniform in ``[0, repair_max_delay]`` and never past the last step;
        it redoes the slipped step correctly and the chain continues from the right value.
        """
        n = problem.meta["length"]
        k = rng.randint(1, n)
        delay = rng.randint(0, min(self.cfg.repair_max_delay, n - k))
        lines = self.solution_lines(problem)
        wrong = self._corrupt_at(problem, k, rng).split("\n")[k - 1 : k + delay]
        carried = [line + "\n" for line in wrong]
        return "".join(lines[: k - 1] + carried + [REPAIR + lines[k - 1]] + lines[k:]), k

    def corrupt(self, problem: Problem, rng: random.Random, max_tries: int = 20) -> tuple[str, int]:
        """A failed trace whose first wrong thought is known: ``(text, first_wrong)``.

        The error (a wrong result, or a wrong copied operand) is placed at a uniformly
        drawn thought, and later lines carry it forward consistently, as a model's own
        mistakes do. Thought ``length + 1`` is the answer line. Modular products can
        cancel an error downstream (mod 10, ``*5*2`` maps every value to 0), so a draw
        whose answer comes out right is redrawn; after ``max_tries`` such draws at the
        chosen thought the error goes on the answer line, which always fails.
        """
        n = problem.meta["length"]
        k = rng.randint(1, n + 1)
        for _ in range(max_tries):
            text = self._corrupt_at(problem, k, rng)
            if self.reward(problem, text) == 0:
                return text, k
        return self._corrupt_at(problem, n + 1, rng), n + 1

    def _corrupt_at(self, problem: Problem, k: int, rng: random.Random) -> str:
        c, m = self.cfg, problem.meta
        n = m["length"]
        lines = self.solution_lines(problem)[: k - 1]
        value = m["values"][k - 1]
        if k == n + 1:
            wrong = rng.choice([x for x in range(c.modulus) if x != value])
            return "".join(lines) + f"A:{wrong}\n"
        for j in range(k - 1, n):
            op, b = m["ops"][j], m["operands"][j]
            result = _apply(op, value, b, c.modulus)
            if j == k - 1:
                if rng.random() < 0.25 and c.operand_max > 1:  # a copy error on the operand
                    b = rng.choice([x for x in range(1, c.operand_max + 1) if x != b])
                    result = _apply(op, value, b, c.modulus)
                    if result == _apply(op, value, m["operands"][j], c.modulus):
                        result = (result + rng.randint(1, c.modulus - 1)) % c.modulus
                else:
                    result = (result + rng.randint(1, c.modulus - 1)) % c.modulus
            lines.append(f"{value}{op}{b}={result}\n")
            value = result
        return "".join(lines) + f"A:{value}\n"

    # ------------------------------------------------------------- verifier
    def segment(self, completion: str) -> list[str]:
        """Thoughts: one per line, newline kept; a trailing unterminated line is a thought."""
        return THOUGHT_RE.findall(completion)

    def reward(self, problem: Problem, completion: str) -> float:
        """The verifier (``verify``)."""
        return verify(problem, completion)

    def read(self, problem: Problem, completion: str) -> Reading:
        """The step oracle's reading of ``completion`` (``read_completion``)."""
        return read_completion(problem, completion)

    def first_error(self, problem: Problem, completion: str) -> int | None:
        """The step oracle: 1-based index of the first wrong thought, ``None`` if all are right.

        A slip that a later thought repaired is still the first wrong thought (the reward
        of such a chain can be 1: ``read(...).unrepaired`` is None). A missing thought (the
        completion stopped early) counts as wrong at its position.
        """
        return self.read(problem, completion).first_wrong

    # --------------------------------------------------------- localisation
    def localisation_prompt(self, problem: Problem, completion: str) -> str:
        """The problem, the completion's thoughts numbered (``2|12*3=35``), then ``?``.

        The numbers spare the model counting lines: naming the first wrong thought is
        then finding it and copying its number.
        """
        thoughts = self.segment(completion)
        if thoughts and not thoughts[-1].endswith("\n"):
            thoughts[-1] += "\n"
        numbered = "".join(f"{i}{NUMBER}{t}" for i, t in enumerate(thoughts, start=1))
        return problem.prompt + numbered + "?"

    def localisation_target(
        self, first_wrong: int, completion: str | None = None, problem: Problem | None = None
    ) -> str:
        """The answer naming thought ``first_wrong`` of ``completion``: its reviewed
        thoughts (review: ``1|12=7+5=12\n2|35=12*3=36\n``), ``1+2-`` (verdicts) or ``2``.

        A reviewed thought is the value the thought wrote, ``=``, and the step redone (its
        solution line, from the value before it, which the review has found right); the
        first thought whose two values differ is the one named, and the review stops
        there. The answer line is redone as ``A:<result>``.
        """
        form = self.cfg.localisation_answer
        if form == "index":
            return f"{first_wrong}\n"
        if form == "verdicts":
            return "".join(f"{i}+" for i in range(1, first_wrong)) + f"{first_wrong}-\n"
        if completion is None or problem is None:
            raise ValueError("a review answer rewrites the completion's thoughts: pass both")
        redone = [line.rstrip("\n") for line in self.solution_lines(problem)]
        thoughts = [t.rstrip("\n") for t in self.segment(completion)]
        out = []
        for i in range(1, first_wrong + 1):
            written = thoughts[i - 1] if i <= len(thoughts) else ""  # missing: nothing
            out.append(f"{i}{NUMBER}{_value(written)}={redone[min(i, len(redone)) - 1]}\n")
        return "".join(out)

    def revision_prompt(self, problem: Problem, failed: str, reference: str) -> str:
        """Compare-and-correct: revise ``failed`` given a sibling ``reference``."""
        failed = failed if not failed or failed.endswith("\n") else failed + "\n"
        reference = reference if not reference or reference.endswith("\n") else reference + "\n"
        return problem.prompt + failed + "#" + reference + "!"

    def answer_span(self, completion: str) -> tuple[int, int] | None:
        """Character span of the final answer value (the digits after ``A:``), if any."""
        k = completion.rfind("A:")
        if k < 0:
            return None
        j = k + 2
        while j < len(completion) and completion[j].isdigit():
            j += 1
        return (k + 2, j) if j > k + 2 else None

    def parse_localisation(self, text: str, n_thoughts: int) -> Localisation:
        """SRPO: ``h`` clamped to ``[1, n]``; a parse failure gives ``h = 1``.

        A review (``1|12=7+5=12\n2|35=12*3=36\n``, read from the start) names the first
        thought whose written value differs from its redone step; verdicts (``1+2+3-``,
        up to the first ``-``) the thought marked wrong. [choice] A review or verdicts
        that find every thought right name the last one (the chain failed, and its answer
        line is where it shows). Otherwise a bare number is the index.
        """
        last = max(n_thoughts, 1)
        if REVIEW_RE.match(text):
            at = 0
            while match := REVIEW_RE.match(text, at):
                if match.group(2) != _value(match.group(3)):
                    return Localisation(min(max(int(match.group(1)), 1), last), True)
                at = match.end()
            return Localisation(last, True)
        number, mark, at = 0, None, 0  # the last verdict read
        while match := VERDICT_RE.match(text, at):
            number, mark, at = int(match.group(1)), match.group(2), match.end()
            if mark == "-":
                break
        if mark is not None:
            return Localisation(min(max(number, 1), last) if mark == "-" else last, True)
        match = LOCALISE_RE.match(text)
        if not match:
            return Localisation(1, False)
        return Localisation(min(max(int(match.group(1)), 1), last), True)
