"""Multiplication of numbers too long to multiply in a tiny model's head: the task where a
Python tool genuinely helps (the tool-integrated recipe's task).

    prompt:   347*829
    response: <code>print(347*829)</code><output>287663
              </output>=> 287663

The answer is the integer after the last ``=>``. Demonstrations for the warm start come
from a teacher that calls the tool with probability ``tool_demo_rate`` (the interpreter's
real output is inserted by the ``python`` environment) and otherwise writes the product
straight away, as a text-only reasoner must; a model imitating it answers "in its head"
most of the time and is then almost always wrong, which leaves RL the job of learning
*when* to use the tool.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlvr.tasks._integer import IntegerAnswerTask, random_operands
from rlvr.tasks.base import TASKS, Problem
from rlvr.typed_yaml import check_ranges


@TASKS.register("multiplication")
class MultiplicationTask(IntegerAnswerTask):
    name = "multiplication"

    @dataclass
    class Params:
        min_digits: int = field(default=3, metadata={"help": "fewest digits of an operand", "ge": 1})
        max_digits: int = field(default=3, metadata={"help": "most digits of an operand", "ge": 1})
        tool_demo_rate: float = field(
            default=1.0, metadata={"help": "fraction of demonstrations that compute the product with a <code> tool call", "ge": 0, "le": 1})

        def __post_init__(self) -> None:
            check_ranges(self)
            if self.min_digits > self.max_digits:
                raise ValueError(f"min_digits ({self.min_digits}) must be <= max_digits ({self.max_digits})")

    def generate(self, rng: random.Random) -> Problem:
        a, b = random_operands(rng, 2, self.params.min_digits, self.params.max_digits)
        return Problem(id=f"{a}*{b}", prompt=[{"role": "user", "content": f"{a}*{b}"}], answer=str(a * b),
                       metadata={"a": a, "b": b})

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        a, b = problem.metadata["a"], problem.metadata["b"]
        if rng.random() < self.params.tool_demo_rate:
            return f"<code>print({a}*{b})</code>=> {a * b}"
        return f"=> {a * b}"
