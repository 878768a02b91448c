"""OAR: the bi-level reshaping on hand-computed cases, both importances against direct
computations on a tiny model, and OAR-P / OAR-G training runs with their ledger charges."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_config
from transformers import GPT2Config, GPT2LMHeadModel

from creditbench.config import ChainsTaskConfig, TinyModelConfig
from creditbench.ledger import Ledger
from creditbench.methods import MethodContext, load_method
from creditbench.model import build_char_tokenizer, build_tiny_model
from creditbench.rollouts import Group, Trajectory, group_normalise, thought_token_ends
from creditbench.tasks import Problem
from creditbench.tasks.chains import ALPHABET, ChainsTask
from creditbench.train import Trainer

oar = load_method("oar")


def reshape(s, **kw):
    """``reshape_weights`` of importances whose ``log1p`` is ``s`` (so ``n`` is easy to read)."""
    return oar.reshape_weights(torch.expm1(torch.tensor(s, dtype=torch.float64)), **kw).tolist()


# --------------------------------------------------------------- bi-level reshaping
def test_reshape_weights_gate_floor_ramp_and_mass_on_hand_computed_case():
    # s = 4 n with n = [0, .05, .25, .5, .75, 1]; tau = linear 0.25-quantile of 6 values:
    # position 1.25 -> .05 + .25 (.25 - .05) = 0.1.
    # below tau: max(0 / .1, .1) = .1 (the floor), .05 / .1 = .5;
    # at or above: 1 + (n - .1) / .9 -> 7/6, 13/9, 31/18, 2; sum = 6.6 + 1/3 = 104/15.
    raw = [0.1, 0.5, 7 / 6, 13 / 9, 31 / 18, 2.0]
    scale = 6 / (104 / 15)
    s = [0.0, 0.2, 1.0, 2.0, 3.0, 4.0]
    assert reshape(s) == pytest.approx([scale * w for w in raw], rel=1e-12)
    # order is kept: the weights follow their tokens
    assert reshape(s[::-1]) == pytest.approx([scale * w for w in raw[::-1]], rel=1e-12)
    assert sum(reshape(s)) == pytest.approx(6.0, rel=1e-12)


def test_reshape_weights_ramp_beta_scales_only_the_boost():
    # same n, ramp_beta 0.5: above tau w = 1 + .5 (n - .1) / .9 -> 13/12, 11/9, 49/36, 1.5
    raw = [0.1, 0.5, 13 / 12, 11 / 9, 49 / 36, 1.5]
    got = reshape([0.0, 0.2, 1.0, 2.0, 3.0, 4.0], ramp_beta=0.5)
    assert got == pytest.approx([6 / sum(raw) * w for w in raw], rel=1e-12)


def test_reshape_weights_token_exactly_at_tau_gets_weight_one_before_rescaling():
    # n = [0, .25, .5, .75, 1]: tau = n[1] = .25 exactly, and n = tau takes the upper branch
    raw = [0.1, 1.0, 1 + 0.25 / 0.75, 1 + 0.5 / 0.75, 2.0]
    got = reshape([0.0, 1.0, 2.0, 3.0, 4.0])
    assert got == pytest.approx([5 / sum(raw) * w for w in raw], rel=1e-12)


def test_reshape_weights_floor_and_quantile_are_parameters():
    # q = 0.5 on n = [0, .25, .5, .75, 1]: tau = .5; below: max(0, .3) = .3, .25/.5 = .5
    raw = [0.3, 0.5, 1.0, 1.5, 2.0]
    got = reshape([0.0, 1.0, 2.0, 3.0, 4.0], q=0.5, floor=0.3)
    assert got == pytest.approx([5 / sum(raw) * w for w in raw], rel=1e-12)
    # "lower" interpolation: tau = the order statistic below position 1.25 -> n = .05
    raw = [0.1, 1.0, 1 + 0.2 / 0.95, 1 + 0.45 / 0.95, 1 + 0.7 / 0.95, 2.0]
    got = reshape([0.0, 0.2, 1.0, 2.0, 3.0, 4.0], interpolation="lower")
    assert got == pytest.approx([6 / sum(raw) * w for w in raw], rel=1e-12)


@pytest.mark.parametrize(
    "importance", [[0.3, 0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [5.0], [0.0]], ids=str
)
def test_reshape_weights_all_equal_importances_give_uniform_weights(importance):
    got = oar.reshape_weights(torch.tensor(importance)).tolist()
    assert got == [1.0] * len(importance)


def test_reshape_weights_tau_one_gives_no_boost_and_tau_zero_ramps_everything():
    # n = [0, 1, 1, 1, 1]: tau = 1, the ramp is 0 -> raw [.1, 1, 1, 1, 1]
    got = reshape([0.0, 2.0, 2.0, 2.0, 2.0])
    assert got == pytest.approx([5 / 4.1 * w for w in [0.1, 1, 1, 1, 1]], rel=1e-12)
    # n = [0, 0, 0, 1]: tau = 0, nothing is below it -> raw 1 + n = [1, 1, 1, 2]
    assert reshape([0.0, 0.0, 0.0, 3.0]) == pytest.approx([0.8, 0.8, 0.8, 1.6], rel=1e-12)


def test_reshape_weights_preserve_mass_on_random_importances():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 17, 100):
        imp = torch.rand(n, generator=gen, dtype=torch.float64) ** 3 * 10
        w = oar.reshape_weights(imp)
        assert float(w.sum()) == pytest.approx(n, rel=1e-12)
        # monotone: more important tokens never get less weight
        order = torch.argsort(imp)
        assert torch.all(w[order].diff() >= -1e-12)


def test_reshape_weights_rejects_negative_or_nan_importance():
    for bad in ([0.1, -0.2], [0.1, float("nan")]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            oar.reshape_weights(torch.tensor(bad))
    assert oar.reshape_weights(torch.tensor([])).numel() == 0


def test_completion_weights_keep_one_outside_the_reasoning_span():
    w = torch.tensor([0.5, 1.5])
    assert oar.completion_weights(5, (1, 3), w) == [1.0, 0.5, 1.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="2 weights for a reasoning span of 3"):
        oar.completion_weights(5, (0, 3), w)


def test_kl_divergence_matches_torch_kl_div():
    gen = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(3, 7, generator=gen, dtype=torch.float64), -1)
    logq = torch.log_softmax(torch.randn(3, 7, generator=gen, dtype=torch.float64), -1)
    want = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(oar.kl_divergence(logp, logq), want, rtol=1e-12)
    assert torch.all(oar.kl_divergence(logp, logp) == 0)


# ------------------------------------------------------------ answer and reasoning spans
def test_answer_token_span_maps_characters_to_multi_character_tokens():
    # tokens "12" "\nA" ":3" "6\n" -> decoded ends 2, 4, 6, 8; answer "36" is chars [5, 7)
    assert oar.answer_token_span([2, 4, 6, 8], (5, 7)) == (2, 4)
    # a trailing special token (decodes to nothing) does not move the span
    assert oar.answer_token_span([2, 4, 6, 8, 8], (5, 7)) == (2, 4)


def test_reasoning_span_before_answer_or_before_the_answer_thought():
    tok = build_char_tokenizer(ALPHABET)
    task = ChainsTask(ChainsTaskConfig())
    text = "7+5=12\n12*3=36\nA:36\n"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ends = [len(tok.decode(ids[: j + 1], skip_special_tokens=True)) for j in range(len(ids))]
    a0, a1 = oar.answer_token_span(ends, task.answer_span(text))
    assert (a0, a1) == (17, 19) and text[a0:a1] == "36"
    thought_ends = thought_token_ends(ids, tok, task.segment)
    assert oar.reasoning_span(a0, thought_ends, "before_answer") == (0, 17)  # "A:" included
    assert oar.reasoning_span(a0, thought_ends, "before_answer_thought") == (0, 15)
    # the answer line "A:36\n" starts at character (= token) 15
    line = oar.line_start_token(ends, text, 17)
    assert line == 15
    assert oar.reasoning_span(a0, thought_ends, "before_answer_line", line) == (0, 15)


def test_the_conclusion_line_starts_at_the_token_that_reaches_into_it():
    """``OAR-main.py`` keeps the conclusion (``conclude`` + ``answer`` segments) out of the
    perturbed reasoning. Tokens "12" "\nA" ":3" "6\n" (decoded ends 2, 4, 6, 8) of
    "12\nA:36\n": the answer line starts at character 3, inside token 1 ("\nA"), so
    token 1 is conclusion and the reasoning is token 0 alone."""
    assert oar.line_start_token([2, 4, 6, 8], "12\nA:36\n", 5) == 1
    assert oar.reasoning_span(3, [2, 4], "before_answer_line", 1) == (0, 1)
    assert oar.reasoning_span(3, [2, 4], "before_answer") == (0, 3)  # "\nA" ":3" in it
    # an answer on the first line: no reasoning at all
    assert oar.line_start_token([1, 2, 3], "A:3", 2) == 0
    # math: "x=4.\nSo \\boxed{4}" (one character per token): line 2 starts at 5
    text = "x=4.\nSo \\boxed{4}"
    c0 = text.index("{") + 1
    assert oar.line_start_token(list(range(1, len(text) + 1)), text, c0) == 5


def test_default_outcome_follows_the_official_functions():
    """``OAR-main.py``: ``calculate_token_importance_gradient(..., pfinal_mode="answer_mean")``
    and ``calculate_token_importance_perturbation(..., pfinal_mode='last')``."""
    assert oar.Params(importance="gradient").outcome_mode == "mean"
    assert oar.Params(importance="perturbation").outcome_mode == "last"
    assert oar.Params(importance="gradient", outcome="last").outcome_mode == "last"
    assert oar.Params(importance="perturbation").reasoning_span == "before_answer_line"


def test_probe_ends_at_the_last_answer_predicting_position():
    prompt, completion = [9, 9], [10, 11, 12, 13, 14, 15]  # answer = tokens 3, 4
    last = oar.make_probe(prompt, completion, (3, 5), (0, 3), "last")
    assert last.ids == [9, 9, 10, 11, 12] and last.n_pred == 1
    mean = oar.make_probe(prompt, completion, (3, 5), (0, 3), "mean")
    assert mean.ids == [9, 9, 10, 11, 12, 13] and mean.n_pred == 2
    assert list(mean.positions) == [2, 3, 4]


# ------------------------------------------------------------------- importances
@pytest.fixture(scope="module")
def tiny():
    """A random tiny Llama in float64 and its character tokenizer."""
    tok = build_char_tokenizer(ALPHABET)
    cfg = TinyModelConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    model = build_tiny_model(cfg, tok).double().eval()
    return model, tok


def _probes(tok, outcome):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pad = tok.pad_token_id
    # the second completion holds a pad token in its reasoning: perturbing it changes nothing
    first = enc("7+5*3\n") + enc("7+5=12\n12*3=36\nA:36\n")
    second = enc("4-1\n") + enc("4-1=") + [pad] + enc("3\nA:3\n")
    # answers (completion coordinates): "36" at tokens 17-18, "3" at token 9
    return [
        oar.make_probe(first[:6], first[6:], (17, 19), (0, 17), outcome),
        oar.make_probe(second[:4], second[4:], (9, 10), (0, 9), outcome),
    ], pad


def _direct_outcome(model, ids, n_pred, embeds=None):
    """log P_final of one unpadded sequence, straight from the logits."""
    x = (
        {"inputs_embeds": embeds[None]}
        if embeds is not None
        else {"input_ids": torch.tensor([ids])}
    )
    logits = model(**x).logits[0]
    return torch.log_softmax(logits[-n_pred:].mean(0), -1)


@pytest.mark.parametrize(
    ("outcome", "prefix_cache", "batch_size"),
    [("last", True, 3), ("mean", True, 3), ("last", True, 1), ("last", True, 64),
     ("mean", True, 64), ("last", False, 3), ("mean", False, 3)],
)  # fmt: skip
def test_perturbation_importance_equals_per_token_pad_replacement_kl(
    tiny, outcome, prefix_cache, batch_size
):
    """Every copy against its own whole, unpadded forward; with ``prefix_cache`` the copies
    of both probes (different lengths and perturbed positions) share batches, their
    prefixes and suffixes padded to each batch's longest."""
    model, tok = tiny
    probes, pad = _probes(tok, outcome)
    got, forwarded = oar.perturbation_importance(
        model, probes, pad, batch_size=batch_size, prefix_cache=prefix_cache
    )
    with torch.no_grad():
        for probe, imp in zip(probes, got, strict=True):
            clean = _direct_outcome(model, probe.ids, probe.n_pred)
            want = []
            for pos in probe.positions:
                ids = list(probe.ids)
                ids[pos] = pad
                perturbed = _direct_outcome(model, ids, probe.n_pred)
                want.append(float(F.kl_div(perturbed, clean, log_target=True, reduction="sum")))
            assert imp.tolist() == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert got[1][4] == 0  # the token that already is the pad token
    assert len(set(got[0].tolist())) == len(got[0])  # the tokens are told apart
    # every clean sequence is charged, and of each perturbed copy the tokens forwarded:
    # with the prefix cache, those from the perturbed token (or the first answer-predicting
    # position, if later) on
    if prefix_cache:
        copies = sum(
            len(p.ids) - min(pos, len(p.ids) - p.n_pred) for p in probes for pos in p.positions
        )
    else:
        copies = sum(len(p.positions) * len(p.ids) for p in probes)
    assert forwarded == sum(len(p.ids) for p in probes) + copies


