"""The real-benchmark suites (experiments/tasks/{math,science,strategy,commonsense,code}).

Every suite runs through lm-eval's ``simple_evaluate`` on a few records written here in its
dataset's own format (never downloaded), with a scripted model whose canned response is
chosen by a marker in the prompt, so each test asserts exact scores: a correct answer
(equivalent forms included) scores 1, a wrong or malformed one 0, and a hostile program 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from creditbench.lmeval import (
    TASKS_DIR,
    choice_answer,
    code_block,
    evaluate_suite,
    final_answer,
    last_boxed,
    local_loader,
    math_equal,
    suite_spec,
    yes_no_answer,
)

pytest.importorskip("lm_eval")
pytest.importorskip("math_verify")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

Response = str | Callable[[str], str]


class ScriptedLM(LM):
    """Answers each request with the response whose marker occurs in its prompt.

    Only generation: a suite that asked for log-likelihoods would fail the test.
    """

    responses: dict[str, Response] = {}  # for instances lm-eval builds by name

    def __init__(self, responses: dict[str, Response] | None = None, **_model_args):
        super().__init__()
        self.script = dict(self.responses if responses is None else responses)
        self.prompts: dict[str, str] = {}
        self.requests: list[tuple[str, dict]] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            prompt, gen_kwargs = request.args
            self.requests.append((prompt, gen_kwargs))
            markers = [m for m in self.script if m in prompt]
            assert len(markers) == 1, f"prompt matches markers {markers}: {prompt[:300]!r}"
            self.prompts[markers[0]] = prompt
            response = self.script[markers[0]]
            out.append(response(prompt) if callable(response) else response)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise AssertionError("the suites are generation-only")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise AssertionError("the suites are generation-only")

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in chat_history)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")

    @property
    def tokenizer_name(self) -> str:
        return "scripted"


register_model("cb_scripted_test")(ScriptedLM)


def pick(option: str, template: str = "So the answer is \\boxed{{{}}}.") -> Callable[[str], str]:
    """A response choosing the letter that the prompt gives ``option`` (options are shuffled)."""

    def respond(prompt: str) -> str:
        m = re.search(rf"^([A-H])\. {re.escape(option)}$", prompt, re.M)
        assert m, f"option {option!r} not listed in the prompt"
        return template.format(m.group(1))

    return respond


@dataclass
class Case:
    marker: str  # occurs in the record's question, so in its prompt
    record: dict
    response: Response
    score: float


# where each dataset keeps its question (HumanEval: the signature and docstring)
QUESTION_FIELDS = ("question", "problem", "Problem", "Question", "text", "prompt")
MATH_INSTRUCTION = "put your final answer within \\boxed{}"
CHOICE_INSTRUCTION = "letter of the correct option"

# ---------------------------------------------------------------- math records
GSM8K = [
    Case(
        "Natalia sold clips",
        {
            "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
            "as many clips in May. How many clips did Natalia sell altogether in April and May?",
            "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
        },
        "In May she sold 24, so 48 + 24 = 72.\n\n$\\boxed{72}$",
        1.0,
    ),
    Case(
        "Weng earns",
        {
            "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 "
            "minutes of babysitting. How much did she earn?",
            "answer": "12/60 = $<<12/60=0.2>>0.2 per minute.\n50 * 0.2 = $<<50*0.2=10>>10.\n#### 10",
        },
        "She earned \\boxed{\\$10.00}.",
        1.0,
    ),
    Case(
        "library has 1,250 books",
        {
            "question": "A library has 1,250 books and buys 30 more. How many books does it have?",
            "answer": "1,250 + 30 = <<1250+30=1280>>1,280\n#### 1,280",
        },
        "1250 + 30 = \\boxed{1280}",
        1.0,
    ),
    Case(
        "Betty is saving",
        {
            "question": "Betty is saving money for a new wallet which costs $100. Betty has only "
            "half of the money she needs. Her parents give her $15, and her grandparents twice "
            "as much. How much more money does Betty need?",
            "answer": "50 - 15 - 30 = <<50-15-30=5>>5\n#### 5",
        },
        "She needs \\boxed{6} more dollars.",
        0.0,
    ),
    Case(
        "James writes",
        {
            "question": "James writes a 3-page letter to 2 different friends twice a week. How "
            "many pages does he write a year?",
            "answer": "3*2*2*52 = <<3*2*2*52=624>>624\n#### 624",
        },
        "He writes \\boxed{624",  # never closed
        0.0,
    ),
    Case(
        "Julie is reading",
        {
            "question": "Julie is reading a 120-page book. She read 12 pages yesterday. How many "
            "pages are left?",
            "answer": "120 - 12 = <<120-12=108>>108\n#### 108",
        },
        "I think there are 108 pages left.",  # no \boxed{}, no stated final answer
        0.0,
    ),
]

MATH500 = [
    Case(
        "Convert the point",
        {
            "problem": "Convert the point $(0,3)$ in rectangular coordinates to polar "
            "coordinates.  Enter your answer in the form $(r,\\theta),$ where $r > 0$ and "
            "$0 \\le \\theta < 2 \\pi.$",
            "solution": "We have that $r = 3$ and $\\theta = \\frac{\\pi}{2}$, so the polar "
            "coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
            "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
            "subject": "Precalculus",
            "level": 2,
            "unique_id": "test/precalculus/807.json",
        },
        "So the point is $\\boxed{(3, \\frac{\\pi}{2})}$.",
        1.0,
    ),
    Case(
        "probability of heads",
        {
            "problem": "A fair coin is flipped once. What is the probability of heads?",
            "solution": "One of two equally likely outcomes: $\\boxed{\\frac{1}{2}}$.",
            "answer": "\\frac{1}{2}",
            "subject": "Counting & Probability",
            "level": 1,
            "unique_id": "test/counting_and_probability/1.json",
        },
        "The probability is \\boxed{0.5}.",
        1.0,
    ),
    Case(
        "If $f(x) = \\frac{3x-2}{x-2}$",
        {
            "problem": "If $f(x) = \\frac{3x-2}{x-2}$, what is the value of $f(-2) +f(-1)+f(0)$? "
            "Express your answer as a common fraction.",
            "solution": "$f(-2)+f(-1)+f(0)=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$",
            "answer": "\\frac{14}{3}",
            "subject": "Algebra",
            "level": 3,
            "unique_id": "test/algebra/2584.json",
        },
        "The sum is $\\boxed{\\frac{13}{3}}$.",
        0.0,
    ),
    Case(
        "How many positive whole-number divisors does 196",
        {
            "problem": "How many positive whole-number divisors does 196 have?",
            "solution": "$196 = 2^2 \\cdot 7^2$, so it has $(2+1)(2+1) = \\boxed{9}$ divisors.",
            "answer": "9",
            "subject": "Number Theory",
            "level": 3,
            "unique_id": "test/number_theory/572.json",
        },
        "It has \\boxed{} divisors.",  # empty
        0.0,
    ),
]

MATH_LEVEL5 = [
    Case(
        "What fraction of the square",
        {
            "problem": "What fraction of the square is shaded?",
            "level": "Level 5",
            "type": "Geometry",
            "solution": "Three of the four congruent parts are shaded: $\\boxed{\\dfrac{3}{4}}$.",
        },
        "Three quarters: \\boxed{0.75}",
        1.0,
    ),
    Case(
        "Find the smallest positive integer $k$",
        {
            "problem": "Find the smallest positive integer $k$ such that $k^2 > 3$.",
            "level": "Level 5",
            "type": "Number Theory",
            "solution": "$1^2 = 1 < 3$ and $2^2 = 4 > 3$, so $k = \\boxed{2}$.",
        },
        "Final Answer: The final answer is $2$. I hope it is correct.",  # Minerva's format
        1.0,
    ),
    Case(
        "Compute $\\dbinom{8}{4}$",
        {
            "problem": "Compute $\\dbinom{8}{4}$.",
            "level": "Level 5",
            "type": "Counting & Probability",
            "solution": "$\\dbinom{8}{4} = \\boxed{70}$.",
        },
        "\\boxed{56}",
        0.0,
    ),
    Case(  # not level 5: filtered out, never asked
        "What is $1+1$",
        {
            "problem": "What is $1+1$?",
            "level": "Level 1",
            "type": "Prealgebra",
            "solution": "$1+1=\\boxed{2}$.",
        },
        "\\boxed{2}",
        float("nan"),
    ),
]

AMC23 = [
    Case(
        "Cities $A$ and $B$ are $45$ miles apart",
        {
            "id": 0,
            "question": "Cities $A$ and $B$ are $45$ miles apart. Alicia bikes towards $B$ at 18 "
            "miles per hour. Leaving at the same time, Beth bikes toward $A$ at 12 miles per "
            "hour. How many miles from City $A$ will they be when they meet?",
            "answer": 27.0,
            "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_1",
        },
        "They meet after 1.5 hours, $18 \\cdot 1.5 = \\boxed{27}$.",
        1.0,
    ),
    Case(
        "Positive real numbers $x$ and $y$",
        {
            "id": 1,
            "question": "Positive real numbers $x$ and $y$ satisfy $y^3=x^2$ and "
            "$(y-x)^2=4y^2$. What is $x+y$?",
            "answer": 36.0,
            "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_2",
        },
        "\\boxed{35}",
        0.0,
    ),
]

AIME24 = [
    Case(
        "Every morning Aya goes",
        {
            "ID": "2024-I-1",
            "Problem": "Every morning Aya goes for a $9$-kilometer-long walk and stops at a "
            "coffee shop afterwards. ... Find the number of minutes the walk takes her.",
            "Solution": "... $\\boxed{204}$",
            "Answer": 204,
        },
        "The walk takes \\boxed{204} minutes.",
        1.0,
    ),
    Case(
        "Let $ABC$ be a triangle inscribed",
        {
            "ID": "2024-I-10",
            "Problem": "Let $ABC$ be a triangle inscribed in circle $\\omega$. ... $AP$ can be "
            "written as $\\frac{m}{n}$. Find $m + n$.",
            "Solution": "... $\\boxed{113}$",
            "Answer": 113,
        },
        "The answer is 113.",  # stated, not boxed
        0.0,
    ),
]

AIME25 = [
    Case(
        "Find the sum of all integer bases",
        {
            "problem": "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor "
            "of $97_b$.",
            "answer": "70",
            "id": "0",
        },
        "The bases are 21 and 49, so \\boxed{70}.",
        1.0,
    ),
    Case(
        "On $\\triangle ABC$ points",
        {
            "problem": "On $\\triangle ABC$ points $A,D,E$, and $B$ lie in that order on side "
            "$\\overline{AB}$ ... Find the area of heptagon $AFNBCEM$.",
            "answer": "588",
            "id": "1",
        },
        "\\boxed{558}",
        0.0,
    ),
]

OLYMPIAD = [
    Case(
        "Let $x$ be the positive real number",
        {
            "id": 1606,
            "question": "Let $x$ be the positive real number with $x^2 = 2$. Compute $x$.",
            "solution": ["Since $x > 0$, $x = \\sqrt{2}$."],
            "final_answer": ["$\\sqrt{2}$"],
            "context": None,
            "is_multiple_answer": False,
            "unit": None,
            "answer_type": "Numerical",
            "error": None,
            "question_type": "Open-ended",
            "subfield": "Algebra",
            "subject": "Math",
            "language": "English",
        },
        "Therefore $x = \\boxed{\\sqrt 2}$.",
        1.0,
    ),
    Case(
        "Compute the probability that a fair die",
        {
            "id": 1607,
            "question": "Compute the probability that a fair die shows an odd number.",
            "solution": ["Three of six faces are odd."],
            "final_answer": ["$\\frac{1}{2}$"],
            "context": None,
            "is_multiple_answer": False,
            "unit": None,
            "answer_type": "Numerical",
            "error": None,
            "question_type": "Open-ended",
            "subfield": "Combinatorics",
            "subject": "Math",
            "language": "English",
        },
        "\\boxed{1/3}",
        0.0,
    ),
]

# ------------------------------------------------------- multiple choice, yes/no
GPQA = [
    Case(
        "A large gene has dozens of exons",
        {
            "Question": "A large gene has dozens of exons. Which structure is not involved in "
            "the proposed therapy?",
            "Correct Answer": "polyA tail",
            "Incorrect Answer 1": "antisense",
            "Incorrect Answer 2": "lariat",
            "Incorrect Answer 3": "R-loops",
            "Record ID": "rec0",
        },
        pick("polyA tail"),
        1.0,
    ),
    Case(
        "Two quantum states with energies",
        {
            "Question": "Two quantum states with energies E1 and E2 have lifetimes of 10^-9 s "
            "and 10^-8 s. Which energy difference lets them be clearly resolved?",
            "Correct Answer": "10^-4 eV",
            "Incorrect Answer 1": "10^-11 eV",
            "Incorrect Answer 2": "10^-8 eV",
            "Incorrect Answer 3": "10^-9 eV",
            "Record ID": "rec1",
        },
        pick("10^-4 eV", "The answer is \\boxed{{({})}}"),
        1.0,
    ),
    Case(
        "trans-cinnamaldehyde was treated",
        {
            "Question": "trans-cinnamaldehyde was treated with methylmagnesium bromide. How many "
            "carbon atoms are in product 3?",
            "Correct Answer": "11",
            "Incorrect Answer 1": "10",
            "Incorrect Answer 2": "12",
            "Incorrect Answer 3": "14",
            "Record ID": "rec2",
        },
        pick("12"),
        0.0,
    ),
    Case(
        "A spin-half particle is in a linear",
        {
            "Question": "A spin-half particle is in a linear superposition. What is the "
            "expectation value of its operator?",
            "Correct Answer": "-0.7",
            "Incorrect Answer 1": "0.85",
            "Incorrect Answer 2": "1.65",
            "Incorrect Answer 3": "-1.4",
            "Record ID": "rec3",
        },
        "It must be option \\boxed{Z}.",  # not an option
        0.0,
    ),
]

ARC = [
    Case(
        "Which factor will most likely cause a person",
        {
            "id": "Mercury_SC_415702",
            "question": "George wants to warm his hands quickly by rubbing them. Which factor "
            "will most likely cause a person to develop a fever?",
            "choices": {
                "text": [
                    "dry palms",
                    "wet palms",
                    "palms covered with oil",
                    "palms covered with lotion",
                ],
                "label": ["A", "B", "C", "D"],
            },
            "answerKey": "A",
        },
        "Dry skin has the most friction. \\boxed{A}",
        1.0,
    ),
    Case(
        "Which of these is a renewable resource",
        {
            "id": "NYSEDREGENTS_2015_4_27",
            "question": "Which of these is a renewable resource?",
            "choices": {
                "text": ["coal", "oil", "trees", "natural gas"],
                "label": ["1", "2", "3", "4"],
            },
            "answerKey": "3",
        },
        "Trees regrow, so the answer is \\boxed{C}.",  # labels 1-4 shown as A-D
        1.0,
    ),
    Case(
        "Which property of a mineral can be determined",
        {
            "id": "Mercury_7175875",
            "question": "Which property of a mineral can be determined just by looking at it?",
            "choices": {"text": ["luster", "mass", "weight"], "label": ["A", "B", "C"]},
            "answerKey": "A",
        },
        "\\boxed{B}",
        0.0,
    ),
    Case(
        "A student is trying to identify a mineral",
        {
            "id": "Mercury_SC_401169",
            "question": "A student is trying to identify a mineral. Which test is best?",
            "choices": {
                "text": ["streak", "taste", "smell", "sound", "size"],
                "label": ["A", "B", "C", "D", "E"],
            },
            "answerKey": "A",
        },
        "I would pick streak.",  # no letter anywhere
        0.0,
    ),
]

SCIQ = [
    Case(
        "What type of organism is commonly used in preparation",
        {
            "question": "What type of organism is commonly used in preparation of foods such as "
            "cheese and yogurt?",
            "distractor3": "viruses",
            "distractor1": "protozoa",
            "distractor2": "gymnosperms",
            "correct_answer": "mesophilic organisms",
            "support": "Mesophiles grow best in moderate temperature ...",
        },
        pick("mesophilic organisms", "\\boxed{{\\text{{{}}}}}"),
        1.0,
    ),
    Case(
        "What phenomenon makes global winds blow",
        {
            "question": "What phenomenon makes global winds blow northeast to southwest?",
            "distractor3": "tropical effect",
            "distractor1": "muon effect",
            "distractor2": "centrifugal effect",
            "correct_answer": "coriolis effect",
            "support": "Without Coriolis Effect the global winds would blow north to south ...",
        },
        pick("muon effect"),
        0.0,
    ),
]

CSQA = [
    Case(
        "The sanctions against the school",
        {
            "id": "075e483d21c29a511267ef62bedc0461",
            "question": "The sanctions against the school were a punishing blow, and they seemed "
            "to what the efforts the school had made to change?",
            "question_concept": "punishing",
            "choices": {
                "label": ["A", "B", "C", "D", "E"],
                "text": ["ignore", "enforce", "authoritarian", "yell at", "avoid"],
            },
            "answerKey": "A",
        },
        "They seemed to disregard the efforts. The answer is (A).",  # no \boxed{}: stated
        1.0,
    ),
    Case(
        "Sammy wanted to go to where the people were",
        {
            "id": "a7ab086045575bb497933726e4e6ad28",
            "question": "Sammy wanted to go to where the people were. Where might he go?",
            "question_concept": "people",
            "choices": {
                "label": ["A", "B", "C", "D", "E"],
                "text": [
                    "race track",
                    "populated areas",
                    "the desert",
                    "apartment",
                    "roadblock",
                ],
            },
            "answerKey": "B",
        },
        "\\boxed{B. populated areas}",
        1.0,
    ),
    Case(
        "To locate a choker not located in a jewelry box",
        {
            "id": "b8c0a4703079cf661d7261a60a1bcbff",
            "question": "To locate a choker not located in a jewelry box or boutique where "
            "would you go?",
            "question_concept": "choker",
            "choices": {
                "label": ["A", "B", "C", "D", "E"],
                "text": ["jewelry store", "neck", "jewlery box", "jewelry box", "boutique"],
            },
            "answerKey": "A",
        },
        "\\boxed{D}",
        0.0,
    ),
    Case(
        "Google Maps and other highway",
        {
            "id": "e68fb2448fd74e402aae9982aa76e527",
            "question": "Google Maps and other highway and street GPS services have replaced what?",
            "question_concept": "highway",
            "choices": {
                "label": ["A", "B", "C", "D", "E"],
                "text": ["united states", "mexico", "countryside", "atlas", "oceans"],
            },
            "answerKey": "D",
        },
        "\\boxed{F}",  # not an option
        0.0,
    ),
]

STRATEGYQA = [
    Case(
        "Are more people today related to Genghis Khan",
        {
            "qid": "4a5c4ab1fa0d6c1ecd17",
            "term": "Genghis Khan",
            "description": "founder and first Great Khan of the Mongol Empire",
            "question": "Are more people today related to Genghis Khan than Julius Caesar?",
            "answer": True,
            "facts": ["Julius Caesar had three children.", "Genghis Khan had sixteen children."],
        },
        "Genghis Khan has far more descendants. \\boxed{yes}",
        1.0,
    ),
    Case(
        "Could the members of The Police perform lawful arrests",
        {
            "qid": "c2ba5a1d7f3e5bd7e8e1",
            "term": "The Police",
            "description": "English rock band",
            "question": "Could the members of The Police perform lawful arrests?",
            "answer": False,
            "facts": ["The members of The Police were musicians, not law enforcement officers."],
        },
        "They are musicians. \\boxed{\\text{No}}",
        1.0,
    ),
    Case(
        "Would a dog respond to bell before Grey seal",
        {
            "qid": "a1f1a4b3e6c5bb2e8e0d",
            "term": "Grey seal",
            "description": "species of seal",
            "question": "Would a dog respond to bell before Grey seal?",
            "answer": True,
            "facts": ["Grey seals have no ear flaps."],
        },
        "\\boxed{no}",
        0.0,
    ),
    Case(
        "Is a Boeing 737 cost covered by Wonder Woman",
        {
            "qid": "5a1c1d7b6b0e4b2a0f1d",
            "term": "Boeing 737",
            "description": "twin-engine jet airliner",
            "question": "Is a Boeing 737 cost covered by Wonder Woman (2017 film) box office "
            "receipts?",
            "answer": True,
            "facts": ["The film grossed over $800 million."],
        },
        "\\boxed{maybe}",
        0.0,
    ),
]

# -------------------------------------------------------------------------- code
HUMANEVAL_PROMPT = (
    "from typing import List\n\n\n"
    "def sum_positive(numbers: List[int]) -> int:\n"
    '    """ Sum of the positive numbers in the list.\n'
    "    >>> sum_positive([1, -2, 3])\n    4\n"
    '    """\n'
)
HUMANEVAL_TEST = (
    "\n\nMETADATA = {'author': 'cb', 'dataset': 'test'}\n\n\n"
    "def check(candidate):\n"
    "    assert candidate([1, -2, 3]) == 4\n"
    "    assert candidate([]) == 0\n"
    "    assert candidate([-1, -5]) == 0\n"
)


