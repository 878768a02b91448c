"""Tasks: prompts with ground truth, a verifier, a thought segmenter, and optionally a step oracle.

A task is what a method needs to know about a problem domain and nothing more:

- ``load(split)``: the problems of a split (from the experiment's data directory);
- ``reward(problem, completion)``: the verifiable outcome ``R(y) in {0, 1}``;
- ``segment(completion)``: the thoughts ``y_1 .. y_n`` (their concatenation is the text);
- ``first_error(problem, completion)``: the step oracle, when the task has one;
- ``localisation_prompt`` / ``parse_localisation``: SRPO's self-localisation call.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from creditbench.config import TaskConfig
from creditbench.utils import atomic_write_text


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


class DataError(ValueError):
    """A data file is malformed; the message names the file and line."""


def write_jsonl(path: Path, problems: list[Problem]) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(p)) + "\n" for p in problems))


def read_jsonl(path: Path) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist (run `creditbench data` first)")
    problems = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                rec = json.loads(line)
                problems.append(
                    Problem(
                        id=str(rec["id"]),
                        prompt=str(rec["prompt"]),
                        answer=str(rec["answer"]),
                        meta=rec.get("meta", {}),
                    )
                )
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(
                    f"{path}:{lineno}: invalid record ({type(e).__name__}: {e})"
                ) from None
    return problems


LINE_RE = re.compile(r"[^\n]*\n|[^\n]+$")  # "\n" only: other line breaks stay in a line


def split_lines(text: str) -> list[str]:
    """``text`` cut after every newline; ``"".join(split_lines(t)) == t``."""
    return LINE_RE.findall(text)


def merge_blank(pieces: list[str]) -> list[str]:
    """A whitespace-only piece joins the previous piece (the next one at the start)."""
    out: list[str] = []
    pending = ""
    for piece in pieces:
        if piece.strip():
            out.append(pending + piece)
            pending = ""
        elif out:
            out[-1] += piece
        else:
            pending += piece
    if pending:
        out.append(pending)
    return out


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat of a prompt: the optional system message, then the user turn."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


class SourcedSplits:
    """The data step of a task whose splits come from ``read_source(split)`` (a hub dataset,
    a local file, or a generator): ``write_data`` materialises them as JSONL, ``load`` reads
    them back (or reads the source directly when the task has no data directory)."""

    SPLITS: tuple[str, ...] = ("train", "test")
    data_dir: Path | None
    system_prompt: str | None = None

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """The chat messages of a prompt: the optional system prompt, then the user turn."""
        return chat_messages(prompt, self.system_prompt)

    def read_source(self, split: str) -> list[Problem]:
        raise NotImplementedError

    def write_data(self, out_dir: str | Path) -> dict[str, Path]:
        out_dir = Path(out_dir)
        paths = {}
        for split in self.SPLITS:
            paths[split] = out_dir / f"{split}.jsonl"
            write_jsonl(paths[split], self.read_source(split))
        return paths

    def load(self, split: str) -> list[Problem]:
        if self.data_dir is None:
            return self.read_source(split)
        return read_jsonl(self.data_dir / f"{split}.jsonl")


def make_task(cfg: TaskConfig, data_dir: str | Path | None = None):
    """Build the task named by ``cfg.name``."""
    if cfg.name == "chains":
        from creditbench.tasks.chains import ChainsTask

        return ChainsTask(cfg, data_dir)
    if cfg.name == "math":
        from creditbench.tasks.math import MathTask

        return MathTask(cfg, data_dir)
    if cfg.name == "code":
        from creditbench.tasks.code import CodeTask

        return CodeTask(cfg, data_dir)
    raise ValueError(f"unknown task {cfg.name!r}")
