"""VinePPO: MC values, step advantages, token credit, whitening; prefix sharing; a short run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import random_tiny_model, small_config

from creditbench.config import ChainsTaskConfig, SamplingConfig
from creditbench.ledger import Ledger
from creditbench.methods import MethodContext, load_method
from creditbench.model import build_char_tokenizer
from creditbench.rollouts import Group, Trajectory, thought_token_ends
from creditbench.sampling import Generation, Sampler
from creditbench.tasks import Problem
from creditbench.tasks.chains import ChainsTask
from creditbench.train import Trainer

vine = load_method("vineppo")


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models decode token by token: threads only add overhead (and stall on a busy CPU).

    Per test, so the session's warm start (set up before it) keeps the default threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the credit rule
def test_mc_value_is_the_mean_reward_of_the_continuations():
    assert vine.mc_value([1.0, 0.0, 0.0, 1.0]) == 0.5
    assert vine.mc_value([0.0, 0.0, 1.0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least one continuation"):
        vine.mc_value([])


def test_a_continuation_past_its_budget_counts_as_cut_off():
    assert vine.budget_stop("eos", 11, budget=10) == "length"  # finished too late
    assert vine.budget_stop("eos", 10, budget=10) == "eos"
    assert vine.budget_stop("pattern", 3, budget=10) == "pattern"
    assert vine.budget_stop("length", 10, budget=48) == "length"


def test_step_advantages_of_a_three_step_trajectory():
    # V(s_0) = 0.5, V(s_1) = 0.25, V(s_2) = 0.75, V(s_3) = 0 (terminal), R = 1
    adv = vine.step_advantages([0.5, 0.25, 0.75], reward=1.0)
    assert adv == pytest.approx([0.25 - 0.5, 0.75 - 0.25, 1.0 + 0.0 - 0.75])
    # a failed trajectory: the last step is charged the whole value it gave up
    assert vine.step_advantages([0.5, 0.25, 0.75], reward=0.0) == pytest.approx([-0.25, 0.5, -0.75])
    assert sum(adv) == pytest.approx(1.0 - 0.5)  # telescopes to R - V(s_0)


def test_terminal_state_has_value_zero():
    # one step: A_0 = R + V(s_1) - V(s_0) with V(s_1) = V(terminal) = 0
    assert vine.step_advantages([0.4], reward=1.0) == pytest.approx([0.6])
    assert vine.step_advantages([0.4], reward=0.0) == pytest.approx([-0.4])


def test_states_past_the_value_cap_take_the_trajectory_return():
    values = vine.state_values([0.5, 0.25], n_steps=4, reward=1.0)
    assert values == [0.5, 0.25, 1.0, 1.0]
    assert vine.step_advantages(values, 1.0) == pytest.approx([-0.25, 0.75, 0.0, 0.0])
    with pytest.raises(ValueError, match="3 estimated values for a 2-step"):
        vine.state_values([0.1, 0.2, 0.3], n_steps=2, reward=0.0)


def test_every_token_of_a_step_carries_its_step_advantage():
    got = vine.token_advantages([-0.25, 0.5, 0.25], step_ends=[2, 5, 6], n_tokens=6)
    assert got == [-0.25, -0.25, 0.5, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="one per step"):
        vine.token_advantages([0.1, 0.2], step_ends=[2, 5], n_tokens=6)


def test_whitening_uses_mean_and_unbiased_std_over_all_batch_tokens():
    # tokens 1, 2, 3: mean 2, unbiased variance ((1)^2 + 0 + (1)^2) / 2 = 1
    got = vine.whiten([[1.0, 2.0], [3.0]], eps=0.0)
    assert got == [pytest.approx([-1.0, 0.0]), pytest.approx([1.0])]
    # population variance 2/3; eps is added to the variance
    pop = vine.whiten([[1.0, 2.0], [3.0]], std="population", eps=1e-2)
    assert pop[0][0] == pytest.approx(-1.0 / (2 / 3 + 1e-2) ** 0.5)


def test_whitening_statistics_skip_masked_tokens():
    # the masked 100 enters neither mean nor variance, but is shifted and scaled alike
    got = vine.whiten([[1.0, 100.0], [3.0]], masks=[[1.0, 0.0], None], eps=0.0)
    s = 2.0**0.5  # tokens 1 and 3: mean 2, unbiased variance 2
    assert got == [pytest.approx([-1 / s, 98 / s]), pytest.approx([1 / s])]
    assert vine.whiten([[0.5, 0.5], [0.5]]) == [[0.0, 0.0], [0.0]]  # no spread: all zero


# ------------------------------------------------------------- the method, scripted
TASK = ChainsTask(ChainsTaskConfig())
PROBLEM = Problem(
    "a",
    "7+5*3\n",
    "36",
    {"ops": ["+", "*"], "operands": [5, 3], "values": [7, 12, 36], "length": 2},
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ChainsTask.alphabet)


class ScriptedSampler:
    """Continues the contexts it is given with scripted texts, and records the calls."""

    def __init__(self, tok, max_new_tokens: int, script):
        self.tok, self.script, self.calls = tok, script, []
        self.cfg = SamplingConfig(max_new_tokens=max_new_tokens)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)

    def generate(self, contexts, *, purpose, n=1, **kw):
        self.calls.append((contexts, purpose, n, kw))
        out = []
        for c in contexts:
            for text, stop in self.script(self.decode(c), n):
                ids = self.encode(text) + ([self.tok.eos_token_id] if stop == "eos" else [])
                out.append(Generation(context_ids=c, ids=ids, text=text, stop=stop))
        return out


def trajectory(tok, sampler, text: str, reward: float) -> Trajectory:
    ids = sampler.encode(text) + [tok.eos_token_id]
    return Trajectory(
        problem=PROBLEM,
        prompt_ids=sampler.encode(PROBLEM.prompt),
        completion_ids=ids,
        text=text,
        reward=reward,
        purpose="rollout",
        thought_ends=thought_token_ends(ids, tok, TASK.segment),
    )


def scripted_method(tok, script, max_new_tokens=40, **params):
    sampler = ScriptedSampler(tok, max_new_tokens, script)
    ctx = MethodContext(None, tok, sampler, TASK, Ledger(), run=None)
    return vine.Method(vine.Params(mc_rollouts=2, **params), ctx), sampler


# continuations by state (context text): one right and one wrong answer from the prompt,
# two right ones after a right first step, two wrong ones after a wrong first step
SCRIPT = {
    "7+5*3\n": [("7+5=12\n12*3=36\nA:36", "eos"), ("7+5=13\n13*3=39\nA:39", "eos")],
    "7+5*3\n7+5=12\n": [("12*3=36\nA:36", "eos"), ("12*3=36\nA:36", "eos")],
    "7+5*3\n7+5=13\n": [("13*3=39\nA:39", "eos"), ("13*3=39\nA:39", "eos")],
    "7+5*3\n7+5=12\n12*3=36\n": [("A:36", "eos"), ("A:36", "length")],  # cut off: 0
    "7+5*3\n7+5=13\n13*3=39\n": [("A:39", "eos"), ("A:39", "eos")],
}


def test_collected_values_are_mc_estimates_with_the_prompt_valued_once(tok):
    method, sampler = scripted_method(tok, lambda ctx, n: SCRIPT[ctx][:n])
    right = trajectory(tok, sampler, "7+5=12\n12*3=36\nA:36", 1.0)
    wrong = trajectory(tok, sampler, "7+5=13\n13*3=39\nA:39", 0.0)
    method.estimate_values([right, wrong])
    (contexts, purpose, n, kw) = sampler.calls[0]
    assert len(sampler.calls) == 1 and purpose == "mc_value" and n == 2
    # s_0 is shared by both completions and sampled once: 1 + 2 + 2 states
    assert sorted(sampler.decode(c) for c in contexts) == sorted(SCRIPT)
    # V(s_0) = 1/2, V(s_1) = 1, V(s_2) = 1/2 (one continuation cut off by the length limit)
    assert right.meta["mc_values"] == [0.5, 1.0, 0.5]
    assert wrong.meta["mc_values"] == [0.5, 0.0, 0.0]
    groups = [Group([right, wrong])]
    trained = method.advantages(groups)
    assert right.meta["step_advantages"] == pytest.approx([0.5, -0.5, 0.5])
    assert wrong.meta["step_advantages"] == pytest.approx([-0.5, 0.0, 0.0])
    # whitened over all 2 x 20 tokens: zero mean, unit (unbiased) variance
    flat = torch.tensor([a for t in trained for a in t.advantages], dtype=torch.float64)
    assert flat.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert flat.std().item() == pytest.approx(1.0, abs=1e-6)
    # step 1 of the right trajectory ("7+5=12\n", 7 tokens) carries one value
    assert len(set(right.advantages[:7])) == 1 and right.advantages[0] > 0


def test_continuations_past_the_remaining_budget_score_zero(tok):
    # the completion has 20 tokens, steps end at 7, 15 and 20; from s_2 (15 tokens in) the
    # continuation "A:36" + EOS has 5 tokens: within a 20-token budget, past a 19-token one
    def script(ctx, n):
        return [("A:36", "eos")] * n

    for max_new, expected in ((20, 1.0), (19, 0.0)):
        method, sampler = scripted_method(
            tok, script, max_new_tokens=max_new, mc_budget="remaining"
        )
        right = trajectory(tok, sampler, "7+5=12\n12*3=36\nA:36", 1.0)
        assert right.thought_ends == [7, 15, 20]
        method.estimate_values([right])
        assert right.meta["mc_values"][2] == expected
        # mc_budget "full": every continuation may use all max_new_tokens
        method_full, _ = scripted_method(tok, script, max_new_tokens=max_new, mc_budget="full")
        method_full.estimate_values([right])
        assert right.meta["mc_values"][2] == 1.0


def test_value_budget_is_the_codes_min_of_cap_and_context_left():
    """VinePPO ``tree_inference/expansion.py::EfficientIIDExpander._compute_max_tokens``:
    ``min(max_tokens, model_context_size - len(tokenize(prefix)))``, the prefix being the
    query and the response so far. DeepSeek MATH config: max_tokens 1024, the value
    expander's model_context_size = max_sequence_length = 2499."""
    # a 200-token query: after 1000 response tokens 1299 are left, more than the cap
    assert vine.value_budget("context", 200, 1000, 1024, cap=1024, context=2499) == 1024
    # after 1500: 2499 - 1700 = 799 < 1024
    assert vine.value_budget("context", 200, 1500, 1024, cap=1024, context=2499) == 799
    # the cap defaults to the rollouts' max_new_tokens; no known context: the cap alone
    assert vine.value_budget("context", 200, 1500, 1024, context=2499) == 799
    assert vine.value_budget("context", 200, 1500, 1024) == 1024
    assert vine.value_budget("context", 200, 2299, 1024, context=2499) == 0  # no room
    # the former default: what the 1024-token completion budget leaves after the prefix
    assert vine.value_budget("remaining", 200, 1000, 1024, context=2499) == 24
    assert vine.value_budget("full", 200, 1000, 1024, context=2499) == 1024