def humaneval_record(n: int, marker: str) -> dict:
    prompt = HUMANEVAL_PROMPT.replace("Sum of the positive", f"{marker}: sum of the positive")
    return {
        "task_id": f"HumanEval/{n}",
        "prompt": prompt,
        "canonical_solution": "    return sum(x for x in numbers if x > 0)\n",
        "test": HUMANEVAL_TEST,
        "entry_point": "sum_positive",
    }


HUMANEVAL = [
    Case(
        "Case one",
        humaneval_record(0, "Case one"),
        "Here it is:\n\n```python\nfrom typing import List\n\n\n"
        "def sum_positive(numbers: List[int]) -> int:\n"
        "    return sum(x for x in numbers if x > 0)\n```\n",
        1.0,
    ),
    Case(  # the function without the prompt's import: the header supplies `List`
        "Case two",
        humaneval_record(1, "Case two"),
        "```python\ndef sum_positive(numbers: List[int]) -> int:\n"
        "    total = 0\n    for x in numbers:\n        if x > 0:\n            total += x\n"
        "    return total\n```",
        1.0,
    ),
    Case(  # the body only, continuing the prompt
        "Case three",
        humaneval_record(2, "Case three"),
        "```python\n    return sum(max(x, 0) for x in numbers)\n```",
        1.0,
    ),
    Case(
        "Case four",
        humaneval_record(3, "Case four"),
        "```python\ndef sum_positive(numbers):\n    return sum(numbers)\n```",
        0.0,
    ),
    Case(  # hostile: never returns
        "Case five",
        humaneval_record(4, "Case five"),
        "```python\ndef sum_positive(numbers):\n    while True:\n        pass\n```",
        0.0,
    ),
    Case(  # hostile: leaves before the tests run, with a clean exit status
        "Case six",
        humaneval_record(5, "Case six"),
        "```python\nimport os\n\ndef sum_positive(numbers):\n    return 0\n\nos._exit(0)\n```",
        0.0,
    ),
    Case(  # hostile: correct, but reaches for the network on the way
        "Case eight",
        humaneval_record(7, "Case eight"),
        "```python\nimport socket\n\ndef sum_positive(numbers):\n"
        "    return sum(x for x in numbers if x > 0)\n\n"
        "socket.create_connection(('example.com', 80), timeout=1)\n```",
        0.0,
    ),
    Case(
        "Case seven",
        humaneval_record(6, "Case seven"),
        "def sum_positive(numbers):\n    return sum(x for x in numbers if x > 0)\n",  # no block
        0.0,
    ),
]


