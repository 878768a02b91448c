"""Method plugins: discovery by name from the ``methods/`` folder, and what a method gets.

A method file ``methods/NAME.py`` defines:

- ``Params``: a pydantic model of the method's own parameters (unknown keys rejected);
- ``DEFAULTS`` (optional): the paper's ``loss`` / ``train`` settings, e.g.
  ``{"loss": {"clip": False}}``, below the experiment's and the run's own;
- ``Method``: a class built as ``Method(params, ctx)`` with two methods,
  ``collect(problems, step) -> list[Group]`` (what to sample) and
  ``advantages(groups) -> list[Trajectory]`` (how to assign credit: the returned
  trajectories carry per-token advantages and masks and are what the loss trains on).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

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
                    )
                )
            out.append(group)
        return out
