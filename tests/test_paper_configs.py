"""paper_configs/ and the DAG's GPU / multi-process plumbing: every paper config loads, and
its DAG plans (a dry run, through the SLURM profile where its executor plugin is installed)
one training job per run x seed and one evaluation job per run x seed x suite, each asking
for the right GPUs and started the right way (``accelerate launch`` over several processes).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import yaml

from creditbench.config import load_experiment as _load_experiment

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted((ROOT / "paper_configs").glob("*.yaml"))
ACCELERATE = ROOT / "experiments" / "accelerate"
SLURM = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None

# beside the paper configs, the testbed (the smoke experiment) trained by two processes
# (accelerate on CPU) or with an accelerate config that is not there
SMOKE = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
EXTRA = {
    "smoke_two_processes": {**SMOKE, "launch": {"num_processes": 2}},
    "smoke_bad_accelerate": {
        **SMOKE,
        "launch": {"num_processes": 2, "accelerate_config": "no_such_file"},
    },
}


@cache
def load_experiment(path: Path):
    return _load_experiment(path)


def dry_run(configfile: Path, workdir: Path) -> subprocess.CompletedProcess:
    """``snakemake -n -p`` in its own working directory (the repository's results/ stay
    untouched), through the SLURM profile when its plugin is installed."""
    profile = ["--profile", str(ROOT / "experiments" / "profiles" / "slurm")] if SLURM else []
    cmd = ["snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    cmd += ["-n", "-p", "--configfile", str(configfile), *profile]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300, env=env)


def parse_plan(text: str) -> list[dict]:
    """The jobs of a dry run: rule name, resources (name -> value) and shell command."""
    jobs = []
    for line in text.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            jobs.append({"rule": m.group(1), "resources": {}, "shell": None})
        elif jobs and line.strip().startswith("resources: "):
            pairs = line.strip()[len("resources: ") :].split(", ")
            jobs[-1]["resources"] = dict(p.split("=", 1) for p in pairs)
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line[len("Shell command: ") :]
    return jobs


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, list[dict]]]:
    """Every paper config and the testbed cases planned once, concurrently."""
    work = tmp_path_factory.mktemp("paper_configs")
    cases = {p.stem: p for p in PAPER_CONFIGS}
    for name, cfg in EXTRA.items():
        cases[name] = work / f"{name}.yaml"
        cases[name].write_text(yaml.safe_dump({**cfg, "experiment": name}))
    for name in cases:
        (work / name).mkdir()
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = dict(
            zip(cases, pool.map(lambda n: dry_run(cases[n], work / n), cases), strict=True)
        )
    return {name: (proc, parse_plan(proc.stdout + proc.stderr)) for name, proc in procs.items()}


def planned(plans, name: str) -> list[dict]:
    proc, jobs = plans[name]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return jobs


def of(jobs: list[dict], rule: str) -> list[dict]:
    return [j for j in jobs if j["rule"] == rule]


def test_the_paper_configs_are_there():
    names = {p.name for p in PAPER_CONFIGS}
    assert {
        "srpo_qwen2.5-14b.yaml",
        "srpo_olmo3-7b.yaml",
        "oar.yaml",
        "ibpo.yaml",
        "cheap_qwen2.5-0.5b_gsm8k.yaml",
    } <= names
    assert {n for n in names if n.startswith("vineppo_")} == {
        f"vineppo_{m}_{t}.yaml"
        for m in ("rhomath-1.1b", "deepseekmath-7b")
        for t in ("math", "gsm8k")
    }


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_every_paper_config_loads_with_a_real_model_and_the_math_task(path):
    cfg = load_experiment(path)
    assert cfg.experiment == path.stem
    assert cfg.model.path is not None and cfg.task.name == "math"
    assert cfg.warm_start.steps == 0 and cfg.warm_start.skill_steps == 0
    assert cfg.eval.suites and len(cfg.seeds) == 3
    assert "reported" in path.read_text().lower()  # the paper's numbers, or why there are none


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_the_dag_plans_one_training_job_per_run_and_seed_and_one_evaluation_per_suite(plans, path):
    cfg = load_experiment(path)
    jobs = planned(plans, path.stem)
    n_runs, n_seeds, n_suites = len(cfg.runs), len(cfg.seeds), len(cfg.eval.suites)
    assert len(of(jobs, "train")) == n_runs * n_seeds
    assert len(of(jobs, "evaluate")) == n_runs * n_seeds * n_suites
    assert len(of(jobs, "evaluate_base")) == n_suites  # the warm start's row of the table
    for rule in ("data", "warmstart", "tables", "figures", "all"):
        assert len(of(jobs, rule)) == 1, rule


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_real_model_jobs_ask_for_gpus_and_the_rest_for_none(plans, path):
    launch = load_experiment(path).launch
    per_job = launch.gpus_per_job if launch.gpus_per_job is not None else launch.num_processes
    jobs = planned(plans, path.stem)
    expected = {"train": per_job, "warmstart": 1, "evaluate": 1, "evaluate_base": 1, "data": 0}
    expected.update(tables=0, figures=0)
    for job in jobs:
        if job["rule"] in expected:
            assert int(job["resources"]["gpu"]) == expected[job["rule"]], job
            assert int(job["resources"]["runtime"]) > 0 and int(job["resources"]["mem_mb"]) > 0


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_training_runs_under_accelerate_launch_exactly_when_it_has_several_processes(plans, path):
    launch = load_experiment(path).launch
    for job in of(planned(plans, path.stem), "train"):
        if launch.num_processes == 1:
            assert job["shell"].startswith("creditbench --threads ")
        else:
            config_file = ACCELERATE / f"{launch.accelerate_config or 'ddp'}.yaml"
            assert job["shell"].startswith(
                f"accelerate launch --num_processes {launch.num_processes}"
                f" --config_file {config_file} -m creditbench.cli --threads "
            )
        assert " train -c " in job["shell"]


@pytest.mark.skipif(not SLURM, reason="snakemake-executor-plugin-slurm is not installed")
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_the_slurm_profile_plans_every_paper_config(plans, path):
    jobs = planned(plans, path.stem)
    train = of(jobs, "train")[0]["resources"]
    assert train["slurm_partition"] == "gpu" and int(train["runtime"]) >= 60
    assert of(jobs, "data")[0]["resources"]["slurm_partition"] == "cpu"


def test_a_testbed_run_over_two_processes_uses_accelerate_with_the_ddp_config_and_no_gpu(
    plans,
):
    jobs = planned(plans, "smoke_two_processes")
    assert len(of(jobs, "train")) == 4 and len(of(jobs, "evaluate")) == 8  # 2 runs x 2 seeds
    for job in of(jobs, "train"):
        assert job["shell"].startswith(
            f"accelerate launch --num_processes 2 --config_file {ACCELERATE / 'ddp.yaml'}"
            " -m creditbench.cli --threads 1 train "
        )
    assert {j["resources"]["gpu"] for j in jobs if "gpu" in j["resources"]} == {"0"}


def test_an_accelerate_config_that_is_not_there_is_rejected_naming_the_key(plans):
    proc, _ = plans["smoke_bad_accelerate"]
    assert proc.returncode != 0
    assert "launch.accelerate_config" in proc.stdout + proc.stderr
    assert "no_such_file" in proc.stdout + proc.stderr


def test_the_shipped_accelerate_configs_load_in_bf16():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted(ACCELERATE.glob("*.yaml")):
        cfg = load_config_from_file(str(path))
        assert cfg.mixed_precision == "bf16" and cfg.num_machines == 1
        kinds[path.stem] = str(cfg.distributed_type).rsplit(".", 1)[-1]
    assert kinds == {
        "ddp": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
    }
