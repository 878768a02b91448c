# Config validation (JSON schema, then the engine's typed config) and path helpers.
import dataclasses
import json
import os
import socket
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import ExecMode

from creditbench.cli import suites_of
from creditbench.config import ConfigError, experiment_from_dict
from creditbench.fetch import hub_items
from creditbench.tasks import make_task
from creditbench.utils import atomic_write_text

# An experiment stands alone: a --configfile replaces the default config, never merges
# into it (merged `runs` tables would silently add the default's runs).
if workflow.overwrite_configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)

# the typed config first: one line per problem (Snakemake's validate would print the whole
# schema after its message); the schema check after it then passes on a valid config
try:
    EXP = experiment_from_dict(dict(config), source="config")
except ConfigError as e:
    raise WorkflowError(f"invalid config:\n{e}")
validate(config, schema="../schema/config.schema.json", set_default=False)

R = f"results/{EXP.experiment}"
RUNS = list(EXP.runs)
SEEDS = EXP.seeds
SUITES = suites_of(EXP)
CONFIG = f"{R}/config.json"  # the resolved config every job reads
# the software of every rule: one environment (`snakemake --sdm conda` builds it)
ENV = "../../environment.yml"
# the data step's files: train, test, then any other split a local suite reads (test_long)
SPLITS = list(dict.fromkeys(["train", "test", *make_task(EXP.task).suites.values()]))

_resolved = json.dumps(EXP.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
if not Path(CONFIG).is_file() or Path(CONFIG).read_text() != _resolved:
    atomic_write_text(CONFIG, _resolved)


# What the experiment reads from the Hugging Face Hub (creditbench/fetch.py: a hub model,
# the task's hub datasets, hub-backed evaluation suites), listed without network. When
# there is any, the fetch job (pipeline.smk) downloads it once into the caches and writes
# its manifest, results/<experiment>/fetched.json; the jobs that read from the hub (data,
# the model jobs) start after it with the hub offline. FETCHED is their extra input
# (ancient: a manifest written again reruns nothing), HUB_OFFLINE the start of their
# command. With nothing on the hub (the testbed) both are empty and the DAG is unchanged.
HUB_ITEMS = hub_items(EXP)
FETCHED = {"fetched": ancient(f"{R}/fetched.json")} if HUB_ITEMS else {}
HUB_OFFLINE = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 " if HUB_ITEMS else ""


def fixed(value):
    """A param given as a function, so Snakemake does not read the braces of a prompt
    template ("{question}") in it as wildcards."""
    return lambda wildcards: value


def run_params(wildcards):
    """A run's resolved settings: a change re-runs its jobs (Snakemake's params trigger)."""
    return EXP.run(wildcards.run).model_dump_json()


def experiment_dir(wildcards, input):
    """results/<experiment>, from a ledger's path: <experiment>/runs/<run>/seed<k>/ledger.json."""
    return str(Path(input.ledgers[0]).parents[3])


# Evaluation jobs: one per run x seed x suite, or (eval.group_suites) one per run x seed
# writing every suite's result, and (eval.group_seeds) one per run for all its seeds.
# Their results, logs and benchmarks are named by EVAL_JOB (under the run's folder when
# seeds are grouped, else under the seed's).
GROUP_SUITES = EXP.eval.group_suites
GROUP_SEEDS = EXP.eval.group_seeds
EVAL_JOB = "all" if GROUP_SUITES else "{suite}"
EVAL_RUN_JOB = f"seeds/{EVAL_JOB}" if GROUP_SEEDS else f"seed{{seed}}/{EVAL_JOB}"


def eval_results(folder):
    """An evaluation job's result files under ``folder`` (which may hold wildcards)."""
    if GROUP_SUITES:
        return expand(f"{folder}/{{suite}}.json", suite=SUITES, allow_missing=True)
    return f"{folder}/{{suite}}.json"


def run_eval_results():
    """A run's evaluation job's result files: one seed's, or every seed's."""
    folder = f"{R}/runs/{{run}}/seed{{seed}}/eval"
    if not GROUP_SEEDS:
        return eval_results(folder)
    files = eval_results(folder)
    return expand(files, seed=SEEDS, allow_missing=True)


def run_eval_models():
    """The trained models a run's evaluation job reads: its seed's, or every seed's."""
    model = f"{R}/runs/{{run}}/seed{{seed}}/model/config.json"
    return expand(model, seed=SEEDS, allow_missing=True) if GROUP_SEEDS else model


# Training jobs: one per run x seed, or (launch.group_seeds) one per run that trains its
# seeds one after another in one process; its log and benchmark are then the run's
# (logs/train/<run>/seeds.log), its outputs every seed's.
GROUP_TRAIN_SEEDS = EXP.launch.group_seeds
TRAIN_JOB = "seeds" if GROUP_TRAIN_SEEDS else "seed{seed}"


def run_train_output(name):
    """A training job's output file ``name`` under each of its seeds' run folders."""
    path = f"{R}/runs/{{run}}/seed{{seed}}/{name}"
    return expand(path, seed=SEEDS, allow_missing=True) if GROUP_TRAIN_SEEDS else path


def seed_args(wildcards, output):
    """``--seed K --out DIR`` for each seed the training job trains (its ledgers' folders)."""
    ledgers = output.ledger if isinstance(output.ledger, list) else [output.ledger]
    folders = [Path(x).parent for x in ledgers]
    return " ".join(f"--seed {f.name.removeprefix('seed')} --out {f}" for f in folders)


def suite_args(wildcards):
    """The evaluation command's suites: the job's own, or every suite of the experiment."""
    return " ".join(
        f"--suite {s}" for s in (SUITES if GROUP_SUITES else [wildcards.suite])
    )


def model_args(wildcards, input):
    """``--model DIR --out-dir DIR`` for each trained model the job evaluates (a seed's
    results go to eval/ beside its model)."""
    models = input.model if isinstance(input.model, list) else [input.model]
    folders = [Path(m).parent for m in models]
    return " ".join(f"--model {m} --out-dir {m.parent / 'eval'}" for m in folders)


def output_dir(wildcards, output):
    return str(Path(output[0]).parent)


def input_dir(key):
    """A param: the directory of one of a job's input files."""
    return lambda wildcards, input: str(Path(getattr(input, key)).parent)


def output_dir_of(key):
    """A param: the directory of one of a job's output files."""
    return lambda wildcards, output: str(Path(getattr(output, key)).parent)


# ----------------------------------------------------------- launch and resources
# A real model (model.path set) runs every model job on a GPU; the tiny testbed model runs
# on CPU. A training job asks for launch.gpus_per_job GPUs (default: one per process).
REAL_MODEL = EXP.model.path is not None
LAUNCH = EXP.launch
ACCELERATE_DIR = Path(workflow.basedir) / "experiments" / "accelerate"


def accelerate_config_file(name):
    """launch.accelerate_config: a shipped config by name (``ddp``, ``fsdp``,
    ``deepspeed_zero2``, ``deepspeed_zero3``, with or without ``.yaml``) or a path to an
    accelerate config file (absolute, or relative to the working directory)."""
    path = Path(name).expanduser()
    for candidate in (path, ACCELERATE_DIR / name, ACCELERATE_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate.resolve())
    shipped = sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))
    raise WorkflowError(
        f"invalid config: launch.accelerate_config: no accelerate config file {name!r} "
        f"(give a path, or one of {shipped} from {ACCELERATE_DIR})"
    )


