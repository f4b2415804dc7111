"""Reward components: the format checks and their composition with weights and params."""

from __future__ import annotations

import pytest

from rlvr.rewards import REWARDS, compose_reward
from rlvr.tasks import TASKS

TASK = TASKS.get("addition")(TASKS.get("addition").Params())
PROBLEM = TASK.sample_problems(1, seed=0)[0]


def _compose(weights, completion, params=None):
    return compose_reward(weights, TASK, PROBLEM, completion, TASK.score(PROBLEM, completion), params)


def test_think_answer_format_reward():
    good = "<think>carry the one</think><answer>=> 5</answer>"
    assert _compose({"think_answer_format": 1.0}, good) == (1.0, {"think_answer_format": 1.0})
    for bad in ("=> 5", "<answer>5</answer><think>x</think>", "<think>a</think><think>b</think><answer>5</answer>"):
        assert _compose({"think_answer_format": 1.0}, bad)[0] == 0.0, bad


def test_regex_format_reward_takes_its_pattern_from_params():
    params = {"regex_format": {"pattern": r"(\d\+\d=\d+ )*=> \d+"}}
    assert _compose({"regex_format": 0.25}, "1+2=3 => 3", params) == (0.25, {"regex_format": 1.0})
    assert _compose({"regex_format": 0.25}, "the answer is 3", params) == (0.0, {"regex_format": 0.0})
    with pytest.raises(TypeError):
        _compose({"regex_format": 1.0}, "=> 3")  # the pattern is required


def test_weighted_sum_of_components():
    answer = PROBLEM.answer
    total, parts = _compose({"correctness": 1.0, "format": 0.5}, f"=> {answer}")
    assert (total, parts) == (1.5, {"correctness": 1.0, "format": 1.0})
    total, parts = _compose({"correctness": 1.0, "format": 0.5}, f"=> {int(answer) + 1}")
    assert (total, parts) == (0.5, {"correctness": 0.0, "format": 1.0})


def test_registered_rewards():
    assert {"correctness", "format", "think_answer_format", "regex_format"} <= set(REWARDS.names())
