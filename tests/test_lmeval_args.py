"""The model_args lm-eval gets: the HF model's device and context, the vLLM engine's
memory share, context, parallelism, seed and batch size, from the config's ``eval``
section through ``creditbench evaluate`` (lm-eval itself is not run)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from creditbench import cli
from creditbench.config import ConfigError, experiment_from_dict
from creditbench.lmeval import lmeval_model_args

ROOT = Path(__file__).resolve().parents[1]


def test_vllm_model_args_carry_the_engine_settings():
    args = lmeval_model_args(
        "/m",
        "vllm",
        dtype="bfloat16",
        device="cuda",
        max_length=2048,
        seed=3,
        gpu_memory_utilization=0.75,
        max_model_len=3072,
        tensor_parallel_size=2,
        data_parallel_size=1,
    )
    assert args == {
        "pretrained": "/m",
        "dtype": "bfloat16",
        "batch_size": "auto",  # the default on vLLM: the engine schedules the requests
        "gpu_memory_utilization": 0.75,
        "max_model_len": 3072,
        "tensor_parallel_size": 2,
        "data_parallel_size": 1,
        "seed": 3,
    }  # no device (vLLM takes CUDA_VISIBLE_DEVICES' GPUs), no HF max_length
    assert "max_model_len" not in lmeval_model_args("/m", "vllm")  # null: the model's own
    assert lmeval_model_args("/m", "vllm", batch_size=32)["batch_size"] == 32


def test_hf_model_args_keep_the_device_context_and_batch():
    args = lmeval_model_args("/m", "hf", device="cuda", max_length=512)
    assert args == {
        "pretrained": "/m",
        "dtype": "float32",
        "batch_size": 64,
        "device": "cuda",
        "max_length": 512,
    }
    assert lmeval_model_args("/m", "hf", batch_size="auto")["batch_size"] == "auto"
    assert "gpu_memory_utilization" not in args


def _smoke(**eval_section):
    cfg = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    cfg["eval"] = {**cfg["eval"], **eval_section}
    return experiment_from_dict(cfg, source="test")


def test_the_config_rejects_a_batch_size_other_than_a_number_or_auto():
    assert _smoke(batch_size="auto").eval.batch_size == "auto"
    assert _smoke(batch_size=None).eval.batch_size is None
    with pytest.raises(ConfigError, match="batch_size"):
        _smoke(batch_size="max")
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        _smoke(vllm_gpu_memory_utilization=1.5)


class Called(Exception):
    pass


def test_creditbench_evaluate_hands_the_vllm_settings_to_lm_eval(tmp_path, monkeypatch):
    import lm_eval

    cfg = _smoke(
        lm_eval_model="vllm",
        batch_size=None,
        vllm_gpu_memory_utilization=0.6,
        vllm_max_model_len=1024,
        vllm_tensor_parallel_size=2,
        vllm_data_parallel_size=1,
        seed=7,
    )
    from creditbench.tasks import make_task

    make_task(cfg.task).write_data(tmp_path / "data")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    seen = {}

    def fake_simple_evaluate(**kwargs):
        seen.update(kwargs)
        raise Called

    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_simple_evaluate)
    args = argparse.Namespace(
        model=[str(tmp_path / "model")],
        data=str(tmp_path / "data"),
        suite=["chains_test"],
        out=None,
        out_dir=[str(tmp_path / "eval")],
        data_file=None,
        results=str(tmp_path / "results"),
    )
    with pytest.raises(Called):
        cli.cmd_evaluate(cfg, args)
    assert seen["model"] == "vllm"
    assert seen["model_args"] == {
        "pretrained": str(tmp_path / "model"),
        "dtype": cfg.model.dtype,
        "batch_size": "auto",
        "gpu_memory_utilization": 0.6,
        "max_model_len": 1024,
        "tensor_parallel_size": 2,
        "data_parallel_size": 1,
        "seed": 7,
    }
    assert seen["batch_size"] is None  # given once, in model_args
