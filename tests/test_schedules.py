"""creditbench.schedules against transformers' schedules (transformers/optimization.py:
get_scheduler and its _get_*_lr_lambda helpers), value by value and state dict by state
dict, and against hand-computed multipliers."""

import math
import typing

import pytest
import torch
from transformers import get_scheduler as hf_get_scheduler

from creditbench.config import TrainConfig
from creditbench.schedules import SCHEDULES, get_scheduler, lr_multiplier


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(make, steps: int) -> list[float]:
    opt = _optimizer()
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize(("warmup", "total"), [(0, 40), (5, 40), (50, 1500), (3, 3), (7, 5)])
def test_same_learning_rates_as_transformers(name, warmup, total):
    ours = _lrs(
        lambda o: get_scheduler(name, o, num_warmup_steps=warmup, num_training_steps=total),
        total + 3,
    )
    theirs = _lrs(
        lambda o: hf_get_scheduler(name, o, num_warmup_steps=warmup, num_training_steps=total),
        total + 3,
    )
    assert ours == theirs


def test_hand_computed_multipliers():
    # warm-up 4 of 12 steps: step 2 is halfway up; after it, the decay runs over 8 steps
    assert lr_multiplier("constant_with_warmup", 2, 4, 12) == 0.5
    assert lr_multiplier("constant_with_warmup", 9, 4, 12) == 1.0
    assert lr_multiplier("linear", 8, 4, 12) == 0.5  # (12 - 8) / (12 - 4)
    assert lr_multiplier("linear", 12, 4, 12) == 0.0
    assert lr_multiplier("linear", 20, 4, 12) == 0.0  # never negative past the end
    assert lr_multiplier("cosine", 8, 4, 12) == pytest.approx(0.5)  # cos(pi/2) halfway
    assert lr_multiplier("cosine", 6, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier("cosine", 12, 4, 12) == 0.0


def test_state_dict_loads_across_implementations():
    # a checkpoint written with transformers' scheduler resumes with ours, and back
    opt_a, opt_b = _optimizer(), _optimizer()
    theirs = hf_get_scheduler("cosine", opt_a, num_warmup_steps=3, num_training_steps=20)
    for _ in range(7):
        opt_a.step()
        theirs.step()
    ours = get_scheduler("cosine", opt_b, num_warmup_steps=3, num_training_steps=20)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    for _ in range(5):
        opt_a.step(), opt_b.step()
        theirs.step(), ours.step()
        assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    theirs.load_state_dict(ours.state_dict())
    assert theirs.last_epoch == ours.last_epoch == 12


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'.*cosine"):
        get_scheduler("step", _optimizer(), num_warmup_steps=0, num_training_steps=10)
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        lr_multiplier("step", 0, 0, 10)


def test_config_offers_exactly_the_schedules_implemented():
    # the config's Literal stays free of torch; this keeps the two lists equal
    offered = typing.get_args(TrainConfig.model_fields["lr_schedule"].annotation)
    assert offered == SCHEDULES
