"""Final evaluation through EleutherAI's lm-evaluation-harness.

Suites are lm-eval tasks found by a ``TaskManager`` over ``experiments/tasks/``;
local-JSONL suites (the testbed's) get their data file pointed at the
experiment's data directory. The HF backend is the default; ``backend: vllm``
uses lm-eval's vLLM model (GPU, optional extra). Per-sample outputs are logged
next to the result for later analysis.
"""

from __future__ import annotations

import json
from pathlib import Path

from creditbench.utils import atomic_write_json, atomic_write_text

TASKS_DIR = Path(__file__).resolve().parent.parent / "experiments" / "tasks"


def suite_spec(task_manager, suite: str, data_file: str | Path | None) -> str | dict:
    """A registered suite by name, or its full config with the local data file substituted."""
    if data_file is None:
        return suite
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(task_manager.task_index[suite].yaml_path, resolve_func=True)
    cfg["dataset_kwargs"] = {"data_files": {cfg.get("test_split", "test"): str(data_file)}}
    return cfg


def evaluate_suite(
    model_dir: str | Path,
    suite: str,
    out: str | Path,
    data_file: str | Path | None = None,
    backend: str = "hf",
    limit: int | None = None,
    batch_size: int = 64,
    max_length: int = 512,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    tasks_dir: str | Path = TASKS_DIR,
) -> dict:
    """Run one suite on one model with lm-eval; write the result and its samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(tasks_dir))
    if suite not in task_manager.all_tasks:
        raise ValueError(
            f"unknown evaluation suite {suite!r}; tasks under {tasks_dir} and lm-eval's"
        )
    model_args = {"pretrained": str(model_dir), "dtype": dtype}
    if backend == "hf":
        model_args.update(device=device, max_length=max_length)
    results = simple_evaluate(
        model=backend,
        model_args=model_args,
        tasks=[suite_spec(task_manager, suite, data_file)],
        task_manager=task_manager,
        batch_size=batch_size,
        limit=limit,
        log_samples=True,
        apply_chat_template=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    task_results = results["results"][suite]
    metrics = {k.split(",")[0]: v for k, v in task_results.items() if isinstance(v, (int, float))}
    record = {
        "suite": suite,
        "model": str(model_dir),
        "backend": f"lm-eval/{backend}",
        "accuracy": metrics.get("acc", metrics.get("exact_match")),
        "stderr": metrics.get("acc_stderr", metrics.get("exact_match_stderr")),
        "n": len(results["samples"][suite]),
        "metrics": metrics,
    }
    out = Path(out)
    samples = "".join(
        json.dumps(
            {
                "doc_id": s["doc_id"],
                "target": s["target"],
                "response": s["filtered_resps"][0] if s["filtered_resps"] else None,
                **{k: s[k] for k in metrics if k in s},
            },
            default=str,
        )
        + "\n"
        for s in results["samples"][suite]
    )
    atomic_write_text(out.with_suffix(".samples.jsonl"), samples)
    atomic_write_json(out, record)
    return record
