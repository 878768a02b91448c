"""Fault injection: kill the training process at a named point, to test recovery.

Set ``CREDITBENCH_FAULT=<point>:<step>`` (several, comma-separated) and the process
sends itself SIGKILL when it reaches ``<point>`` while working on optimiser step
``<step>`` (1-based: the step that, once done, makes ``trainer.step == <step>``).
SIGKILL cannot be caught: no ``finally``, no atexit, no flush, exactly what an
out-of-memory killer or a pre-empted node does. The points:

- ``generate``: inside the sampler, after the first generated batch of the step;
- ``optimizer``: after ``optimizer.step()``, before the step is recorded;
- ``checkpoint``: while the step's checkpoint is being written (weights saved, the
  state and the completion marker not yet);
- ``finish``: while the final model is being written.

Unset (the normal case) every call is a dictionary lookup. Nothing else reads it.
"""

from __future__ import annotations

import os
import signal

ENV = "CREDITBENCH_FAULT"
POINTS = ("generate", "optimizer", "checkpoint", "finish")

_step = 0


def parse(spec: str | None) -> set[tuple[str, int]]:
    """``"generate:2,checkpoint:3"`` -> {("generate", 2), ("checkpoint", 3)}."""
    out: set[tuple[str, int]] = set()
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        point, _, step = part.strip().partition(":")
        if point not in POINTS or not step.isdigit():
            raise ValueError(
                f"{ENV}={spec!r}: each entry is <point>:<step> with a point in {POINTS} "
                f"and a step number, not {part!r}"
            )
        out.add((point, int(step)))
    return out


def working_on(step: int) -> None:
    """The trainer announces the optimiser step it is computing (1-based)."""
    global _step
    _step = step


def point(name: str) -> None:
    """Die here if the environment asks for a fault at ``name`` in the current step."""
    spec = os.environ.get(ENV)
    if spec and (name, _step) in parse(spec):
        os.kill(os.getpid(), signal.SIGKILL)
