"""``creditbench plan``: memory and GPU-hour estimates against values computed by hand for a
small made-up architecture, the refusal of a config that does not fit, and a plan for
every paper config."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from creditbench import cli
from creditbench.config import experiment_from_dict
from creditbench.plan import (
    Architecture,
    Assumptions,
    activation_bytes,
    architecture,
    generation_rows,
    kv_cache_bytes,
    lora_params,
    plan,
)

ROOT = Path(__file__).resolve().parents[1]
# hidden 64, 2 layers, 4 heads (head_dim 16), 2 kv heads, intermediate 128, vocab 100
ARCH_JSON = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "max_position_embeddings": 256,
}
# per block: q, o 64x64 each, k, v 64x32 each (12,288), MLP 3 x 64 x 128 (24,576), two
# norms (128): 36,992; two blocks 73,984; embeddings and head 2 x 100 x 64 (12,800); the
# final norm 64
N_PARAMS = 86_848
PROMPT, NEW = 10, 20  # row: 30 tokens


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(ARCH_JSON))
    return d


def _cfg(model_dir: Path, runs=None, dtype="float32", lora=None, launch=None, **train):
    return experiment_from_dict(
        {
            "seeds": [0, 1],
            "model": {"path": str(model_dir), "dtype": dtype, "lora": lora},
            "sampling": {"max_new_tokens": NEW, "batch_size": 8},
            "train": {"steps": 10, "prompts_per_step": 4, "group_size": 2, **train},
            "warm_start": {"steps": 0, "skill_steps": 0},
            "launch": launch or {"num_processes": 1},
            "runs": runs or {"grpo": {"method": "grpo"}},
        }
    )


def _train_row(cfg, name="grpo"):
    rows = plan(cfg, Assumptions(prompt_tokens=PROMPT))
    return next(r for r in rows if r.job == f"train {name} seed0")


def test_architecture_from_a_local_config_json(model_dir):
    arch = architecture(_cfg(model_dir))
    assert (arch.hidden_size, arch.num_layers, arch.num_kv_heads, arch.dim) == (64, 2, 2, 16)
    assert arch.params == N_PARAMS


def test_weights_gradients_and_adam_state_by_hand(model_dir):
    r = _train_row(_cfg(model_dir, micro_batch_size=1))
    assert r.weights == 4 * N_PARAMS  # float32
    assert r.grads == 4 * N_PARAMS
    assert r.optim == 2 * 4 * N_PARAMS  # Adam: two float32 moments, no master copy
    half = _train_row(_cfg(model_dir, dtype="bfloat16", micro_batch_size=1))
    assert half.weights == 2 * N_PARAMS and half.grads == 2 * N_PARAMS
    assert half.optim == (2 * 4 + 4) * N_PARAMS  # moments and the float32 master weights


def test_activations_by_hand_scale_with_the_micro_batch_and_shrink_with_checkpointing():
    arch = Architecture.from_config(ARCH_JSON)
    # per token and block (8 x 64 + 4 x 2 x 16 + 4 x 128) x 4 bytes = 4,608, two blocks;
    # 30 tokens; logits of 21 positions x 100 x (4 + 4) bytes
    one = activation_bytes(arch, 1, PROMPT + NEW, NEW, 4, ckpt=False)
    assert one == 30 * 2 * 4608 + 21 * 100 * 8
    assert activation_bytes(arch, 3, PROMPT + NEW, NEW, 4, ckpt=False) == 3 * one
    ckpt = activation_bytes(arch, 1, PROMPT + NEW, NEW, 4, ckpt=True)
    assert ckpt == 30 * (2 * 64 * 4 + 4608) + 21 * 100 * 8
    assert ckpt < one
    assert activation_bytes(arch, 3, PROMPT + NEW, NEW, 4, ckpt=True) == 3 * ckpt


def test_train_row_uses_the_micro_batch_and_reports_both_activation_figures(model_dir):
    r1 = _train_row(_cfg(model_dir, micro_batch_size=1))
    r2 = _train_row(_cfg(model_dir, micro_batch_size=2))
    assert r2.act_no_ckpt == 2 * r1.act_no_ckpt and r2.act_ckpt == 2 * r1.act_ckpt
    assert r1.act_ckpt < r1.act_no_ckpt
    assert r1.act == r1.act_no_ckpt  # gradient checkpointing off by default


def test_zero3_divides_weights_gradients_and_optimiser_state_by_the_processes(model_dir):
    ddp = _train_row(_cfg(model_dir, micro_batch_size=1, launch={"num_processes": 4}))
    z2 = _train_row(
        _cfg(
            model_dir,
            micro_batch_size=1,
            launch={"num_processes": 4, "accelerate_config": "deepspeed_zero2"},
        )
    )
    z3 = _train_row(
        _cfg(
            model_dir,
            micro_batch_size=1,
            launch={"num_processes": 4, "accelerate_config": "deepspeed_zero3"},
        )
    )
    assert ddp.weights == 4 * N_PARAMS and ddp.optim == 8 * N_PARAMS
    assert z2.weights == ddp.weights and z2.grads == ddp.grads / 4 and z2.optim == ddp.optim / 4
    assert (z3.weights, z3.grads, z3.optim) == (ddp.weights / 4, ddp.grads / 4, ddp.optim / 4)
    assert z3.gen_extra == 4 * N_PARAMS * 3 / 4  # generation gathers the shards


def test_lora_trains_only_the_adapters(model_dir):
    lora = {"r": 4, "alpha": 8, "target_modules": "all-linear"}
    r = _train_row(_cfg(model_dir, lora=lora, micro_batch_size=1))
    # per block r x (in + out): q 128, k 96, v 96, o 128, gate 192, up 192, down 192
    adapters = 2 * 4 * 1024
    assert lora_params(Architecture.from_config(ARCH_JSON), 4, "all-linear") == adapters
    assert r.grads == 4 * adapters and r.optim == 8 * adapters
    assert r.weights == 4 * N_PARAMS + 4 * adapters


def test_ppo_critic_is_a_second_model_with_its_own_optimiser(model_dir):
    runs = {"grpo": {"method": "grpo"}, "ppo": {"method": "ppo", "critic": "separate"}}
    cfg = _cfg(model_dir, runs=runs, micro_batch_size=1)
    grpo, ppo = _train_row(cfg, "grpo"), _train_row(cfg, "ppo")
    assert ppo.grads == 2 * grpo.grads and ppo.optim == 2 * grpo.optim
    assert ppo.gpu_hours > grpo.gpu_hours


def test_kv_cache_by_hand_and_max_batch_tokens_bounds_the_rows():
    arch = Architecture.from_config(ARCH_JSON)
    assert kv_cache_bytes(arch, 8, 30, 4) == 8 * 30 * 2 * 2 * 2 * 16 * 4
    assert generation_rows(SimpleNamespace(batch_size=8), 30) == 8
    assert generation_rows(SimpleNamespace(batch_size=8, max_batch_tokens=60), 30) == 2
    assert generation_rows(SimpleNamespace(batch_size=8, max_batch_tokens=None), 30) == 8


def test_vineppo_generates_more_than_grpo(model_dir):
    runs = {"grpo": {"method": "grpo"}, "vineppo": {"method": "vineppo", "mc_rollouts": 9}}
    cfg = _cfg(model_dir, runs=runs, micro_batch_size=1)
    assert _train_row(cfg, "vineppo").gpu_hours > 5 * _train_row(cfg, "grpo").gpu_hours


def _write(tmp_path: Path, cfg_dict: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    return path


def test_plan_refuses_a_config_that_exceeds_the_gpu(tmp_path, model_dir, capsys):
    path = _write(
        tmp_path,
        {
            "model": {"path": str(model_dir)},
            "sampling": {"max_new_tokens": 2000, "batch_size": 8},
            "train": {"micro_batch_size": 64},
            "runs": {"grpo": {"method": "grpo"}},
        },
    )
    status = cli.main(["plan", "--configfile", str(path), "--gpu-memory-gib", "2.5"])
    out, err = capsys.readouterr()
    assert status == 3
    assert "train grpo seed0: needs about" in err
    assert "the biggest term is activations" in err
    assert "gradient_checkpointing" in err and "micro_batch_size" in err
    assert "train grpo seed0" in out  # the table is printed all the same
    assert cli.main(["plan", "--configfile", str(path), "--gpu-memory-gib", "1000"]) == 0


def test_plan_names_max_batch_tokens_when_the_kv_cache_is_the_biggest_term(
    tmp_path, model_dir, capsys
):
    path = _write(
        tmp_path,
        {
            "model": {"path": str(model_dir)},
            "sampling": {"max_new_tokens": 4000, "batch_size": 4096},
            "train": {"micro_batch_size": 1},
            "runs": {"grpo": {"method": "grpo"}},
        },
    )
    assert cli.main(["plan", "--configfile", str(path), "--gpu-memory-gib", "4"]) == 3
    err = capsys.readouterr().err
    assert "the biggest term is KV cache" in err and "sampling.max_batch_tokens" in err


def _expected_jobs(cfg) -> int:
    suites = len(cli.suites_of(cfg))
    seeds = len(cfg.seeds)
    per_run = (1 if cfg.eval.group_seeds else seeds) * (1 if cfg.eval.group_suites else suites)
    return 1 + len(cfg.runs) * seeds + len(cfg.runs) * per_run


@pytest.mark.parametrize(
    "path", sorted((ROOT / "paper_configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_plan_runs_on_every_paper_config(path, capsys):
    from creditbench.config import load_experiment

    status = cli.main(["plan", "--configfile", str(path)])
    out, err = capsys.readouterr()
    # every paper config's model is in the built-in table (no "architecture unknown"), and
    # every one fits an 80 GiB GPU but IBPO's Qwen3-32B, which needs the 141 GiB its
    # config names
    assert status == (3 if path.stem == "ibpo" else 0), err
    cfg = load_experiment(path)
    rows = [ln for ln in out.splitlines() if ln.startswith(("warmstart", "train ", "evaluate "))]
    assert len(rows) == _expected_jobs(cfg)
    assert sum(r.startswith("train ") for r in rows) == len(cfg.runs) * len(cfg.seeds)
    assert "GPU-hours" in out
    if status == 3:
        assert "the biggest term is" in err
        assert cli.main(["plan", "--configfile", str(path), "--gpu-memory-gib", "141"]) == 0


def test_olmo3_7b_in_the_table_is_transformers_olmo3_at_its_published_size():
    """The table's OLMo-3-7B against transformers' own Olmo3 model built (on the meta
    device, no weights) from the same values: the parameter count agrees to 0.1% (the
    Q/K norms are all the formula leaves out)."""
    from transformers import AutoModelForCausalLM, Olmo3Config

    from creditbench.plan import ARCHITECTURES

    arch = ARCHITECTURES["olmo-3-7b"]
    cfg = Olmo3Config(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_position_embeddings,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert abs(real - arch.params) / real < 1e-3, (real, arch.params)
