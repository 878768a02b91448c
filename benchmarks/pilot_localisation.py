"""Pilot: which answer format makes the testbed's self-localisation a real skill.

SRPO resets a failed chain at the thought the policy itself names as its first wrong
one, so on the testbed that naming must be a skill the warm start can learn, imperfect
but well above chance; otherwise SRPO is RRPO (a random reset) by construction. This
script trains the warm start's skill phase (``warm_start.skill_steps`` steps of
self-localisation on planted errors, half the batch replaying solutions) from one base
policy for each ``task.localisation_answer`` format, and prints the greedy localisation
accuracy on planted errors (``corrupted``) and on the policy's own failed chains
(``own``), against chance (uniform over the thoughts), and the recovery rates of
prefixes (``evaluate_localisation``):

- ``index``: the 1-based index alone (``2``), as SRPO's math prompt asks;
- ``verdicts``: a mark per thought up to the first wrong one (``1+2-``);
- ``review``: each thought up to the first wrong one as the value it wrote and its step
  redone (``1|12=7+5=12``, ``2|35=12*3=36``); the first whose values differ is named.

    python benchmarks/pilot_localisation.py --base results/default/base \\
        --data results/default/data --out results/pilot/pilot_localisation.md

The base is any warm-started testbed policy (its solving phase is what matters; its own
localisation training is overwritten by the skill phase here). Each format takes about
four minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from creditbench.config import load_experiment
from creditbench.warmstart import warm_start

FORMATS = ("index", "verdicts", "review")


def pilot(config: str, base: str, data: str, fmt: str, steps: int, work: Path) -> dict:
    cfg = load_experiment(
        config,
        {
            "task": {"localisation_answer": fmt},
            "model": {"path": str(Path(base).resolve())},
            "warm_start": {"steps": 0, "skill_steps": steps, "skills": ["localisation"]},
        },
    )
    start = time.monotonic()
    record = warm_start(cfg, data, work / fmt)
    return {"format": fmt, "seconds": time.monotonic() - start, **record["localisation"]}


def table(rows: list[dict]) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}"

    lines = [
        "| format | corrupted | chance | own | chance | recovery clean | erroneous | after slip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {pct(r['corrupted_accuracy'])} | {pct(r['corrupted_chance'])} "
            f"| {pct(r['own_accuracy'])} (n={r['own_n']}) | {pct(r['own_chance'])} "
            f"| {pct(r['own_recovery_clean'])} | {pct(r['own_recovery_erroneous'])} "
            f"| {pct(r['own_recovery_after_slip'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/default.yaml")
    ap.add_argument("--base", required=True, help="a warm-started testbed policy folder")
    ap.add_argument("--data", required=True, help="the experiment's data folder")
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--steps", type=int, default=500, help="skill-phase steps per format")
    ap.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for fmt in args.formats:
            rows.append(pilot(args.config, args.base, args.data, fmt, args.steps, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    text = (
        f"Self-localisation after {args.steps} skill steps from {args.base} "
        "(greedy; accuracy %, own/corrupted: the policy's own failed chains / planted "
        "errors; recovery: success of continuations from the policy's own failed chains' "
        "prefixes)\n\n" + table(rows) + "\n"
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