def test_default_budget_gives_a_late_state_the_whole_cap(tok):
    """With ``mc_budget: context`` (default) a continuation from s_2 (15 completion tokens
    in, prompt 6 tokens) may use min(19, context - 21) tokens: the 5-token "A:36" + EOS
    succeeds where ``remaining`` (19 - 15 = 4 tokens) cut it off (the test above)."""

    def script(ctx, n):
        return [("A:36", "eos")] * n

    method, sampler = scripted_method(tok, script, max_new_tokens=19)  # no model: no context
    right = trajectory(tok, sampler, "7+5=12\n12*3=36\nA:36", 1.0)
    assert (len(right.prompt_ids), right.thought_ends) == (6, [7, 15, 20])
    method.estimate_values([right])
    assert right.meta["mc_values"] == [1.0, 1.0, 1.0]
    assert sampler.calls[0][3]["max_new_tokens"] == [19, 19, 19]  # one budget per state
    assert sampler.calls[0][3]["thoughts_done"] == [0, 1, 2]  # the state's steps
    # value_context 26: s_2 gets min(19, 26 - 21) = 5 tokens, enough; 25: 4, cut off
    for context, v2 in ((26, 1.0), (25, 0.0)):
        method, sampler = scripted_method(tok, script, max_new_tokens=19, value_context=context)
        method.estimate_values([right])
        assert right.meta["mc_values"][2] == v2
        budgets = [min(19, context - 6 - n) for n in (0, 7, 15)]
        assert sampler.calls[0][3]["max_new_tokens"] == budgets  # each state's own
    # value_context 21: s_2 has no room left, gets V = 0 and is not sampled at all
    method, sampler = scripted_method(tok, script, max_new_tokens=19, value_context=21)
    method.estimate_values([right])
    assert right.meta["mc_values"] == [1.0, 1.0, 0.0]
    assert [len(c) for c in sampler.calls[0][0]] == [6, 13]
    # a cap below the 5 tokens: every state's continuation is cut off
    method, sampler = scripted_method(tok, script, max_new_tokens=19, value_max_new_tokens=4)
    method.estimate_values([right])
    assert right.meta["mc_values"] == [0.0, 0.0, 0.0]


