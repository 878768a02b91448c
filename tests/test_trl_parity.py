"""Parity with TRL's ``GRPOTrainer`` (trl 1.16): same batch, same weights, same loss and gradients.

One batch with left-padded prompts and right-padded completions of different lengths
is fed to ``GRPOTrainer.compute_loss`` in the dict format its ``_compute_loss`` reads,
and the same tensors go through ``completion_logprobs`` + ``policy_loss``. The loss and
every parameter gradient must agree to 1e-5.

TRL 1.16 defaults to ``use_bias_correction_kl=True``: it multiplies the k3 KL term by
the (differentiable) importance ratio, which changes the KL gradient even on-policy.
Our loss uses the plain k3 term (``creditbench/loss.py``), so the KL cases pin
``use_bias_correction_kl=False``; ``test_trl_default_bias_corrected_kl_gradient_differs``
records that gap so it cannot be mistaken for parity.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from creditbench.config import LossConfig, TinyModelConfig
from creditbench.loss import completion_logprobs, policy_loss
from creditbench.model import build_char_tokenizer, build_tiny_model

TOL = {"atol": 1e-5, "rtol": 1e-5}
PROMPT_LENS = [6, 3, 5, 1]  # left padding of different widths, one row unpadded
COMPLETION_LENS = [7, 2, 5, 4]  # right padding of different widths, one row full
ADVANTAGES = [1.0, -0.5, 0.8, -1.2]  # both signs, so both clip bounds can bind
EPSILON = 0.2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small gain nothing from threads, and on a busy CPU thread sync dominates."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama and its tokenizer saved like a hub model, so TRL loads it by path."""
    path = tmp_path_factory.mktemp("trl_parity") / "model"
    tok = build_char_tokenizer("0123456789+-*=\n abc")
    cfg = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    build_tiny_model(cfg, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    """Random token ids in the padded layout of ``_generate_and_score_completions``.

    ``old``: stale behaviour log-probs, set so that the ratios of each row run evenly
    from 0.6 to 1.6: both clip bounds bind (on rows of either advantage sign) and some
    ratios lie between 1 + 0.2 and 1 + 0.28, and between 1.28 and 1.5, so the choice of
    ``epsilon_high`` changes the loss. ``ref``: a reference that differs from the policy
    by noise. Both are zero on padding, like the log-probs TRL stores.
    """
    model_dir, tok = tiny_model_dir
    g = torch.Generator().manual_seed(0)
    b, p, c = len(PROMPT_LENS), max(PROMPT_LENS), max(COMPLETION_LENS)
    prompt_ids = torch.full((b, p), tok.pad_token_id)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    completion_ids = torch.full((b, c), tok.pad_token_id)
    completion_mask = torch.zeros((b, c), dtype=torch.long)
    n_special = 4  # pad, bos, eos, unk come first in the vocabulary; sample real characters
    for i, (n_p, n_c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS, strict=True)):
        prompt_ids[i, p - n_p :] = torch.randint(n_special, len(tok), (n_p,), generator=g)
        prompt_mask[i, p - n_p :] = 1
        completion_ids[i, :n_c] = torch.randint(n_special, len(tok), (n_c,), generator=g)
        completion_mask[i, :n_c] = 1
    out = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor(ADVANTAGES),
    }
    with torch.no_grad():
        current = logprobs_of(AutoModelForCausalLM.from_pretrained(model_dir), out)
    ratios = torch.ones((b, c))
    for i, n_c in enumerate(COMPLETION_LENS):
        ratios[i, :n_c] = torch.linspace(0.6, 1.6, n_c)
    out["old"] = (current - ratios.log()) * completion_mask
    out["ref"] = (current + 0.3 * torch.randn((b, c), generator=g)) * completion_mask
    return out


