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
# a paper config that evaluates with lm-eval's vLLM model, over two GPUs per evaluation
SPO = yaml.safe_load((ROOT / "paper_configs" / "spo_r1-distill-qwen-1.5b_math_2k.yaml").read_text())
EXTRA["spo_vllm_tp2"] = {**SPO, "eval": {**SPO["eval"], "vllm_tensor_parallel_size": 2}}
# VinePPO's DeepSeekMath-7B setting over two 8-GPU nodes per training job
VINE = yaml.safe_load((ROOT / "paper_configs" / "vineppo_deepseekmath-7b_math.yaml").read_text())
EXTRA["vineppo_two_nodes"] = {
    **VINE,
    "launch": {**VINE["launch"], "num_processes": 16, "num_machines": 2},
}
MODEL_RULES = ("warmstart", "train", "evaluate", "evaluate_base")


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


def placed(job: dict) -> str:
    """A model job's command under the placement wrapper, which claims its ``gpu``."""
    prefix = f"creditbench-place --gpus {job['resources']['gpu']} -- "
    # a job of an experiment with hub models runs offline (rule fetch fetched them first)
    shell = job["shell"].removeprefix("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 ")
    assert shell.startswith(prefix), job
    return shell[len(prefix) :]


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
    for family in ("vineppo", "ppo"):
        assert {n for n in names if n.startswith(f"{family}_")} == {
            f"{family}_{m}_{t}.yaml"
            for m in ("rhomath-1.1b", "deepseekmath-7b")
            for t in ("math", "gsm8k")
        }


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_no_paper_config_trains_a_critic_under_deepspeed(path):
    """PPO owns a critic, which the engine refuses beside the policy under DeepSpeed."""
    cfg = load_experiment(path)
    if any(cfg.run(name).method == "ppo" for name in cfg.runs):
        assert "deepspeed" not in (cfg.launch.accelerate_config or ""), path.name


@pytest.mark.parametrize("setting", ["rhomath-1.1b_math", "deepseekmath-7b_gsm8k"])
def test_the_ppo_configs_share_their_vineppo_setting(setting):
    """Everything but the runs, the launch and the experiment's name is the VinePPO file's."""
    ppo = load_experiment(ROOT / "paper_configs" / f"ppo_{setting}.yaml").model_dump()
    vine = load_experiment(ROOT / "paper_configs" / f"vineppo_{setting}.yaml").model_dump()
    for key in ("runs", "launch", "experiment"):
        ppo.pop(key), vine.pop(key)
    assert ppo == vine


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
            assert placed(job).startswith("creditbench --threads ")
        else:
            config_file = ACCELERATE / f"{launch.accelerate_config or 'ddp'}.yaml"
            assert placed(job).startswith(
                f"accelerate launch --num_processes {launch.num_processes}"
                f" --config_file {config_file} -m creditbench.cli --threads "
            )
        assert " train -c " in job["shell"]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_every_model_job_claims_its_gpus_through_the_placement_wrapper(plans, path):
    jobs = [j for j in planned(plans, path.stem) if j["rule"] in MODEL_RULES]
    assert {j["rule"] for j in jobs} == set(MODEL_RULES)
    for job in jobs:
        assert int(job["resources"]["gpu"]) >= 1
        assert placed(job).split()[0] in ("creditbench", "accelerate"), job
        assert job["shell"].endswith(" 2>&1")  # the wrapper's own lines go to the job's log


