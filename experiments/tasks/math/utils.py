"""Math suites: each dataset's records become ``cb_prompt`` (the problem and the
``\\boxed{}`` instruction) and ``cb_gold`` (the reference answer); a response scores 1
when its final ``\\boxed{}`` answer equals the gold by math-verify."""

from __future__ import annotations

from creditbench.lmeval import last_boxed, score_math

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def prompt(problem: str) -> str:
    return f"{problem.strip()}\n\n{INSTRUCTION}"


def _number(x) -> str:
    """An integer-valued answer (AIME/AMC ``70``, ``70.0``, ``"070"``) as ``"70"``; others as text."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x).strip()
    return str(int(f)) if f.is_integer() else str(x).strip()


def _docs(dataset, problem_key: str, gold):
    return dataset.map(lambda d: {"cb_prompt": prompt(d[problem_key]), "cb_gold": gold(d)})


def gsm8k_gold(doc: dict) -> str:
    """GSM8K's answer is the worked solution ending ``#### 1,234``."""
    return doc["answer"].split("####")[-1].strip().replace(",", "")


def math_gold(doc: dict) -> str:
    """MATH: the last ``\\boxed{}`` of the solution (MATH-500 also has it as ``answer``)."""
    answer = doc.get("answer")
    if answer:
        return str(answer).strip()
    boxed = last_boxed(doc["solution"])
    if boxed is None:
        raise ValueError(f"MATH solution without a \\boxed{{}} answer: {doc['solution'][-200:]!r}")
    return boxed


def olympiad_gold(doc: dict) -> str:
    """OlympiadBench: ``final_answer`` is a list of LaTeX strings in ``$...$``."""
    answers = doc["final_answer"]
    if isinstance(answers, str):
        answers = [answers]
    return ", ".join(a.strip().strip("$").strip() for a in answers)


def gsm8k_docs(dataset):
    return _docs(dataset, "question", gsm8k_gold)


def math_docs(dataset):
    return _docs(dataset, "problem", math_gold)


def math_level5_docs(dataset):
    return math_docs(dataset.filter(lambda d: d["level"] == "Level 5"))


def amc23_docs(dataset):
    return _docs(dataset, "question", lambda d: _number(d["answer"]))


def aime24_docs(dataset):
    return _docs(dataset, "Problem", lambda d: _number(d["Answer"]))


def aime25_docs(dataset):
    return _docs(dataset, "problem", lambda d: _number(d["answer"]))


def olympiad_docs(dataset):
    return _docs(dataset, "question", olympiad_gold)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"acc": score_math(results[0], doc["cb_gold"])}


def process_math_test(doc: dict, results: list) -> dict[str, float]:
    """The math task's own suite: scored by the training reward, mean over the samples.

    The final ``\\boxed{}`` answer, or the ``#### n`` line of a response without one (the
    task's ``completion_answer: gsm8k``, for GSM8K-style SFT checkpoints).
    """
    from creditbench.tasks.math import boxed_reward, gsm8k_reward, last_boxed

    def score(r: str) -> float:
        reward = boxed_reward if last_boxed(r) is not None else gsm8k_reward
        return reward(str(doc["answer"]), r)

    responses = results[0] if results and isinstance(results[0], list) else results
    return {"acc": sum(score(r) for r in responses) / len(responses)}
