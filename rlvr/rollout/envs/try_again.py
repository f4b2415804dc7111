"""Unary feedback as observation (UFO; Liu et al. 2025, "A Simple 'Try Again' Can Elicit
Multi-Turn LLM Reasoning"): after a wrong answer the user says only "Try again." and the
model answers again, up to ``rollout.environment.max_turns`` attempts.

Per-turn reward, the paper's two shaping terms:
* success at attempt t (1-based) earns ``decay ** (t - 1)`` — solving early is worth more;
* an attempt whose extracted answer repeats an earlier attempt's costs
  ``repetition_penalty`` — a retry should explore, not repeat.
The episode's reward (the ``environment`` reward component) is the sum over its turns.
The verifier judges the final attempt, so accuracy means "solved within the attempts".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlvr.rollout.environment import ENVIRONMENTS, Environment, StepResult
from rlvr.tasks.base import Problem
from rlvr.typed_yaml import check_ranges


@ENVIRONMENTS.register("try_again")
class TryAgainEnvironment(Environment):
    """Answer, hear "Try again." when wrong, answer again."""

    @dataclass
    class Params:
        message: str = field(default="Try again.", metadata={"help": "the user's feedback after a wrong answer"})
        decay: float = field(default=0.5, metadata={"help": "reward for success at attempt t is decay**(t-1)", "gt": 0, "le": 1})
        repetition_penalty: float = field(default=0.25, metadata={"help": "reward subtracted for an attempt that repeats an earlier answer", "ge": 0})

        def __post_init__(self) -> None:
            check_ranges(self)

    def reset(self, problem: Problem) -> None:
        super().reset(problem)
        self.answers: list[str | None] = []

    def step(self, action: str, finish_reason: str) -> StepResult:
        score = self.score([self.problem], [action])[0]
        attempt = len(self.answers) + 1
        repeated = score.extracted is not None and score.extracted in self.answers
        self.answers.append(score.extracted)
        reward = -self.params.repetition_penalty if repeated else 0.0
        if score.correct:
            return StepResult(reward=reward + self.params.decay ** (attempt - 1), done=True)
        return StepResult(user_message=self.params.message, reward=reward, void=score.extracted is None,
                          done=finish_reason == "length")

    def answer_text(self) -> str:
        return self.turn_texts[-1] if self.turn_texts else ""
