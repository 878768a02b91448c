"""Scoring for the chains suites: the testbed's own verifier (one well-formed ``A:<n>`` line)."""

from creditbench.tasks.chains import extract_answer


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    answer = extract_answer(results[0])
    return {"acc": float(answer is not None and answer == str(doc["answer"]))}