def make_trainer(model_dir, tok, tmp_path, **overrides) -> GRPOTrainer:
    """A GRPOTrainer built offline on CPU in float32; nothing is generated or trained."""
    settings = {
        "output_dir": str(tmp_path / "trl_out"),
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,  # TRL defaults to True: it would autocast the forward to bfloat16
        "activation_checkpointing": False,  # TRL defaults to True; irrelevant to the maths
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "max_completion_length": max(COMPLETION_LENS),
        "temperature": 1.0,
        "epsilon": EPSILON,
        "use_bias_correction_kl": False,  # see the module docstring
        "seed": 0,
    }
    settings.update(overrides)
    dataset = Dataset.from_dict({"prompt": ["1+2=", "3*4="]})
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=GRPOConfig(**settings),
        train_dataset=dataset,
        processing_class=tok,
    )
    # Set by Trainer's training loop, which we bypass; it divides the loss of one micro-batch.
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.train()  # _compute_loss picks its normalisers by model.training
    return trainer


def logprobs_of(model, batch) -> torch.Tensor:
    return completion_logprobs(
        model,
        batch["prompt_ids"],
        batch["prompt_mask"],
        batch["completion_ids"],
        batch["completion_mask"],
    )


def trl_loss_and_grads(trainer, batch, rows, old=None, ref=None):
    """``compute_loss`` over each slice of ``rows`` (one per accumulation step), then backward."""
    trainer.model.zero_grad(set_to_none=True)
    num_items = batch["completion_mask"].sum()  # TRL counts it over the whole generation batch
    total = 0.0
    for idx in rows:
        inputs = {k: batch[k][idx] for k in ("prompt_ids", "prompt_mask", "completion_ids")}
        inputs["completion_mask"] = batch["completion_mask"][idx]
        inputs["advantages"] = batch["advantages"][idx]  # shape (B,), as TRL stores it
        inputs["num_items_in_batch"] = num_items
        if old is not None:
            inputs["old_per_token_logps"] = old[idx]
        if ref is not None:
            inputs["ref_per_token_logps"] = ref[idx]
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    return total, grads


def our_loss_and_grads(model_dir, batch, cfg: LossConfig, rows, old=None, ref=None):
    """``policy_loss`` accumulated over the same slices, normalised like ``Trainer.update``."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    mask = batch["completion_mask"]
    n_items, n_seq = float(mask.sum()), mask.size(0)
    total, stats = 0.0, []
    for idx in rows:
        part = {k: v[idx] for k, v in batch.items()}
        lp = logprobs_of(model, part)
        loss, st = policy_loss(
            lp,
            part["advantages"][:, None].expand_as(lp),  # a sequence's advantage on every token
            part["completion_mask"],
            cfg,
            old_logprobs=None if old is None else old[idx],
            ref_logprobs=None if ref is None else ref[idx],
            num_items=n_items,
            num_sequences=n_seq,
        )
        loss.backward()
        total += loss.item()
        stats.append(st)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return total, grads, stats


def assert_same(trl_result, ours_result):
    trl_loss, trl_grads = trl_result
    our_loss, our_grads = ours_result[:2]
    torch.testing.assert_close(torch.tensor(our_loss), torch.tensor(trl_loss), **TOL)
    assert trl_grads.keys() == our_grads.keys()
    for name, grad in trl_grads.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient; the comparison would be vacuous"
        torch.testing.assert_close(our_grads[name], grad, **TOL, msg=lambda m, n=name: f"{n}: {m}")


ALL_ROWS = [slice(None)]


def test_padded_completion_logprobs_equal_trl_and_unpadded_forward(tiny_model_dir, batch, tmp_path):
    """Our explicit position ids and TRL's default ones give the same log-probs (RoPE is relative)."""
    model_dir, tok = tiny_model_dir
    trainer = make_trainer(model_dir, tok, tmp_path, loss_type="grpo", beta=0.0)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    mask = batch["completion_mask"].bool()
    with torch.no_grad():
        theirs, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attention, ids.size(1) - batch["prompt_ids"].size(1)
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        ours = logprobs_of(model, batch)
        for i, (n_p, n_c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS, strict=True)):
            row = ids[i, attention[i].bool()][None]  # the same sequence with no padding at all
            logits = model(input_ids=row).logits[0, n_p - 1 : -1]
            alone = torch.log_softmax(logits, -1).gather(-1, row[0, n_p:, None])[:, 0]
            torch.testing.assert_close(ours[i, :n_c], alone, **TOL)
    torch.testing.assert_close(ours[mask], theirs[mask], **TOL)


