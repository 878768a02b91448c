"""Multiple-choice science suites: each record becomes ``cb_prompt`` (the question, lettered
options and the ``\\boxed{}`` instruction) and ``cb_gold`` (the correct letter); a response
scores 1 when the letter it boxes (or states as its answer) is the gold."""

from __future__ import annotations

import hashlib
import random

from creditbench.lmeval import OPTION_LETTERS as LETTERS
from creditbench.lmeval import choice_answer
from creditbench.lmeval import choice_prompt as prompt


def shuffled(question: str, correct: str, wrong: list[str]) -> tuple[list[str], str]:
    """Options in an order fixed by the question text (same on every run and machine)."""
    options = [correct, *wrong]
    seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    random.Random(seed).shuffle(options)
    return options, LETTERS[options.index(correct)]


def _gpqa(doc: dict) -> dict:
    wrong = [doc[f"Incorrect Answer {i}"].strip() for i in (1, 2, 3)]
    options, gold = shuffled(doc["Question"], doc["Correct Answer"].strip(), wrong)
    return {"cb_prompt": prompt(doc["Question"], options), "cb_gold": gold}


def _arc(doc: dict) -> dict:
    # labels are A-E in most records and 1-5 in a few: options are relettered by position
    options = doc["choices"]["text"]
    gold = LETTERS[doc["choices"]["label"].index(doc["answerKey"])]
    return {"cb_prompt": prompt(doc["question"], options), "cb_gold": gold}


def _sciq(doc: dict) -> dict:
    wrong = [doc["distractor1"], doc["distractor2"], doc["distractor3"]]
    options, gold = shuffled(doc["question"], doc["correct_answer"], wrong)
    return {"cb_prompt": prompt(doc["question"], options), "cb_gold": gold}


def gpqa_docs(dataset):
    return dataset.map(_gpqa)


def arc_docs(dataset):
    return dataset.map(_arc)


def sciq_docs(dataset):
    return dataset.map(_sciq)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"acc": float(choice_answer(results[0], LETTERS) == doc["cb_gold"])}