def mbpp_record(task_id: int, text: str, code: str, tests: list[str]) -> dict:
    return {
        "task_id": task_id,
        "text": text,
        "code": code,
        "test_list": tests,
        "test_setup_code": "",
        "challenge_test_list": [],
    }


MBPP = [
    Case(
        "remove first and last occurrence",
        mbpp_record(
            11,
            "Write a python function to remove first and last occurrence of a given character "
            "from the string.",
            "def remove_Occ(s,ch):\r\n    s = s.replace(ch, '', 1)\r\n    return s[::-1].replace(ch, '', 1)[::-1]",
            [
                'assert remove_Occ("hello","l") == "heo"',
                'assert remove_Occ("abcda","a") == "bcd"',
                'assert remove_Occ("PHP","P") == "H"',
            ],
        ),
        "```python\ndef remove_Occ(s, ch):\n    i = s.find(ch)\n    if i >= 0:\n"
        "        s = s[:i] + s[i + 1:]\n    j = s.rfind(ch)\n    if j >= 0:\n"
        "        s = s[:j] + s[j + 1:]\n    return s\n```",
        1.0,
    ),
    Case(
        "find the shared elements",
        mbpp_record(
            2,
            "Write a function to find the shared elements from the given two lists.",
            "def similar_elements(a, b):\r\n  return tuple(set(a) & set(b))",
            [
                "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
                "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
            ],
        ),
        "```python\ndef similar_elements(a, b):\n    return tuple(a)\n```",
        0.0,
    ),
    Case(
        "identify non-prime numbers",
        mbpp_record(
            3,
            "Write a python function to identify non-prime numbers.",
            "def is_not_prime(n):\r\n    return any(n % i == 0 for i in range(2, n))",
            [
                "assert is_not_prime(2) == False",
                "assert is_not_prime(10) == True",
                "assert is_not_prime(35) == True",
            ],
        ),
        "```python\nimport sys\n\ndef is_not_prime(n):\n    return False\n\nsys.exit(0)\n```",
        0.0,
    ),
]