@pytest.fixture(scope="module")
def tiny_gpt2(tiny):
    """A random tiny GPT-2 in float64: no float32 normalisation inside (Llama's RMSNorm
    upcasts to float32), so finite differences are exact to ~1e-10."""
    _, tok = tiny
    cfg = GPT2Config(
        vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64,
        initializer_range=0.5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg)
    return model.double().eval(), tok


def test_gradient_importance_matches_central_differences_along_each_embedding(tiny_gpt2):
    model, tok = tiny_gpt2
    probes, pad = _probes(tok, "mean")
    # a large noise makes J well away from its minimum, so the check is sharp
    noise = oar.reasoning_noise(probes, 16, std=0.3, generator=torch.Generator().manual_seed(3))
    got, forwarded = oar.gradient_importance(model, probes, pad, noise, batch_size=2)
    assert forwarded == 2 * sum(len(p.ids) for p in probes)
    embed = model.get_input_embeddings()
    h = 1e-5
    with torch.no_grad():
        for probe, eps, imp in zip(probes, noise, got, strict=True):
            e = embed(torch.tensor(probe.ids))  # [T, H], clean
            noisy = e.clone()
            noisy[probe.positions.start : probe.positions.stop] += eps.double()
            p0 = _direct_outcome(model, probe.ids, probe.n_pred)

            def J(x, probe=probe, p0=p0):  # noqa: N802
                logq = _direct_outcome(model, None, probe.n_pred, embeds=x)
                return float(F.kl_div(logq, p0, log_target=True, reduction="sum"))

            fd = []
            for j, pos in enumerate(probe.positions):
                step = torch.zeros_like(e)
                step[pos] = e[pos]  # move token t alone, along its own embedding
                fd.append(abs(J(noisy + h * step) - J(noisy - h * step)) / (2 * h))
                assert imp[j] > 0
            assert imp.tolist() == pytest.approx(fd, rel=1e-6, abs=1e-12)


