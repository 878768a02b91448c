"""Final evaluation through EleutherAI's lm-evaluation-harness.

Suites are lm-eval tasks (or groups of them) found by a ``TaskManager`` over
``experiments/tasks/``: the testbed's local-JSONL suites (``chains_*``) and the
real benchmarks (``cb_*``: math, science, strategy, commonsense, code). Any suite
can be pointed at a local data file in its dataset's own format (``data_file``);
without one, the real benchmarks load from the Hugging Face Hub. The HF backend is
the default; ``backend: vllm`` uses lm-eval's vLLM model (GPU, optional extra).
Per-sample outputs are logged next to the result for later analysis.

The answer checks that the suites' ``utils.py`` share live here too: the last
``\\boxed{}`` of a response, a math answer checked with math-verify, a letter or a
yes/no, and the code block of a program.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from creditbench.utils import atomic_write_json, atomic_write_text, last_braced_span

TASKS_DIR = Path(__file__).resolve().parent.parent / "experiments" / "tasks"

# a local file's loader (the `datasets` builder) by suffix; compressed files keep their loader
LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip"}
# keys of a split other than the test split: a local file holds one split only
_OTHER_SPLITS = ("training_split", "validation_split", "fewshot_split")
# a suite's headline metric, first found
HEADLINE = ("acc", "exact_match", "pass@1")

DataFiles = str | Path | Mapping[str, str | Path]


def local_loader(path: str | Path) -> str:
    """The `datasets` loader for a local data file, by its suffix."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    if not suffixes or suffixes[-1] not in LOADERS:
        raise ValueError(
            f"local data file {str(path)!r}: suffix not one of {sorted(LOADERS)} "
            "(optionally compressed)"
        )
    return LOADERS[suffixes[-1]]


def with_local_data(cfg: dict, data_file: str | Path) -> dict:
    """A task config reading its test split from a local file in the dataset's own format.

    ``dataset_path`` becomes the loader (json/parquet/csv), ``dataset_name`` and the
    hub's ``dataset_kwargs`` go, the file is mapped to the task's test split (or its
    validation split where it evaluates on that), and the other splits are unset.
    """
    path = Path(data_file)
    if not path.is_file():
        raise FileNotFoundError(f"local data file {str(path)!r} does not exist")
    cfg = dict(cfg)
    split = cfg.get("test_split") or cfg.get("validation_split") or "test"
    if not cfg.get("test_split"):
        cfg["validation_split"] = split
    cfg["dataset_path"] = local_loader(path)
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": {split: str(path.resolve())}}
    for key in _OTHER_SPLITS:
        if cfg.get(key) not in (None, split):
            cfg[key] = None
    return cfg


_NAME_LINE = re.compile(r"^(?:task|group|tag):[ \t]*['\"]?([\w.-]+)['\"]?[ \t]*(?:#.*)?$", re.M)
_TAG_ITEM = re.compile(r"^tag:[ \t]*\n((?:[ \t]*-[ \t]*[\w.-]+[ \t]*\n)+)", re.M)


def _yaml_names(directory: Path) -> set[str]:
    """The task, group and tag names the YAML files under ``directory`` define, read from
    their top-level lines (no lm-eval import, which takes seconds)."""
    names: set[str] = set()
    for path in directory.rglob("*"):
        if not (path.is_file() and (path.suffix in (".yaml", ".yml") or "yaml" in path.name)):
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        names.update(_NAME_LINE.findall(text))
        for block in _TAG_ITEM.findall(text):
            names.update(re.findall(r"-[ \t]*([\w.-]+)", block))
    return names


def suite_names(tasks_dir: str | Path = TASKS_DIR) -> list[str]:
    """The evaluation suites (tasks and groups) of ``tasks_dir``, as ``TaskManager`` over
    it would list them."""
    return sorted(_yaml_names(Path(tasks_dir)))


def lm_eval_task_names() -> set[str]:
    """The names of lm-eval's own tasks, groups and tags (its installed YAML files)."""
    import importlib.util

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        return set()
    return _yaml_names(Path(spec.origin).parent / "tasks")


