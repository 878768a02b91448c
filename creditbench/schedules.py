"""Learning-rate schedules: warm-up then constant, linear decay or cosine decay.

The same multipliers as transformers' ``get_constant_schedule_with_warmup``,
``get_linear_schedule_with_warmup`` and ``get_cosine_schedule_with_warmup``
(``transformers/optimization.py``, their ``_get_*_lr_lambda`` helpers), on torch's
``LambdaLR``, with the same state dict, so a checkpoint written with either loads into
the other. They live here because ``transformers.optimization`` imports the Trainer's
utilities, and those import peft when it is installed: about 0.6 s of start-up in every
training and warm-start process here (``python benchmarks/startup.py``: 5.22 s against
4.59 s for ``import creditbench.train``), for three formulas. ``tests/test_schedules.py`` checks them against transformers' values.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _constant_with_warmup(step: int, *, warmup: int, total: int) -> float:
    return _warmup(step, warmup) if step < warmup else 1.0


def _linear(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def _cosine(step: int, *, warmup: int, total: int) -> float:
    # half a cosine period over the steps after the warm-up (transformers' num_cycles=0.5)
    if step < warmup:
        return _warmup(step, warmup)
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


_MULTIPLIERS = {
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "cosine": _cosine,
}
SCHEDULES = tuple(_MULTIPLIERS)


def _schedule(name: str):
    if name not in _MULTIPLIERS:
        raise ValueError(f"unknown lr schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
    return _MULTIPLIERS[name]


def lr_multiplier(name: str, step: int, warmup_steps: int, training_steps: int) -> float:
    """The factor on the base learning rate at ``step`` (0-based) of schedule ``name``."""
    return _schedule(name)(step, warmup=warmup_steps, total=training_steps)


def get_scheduler(
    name: str, optimizer: Optimizer, *, num_warmup_steps: int, num_training_steps: int
) -> LambdaLR:
    """A ``LambdaLR`` stepping schedule ``name`` once per optimiser step (the signature
    of transformers' ``get_scheduler`` for these three schedules)."""
    fn = partial(_schedule(name), warmup=num_warmup_steps, total=num_training_steps)
    return LambdaLR(optimizer, fn)