def test_gradient_importance_leaves_no_gradient_on_the_policy(tiny):
    model, tok = tiny
    probes, pad = _probes(tok, "last")
    assert all(p.requires_grad for p in model.parameters())
    noise = oar.reasoning_noise(probes, 16, std=1e-3, generator=torch.Generator().manual_seed(0))
    oar.gradient_importance(model, probes, pad, noise, batch_size=1)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_noise_is_a_draw_of_the_given_generator(tiny):
    _, tok = tiny
    probes, _ = _probes(tok, "last")
    a = oar.reasoning_noise(probes, 16, std=1e-3, generator=torch.Generator().manual_seed(11))
    b = oar.reasoning_noise(probes, 16, std=1e-3, generator=torch.Generator().manual_seed(11))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert [x.shape for x in a] == [(len(p.positions), 16) for p in probes]
    assert 0.5e-3 < float(torch.cat(a).std()) < 2e-3


# ------------------------------------------------------------------ the method's credit
def _chains_groups(tok, step: int | None = 0):
    """Groups as ``collect`` makes them at ``step`` (``None``: groups that do not say)."""
    task = ChainsTask(ChainsTaskConfig())
    problem = Problem(id="p", prompt="7+5*3\n", answer="36")
    prompt = tok(problem.prompt, add_special_tokens=False)["input_ids"]

    def traj(text):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return Trajectory(
            problem=problem,
            prompt_ids=prompt,
            completion_ids=ids,
            text=text,
            reward=task.reward(problem, text),
            purpose="rollout",
            thought_ends=thought_token_ends(ids, tok, task.segment),
        )

    meta = {} if step is None else {"step": step}
    mixed = Group(
        [traj("7+5=12\n12*3=36\nA:36\n"), traj("7+5=13\n13*3=39\nA:39\n"), traj("7+")],
        meta=dict(meta),
    )
    # both wrong: A = 0
    flat = Group([traj("7+5=11\nA:11\n"), traj("7+5=10\nA:10\n")], meta=dict(meta))
    return task, len(prompt), mixed, flat