# suite -> (cases, file suffix, metric, instruction the prompt must carry)
SUITES: dict[str, tuple[list[Case], str, str, str]] = {
    "cb_gsm8k": (GSM8K, ".jsonl", "acc", MATH_INSTRUCTION),
    "cb_math500": (MATH500, ".parquet", "acc", MATH_INSTRUCTION),
    "cb_math_level5": (MATH_LEVEL5, ".jsonl", "acc", MATH_INSTRUCTION),
    "cb_amc23": (AMC23, ".jsonl", "acc", MATH_INSTRUCTION),
    "cb_aime24": (AIME24, ".jsonl", "acc", MATH_INSTRUCTION),
    "cb_aime25": (AIME25, ".jsonl", "acc", MATH_INSTRUCTION),
    "cb_olympiadbench": (OLYMPIAD, ".json", "acc", MATH_INSTRUCTION),
    "cb_gpqa_diamond": (GPQA, ".csv", "acc", CHOICE_INSTRUCTION),
    "cb_arc_challenge": (ARC, ".jsonl", "acc", CHOICE_INSTRUCTION),
    "cb_sciq": (SCIQ, ".jsonl", "acc", CHOICE_INSTRUCTION),
    "cb_commonsense_qa": (CSQA, ".jsonl", "acc", CHOICE_INSTRUCTION),
    "cb_strategyqa": (STRATEGYQA, ".jsonl", "acc", "yes or no, within \\boxed{}"),
    "cb_humaneval": (HUMANEVAL, ".jsonl", "pass@1", "```python"),
    "cb_mbpp": (MBPP, ".jsonl", "pass@1", "```python"),
}
GROUPS = {
    "cb_math": [
        "cb_gsm8k",
        "cb_math500",
        "cb_math_level5",
        "cb_amc23",
        "cb_aime24",
        "cb_aime25",
        "cb_olympiadbench",
    ],
    "cb_science": ["cb_gpqa_diamond", "cb_arc_challenge", "cb_sciq"],
    "cb_strategy": ["cb_strategyqa"],
    "cb_commonsense": ["cb_commonsense_qa"],
    "cb_code": ["cb_humaneval", "cb_mbpp"],
}


