"""Verifier-free rewards: TTRL's majority-vote pseudo-label, by hand, through the batch
reward path that gives it the extracted answers and the groups, and its step metrics."""

from __future__ import annotations

import math

import pytest

from rlvr.config import load_config
from rlvr.rewards import REWARDS, trl_reward_values
from rlvr.rewards.verifier_free import majority_answers, majority_vote_reward
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks import Problem
from rlvr.training.rl import step_metrics

EXTRACTED = ["12", "12", "13", None, "7", "8", "8", "7", None, None]
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_the_majority_answer_of_each_group_is_its_pseudo_label():
    # group 1 ties 7 and 8 twice each: the answer reached first wins; group 2 has no answer
    assert majority_answers(EXTRACTED, GROUPS) == {0: "12", 1: "7", 2: None}
    assert majority_vote_reward([""] * 10, [""] * 10, extracted=EXTRACTED, groups=GROUPS) == \
        [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_the_batch_path_gives_it_the_answers_and_groups_and_never_the_reference():
    problems = [Problem(id=f"p{g}", prompt="q", answer="12") for g in GROUPS]
    values = trl_reward_values({"majority_vote": 1.0}, problems, [""] * 10, [[1]] * 10, {},
                               verified=[False] * 10, extracted=EXTRACTED, groups=GROUPS)
    assert [v["majority_vote"] for v in values] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert "answer" not in REWARDS.get("majority_vote").__code__.co_varnames


def test_step_metrics_compare_the_pseudo_labels_with_the_verifier():
    answers = {0: "12", 1: "15"}  # group 0's majority (12) is right; group 1's (7) is wrong
    trajectories = []
    for extracted, group in zip(EXTRACTED[:8], GROUPS[:8]):
        t = Trajectory(problem=Problem(id=f"p{group}", prompt="q", answer=answers[group]), group=group,
                       prompt_ids=[1], response_ids=[2, 3], logprobs=[-1.0, -1.0], loss_mask=[1, 1],
                       finish_reason="stop")
        t.extracted, t.correct = extracted, extracted == answers[group]
        trajectories.append(t)
    rewards = majority_vote_reward([""] * 8, [""] * 8, extracted=EXTRACTED[:8], groups=GROUPS[:8])
    for t, r in zip(trajectories, rewards):
        t.reward, t.reward_components = r, {"majority_vote": r}
    record = step_metrics(1, trajectories, load_config(None, ["reward.components={majority_vote: 1.0}"]))
    assert record["majority_label_accuracy"] == 0.5
    assert record["majority_vote_mean"] == pytest.approx(4 / 8)
    assert record["proxy_gold_gap"] == pytest.approx(4 / 8 - 2 / 8)  # pseudo reward 4 of 8, truly right 2 of 8


def test_empo_rewards_each_answer_by_its_share_of_the_group_and_logs_the_semantic_entropy():
    from rlvr.rewards.verifier_free import semantic_entropy_reward

    # group 0: 12 12 13 -, group 1: 7 8 8 7, group 2: - -
    assert semantic_entropy_reward([""] * 10, [""] * 10, extracted=EXTRACTED, groups=GROUPS) == pytest.approx(
        [0.5, 0.5, 0.25, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0])
    trajectories = []
    for extracted, group in zip(EXTRACTED, GROUPS):
        t = Trajectory(problem=Problem(id=f"p{group}", prompt="q", answer="12"), group=group, prompt_ids=[1],
                       response_ids=[2], logprobs=[-1.0], loss_mask=[1], finish_reason="stop")
        t.extracted, t.correct = extracted, extracted == "12"
        t.reward = t.reward_components = None
        trajectories.append(t)
    values = semantic_entropy_reward([""] * 10, [""] * 10, extracted=EXTRACTED, groups=GROUPS)
    for t, r in zip(trajectories, values):
        t.reward, t.reward_components = r, {"semantic_entropy": r}
    record = step_metrics(1, trajectories, load_config(None, ["reward.components={semantic_entropy: 1.0}"]))
    # H0 = -(0.5 ln 0.5 + 0.25 ln 0.25), H1 = ln 2, H2 = 0 (no answer: no cluster)
    h0 = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25))
    assert record["semantic_entropy"] == pytest.approx((h0 + math.log(2) + 0.0) / 3)
    assert record["proxy_gold_gap"] == pytest.approx(sum(values) / 10 - 2 / 10)