def _method(model, tok, task, importance, seed=0, **params):
    ctx = MethodContext(model, tok, None, task, Ledger(), None, seed)
    return oar.Method(oar.Params(importance=importance, **params), ctx)


@pytest.mark.parametrize("importance", ["perturbation", "gradient"])
def test_advantages_multiply_group_norm_by_weights_and_skip_zero_variance_groups(tiny, importance):
    """``OAR-main.py``: the reasoning tokens (here the two lines before "A:36\n", 15
    tokens) are perturbed / noised and weighted; the conclusion "A:36\n" and EOS keep
    ``w = 1`` (``compute_loss`` fills the weights after the reasoning with ones)."""
    model, tok = tiny
    task, n_prompt, mixed, flat = _chains_groups(tok)
    method = _method(model, tok, task, importance)
    rng = torch.get_rng_state()
    trained = method.advantages([mixed, flat])
    assert torch.equal(torch.get_rng_state(), rng)  # the sampling RNG is left alone
    assert trained == mixed.trajectories + flat.trajectories
    norm = group_normalise([1.0, 0.0, 0.0])
    for tr, a in zip(mixed.trajectories[:2], norm[:2], strict=True):
        adv = np.array(tr.advantages)
        assert tr.meta["oar"]["span"] == (0, 15)
        assert len(tr.meta["oar"]["importance"]) == 15  # "A:" is not perturbed
        assert adv[:15].sum() == pytest.approx(15 * a, rel=1e-9)  # mass preserved
        assert np.all(adv[15:] == pytest.approx(a))  # "A:", answer, "\n" and EOS: w = 1
        assert len(set(np.round(adv[:15], 12))) > 2  # reshaped
    assert mixed.trajectories[2].advantages == pytest.approx([norm[2]] * 3)  # no answer: w = 1
    assert all(tr.advantages == [0.0] * len(tr.completion_ids) for tr in flat.trajectories)
    assert all("oar" not in tr.meta for tr in flat.trajectories)  # skipped, not computed
    # OAR-P ("last"): prompt + the 17 completion tokens before the first answer token, and
    # of the copy perturbed at reasoning token j (0..14) the 17 - j tokens from it on (the
    # prefix cache); OAR-G ("mean", answer "36" = tokens 17, 18): prompt + 18 tokens (up to
    # the last answer-predicting position), clean + noisy
    perturbed = (n_prompt + 17) + sum(17 - j for j in range(15))
    per_probe = perturbed if importance == "perturbation" else 2 * (n_prompt + 18)
    assert method.ctx.ledger.forwarded == {importance: 2 * per_probe}
    assert all(p.grad is None for p in model.parameters())


