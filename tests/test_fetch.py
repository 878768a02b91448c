"""``creditbench fetch``: what an experiment reads from the hub, the offline check against a
real Hugging Face cache laid out here, and the DAG's fetch job (dry runs only; no network)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import SMOKE, snakemake

from creditbench.cli import main
from creditbench.config import TinyModelConfig, experiment_from_dict, load_experiment
from creditbench.fetch import HubItem, hub_items, hub_offline
from creditbench.model import build_char_tokenizer, build_tiny_model
from creditbench.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted((ROOT / "paper_configs").glob("*.yaml"))
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def math_task(train: str, test: str, config: str | None = None) -> dict:
    return {
        "name": "math",
        "train": {"source": train, "config": config, "split": "train"},
        "test": {"source": test, "config": config, "split": "test"},
    }


# ------------------------------------------------------------------- gathering
def test_a_hub_model_and_a_hub_dataset_are_listed_and_nothing_else():
    cfg = experiment_from_dict(
        {
            "model": {"path": "someorg/some-model"},
            "task": math_task("someorg/some-data", "someorg/some-data", config="main"),
        }
    )
    assert hub_items(cfg) == [
        HubItem("model", "someorg/some-model"),
        HubItem("dataset", "someorg/some-data", config="main", split="train"),
        HubItem("dataset", "someorg/some-data", config="main", split="test"),
    ]  # the task's own suite (math_test) reads the experiment's local data


def test_the_tiny_model_a_local_model_and_local_data_list_nothing(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    local_task = math_task(str(tmp_path / "train.jsonl"), str(tmp_path / "test.parquet"))
    for data in (
        {},  # the default: the tiny model, the chains testbed
        {"model": {"path": str(model_dir)}},
        {"model": {"path": str(gguf)}},
        {"task": local_task},
        {"model": {"path": str(model_dir)}, "task": local_task},
    ):
        assert hub_items(experiment_from_dict(data)) == [], data
    assert hub_items(load_experiment(SMOKE)) == []


def test_hub_suites_are_listed_and_local_ones_are_not(tmp_path):
    data = str(tmp_path / "gsm8k.jsonl")

    def suites(**eval_):
        return [i for i in hub_items(experiment_from_dict({"eval": eval_})) if i.kind == "lm-eval"]

    assert suites(suites=["chains_test", "cb_gsm8k"]) == [HubItem("lm-eval", "cb_gsm8k")]
    assert suites(suites=["cb_gsm8k"], data_files={"cb_gsm8k": data}) == []
    # a group with one member read locally still reads the others from the hub
    assert suites(suites=["cb_math"], data_files={"cb_math": {"cb_gsm8k": data}}) == [
        HubItem("lm-eval", "cb_math", data_files=(("cb_gsm8k", data),))
    ]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_each_paper_config_lists_its_hub_model_datasets_and_suites(path):
    cfg = load_experiment(path)
    items = hub_items(cfg)
    assert items[0] == HubItem("model", cfg.model.path)
    assert not Path(cfg.model.path).exists()  # a hub id
    splits = (cfg.task.train, cfg.task.test)
    hub_sources = [s for s in splits if not s.source.endswith((".jsonl", ".json", ".parquet"))]
    assert [i for i in items if i.kind == "dataset"] == [
        HubItem("dataset", s.source, config=s.config, split=s.split) for s in hub_sources
    ]
    local = make_task(cfg.task).suites
    assert [i.id for i in items if i.kind == "lm-eval"] == [
        s for s in cfg.eval.suites if s not in local
    ]


def test_two_paper_configs_list_exactly_what_their_jobs_download():
    srpo = hub_items(load_experiment(ROOT / "paper_configs" / "srpo_qwen2.5-14b.yaml"))
    assert srpo[0] == HubItem("model", "Qwen/Qwen2.5-14B-Instruct")
    assert [i.kind for i in srpo[1:]] == ["lm-eval"] * 10  # its problems are local files
    vine = hub_items(load_experiment(ROOT / "paper_configs" / "vineppo_rhomath-1.1b_gsm8k.yaml"))
    assert vine == [  # evaluated on the task's own test split (math_test): no suite data
        HubItem("model", "realtreetune/rho-1b-sft-GSM8K"),
        HubItem("dataset", "openai/gsm8k", config="main", split="train"),
        HubItem("dataset", "openai/gsm8k", config="main", split="test"),
    ]


# --------------------------------------------------------- the offline check
@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in tmp_path, named by the environment."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


def lay_out_model(cache: Path, repo: str) -> Path:
    """A model in the hub cache's layout: refs/main names a commit, whose snapshot holds
    the tiny model's files (as a download leaves them, but real files, not links)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    tokenizer = build_char_tokenizer("0123456789+-*=\n ")
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    build_tiny_model(cfg, tokenizer).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def write_config(tmp_path: Path, name: str = "hub.yaml", **changes) -> Path:
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_offline_the_cached_model_resolves_to_its_snapshot_in_the_manifest(
    tmp_path, hub_cache, capsys
):
    snapshot = lay_out_model(hub_cache, "someorg/some-model")
    config = write_config(tmp_path, model={"path": "someorg/some-model"})
    out = tmp_path / "out" / "fetched.json"
    assert main(["fetch", "-c", str(config), "--offline", "--out", str(out)]) == 0
    manifest = json.loads(out.read_text())
    assert manifest["offline"] is True and manifest["hub_cache"] == str(hub_cache)
    assert manifest["items"] == [
        {
            "kind": "model",
            "id": "someorg/some-model",
            "revision": None,
            "path": str(snapshot),
            "commit": COMMIT,
        }
    ]
    printed = capsys.readouterr().out
    assert f"found model someorg/some-model from the local cache -> {snapshot}" in printed
    assert not list(out.parent.glob(".*.tmp"))  # written through a temporary file

    # a later job, under HF_HUB_OFFLINE=1: transformers loads the hub id from that snapshot
    from transformers import AutoConfig, AutoTokenizer

    with hub_offline():
        config = AutoConfig.from_pretrained("someorg/some-model", cache_dir=hub_cache)
        tok = AutoTokenizer.from_pretrained("someorg/some-model", cache_dir=hub_cache)
    assert config.vocab_size == len(tok)
    assert tok.decode(tok("1+2=3")["input_ids"]) == "1+2=3"


