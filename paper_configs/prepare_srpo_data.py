"""Build the SRPO paper configs' training and test files (400 + 100 NuminaMath olympiads).

The selection follows the SRPO repository (Ankur-Samanta/SRPO,
``training/scripts/prepare_datasets.py``: ``_load_numinamath``, ``_is_verifiable_answer``,
``_fix_answer`` and ``to_verl_parquet``); this file is our own implementation of it:

1. the ``AI-MO/NuminaMath-CoT`` train rows whose ``source`` is ``olympiads``, in order;
2. the gold answer is the solution's last brace-balanced ``\\boxed{...}``; rows without
   one are dropped;
3. a bare ``frac{`` / ``sqrt{`` / ``log{`` / ``ln{`` at the start (or ``frac{`` / ``sqrt{``
   after a blank) gets its backslash;
4. only answers that can be checked reliably are kept (``verifiable``);
5. the kept rows are shuffled by ``pandas.DataFrame.sample(frac=1, random_state=42)``;
   rows 0-399 are the training set, rows 400-499 the test set.

Usage (from the directory Snakemake runs in): ``python paper_configs/prepare_srpo_data.py``
writes ``paper_configs/data/numina_olympiads_{train,test}.jsonl`` (fields ``problem``,
``answer``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SEED, N_TRAIN, N_TEST = 42, 400, 100
_UNITS = re.compile(r"\b(sq|cm|yd|km|kg|lb|oz|ft|mi)\b|cm[²³]|m[²³]")


def last_boxed(text: str) -> str:
    """The content of the last brace-balanced ``\\boxed{...}``; "" if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return ""
    depth, i = 1, start + len("\\boxed{")
    begin = i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
        i += 1
    return ""


def fix_answer(answer: str) -> str:
    """Restore the backslash of a bare ``frac{`` / ``sqrt{`` (and, leading, ``log{`` / ``ln{``)."""
    answer = re.sub(r"^(frac|sqrt|log|ln)\{", lambda m: "\\" + m.group(1) + "{", answer)
    return re.sub(r"(?<=\s)(frac|sqrt)\{", lambda m: "\\" + m.group(1) + "{", answer)


def verifiable(answer: str) -> bool:
    """Whether a reward on this answer can be trusted (the repository's whitelist).

    At most 60 characters with balanced braces and parentheses; a single letter A-E is
    kept; otherwise it needs a digit, no word of three or more letters once LaTeX
    commands are removed, no ``\\text`` / ``\\mathrm`` / ``\\textbf``, no leading
    punctuation, no ``%``, ``~``, ``**`` or the word "or", and no unit.
    """
    if not answer or len(answer) > 60:
        return False
    if answer.count("{") != answer.count("}") or answer.count("(") != answer.count(")"):
        return False
    if re.fullmatch(r"[A-E]", answer):
        return True
    if re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", "", answer)):
        return False
    if not re.search(r"\d", answer) or re.search(r"\\(text|mathrm|textbf)", answer):
        return False
    if re.match(r"[};.,:~\-*]\s?", answer):
        return False
    return not (re.search(r"%|~|\*\*|\bor\b", answer) or _UNITS.search(answer))


def select(rows) -> tuple[list[dict], list[dict]]:
    """``rows``: NuminaMath-CoT records in dataset order -> (train, test) records."""
    import pandas as pd

    kept = []
    for row in rows:
        if row["source"] != "olympiads":
            continue
        answer = fix_answer(last_boxed(row["solution"]))
        if verifiable(answer):
            kept.append({"problem": row["problem"], "answer": answer})
    df = pd.DataFrame(kept, columns=["problem", "answer"])
    df = df.sample(frac=1, random_state=SEED).reset_index(drop=True)
    records = df.to_dict(orient="records")
    return records[:N_TRAIN], records[N_TRAIN : N_TRAIN + N_TEST]


def main(out_dir: str = "paper_configs/data") -> None:
    import json

    from datasets import load_dataset

    rows = load_dataset("AI-MO/NuminaMath-CoT", split="train", streaming=True)
    train, test = select(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, records in (("train", train), ("test", test)):
        path = out / f"numina_olympiads_{name}.jsonl"
        with path.open("w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        print(f"{path}: {len(records)} problems")


if __name__ == "__main__":
    main(*sys.argv[1:])
