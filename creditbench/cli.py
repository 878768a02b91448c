"""Command line: ``creditbench {data,fetch,warmstart,train,evaluate,run,methods,plan}``.

Every subcommand validates the whole experiment config before doing any work.
Default paths follow the output contract ``results/<experiment>/...``; the
Snakemake rules pass them explicitly.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from creditbench.config import ConfigError, ExperimentConfig, load_experiment
from creditbench.tasks import DataError

DEFAULT_CONFIG = "experiments/default.yaml"


def _paths(cfg: ExperimentConfig, results: str) -> dict[str, Path]:
    root = Path(results) / cfg.experiment
    return {"root": root, "data": root / "data", "base": root / "base", "runs": root / "runs"}


def cmd_data(cfg, args):
    from creditbench.tasks import make_task

    out = Path(args.out or _paths(cfg, args.results)["data"])
    paths = make_task(cfg.task).write_data(out)
    for split, path in paths.items():
        print(f"{split}: {path}")


def cmd_warmstart(cfg, args):
    from creditbench.warmstart import warm_start

    p = _paths(cfg, args.results)
    record = warm_start(cfg, args.data or p["data"], args.out or p["base"])
    summary = {
        "greedy_accuracy": record["greedy"]["accuracy"],
        "sampled_accuracy": record["sampled"]["accuracy"],
        "mixed_group_fraction": record["sampled"]["mixed_group_fraction"],
        **{f"localisation_{k}": v for k, v in record["localisation"].items()},
    }
    print(json.dumps(summary, indent=2))


def cmd_train(cfg, args):
    """Train one run x seed, or (``--seed`` repeated, each with its ``--out`` in the same
    order) several seeds of a run one after another in this process
    (``launch.group_seeds``). Each seed resumes from its own checkpoints, so the same
    command continues after a pre-emption: seeds already trained re-finish from their
    final checkpoint (no step is repeated) and the interrupted one resumes."""
    import gc

    from creditbench.train import PREEMPTED_EXIT_STATUS, Preempted, Trainer

    run = cfg.run(args.run)
    p = _paths(cfg, args.results)
    seeds, outs = args.seed, args.out or []
    if len(seeds) != len(set(seeds)):
        raise ConfigError(f"--seed repeats a seed: {seeds}")
    if outs and len(outs) != len(seeds):
        raise ConfigError(
            f"give one --out per --seed, in the same order ({len(seeds)} seeds, {len(outs)} "
            f"--out), or none (results/<experiment>/runs/<run>/seed<k>)"
        )
    if len(seeds) > 1 and cfg.launch.num_processes > 1:
        raise ConfigError("several --seed in one job need launch.num_processes 1")
    for i, seed in enumerate(seeds):
        out = outs[i] if outs else p["runs"] / args.run / f"seed{seed}"
        trainer = Trainer(
            run, seed, args.init or p["base"], args.data or p["data"], out, cfg.methods_dir
        )
        try:
            ledger = trainer.train(until_step=args.until_step)
        except Preempted as e:  # SIGTERM / SIGUSR1: checkpointed; the same command resumes
            print(f"creditbench: pre-empted: {e}", file=sys.stderr)
            return PREEMPTED_EXIT_STATUS
        if trainer.is_main:  # one summary line per seed, not one per process
            summary = {"step": trainer.step, "generated_tokens": ledger["total_generated_tokens"]}
            print(json.dumps({"seed": seed, **summary} if len(seeds) > 1 else summary))
        del trainer
        gc.collect()


def suites_of(cfg: ExperimentConfig) -> list[str]:
    from creditbench.tasks import make_task

    return cfg.eval.suites or list(make_task(cfg.task).suites)


@contextmanager
def _exclusive(paths):
    """Hold an exclusive ``flock`` on each lock file (in sorted order) while inside;
    wait, saying so, while another process holds one."""
    with ExitStack() as stack:
        for path in sorted(set(paths)):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(path.open("a"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"creditbench: waiting for another process holding {path}", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cmd_evaluate(cfg, args):
    """Held-out accuracy of one or more models on one or more suites, one result file
    per model and suite.

    Several suites (``--suite`` repeated) share one process and, with lm-eval, one
    harness call: the model is loaded once. Several models (``--model`` repeated, each
    with its own ``--out-dir``, in the same order) are evaluated one after the other in
    the same process, which saves a process start per model. One process at a time
    writes a suite's result (a lock file beside it): an evaluation restarted while an
    orphaned one still runs waits for it, and so writes last.
    """
    models, out_dirs = args.model, args.out_dir or []
    if len(models) > 1 and len(out_dirs) != len(models):
        raise ConfigError(
            f"{len(models)} models (--model) need one --out-dir each, got {len(out_dirs)}"
        )
    if len(models) == 1 and len(out_dirs) > 1:
        raise ConfigError(f"one model (--model) takes one --out-dir, got {len(out_dirs)}")
    if args.out and len(models) > 1:
        raise ConfigError(f"--out names one result file; {len(models)} models need --out-dir")
    suites = list(dict.fromkeys(args.suite or ["chains_test"]))
    for i, model in enumerate(models):
        one = argparse.Namespace(**{**vars(args), "model": model})
        one.out_dir = out_dirs[i] if out_dirs else None
        outs = _eval_outputs(one, suites)
        with _exclusive(out.with_name(f".{out.name}.lock") for out in outs.values()):
            status = _evaluate(cfg, one)
        if status:
            return status
    return 0


def _eval_outputs(args, suites: list[str]) -> dict[str, Path]:
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.model).parent / "eval"
    return {s: Path(args.out) if args.out else out_dir / f"{s}.json" for s in suites}


def _evaluate(cfg, args):
    from creditbench.tasks import make_task

    p = _paths(cfg, args.results)
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model {str(model_dir)!r} has no config.json")
    suites = list(dict.fromkeys(args.suite or ["chains_test"]))
    if args.out and len(suites) > 1:
        raise ConfigError(f"--out names one result file; {len(suites)} suites need --out-dir")
    outs = _eval_outputs(args, suites)
    task = make_task(cfg.task, args.data or p["data"])
    ev = cfg.eval
    if ev.backend == "lm-eval":
        from creditbench.lmeval import evaluate_suites
        from creditbench.model import default_device

        if args.data_file and len(suites) > 1:
            raise ConfigError("--data-file is for one suite; several take eval.data_files")
        jobs = {s: (outs[s], _suite_data(task, ev, s, args.data_file)) for s in suites}
        results = evaluate_suites(
            model_dir,
            jobs,
            backend=ev.lm_eval_model,
            limit=ev.problems,
            batch_size=ev.batch_size,
            device=str(default_device()),
            dtype=cfg.model.dtype,
            seed=ev.seed,
            max_length=ev.max_length,
            max_gen_toks=ev.max_gen_toks,
            temperature=ev.temperature,
            samples=ev.samples,
            chat_template=getattr(cfg.task, "chat_template", True),
            vllm={
                "gpu_memory_utilization": ev.vllm_gpu_memory_utilization,
                "max_model_len": ev.vllm_max_model_len,
                "tensor_parallel_size": ev.vllm_tensor_parallel_size,
                "data_parallel_size": ev.vllm_data_parallel_size,
            },
        )
    else:
        from creditbench.evaluate import evaluate_accuracy
        from creditbench.model import load_policy, load_tokenizer
        from creditbench.utils import atomic_write_json

        missing = [s for s in suites if s not in task.suites]
        if missing:
            raise ConfigError(
                f"eval.backend 'creditbench' evaluates local suites only {list(task.suites)}, "
                f"not {missing}"
            )
        model = load_policy(model_dir, cfg.model, trainable=False)
        tokenizer = load_tokenizer(model_dir)
        results = {}
        for suite in suites:
            result = {"suite": suite, "model": str(model_dir), "backend": "creditbench"}
            result.update(
                evaluate_accuracy(
                    model,
                    tokenizer,
                    task,
                    task.load(task.suites[suite])[: ev.problems],
                    cfg.run(next(iter(cfg.runs))).sampling,
                    temperature=ev.temperature,
                    samples=ev.samples,
                    seed=ev.seed,
                )
            )
            atomic_write_json(outs[suite], result)
            results[suite] = result
    for result in results.values():
        print(json.dumps({k: result[k] for k in ("suite", "accuracy", "n")}))


def _suite_data(task, ev, suite: str, data_file_args: list[str] | None):
    """A suite's local data: the experiment's own split for a local suite, else
    ``eval.data_files``; ``--data-file [TASK=]PATH`` (one suite only) wins."""
    split = task.suites.get(suite)  # a local suite reads the experiment's own data
    data_file = task.data_dir / f"{split}.jsonl" if split else ev.data_files.get(suite)
    for f in data_file_args or []:
        task_name, path = f.split("=", 1) if "=" in f else (suite, f)
        data_file = {**(data_file if isinstance(data_file, dict) else {}), task_name: path}
    if isinstance(data_file, dict) and set(data_file) == {suite}:
        data_file = data_file[suite]
    if isinstance(data_file, Path) and not data_file.is_file():
        raise FileNotFoundError(f"suite {suite!r} needs {data_file}")
    return data_file


def cmd_run(cfg, args):
    """The whole experiment in one process: data, warm start, every run x seed, evaluation."""
    p = _paths(cfg, args.results)
    runs = args.runs.split(",") if args.runs else list(cfg.runs)
    for r in runs:
        cfg.run(r)  # validate the selection before any work
    if not (p["data"] / "train.jsonl").is_file():
        cmd_data(cfg, argparse.Namespace(out=None, results=args.results))
    if not (p["base"] / "config.json").is_file():
        cmd_warmstart(cfg, argparse.Namespace(data=None, out=None, results=args.results))
    rows = []
    for r in runs:
        for seed in cfg.seeds:
            out = p["runs"] / r / f"seed{seed}"
            if not (out / "ledger.json").is_file():
                status = cmd_train(
                    cfg,
                    argparse.Namespace(
                        run=r,
                        seed=[seed],
                        init=None,
                        data=None,
                        out=[out],
                        until_step=None,
                        results=args.results,
                    ),
                )
                if status:  # pre-empted: the same command resumes
                    return status
            for suite in suites_of(cfg):
                path = out / "eval" / f"{suite}.json"
                if not path.is_file():
                    cmd_evaluate(
                        cfg,
                        argparse.Namespace(
                            model=[out / "model"],
                            data=None,
                            suite=[suite],
                            out=path,
                            out_dir=None,
                            data_file=None,
                            results=args.results,
                        ),
                    )
                rows.append((r, seed, suite, json.loads(path.read_text())["accuracy"]))
    base_acc = json.loads((p["base"] / "warmstart.json").read_text())["greedy"]["accuracy"]
    print(f"\nwarm start greedy accuracy (test): {base_acc:.3f}")
    print(f"{'run':<20}{'seed':>6}  {'suite':<10}{'accuracy':>10}")
    for r, seed, suite, acc in rows:
        print(f"{r:<20}{seed:>6}  {suite:<10}{acc:>10.3f}")


def cmd_methods(cfg, args):
    from creditbench.methods import available_methods

    print("\n".join(available_methods(cfg.methods_dir)))


def cmd_plan(cfg, args):
    """Estimated GPU memory per GPU and GPU-hours of every job; exit status 3 when a job
    does not fit the GPU (``creditbench/plan.py`` states the assumptions)."""
    from creditbench.plan import Assumptions, report

    a = Assumptions(prompt_tokens=args.prompt_tokens, gpu_gib=args.gpu_memory_gib)
    if args.hf_tokens_per_s:
        a.hf_tokens_per_s = args.hf_tokens_per_s
    if args.vllm_tokens_per_s:
        a.vllm_tokens_per_s = args.vllm_tokens_per_s
    text, problems = report(cfg, a)
    print(text)
    for line in problems:
        print(f"creditbench: plan: {line}", file=sys.stderr)
    return 3 if problems else 0


def cmd_fetch(cfg, args):
    """Fetch every model, dataset and suite data the experiment reads from the hub into the
    Hugging Face caches, or (``--offline``) check that they are there; write the manifest.
    Exit status 2, naming each item, when any is missing (``creditbench/fetch.py``)."""
    from creditbench.fetch import fetch

    out = args.out or _paths(cfg, args.results)["root"] / "fetched.json"
    return fetch(cfg, out, offline=True if args.offline else None, config_path=args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditbench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="experiment YAML")
        sp.add_argument(
            "--results", default="results", help="results root (results/<experiment>/...)"
        )
        sp.set_defaults(func=func)
        return sp

    sp = add("data", cmd_data, "generate the task's datasets")
    sp.add_argument("--out")
    sp = add("warmstart", cmd_warmstart, "supervised warm start shared by every run")
    sp.add_argument("--data")
    sp.add_argument("--out")
    sp = add("train", cmd_train, "train one run x seed (resumes from its last checkpoint)")
    sp.add_argument("--run", required=True)
    sp.add_argument(
        "--seed",
        type=int,
        required=True,
        action="append",
        help="a seed (repeat for several, trained one after another in this process)",
    )
    sp.add_argument("--init", help="initial model (default: the warm start)")
    sp.add_argument("--data")
    sp.add_argument(
        "--out", action="append", help="the seed's run folder (one per --seed, in order)"
    )
    sp.add_argument("--until-step", type=int, help="stop after this step (resumable)")
    sp = add("evaluate", cmd_evaluate, "held-out accuracy of models on one or more suites")
    sp.add_argument(
        "--model", required=True, action="append", help="a model folder (repeat for several)"
    )
    sp.add_argument(
        "--suite",
        action="append",
        help="an lm-eval task or group name (repeat for several; default chains_test)",
    )
    sp.add_argument("--data")
    sp.add_argument("--out", help="the result file (one suite)")
    sp.add_argument(
        "--out-dir",
        action="append",
        help="the results' folder, <suite>.json each (default: eval/ next to the model); "
        "with several models, one per model in their order",
    )
    sp.add_argument(
        "--data-file",
        action="append",
        metavar="[TASK=]PATH",
        help="read the suite (or a group's TASK) from a local json/jsonl/parquet/csv file "
        "in its dataset's format (overrides eval.data_files)",
    )
    sp = add("run", cmd_run, "the whole experiment in one process")
    sp.add_argument("--runs", help="comma-separated subset of the config's runs")
    add("methods", cmd_methods, "list the available methods")
    sp = add("fetch", cmd_fetch, "fetch the experiment's hub models and datasets into the caches")
    sp.add_argument("--out", help="the manifest (default: results/<experiment>/fetched.json)")
    sp.add_argument(
        "--offline",
        action="store_true",
        help="download nothing, check that every item is cached (also with HF_HUB_OFFLINE=1)",
    )
    sp = add("plan", cmd_plan, "estimated GPU memory and GPU-hours of every job")
    sp.add_argument("--configfile", dest="config", help="experiment YAML (= --config)")
    sp.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU")
    sp.add_argument("--prompt-tokens", type=int, help="prompt tokens per row (default: by task)")
    sp.add_argument(
        "--hf-tokens-per-s", type=float, help="hf generation tokens/s per GPU at 1B parameters"
    )
    sp.add_argument(
        "--vllm-tokens-per-s",
        type=float,
        help="vllm generation tokens/s per GPU at 1B parameters",
    )
    sp = sub.add_parser("schema", help="print the experiment config's JSON schema")
    sp.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars drown the training progress
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "schema":
        from creditbench.config import json_schema

        print(json.dumps(json_schema(), indent=2, sort_keys=True))
        return 0
    try:
        cfg = load_experiment(args.config)
        status = args.func(cfg, args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"creditbench: error: {e}", file=sys.stderr)
        return 2
    return status or 0  # a command's own status: train's pre-emption (75)


if __name__ == "__main__":
    sys.exit(main())
