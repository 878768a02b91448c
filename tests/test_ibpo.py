"""IBPO: reference choice, rewrite filter, recoverability shaping, token focus, and training."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from conftest import small_config

from creditbench.config import ChainsTaskConfig
from creditbench.methods import MethodContext, load_method
from creditbench.rollouts import Group, Trajectory
from creditbench.sampling import Generation
from creditbench.tasks.chains import ChainsTask
from creditbench.train import Trainer

ibpo = load_method("ibpo")

# R' = [1, 0.3, 0, 0]: mean 0.325, unbiased var (0.675² + 0.025² + 2·0.325²) / 3 = 0.2225,
# std 0.4716991; A = (R' - 0.325) / (std + 1e-4)
SHAPED_ONE_RECOVERABLE = [1.4306938, -0.0529887, -0.6888526, -0.6888526]
# rewards [1, 0, 0, 0] unshaped: mean 0.25, std 0.5; A = (R - 0.25) / 0.5001
PLAIN_ONE_CORRECT = [1.4997001, -0.4999000, -0.4999000, -0.4999000]


# ------------------------------------------------------------------- reference choice
def test_reference_prefers_a_correct_sibling():
    rng = random.Random(0)
    assert ibpo.choose_reference([0, 0, 1, 0], 0, "first", True, rng) == 2
    assert ibpo.choose_reference([1, 0, 1, 0], 3, "first", True, rng) == 0
    picks = {ibpo.choose_reference([1, 0, 1, 0], 1, "random", True, rng) for _ in range(50)}
    assert picks == {0, 2}  # random draws only among the correct siblings


def test_reference_without_correct_sibling_falls_back_to_a_failed_one_or_skips():
    rng = random.Random(0)
    assert ibpo.choose_reference([0, 0, 0, 0], 0, "first", True, rng) == 1
    assert ibpo.choose_reference([0, 0, 0, 0], 2, "first", True, rng) == 0
    picks = {ibpo.choose_reference([0, 0, 0], 1, "random", True, rng) for _ in range(50)}
    assert picks == {0, 2}  # never the completion itself
    assert ibpo.choose_reference([0, 0, 0, 0], 0, "first", False, rng) is None


# -------------------------------------------------------------------- rewrite filter
def test_normalised_edit_distance_is_levenshtein_over_the_longer_length():
    assert ibpo.normalised_edit_distance("12+3=15\n", "12+3=15\n") == 0.0
    assert ibpo.normalised_edit_distance("7+5=13\n", "7+5=12\n") == pytest.approx(1 / 7)
    assert ibpo.normalised_edit_distance([1, 2, 3, 4], [1, 9, 3]) == pytest.approx(2 / 4)
    assert ibpo.normalised_edit_distance([], []) == 0.0


def test_rewrite_filter_accepts_a_local_repair_and_rejects_a_full_rewrite():
    failed, repair = "7+5=13\n13*3=39\nA:39\n", "7+5=12\n12*3=36\nA:36\n"
    d_repair = ibpo.normalised_edit_distance(failed, repair)
    assert d_repair == pytest.approx(4 / 20)
    assert ibpo.accept_revision(d_repair, 0.5)
    d_rewrite = ibpo.normalised_edit_distance("A:1\n", repair)
    assert d_rewrite == pytest.approx(17 / 20)
    assert not ibpo.accept_revision(d_rewrite, 0.5)


def test_rewrite_filter_accepts_exactly_at_the_threshold():
    d = ibpo.normalised_edit_distance("abcd", "abxy")
    assert d == 0.5
    assert ibpo.accept_revision(d, 0.5)
    assert not ibpo.accept_revision(0.5 + 1e-9, 0.5)


# ------------------------------------------------------------ recoverability shaping
def test_recoverability_is_rho_only_for_an_accepted_repair_of_a_failure():
    assert ibpo.recoverability(0.0, 1.0, True, 0.5) == 0.5
    assert ibpo.recoverability(0.0, 1.0, False, 0.5) == 0.0  # full rewrite: rejected
    assert ibpo.recoverability(0.0, 0.0, True, 0.5) == 0.0  # revision still wrong
    assert ibpo.recoverability(1.0, 1.0, True, 0.5) == 0.0  # correct completion
    assert ibpo.recoverability(0.0, None, False, 0.5) == 0.0  # no revision asked


def test_shaping_without_a_recoverable_revision_is_grpo():
    assert ibpo.shaped_rewards([1, 0, 0, 0], [0, 0, 0, 0], 0.6) == [1, 0, 0, 0]
    adv = ibpo.ibpo_advantages([1, 0, 0, 0], [0, 0, 0, 0], 0.6)
    assert adv == pytest.approx(PLAIN_ONE_CORRECT, abs=1e-6)


def test_shaping_with_one_recoverable_failure_adds_lambda_phi_before_the_norm():
    assert ibpo.shaped_rewards([1, 0, 0, 0], [0, 0.5, 0, 0], 0.6) == pytest.approx([1, 0.3, 0, 0])
    adv = ibpo.ibpo_advantages([1, 0, 0, 0], [0, 0.5, 0, 0], 0.6)
    assert adv == pytest.approx(SHAPED_ONE_RECOVERABLE, abs=1e-6)


def test_all_failed_group_with_one_recoverable_failure_pushes_only_it_up():
    # R' = [0, 0.3, 0, 0]: mean 0.075, std 0.15; A = (R' - 0.075) / 0.1501
    adv = ibpo.ibpo_advantages([0, 0, 0, 0], [0, 0.5, 0, 0], 0.6)
    assert adv == pytest.approx([-0.4996669, 1.4990007, -0.4996669, -0.4996669], abs=1e-6)
    assert ibpo.ibpo_advantages([0, 0, 0, 0], [0, 0, 0, 0], 0.6) == [0, 0, 0, 0]


def test_population_std_is_selectable():
    # R' = [1, 0.3, 0, 0]: population std sqrt(0.6675 / 4) = 0.4085034
    adv = ibpo.ibpo_advantages([1, 0, 0, 0], [0, 0.5, 0, 0], 0.6, std="population", eps=0.0)
    assert adv == pytest.approx([1.6523732, -0.0611990, -0.7955871, -0.7955871], abs=1e-6)


# ------------------------------------------------------------------- edited-token mask
def test_edited_mask_marks_replaced_and_deleted_tokens():
    assert ibpo.edited_token_mask([1, 2, 3, 4], [1, 9, 3, 4], "next") == [0, 1, 0, 0]
    assert ibpo.edited_token_mask([1, 2, 3, 4], [1, 3, 4], "next") == [0, 1, 0, 0]
    assert ibpo.edited_token_mask([1, 2, 3, 4], [1, 2, 3, 4], "next") == [0, 0, 0, 0]
    assert ibpo.edited_token_mask([5, 6], [7, 8, 9], "next") == [1, 1]


def test_edited_mask_maps_insertions_by_the_documented_rule():
    # an insertion before token 2 of [1, 2, 3, 4]
    assert ibpo.edited_token_mask([1, 2, 3, 4], [1, 2, 9, 3, 4], "next") == [0, 0, 1, 0]
    assert ibpo.edited_token_mask([1, 2, 3, 4], [1, 2, 9, 3, 4], "previous") == [0, 1, 0, 0]
    assert ibpo.edited_token_mask([1, 2, 3, 4], [1, 2, 9, 3, 4], "both") == [0, 1, 1, 0]
    # at the end "next" marks the last token; at the start "previous" marks the first
    assert ibpo.edited_token_mask([1, 2, 3], [1, 2, 3, 9], "next") == [0, 0, 1]
    assert ibpo.edited_token_mask([1, 2, 3], [9, 1, 2, 3], "previous") == [1, 0, 0]
    assert ibpo.edited_token_mask([], [9], "next") == []


def test_focus_credit_masks_or_zeroes_the_unchanged_tokens():
    assert ibpo.focus_credit(-0.5, [0.0, 1.0, 0.0], "masked") == ([-0.5] * 3, [0.0, 1.0, 0.0])
    assert ibpo.focus_credit(-0.5, [0.0, 1.0, 0.0], "zero_advantage") == ([0.0, -0.5, 0.0], None)


# ---------------------------------------------------------- the method, on a fake policy
TASK = ChainsTask(ChainsTaskConfig())
PROBLEM = TASK.make_problem(random.Random(3), 3, "p0")
SOLUTION = TASK.solution(PROBLEM)


def _ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def _traj(text: str) -> Trajectory:
    return Trajectory(
        problem=PROBLEM,
        prompt_ids=_ids(PROBLEM.prompt),
        completion_ids=_ids(text),
        text=text,
        reward=TASK.reward(PROBLEM, text),
        purpose="rollout",
        thought_ends=[],
    )


def _local_error(text: str, shift: int = 1) -> str:
    """The solution with the last digit of its answer changed: a one-token error."""
    k = len(text) - 2  # the text ends in "A:<digits>\n"
    return text[:k] + str((int(text[k]) + shift) % 10) + text[k + 1 :]


class FakePolicy:
    """Rollouts are given texts; a revision of a failed text is looked up in a table."""

    def __init__(self, texts: list[list[str]], revisions: dict[str, str]):
        self.texts, self.revisions = texts, revisions
        self.calls: list[dict] = []

    def rollout(self, problems, n, purpose):
        assert purpose == "rollout" and all(len(t) == n for t in self.texts)
        return [[_traj(t) for t in texts] for texts in self.texts]

    def encode_prompt(self, text):
        return _ids(text)

    def generate(self, contexts, *, purpose, temperature=None, max_new_tokens=None):
        self.calls.append({"purpose": purpose, "n": len(contexts), "temperature": temperature})
        out = []
        for ctx in contexts:
            prompt = "".join(map(chr, ctx))
            failed = prompt[len(PROBLEM.prompt) : prompt.index("#")]
            rev = self.revisions[failed]
            out.append(Generation(list(ctx), _ids(rev), rev, "eos"))
        return out


def _method(policy: FakePolicy, **params):
    ctx = SimpleNamespace(
        run=SimpleNamespace(train=SimpleNamespace(group_size=len(policy.texts[0]))),
        rollout=policy.rollout,
        sampler=policy,
        task=TASK,
        step_rng=lambda step, name: MethodContext.step_rng(SimpleNamespace(seed=0), step, name),
        score=lambda problem, text, stop: MethodContext.score(
            SimpleNamespace(task=TASK), problem, text, stop
        ),
        any_process=bool,  # one process (MethodContext.any_process)
    )
    return ibpo.Method(ibpo.Params(**params), ctx)


def test_collect_revises_failures_against_the_correct_sibling_and_shapes_the_group():
    local = _local_error(SOLUTION)  # recoverable: repaired by a local edit
    far = "A:1\n"  # wrong; its "revision" is a full rewrite, rejected
    stuck = _local_error(SOLUTION, shift=2)  # wrong; its revision stays wrong
    policy = FakePolicy(
        [[SOLUTION, local, far, stuck]], {local: SOLUTION, far: SOLUTION, stuck: stuck}
    )
    method = _method(policy, reference_pick="first", revision_temperature=0.0)
    groups = method.collect([PROBLEM], step=0)
    trajs = groups[0].trajectories
    assert policy.calls == [{"purpose": "revision", "n": 3, "temperature": 0.0}]
    assert [t.meta["reference"] for t in trajs] == [None, 0, 0, 0]
    assert [t.meta["revision_reward"] for t in trajs] == [None, 1.0, 1.0, 0.0]
    assert [t.meta["accepted"] for t in trajs] == [None, True, False, True]
    assert [t.meta["phi"] for t in trajs] == [0.0, 0.5, 0.0, 0.0]
    assert trajs[1].meta["revision"] == SOLUTION and trajs[1].meta["revision_ids"] == _ids(SOLUTION)
    assert trajs[1].meta["edit_distance"] == pytest.approx(1 / len(SOLUTION))

    trained = method.advantages(groups)
    assert trained == trajs  # the revisions themselves are never trained on
    for t, a in zip(trained, SHAPED_ONE_RECOVERABLE, strict=True):
        assert t.advantages == pytest.approx([a] * len(t.completion_ids), abs=1e-6)
        assert t.loss_mask is None


def test_collect_without_correct_sibling_skips_revision_when_told_to():
    a, b = _local_error(SOLUTION), "A:1\n"
    policy = FakePolicy([[a, b]], {a: SOLUTION, b: SOLUTION})
    groups = _method(policy, revise_when_no_correct_sibling=False).collect([PROBLEM], step=0)
    assert policy.calls == []
    assert [t.meta["phi"] for t in groups[0].trajectories] == [0.0, 0.0]

    policy = FakePolicy([[a, b]], {a: SOLUTION, b: SOLUTION})
    groups = _method(policy, reference_pick="first").collect([PROBLEM], step=0)
    assert [t.meta["reference"] for t in groups[0].trajectories] == [1, 0]
    assert [t.meta["phi"] for t in groups[0].trajectories] == [0.5, 0.0]  # b: full rewrite


def test_token_focus_credits_only_the_tokens_the_revision_changed():
    local = _local_error(SOLUTION)
    k = len(SOLUTION) - 2  # the one changed character (= token)
    texts = [[SOLUTION, local, "A:1\n", "A:2\n"]]
    revisions = {local: SOLUTION, "A:1\n": "A:1\n", "A:2\n": "A:2\n"}
    expected_mask = [1.0 if j == k else 0.0 for j in range(len(local))]

    method = _method(FakePolicy(texts, revisions), token_focus=True)
    trained = method.advantages(method.collect([PROBLEM], step=0))
    a = SHAPED_ONE_RECOVERABLE[1]
    assert trained[1].loss_mask == expected_mask
    assert trained[1].advantages == pytest.approx([a] * len(local), abs=1e-6)
    assert trained[1].meta["focus_tokens"] == 1
    assert [t.loss_mask for t in trained[::2]] == [None, None]  # others: plain GRPO credit

    method = _method(
        FakePolicy(texts, revisions), token_focus=True, unfocused_tokens="zero_advantage"
    )
    trained = method.advantages(method.collect([PROBLEM], step=0))
    assert trained[1].loss_mask is None
    assert trained[1].advantages == pytest.approx([a * m for m in expected_mask], abs=1e-6)


def test_params_reject_unknown_keys_and_out_of_range_thresholds():
    with pytest.raises(ValueError, match="extra"):
        ibpo.Params(lamda=0.6)
    with pytest.raises(ValueError, match="max_edit_distance"):
        ibpo.Params(max_edit_distance=1.5)
    assert ibpo.DEFAULTS["loss"] == {
        "clip": True,
        "epsilon": 0.2,
        "beta": 0.0,
        "aggregation": "grpo",
    }


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("token_focus", [False, True], ids=["plain", "token_focus"])
def test_ibpo_trains_and_charges_revisions_and_rollouts_to_the_ledger(
    small_experiment, tmp_path, token_focus
):
    runs = {"ibpo": {"method": "ibpo", "token_focus": token_focus, "train": {"steps": 2}}}
    run = small_config(runs=runs).run("ibpo")
    assert run.loss.clip and run.loss.epsilon == 0.2 and run.loss.beta == 0.0
    trainer = Trainer(run, 0, small_experiment["base"], small_experiment["data"], tmp_path / "i")
    groups: list[Group] = []
    collect, advantages = trainer.method.collect, trainer.method.advantages
    trained: list[Trajectory] = []

    def recording_collect(problems, step):
        groups.extend(collect(problems, step))
        return groups[-len(problems) :]

    def recording_advantages(gs):
        trained.extend(advantages(gs))
        return trained[-sum(len(g.trajectories) for g in gs) :]

    trainer.method.collect, trainer.method.advantages = recording_collect, recording_advantages
    ledger = trainer.train()
    assert trainer.step == 2 and (tmp_path / "i" / "model").is_dir()

    rollouts = [t for g in groups for t in g.trajectories]
    assert len(rollouts) == 2 * 4 * 4  # steps x prompts x group size
    assert trained == rollouts  # only the original completions are trained on
    revised = [t for t in rollouts if t.meta["revision"] is not None]
    # with the fallback on, every failed completion is revised
    assert len(revised) == sum(t.reward == 0 for t in rollouts) > 0
    assert ledger["generated_tokens"]["rollout"] == sum(len(t.completion_ids) for t in rollouts)
    assert ledger["generated_tokens"]["revision"] == sum(
        len(t.meta["revision_ids"]) for t in revised
    )
    for t in revised:
        recoverable = t.meta["accepted"] and t.meta["revision_reward"] == 1
        assert t.meta["phi"] == (0.5 if recoverable else 0.0)
        assert t.meta["accepted"] == (t.meta["edit_distance"] <= 0.5)
    for g in groups:
        expected = ibpo.ibpo_advantages(g.rewards, [t.meta["phi"] for t in g.trajectories], 0.6)
        for t, a in zip(g.trajectories, expected, strict=True):
            focused = token_focus and t.meta["phi"] > 0 and t.meta["focus_tokens"] > 0
            assert t.advantages == pytest.approx([a] * len(t.completion_ids), abs=1e-5)
            if focused:
                mask = ibpo.edited_token_mask(t.completion_ids, t.meta["revision_ids"], "next")
                assert t.loss_mask == mask
            else:
                assert t.loss_mask is None