def write_records(path: Path, records: list[dict]) -> Path:
    """Records in a local file of the suffix's format, as the hub's loaders would read them."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    elif path.suffix == ".parquet":
        pd.DataFrame(records).to_parquet(path)
    elif path.suffix == ".csv":
        pd.DataFrame(records).to_csv(path, index=False)
    return path


def data_file(suite: str, tmp_path: Path) -> Path:
    cases, suffix, _, _ = SUITES[suite]
    return write_records(tmp_path / f"{suite}{suffix}", [c.record for c in cases])


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Local files are converted into a throwaway cache, not the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture
def short_sandbox_timeout(monkeypatch):
    """The code suites' sandbox limits with a 3 s clock, so the endless program ends sooner."""
    from lm_eval.tasks._yaml_loader import _load_module_with_cache

    from creditbench.sandbox import SandboxLimits

    utils = _load_module_with_cache(TASKS_DIR / "code" / "utils.py")  # the module lm-eval uses
    monkeypatch.setattr(utils, "LIMITS", SandboxLimits(timeout_s=3.0))


# -------------------------------------------------------------------- the suites
def test_every_suite_and_group_is_registered(task_manager):
    for name in [*SUITES, *GROUPS]:
        assert name in task_manager.all_tasks, name
    for group, members in GROUPS.items():
        assert task_manager.task_index[group].cfg["task"] == members
    assert sorted(t for t in task_manager.all_tasks if t.startswith("cb_")) == sorted(
        [*SUITES, *GROUPS]
    )


