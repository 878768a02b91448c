"""Scoring for the chains suites: the testbed's own verifier (one well-formed ``A:<n>`` line).

With sampled evaluation every completion of a problem is kept, and the score is their
mean (mean@k); greedy evaluation has one.
"""

from creditbench.tasks.chains import extract_answer


def process_results(doc: dict, results: list) -> dict[str, float]:
    responses = results[0] if results and isinstance(results[0], list) else results
    correct = [extract_answer(r) == str(doc["answer"]) for r in responses]
    return {"acc": sum(correct) / len(correct)}
