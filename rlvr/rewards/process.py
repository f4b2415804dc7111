"""Process rewards: credit per reasoning step, from a step checker (the task's own: the
addition scratchpad's column sums are checkable; ``Task.step_checks``).

Two ways in, usable together:

- the ``process`` reward component: the steps' scores aggregated into one number per
  response, ``min`` (a chain is as good as its worst step; PRM800K / Lightman et al. 2023's
  scoring), ``last``, ``mean`` or ``product`` (the probability that every step is right);
- ``reward.step_rewards.coef > 0``: token-level rewards, coef x the step's score on the last
  token of each step, which returns-to-go estimators (``reinforce_pp``, ``gae``) credit to the
  tokens before it (step-level credit as in P-GRPO, VSRM, MRT); outcome estimators (``grpo``)
  fold their sum into the response's score. ``delta: true`` rewards each step by the change of
  score from the step before, coef x (s_k - s_{k-1}) with s_0 = 0: the sum telescopes to
  coef x s_K, so a policy cannot earn more by writing more steps (the "Delta" guard of "On
  Designing Effective RL Reward at Training Time", Gao et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from rlvr.rewards import REWARDS
from rlvr.tasks.base import Problem, Score, Task

AGGREGATES = {"min": min, "last": lambda v: v[-1], "mean": lambda v: sum(v) / len(v), "product": math.prod}


@REWARDS.register("process")
def process_reward(task: Task, problem: Problem, completion: str, score: Score, *,
                   aggregate: Literal["min", "last", "mean", "product"] = "mean") -> float:
    """The task's step scores of the completion aggregated (``min``, ``last``, ``mean``,
    ``product``); 0.0 for a completion with no step."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    values = [value for _, value in task.step_checks(problem, completion)]
    return float(AGGREGATES[aggregate](values)) if values else 0.0


def step_token_rewards(checks: list[tuple[int, float]], char_ends: list[int], coef: float,
                       delta: bool = False) -> list[float]:
    """Per response token: coef x each step's score (or its change, ``delta``) on the token
    where the step's text ends; ``char_ends[i]`` is how many characters tokens 0..i decode to.
    A step ending inside a token is credited to that token; steps beyond the text, to the last."""
    rewards = [0.0] * len(char_ends)
    if not char_ends:
        return rewards
    previous = 0.0
    for end, value in checks:
        token = next((i for i, chars in enumerate(char_ends) if chars >= end), len(char_ends) - 1)
        rewards[token] += coef * (value - previous if delta else value)
        previous = value
    return rewards


def decoded_ends(tokenizer: Any, response_ids: list[int]) -> list[int]:
    """How many characters of the decoded response each token prefix covers (the text the
    step checker read: special tokens skipped)."""
    ends, text_ids = [], []
    for token in response_ids:
        text_ids.append(token)
        ends.append(len(tokenizer.decode(text_ids, skip_special_tokens=True)))
    return ends
