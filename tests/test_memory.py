"""Memory on real GPUs: gradient checkpointing, token-bounded generation batches, float32
master weights for half-precision full fine-tuning, and LoRA saving without a merged copy."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import random_tiny_model
from safetensors.torch import load_file

from creditbench.config import ConfigError, SamplingConfig, experiment_from_dict
from creditbench.ledger import Ledger
from creditbench.model import build_char_tokenizer, build_tiny_model, save_policy
from creditbench.rollouts import Batch
from creditbench.sampling import Sampler, batch_spans
from creditbench.tasks import make_task
from creditbench.train import Trainer, _check_precision
from creditbench.utils import seed_everything

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
EXPERIMENT = {
    "experiment": "memory",
    "seeds": [0],
    "task": {"min_len": 2, "max_len": 3, "modulus": 10, "n_train": 40, "n_test": 8},
    "model": {"tiny": TINY},
    "warm_start": {"steps": 0, "skill_steps": 0},
    "sampling": {"max_new_tokens": 12, "batch_size": 8},
    "train": {
        "steps": 1,
        "prompts_per_step": 2,
        "group_size": 2,
        "eval_every": 0,
        "eval_problems": 4,
        "lr": 1e-3,
    },
    "runs": {"grpo": {"method": "grpo"}},
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """Task data and an untrained tiny model saved as a base (no warm start)."""
    root = tmp_path_factory.mktemp("memory")
    cfg = experiment_from_dict(EXPERIMENT)
    task = make_task(cfg.task)
    task.write_data(root / "data")
    tok = build_char_tokenizer(task.alphabet)
    build_tiny_model(cfg.model.tiny, tok).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root


def _trainer(root, out, model=None, accelerator=None, **train):
    cfg = experiment_from_dict(EXPERIMENT, overrides={"model": model or {}, "train": train})
    return Trainer(cfg.run("grpo"), 0, root / "base", root / "data", out, accelerator=accelerator)


def _credited_batch(tr: Trainer) -> tuple[Batch, list]:
    """One step's rollouts with fixed non-zero advantages (an untrained model earns no
    reward, so GRPO's own advantages would be zero)."""
    seed_everything(0)
    tr.model_wrapped.train()
    with tr.sampler.rollouts(0):
        groups = tr.ctx.rollout(tr.train_problems[:2], 2, purpose="rollout")
    trajs = [t for g in groups for t in g]
    for i, t in enumerate(trajs):
        t.set_credit(1.0 if i % 2 else -0.5)
    return Batch.from_trajectories(trajs, tr.tokenizer.pad_token_id), trajs


def _count_checkpointed(model) -> list[int]:
    """Wrap every layer's checkpoint function: the returned list counts its calls."""
    calls = [0]
    for m in model.modules():
        fn = getattr(m, "_gradient_checkpointing_func", None)
        if getattr(m, "gradient_checkpointing", False) and fn is not None:

            def counted(*a, _fn=fn, **k):
                calls[0] += 1
                return _fn(*a, **k)

            m._gradient_checkpointing_func = counted
    return calls


