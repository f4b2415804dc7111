"""Integer expressions with + - * and standard precedence, solved one operation per step.

The model first does every multiplication (left to right), then the additions and
subtractions left to right, writing each as ``x op y = z`` and then the value::

    prompt:   3+4*5-6
    response: 4*5=20 3+20=23 23-6=17 => 17

Operands are non-negative (so products are too); intermediate and final results may be
negative (``3-10=-7 -7+2=-5 => -5``). Difficulty is the number of digits per operand and
the number of operands; scoring is an exact integer comparison.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from rlvr.tasks._integer import IntegerAnswerTask, random_operands
from rlvr.tasks.base import TASKS, Problem
from rlvr.typed_yaml import check_ranges

_OPERATIONS = ("+", "-", "*")


@TASKS.register("arithmetic")
class ArithmeticTask(IntegerAnswerTask):
    name = "arithmetic"

    @dataclass
    class Params:
        operations: list[str] = field(
            default_factory=lambda: ["+", "-", "*"],
            metadata={"help": "operators to draw from, a subset of '+', '-', '*'"},
        )
        min_digits: int = field(default=1, metadata={"help": "fewest digits of an operand", "ge": 1})
        max_digits: int = field(default=2, metadata={"help": "most digits of an operand", "ge": 1})
        num_operands: int = field(default=3, metadata={"help": "operands per expression", "ge": 2, "le": 4})

        def __post_init__(self) -> None:
            check_ranges(self)
            if not self.operations:
                raise ValueError("operations must name at least one of '+', '-', '*'")
            unknown = [op for op in self.operations if op not in _OPERATIONS]
            if unknown:
                raise ValueError(f"operations: unknown operator(s) {unknown}; use '+', '-', '*'")
            if len(set(self.operations)) != len(self.operations):
                raise ValueError(f"operations: {self.operations} repeats an operator")
            if self.min_digits > self.max_digits:
                raise ValueError(f"min_digits ({self.min_digits}) must be <= max_digits ({self.max_digits})")

    def generate(self, rng: random.Random) -> Problem:
        p = self.params
        operands = random_operands(rng, p.num_operands, p.min_digits, p.max_digits)
        ops = [rng.choice(p.operations) for _ in range(p.num_operands - 1)]
        expression = render(operands, ops)
        steps, value = evaluate_steps(operands, ops)
        return Problem(
            id=expression,
            prompt=[{"role": "user", "content": expression}],
            answer=str(value),
            metadata={"operands": operands, "ops": ops, "steps": len(steps)},
        )

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        return scratchpad(problem.metadata["operands"], problem.metadata["ops"])


def render(operands: list[int], ops: list[str]) -> str:
    """``[3, 4, 5], ['+', '*']`` -> ``"3+4*5"``."""
    text = str(operands[0])
    for op, x in zip(ops, operands[1:]):
        text += f"{op}{x}"
    return text


def evaluate_steps(operands: list[int], ops: list[str]) -> tuple[list[str], int]:
    """The steps ``["4*5=20", "3+20=23"]`` of evaluating the expression with standard
    precedence (products first, left to right; then sums and differences left to right),
    and its value."""
    if len(ops) != len(operands) - 1:
        raise ValueError(f"{len(operands)} operands need {len(operands) - 1} operators, got {len(ops)}")
    steps: list[str] = []
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            product = terms[-1] * x
            steps.append(f"{terms[-1]}*{x}={product}")
            terms[-1] = product
        elif op in ("+", "-"):
            terms.append(x)
            signs.append(op)
        else:
            raise ValueError(f"unknown operator {op!r}")
    value = terms[0]
    for op, x in zip(signs, terms[1:]):
        new = value + x if op == "+" else value - x
        steps.append(f"{value}{op}{x}={new}")
        value = new
    return steps, value


def scratchpad(operands: list[int], ops: list[str]) -> str:
    """The worked evaluation, e.g. ``"4*5=20 3+20=23 => 23"`` for ``3+4*5``."""
    steps, value = evaluate_steps(operands, ops)
    return " ".join(steps) + f" => {value}"
