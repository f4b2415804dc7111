"""Shared checking for tasks whose scratchpad ends in ``=> <integer>`` (addition, arithmetic)."""

from __future__ import annotations

import re

from rlvr.tasks.base import Problem, Score, Task

_ANSWER = re.compile(r"=>\s*(-?\d+)")


class IntegerAnswerTask(Task):
    """A task whose answer is the integer after the last ``=>``, checked exactly."""

    def extract_answer(self, completion: str) -> str | None:
        found = _ANSWER.findall(completion)
        return found[-1] if found else None

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        correct = extracted is not None and int(extracted) == int(problem.answer)
        return Score(reward=float(correct), correct=correct, extracted=extracted)
