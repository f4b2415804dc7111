"""Process rewards: credit per reasoning step, from a step scorer (``reward.step_rewards.
scorer``):

- ``task``: the task's own step checker (``Task.step_checks``: the addition scratchpad's
  column sums are checkable), which knows where its steps end;
- ``reward_model``: a process reward model, any sequence-classification checkpoint (``path``),
  scoring each prefix of the response that ends at a step, its value P(right so far) (a PRM
  read as an outcome model of prefixes, as Math-Shepherd's labels define step correctness);
- ``judge``: a generative judge (``path``; ``reward.params.judge``'s rubric and options)
  reading each such prefix as the response, its verdict the step's score (no verdict: 0,
  counted in ``judge_parse_failures``).

A learned scorer splits the response at ``delimiter`` (``\n\n`` by default, the usual step
break of chat models; the scratchpad's is a space): step k ends where the k-th non-empty piece
ends, and the last piece is the final answer.

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
    """The step scores of the completion aggregated (``min``, ``last``, ``mean``, ``product``);
    0.0 for a completion with no step. Called alone it reads the task's step checker; in a run
    the judge role scores every response's steps once, with ``reward.step_rewards.scorer``."""
    return aggregate_steps(task.step_checks(problem, completion), aggregate)


def split_steps(completion: str, delimiter: str) -> list[int]:
    """The character offsets where the completion's steps end: the ends of its non-empty
    pieces between ``delimiter``s (the delimiter itself belongs to no step)."""
    ends, start = [], 0
    for piece in completion.split(delimiter):
        if piece.strip():
            ends.append(start + len(piece.rstrip()))
        start += len(piece) + len(delimiter)
    return ends


def step_scores(settings: Any, task: Task, problems: list[Problem], completions: list[str],
                judge_params: dict[str, Any] | None = None) -> list[list[tuple[int, float]]]:
    """Each completion's steps as (end offset, score in [0, 1]) from ``settings.scorer`` (the
    module docstring): the task's checker, or a learned scorer over the prefixes that end at the
    steps, every prefix of the batch scored in one batched call."""
    if settings.scorer == "task":
        return [task.step_checks(problem, text) for problem, text in zip(problems, completions)]
    ends = [split_steps(text, settings.delimiter) for text in completions]
    owners = [(i, end) for i, row in enumerate(ends) for end in row]
    prompts = [problems[i].prompt for i, _ in owners]
    prefixes = [completions[i][:end] for i, end in owners]
    if settings.scorer == "reward_model":
        from rlvr.rewards.learned import load_reward_model, render, score_texts

        loaded = load_reward_model(str(settings.path))
        values = score_texts(loaded, [render(loaded.tokenizer, p, x) for p, x in zip(prompts, prefixes)])
    else:
        from rlvr.rewards.judge import judge_values

        values = judge_values(str(settings.path), prompts, prefixes, **{k: v for k, v in (judge_params or {}).items()
                                                                        if k not in ("path", "gate", "clip")})
    out: list[list[tuple[int, float]]] = [[] for _ in completions]
    for (i, end), value in zip(owners, values):
        out[i].append((end, float(value)))
    return out


def aggregate_steps(checks: list[tuple[int, float]], aggregate: str = "mean") -> float:
    """The ``process`` component's value: the step scores aggregated, 0.0 with no step."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    values = [value for _, value in checks]
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
