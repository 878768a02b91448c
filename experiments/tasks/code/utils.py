"""Code suites: each record becomes ``cb_prompt`` (the task and the ```python-block
instruction), ``cb_entry`` (the function under test), ``cb_header`` (code the program needs
before the model's: HumanEval's imports and helpers) and ``cb_tests``; a response scores
pass@1 = 1 when the program in its code block passes the tests in creditbench's sandbox.

Generated code runs ONLY through ``creditbench.sandbox.check_program`` (time, memory,
file-system and network limits), never through lm-eval's or HF evaluate's ``code_eval``.
As in training's reward, the tests see only exact-typed plain data from the program.
"""

from __future__ import annotations

import re

from creditbench.lmeval import code_block

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Write the whole function (its signature, body "
    "and any imports it needs) in a single ```python code block."
)
MBPP_INSTRUCTION = "Write the function in Python, in a single ```python code block."
LIMITS = None  # the sandbox's limits (None: its defaults, 10 s and 1 GiB per program)


def _humaneval(doc: dict) -> dict:
    entry = doc["entry_point"]
    definition = re.search(rf"^def\s+{re.escape(entry)}\s*\(", doc["prompt"], re.M)
    header = doc["prompt"][: definition.start()] if definition else ""
    return {
        "cb_prompt": f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{doc['prompt'].rstrip()}\n```",
        "cb_entry": entry,
        "cb_header": header,
        "cb_tests": f"{doc['test']}\n\ncheck({entry})\n",
    }


def _tested_function(code: str, tests: list[str]) -> str:
    """The reference solution's function that the tests call (MBPP names it nowhere else)."""
    for name in re.findall(r"^def\s+(\w+)\s*\(", code, re.M):
        if any(re.search(rf"\b{re.escape(name)}\s*\(", t) for t in tests):
            return name
    return ""


def _mbpp(doc: dict) -> dict:
    tests = list(doc["test_list"])
    listed = "\n".join(tests)
    return {
        "cb_prompt": (
            f"You are an expert Python programmer, and here is your task: {doc['text'].strip()}"
            f" Your code should pass these tests:\n\n{listed}\n\n{MBPP_INSTRUCTION}"
        ),
        "cb_entry": _tested_function(doc["code"], tests),
        "cb_header": "",
        "cb_tests": "\n".join([doc.get("test_setup_code") or "", *tests]).strip() + "\n",
    }


def humaneval_docs(dataset):
    return dataset.map(_humaneval)


def mbpp_docs(dataset):
    return dataset.map(_mbpp)


def program_of(response: str, doc: dict) -> str | None:
    """The program to test: the response's code block, after the task's header; a block that
    only continues HumanEval's prompt (no ``def`` of the function) is appended to the prompt."""
    code = code_block(response, doc["cb_entry"] or None)
    if code is None:
        return None
    entry = doc["cb_entry"]
    if (
        entry
        and not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M)
        and "prompt" in doc
    ):
        return doc["prompt"] + code
    return doc["cb_header"] + code


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    from creditbench.sandbox import SandboxLimits, check_program

    program = program_of(results[0], doc)
    if program is None:
        return {"pass@1": 0.0}
    result = check_program(program, doc["cb_tests"], LIMITS or SandboxLimits())
    return {"pass@1": float(result.ok)}
