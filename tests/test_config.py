"""Experiment configs: validation before any work, error messages, precedence, round trip, CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from creditbench.cli import main
from creditbench.config import ConfigError, ExperimentConfig, load_experiment

ROOT = Path(__file__).resolve().parents[1]

VALID = """
experiment: cfgtest
seeds: [0]
task: {min_len: 2, max_len: 3, n_train: 40, n_test: 10, long_min_len: 4, long_max_len: 4}
model: {tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}
train: {steps: 3, group_size: 4, lr: 1.0e-3}
runs:
  x: {method: grpo}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def with_changes(**sections) -> str:
    """VALID with whole top-level sections replaced."""
    data = yaml.safe_load(VALID)
    data.update(sections)
    return yaml.safe_dump(data)


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(write(tmp_path, text))
    return str(info.value)


# YAML text, substrings every error message must contain
BAD_CONFIGS = {
    "unknown_method": (
        VALID.replace("method: grpo", "method: nosuchmethod"),
        ["runs.x.method", "'nosuchmethod'", "available", "'grpo'"],
    ),
    "negative_lr_experiment": (
        VALID.replace("lr: 1.0e-3", "lr: -1e-4"),
        [": train.lr:", "greater than 0", "got -0.0001"],
    ),
    "negative_lr_run": (
        VALID.replace("{method: grpo}", "{method: grpo, train: {lr: -1e-4}}"),
        ["runs.x.train.lr", "greater than 0"],
    ),
    "group_size_one": (
        VALID.replace("group_size: 4", "group_size: 1"),
        ["train.group_size", "greater than or equal to 2", "got 1"],
    ),
    "missing_model_path": (
        VALID.replace("model: {", "model: {path: ./does/not/exist, "),
        ["model.path", "./does/not/exist", "does not exist"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_naming_key_value_and_allowed(tmp_path, case):
    text, needles = BAD_CONFIGS[case]
    msg = config_error(tmp_path, text)
    assert str(tmp_path / "exp.yaml") in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    if "lr" in case:  # the bad value, as written or as parsed
        assert "-1e-4" in msg or "-0.0001" in msg, msg


def test_run_level_negative_lr_is_attributed_to_the_run(tmp_path):
    text = VALID.replace(
        "x: {method: grpo}", "x: {method: grpo}\n  y: {method: grpo, train: {lr: -0.5}}"
    )
    msg = config_error(tmp_path, text)
    assert "runs.y.train.lr" in msg and "-0.5" in msg
    assert "runs.x" not in msg


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["data", "train"])
def test_cli_rejects_bad_config_with_exit_2_and_writes_nothing(tmp_path, capsys, case, command):
    text, needles = BAD_CONFIGS[case]
    cfg = write(tmp_path, text)
    results = tmp_path / "results"
    argv = [command, "-c", str(cfg), "--results", str(results)]
    if command == "train":
        argv += ["--run", "x", "--seed", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("creditbench: error: ")
    assert needles[0] in err
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_cli_data_on_valid_config_writes_the_splits(tmp_path, capsys):
    cfg = write(tmp_path, VALID)
    results = tmp_path / "results"
    assert main(["data", "-c", str(cfg), "--results", str(results)]) == 0
    data = results / "cfgtest" / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        "test.jsonl",
        "test_long.jsonl",
        "train.jsonl",
    ]
    assert len((data / "train.jsonl").read_text().splitlines()) == 40
    assert capsys.readouterr().err == ""


def test_cli_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["data", "-c", str(tmp_path / "nope.yaml"), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "creditbench: error:" in err and "nope.yaml" in err and "does not exist" in err
    assert not (tmp_path / "r").exists()


def test_cli_unknown_run_exits_2_listing_runs(tmp_path, capsys):
    cfg = write(tmp_path, VALID)
    argv = [
        "train",
        "-c",
        str(cfg),
        "--results",
        str(tmp_path / "r"),
        "--run",
        "nope",
        "--seed",
        "0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "['x']" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (VALID + "trian: {steps: 3}\n", ["trian", "unknown key"]),
        (VALID.replace("steps: 3", "stpes: 3"), ["train.stpes", "unknown key"]),
        (
            VALID.replace("{method: grpo}", "{method: grpo, loss: {clipp: true}}"),
            ["runs.x.loss.clipp"],
        ),
        (
            VALID.replace("{method: grpo}", "{method: grpo, stdd: none}"),
            ["runs.x.stdd", "unknown key"],
        ),
        (
            VALID.replace("hidden_size: 32", "hiden_size: 32"),
            ["model.tiny.hiden_size", "unknown key"],
        ),
        (VALID.replace("min_len: 2", "minlen: 2"), ["task.minlen", "unknown key"]),
    ],
)
def test_typo_keys_are_rejected_as_unknown(tmp_path, text, needles):
    msg = config_error(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            VALID.replace("min_len: 2, max_len: 3", "min_len: 5, max_len: 3"),
            ["min_len (5)", "max_len (3)"],
        ),
        (VALID.replace("num_heads: 2", "num_heads: 3"), ["divisible", "num_heads (3)"]),
        (VALID.replace("seeds: [0]", "seeds: [1, 1]"), ["seeds", "distinct"]),
        (
            VALID.replace("{method: grpo}", "{method: grpo, std: bogus}"),
            ["runs.x.std", "'bogus'", "'unbiased'"],
        ),
        (VALID.replace("x: {method: grpo}", "x: {lr: 1}"), ["'x'", "'method'"]),
        (VALID.replace("x: {method: grpo}", "'bad name': {method: grpo}"), ["'bad name'"]),
        (
            with_changes(loss={"aggregation": "sum"}),
            ["loss.aggregation", "'sum'", "'grpo'", "'dapo'"],
        ),
        (with_changes(sampling={"top_p": 1.5}), ["sampling.top_p", "1.5"]),
        ("- just\n- a list\n", ["top level must be a mapping"]),
        ("a: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_other_invalid_values_name_key_and_value(tmp_path, text, needles):
    msg = config_error(tmp_path, text)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_unknown_run_name_lists_defined_runs(tmp_path):
    cfg = load_experiment(write(tmp_path, VALID + "  other: {method: grpo}\n"))
    with pytest.raises(ConfigError, match=r"unknown run 'nope'.*\['other', 'x'\]"):
        cfg.run("nope")


def test_model_path_accepts_hub_id_and_checks_local_directory(tmp_path):
    cfg = load_experiment(write(tmp_path, VALID.replace("model: {", "model: {path: org/name, ")))
    assert cfg.model.path == "org/name"
    empty = tmp_path / "empty_model"
    empty.mkdir()
    msg = config_error(tmp_path, VALID.replace("model: {", f"model: {{path: {empty}, "))
    assert "config.json" in msg and str(empty) in msg
    (empty / "config.json").write_text("{}")
    assert load_experiment(
        write(tmp_path, VALID.replace("model: {", f"model: {{path: {empty}, "))
    ).model.path == str(empty)


# ------------------------------------------------------------------ precedence
def test_loss_precedence_defaults_then_experiment_then_run(tmp_path):
    text = with_changes(
        runs={"plain": {"method": "grpo"}, "override": {"method": "grpo", "loss": {"clip": True}}}
    )
    assert load_experiment(write(tmp_path, text)).run("plain").loss.clip is True  # grpo DEFAULTS
    text = with_changes(
        loss={"clip": False, "epsilon": 0.3},
        runs={"plain": {"method": "grpo"}, "override": {"method": "grpo", "loss": {"clip": True}}},
    )
    cfg = load_experiment(write(tmp_path, text))
    assert cfg.run("plain").loss.clip is False
    assert cfg.run("override").loss.clip is True
    assert cfg.run("override").loss.epsilon == 0.3  # the experiment's other keys survive the merge
    assert cfg.run("override").loss.aggregation == "grpo"  # from DEFAULTS


def test_method_defaults_override_engine_defaults(tmp_path):
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "noclip.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            DEFAULTS = {"loss": {"clip": False, "aggregation": "dapo"}, "train": {"lr": 0.5}}
            class Params(BaseModel):
                k: int = 1
            class Method:
                def __init__(self, params, ctx):
                    pass
            """
        )
    )
    text = with_changes(
        methods_dir=str(methods),
        train={"steps": 3, "group_size": 4},
        runs={
            "a": {"method": "noclip"},
            "b": {"method": "noclip", "k": 3, "loss": {"clip": True}, "train": {"lr": 0.25}},
        },
    )
    cfg = load_experiment(write(tmp_path, text))
    a, b = cfg.run("a"), cfg.run("b")
    assert (a.loss.clip, a.loss.aggregation, a.train.lr, a.params) == (False, "dapo", 0.5, {"k": 1})
    assert (b.loss.clip, b.loss.aggregation, b.train.lr, b.params) == (True, "dapo", 0.25, {"k": 3})
    assert a.train.group_size == 4 and a.train.steps == 3
    text = text.replace("group_size: 4", "group_size: 4\n  lr: 0.125")
    assert (
        load_experiment(write(tmp_path, text)).run("a").train.lr == 0.125
    )  # experiment > DEFAULTS


def test_train_section_deep_merges_experiment_and_run(tmp_path):
    text = with_changes(
        train={"steps": 10, "lr": 0.01, "group_size": 4},
        runs={"x": {"method": "grpo", "train": {"steps": 20}}},
    )
    run = load_experiment(write(tmp_path, text)).run("x")
    assert (run.train.steps, run.train.lr, run.train.group_size) == (20, 0.01, 4)
    assert run.train.prompts_per_step == 8  # engine default
    assert run.method == "grpo" and run.params == {
        "std": "unbiased",
        "eps": 1e-4,
        "baseline": "group_mean",
        "length_norm": "sequence",
    }


def test_overrides_apply_on_top_of_the_file(tmp_path):
    cfg = load_experiment(write(tmp_path, VALID), overrides={"train": {"steps": 7}})
    assert cfg.run("x").train.steps == 7
    assert cfg.run("x").train.lr == 1e-3
    with pytest.raises(ConfigError, match=r": train\.group_size: .*got 0"):
        load_experiment(write(tmp_path, VALID), overrides={"train": {"group_size": 0}})


# ------------------------------------------------------------------ round trip
def test_valid_config_round_trips(tmp_path):
    cfg = load_experiment(write(tmp_path, VALID))
    assert isinstance(cfg, ExperimentConfig)
    assert (
        cfg.experiment == "cfgtest" and cfg.task.n_train == 40 and cfg.model.tiny.hidden_size == 32
    )
    dumped = yaml.safe_dump(cfg.model_dump(mode="json"))
    again = load_experiment(write(tmp_path, dumped, "again.yaml"))
    assert again == cfg
    assert again.all_runs() == cfg.all_runs()
    assert cfg.run("x").train.lr == 1e-3 and cfg.run("x").train.group_size == 4


def test_bundled_default_experiment_is_valid():
    cfg = load_experiment(Path(__file__).resolve().parent.parent / "experiments" / "default.yaml")
    assert "grpo" in cfg.runs
    assert cfg.run("grpo").loss.clip is True


@pytest.mark.parametrize("name", ["default", "quick", "smoke"])
def test_every_shipped_experiment_config_validates_with_all_its_runs(name):
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.yaml"
    cfg = load_experiment(path)
    assert cfg.experiment == name
    runs = cfg.all_runs()
    assert "grpo" in runs
    if name != "smoke":  # every method of the comparison, once at least
        assert {"vineppo", "ibpo", "oar_p", "oar_g", "rrpo_1x4", "srpo_1x4"} <= set(runs)
        assert runs["srpo_1x4"].loss.clip is False
    if name == "default":  # and the SRPO ablations: splits, clipping, the oracle reset
        assert {"srpo_2x4", "srpo_1x8", "srpo_1x4_clip", "srpo_oracle_1x4"} <= set(runs)
        assert runs["srpo_1x4_clip"].loss.clip is True


def test_the_committed_json_schema_is_the_config_models_schema():
    """Snakemake validates configs against the committed schema: it must not go stale."""
    from creditbench.config import json_schema

    committed = json.loads((ROOT / "experiments" / "schema" / "config.schema.json").read_text())
    assert committed == json_schema(), "regenerate: creditbench schema > experiments/schema/..."


# ------------------------------------------------------------ clear config errors
def test_a_misspelt_key_is_one_line_naming_the_key_and_the_right_one(tmp_path):
    path = write(tmp_path, VALID + "seedz: [0, 1]\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    (line,) = str(e.value).splitlines()  # one problem, one line, no schema
    assert line.startswith(f"{path}: seedz: unknown key; did you mean 'seeds'?")
    assert "allowed: diagnostics, eval, experiment" in line
    path = write(tmp_path, VALID + "seedz: [0]\nlanch: {num_processes: 1}\n", "two.yaml")
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    lines = str(e.value).splitlines()  # two problems, two lines
    assert len(lines) == 2
    assert any("lanch: unknown key; did you mean 'launch'?" in x for x in lines)
    assert any("seedz: unknown key; did you mean 'seeds'?" in x for x in lines)


def test_an_unknown_evaluation_suite_is_rejected_naming_the_suites(tmp_path):
    path = write(tmp_path, VALID + "eval: {suites: [nonexistent_suite, chains_tset]}\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    lines = str(e.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: eval.suites: unknown suite 'nonexistent_suite' (suites: ")
    assert "did you mean 'chains_test'?" in lines[1]
    for suite in ("cb_gsm8k", "cb_humaneval", "cb_math", "chains_test", "chains_test_long"):
        assert suite in lines[0]
    # ours, the task's own and lm-eval's tasks are suites
    ok = write(tmp_path, VALID + "eval: {suites: [chains_test_long, cb_mbpp, gsm8k]}\n", "ok.yaml")
    assert load_experiment(ok).eval.suites == ["chains_test_long", "cb_mbpp", "gsm8k"]
