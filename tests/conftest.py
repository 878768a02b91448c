"""Shared fixtures: a small experiment with data and a warm-started tiny model, built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from creditbench.config import ExperimentConfig, experiment_from_dict
from creditbench.tasks import make_task
from creditbench.warmstart import warm_start

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A small testbed (chains mod 10, lengths 2-3) and model, warm-started in about a minute.
SMALL = {
    "experiment": "small",
    "seeds": [0],
    "task": {
        "min_len": 2,
        "max_len": 3,
        "modulus": 10,
        "n_train": 3000,
        "n_test": 200,
        "long_min_len": 5,
        "long_max_len": 5,
    },
    "model": {
        "tiny": {"hidden_size": 96, "num_layers": 3, "num_heads": 4, "intermediate_size": 288}
    },
    # ~45% greedy / ~40% sampled accuracy, most 8-sample groups mixed
    "warm_start": {
        "steps": 600,
        "skill_steps": 100,
        "batch_size": 32,
        "lr": 3e-3,
        "eval_problems": 100,
    },
    "sampling": {"max_new_tokens": 48},
    "train": {
        "steps": 4,
        "prompts_per_step": 4,
        "group_size": 4,
        "checkpoint_every": 2,
        "eval_every": 0,
        "eval_problems": 50,
    },
    "eval": {"problems": 100, "backend": "creditbench"},
    "runs": {"grpo": {"method": "grpo"}},
}


def small_config(**overrides) -> ExperimentConfig:
    return experiment_from_dict(SMALL, overrides=overrides)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module's tests: tiny models decode token by token, where
    threads only add overhead (and stall on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_experiment(tmp_path_factory) -> dict:
    """``{"cfg", "data", "base", "record"}``: generated data and a warm-started base model."""
    root = tmp_path_factory.mktemp("small")
    cfg = small_config()
    data = root / "data"
    make_task(cfg.task).write_data(data)
    record = warm_start(cfg, data, root / "base")
    return {"cfg": cfg, "data": data, "base": root / "base", "record": record, "root": root}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def random_tiny_model(tok):
    """An untrained tiny model, seeded, its matrices redrawn with a large std so greedy
    outputs vary (at the default init, tied embeddings make greedy decoding repeat the last
    token); the pad/bos/unk embedding rows are zeroed so greedy decoding never picks them."""
    from creditbench.config import TinyModelConfig
    from creditbench.model import build_tiny_model

    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = build_tiny_model(cfg, tok).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        unused = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
        model.get_input_embeddings().weight[unused] = 0.0
    return model
