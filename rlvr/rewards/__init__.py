"""Rewards: named components, each a function of (task, problem, completion, score), summed
with the weights in ``reward.components``. Every component is logged on its own."""

from __future__ import annotations

from typing import Any, Callable

from rlvr.registry import Registry
from rlvr.tasks.base import Problem, Score, Task
from rlvr.tasks.formats import matches_format, think_answer_format

RewardFn = Callable[..., float]  # (task, problem, completion, score, **params) -> float
REWARDS: Registry[RewardFn] = Registry("reward")


@REWARDS.register("correctness")
def correctness_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """The task verifier's reward (1.0 for a right final answer on exact tasks, else 0.0)."""
    return score.reward


@REWARDS.register("format")
def format_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """1.0 when the task can find a final answer in the completion at all, else 0.0."""
    return float(score.extracted is not None)


@REWARDS.register("think_answer_format")
def think_answer_format_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """1.0 for exactly one ``<think>...</think>`` followed by one ``<answer>...</answer>`` (the
    DeepSeek-R1 format reward), else 0.0."""
    return float(think_answer_format(completion))


@REWARDS.register("regex_format")
def regex_format_reward(task: Task, problem: Problem, completion: str, score: Score, *, pattern: str) -> float:
    """1.0 when the whole completion matches ``pattern`` (``reward.params.regex_format.pattern``)."""
    return float(matches_format(completion, pattern))


def compose_reward(
    weights: dict[str, float], task: Task, problem: Problem, completion: str, score: Score,
    params: dict[str, dict[str, Any]] | None = None,
) -> tuple[float, dict[str, float]]:
    """Weighted sum of the named components, each called with its keyword ``params``;
    returns (total, {name: unweighted value})."""
    params = params or {}
    parts = {name: float(REWARDS.get(name)(task, problem, completion, score, **params.get(name, {})))
             for name in weights}
    return sum(weights[name] * value for name, value in parts.items()), parts
