"""Multi-digit addition with a column-by-column scratchpad.

The model writes one column per step, right to left, carrying explicitly, then the
answer::

    prompt:   347+285
    response: 7+5=12 4+8+1=13 3+2+1=6 => 632

Difficulty is the number of digits. For the supervised warm start the task can play a
*sloppy teacher* that forgets an incoming carry with probability ``teacher_carry_error``;
a model that imitates it is right only on problems without (forgotten) carries, which
leaves RL with a verifier real headroom: the reward says which habit is right.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from rlvr.tasks._integer import IntegerAnswerTask, random_operands
from rlvr.tasks.base import TASKS, Problem
from rlvr.typed_yaml import check_ranges


@TASKS.register("addition")
class AdditionTask(IntegerAnswerTask):
    name = "addition"

    @dataclass
    class Params:
        min_digits: int = field(default=2, metadata={"help": "fewest digits of an operand", "ge": 1})
        max_digits: int = field(default=4, metadata={"help": "most digits of an operand", "ge": 1})
        teacher_carry_error: float = field(
            default=0.0,
            metadata={"help": "probability that a demonstration forgets an incoming carry", "ge": 0, "le": 1},
        )

        def __post_init__(self) -> None:
            check_ranges(self)
            if self.min_digits > self.max_digits:
                raise ValueError(f"min_digits ({self.min_digits}) must be <= max_digits ({self.max_digits})")

    def generate(self, rng: random.Random) -> Problem:
        p = self.params
        operands = random_operands(rng, 2, p.min_digits, p.max_digits)
        a, b = operands
        carries = count_carries(a, b)
        return Problem(
            id=f"{a}+{b}",
            prompt=[{"role": "user", "content": f"{a}+{b}"}],
            answer=str(a + b),
            metadata={"a": a, "b": b, "carries": carries, "digits": max(len(str(a)), len(str(b)))},
        )

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        a, b = problem.metadata["a"], problem.metadata["b"]
        return scratchpad(a, b, rng, self.params.teacher_carry_error)

    def step_checks(self, problem: Problem, completion: str) -> list[tuple[int, float]]:
        return scratchpad_step_checks(problem.metadata["a"], problem.metadata["b"], completion)


def scratchpad_step_checks(a: int, b: int, completion: str) -> list[tuple[int, float]]:
    """Each column step of a scratchpad (``x+y=s`` or ``x+y+1=s``, space-separated) scored 1.0
    when it is the right column's right sum with the right carry (the correct scratchpad's
    step at that place), else 0.0; then the final answer (``=> N``) scored 1.0 when N = a + b.
    Offsets are where each step's text ends in ``completion``."""
    expected = scratchpad(a, b, random.Random(0)).split(" => ")[0].split(" ")
    checks: list[tuple[int, float]] = []
    words = list(re.finditer(r"\S+", completion))
    for index, word in enumerate(words):
        if word.group() == "=>":
            answer = words[index + 1] if index + 1 < len(words) else word
            checks.append((answer.end(), float(answer.group() == str(a + b))))
            break
        step = len(checks)
        checks.append((word.end(), float(step < len(expected) and word.group() == expected[step])))
    return checks


def count_carries(a: int, b: int) -> int:
    """Number of columns of a+b that produce a carry."""
    carries, carry = 0, 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        carries += carry
        a, b = a // 10, b // 10
    return carries


def scratchpad(a: int, b: int, rng: random.Random, carry_error: float = 0.0) -> str:
    """The worked column-by-column sum of ``a + b``; each incoming carry is dropped with
    probability ``carry_error`` (the answer then follows the faulty columns)."""
    steps, digits, carry = [], [], 0
    width = max(len(str(a)), len(str(b)))
    for column in range(width):
        x, y = a // 10**column % 10, b // 10**column % 10
        if carry and rng.random() < carry_error:
            carry = 0
        total = x + y + carry
        steps.append(f"{x}+{y}+1={total}" if carry else f"{x}+{y}={total}")
        digits.append(total % 10)
        carry = total // 10
    if carry:
        digits.append(carry)
    answer = "".join(str(d) for d in reversed(digits))
    return " ".join(steps) + f" => {answer}"