@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_scores_each_response_exactly(suite, task_manager, tmp_path, short_sandbox_timeout):
    cases, _, metric, instruction = SUITES[suite]
    asked = [c for c in cases if c.score == c.score]  # NaN: filtered out by the suite
    lm = ScriptedLM({c.marker: c.response for c in cases})
    results = simple_evaluate(
        model=lm,
        tasks=[suite_spec(task_manager, suite, data_file(suite, tmp_path))],
        task_manager=task_manager,
        apply_chat_template=True,
        log_samples=True,
    )
    samples = sorted(results["samples"][suite], key=lambda s: s["doc_id"])
    assert [s[metric] for s in samples] == [c.score for c in asked]
    mean = sum(c.score for c in asked) / len(asked)
    assert results["results"][suite][f"{metric},none"] == pytest.approx(mean)
    # the prompt: the chat template around the question and the answer-format instruction
    assert sorted(lm.prompts) == sorted(c.marker for c in asked)
    for c in asked:
        prompt = lm.prompts[c.marker]
        assert prompt.startswith("<|user|>\n") and prompt.endswith("<|assistant|>\n")
        assert instruction in prompt
        question = next(c.record[k] for k in QUESTION_FIELDS if k in c.record)
        assert question.strip() in prompt
        if "choices" in c.record:
            assert all(f". {t}" in prompt for t in c.record["choices"]["text"])
    # zero-shot and greedy
    for _, gen_kwargs in lm.requests:
        assert gen_kwargs["do_sample"] is False and gen_kwargs["max_gen_toks"] >= 2048
    assert results["n-shot"][suite] == 0


def test_the_gold_answer_a_record_is_scored_against(task_manager, tmp_path):
    """Gold answers as parsed from each dataset's own answer field."""
    from lm_eval.api.task import ConfigurableTask

    expected = {
        "cb_gsm8k": ["72", "10", "1280", "5", "624", "108"],
        "cb_math500": ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\frac{1}{2}", "\\frac{14}{3}", "9"],
        "cb_math_level5": ["\\dfrac{3}{4}", "2", "70"],
        "cb_amc23": ["27", "36"],
        "cb_aime24": ["204", "113"],
        "cb_olympiadbench": ["\\sqrt{2}", "\\frac{1}{2}"],
        "cb_strategyqa": ["yes", "no", "yes", "yes"],
        "cb_arc_challenge": ["A", "C", "A", "A"],
    }
    for suite, golds in expected.items():
        task = ConfigurableTask(config=suite_spec(task_manager, suite, data_file(suite, tmp_path)))
        assert [task.doc_to_target(d) for d in task.test_docs()] == golds, suite


