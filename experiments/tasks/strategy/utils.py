"""StrategyQA: each record becomes ``cb_prompt`` (the question and the ``\\boxed{}``
instruction) and ``cb_gold`` (``yes`` or ``no``); a response scores 1 when the word it boxes
(or states as its answer) is the gold."""

from __future__ import annotations

from creditbench.lmeval import yes_no_answer

INSTRUCTION = (
    "Answer the following yes/no question. Think step by step, then put your final answer, "
    "yes or no, within \\boxed{}, e.g. \\boxed{yes}."
)


def gold(answer) -> str:
    """The dataset's boolean answer (``true``; some copies have "yes"/"True") as yes/no."""
    if isinstance(answer, str):
        word = answer.strip().lower()
        if word not in ("yes", "no", "true", "false"):
            raise ValueError(f"StrategyQA answer {answer!r} is not a yes/no")
        return "yes" if word in ("yes", "true") else "no"
    return "yes" if answer else "no"


def _strategyqa(doc: dict) -> dict:
    return {
        "cb_prompt": f"{INSTRUCTION}\n\nQuestion: {doc['question'].strip()}",
        "cb_gold": gold(doc["answer"]),
    }


def strategyqa_docs(dataset):
    return dataset.map(_strategyqa)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"acc": float(yes_no_answer(results[0]) == doc["cb_gold"])}
