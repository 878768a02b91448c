"""Method plugins: discovery by name from the ``methods/`` folder, and what a method gets.

A method file ``methods/NAME.py`` defines:

- ``Params``: a pydantic model of the method's own parameters (unknown keys rejected);
- ``DEFAULTS`` (optional): the paper's ``loss`` / ``train`` settings, e.g.
  ``{"loss": {"clip": False}}``, below the experiment's and the run's own;
- ``Method``: a class built as ``Method(params, ctx)`` with two methods,
  ``collect(problems, step) -> list[Group]`` (what to sample) and
  ``advantages(groups) -> list[Trajectory]`` (how to assign credit: the returned
  trajectories carry per-token advantages and masks and are what the loss trains on).

Method-owned trainable state (a critic, a reward model, ...): in ``__init__`` a method
hands the engine a module with its optimiser and scheduler, ``ctx.own(name, module,
optimizer, scheduler)``, and gets an :class:`OwnedState` back. The engine places it on
the device and prepares it with accelerate like the policy, saves and restores it (module,
optimiser, scheduler) in every checkpoint and writes it beside the final model
(``owned/<name>.pt``). Its forwards through the handle are charged to the ledger as
``<name>_forward`` (no gradient) and ``<name>_update`` (with a gradient). A method with
owned state trains it in an optional ``update(trained, step) -> dict[str, float]``, which
the engine calls after the policy's update of each step (the returned numbers join the
step's metrics). Nothing else in the engine knows what the state is.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from creditbench.ledger import Ledger
from creditbench.rollouts import Trajectory, thought_token_ends
from creditbench.tasks import Problem

DEFAULT_METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"
_REQUIRED = ("Params", "Method")


def methods_dirs(extra: str | Path | None = None) -> list[Path]:
    """Search path: the run config's ``methods_dir``, ``$CREDITBENCH_METHODS``, the bundled folder."""
    dirs = []
    if extra:
        dirs.append(Path(extra))
    for p in os.environ.get("CREDITBENCH_METHODS", "").split(os.pathsep):
        if p:
            dirs.append(Path(p))
    dirs.append(DEFAULT_METHODS_DIR)
    return dirs


def available_methods(extra: str | Path | None = None) -> list[str]:
    names = set()
    for d in methods_dirs(extra):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))
    return sorted(names)


def load_method(name: str, extra: str | Path | None = None) -> ModuleType:
    """Import ``NAME.py`` from the first methods folder that has it."""
    for d in methods_dirs(extra):
        path = d / f"{name}.py"
        if path.is_file():
            key = f"creditbench_methods.{name}_{abs(hash(str(path.resolve())))}"
            if key in sys.modules:
                return sys.modules[key]
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[key]
                raise
            missing = [a for a in _REQUIRED if not hasattr(module, a)]
            if missing:
                raise KeyError(f"method file {path} does not define {missing}")
            return module
    raise KeyError(f"unknown method {name!r}; available: {available_methods(extra)}")


class OwnedState:
    """Trainable state a method owns (``MethodContext.own``): a module, its optimiser and
    scheduler, placed and prepared by the engine.

    ``module`` is what forwards and backwards go through (the accelerate wrapper under
    data parallelism), ``unwrapped`` the module itself (what is saved). Call the handle
    for a forward: ``state(*args, tokens=n, **kwargs)`` charges ``n`` tokens (default: the
    ``attention_mask``'s sum) to ``<name>_forward`` when no gradient is recorded and to
    ``<name>_update`` when one is. ``backward(loss)`` and ``step()`` (gradient clipping
    to ``max_grad_norm``, optimiser step, scheduler step, gradients cleared) complete an
    update. Under data parallelism every process must run the same number of backwards
    and steps (gradients are all-reduced in the backward).
    """

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        optimizer,
        scheduler=None,
        max_grad_norm: float | None = None,
        ctx: MethodContext | None = None,
        accelerator=None,
        unwrapped: torch.nn.Module | None = None,
    ):
        self.name = name
        self.module = module
        self.unwrapped = module if unwrapped is None else unwrapped
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.accelerator = accelerator
        self._ctx = ctx
        self.steps = 0  # optimiser steps taken (saved with the state)

    @property
    def forward_purpose(self) -> str:
        return f"{self.name}_forward"

    @property
    def update_purpose(self) -> str:
        return f"{self.name}_update"

    def charge(self, tokens: int, grad: bool | None = None) -> None:
        """Charge ``tokens`` forwarded tokens to this state's forward or update purpose."""
        grad = torch.is_grad_enabled() if grad is None else grad
        if self._ctx is not None:
            purpose = self.update_purpose if grad else self.forward_purpose
            self._ctx.ledger.add_tokens(purpose, forwarded=int(tokens))

    def __call__(self, *args, tokens: int | None = None, **kwargs):
        if tokens is None:
            mask = kwargs.get("attention_mask")
            if mask is None:
                raise ValueError(
                    f"owned state {self.name!r}: a forward needs tokens= or an attention_mask "
                    "(the ledger charges its tokens)"
                )
            tokens = int(mask.sum().item())
        self.charge(tokens)
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def step(self) -> float | None:
        """Clip, step the optimiser and the scheduler, clear the gradients; the grad norm."""
        norm = None
        if self.max_grad_norm is not None:
            params = self.parameters()
            if self.accelerator is not None:
                norm = self.accelerator.clip_grad_norm_(params, self.max_grad_norm)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return None if norm is None else float(norm)

    def state_dict(self, module: bool = True, optimizer: bool = True) -> dict:
        return {
            "module": self.unwrapped.state_dict() if module else None,
            "optimizer": self.optimizer.state_dict() if optimizer else None,
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("module") is not None:
            self.unwrapped.load_state_dict(state["module"])
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state.get("steps", 0))


