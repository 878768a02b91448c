# Config validation (JSON schema, then the engine's typed config) and path helpers.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from creditbench.cli import suites_of
from creditbench.config import ConfigError, experiment_from_dict
from creditbench.utils import atomic_write_text

# An experiment stands alone: a --configfile replaces the default config, never merges
# into it (merged `runs` tables would silently add the default's runs).
if workflow.overwrite_configfiles:
    config.clear()
    config.update(workflow.config_settings.overwrite_config)

validate(config, schema="../schema/config.schema.json", set_default=False)
try:
    EXP = experiment_from_dict(dict(config), source="config")
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

R = f"results/{EXP.experiment}"
RUNS = list(EXP.runs)
SEEDS = EXP.seeds
SUITES = suites_of(EXP)
GPU = 1 if EXP.model.path is not None else 0  # real models train on a GPU
CONFIG = f"{R}/config.json"  # the resolved config every job reads

_resolved = json.dumps(EXP.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
if not Path(CONFIG).is_file() or Path(CONFIG).read_text() != _resolved:
    atomic_write_text(CONFIG, _resolved)


def run_params(wildcards):
    """A run's resolved settings: a change re-runs its jobs (Snakemake's params trigger)."""
    return EXP.run(wildcards.run).model_dump_json()


def experiment_dir(wildcards, input):
    """results/<experiment>, from a ledger's path: <experiment>/runs/<run>/seed<k>/ledger.json."""
    return str(Path(input.ledgers[0]).parents[3])


def output_dir(wildcards, output):
    return str(Path(output[0]).parent)


def input_dir(key):
    """A param: the directory of one of a job's input files."""
    return lambda wildcards, input: str(Path(getattr(input, key)).parent)


def output_dir_of(key):
    """A param: the directory of one of a job's output files."""
    return lambda wildcards, output: str(Path(getattr(output, key)).parent)
