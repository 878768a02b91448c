"""Thought-level generation: the per-row stop rules of one batched decode.

SRPO's official agent loop (Ankur-Samanta/SRPO, ``training/thought_agent_loop.py``,
``ThoughtAgentLoop._generate_thoughts_core``; settings in
``training/config/thought_agent_config.yaml``) generates a chain one thought per call:

- a call stops at the thought delimiter ``</thought>``, kept in the output, or after
  ``max_tokens_per_thought`` = 256 new tokens;
- a new thought is started only while a whole thought still fits:
  ``len(response) + max_tokens_per_thought <= response_length`` (so a chain never
  overruns the response length and is never cut inside a thought);
- the chain ends after ``max_thoughts`` = 20 thoughts, or after the thought whose text
  contains ``\\boxed{`` (the answer marker).

Every call continues the same context, so the calls sample exactly what one decode
that records the boundaries samples. ``ThoughtRules`` states these rules and
``ThoughtTracker`` applies them to every row of a batch as the tokens arrive, so that
thought-level generation costs what a free run costs (one decode, no call per thought).
A continuation from a reset state (SRPO's suffixes) starts with the prefix's thoughts
already counted and only the response budget the prefix leaves.

[choice] An EOS token ends the chain (the official loop would prompt again after it;
an instruct model's EOS ends its answer).
"""

from __future__ import annotations

from dataclasses import dataclass

# why a row stopped
EOS, PATTERN, LENGTH, ANSWER, THOUGHTS = "eos", "pattern", "length", "answer", "thoughts"


@dataclass(frozen=True)
class ThoughtRules:
    """How a task's chains are generated thought by thought.

    ``delimiter``: a thought ends with it (kept). ``max_thought_tokens``: a thought that
    reaches this many tokens ends there (None: no cap). ``max_thoughts``: the chain ends
    after this many thoughts (None: no cap). ``answer_marker``: the chain ends after the
    thought whose text contains it (None: only EOS, the caps and the budget end it).
    ``reserve_full_thought``: a thought starts only if ``max_thought_tokens`` more tokens
    fit in the row's budget (the official loop's check; needs ``max_thought_tokens``).
    """

    delimiter: str
    max_thought_tokens: int | None = None
    max_thoughts: int | None = None
    answer_marker: str | None = None
    reserve_full_thought: bool = True

    def __post_init__(self):
        if not self.delimiter:
            raise ValueError("ThoughtRules.delimiter must be a non-empty string")
        for name in ("max_thought_tokens", "max_thoughts"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"ThoughtRules.{name} must be >= 1 or None, got {v}")

    def room(self, budget: int, thoughts_done: int) -> bool:
        """Whether a row with ``budget`` tokens left and ``thoughts_done`` thoughts may
        start another thought."""
        if budget <= 0:
            return False
        if self.max_thoughts is not None and thoughts_done >= self.max_thoughts:
            return False
        return not (
            self.reserve_full_thought
            and self.max_thought_tokens is not None
            and budget < self.max_thought_tokens
        )


class ThoughtTracker:
    """The stop state of every row of one batched decode, token by token.

    ``push(row, token)`` takes the row's next sampled token and reports whether the row
    is done. ``decode(row, start, end)`` gives the text of the row's generated tokens
    ``[start, end)``; it is asked for short tails (stop strings, a delimiter of several
    tokens) and once per thought for the answer marker. Without ``rules`` the tracker
    applies only the stop ids (EOS and single-token stop strings), the stop strings and
    the row budgets, as a free run.
    """

    def __init__(
        self,
        budgets: list[int],
        decode,
        *,
        rules: ThoughtRules | None = None,
        thoughts_done: list[int] | None = None,
        stop_ids: set[int] = frozenset(),
        eos_id: int | None = None,
        stop_strings: list[str] = (),
        delimiter_id: int | None = None,
    ):
        n_rows = len(budgets)
        self.rules, self.decode = rules, decode
        self.budgets = list(budgets)
        self.stop_ids, self.eos_id, self.delimiter_id = set(stop_ids), eos_id, delimiter_id
        self.stop_strings = list(stop_strings)
        self.tail = max((len(s) for s in self.stop_strings), default=0)  # >= 1 char a token
        self.thoughts = list(thoughts_done) if thoughts_done is not None else [0] * n_rows
        self.length = [0] * n_rows  # tokens generated so far
        self.thought_start = [0] * n_rows  # offset of the current thought
        self.ends: list[list[int]] = [[] for _ in range(n_rows)]  # thought ends (exclusive)
        self.reason: list[str | None] = [None] * n_rows
        for row, budget in enumerate(self.budgets):  # rows that may not even start
            if rules is None:
                if budget <= 0:
                    self.reason[row] = LENGTH
            elif not rules.room(budget, self.thoughts[row]):
                capped = rules.max_thoughts is not None and self.thoughts[row] >= rules.max_thoughts
                self.reason[row] = THOUGHTS if capped else LENGTH

    @property
    def done(self) -> list[bool]:
        return [r is not None for r in self.reason]

    def _finish(self, row: int, reason: str) -> bool:
        self.reason[row] = reason
        n, start = self.length[row], self.thought_start[row]
        if self.rules is not None and n > start:
            if reason == EOS and n - start == 1 and self.ends[row]:
                self.ends[row][-1] = n  # a lone EOS belongs to the last thought
            else:
                self.ends[row].append(n)  # the unfinished thought is a thought
        return True

    def push(self, row: int, token: int) -> bool:
        """One new token of ``row``; True once the row is done (later tokens are ignored)."""
        if self.reason[row] is not None:
            return True
        self.length[row] += 1
        n = self.length[row]
        if token in self.stop_ids:
            return self._finish(row, EOS if token == self.eos_id else PATTERN)
        if self.stop_strings:
            tail = self.decode(row, max(0, n - self.tail), n)
            if any(s in tail for s in self.stop_strings):
                return self._finish(row, PATTERN)
        rules = self.rules
        if rules is not None:
            start = self.thought_start[row]
            if self.delimiter_id is not None:
                ended = token == self.delimiter_id
            else:
                ended = rules.delimiter in self.decode(row, max(start, n - len(rules.delimiter)), n)
            ended = ended or (
                rules.max_thought_tokens is not None and n - start >= rules.max_thought_tokens
            )
            if ended:
                self.ends[row].append(n)
                self.thoughts[row] += 1
                self.thought_start[row] = n
                if rules.answer_marker is not None and rules.answer_marker in self.decode(
                    row, start, n
                ):
                    self.reason[row] = ANSWER
                    return True
                if rules.max_thoughts is not None and self.thoughts[row] >= rules.max_thoughts:
                    self.reason[row] = THOUGHTS
                    return True
                if not rules.room(self.budgets[row] - n, self.thoughts[row]):
                    self.reason[row] = LENGTH
                    return True
        if n >= self.budgets[row]:
            return self._finish(row, LENGTH)
        return False
