"""Read an experiment directory into tidy DataFrames, one row per observation.

The layout is the output contract of ``architecture.md``::

    <experiment>/runs/<run>/seed<k>/metrics.jsonl       one line per training step
    <experiment>/runs/<run>/seed<k>/ledger.json         compute by purpose and phase
    <experiment>/runs/<run>/seed<k>/eval/<suite>.json   final held-out evaluation

Every frame keeps a ``source`` column (the file each row was read from), so any number
in a table or figure can be traced back to the run and seed that produced it. A missing
or malformed file raises ``AnalysisError`` naming the file (and the line or key).

Frames:

- ``final_results``: run, method, seed, suite, accuracy, stderr, n, backend, source
- ``learning_curves``: run, method, seed, step, accuracy, stderr, reward, trained_reward,
  generated_tokens, forwarded_tokens, seconds, source (``accuracy`` is NaN on steps
  without an evaluation; step 0 is the warm start's evaluation)
- ``compute_tokens``: run, method, seed, steps, purpose, generated, forwarded, source
- ``compute_seconds``: run, method, seed, steps, train_seconds, phase, seconds, source
  (``train_seconds``: the ledger's wall-clock of the training steps, collect + credit +
  update, without in-training evaluation and checkpoints; phases may nest: ``generate``
  is timed inside ``collect``)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

EVAL_SPLIT = "test"  # metrics.jsonl's in-training evaluation: "eval/test/accuracy"
FINAL_COLUMNS = ["run", "method", "seed", "suite", "accuracy", "stderr", "n", "backend", "source"]
CURVE_COLUMNS = [
    "run",
    "method",
    "seed",
    "step",
    "accuracy",
    "stderr",
    "reward",
    "trained_reward",
    "generated_tokens",
    "forwarded_tokens",
    "seconds",
    "source",
]
TOKEN_COLUMNS = ["run", "method", "seed", "steps", "purpose", "generated", "forwarded", "source"]
SECONDS_COLUMNS = [
    "run",
    "method",
    "seed",
    "steps",
    "train_seconds",
    "phase",
    "seconds",
    "source",
]


class AnalysisError(ValueError):
    """A results file is missing, malformed or inconsistent; the message names the file."""


# ------------------------------------------------------------------------------ reading


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise AnalysisError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path}: file not found")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{path}:{lineno}: malformed JSON line: {e}") from e
        if not isinstance(row, dict):
            raise AnalysisError(f"{path}:{lineno}: expected a JSON object")
        rows.append(row)
    return rows


def _number(data: dict, key: str, path: Path, required: bool = True) -> float:
    """``data[key]`` as a float; NaN when optional and absent or null."""
    value = data.get(key)
    if value is None:
        if required:
            raise AnalysisError(f"{path}: missing number {key!r} (keys: {sorted(data)})")
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnalysisError(f"{path}: {key!r} must be a number, got {value!r}")
    return float(value)


def _counts(data: dict, key: str, path: Path) -> dict[str, float]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise AnalysisError(f"{path}: {key!r} must be an object of numbers by name, got {value!r}")
    for name, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AnalysisError(f"{path}: {key}[{name!r}] must be a number, got {v!r}")
    return {name: float(v) for name, v in value.items()}


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class RunSeed:
    """One trained run x seed and where its files are."""

    run: str
    seed: int
    dir: Path

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def ledger(self) -> Path:
        return self.dir / "ledger.json"

    def eval(self, suite: str) -> Path:
        return self.dir / "eval" / f"{suite}.json"


def run_seeds(
    exp_dir: str | Path, runs: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> list[RunSeed]:
    """The run x seed directories to read, in run order then seed order.

    With ``runs`` and ``seeds`` given (the Snakemake rules pass the config's), exactly those
    are read and a missing one is an error; otherwise every ``runs/*/seed*`` found.
    """
    root = Path(exp_dir) / "runs"
    if runs is None:
        if not root.is_dir():
            raise AnalysisError(f"{root}: no runs directory (expected runs/<run>/seed<k>/)")
        runs = sorted(p.name for p in root.iterdir() if p.is_dir())
    out = []
    for run in runs:
        if seeds is None:
            found = [
                int(m.group(1))
                for p in (root / run).glob("seed*")
                if p.is_dir() and (m := re.fullmatch(r"seed(\d+)", p.name))
            ]
            run_seeds_ = sorted(found)
        else:
            run_seeds_ = list(seeds)
        out.extend(RunSeed(run, int(s), root / run / f"seed{s}") for s in run_seeds_)
    if not out:
        raise AnalysisError(f"{root}: no run x seed directories found")
    return out


def suites_found(items: Iterable[RunSeed]) -> list[str]:
    """Suites with an eval JSON in any run x seed (``*.samples.jsonl`` are not results)."""
    names = {p.stem for rs in items for p in (rs.dir / "eval").glob("*.json")}
    return sorted(names)


def order_runs(found: Iterable[str], order: Sequence[str] | None = None, baseline: str = "grpo"):
    """Runs in ``order`` (the config's) when given, else sorted with the baseline first."""
    found = list(dict.fromkeys(found))
    if order:
        missing = [r for r in found if r not in order]
        return [r for r in order if r in found] + sorted(missing)
    return sorted(found, key=lambda r: (r != baseline, r))


# ---------------------------------------------------------------------------- frames


def read_ledger(rs: RunSeed) -> dict:
    """A run x seed's ledger, checked against the directory it sits in."""
    path = rs.ledger
    data = read_json(path)
    for key in ("run", "seed"):
        if key in data and str(data[key]) != str(getattr(rs, key)):
            raise AnalysisError(
                f"{path}: {key} {data[key]!r} does not match its directory "
                f"(runs/{rs.run}/seed{rs.seed})"
            )
    steps = _number(data, "steps", path)
    if steps <= 0:
        raise AnalysisError(f"{path}: 'steps' must be positive, got {steps}")
    return data


def _method(ledger: dict) -> str:
    return str(ledger.get("method", ""))


WARM_START = "warm start"  # the run name of the shared initial policy's evaluation


def base_results(exp_dir: str | Path, suites: Sequence[str]) -> pd.DataFrame:
    """The warm start's held-out accuracy (``<experiment>/base/eval/<suite>.json``), as rows
    of run ``warm start``; suites it was not evaluated on are absent."""
    rows = []
    for suite in suites:
        path = Path(exp_dir) / "base" / "eval" / f"{suite}.json"
        if path.is_file():
            rows.append(_final_row(path, suite, WARM_START, "", 0))
    df = pd.DataFrame(rows, columns=FINAL_COLUMNS)
    return df.astype({"seed": int, "accuracy": float, "stderr": float, "n": "Int64"})


def _final_row(path: Path, suite: str, run: str, method: str, seed: int) -> dict:
    data = read_json(path)
    if data.get("suite", suite) != suite:
        raise AnalysisError(f"{path}: holds suite {data['suite']!r}, not {suite!r}")
    accuracy = _number(data, "accuracy", path)
    if not 0.0 <= accuracy <= 1.0:
        raise AnalysisError(f"{path}: accuracy {accuracy} is not in [0, 1]")
    n = _number(data, "n", path, required=False)
    return {
        "run": run,
        "method": method,
        "seed": seed,
        "suite": suite,
        "accuracy": accuracy,
        "stderr": _number(data, "stderr", path, required=False),
        "n": pd.NA if math.isnan(n) else int(n),
        "backend": str(data.get("backend", "")),
        "source": str(path),
    }


def final_results(items: Sequence[RunSeed], suites: Sequence[str]) -> pd.DataFrame:
    """Final held-out accuracy: one row per run x seed x suite."""
    rows = []
    for rs in items:
        method = _method(read_ledger(rs))
        for suite in suites:
            rows.append(_final_row(rs.eval(suite), suite, rs.run, method, rs.seed))
    df = pd.DataFrame(rows, columns=FINAL_COLUMNS)
    return df.astype({"seed": int, "accuracy": float, "stderr": float, "n": "Int64"})


def learning_curves(items: Sequence[RunSeed], split: str = EVAL_SPLIT) -> pd.DataFrame:
    """Every metrics row: eval accuracy (NaN between evaluations), reward and counters."""
    acc_key, err_key = f"eval/{split}/accuracy", f"eval/{split}/stderr"
    rows = []
    for rs in items:
        method = _method(read_ledger(rs))
        path = rs.metrics
        records = read_jsonl(path)
        if not records:
            raise AnalysisError(f"{path}: no metrics rows")
        for lineno, rec in enumerate(records, start=1):
            where = Path(f"{path}:{lineno}")
            rows.append(
                {
                    "run": rs.run,
                    "method": method,
                    "seed": rs.seed,
                    "step": int(_number(rec, "step", where)),
                    "accuracy": _number(rec, acc_key, where, required=False),
                    "stderr": _number(rec, err_key, where, required=False),
                    "reward": _number(rec, "reward", where, required=False),
                    "trained_reward": _number(rec, "trained_reward", where, required=False),
                    "generated_tokens": _number(rec, "generated_tokens", where, required=False),
                    "forwarded_tokens": _number(rec, "forwarded_tokens", where, required=False),
                    "seconds": _number(rec, "seconds", where, required=False),
                    "source": str(path),
                }
            )
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).astype({"seed": int, "step": int})


def compute_tokens(items: Sequence[RunSeed]) -> pd.DataFrame:
    """Tokens generated and forwarded by purpose (ledger totals over the whole run)."""
    rows = []
    for rs in items:
        data = read_ledger(rs)
        generated = _counts(data, "generated_tokens", rs.ledger)
        forwarded = _counts(data, "forwarded_tokens", rs.ledger)
        for purpose in sorted(set(generated) | set(forwarded)):
            rows.append(
                {
                    "run": rs.run,
                    "method": _method(data),
                    "seed": rs.seed,
                    "steps": int(data["steps"]),
                    "purpose": purpose,
                    "generated": generated.get(purpose, 0.0),
                    "forwarded": forwarded.get(purpose, 0.0),
                    "source": str(rs.ledger),
                }
            )
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS).astype({"seed": int, "steps": int})


def compute_seconds(items: Sequence[RunSeed]) -> pd.DataFrame:
    """Wall-clock seconds by phase (``collect``, ``generate`` within it, ``update``, ...)."""
    rows = []
    for rs in items:
        data = read_ledger(rs)
        train_seconds = _number(data, "train_seconds", rs.ledger)
        for phase, seconds in sorted(_counts(data, "seconds", rs.ledger).items()):
            rows.append(
                {
                    "run": rs.run,
                    "method": _method(data),
                    "seed": rs.seed,
                    "steps": int(data["steps"]),
                    "train_seconds": train_seconds,
                    "phase": phase,
                    "seconds": seconds,
                    "source": str(rs.ledger),
                }
            )
    return pd.DataFrame(rows, columns=SECONDS_COLUMNS).astype({"seed": int, "steps": int})


@dataclass
class Results:
    """An experiment's tidy frames and its run order."""

    runs: list[str]
    final: pd.DataFrame
    curves: pd.DataFrame
    tokens: pd.DataFrame
    seconds: pd.DataFrame
    base: pd.DataFrame | None = None  # the warm start's final evaluation, when present


def load(
    exp_dir: str | Path,
    runs: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    suites: Sequence[str] | None = None,
    baseline: str = "grpo",
    final: bool = True,
    curves: bool = True,
) -> Results:
    """Read an experiment directory; ``final``/``curves`` False skips those files."""
    items = run_seeds(exp_dir, runs, seeds)
    if suites is None:
        suites = suites_found(items) if final else []
    empty_final = pd.DataFrame(columns=FINAL_COLUMNS)
    empty_curves = pd.DataFrame(columns=CURVE_COLUMNS)
    return Results(
        runs=order_runs([rs.run for rs in items], runs, baseline),
        final=final_results(items, suites) if final else empty_final,
        curves=learning_curves(items) if curves else empty_curves,
        tokens=compute_tokens(items),
        seconds=compute_seconds(items),
        base=base_results(exp_dir, suites) if final else None,
    )


# ------------------------------------------------------------------------ command line


def csv_list(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by the analysis command lines."""
    parser.add_argument("experiment", help="experiment directory, e.g. results/default")
    parser.add_argument(
        "--runs", type=csv_list, help="comma-separated runs, in table order (default: all found)"
    )
    parser.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in csv_list(s)],
        help="comma-separated seeds (default: all found)",
    )
    parser.add_argument(
        "--suites", type=csv_list, help="comma-separated eval suites (default: all found)"
    )
    parser.add_argument("--baseline", default="grpo", help="run to compare against (default: grpo)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.collect",
        description="Write an experiment's tidy results as CSV files (final, curves, "
        "tokens, seconds).",
    )
    add_selection_args(parser)
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        res = load(args.experiment, args.runs, args.seeds, args.suites, args.baseline)
    except AnalysisError as e:
        print(f"analysis: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("final", "curves", "tokens", "seconds"):
        frame = getattr(res, name)
        frame.to_csv(out / f"{name}.csv", index=False)
        print(f"{out / f'{name}.csv'}: {len(frame)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