def suite_spec(task_manager, suite: str, data_file: DataFiles | None) -> str | dict:
    """A registered suite by name, or its full config with local data substituted.

    ``data_file``: ``None`` (the suite's own dataset, e.g. from the hub), a path (a
    task's test data), or a mapping ``{task: path}`` (a task, or any members of a
    group; members not named keep their own dataset). A group is returned by name, its
    members' entries in ``task_manager``'s index replaced by their local configs.
    """
    if data_file is None:
        return suite
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(suite)
    if entry is None or entry.yaml_path is None:
        raise ValueError(f"suite {suite!r} has no YAML config to point at a local file")
    cfg = load_yaml(entry.yaml_path, resolve_func=True)
    if "group" in cfg:
        if not isinstance(data_file, Mapping):
            raise ValueError(
                f"suite {suite!r} is a group: give its local data as {{task: path}}, "
                f"tasks {cfg['task']}"
            )
        members = [t["task"] if isinstance(t, dict) else t for t in cfg["task"]]
        unknown = set(data_file) - set(members)
        if unknown:
            raise ValueError(f"group {suite!r} has no tasks {sorted(unknown)}; it has {members}")
        # lm-eval hands an inline group's whole config to its members as overrides, so the
        # group goes by name and its members' index entries carry the local configs
        for t in data_file:
            member = suite_spec(task_manager, t, {t: data_file[t]})
            if not isinstance(member, dict) or "task" not in member:
                raise ValueError(f"group {suite!r}: member {t!r} is not a task")
            task_manager.task_index[t] = replace(
                task_manager.task_index[t], yaml_path=None, cfg=member
            )
        return suite
    if isinstance(data_file, Mapping):
        if set(data_file) != {suite}:
            raise ValueError(f"local data for suite {suite!r} given for {sorted(data_file)}")
        data_file = data_file[suite]
    return with_local_data(cfg, data_file)


def sampled(cfg: dict, temperature: float, samples: int) -> dict:
    """A task config that scores ``samples`` completions per problem at ``temperature``.

    Every completion is kept (``take_first_k``) and the suite's ``process_results``
    sees them all: its metric is then the mean over the ``samples`` completions (mean@k,
    the expected reward of the sampling policy). Temperature 0 is greedy, one sample.
    """
    if temperature == 0:
        if samples != 1:
            raise ValueError(f"greedy evaluation takes one sample per problem, not {samples}")
        return cfg
    cfg = dict(cfg)
    gen = dict(cfg.get("generation_kwargs") or {})
    gen.update(do_sample=True, temperature=temperature)
    gen.pop("top_k", None)
    cfg["generation_kwargs"] = gen
    cfg["repeats"] = samples
    cfg["filter_list"] = [
        {"name": f"mean_at_{samples}", "filter": [{"function": "take_first_k", "k": samples}]}
    ]
    return cfg


def _leaf_tasks(results: dict, suite: str) -> list[str]:
    """The tasks whose samples make up a suite: itself, or a group's members (recursively)."""
    if suite in results.get("samples", {}):
        return [suite]
    tasks = []
    for sub in results.get("group_subtasks", {}).get(suite, []):
        tasks += _leaf_tasks(results, sub)
    return tasks


def suite_task_manager(suite: str | list[str], tasks_dir: str | Path = TASKS_DIR):
    """A ``TaskManager`` that knows ``suite`` (or every one of a list): over ``tasks_dir``
    alone when the suites and (for a group) their members are there, else with lm-eval's
    own tasks too (indexing those takes seconds)."""
    from lm_eval.tasks import TaskManager

    suites = [suite] if isinstance(suite, str) else list(suite)
    ours = TaskManager(include_path=str(tasks_dir), include_defaults=False)

    def known(name: str) -> bool:
        entry = ours.task_index.get(name)
        if entry is None:
            return False
        members = (entry.cfg or {}).get("task", [])
        return all(
            (m.get("task") if isinstance(m, dict) else m) in ours.task_index
            for m in (members if isinstance(members, list) else [])
        )

    if all(known(s) for s in suites):
        return ours
    task_manager = TaskManager(include_path=str(tasks_dir))
    unknown = [s for s in suites if s not in task_manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown evaluation suite(s) {unknown}; tasks under {tasks_dir} and lm-eval's"
        )
    return task_manager


def evaluate_suite(
    model_dir: str | Path,
    suite: str,
    out: str | Path,
    data_file: DataFiles | None = None,
    **kwargs,
) -> dict:
    """Run one suite (a task or a group) on one model; see :func:`evaluate_suites`."""
    return evaluate_suites(model_dir, {suite: (out, data_file)}, **kwargs)[suite]


def lmeval_model_args(
    model_dir: str | Path,
    backend: str = "hf",
    *,
    dtype: str = "float32",
    device: str = "cpu",
    max_length: int | None = None,
    batch_size: int | str | None = None,
    seed: int = 0,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
) -> dict:
    """lm-eval's ``model_args`` for the ``hf`` or ``vllm`` model.

    ``hf``: the device and context (``max_length``). ``vllm``: no device (the engine
    takes the GPUs ``CUDA_VISIBLE_DEVICES`` shows, which the workflow's placement sets),
    the engine's ``gpu_memory_utilization``, ``max_model_len`` (``None``: the model's
    own), ``tensor_parallel_size``, ``data_parallel_size`` and sampling ``seed``.
    ``batch_size`` ``None``: 64 on ``hf``, ``auto`` on ``vllm`` (the engine schedules
    all requests itself).
    """
    args: dict = {"pretrained": str(model_dir), "dtype": dtype}
    if backend == "vllm":
        args.update(
            batch_size="auto" if batch_size is None else batch_size,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            seed=seed,
        )
        if max_model_len is not None:
            args["max_model_len"] = max_model_len
        return args
    args["batch_size"] = 64 if batch_size is None else batch_size
    if backend in ("hf", "creditbench-hf"):
        args["device"] = device
        if max_length is not None:
            args["max_length"] = max_length
    return args


