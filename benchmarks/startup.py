"""Seconds a job's process spends importing, before it does any work.

Each row is the median wall time of ``--repeats`` fresh interpreters running
``python -c "import ..."`` for the modules a job's command imports: the training and
warm-start jobs (``creditbench.train``, ``creditbench.warmstart``), evaluation
(``creditbench.evaluate``) and the diagnostics (``creditbench.diagnostics``). The row
``+ transformers.optimization`` adds the module that ``transformers.get_scheduler``
lives in, which imports the Trainer's utilities and through them peft when it is
installed: the cost that ``creditbench.schedules`` takes out of every training and
warm-start process.

    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

ROWS = {
    "train": ["creditbench.train"],
    "train + transformers.optimization": ["creditbench.train", "transformers.optimization"],
    "warmstart": ["creditbench.warmstart"],
    "evaluate": ["creditbench.evaluate"],
    "diagnostics": ["creditbench.diagnostics"],
}


def seconds(modules: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    seconds(["torch", "transformers"])  # warm the file cache
    print(f"{'imports':36} {'median s':>8} {'min s':>6}")
    for name, modules in ROWS.items():
        times = [seconds(modules) for _ in range(args.repeats)]
        print(f"{name:36} {statistics.median(times):>8.2f} {min(times):>6.2f}")


if __name__ == "__main__":
    main()