def train_launcher():
    """The command that starts ``creditbench ... train``: the console script for one
    process, else ``accelerate launch`` over launch.num_processes processes with
    launch.accelerate_config (default ``ddp``: never the user's own default accelerate
    config, so a run does not depend on the machine's ~/.cache)."""
    if LAUNCH.num_processes == 1:
        if LAUNCH.accelerate_config is not None:
            logger.warning(
                "launch.accelerate_config is ignored: launch.num_processes is 1, so training "
                "runs in one process without accelerate launch"
            )
        return "creditbench"
    config_file = accelerate_config_file(LAUNCH.accelerate_config or "ddp")
    if LAUNCH.num_machines > 1:  # one accelerate launch per node, through srun
        script = Path(workflow.basedir) / "scripts" / "accelerate_multinode.sh"
        return f"{script} {LAUNCH.num_machines} {LAUNCH.num_processes} {config_file} --"
    return (
        f"accelerate launch --num_processes {LAUNCH.num_processes}"
        f" --config_file {config_file} -m creditbench.cli"
    )


TRAIN_LAUNCHER = train_launcher()

# gpu: what each job asks for (local: --resources gpu=N shares them; SLURM: --gpus=N)
GPUS = {
    "data": 0,
    "warmstart": int(REAL_MODEL),
    "train": (
        LAUNCH.gpus_per_job
        if LAUNCH.gpus_per_job is not None
        else (LAUNCH.num_processes if REAL_MODEL else 0)
    ),
    # lm-eval's vLLM engine spans tensor x data parallel GPUs; the HF model takes one
    "evaluate": (
        (EXP.eval.vllm_tensor_parallel_size * EXP.eval.vllm_data_parallel_size)
        if EXP.eval.lm_eval_model == "vllm" and EXP.eval.backend == "lm-eval"
        else 1
    )
    * int(REAL_MODEL),
    "analysis": 0,
}
# Each model job runs under `creditbench-place --gpus N --` (creditbench/placement.py):
# it claims N of the machine's GPUs from a pool shared by concurrent jobs, and a
# rendezvous port, and runs the command with CUDA_VISIBLE_DEVICES and MASTER_PORT set
# (accelerate launch: --main_process_port). --resources gpu=K bounds how many GPUs jobs
# hold at once; the pool assigns which ones. A job that asks for none is kept off them.
# threads: CPU cores a job uses (torch threads, reward checks); a profile may override
THREADS = {
    # the warm start runs alone (every other model job needs its output): a real model
    # gets every core of the machine (Snakemake scales a claim down to --cores; a command
    # without --cores, e.g. --report, still parses); the testbed's tiny model 2: on a
    # 2-core machine, idle, 2 threads step 1.42x faster than 1 (on a CPU shared with
    # other work, extra threads make it several times slower; benchmarks/torch_threads.py).
    # A fixed count, not the machine's: torch's reductions, hence the warm start's
    # weights, depend on the thread count, and the testbed's base should be the same
    # wherever it is built.
    "warmstart": (os.cpu_count() or 1) if REAL_MODEL else 2,
    "train": 4 * LAUNCH.num_processes if REAL_MODEL else 1,
    "evaluate": 4 if REAL_MODEL else 1,
}
# runtime (minutes) and mem_mb (host memory), the limits a cluster job is submitted with:
# the testbed's jobs take minutes on a CPU; a real model's take hours (a training job
# resumes from its last checkpoint, so a retried job continues where a time limit cut it)
RUNTIME = (
    {"data": 60, "warmstart": 240, "train": 1440, "evaluate": 240, "analysis": 30}
    if REAL_MODEL
    else {"data": 10, "warmstart": 60, "train": 120, "evaluate": 30, "analysis": 30}
)
MEM_MB = (
    {
        "data": 16000,
        "warmstart": 64000,
        "train": 32000 * (1 + LAUNCH.num_processes),  # each process loads the weights
        "evaluate": 64000,
        "analysis": 8000,
    }
    if REAL_MODEL
    else {
        "data": 4000,
        "warmstart": 4000,
        "train": 4000 * LAUNCH.num_processes,
        "evaluate": 4000,
        "analysis": 8000,
    }
)