def evaluate_suites(
    model_dir: str | Path,
    suites: Mapping[str, tuple[str | Path, DataFiles | None]],
    backend: str = "hf",
    limit: int | None = None,
    batch_size: int | str | None = None,
    max_length: int | None = 512,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    tasks_dir: str | Path = TASKS_DIR,
    max_gen_toks: int | None = None,
    temperature: float = 0.0,
    samples: int = 1,
    chat_template: bool = True,
    vllm: Mapping | None = None,
) -> dict[str, dict]:
    """Run suites (tasks or groups) on one model in one lm-eval call; write each result
    and its samples. Returns ``{suite: record}``.

    ``suites``: ``{suite: (out_path, data_file)}``, ``data_file`` as in :func:`suite_spec`.
    One call loads the model once; the suites' numbers are the same in distribution as
    one call per suite, not bitwise (the sampling RNG runs through the suites in turn).
    ``max_length``: the HF backend's context length (prompt + generation; ``None``: the
    model's own). ``max_gen_toks``: overrides every task's generation budget. ``limit``
    applies per task. ``temperature`` > 0: ``samples`` sampled completions per problem,
    scored by their mean (see :func:`sampled`). ``chat_template``: false gives the
    prompts as plain text (SFT checkpoints). ``batch_size`` and ``vllm`` (the vLLM
    engine's settings, keywords of :func:`lmeval_model_args`): see there.
    """
    from lm_eval import simple_evaluate

    if backend == "creditbench-hf":
        import creditbench.lmeval_hf  # noqa: F401 - registers the model with lm-eval

    task_manager = suite_task_manager(list(suites), tasks_dir)
    model_args = lmeval_model_args(
        model_dir,
        backend,
        dtype=dtype,
        device=device,
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        **(vllm or {}),
    )
    specs = []
    for suite, (_, data_file) in suites.items():
        spec = suite_spec(task_manager, suite, data_file)
        if temperature > 0:
            if not isinstance(spec, dict):
                from lm_eval.tasks._yaml_loader import load_yaml

                entry = task_manager.task_index[suite]
                spec = load_yaml(entry.yaml_path, resolve_func=True) if entry.yaml_path else None
                if spec is None or "group" in spec:
                    raise ValueError(
                        f"sampled evaluation (temperature {temperature}) needs a single task "
                        f"with a YAML config; {suite!r} is not one"
                    )
            spec = sampled(spec, temperature, samples)
        specs.append(spec)
    results = simple_evaluate(
        model=backend,
        model_args=model_args,
        tasks=specs,
        task_manager=task_manager,
        batch_size=None,  # in model_args
        limit=limit,
        log_samples=True,
        apply_chat_template=chat_template,
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    return {
        suite: write_suite_result(results, suite, model_dir, backend, out)
        for suite, (out, _) in suites.items()
    }


def write_suite_result(results: dict, suite: str, model_dir, backend: str, out) -> dict:
    """The suite's record (headline accuracy, per-task metrics) and its samples, written."""

    def numbers(task_results: dict) -> dict:
        return {
            k.split(",")[0]: v
            for k, v in task_results.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    metrics = numbers(results["results"][suite])
    headline = next((m for m in HEADLINE if m in metrics), None)
    tasks = _leaf_tasks(results, suite)
    record = {
        "suite": suite,
        "model": str(model_dir),
        "backend": f"lm-eval/{backend}",
        "accuracy": metrics.get(headline) if headline else None,
        "stderr": metrics.get(f"{headline}_stderr") if headline else None,
        "n": sum(len(results["samples"][t]) for t in tasks),
        "metrics": metrics,
    }
    if tasks != [suite]:
        record["tasks"] = {t: numbers(results["results"][t]) for t in tasks}
    lines = []
    for t in tasks:
        task_metrics = [k for k in numbers(results["results"][t]) if not k.endswith("_stderr")]
        for s in results["samples"][t]:
            line = {"doc_id": s["doc_id"]}
            if tasks != [suite]:
                line["task"] = t
            line["target"] = s["target"]
            line["response"] = s["filtered_resps"][0] if s["filtered_resps"] else None
            line.update({k: s[k] for k in task_metrics if k in s})
            lines.append(json.dumps(line, default=str) + "\n")
    out = Path(out)
    atomic_write_text(out.with_suffix(".samples.jsonl"), "".join(lines))
    atomic_write_json(out, record)
    return record


# ------------------------------------------------------------ answer checking
# Shared by the suites' process_results (experiments/tasks/*/utils.py).

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_FINAL_ANSWER = re.compile(r"(?i)final answer\s*(?:is|:)\s*:?\s*(.+)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched.

    ``None`` when there is none, or when the last one is never closed.
    """
    span = last_braced_span(text, _BOXED)
    return None if span is None else text[span[0] : span[1]].strip()


def final_answer(text: str) -> str | None:
    """A response's final answer: its last ``\\boxed{}``, else a last "final answer is X" line."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    stated = _FINAL_ANSWER.findall(text)
    if not stated:
        return None
    answer = stated[-1].strip()
    inline = re.search(r"\$([^$]+)\$", answer)
    answer = inline.group(1) if inline else answer
    return answer.strip().rstrip(".").strip() or None


def _plain(text: str) -> str:
    """Math-mode wrappers and dollars removed: ``\\text{(B)}`` -> ``(B)``."""
    previous = None
    while previous != text:
        previous, text = text, _TEXT_WRAPPER.sub(r"\1", text)
    return text.replace("$", "").strip()


def math_equal(answer: str, gold: str) -> bool:
    """``answer`` and ``gold`` (LaTeX or plain) equal by math-verify; by text where unparseable.
    math-verify runs bounded by the wall clock in any thread (``tasks.math.verify_answers``)."""
    from creditbench.tasks.math import verify_answers

    parsed, equal = verify_answers(gold, answer)
    if parsed:
        return equal
    return re.sub(r"\s+", "", _plain(answer)) == re.sub(r"\s+", "", _plain(gold))


def score_math(response: str, gold: str) -> float:
    """1.0 when the response's final answer (see :func:`final_answer`) equals ``gold``."""
    answer = final_answer(response)
    return float(answer is not None and math_equal(answer, str(gold)))


OPTION_LETTERS = "ABCDEFGH"


def choice_prompt(question: str, options: list[str]) -> str:
    """A multiple-choice question with lettered options and the ``\\boxed{}`` instruction."""
    if not 2 <= len(options) <= len(OPTION_LETTERS):
        raise ValueError(
            f"{len(options)} options; between 2 and {len(OPTION_LETTERS)} can be lettered"
        )
    letters = OPTION_LETTERS[: len(options)]
    listed = ", ".join(letters[:-1]) + f" or {letters[-1]}"
    lines = "\n".join(
        f"{letter}. {str(o).strip()}" for letter, o in zip(letters, options, strict=True)
    )
    return (
        "Answer the following multiple-choice question. Think step by step, then put the "
        f"letter of the correct option ({listed}) within \\boxed{{}}, e.g. \\boxed{{A}}.\n\n"
        f"Question: {question.strip()}\n\n{lines}"
    )


def choice_answer(response: str, letters: str = "ABCDE") -> str | None:
    """The option letter a response chose: ``\\boxed{B}`` (also ``(B)``, ``\\text{B}``,
    ``B. text``), else a last "answer is B" / "answer: (B)". ``None`` when there is none."""
    boxed = last_boxed(response)
    if boxed is not None:
        content = _plain(boxed)
        m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", content) or re.match(
            r"\(?([A-Z])\)?[.:)]\s", content
        )
        letter = m.group(1).upper() if m else None
    else:
        stated = re.findall(r"[Aa]nswer\s*(?:is|:)\s*:?\s*\**\s*\(?([A-Z])\)?(?![\w])", response)
        letter = stated[-1] if stated else None
    return letter if letter is not None and letter in letters else None


def yes_no_answer(response: str) -> str | None:
    """``"yes"`` or ``"no"``: ``\\boxed{yes}`` (also True/False), else a last "answer is yes"."""
    boxed = last_boxed(response)
    if boxed is not None:
        word = re.sub(r"[^a-z]", "", _plain(boxed).lower())
    else:
        stated = re.findall(r"(?i)\banswer\s*(?:is|:)\s*:?\s*\**\s*(yes|no|true|false)\b", response)
        word = stated[-1].lower() if stated else None
    return {"yes": "yes", "true": "yes", "no": "no", "false": "no"}.get(word or "")


_CODE_BLOCK = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)


def code_block(response: str, name: str | None = None) -> str | None:
    """The program in a response's fenced Python (or unlabelled) code block.

    The last block that defines ``name`` when given and one does, else the last block;
    ``None`` without a closed block.
    """
    blocks = [
        code
        for lang, code in _CODE_BLOCK.findall(response)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    if not blocks:
        return None
    if name:
        defining = [b for b in blocks if re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", b, re.M)]
        if defining:
            return defining[-1]
    return blocks[-1]