def test_option_order_is_fixed_by_the_question(task_manager, tmp_path):
    from lm_eval.api.task import ConfigurableTask

    spec = suite_spec(task_manager, "cb_gpqa_diamond", data_file("cb_gpqa_diamond", tmp_path))
    first = [d["cb_prompt"] for d in ConfigurableTask(config=spec).test_docs()]
    again = [d["cb_prompt"] for d in ConfigurableTask(config=spec).test_docs()]
    assert first == again
    golds = [d["cb_gold"] for d in ConfigurableTask(config=spec).test_docs()]
    assert len(set(golds)) > 1  # not always the same letter


# --------------------------------------------------------- evaluate_suite, groups
@pytest.mark.parametrize("group", ["cb_science", "cb_strategy"])
def test_evaluate_suite_runs_a_group_from_local_files(group, tmp_path, monkeypatch):
    members = GROUPS[group]
    files = {t: data_file(t, tmp_path) for t in members}
    cases = [c for t in members for c in SUITES[t][0]]
    monkeypatch.setattr(ScriptedLM, "responses", {c.marker: c.response for c in cases})
    out = tmp_path / "eval" / f"{group}.json"
    record = evaluate_suite(tmp_path, group, out, data_file=files, backend="cb_scripted_test")
    per_task = {t: sum(c.score for c in SUITES[t][0]) / len(SUITES[t][0]) for t in members}
    assert record["suite"] == group and record["backend"] == "lm-eval/cb_scripted_test"
    assert record["n"] == len(cases)
    assert record["accuracy"] == pytest.approx(sum(per_task.values()) / len(per_task))
    assert {t: m["acc"] for t, m in record["tasks"].items()} == pytest.approx(per_task)
    assert json.loads(out.read_text()) == record
    lines = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert len(lines) == len(cases)
    assert {x["task"] for x in lines} == set(members)
    assert sum(x["acc"] for x in lines) == sum(c.score for c in cases)


def test_evaluate_suite_runs_one_task_from_a_local_file(tmp_path, monkeypatch):
    cases = SUITES["cb_aime25"][0]
    monkeypatch.setattr(ScriptedLM, "responses", {c.marker: c.response for c in cases})
    out = tmp_path / "cb_aime25.json"
    record = evaluate_suite(
        tmp_path,
        "cb_aime25",
        out,
        data_file=data_file("cb_aime25", tmp_path),
        backend="cb_scripted_test",
        max_gen_toks=123,
    )
    assert record["accuracy"] == 0.5 and record["n"] == 2 and "tasks" not in record
    lines = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [x["acc"] for x in lines] == [1.0, 0.0] and lines[0]["target"] == "70"


# ------------------------------------------------------------------ suite_spec
def test_suite_spec_points_any_suite_at_a_local_file(task_manager, tmp_path):
    assert suite_spec(task_manager, "cb_gsm8k", None) == "cb_gsm8k"
    path = data_file("cb_aime24", tmp_path)
    spec = suite_spec(task_manager, "cb_aime24", path)
    assert spec["dataset_path"] == "json" and spec["dataset_name"] is None
    assert spec["dataset_kwargs"] == {"data_files": {"train": str(path.resolve())}}
    assert spec["task"] == "cb_aime24" and callable(spec["process_docs"])
    spec = suite_spec(task_manager, "cb_gsm8k", {"cb_gsm8k": data_file("cb_gsm8k", tmp_path)})
    assert spec["dataset_kwargs"]["data_files"]["test"].endswith("cb_gsm8k.jsonl")
    # a group: the named members read local files, the others their own datasets
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    group = suite_spec(manager, "cb_science", {"cb_sciq": data_file("cb_sciq", tmp_path)})
    assert group == "cb_science"
    assert manager.task_index["cb_sciq"].cfg["dataset_path"] == "json"
    assert manager.task_index["cb_gpqa_diamond"].cfg["dataset_path"] == "Idavidrein/gpqa"
    # the testbed's local-JSONL suites as before
    chains = tmp_path / "test.jsonl"
    chains.write_text('{"prompt": "1+1", "answer": "2"}\n')
    spec = suite_spec(task_manager, "chains_test", chains)
    assert spec["dataset_path"] == "json"
    assert spec["dataset_kwargs"] == {"data_files": {"test": str(chains.resolve())}}


def test_suite_spec_rejects_what_it_cannot_load(task_manager, tmp_path):
    with pytest.raises(ValueError, match="is a group"):
        suite_spec(task_manager, "cb_science", data_file("cb_sciq", tmp_path))
    with pytest.raises(ValueError, match="has no tasks"):
        suite_spec(task_manager, "cb_science", {"cb_gsm8k": data_file("cb_gsm8k", tmp_path)})
    with pytest.raises(FileNotFoundError):
        suite_spec(task_manager, "cb_gsm8k", tmp_path / "missing.jsonl")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="suffix"):
        suite_spec(task_manager, "cb_gsm8k", tmp_path / "data.txt")
    assert local_loader("a/b.jsonl.gz") == "json" and local_loader("x.parquet") == "parquet"


# ------------------------------------------------------------- answer checking
def test_last_boxed_matches_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None
    assert last_boxed("no box") is None
    assert (
        final_answer("The final answer is $\\frac{3}{4}$. I hope it is correct.") == "\\frac{3}{4}"
    )
    assert final_answer("Final answer: 12") == "12"