def test_hf_hub_offline_in_the_environment_checks_instead_of_downloading(
    tmp_path, hub_cache, monkeypatch
):
    lay_out_model(hub_cache, "someorg/some-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = write_config(tmp_path, model={"path": "someorg/some-model"})
    out = tmp_path / "fetched.json"
    assert main(["fetch", "-c", str(config), "--out", str(out)]) == 0  # no --offline
    assert json.loads(out.read_text())["offline"] is True


def test_offline_every_missing_item_is_named_and_no_manifest_is_written(
    tmp_path, hub_cache, monkeypatch, capsys
):
    lay_out_model(hub_cache, "someorg/some-model")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    config = write_config(
        tmp_path,
        model={"path": "someorg/some-model"},
        task=math_task("someorg/missing-data", "someorg/missing-data"),
    )
    out = tmp_path / "fetched.json"
    assert main(["fetch", "-c", str(config), "--offline", "--out", str(out)]) == 2
    assert not out.exists()
    captured = capsys.readouterr()
    assert "found model someorg/some-model" in captured.out  # the rest is still checked
    missing = [line for line in captured.err.splitlines() if "fetch: missing" in line]
    assert len(missing) == 2, captured.err  # the train and the test split
    for line, split in zip(missing, ("train", "test"), strict=True):
        named = f"missing dataset someorg/missing-data (split {split}): not in the local cache"
        assert line.startswith(f"creditbench: fetch: {named}"), line
        assert f"run `creditbench fetch -c {config}` where the hub can be reached" in line
    # the offline switch was for the check only
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ


def test_offline_a_model_not_in_the_cache_is_named(tmp_path, hub_cache, capsys):
    lay_out_model(hub_cache, "someorg/some-model")
    config = write_config(tmp_path, model={"path": "someorg/other-model"})
    out = tmp_path / "fetched.json"
    assert main(["fetch", "-c", str(config), "--offline", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "missing model someorg/other-model" in err and str(hub_cache) in err


def test_offline_suites_are_loaded_as_evaluation_loads_them(tmp_path):
    """lm-eval itself builds each suite's task dict with the hub offline: a group whose
    member reads a local file loads, a suite on the hub that is not cached is named."""
    records = [
        {"qid": "a", "term": "t", "description": "d", "question": "Is ice cold?", "answer": True},
        {"qid": "b", "term": "t", "description": "d", "question": "Is fire wet?", "answer": False},
    ]
    local = tmp_path / "strategyqa.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = write_config(
        tmp_path,
        eval={
            "suites": ["cb_strategy", "cb_sciq"],
            "data_files": {"cb_strategy": {"cb_strategyqa": str(local)}},
        },
    )
    out = tmp_path / "fetched.json"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    cmd = ["creditbench", "fetch", "-c", str(config), "--offline", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fetch: found lm-eval cb_strategy from the local cache -> " in proc.stdout
    assert str(tmp_path / "ds") in proc.stdout  # the group's member, in the datasets cache
    assert "creditbench: fetch: missing lm-eval cb_sciq: not in the local cache" in proc.stderr
    assert "allenai/sciq" in proc.stderr and not out.exists()


def test_nothing_on_the_hub_writes_an_empty_manifest(tmp_path, hub_cache):
    out = tmp_path / "fetched.json"
    assert main(["fetch", "-c", str(SMOKE), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["items"] == []


# ---------------------------------------------------------------------- the DAG
def plan(text: str) -> list[dict]:
    """The jobs of ``snakemake -n -p``: rule, input files and shell command."""
    jobs = []
    for line in text.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line.strip()):
            jobs.append({"rule": m.group(1), "input": [], "shell": None})
        elif jobs and line.strip().startswith("input: "):
            jobs[-1]["input"] = line.strip()[len("input: ") :].split(", ")
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line[len("Shell command: ") :]
    return jobs


HUB_RULES = ("data", "warmstart", "train", "evaluate", "evaluate_base")
HUB_RULES += ("diagnostics_truth", "diagnostics_run")


def test_a_hub_model_is_fetched_once_before_the_jobs_that_run_offline(tmp_path):
    config = write_config(tmp_path, model={"path": "someorg/some-model"})
    proc = snakemake("-n", "-p", "--configfile", str(config), cwd=tmp_path)
    jobs = plan(proc.stdout + proc.stderr)
    fetch = [j for j in jobs if j["rule"] == "fetch"]
    assert len(fetch) == 1, proc.stdout[-3000:]
    assert fetch[0]["shell"] == (
        "creditbench fetch -c results/smoke/config.json --out results/smoke/fetched.json"
        " > results/smoke/logs/fetch.log 2>&1"
    )
    manifest = "results/smoke/fetched.json"
    assert len([j for j in jobs if j["rule"] == "train"]) == 4
    for job in jobs:
        if job["rule"] in HUB_RULES:
            assert manifest in job["input"], job
            assert job["shell"].startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "), job
        else:
            assert manifest not in job["input"], job
            assert "HF_HUB_OFFLINE" not in (job["shell"] or ""), job
    assert {j["rule"] for j in jobs} >= set(HUB_RULES)


def test_an_experiment_with_nothing_on_the_hub_has_no_fetch_job(tmp_path):
    proc = snakemake("-n", "-p", "--configfile", str(SMOKE), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "rule train:" in out
    assert "fetch" not in {j["rule"] for j in plan(out)}
    assert "fetched.json" not in out and "HF_HUB_OFFLINE" not in out