def test_oar_g_noise_is_a_function_of_run_seed_and_step(tiny):
    model, tok = tiny
    task = ChainsTask(ChainsTaskConfig())

    def first_draw(seed, step):
        method = _method(model, tok, task, "gradient", seed)
        return torch.randn(4, generator=method.noise_generator(step))

    assert torch.equal(first_draw(0, 3), first_draw(0, 3))
    assert not torch.equal(first_draw(0, 3), first_draw(0, 4))
    assert not torch.equal(first_draw(0, 3), first_draw(1, 3))
    # the seed is the run's private step RNG: random.Random("oar-noise-<seed>-<step>")
    by_hand = random.Random("oar-noise-0-3").getrandbits(63)
    assert torch.equal(
        first_draw(0, 3), torch.randn(4, generator=torch.Generator().manual_seed(by_hand))
    )


class _Rollouts(MethodContext):
    """A context whose rollouts are fixed groups of trajectories (no sampler)."""

    def __init__(self, *args, groups, **kw):
        super().__init__(*args, **kw)
        self.groups = groups

    def rollout(self, problems, n, purpose, prefixes=None, **sampling):
        return [list(g.trajectories) for g in self.groups]


def test_oar_g_noise_comes_from_the_step_the_groups_were_collected_at(tiny):
    """OAR-G's weights depend on the step passed to ``collect`` (recorded in the groups),
    not on which instance collected them: a fresh method's ``advantages`` on groups
    collected at step 2 gives the same weights, and another step other weights."""
    model, tok = tiny
    task = ChainsTask(ChainsTaskConfig())
    run = small_config().run("grpo")

    def collected(step):
        _, _, mixed, _ = _chains_groups(tok)
        ctx = _Rollouts(model, tok, None, task, Ledger(), run, 0, groups=[mixed])
        groups = oar.Method(oar.Params(importance="gradient"), ctx).collect([None], step)
        assert [g.meta["step"] for g in groups] == [step]
        return groups

    def weights(groups):
        method = _method(model, tok, task, "gradient")  # a fresh instance: no state
        method.advantages(groups)
        return groups[0].trajectories[0].advantages

    assert weights(collected(2)) == weights(collected(2))
    assert weights(collected(2)) != weights(collected(5))
    # the same noise drawn by hand from the step's generator gives the same weights
    method = _method(model, tok, task, "gradient")
    groups = collected(2)
    traj = groups[0].trajectories[0]
    probe = method.probe(traj)
    noise = oar.reasoning_noise(
        [probe],
        16,
        1e-3,
        torch.Generator().manual_seed(random.Random("oar-noise-0-2").getrandbits(63)),
    )
    (imp,), _ = oar.gradient_importance(model, [probe], tok.pad_token_id, noise, 8)
    a = group_normalise(groups[0].rewards)[0]
    w = oar.completion_weights(len(traj.completion_ids), probe.span, oar.reshape_weights(imp))
    assert weights(groups) == pytest.approx([a * x for x in w], rel=1e-9)
    # groups that do not say their step are refused by OAR-G (perturbation needs none)
    _, _, mixed, _ = _chains_groups(tok, step=None)
    with pytest.raises(ValueError, match=r"meta\['step'\]"):
        _method(model, tok, task, "gradient").advantages([mixed])
    _method(model, tok, task, "perturbation").advantages([mixed])