def torch_threads(wildcards, threads):
    """A param: torch CPU threads per training process (the job's threads, shared)."""
    return max(1, threads // LAUNCH.num_processes)


# ------------------------------------------------------------------- resuming after a kill
# Snakemake's lock (.snakemake/locks/) outlives a Snakemake killed with SIGKILL (a closed
# terminal, the OOM killer), and the next run would refuse to start. Here a lock is
# honoured only while a Snakemake that ran here lives: each run records its process in
# RUNNING/<pid>.json when it starts executing (onstart, just after Snakemake wrote its
# locks) and removes the record when it ends. Snakemake checks the locks after parsing
# this file (Workflow.execute: persistence.lock() once the DAG is built), so a run that
# finds only records of dead processes removes the locks written before them, and
# Snakemake then finds none. Incomplete outputs of the killed jobs are rerun
# (rerun-incomplete in profiles/default/config.yaml); a training job still running as
# an orphan holds its run folder's lock, and the restarted job waits for it
# (creditbench/train.py).
# (relative to the working directory)
RUNNING = Path(".snakemake") / "creditbench-running"
RECORD = RUNNING / f"{os.getpid()}.json"


def _process_start(pid):
    """The start time of process ``pid`` (clock ticks since boot), or None off Linux."""
    try:
        stat = (Path(os.sep) / "proc" / str(pid) / "stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _recorded_snakemake_alive(record):
    if record.get("host") != socket.gethostname():
        return True  # another machine's process: it cannot be checked from here
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    start = _process_start(pid)
    return start is None or record.get("start") in (None, start)  # else a reused pid


def drop_stale_locks():
    """Parse time, in the workflow's own process only: if every Snakemake that ran here
    is dead, remove the locks they left (those written before their records; a newer
    Snakemake's locks are left alone)."""
    if workflow.exec_mode != ExecMode.DEFAULT or not RUNNING.is_dir():
        return
    records = {}
    for path in RUNNING.glob("*.json"):
        try:
            records[path] = (json.loads(path.read_text()), path.stat().st_mtime)
        except (OSError, ValueError):
            return  # being written: honour the locks
    if not records or any(_recorded_snakemake_alive(r) for r, _ in records.values()):
        return
    recorded_at = max(t for _, t in records.values())
    stale = [
        f
        for f in Path(".snakemake", "locks").glob("*.lock")
        if f.stat().st_mtime <= recorded_at
    ]
    for f in stale:
        f.unlink(missing_ok=True)
    for path in records:
        path.unlink(missing_ok=True)
    if stale:
        pids = ", ".join(str(r["pid"]) for r, _ in records.values())
        logger.warning(
            f"removed {len(stale)} lock file(s) of a Snakemake that is no longer running "
            f"(pid {pids}); its incomplete jobs are rerun"
        )


drop_stale_locks()


onstart:
    RUNNING.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        RECORD,
        json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": _process_start(os.getpid()),
            }
        ),
    )


onsuccess:
    RECORD.unlink(missing_ok=True)


onerror:
    RECORD.unlink(missing_ok=True)
