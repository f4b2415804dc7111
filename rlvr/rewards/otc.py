"""OTC: reward correct answers more when they take the fewest tool calls (Wang et al. 2025,
"OTC: Optimal Tool Calls via Reinforcement Learning", OTC-GRPO / OTC-PPO)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlvr.rewards.shaping import REWARD_SHAPERS, ShapingInputs


def otc_tool_reward(m: int, n: int | None, c: float) -> float:
    """r_tool for an episode with ``m`` tool calls when the fewest calls that solved the
    problem is ``n`` (None: unknown, nobody solved it yet).

    OTC-GRPO, with f(m, n) = 0 if m = n = 0; m if n = 0; 2nm / (m + n) otherwise:

        r_tool = 1                           if f(m, n) = n = 0
               = cos(m * pi / (2m + c))      if n = 0          (calls where none were needed)
               = sin(f(m, n) * pi / (2n))    otherwise         (peaks at m = n, falls on both sides)

    With n unknown, OTC-PPO's r_tool = cos(m * pi / (2m + c)) (fewer calls, more reward).
    """
    if n is None or n == 0:
        return 1.0 if m == 0 else math.cos(m * math.pi / (2 * m + c))
    f = 2 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


@REWARD_SHAPERS.register("otc")
def otc_shaping(inputs: ShapingInputs, *, alpha: float = 1.0, c: float = 1.0) -> Tensor:
    """OTC tool-use reward: a correct episode's reward is scaled by the tool reward,

        new reward = reward * alpha * r_tool(m, n)   if correct
                   = reward                          otherwise

    where m is the episode's tool calls and n the fewest tool calls among the correct
    episodes of its group (this step's estimate of the problem's optimal call count; the
    paper keeps the minimum seen over training, ours is per group, so it needs no state).

    Params:
        alpha: scale of the tool reward (the paper's alpha), default 1.
        c: smoothing constant of the cosine branch, > 0 (larger: gentler decay), default 1.
    """
    if inputs.tool_calls is None:
        raise ValueError("otc needs ShapingInputs.tool_calls (a multi-turn environment with tools)")
    if c <= 0:
        raise ValueError(f"otc: c must be > 0, got {c}")
    calls = inputs.tool_calls.tolist()
    correct = inputs.correct.tolist()
    fewest: dict[int, int] = {}
    for group, m, ok in zip(inputs.group_ids.tolist(), calls, correct):
        if ok:
            fewest[group] = min(fewest.get(group, m), m)
    scale = [alpha * otc_tool_reward(m, fewest.get(group), c) if ok else 1.0
             for group, m, ok in zip(inputs.group_ids.tolist(), calls, correct)]
    return inputs.rewards * torch.tensor(scale, dtype=inputs.rewards.dtype, device=inputs.rewards.device)