# ----------------------------------------------------------------------- integration
@pytest.mark.parametrize(
    ("importance", "purpose"), [("perturbation", "perturbation"), ("gradient", "gradient")]
)
def test_oar_trains_two_steps_and_charges_importance_tokens(
    small_experiment, tmp_path, importance, purpose
):
    cfg = small_config(
        train={"steps": 2}, runs={"oar": {"method": "oar", "importance": importance}}
    )
    run = cfg.run("oar")
    assert run.params["importance"] == importance and run.loss.clip and run.loss.beta == 0
    trainer = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path / "o")
    seen = []
    advantages = trainer.method.advantages

    def recording(groups):
        trained = advantages(groups)
        seen.extend(groups)
        return trained

    trainer.method.advantages = recording
    collect = trainer.method.collect

    def mixed_rewards(problems, step):
        # the small warm start rarely solves a chain: alternate rewards so every group has
        # a nonzero advantage and the reshaping path runs on every parsable completion
        groups = collect(problems, step)
        for g in groups:
            for i, tr in enumerate(g.trajectories):
                tr.reward = float(i % 2 == 0)
        return groups

    trainer.method.collect = mixed_rewards
    ledger = trainer.train()
    rollouts = [tr for g in seen for tr in g.trajectories]
    assert len(rollouts) == 2 * 4 * 4  # steps x prompts x group size
    assert ledger["generated_tokens"] == {"rollout": sum(len(t.completion_ids) for t in rollouts)}

    # recompute the charge independently: character tokens, so the answer's first token
    # index is its character index; P_final mode "last": prompt + completion before it
    expected, reshaped = 0, 0
    task = trainer.task
    for group in seen:
        for tr, a in zip(group.trajectories, group_normalise(group.rewards), strict=True):
            span = task.answer_span(tr.text)
            if a == 0 or span is None or span[0] == 0:
                assert tr.advantages == pytest.approx([a] * len(tr.completion_ids))
                continue
            # character tokens: the reasoning is every character before the answer's line
            # (the conclusion "A:<n>" keeps w = 1); OAR-P reads P_final before the first
            # answer token, OAR-G ("mean") up to the last answer-predicting position
            n_reason = tr.text.rfind("\n", 0, span[0]) + 1
            if n_reason == 0:
                assert tr.advantages == pytest.approx([a] * len(tr.completion_ids))
                continue
            if importance == "perturbation":  # the clean sequence, each copy from token j on
                expected += len(tr.prompt_ids) + span[0]
                expected += sum(span[0] - j for j in range(n_reason))
            else:
                expected += 2 * (len(tr.prompt_ids) + span[1] - 1)
            reshaped += 1
            adv = np.array(tr.advantages)
            assert adv[:n_reason].sum() == pytest.approx(n_reason * a, rel=1e-6)
            assert np.all(adv[n_reason:] == pytest.approx(a, rel=1e-6))
    assert reshaped >= len(rollouts) // 2, "too few completions were reshaped to check"
    assert ledger["forwarded_tokens"][purpose] == expected
    assert ledger["seconds"][purpose] > 0
