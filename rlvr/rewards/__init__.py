"""Rewards: named components, each a function of (task, problem, completion, score), summed
with the weights in ``reward.components``. Every component is logged on its own.

A component that also takes an ``episode`` keyword gets the multi-turn trajectory (tool
calls, turns, the environment's own rewards); in single-turn runs ``episode`` is None."""

from __future__ import annotations

import inspect
from functools import lru_cache
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


@REWARDS.register("environment")
def environment_reward(task: Task, problem: Problem, completion: str, score: Score, *, episode: Any) -> float:
    """The multi-turn environment's per-turn rewards summed over the episode (e.g. the
    try-again environment's decayed success and repetition penalty); 0.0 single-turn."""
    return float(episode.env_reward) if episode is not None else 0.0


@REWARDS.register("tool_calls")
def tool_calls_reward(task: Task, problem: Problem, completion: str, score: Score, *, episode: Any,
                      cap: int = 0) -> float:
    """The number of tool calls of the episode (capped at ``cap`` when > 0): with a negative
    weight a per-call cost, with a positive one a bonus; 0.0 single-turn. For a cost that
    only charges *unnecessary* calls see the ``otc`` shaper."""
    calls = episode.tool_calls if episode is not None else 0
    return float(min(calls, cap) if cap > 0 else calls)


@lru_cache(maxsize=None)
def _takes_episode(fn: RewardFn) -> bool:
    return "episode" in inspect.signature(fn).parameters


def compose_reward(
    weights: dict[str, float], task: Task, problem: Problem, completion: str, score: Score,
    params: dict[str, dict[str, Any]] | None = None, episode: Any = None,
) -> tuple[float, dict[str, float]]:
    """Weighted sum of the named components, each called with its keyword ``params`` (and
    ``episode`` when it takes one); returns (total, {name: unweighted value})."""
    params = params or {}
    parts = {}
    for name in weights:
        fn = REWARDS.get(name)
        extra = {"episode": episode} if _takes_episode(fn) else {}
        parts[name] = float(fn(task, problem, completion, score, **params.get(name, {}), **extra))
    return sum(weights[name] * value for name, value in parts.items()), parts


from rlvr.rewards import otc as _otc  # noqa: E402,F401  (registers the "otc" shaper)