@dataclass
class MethodContext:
    """Everything a method may use: the policy, its sampler, the task, the ledger, the run."""

    model: object
    tokenizer: object
    sampler: object
    task: object
    ledger: Ledger
    run: object  # RunConfig
    seed: int = 0
    # reductions over the data-parallel processes (``creditbench.distributed.Collective``);
    # None: one process. A method that pools statistics over the step's batch uses it.
    collective: object | None = None
    # the engine's preparation of method-owned state (``Trainer`` sets it: accelerate's
    # ``prepare``); None: the module is moved to the policy's device as it is
    prepare_owned: object | None = None
    owned: dict[str, OwnedState] = field(default_factory=dict)

    @property
    def lockstep(self):
        """The processes a method's calls of a trained or sharded model keep in step with
        (``creditbench.distributed.lockstep``): ``collective`` when it spans several
        processes, else None (one process: nothing to pad)."""
        c = self.collective
        return c if c is not None and c.world > 1 else None

    def any_process(self, flag: bool) -> bool:
        """``flag`` on any process (one collective where generation is kept in step,
        ``Sampler.is_synced``; ``flag`` itself otherwise). A method whose sampler call
        depends on its data (a revision only when some completion failed, another search
        round only while a prompt lacks a seed) makes the call when this is true, with its
        own rows, however few (none: the sampler takes part with a placeholder), so every
        process calls the sampler equally often."""
        sampler = self.sampler
        if not (hasattr(sampler, "is_synced") and sampler.is_synced()):
            return bool(flag)
        from creditbench.decode import agree_max

        return bool(agree_max(bool(flag), sampler._device()))

    def own(
        self,
        name: str,
        module: torch.nn.Module,
        optimizer,
        scheduler=None,
        max_grad_norm: float | None = None,
    ) -> OwnedState:
        """Register trainable state the method owns; the engine places, prepares,
        checkpoints and restores it. ``optimizer`` is built over ``module``'s parameters
        (the engine moves them in place); ``scheduler`` steps once per ``step()``."""
        if not name.isidentifier():
            raise ValueError(f"owned state name {name!r} must be an identifier")
        if name in self.owned:
            raise ValueError(f"owned state {name!r} is registered twice")
        if self.prepare_owned is not None:
            state = self.prepare_owned(name, module, optimizer, scheduler, max_grad_norm, self)
        else:
            device = next(self.model.parameters()).device
            module.to(device)
            state = OwnedState(name, module, optimizer, scheduler, max_grad_norm, ctx=self)
        self.owned[name] = state
        return state

    def step_rng(self, step: int, name: str) -> random.Random:
        """A private RNG for a method's own choices at ``step``: reproducible on resume,
        and it leaves the sampling RNG untouched."""
        return random.Random(f"{name}-{self.seed}-{step}")

    def score(self, problem: Problem, text: str, stop: str) -> float:
        """``R(y)``; a completion cut off by the length limit scores 0."""
        return 0.0 if stop == "length" else self.task.reward(problem, text)

    def prompt_ids(self, problem: Problem) -> list[int]:
        return self.sampler.encode_prompt(problem.prompt)

    def rollout(
        self,
        problems: list[Problem],
        n: int,
        purpose: str,
        prefixes: list[list[int]] | None = None,
        prefix_thought_ends: list[list[int]] | None = None,
        **sampling,
    ) -> list[list[Trajectory]]:
        """Sample ``n`` completions for each problem (continuing each given prefix of ids).

        Returns one list of ``n`` scored trajectories per problem. A prefix is part of
        the completion (``prefix_len`` marks it) and is never re-tokenised; it ends at a
        thought boundary, and its thoughts (``prefix_thought_ends``, else found by the
        task's segmenter) count toward the task's thought cap. The response length
        (``sampling.max_new_tokens``, or ``max_new_tokens`` given here) bounds prefix and
        continuation together, as SRPO's agent loop bounds a suffix. Generation follows
        the task's thought rules; the thought boundaries are the generation's where it
        reports them, else the segmenter's.
        """
        prefixes = prefixes or [[] for _ in problems]
        if prefix_thought_ends is None:
            prefix_thought_ends = [
                thought_token_ends(px, self.tokenizer, self.task.segment) if px else []
                for px in prefixes
            ]
        prompts = [self.prompt_ids(p) for p in problems]
        length = sampling.pop("max_new_tokens", None) or self.sampler.cfg.max_new_tokens
        gens = self.sampler.generate(
            [pr + px for pr, px in zip(prompts, prefixes, strict=True)],
            purpose=purpose,
            n=n,
            max_new_tokens=[max(length - len(px), 0) for px in prefixes],
            thoughts_done=[len(e) for e in prefix_thought_ends],
            **sampling,
        )
        out = []
        for k, (problem, prompt, prefix) in enumerate(
            zip(problems, prompts, prefixes, strict=True)
        ):
            group = []
            for g in gens[k * n : (k + 1) * n]:
                ids = list(prefix) + g.ids
                text = self.sampler.decode(ids)
                if g.thought_ends is not None:
                    ends = list(prefix_thought_ends[k]) + [len(prefix) + e for e in g.thought_ends]
                else:
                    ends = thought_token_ends(ids, self.tokenizer, self.task.segment)
                group.append(
                    Trajectory(
                        problem=problem,
                        prompt_ids=prompt,
                        completion_ids=ids,
                        text=text,
                        reward=self.score(problem, text, g.stop),
                        purpose=purpose,
                        thought_ends=ends,
                        prefix_len=len(prefix),
                        stop=g.stop,
                        forwarded=g.forwarded,
                    )
                )
            out.append(group)
        return out