def _decode_lengths(model) -> list[int]:
    """The sequence length of every forward of the transformers model (1: a cached decode)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lengths: list[int] = []

    def hook(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            lengths.append(ids.shape[1])

    base.register_forward_pre_hook(hook, with_kwargs=True)
    return lengths


# ------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_step(tiny_base, tmp_path, lora):
    results = {}
    for gc in (False, True):
        tr = _trainer(
            tiny_base, tmp_path / f"gc{gc}", model={"lora": lora}, gradient_checkpointing=gc
        )
        if lora is not None:  # lora_B starts at zero: give the adapters a non-zero delta
            with torch.no_grad():
                gen = torch.Generator().manual_seed(1)
                for n, p in tr.model.named_parameters():
                    if "lora_B" in n:
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        calls = _count_checkpointed(tr.model)
        lengths = _decode_lengths(tr.model)
        batch, trajs = _credited_batch(tr)
        stats = tr.update(batch)
        grads = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}
        results[gc] = (stats, grads, [t.completion_ids for t in trajs], calls[0], lengths)
        if gc:
            base = tr.model.get_base_model() if lora else tr.model
            on = getattr(base, "is_activation_checkpointing", None)
            on = base.is_gradient_checkpointing if on is None else on
            assert on and base.config.use_cache is False
    (s0, g0, ids0, calls0, _), (s1, g1, ids1, calls1, lengths1) = results[False], results[True]
    assert calls0 == 0 and calls1 > 0  # the layers were recomputed in the backward
    assert 1 in lengths1  # generation decoded token by token from its KV cache
    assert ids0 == ids1  # the same tokens for the same seed
    assert s0["loss"] == pytest.approx(s1["loss"], rel=1e-6, abs=1e-7)
    assert g0.keys() == g1.keys() and g0
    assert any(g.abs().sum() > 0 for g in g0.values())
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)


# ------------------------------------------------------------ token-bounded batches
def test_batch_spans_cut_greedily_in_order():
    # rows x (longest context + largest budget) <= 40
    lens, budgets = [5, 5, 5, 10, 2, 30, 1, 1], [5, 5, 5, 10, 8, 20, 4, 4]
    spans = batch_spans(lens, budgets, batch_size=8, max_batch_tokens=40)
    # [0,1,2]: 3 x 10 = 30; + row 3 would be 4 x 20 = 80. [3]: 20; + row 4: 2 x 20 = 40.
    # [5] alone is 50 > 40 (a row is always a batch). [6,7]: 2 x 5 = 10
    assert spans == [(0, 3), (3, 5), (5, 6), (6, 8)]
    assert batch_spans(lens, budgets, batch_size=3) == [(0, 3), (3, 6), (6, 8)]
    assert batch_spans(lens, budgets, batch_size=2, max_batch_tokens=1000) == [
        (0, 2),
        (2, 4),
        (4, 6),
        (6, 8),
    ]
    assert batch_spans([], [], batch_size=4, max_batch_tokens=10) == []
    for i, j in spans:  # the bound holds wherever a batch has more than one row
        if j - i > 1:
            assert (j - i) * (max(lens[i:j]) + max(budgets[i:j])) <= 40


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer("0123456789+-*=\nA:?#!")


@pytest.fixture(scope="module")
def model(tok):
    return random_tiny_model(tok)


@pytest.mark.parametrize("n", [1, 2])
def test_token_budget_keeps_greedy_outputs_and_the_ledger(model, tok, n):
    prompts = ["7+5*3-4\n", "1+2\n", "12*3-4+5*6-7\n", "9-8*7\n", "3\n", "4*4\n"]
    budgets = [10, 6, 12, 3, 8, 5]
    runs = {}
    for limit in (None, 40):
        cfg = SamplingConfig(max_new_tokens=12, batch_size=16, max_batch_tokens=limit)
        sampler = Sampler(model, tok, cfg, Ledger())
        calls: list[int] = []
        batch = sampler._generate_batch

        def spy(contexts, *a, _batch=batch, _calls=calls, **k):
            _calls.append(len(contexts))
            return _batch(contexts, *a, **k)

        sampler._generate_batch = spy
        ctxs = [sampler.encode_prompt(p) for p in prompts]
        gens = sampler.generate(
            ctxs, purpose="test", temperature=0, max_new_tokens=budgets, n=n, logprobs=True
        )
        runs[limit] = (gens, sampler.ledger, calls)
    (g0, l0, c0), (g1, l1, c1) = runs[None], runs[40]
    assert c0 == [len(prompts) * n] and len(c1) > 2  # the budget split the rows
    assert [(g.context_ids, g.ids, g.stop, g.text) for g in g0] == [
        (g.context_ids, g.ids, g.stop, g.text) for g in g1
    ]
    for a, b in zip(g0, g1, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert l0.generated == l1.generated
    if n == 1:  # no context repeats: every prefill is the same wherever the cut falls
        assert l0.forwarded == l1.forwarded


def test_bad_memory_settings_name_their_key():
    with pytest.raises(ConfigError, match=r"sampling\.max_batch_tokens"):
        experiment_from_dict(EXPERIMENT, overrides={"sampling": {"max_batch_tokens": 0}})
    with pytest.raises(ConfigError, match=r"train\.gradient_checkpointing"):
        experiment_from_dict(EXPERIMENT, overrides={"train": {"gradient_checkpointing": "x"}})


# ------------------------------------------------------------ float32 master weights
@pytest.fixture
def bf16_accelerator():
    """An ``Accelerator(mixed_precision="bf16")`` on CPU; accelerate's process-wide state
    is reset before and after, so other tests build theirs afresh."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        yield Accelerator(mixed_precision="bf16", cpu=True)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_bf16_full_fine_tune_steps_float32_master_weights(tiny_base, tmp_path, bf16_accelerator):
    tr = _trainer(
        tiny_base,
        tmp_path / "bf16",
        model={"dtype": "bfloat16"},
        accelerator=bf16_accelerator,
        lr=1e-6,
        weight_decay=0.0,
    )
    assert tr.master_weights
    params = [p for group in tr.optimizer.param_groups for p in group["params"]]
    assert params and all(p.dtype == torch.float32 for p in params)
    batch, _ = _credited_batch(tr)
    # the update's forwards run under autocast to bf16: a linear layer computes in bf16
    seen = []
    proj = tr.model.model.layers[0].mlp.down_proj
    handle = proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.update(batch)
    handle.remove()
    assert torch.bfloat16 in seen
    moved_fp32, moved_bf16, total = 0, 0, 0
    for n, p in tr.model.named_parameters():
        if p.grad is None or not p.grad.abs().sum() or p.dim() < 2:
            continue
        total += p.numel()
        moved_fp32 += int((p.detach() != before[n]).sum())
        # the same AdamW step on bf16 weights: nearly every update rounds away
        q = before[n].to(torch.bfloat16).clone().requires_grad_(True)
        q.grad = p.grad.to(torch.bfloat16)
        torch.optim.AdamW([q], lr=1e-6, betas=tr.run.train.adam_betas, weight_decay=0.0).step()
        moved_bf16 += int((q.detach() != before[n].to(torch.bfloat16)).sum())
    assert total > 0
    assert moved_fp32 / total > 0.9, (moved_fp32, total)
    assert moved_bf16 / total < 0.05, (moved_bf16, total)
    # the final model is saved in the configured dtype
    save_policy(tr.model, tr.tokenizer, tmp_path / "saved", dtype=torch.bfloat16)
    weights = load_file(tmp_path / "saved" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_a_precision_that_cannot_keep_master_weights_is_a_config_error():
    run = experiment_from_dict(EXPERIMENT, overrides={"model": {"dtype": "bfloat16"}}).run("grpo")

    def acc(mixed, device="cuda", kind=DistributedType.NO):
        return SimpleNamespace(
            mixed_precision=mixed, device=torch.device(device), distributed_type=kind
        )

    with pytest.raises(ConfigError, match=r"model\.dtype.*--mixed_precision bf16"):
        _check_precision(run, acc("no"))
    with pytest.raises(ConfigError, match=r"model\.dtype.*set model\.dtype: float16"):
        _check_precision(run, acc("fp16"))
    with pytest.raises(ConfigError, match="DeepSpeed"):
        _check_precision(run, acc("no", kind=DistributedType.DEEPSPEED))
    assert _check_precision(run, acc("bf16")) is True
    assert _check_precision(run, acc("bf16", kind=DistributedType.DEEPSPEED)) is False
    assert _check_precision(run, acc("no", device="cpu")) is False  # CPU: float32 as before
    lora = experiment_from_dict(
        EXPERIMENT, overrides={"model": {"dtype": "bfloat16", "lora": {"r": 4}}}
    ).run("grpo")
    assert _check_precision(lora, acc("no")) is False  # adapters are float32 already


# ------------------------------------------------------------ LoRA saving
def test_lora_save_streams_the_merge_and_leaves_the_trainer_untouched(tok, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    base = random_tiny_model(tok)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    before = {n: t.detach().clone() for n, t in peft_model.state_dict().items()}

    save_policy(peft_model, tok, tmp_path / "merged")

    after = peft_model.state_dict()
    assert after.keys() == before.keys()
    for n, t in before.items():
        assert torch.equal(after[n], t) and after[n].dtype == t.dtype, n
    saved = load_file(tmp_path / "merged" / "model.safetensors")
    assert not [k for k in saved if "lora" in k or "base_layer" in k]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(loaded) is LlamaForCausalLM
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    ids = torch.tensor([tok("7+5*3-4\n1+2=", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want = merged(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
        lora_out = peft_model.eval()(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, lora_out, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapters did change the model