def test_the_context_defaults_to_the_models_positions(model):
    assert vine.model_context(model) == model.config.max_position_embeddings == 512
    assert vine.model_context(None) is None


def test_vineppo_defaults_are_the_codes_loss():
    """VinePPO ``trainers/ppo_trainer.py::PPOTrainer._compute_actor_loss`` with
    ``trainers/klLoss.jsonnet`` (control_variate = k3, clip 0..10) and refKl0.0001."""
    loss = small_config(runs={"vineppo": {"method": "vineppo"}}).run("vineppo").loss
    assert (loss.clip, loss.epsilon, loss.beta, loss.aggregation) == (True, 0.2, 1e-4, "dapo")
    assert (loss.kl_reduction, loss.kl_clamp, loss.kl_ratio_correction) == (
        "sequence_sum",
        10.0,
        False,
    )
    assert vine.Params().mc_budget == "context" and vine.Params().whiten_across_processes


# two processes, each whitening its shard with statistics pooled over both (gloo on CPU)
SHARDS = {0: ([[1.0, 2.0]], [None]), 1: ([[3.0, 100.0]], [[1.0, 0.0]])}


def _whiten_worker(rank: int, init: str, out: str) -> None:
    import json
    from types import SimpleNamespace

    import torch.distributed as dist

    from creditbench.distributed import Collective

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        coll = Collective(SimpleNamespace(num_processes=2, process_index=rank, device="cpu"))
        adv, masks = SHARDS[rank]
        pooled = vine.whiten(adv, masks, eps=0.0, collective=coll)
        # the method: step advantages from preset values, whitened through ctx.collective
        text = "7+5=12\n12*3=36\nA:36" if rank == 0 else "7+5=13\n13*3=39\nA:39"
        tok = build_char_tokenizer(ChainsTask.alphabet)
        sampler = ScriptedSampler(tok, 40, None)
        t = trajectory(tok, sampler, text, float(rank == 0))
        t.meta["mc_values"] = [0.5, 1.0, 0.5] if rank == 0 else [0.5, 0.0, 0.0]
        ctx = MethodContext(None, tok, sampler, TASK, Ledger(), run=None, collective=coll)
        (trained,) = vine.Method(vine.Params(), ctx).advantages([Group([t])])
        Path(out, f"rank{rank}.json").write_text(
            json.dumps({"pooled": pooled, "method": trained.advantages})
        )
    finally:
        dist.destroy_process_group()


