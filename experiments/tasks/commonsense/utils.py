"""CommonsenseQA: each record becomes ``cb_prompt`` (the question, its five lettered options
and the ``\\boxed{}`` instruction) and ``cb_gold`` (the correct letter); a response scores 1
when the letter it boxes (or states as its answer) is the gold."""

from __future__ import annotations

from creditbench.lmeval import OPTION_LETTERS, choice_answer, choice_prompt


def _csqa(doc: dict) -> dict:
    labels, options = doc["choices"]["label"], doc["choices"]["text"]
    gold = OPTION_LETTERS[labels.index(doc["answerKey"])]
    return {"cb_prompt": choice_prompt(doc["question"], options), "cb_gold": gold}


def commonsense_qa_docs(dataset):
    return dataset.map(_csqa)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"acc": float(choice_answer(results[0], OPTION_LETTERS) == doc["cb_gold"])}