def test_a_vllm_evaluation_over_tensor_parallel_gpus_claims_them_all(plans):
    jobs = planned(plans, "spo_vllm_tp2")
    for job in of(jobs, "evaluate") + of(jobs, "evaluate_base"):
        assert job["resources"]["gpu"] == "2"
        assert placed(job).startswith("creditbench --threads ")
    assert {j["resources"]["gpu"] for j in of(jobs, "warmstart")} == {"1"}


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
        assert placed(job).startswith(
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


# ------------------------------------------------------------- the project stands alone
def test_no_tracked_file_refers_to_a_folder_outside_the_repository():
    """A clone has no ``../shared``: docs, configs and code cite papers and official code."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    pattern = re.compile(r"\.\./shared|shared/docs|shared/seeds")
    offenders = []
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file() or name == "tests/test_paper_configs.py":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [
            f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)
        ]
    assert not offenders, f"references to files outside the repository: {offenders}"


# ------------------------------------------------------- the official code's defaults
def raw(name: str) -> dict:
    return yaml.safe_load((ROOT / "paper_configs" / name).read_text())


def test_no_paper_config_sets_the_removed_sampling_max_thoughts():
    for path in PAPER_CONFIGS:
        assert "max_thoughts" not in (yaml.safe_load(path.read_text()).get("sampling") or {})


@pytest.mark.parametrize("name", ["srpo_qwen2.5-14b.yaml", "srpo_olmo3-7b.yaml"])
def test_srpo_configs_follow_the_srpo_code(name):
    """Ankur-Samanta/SRPO: training/config/thought_agent_config.yaml (max_thoughts 20,
    max_tokens_per_thought 256, localization_max_tokens 4096, localization_temp 0.3 / 0.0
    for 1x8), training/config/srpo_math500.yaml (response_length 5120, LoRA r 64 alpha 64,
    lr 5e-5, weight_decay 0.01, grad_clip 1.0, T 0.7, top_p 0.95, 32 prompts x 8, mini-batch
    8 prompts, 1 epoch) and thought_agent_loop.py::_generate_thought_chain (raw prompt)."""
    cfg = load_experiment(ROOT / "paper_configs" / name)
    t = cfg.task
    assert (t.segmenter, t.stop_pattern, t.max_thoughts, t.max_thought_tokens) == (
        "stop",
        "</thought>",
        20,
        256,
    )
    assert t.answer_marker == "\\boxed{" and t.chat_template is False
    assert t.train.limit is None and t.train.source.endswith("numina_olympiads_train.jsonl")
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (64, 64)
    s, tr = cfg.sampling, cfg.train  # the shared sections, as the runs inherit them
    assert (s["temperature"], s["top_p"], s["max_new_tokens"]) == (0.7, 0.95, 5120)
    assert [tr[k] for k in ("prompts_per_step", "group_size", "minibatches", "epochs")] == [
        32,
        8,
        4,
        1,
    ]
    assert [tr[k] for k in ("lr", "weight_decay", "max_grad_norm")] == [5e-5, 0.01, 1.0]
    from methods.srpo import LOCALISATION_TEMPERATURE, Params

    p = Params()
    assert (p.localisation_max_new_tokens, p.max_attempts) == (4096, 12)
    assert LOCALISATION_TEMPERATURE == {"1x4": 0.3, "2x4": 0.3, "1x8": 0.0}
    for run in raw(name)["runs"].values():  # no run overrides the code's SRPO settings
        assert not {"localisation_max_new_tokens", "max_attempts"} & set(run)


@pytest.mark.parametrize(
    "name, context",
    [
        ("vineppo_rhomath-1.1b_math.yaml", 2047),
        ("vineppo_rhomath-1.1b_gsm8k.yaml", 2047),
        ("vineppo_deepseekmath-7b_math.yaml", 2499),
        ("vineppo_deepseekmath-7b_gsm8k.yaml", 2499),
    ],
)
def test_vineppo_configs_follow_the_vineppo_code(name, context):
    """McGill-NLP/VinePPO configs/polIter_*_vineppo_*.jsonnet and their imports: rollouts
    stop at "\\n\\n\\nProblem:", T 0.6, top_p 0.9, max_tokens 1024, K = 9 (9rolls.jsonnet),
    value rollouts bounded by model_context_size (2047 Rho, max_sequence_length 2499
    DeepSeek), 2 epochs (ppo_MATH.jsonnet), KL 1e-4 clamped to [0, 10] (refKl0.0001,
    klLoss.jsonnet), max_step_for_value_estimation 25 on GSM8K."""
    cfg = load_experiment(ROOT / "paper_configs" / name)
    assert cfg.task.stop_strings == ["\n\n\nProblem:"] and cfg.task.max_thoughts is None
    s = cfg.sampling
    assert (s["temperature"], s["top_p"], s["max_new_tokens"]) == (0.6, 0.9, 1024)
    runs = raw(name)["runs"]
    vine = runs["vineppo"]
    assert (vine["mc_rollouts"], vine["value_context"]) == (9, context)
    assert vine.get("max_value_steps") == (25 if "gsm8k" in name else None)
    loss = runs["grpo_vineppo_loss"]["loss"]
    assert (loss["beta"], loss["kl_reduction"], loss["kl_clamp"]) == (1e-4, "sequence_sum", 10.0)
    from methods.vineppo import DEFAULTS

    assert DEFAULTS["train"]["epochs"] == 2 and DEFAULTS["loss"]["kl_clamp"] == 10.0


def test_the_srpo_data_selection_follows_the_srpo_code():
    """Ankur-Samanta/SRPO training/scripts/prepare_datasets.py: olympiads rows only, the last
    brace-balanced \\boxed{} answer, the bare-frac fix, the verifiability whitelist
    (_is_verifiable_answer), a pandas shuffle with seed 42, rows 0-399 / 400-499."""
    spec = importlib.util.spec_from_file_location(
        "prepare_srpo_data", ROOT / "paper_configs" / "prepare_srpo_data.py"
    )
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    assert prep.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert prep.last_boxed("\\boxed{unclosed") == ""
    assert prep.fix_answer("frac{1}{2}") == "\\frac{1}{2}"
    keep = ["42", "\\frac{1}{2}", "B", "2\\sqrt{3}", "(1, 2)", "3.5"]
    # the code's whitelist also drops a leading minus sign ("-7"), as its leading-junk rule
    drop = ["", "x" * 61, "{1", "(1", "yes", "\\text{7}", "2 or 3", "50%", "5 cm", "n", ";5", "-7"]
    assert all(prep.verifiable(a) for a in keep)
    assert not any(prep.verifiable(a) for a in drop)
    rows = [
        {
            "source": "olympiads" if i % 3 else "amc",
            "problem": f"p{i}",
            "solution": f"so \\boxed{{{i}}}" if i % 7 else "no answer",
        }
        for i in range(1200)
    ]
    train, test = prep.select(rows)
    pandas = pytest.importorskip("pandas")
    pool = [r for r in rows if r["source"] == "olympiads" and r["solution"].endswith("}")]
    order = (
        pandas.DataFrame({"problem": [r["problem"] for r in pool]})
        .sample(frac=1, random_state=42)["problem"]
        .tolist()
    )
    assert [r["problem"] for r in train] == order[:400]
    assert [r["problem"] for r in test] == order[400:500]
    assert all(r["answer"] == r["problem"][1:] for r in train + test)


def test_a_training_job_over_two_nodes_runs_one_accelerate_launch_per_node(plans):
    """launch.num_machines 2: the job asks for 2 nodes and 16 GPUs, and starts through
    scripts/accelerate_multinode.sh (srun, one accelerate launch per node) with the
    processes of both nodes and the run's accelerate config."""
    jobs = planned(plans, "vineppo_two_nodes")
    script = ROOT / "scripts" / "accelerate_multinode.sh"
    for job in of(jobs, "train"):
        assert job["resources"]["nodes"] == "2" and job["resources"]["gpu"] == "16"
        assert placed(job).startswith(
            f"{script} 2 16 {ACCELERATE / 'deepspeed_zero2.yaml'} -- --threads "
        ), job["shell"]
    one_node = of(planned(plans, "vineppo_deepseekmath-7b_math"), "train")
    assert {j["resources"]["nodes"] for j in one_node} == {"1"}


def test_the_multinode_launcher_needs_a_slurm_allocation(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "accelerate_multinode.sh"), "2", "16", "x.yaml", "--"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2 and "needs a SLURM allocation" in proc.stderr


def test_processes_that_do_not_divide_over_the_nodes_are_rejected_naming_both():
    from creditbench.config import ConfigError, experiment_from_dict

    with pytest.raises(ConfigError, match="launch.num_processes .3. counts the processes"):
        experiment_from_dict({"launch": {"num_processes": 3, "num_machines": 2}})