def test_whitening_pools_the_statistics_of_every_process(tmp_path):
    """VinePPO ``trainers/ppo_trainer.py`` whitens with ``masked_whiten(distributed=True,
    unbiased_variance=True)`` (``trainers/utils.py::get_global_statistics_no_move``): the
    tokens of both processes, 1, 2 and 3 (100 is masked), have mean 2 and unbiased
    variance 1, so process 0 gets [-1, 0] and process 1 [1, 98], not its own shard's
    whitening (process 0 alone: mean 1.5, variance 0.5)."""
    import json

    torch.multiprocessing.spawn(
        _whiten_worker, args=(f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["pooled"] == [pytest.approx([-1.0, 0.0])]
    assert r1["pooled"] == [pytest.approx([1.0, 98.0])]
    assert vine.whiten(*SHARDS[0], eps=0.0) == [pytest.approx([-(0.5**0.5), 0.5**0.5])]
    # the method, on one trajectory per process, equals one process whitening both
    tok = build_char_tokenizer(ChainsTask.alphabet)
    sampler = ScriptedSampler(tok, 40, None)
    right = trajectory(tok, sampler, "7+5=12\n12*3=36\nA:36", 1.0)
    wrong = trajectory(tok, sampler, "7+5=13\n13*3=39\nA:39", 0.0)
    right.meta["mc_values"], wrong.meta["mc_values"] = [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]
    ctx = MethodContext(None, tok, sampler, TASK, Ledger(), run=None)
    one = vine.Method(vine.Params(), ctx).advantages([Group([right, wrong])])
    assert r0["method"] == pytest.approx(one[0].advantages)
    assert r1["method"] == pytest.approx(one[1].advantages)
    # step advantages [0.5, -0.5, 0.5] and [-0.5, 0, 0] over steps of 7, 8, 5 tokens: sum
    # 2 - 3.5, mean -1.5 / 40 = -0.0375; squares 5 + 1.75 = 6.75, unbiased variance
    # (6.75 - 40 * 0.0375^2) / 39 = 0.1716346; the right trajectory's first step is
    # (0.5 + 0.0375) / sqrt(0.1716346) = 1.297406
    assert r0["method"][0] == pytest.approx(0.5375 / (6.69375 / 39) ** 0.5)
    assert r0["method"][0] == pytest.approx(1.297406, abs=1e-6)


def test_value_cap_estimates_only_the_first_states(tok):
    method, sampler = scripted_method(tok, lambda ctx, n: SCRIPT[ctx][:n], max_value_steps=1)
    right = trajectory(tok, sampler, "7+5=12\n12*3=36\nA:36", 1.0)
    method.estimate_values([right])
    assert len(sampler.calls[0][0]) == 2  # s_0 and s_1 only
    assert right.meta["mc_values"] == [0.5, 1.0, 1.0]  # s_2 takes R(y)


# ----------------------------------------------------------------- prefix sharing
@pytest.fixture(scope="module")
def model(tok):
    """Untrained, with large random weights so greedy outputs vary (as in test_sampling)."""
    return random_tiny_model(tok)


def sampler_for(model, tok, batch_size=5) -> Sampler:
    return Sampler(model, tok, SamplingConfig(max_new_tokens=16, batch_size=batch_size), Ledger())


CONTEXTS = ["7+5*3-4\n", "1+2\n", "12*3-4+5*6-7\n7+5=12\n", "9-8*7\n"]


def contexts_of(s: Sampler) -> list[list[int]]:
    return [s.encode_prompt(p) for p in CONTEXTS]


def test_shared_prefill_gives_the_greedy_continuations_of_repeated_contexts(model, tok):
    s = sampler_for(model, tok)  # batches of 5 rows: a context's copies span two batches
    contexts = contexts_of(s)
    assert len({len(c) for c in contexts}) == len(contexts)  # left padding in every batch
    shared = s.generate(contexts, purpose="shared", temperature=0, n=3)
    plain = s.generate([c for c in contexts for _ in range(3)], purpose="plain", temperature=0)
    assert [(g.context_ids, g.ids, g.stop) for g in shared] == [
        (g.context_ids, g.ids, g.stop) for g in plain
    ]
    assert len({tuple(g.ids) for g in shared}) > 1  # the contexts continue differently


def test_shared_prefill_samples_n_continuations_per_context_with_stops(model, tok):
    s = sampler_for(model, tok, batch_size=8)
    contexts = contexts_of(s)
    nl = tok.convert_tokens_to_ids("\n")
    torch.manual_seed(0)
    gens = s.generate(contexts, purpose="mc_value", temperature=1.0, stop=["\n"], n=4)
    assert [g.context_ids for g in gens] == [c for c in contexts for _ in range(4)]
    for g in gens:
        assert 0 < len(g.ids) <= 16 and g.text == s.decode(g.ids)
        assert not {nl, tok.eos_token_id} & set(g.ids[:-1])  # nothing after a stop
        assert g.stop == {nl: "pattern", tok.eos_token_id: "eos"}.get(g.ids[-1], "length")
        assert g.stop != "length" or len(g.ids) == 16
    assert len({tuple(g.ids) for g in gens[:4]}) > 1  # independent samples of one context
    # same seed, same rows: sharing the prefill does not change what is sampled
    torch.manual_seed(0)
    plain = s.generate(
        [c for c in contexts for _ in range(4)], purpose="plain", temperature=1.0, stop=["\n"]
    )
    assert [g.ids for g in plain] == [g.ids for g in gens]


def test_ledger_charges_a_shared_prefill_once(model, tok):
    s = sampler_for(model, tok, batch_size=6)
    contexts = contexts_of(s)
    shared = s.generate(contexts, purpose="shared", temperature=0, n=3)
    plain = s.generate([c for c in contexts for _ in range(3)], purpose="plain", temperature=0)
    led = s.ledger
    assert led.generated["shared"] == led.generated["plain"] == sum(len(g.ids) for g in shared)
    assert [g.ids for g in plain] == [g.ids for g in shared]
    # batches of 6 rows hold two contexts x 3: each context's first len - 1 tokens once,
    # its last token and the generated tokens per row; a context repeated in the batch
    # shares its prefill however it is passed (n = 3, or given three times)
    expected = sum(len(c) - 1 + 3 for c in contexts) + sum(len(g.ids) for g in shared)
    assert led.forwarded["shared"] == expected == led.forwarded["plain"]
    distinct = s.generate(contexts, purpose="distinct", temperature=0)
    assert led.forwarded["distinct"] == sum(len(g.context_ids) + len(g.ids) for g in distinct)


# --------------------------------------------------------------------- a short run
def test_vineppo_trains_and_charges_mc_rollouts_to_the_ledger(small_experiment, tmp_path):
    cfg = small_config(
        train={"steps": 2}, runs={"vineppo": {"method": "vineppo", "mc_rollouts": 2}}
    )
    run = cfg.run("vineppo")
    assert (run.train.epochs, run.loss.beta, run.loss.aggregation) == (2, 1e-4, "dapo")
    t = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path / "v")
    sampled = {"rollout": 0, "mc_value": 0}
    generate = t.sampler.generate

    def recording_generate(contexts, *, purpose, **kw):
        gens = generate(contexts, purpose=purpose, **kw)
        sampled[purpose] += sum(len(g.ids) for g in gens)
        if purpose == "mc_value":
            assert kw["n"] == 2
        return gens

    t.sampler.generate = recording_generate
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    ledger = t.train()
    assert t.step == 2
    assert ledger["generated_tokens"] == sampled
    assert sampled["mc_value"] > sampled["rollout"] > 0
    forwarded = ledger["forwarded_tokens"]
    assert forwarded["old_logprobs"] > 0  # epochs = 2: the ratio needs pi_old
    assert forwarded["reference"] == forwarded["old_logprobs"]  # beta > 0: one pass each
    assert forwarded["policy_update"] == 2 * forwarded["old_logprobs"]
    after = t.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