@pytest.mark.parametrize("beta", [0.0, 0.04], ids=["no_kl", "kl"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_on_policy_loss_and_grads_match_trl(tiny_model_dir, batch, tmp_path, loss_type, beta):
    model_dir, tok = tiny_model_dir
    # A reference that differs from the policy, so the KL term and its gradient are not zero.
    ref = batch["ref"] if beta else None
    trainer = make_trainer(model_dir, tok, tmp_path, loss_type=loss_type, beta=beta)
    theirs = trl_loss_and_grads(trainer, batch, ALL_ROWS, ref=ref)
    cfg = LossConfig(clip=True, epsilon=EPSILON, beta=beta, aggregation=loss_type)
    ours = our_loss_and_grads(model_dir, batch, cfg, ALL_ROWS, ref=ref)
    assert_same(theirs, ours)


@pytest.mark.parametrize(
    ("loss_type", "epsilon_high", "beta"),
    [("grpo", None, 0.0), ("dapo", 0.28, 0.04)],
    ids=["grpo-symmetric", "dapo-eps_high-kl"],
)
def test_off_policy_clipped_loss_and_grads_match_trl(
    tiny_model_dir, batch, tmp_path, loss_type, epsilon_high, beta
):
    """Stale old log-probs: ratios leave the trust region, so the clip bounds shape the gradient."""
    model_dir, tok = tiny_model_dir
    old, ref = batch["old"], (batch["ref"] if beta else None)
    trainer = make_trainer(
        model_dir, tok, tmp_path, loss_type=loss_type, beta=beta, epsilon_high=epsilon_high
    )
    theirs = trl_loss_and_grads(trainer, batch, ALL_ROWS, old=old, ref=ref)
    cfg = LossConfig(
        clip=True, epsilon=EPSILON, epsilon_high=epsilon_high, beta=beta, aggregation=loss_type
    )
    ours = our_loss_and_grads(model_dir, batch, cfg, ALL_ROWS, old=old, ref=ref)
    assert_same(theirs, ours)
    assert ours[2][0]["clip_fraction"] > 0.2, "the batch must exercise clipping"
    # The test must be able to see a wrong bound: changing the clip range changes the loss.
    other_high = 0.5 if epsilon_high is None else None
    other = cfg.model_copy(update={"epsilon_high": other_high})
    other_loss = our_loss_and_grads(model_dir, batch, other, ALL_ROWS, old=old, ref=ref)[0]
    assert abs(other_loss - ours[0]) > 1e-3


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_micro_batch_accumulation_matches_trl_gradient_accumulation(
    tiny_model_dir, batch, tmp_path, loss_type
):
    """Two micro-batches of two sequences: our whole-batch normalisers equal TRL's accumulation."""
    model_dir, tok = tiny_model_dir
    old = batch["old"]
    rows = [slice(0, 2), slice(2, 4)]
    trainer = make_trainer(
        model_dir,
        tok,
        tmp_path,
        loss_type=loss_type,
        beta=0.0,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,  # steps_per_generation follows: one generation per step
    )
    theirs = trl_loss_and_grads(trainer, batch, rows, old=old)
    cfg = LossConfig(clip=True, epsilon=EPSILON, aggregation=loss_type)
    assert_same(theirs, our_loss_and_grads(model_dir, batch, cfg, rows, old=old))


def test_trl_default_bias_corrected_kl_gradient_differs(tiny_model_dir, batch, tmp_path):
    """TRL's default KL is ratio-weighted; ours is plain k3: same loss value, different gradient."""
    model_dir, tok = tiny_model_dir
    ref = batch["ref"]
    trainer = make_trainer(
        model_dir, tok, tmp_path, loss_type="grpo", beta=0.04, use_bias_correction_kl=True
    )
    trl_loss, trl_grads = trl_loss_and_grads(trainer, batch, ALL_ROWS, ref=ref)
    cfg = LossConfig(clip=True, epsilon=EPSILON, beta=0.04, aggregation="grpo")
    our_loss, our_grads, _ = our_loss_and_grads(model_dir, batch, cfg, ALL_ROWS, ref=ref)
    # On-policy the ratio is exactly 1, so only the gradient can tell the two apart.
    torch.testing.assert_close(torch.tensor(our_loss), torch.tensor(trl_loss), **TOL)
    gap = max((our_grads[n] - g).abs().max().item() for n, g in trl_grads.items())
    assert gap > 1e-5


def test_trl_1_16_defaults_are_the_ones_our_docs_state():
    """``trl/trainer/grpo_config.py`` (trl 1.16): ``loss_type="dapo"``,
    ``use_bias_correction_kl=True``, ``beta=0.0``, ``epsilon=0.2``, ``scale_rewards="group"``.
    Our defaults are the papers' (DeepSeekMath GRPO: per-sequence mean ``grpo``, plain k3);
    ``methods/grpo.py`` and ``creditbench/loss.py`` state the difference."""
    import trl

    fields = GRPOConfig.__dataclass_fields__
    assert trl.__version__.startswith("1.16")
    assert fields["loss_type"].default == "dapo"
    assert fields["use_bias_correction_kl"].default is True
    assert (fields["beta"].default, fields["epsilon"].default) == (0.0, 0.2)
    assert fields["scale_rewards"].default == "group"
    ours = LossConfig()
    assert (ours.aggregation, ours.kl_ratio_correction, ours.beta) == ("grpo", False, 0.0)


@pytest.mark.parametrize("beta", [0.0, 0.04], ids=["no_kl", "kl"])
def test_grpos_default_loss_is_unchanged_by_the_new_loss_options(
    tiny_model_dir, batch, tmp_path, beta
):
    """GRPO's ``DEFAULTS`` over the engine defaults (the KL options at their defaults:
    token mean, no clamp; the unclipped objective unused) equal TRL's ``loss_type="grpo"``
    with the plain k3 KL, off-policy and with a KL reference."""
    from creditbench.methods import load_method

    cfg = LossConfig(**{**load_method("grpo").DEFAULTS["loss"], "beta": beta})
    assert (cfg.kl_reduction, cfg.kl_clamp, cfg.unclipped_objective) == (
        "token_mean",
        None,
        "ratio",
    )
    model_dir, tok = tiny_model_dir
    old, ref = batch["old"], (batch["ref"] if beta else None)
    trainer = make_trainer(model_dir, tok, tmp_path, loss_type="grpo", beta=beta)
    theirs = trl_loss_and_grads(trainer, batch, ALL_ROWS, old=old, ref=ref)
    assert_same(theirs, our_loss_and_grads(model_dir, batch, cfg, ALL_ROWS, old=old, ref=ref))


def test_trls_own_defaults_are_dapo_with_ratio_corrected_kl(tiny_model_dir, batch, tmp_path):
    """TRL 1.16 at its defaults (``loss_type="dapo"``, ``use_bias_correction_kl=True``) is
    ``aggregation: dapo`` with ``kl_ratio_correction: true`` here."""
    model_dir, tok = tiny_model_dir
    old, ref = batch["old"], batch["ref"]
    settings = {"beta": 0.04, "use_bias_correction_kl": True}  # loss_type: TRL's default
    trainer = make_trainer(model_dir, tok, tmp_path, **settings)
    assert trainer.loss_type == "dapo"
    theirs = trl_loss_and_grads(trainer, batch, ALL_ROWS, old=old, ref=ref)
    cfg = LossConfig(beta=0.04, aggregation="dapo", kl_ratio_correction=True)
    assert_same(theirs, our_loss_and_grads(model_dir, batch, cfg, ALL_ROWS, old=old, ref=ref))