def test_math_equal_uses_math_verify():
    assert math_equal("0.5", "\\frac{1}{2}")
    assert math_equal("\\dfrac{3}{4}", "0.75")
    assert math_equal("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert math_equal("1,280", "1280")
    assert not math_equal("\\frac{13}{3}", "\\frac{14}{3}")
    assert math_equal("\\text{Evelyn}", "\\text{Evelyn}")


def test_choice_and_yes_no_extraction():
    assert choice_answer("\\boxed{B}") == "B"
    assert choice_answer("\\boxed{(C)}") == "C"
    assert choice_answer("\\boxed{\\text{D}}") == "D"
    assert choice_answer("\\boxed{A. dry palms}") == "A"
    assert choice_answer("\\boxed{b}") == "B"
    assert choice_answer("so the answer is (E).") == "E"
    assert choice_answer("\\boxed{Bob}") is None
    assert choice_answer("\\boxed{F}", "ABCD") is None
    assert choice_answer("A guess.") is None
    assert yes_no_answer("\\boxed{Yes}") == "yes"
    assert yes_no_answer("\\boxed{\\text{no}}.") == "no"
    assert yes_no_answer("\\boxed{False}") == "no"
    assert yes_no_answer("The answer is: yes") == "yes"
    assert yes_no_answer("\\boxed{maybe}") is None
    assert yes_no_answer("yes and no") is None


def test_code_block_prefers_the_block_defining_the_function():
    text = "```python\ndef f():\n    return 1\n```\nUsage:\n```python\nprint(f())\n```"
    assert code_block(text, "f") == "def f():\n    return 1\n"
    assert code_block(text) == "print(f())\n"
    assert code_block("```js\nlet x\n```") is None
    assert code_block("```python\nunclosed") is None


# ------------------------------------------- the math task's own suite, sampled evaluation
def _write_math_test(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    rows = [
        {"id": "0", "prompt": "Halve one. [q0]", "answer": "\\frac{1}{2}", "meta": {}},
        {"id": "1", "prompt": "Two plus two. [q1]", "answer": "4", "meta": {}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_math_test_suite_scores_by_the_training_reward(tmp_path, monkeypatch):
    monkeypatch.setattr(
        ScriptedLM, "responses", {"[q0]": "so \\boxed{0.5}", "[q1]": "the answer is 4"}
    )
    out = tmp_path / "math_test.json"
    record = evaluate_suite(
        tmp_path, "math_test", out, data_file=_write_math_test(tmp_path), backend="cb_scripted_test"
    )
    # an equivalent boxed answer counts; an unboxed one does not (as in training)
    lines = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [x["acc"] for x in lines] == [1.0, 0.0] and record["accuracy"] == 0.5


def test_sampled_evaluation_scores_the_mean_over_k_samples(tmp_path, monkeypatch):
    answers = iter(["\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "\\boxed{4}"])
    monkeypatch.setattr(
        ScriptedLM, "responses", {"[q0]": "\\boxed{1/2}", "[q1]": lambda _p: next(answers)}
    )
    out = tmp_path / "math_test.json"
    record = evaluate_suite(
        tmp_path,
        "math_test",
        out,
        data_file=_write_math_test(tmp_path),
        backend="cb_scripted_test",
        temperature=1.0,
        samples=4,
    )
    lines = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert [x["acc"] for x in lines] == [1.0, 0.75]
    assert record["accuracy"] == pytest.approx(0.875) and record["n"] == 2
    assert len(lines[1]["response"]) == 4  # every sample is logged


def test_greedy_evaluation_takes_one_sample():
    from creditbench.lmeval import sampled

    cfg = {"task": "x", "generation_kwargs": {"do_sample": False}}
    assert sampled(cfg, 0.0, 1) is cfg
    with pytest.raises(ValueError, match="one sample"):
        sampled(cfg, 0.0, 4)
    hot = sampled(cfg, 0.7, 4)
    assert hot["repeats"] == 4 and hot["generation_kwargs"]["temperature"] == 0.7
    assert hot["generation_kwargs"]["do_sample"] is True and cfg["generation_kwargs"] == {
        "do_sample": False
    }


def test_the_chains_suites_score_as_training_rewards_repairs_and_the_chain_end():
    """The suites' scorer is training's verifier: a blind repair or a wrong answer scores 0,
    and a response is read up to the end of its answer line, as the engine's thought rules
    end a chain there."""
    import importlib.util

    from creditbench.config import ChainsTaskConfig
    from creditbench.tasks.chains import ChainsTask

    spec = importlib.util.spec_from_file_location(
        "chains_suite_utils",
        Path(__file__).resolve().parent.parent / "experiments" / "tasks" / "chains" / "utils.py",
    )
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    task = ChainsTask(ChainsTaskConfig(min_len=3, max_len=3, n_train=5, n_test=5))
    p = task.load("test")[0]
    doc = {"id": p.id, "prompt": p.prompt, "answer": p.answer, "meta": p.meta}
    right = task.solution(p)
    assert utils.process_results(doc, [[right]]) == {"acc": 1.0}
    assert utils.process_results(doc, [[right + "1+1=2\n"]]) == {"acc": 1.0}  # after the end
    assert utils.process_results(doc, [["~" + right]]) == {"acc": 0.0}  # a blind repair
    wrong = right.replace(f"A:{p.answer}", f"A:{(int(p.answer) + 1) % 10}")
    assert utils.process_results(doc, [[right, wrong]]) == {"acc": 0.5}
