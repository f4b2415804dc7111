"""Shared pieces of the integer tasks (addition, arithmetic, multiplication): operands drawn by
digit count, and the check of a scratchpad that ends in ``=> <integer>``."""

from __future__ import annotations

import random
import re

from rlvr.tasks.base import Problem, Score, Task

_ANSWER = re.compile(r"=>\s*(-?\d+)")


class IntegerAnswerTask(Task):
    """A task whose answer is the integer after the last ``=>``, checked exactly."""

    def extract_answer(self, completion: str) -> str | None:
        found = _ANSWER.findall(completion)
        return found[-1] if found else None

    def answer_text(self, answer: str) -> str:
        return f"=> {answer}"

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        correct = extracted is not None and int(extracted) == int(problem.answer)
        return Score(reward=float(correct), correct=correct, extracted=extracted)


def random_operands(rng: random.Random, count: int, min_digits: int, max_digits: int) -> list[int]:
    """``count`` integers, each with a digit count drawn uniformly from [min_digits,
    max_digits] and then a value drawn uniformly among the numbers of that many digits."""
    operands = []
    for _ in range(count):
        digits = rng.randint(min_digits, max_digits)
        operands.append(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1))
    return operands
