"""Scoring for the chains suites: the testbed's own verifier, as training's reward.

A completion scores 1 for one well-formed ``A:<n>`` line with the right answer and, where
it holds a repair thought, only if the step oracle's reading of the whole chain is right
too (``creditbench.tasks.chains.verify``: no reward for a blind or wrong repair). With
sampled evaluation every completion of a problem is kept, and the score is their mean
(mean@k); greedy evaluation has one. A response is read as the engine generates a chain
(the task's thought rules): it ends after the thought, the line, that holds ``A:``.
"""

from creditbench.tasks import Problem
from creditbench.tasks.chains import verify


def as_generated(response: str) -> str:
    """The response cut after the line holding the answer marker, as the engine's thought
    rules end a chain (``ChainsTask.thought_rules``: delimiter ``\n``, marker ``A:``)."""
    k = response.find("A:")
    end = response.find("\n", k) if k >= 0 else -1
    return response if end < 0 else response[: end + 1]


def process_results(doc: dict, results: list) -> dict[str, float]:
    responses = results[0] if results and isinstance(results[0], list) else results
    problem = Problem(
        id=str(doc["id"]), prompt=doc["prompt"], answer=str(doc["answer"]), meta=doc["meta"]
    )
    correct = [verify(problem, as_generated(r)) for r in responses]
    return {"acc": sum(correct) / len(correct)}
