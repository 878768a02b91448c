"""Credit assignment plumbing and the policy loss against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import creditbench.ledger as ledger_module
from creditbench.config import LossConfig
from creditbench.ledger import Ledger
from creditbench.loss import needs_old_logprobs, policy_loss
from creditbench.methods import load_method
from creditbench.rollouts import Batch, Group, Trajectory, group_normalise
from creditbench.tasks import Problem

PROBLEM = Problem(id="p", prompt="1+2\n", answer="3")


def traj(
    n_completion: int = 3, reward: float = 0.0, n_prompt: int = 2, start: int = 10
) -> Trajectory:
    return Trajectory(
        problem=PROBLEM,
        prompt_ids=list(range(start, start + n_prompt)),
        completion_ids=list(range(start + 50, start + 50 + n_completion)),
        text="x" * n_completion,
        reward=reward,
        purpose="rollout",
        thought_ends=[n_completion],
    )


# --------------------------------------------------------------- group norm
def test_group_normalise_unbiased_std():
    # mean 0.25, centred [0.75, -0.25, -0.25, -0.25], unbiased var 0.75/3 = 0.25 -> std 0.5
    got = group_normalise([1, 0, 0, 0])
    assert got == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    assert got == pytest.approx([1.49970006, -0.49990002, -0.49990002, -0.49990002], abs=1e-8)
    # [1, 1, 0, 0]: unbiased var 1/3 -> std 0.57735027
    assert group_normalise([1, 1, 0, 0]) == pytest.approx(
        [0.86587543] * 2 + [-0.86587543] * 2, abs=1e-8
    )


def test_group_normalise_population_std():
    # population var 0.75/4 = 0.1875 -> std 0.43301270
    got = group_normalise([1, 0, 0, 0], std="population")
    assert got == pytest.approx([1.73165090, -0.57721697, -0.57721697, -0.57721697], abs=1e-8)
    # [1, 1, 0, 0]: population std 0.5 -> 0.5 / 0.5001
    assert group_normalise([1, 1, 0, 0], std="population") == pytest.approx(
        [0.99980004] * 2 + [-0.99980004] * 2, abs=1e-8
    )


def test_group_normalise_none_only_centres():
    assert group_normalise([1, 0, 0, 0], std="none") == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert group_normalise([0.5, 0.25, 1.0], std="none") == pytest.approx(
        [-0.0833333333, -0.3333333333, 0.4166666667]
    )


def test_group_normalise_eps_is_added_to_the_std():
    assert group_normalise([1, 0, 0, 0], eps=0.0) == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert group_normalise([1, 0, 0, 0], eps=0.5) == pytest.approx([0.75, -0.25, -0.25, -0.25])


@pytest.mark.parametrize("rewards", [[0, 0, 0, 0], [1, 1, 1, 1], [0.3, 0.3, 0.3]])
@pytest.mark.parametrize("std", ["unbiased", "population", "none"])
@pytest.mark.parametrize("threshold", [None, 1e-8])
def test_constant_group_gets_zero_advantages(rewards, std, threshold):
    got = group_normalise(rewards, std=std, zero_std_threshold=threshold)
    assert np.all(np.isfinite(got))
    assert got == pytest.approx([0.0] * len(rewards), abs=1e-9)


def test_zero_std_threshold_zeroes_groups_below_it_only():
    assert group_normalise([1.0, 1.0 + 1e-10], zero_std_threshold=1e-8).tolist() == [0.0, 0.0]
    assert group_normalise([1, 0], zero_std_threshold=1e-8) == pytest.approx(
        [0.5 / 0.70720678, -0.5 / 0.70720678]
    )


@pytest.mark.parametrize("rewards", [[1, 1, 1, 1], [0, 0], [1]])
def test_constant_group_with_eps_zero_gives_zeros_not_nan(rewards):
    """``eps: 0`` is an allowed GRPO parameter; a constant group must still give 0, not 0/0."""
    got = group_normalise(rewards, eps=0.0)
    assert np.all(np.isfinite(got)), got
    assert got.tolist() == [0.0] * len(rewards)


def test_singleton_and_empty_groups():
    assert group_normalise([1.0]).tolist() == [0.0]
    assert group_normalise([0.0], std="population").tolist() == [0.0]
    assert group_normalise([]).tolist() == []


# -------------------------------------------------------------------- loss
L = [[-1.0, -2.0, -0.5], [-0.3, -1.2, -4.0]]
A = [[0.5, 0.5, 0.5], [-1.0, 2.0, 3.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]  # the second sequence has one padding token


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor, expected) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-7)


def test_unclipped_on_policy_grpo_aggregation_value_and_gradient():
    logp = leaf(L)
    loss, stats = policy_loss(logp, t(A), t(MASK), LossConfig(clip=False, aggregation="grpo"))
    # row 0: -(0.5 * (-1 - 2 - 0.5)) / 3 = 0.58333; row 1: -(0.3 - 2.4) / 2 = 1.05; mean 0.81667
    assert loss.item() == pytest.approx((1.75 / 3 + 1.05) / 2)
    assert loss.item() == pytest.approx(0.8166666667)
    loss.backward()
    # d/dlogp = -A * m / (n_tokens_i * B)
    expected = [[-0.5 / 6, -0.5 / 6, -0.5 / 6], [1.0 / 4, -2.0 / 4, 0.0]]
    close(logp.grad, expected)
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_unclipped_on_policy_dapo_aggregation_value_and_gradient():
    logp = leaf(L)
    loss, _ = policy_loss(logp, t(A), t(MASK), LossConfig(clip=False, aggregation="dapo"))
    assert loss.item() == pytest.approx((1.75 + 2.1) / 5)  # global token mean over 5 loss tokens
    loss.backward()
    expected = [[-0.1, -0.1, -0.1], [0.2, -0.4, 0.0]]
    close(logp.grad, expected)


def test_padding_tokens_do_not_affect_value_or_gradient():
    cfg = LossConfig(clip=False, aggregation="grpo")
    a, b = leaf(L), leaf([[-1.0, -2.0, -0.5], [-0.3, -1.2, -99.0]])
    la, _ = policy_loss(a, t(A), t(MASK), cfg)
    lb, _ = policy_loss(b, t([[0.5] * 3, [-1.0, 2.0, 1e6]]), t(MASK), cfg)
    assert la.item() == pytest.approx(lb.item())
    lb.backward()
    assert b.grad[1, 2].item() == 0.0


def test_clipped_on_policy_value_and_same_gradient_as_reinforce():
    logp = leaf(L)
    loss, stats = policy_loss(logp, t(A), t(MASK), LossConfig(clip=True))
    # ratio 1 everywhere: per token -A; row 0: -0.5, row 1: -(-1 + 2) / 2 = -0.5
    assert loss.item() == pytest.approx(-0.5)
    assert stats["clip_fraction"] == 0.0
    loss.backward()
    close(logp.grad, [[-0.5 / 6] * 3, [1.0 / 4, -2.0 / 4, 0.0]])


# ratios r = pi / pi_old by token; advantages +1 on row 0 and -1 on row 1
RATIOS = [[1.0, 1.5, 0.5], [0.5, 1.5, 1.1]]
A_PM = [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]


def clipped_case(cfg: LossConfig):
    logp = leaf(L)
    old = t(L) - torch.log(t(RATIOS))
    loss, stats = policy_loss(
        logp, t(A_PM), torch.ones(2, 3, dtype=torch.float64), cfg, old_logprobs=old
    )
    loss.backward()
    return loss.item(), logp.grad, stats


def test_clipped_surrogate_value_and_which_tokens_get_no_gradient():
    value, grad, stats = clipped_case(LossConfig(clip=True, epsilon=0.2))
    # row 0 (A>0): -min(r, clip(r)) = [-1, -1.2, -0.5]        -> mean -0.9
    # row 1 (A<0): max(r, clip(r))  = [0.8, 1.5, 1.1]         -> mean 1.13333
    assert value == pytest.approx((-0.9 + 3.4 / 3) / 2)
    # d/dlogp of -A r is -A r where unclipped, 0 where the clipped branch is taken
    close(grad, [[-1.0 / 6, 0.0, -0.5 / 6], [0.0, 1.5 / 6, 1.1 / 6]])
    assert grad[0, 1].item() == 0.0  # A > 0 and r > 1 + eps
    assert grad[1, 0].item() == 0.0  # A < 0 and r < 1 - eps
    assert stats["clip_fraction"] == pytest.approx(2 / 6)
    assert stats["ratio_mean"] == pytest.approx(sum(map(sum, RATIOS)) / 6)


def test_epsilon_high_widens_only_the_upper_clip():
    value, grad, stats = clipped_case(LossConfig(clip=True, epsilon=0.2, epsilon_high=0.6))
    # r = 1.5 < 1.6 is no longer clipped for A > 0; r = 0.5 < 0.8 still is for A < 0
    assert value == pytest.approx((-(1.0 + 1.5 + 0.5) / 3 + 3.4 / 3) / 2)
    close(grad, [[-1.0 / 6, -1.5 / 6, -0.5 / 6], [0.0, 1.5 / 6, 1.1 / 6]])
    assert stats["clip_fraction"] == pytest.approx(1 / 6)
    value, grad, _ = clipped_case(LossConfig(clip=True, epsilon=0.6, epsilon_high=0.2))
    # lower bound 0.4: r = 0.5 unclipped for A < 0; upper 1.2: r = 1.5 still clipped for A > 0
    close(grad, [[-1.0 / 6, 0.0, -0.5 / 6], [0.5 / 6, 1.5 / 6, 1.1 / 6]])


def test_unclipped_off_policy_is_importance_weighted():
    value, grad, _ = clipped_case(LossConfig(clip=False))
    # -A r: row 0 -(1 + 1.5 + 0.5)/3 = -1; row 1 (0.5 + 1.5 + 1.1)/3
    assert value == pytest.approx((-1.0 + 3.1 / 3) / 2)
    close(grad, [[-1.0 / 6, -1.5 / 6, -0.5 / 6], [0.5 / 6, 1.5 / 6, 1.1 / 6]])


def test_unclipped_logprob_objective_ignores_behaviour_logprobs():
    """SRPO ``training/srpo_loss.py::compute_policy_loss_srpo``: ``-(adv * mean_t log_prob)
    .mean()`` whatever ``old_log_prob`` is, in every minibatch (it never reads it)."""
    value, grad, stats = clipped_case(LossConfig(clip=False, unclipped_objective="logprob"))
    # row 0 (A = +1): -(-1 - 2 - 0.5) / 3 = 3.5 / 3; row 1 (A = -1): (-0.3 - 1.2 - 4) / 3
    assert value == pytest.approx((3.5 / 3 - 5.5 / 3) / 2)
    assert value == pytest.approx(-1 / 3)
    # d/dlogp = -A / (3 tokens * 2 rows): the ratios [1, 1.5, 0.5], ... play no part
    close(grad, [[-1.0 / 6] * 3, [1.0 / 6] * 3])
    assert stats["ratio_mean"] == pytest.approx(sum(map(sum, RATIOS)) / 6)  # still reported
    # on-policy (no old log-probs) both objectives are -A log pi
    on = [
        policy_loss(leaf(L), t(A), t(MASK), LossConfig(clip=False, unclipped_objective=o))[0]
        for o in ("ratio", "logprob")
    ]
    assert on[0].item() == on[1].item() == pytest.approx(0.8166666667)


def test_only_a_ratio_needs_behaviour_logprobs():
    assert not needs_old_logprobs(LossConfig(clip=True), 1)  # one pass: pi_old = pi
    assert needs_old_logprobs(LossConfig(clip=True), 2)
    assert needs_old_logprobs(LossConfig(clip=False), 4)  # unclipped ratio: -A r
    assert not needs_old_logprobs(LossConfig(clip=False, unclipped_objective="logprob"), 4)
    logprob_kl = LossConfig(clip=False, unclipped_objective="logprob", beta=0.1)
    assert not needs_old_logprobs(logprob_kl, 4)  # plain k3 needs the reference only
    assert needs_old_logprobs(logprob_kl.model_copy(update={"kl_ratio_correction": True}), 4)


# two sequences, the second with one padding token; advantages 0: the loss is the KL alone
KL_LOGP = [[-1.0, -1.0, -2.0], [-0.5, -3.0, -1.0]]
KL_REF = [[-1.5, -1.0, -1.0], [-0.5, -1.0, 0.0]]  # delta = ref - logp: [-.5, 0, 1], [0, 2, 1]
K3 = [[math.exp(-0.5) - 0.5, 0.0, math.e - 2], [0.0, math.exp(2) - 3, math.e - 2]]


def kl_case(cfg: LossConfig):
    logp = leaf(KL_LOGP)
    loss, stats = policy_loss(
        logp, t([[0.0] * 3] * 2), t(MASK), cfg, ref_logprobs=t(KL_REF), num_sequences=2
    )
    loss.backward()
    return loss.item(), logp.grad, stats


def test_kl_summed_over_tokens_and_averaged_over_sequences():
    """VinePPO ``trainers/ppo_trainer.py::PPOTrainer._compute_actor_loss``:
    ``kl_ctl * clamp(k3 * mask, 0, 10).sum(dim=1).mean()`` added to the policy loss."""
    assert K3[0] == pytest.approx([0.10653066, 0.0, 0.71828183])
    assert K3[1][1] == pytest.approx(4.3890561)
    beta = 0.1
    seq = LossConfig(clip=True, beta=beta, aggregation="dapo", kl_reduction="sequence_sum")
    value, grad, stats = kl_case(seq)
    # (0.82481249 + 4.3890561) / 2 sequences; the padding token's k3 (0.718) is not counted
    assert value == pytest.approx(beta * (0.82481249 + 4.3890561) / 2)
    # d/dlogp k3 = 1 - e^delta, divided by the 2 sequences only (not the 5 tokens)
    close(
        grad,
        [
            [beta * (1 - math.exp(d)) / 2 for d in (-0.5, 0.0, 1.0)],
            [0.0, beta * (1 - math.exp(2)) / 2, 0.0],
        ],
    )
    assert stats["kl"] == pytest.approx((0.82481249 + 4.3890561) / 5)
    # the same with grpo aggregation: the KL term does not follow the policy's aggregation
    assert kl_case(seq.model_copy(update={"aggregation": "grpo"}))[0] == pytest.approx(value)
    # token_mean (the default): inside the dapo token mean, 5 tokens
    tok_mean = kl_case(LossConfig(clip=True, beta=beta, aggregation="dapo"))[0]
    assert tok_mean == pytest.approx(beta * (0.82481249 + 4.3890561) / 5)


def test_kl_clamp_caps_each_tokens_k3():
    """VinePPO ``trainers/klLoss.jsonnet``: kl_penalty_loss_clip_min 0, clip_max 10."""
    beta = 0.1
    cfg = LossConfig(beta=beta, aggregation="dapo", kl_reduction="sequence_sum", kl_clamp=1.0)
    value, grad, _ = kl_case(cfg)
    # 4.389 is clamped to 1 and has no gradient; the others are below the clamp
    assert value == pytest.approx(beta * (0.82481249 + 1.0) / 2)
    close(grad, [[beta * (1 - math.exp(d)) / 2 for d in (-0.5, 0.0, 1.0)], [0.0, 0.0, 0.0]])
    # clamp 10 (VinePPO's): nothing here reaches it
    assert kl_case(cfg.model_copy(update={"kl_clamp": 10.0}))[0] == pytest.approx(
        beta * (0.82481249 + 4.3890561) / 2
    )


def test_k3_kl_value_and_gradient():
    logp = leaf([[-1.0, -1.0, -2.0]])
    ref = t([[-1.5, -1.0, -1.0]])  # delta = ref - logp = [-0.5, 0, 1]
    cfg = LossConfig(clip=False, beta=0.1)
    loss, stats = policy_loss(
        logp, t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 1.0]]), cfg, ref_logprobs=ref
    )
    kl = [math.exp(-0.5) + 0.5 - 1, 0.0, math.e - 2]
    assert kl == pytest.approx([0.10653066, 0.0, 0.71828183])
    assert stats["kl"] == pytest.approx(sum(kl) / 3)
    assert loss.item() == pytest.approx(0.1 * sum(kl) / 3)
    loss.backward()
    # d/dlogp [e^delta - delta - 1] = 1 - e^delta
    close(logp.grad, [[0.1 * (1 - math.exp(d)) / 3 for d in (-0.5, 0.0, 1.0)]])


def test_kl_needs_reference_logprobs():
    with pytest.raises(ValueError, match="reference"):
        policy_loss(leaf(L), t(A), t(MASK), LossConfig(beta=0.04))


@pytest.mark.parametrize("aggregation", ["grpo", "dapo"])
def test_micro_batch_normalisers_make_halves_sum_to_the_full_loss(aggregation):
    torch.manual_seed(0)
    logp_full = torch.randn(4, 5, dtype=torch.float64).requires_grad_()
    adv = torch.randn(4, 5, dtype=torch.float64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    old = logp_full.detach() + 0.1 * torch.randn(4, 5, dtype=torch.float64)
    cfg = LossConfig(clip=True, aggregation=aggregation)
    full, _ = policy_loss(logp_full, adv, mask, cfg, old_logprobs=old)
    full.backward()
    logp_parts = logp_full.detach().clone().requires_grad_()
    parts = []
    for rows in (slice(0, 2), slice(2, 4)):
        part, _ = policy_loss(
            logp_parts[rows],
            adv[rows],
            mask[rows],
            cfg,
            old_logprobs=old[rows],
            num_items=mask.sum().item(),
            num_sequences=4,
        )
        part.backward()
        parts.append(part.item())
    assert sum(parts) == pytest.approx(full.item())
    close(logp_parts.grad, logp_full.grad)
    # alone, a micro-batch is normalised by its own size (7 of 12 tokens, 2 of 4 rows)
    alone, _ = policy_loss(logp_full[:2], adv[:2], mask[:2], cfg, old_logprobs=old[:2])
    scale = 12 / 7 if aggregation == "dapo" else 2.0
    assert alone.item() == pytest.approx(parts[0] * scale)


# ------------------------------------------------------------- trajectories
def test_set_credit_broadcasts_a_scalar_and_keeps_masks():
    tr = traj(4)
    assert tr.set_credit(0.5) is tr
    assert tr.advantages == [0.5] * 4 and tr.loss_mask is None
    tr.set_credit(2)
    assert tr.advantages == [2.0] * 4 and all(isinstance(a, float) for a in tr.advantages)
    tr.set_credit(np.float64(-1.5), loss_mask=[0, 1, 1, 0])
    assert tr.advantages == [-1.5] * 4 and tr.loss_mask == [0.0, 1.0, 1.0, 0.0]
    tr.set_credit([1, 2, 3, 4])
    assert tr.advantages == [1.0, 2.0, 3.0, 4.0] and tr.loss_mask is None


def test_set_credit_rejects_wrong_lengths():
    tr = traj(3)
    with pytest.raises(ValueError, match="2 advantages"):
        tr.set_credit([1.0, 2.0])
    with pytest.raises(ValueError, match="4 mask entries for 3 tokens"):
        tr.set_credit(1.0, loss_mask=[1, 1, 1, 1])
    assert tr.advantages is None


def test_batch_pads_prompts_left_and_completions_right():
    a = traj(n_completion=3, n_prompt=2, start=10).set_credit([0.1, 0.2, 0.3], loss_mask=[0, 1, 1])
    b = traj(n_completion=1, n_prompt=4, start=20).set_credit(-1.0)
    batch = Batch.from_trajectories([a, b], pad_id=0)
    assert len(batch) == 2
    assert batch.prompt_ids.tolist() == [[0, 0, 10, 11], [20, 21, 22, 23]]
    assert batch.prompt_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch.completion_ids.tolist() == [[60, 61, 62], [70, 0, 0]]
    assert batch.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.loss_mask.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    close(batch.advantages, [[0.1, 0.2, 0.3], [-1.0, 0.0, 0.0]])
    assert batch.advantages.dtype == batch.loss_mask.dtype == torch.float32
    assert batch.old_logprobs is None and batch.ref_logprobs is None
    sel = batch.select([1])
    assert sel.prompt_ids.tolist() == [[20, 21, 22, 23]] and sel.loss_mask.tolist() == [
        [1.0, 0.0, 0.0]
    ]


def test_batch_handles_empty_completion():
    a = traj(n_completion=0).set_credit(1.0)
    batch = Batch.from_trajectories([a], pad_id=7)
    assert batch.completion_ids.tolist() == [[7]]
    assert batch.completion_mask.tolist() == [[0]] and batch.loss_mask.tolist() == [[0.0]]


def test_batch_requires_advantages():
    with pytest.raises(ValueError, match=r"\[1\] have no advantages"):
        Batch.from_trajectories([traj().set_credit(1.0), traj()], pad_id=0)
    with pytest.raises(ValueError, match="no trajectories"):
        Batch.from_trajectories([], pad_id=0)


def test_micro_batches_group_rows_of_similar_completion_length():
    lengths = [5, 1, 4, 2, 3]
    batch = Batch.from_trajectories([traj(n).set_credit(1.0) for n in lengths], pad_id=0)
    assert batch.micro_batches(2) == [[1, 3], [4, 2], [0]]  # lengths 1,2 | 3,4 | 5
    assert batch.micro_batches(None) == [[1, 3, 4, 2, 0]]  # one micro-batch
    assert batch.select([]).micro_batches(None) == []  # an empty (padding) minibatch


def test_trimmed_drops_only_all_padding_columns():
    """Rows 1 and 3 of a batch padded for a 4-token prompt and a 5-token completion: a
    micro-batch of them has prompts of at most 3 tokens and completions of at most 2."""
    trajs = [traj(5, n_prompt=4), traj(1, n_prompt=2), traj(4), traj(2, n_prompt=3), traj(3)]
    batch = Batch.from_trajectories([t.set_credit(float(i)) for i, t in enumerate(trajs)], 0)
    batch.old_logprobs = torch.arange(25.0).reshape(5, 5)
    part = batch.select([1, 3])
    cut = part.trimmed()
    assert cut.prompt_ids.tolist() == [[0, 10, 11], [10, 11, 12]]
    assert cut.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert cut.completion_ids.tolist() == [[60, 0], [60, 61]]
    assert cut.completion_mask.tolist() == [[1, 0], [1, 1]]
    assert cut.advantages.tolist() == [[1.0, 0.0], [3.0, 3.0]]
    assert cut.loss_mask.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert cut.old_logprobs.tolist() == [[5.0, 6.0], [15.0, 16.0]]
    assert cut.ref_logprobs is None
    assert batch.trimmed() is batch  # nothing to drop
    empty = Batch.from_trajectories([traj(0).set_credit(1.0)], 0).trimmed()
    assert empty.completion_ids.size(1) == 1  # an empty completion keeps one column


def test_trimmed_micro_batches_give_the_full_batch_loss_and_gradient():
    """Gradient accumulation over length-sorted micro-batches, each at its own width, gives
    the one-batch loss and gradient (``Trainer.policy_update``'s loop)."""
    from creditbench.config import TinyModelConfig
    from creditbench.loss import batch_loss, completion_logprobs
    from creditbench.model import build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer("0123456789+-*=\nA:")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = TinyModelConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
        model = build_tiny_model(cfg, tok).double()
    gen = torch.Generator().manual_seed(1)
    trajs = []
    for n_p, n_c in [(3, 9), (6, 2), (4, 5), (5, 1), (2, 7), (6, 8)]:
        t = traj(n_c, n_prompt=n_p, start=5)
        t.prompt_ids = torch.randint(5, len(tok), (n_p,), generator=gen).tolist()
        t.completion_ids = torch.randint(5, len(tok), (n_c,), generator=gen).tolist()
        trajs.append(t.set_credit(float(torch.randn(1, generator=gen))))
    batch = Batch.from_trajectories(trajs, tok.pad_token_id)
    cfg = LossConfig()
    n_items, n_seq = float(batch.completion_mask.sum()), len(batch)

    def accumulate(size, trim):
        model.zero_grad(set_to_none=True)
        total, widths = 0.0, []
        for idx in batch.micro_batches(size):
            part = batch.select(idx).trimmed() if trim else batch.select(idx)
            lp = completion_logprobs(
                model, part.prompt_ids, part.prompt_mask, part.completion_ids,
                part.completion_mask,
            )  # fmt: skip
            loss, _ = batch_loss(lp, part, cfg, n_items, n_seq)
            loss.backward()
            total += loss.item()
            widths.append(part.prompt_ids.size(1) + part.completion_ids.size(1))
        return total, torch.cat([q.grad.flatten() for q in model.parameters()]), widths

    loss, grad, (width,) = accumulate(None, False)
    assert width == 6 + 9
    loss2, grad2, widths = accumulate(2, True)
    # completions 1, 2 | 5, 7 | 8, 9 (prompts 5, 6 | 4, 2 | 6, 3)
    assert widths == [6 + 2, 4 + 7, 6 + 9]
    assert loss2 == pytest.approx(loss, rel=1e-12)
    torch.testing.assert_close(grad2, grad, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------- ledger
def test_ledger_accumulates_tokens_by_purpose():
    led = Ledger()
    led.add_tokens("rollout", generated=10, forwarded=30)
    led.add_tokens("rollout", generated=5, forwarded=7)
    led.add_tokens("reference", forwarded=100)
    assert led.generated["rollout"] == 15 and led.forwarded["rollout"] == 37
    assert (led.total_generated, led.total_forwarded) == (15, 137)


def test_ledger_phase_times_and_does_not_double_count_nesting(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 10.0, 20.0, 20.5, 30.0, 31.0])
    monkeypatch.setattr(ledger_module.time, "perf_counter", lambda: next(clock))
    led = Ledger()
    # generate opens at t = 0; the nested generate is not timed again; score runs t = 1 .. 3
    with led.phase("generate"), led.phase("generate"), led.phase("score"):
        pass
    # generate closes at t = 10
    with led.phase("generate"):  # t = 20 .. 20.5
        pass
    assert dict(led.seconds) == {"generate": 10.5, "score": 2.0}
    with pytest.raises(RuntimeError), led.phase("x"):
        raise RuntimeError("boom")
    assert "x" not in led._open and led.seconds["x"] == 1.0


def test_ledger_round_trips_through_dict():
    led = Ledger()
    led.add_tokens("rollout", generated=12, forwarded=40)
    led.add_tokens("gradient", generated=3, forwarded=52)
    led.seconds["generate"] = 1.25
    d = led.to_dict()
    assert d == {
        "generated_tokens": {"gradient": 3, "rollout": 12},
        "forwarded_tokens": {"gradient": 52, "rollout": 40},
        "seconds": {"generate": 1.25},
        "total_generated_tokens": 15,
        "total_forwarded_tokens": 92,
    }
    again = Ledger.from_dict(d)
    assert again.to_dict() == d
    again.add_tokens("rollout", generated=1)
    assert again.total_generated == 16


# ---------------------------------------------------------------- grpo credit
def grpo(**params):
    module = load_method("grpo")
    return module.Method(module.Params(**params), SimpleNamespace(run=None))


def test_grpo_gives_every_token_its_groups_normalised_reward():
    g1 = Group([traj(2, 1.0), traj(3, 0.0), traj(1, 0.0), traj(4, 0.0)])
    g2 = Group([traj(2, 1.0), traj(2, 1.0)])
    trained = grpo().advantages([g1, g2])
    assert trained == g1.trajectories + g2.trajectories
    hi, lo = 0.75 / 0.5001, -0.25 / 0.5001
    assert [tr.advantages for tr in trained[:4]] == [
        pytest.approx([hi] * 2),
        pytest.approx([lo] * 3),
        pytest.approx([lo]),
        pytest.approx([lo] * 4),
    ]
    assert [tr.advantages for tr in trained[4:]] == [[0.0, 0.0], [0.0, 0.0]]
    assert all(tr.loss_mask is None for tr in trained)


def test_grpo_params_select_the_normalisation():
    g = Group([traj(1, 1.0), traj(1, 0.0), traj(1, 0.0), traj(1, 0.0)])
    assert [tr.advantages[0] for tr in grpo(std="none").advantages([g])] == pytest.approx(
        [0.75, -0.25, -0.25, -0.25]
    )
    got = [tr.advantages[0] for tr in grpo(std="population").advantages([g])]
    assert got == pytest.approx([1.73165090, -0.57721697, -0.57721697, -0.57721697], abs=1e-8)


def test_grpo_with_eps_zero_gives_a_constant_group_zero_advantages():
    g = Group([traj(2, 1.0), traj(2, 1.0), traj(2, 1.0)])
    trained = grpo(eps=0.0).advantages([g])
    assert [tr.advantages for tr in trained] == [[0.0, 0.0]] * 3
