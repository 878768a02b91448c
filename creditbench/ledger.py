"""The compute ledger: tokens generated and forwarded, by purpose, and seconds by phase.

Every generated or scored token is charged to the run that caused it, by purpose
(``rollout``, ``seed``, ``localisation``, ``suffix``, ``mc_value``, ``revision``,
``perturbation``, ``gradient``, ``policy_forward``, ``reference``, ...), so tables
and plots can compare methods at equal steps and at equal compute.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager


class Ledger:
    def __init__(self) -> None:
        self.generated: dict[str, int] = defaultdict(int)
        self.forwarded: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[str] = []

    def add_tokens(self, purpose: str, generated: int = 0, forwarded: int = 0) -> None:
        if generated:
            self.generated[purpose] += int(generated)
        if forwarded:
            self.forwarded[purpose] += int(forwarded)

    def transfer(self, src: str, dst: str, generated: int = 0, forwarded: int = 0) -> None:
        """Re-charge tokens from ``src`` to ``dst`` once it is known what they were for
        (SRPO: a drawn chain becomes a base chain or stays a seed-search draw)."""
        for book, n in ((self.generated, generated), (self.forwarded, forwarded)):
            if n:
                if book.get(src, 0) < n:
                    raise ValueError(
                        f"cannot move {n} tokens from {src!r}: it holds {book.get(src, 0)}"
                    )
                book[src] -= n
                book[dst] += n
                if book[src] == 0:
                    del book[src]

    @contextmanager
    def phase(self, name: str):
        """Time a phase; a phase nested in an open one of the same name is not double counted."""
        if name in self._open:
            yield
            return
        self._open.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self._open.remove(name)

    @property
    def total_generated(self) -> int:
        return sum(self.generated.values())

    @property
    def total_forwarded(self) -> int:
        return sum(self.forwarded.values())

    def to_dict(self) -> dict:
        return {
            "generated_tokens": dict(sorted(self.generated.items())),
            "forwarded_tokens": dict(sorted(self.forwarded.items())),
            "seconds": {k: round(v, 6) for k, v in sorted(self.seconds.items())},
            "total_generated_tokens": self.total_generated,
            "total_forwarded_tokens": self.total_forwarded,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Ledger:
        ledger = cls()
        ledger.generated.update(d.get("generated_tokens", {}))
        ledger.forwarded.update(d.get("forwarded_tokens", {}))
        ledger.seconds.update(d.get("seconds", {}))
        return ledger
