"""Countdown: combine the given numbers with + - * / to reach a target.

Problems are built from a random expression tree over (a subset of) the numbers, so a
solution always exists. The demonstration works that solution one operation per step and
ends with the whole expression::

    prompt:   make 23 from 3 5 8 4
    response: 5*4=20 20+3=23 => 5*4+3

Scoring parses the expression after the last ``=>`` with :mod:`ast` and a whitelist (integer
literals, + - * /, parentheses; nothing is ever ``eval``-ed), checks that it uses each number
no more often than it is given (exactly once each with ``use_all``), that every division is
exact, and that the value equals the target. Intermediate values may be negative.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from rlvr.tasks.base import TASKS, Problem, Score, Task
from rlvr.typed_yaml import check_ranges

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() ]+")
_MAX_EXPRESSION_CHARS = 200
_OPS = ("+", "-", "*", "/")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class ExpressionError(ValueError):
    """An answer is not a valid countdown expression; the message says why."""


@TASKS.register("countdown")
class CountdownTask(Task):
    name = "countdown"

    @dataclass
    class Params:
        num_numbers: int = field(default=4, metadata={"help": "numbers given per problem", "ge": 3, "le": 6})
        min_value: int = field(default=1, metadata={"help": "smallest given number", "ge": 1})
        max_value: int = field(default=10, metadata={"help": "largest given number", "ge": 1})
        max_target: int = field(default=100, metadata={"help": "largest target; targets lie in 1..max_target", "ge": 2})
        use_all: bool = field(
            default=False,
            metadata={"help": "true: use every number exactly once; false: each at most once"},
        )

        def __post_init__(self) -> None:
            check_ranges(self)
            if self.min_value > self.max_value:
                raise ValueError(f"min_value ({self.min_value}) must be <= max_value ({self.max_value})")

    def generate(self, rng: random.Random) -> Problem:
        p = self.params
        for _ in range(1000):
            numbers = [rng.randint(p.min_value, p.max_value) for _ in range(p.num_numbers)]
            used = numbers if p.use_all else rng.sample(numbers, rng.randint(2, p.num_numbers))
            tree = random_tree(list(used), rng)
            target = tree_value(tree)
            # a target that is one of the numbers is solved by copying it; skip those
            if 1 <= target <= p.max_target and target not in numbers:
                break
        else:
            raise ValueError(
                f"countdown could not build a problem with a target in 1..{p.max_target} from "
                f"{p.num_numbers} numbers in {p.min_value}..{p.max_value}; raise max_target or max_value"
            )
        prompt = f"make {target} from {' '.join(map(str, numbers))}"
        steps: list[str] = []
        tree_steps(tree, steps)
        return Problem(
            id=prompt,
            prompt=[{"role": "user", "content": prompt}],
            answer=str(target),
            metadata={"numbers": numbers, "target": target, "solution": render(tree), "steps": steps},
        )

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        return " ".join(problem.metadata["steps"]) + f" => {problem.metadata['solution']}"

    def extract_answer(self, completion: str) -> str | None:
        """The rest of the line after the last ``=>``, stripped (None if there is no ``=>``
        or nothing follows it)."""
        at = completion.rfind("=>")
        if at < 0:
            return None
        return completion[at + 2:].split("\n", 1)[0].strip() or None

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        if extracted is None:
            return Score(reward=0.0, correct=False, extracted=None, error="no expression after '=>'")
        try:
            value, used = parse_expression(extracted)
            check_numbers(used, problem.metadata["numbers"], self.params.use_all)
        except ExpressionError as exc:
            return Score(reward=0.0, correct=False, extracted=extracted, error=str(exc))
        correct = value == problem.metadata["target"]
        error = None if correct else f"expression equals {value}, not {problem.metadata['target']}"
        return Score(reward=float(correct), correct=correct, extracted=extracted, error=error)


# An expression tree is an int (a given number) or a tuple (op, left, right).
Tree = int | tuple


def random_tree(numbers: list[int], rng: random.Random) -> Tree:
    """Combine ``numbers`` pairwise at random until one tree is left. Subtraction is
    ordered so it never goes below zero and division is only chosen when exact, so every
    intermediate value is a non-negative integer."""
    pool: list[Tree] = list(numbers)
    rng.shuffle(pool)
    while len(pool) > 1:
        a, b = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
        va, vb = tree_value(a), tree_value(b)
        ops = ["+", "*", "-"]
        if vb != 0 and va % vb == 0 and vb != 1:
            ops.append("/")
        op = rng.choice(ops)
        if op == "-" and va < vb:
            a, b = b, a
        pool.append((op, a, b))
    return pool[0]


def tree_value(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    op, a, b = tree
    x, y = tree_value(a), tree_value(b)
    return apply_op(op, x, y)


def apply_op(op: str, x: int, y: int) -> int:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0 or x % y:
        raise ExpressionError(f"{x}/{y} is not an exact division")
    return x // y


def tree_steps(tree: Tree, steps: list[str]) -> int:
    """Append ``"x op y=z"`` for every operation of ``tree`` in evaluation order; return its value."""
    if isinstance(tree, int):
        return tree
    op, a, b = tree
    x, y = tree_steps(a, steps), tree_steps(b, steps)
    z = apply_op(op, x, y)
    steps.append(f"{x}{op}{y}={z}")
    return z


def render(tree: Tree) -> str:
    """The tree as an infix expression with only the parentheses precedence requires."""
    if isinstance(tree, int):
        return str(tree)
    op, a, b = tree
    left, right = render(a), render(b)
    if not isinstance(a, int) and _PRECEDENCE[a[0]] < _PRECEDENCE[op]:
        left = f"({left})"
    if not isinstance(b, int) and (
        _PRECEDENCE[b[0]] < _PRECEDENCE[op] or (_PRECEDENCE[b[0]] == _PRECEDENCE[op] and op in "-/")
    ):
        right = f"({right})"
    return f"{left}{op}{right}"


def parse_expression(text: str) -> tuple[int, list[int]]:
    """Value of an integer expression over + - * / and parentheses, and the numbers it uses.

    Safe on any input: the text must consist of digits, operators, parentheses and spaces,
    and its syntax tree may hold only those; nothing is evaluated by Python. Unary minus is
    refused (only the given numbers may appear) and so is any division that is not exact.
    Raises :class:`ExpressionError` saying what is wrong.
    """
    text = text.strip()
    if not text:
        raise ExpressionError("empty expression")
    if len(text) > _MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(text):
        raise ExpressionError("expression may hold only digits, + - * /, parentheses and spaces")
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"not an expression: {type(exc).__name__}") from None
    used: list[int] = []
    return _evaluate(tree, used), used


def _evaluate(node: ast.AST, used: list[int]) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        x = _evaluate(node.left, used)
        y = _evaluate(node.right, used)
        return apply_op(_AST_OPS[type(node.op)], x, y)
    raise ExpressionError(f"{type(node).__name__} is not allowed; use integers, + - * / and parentheses")


def check_numbers(used: list[int], given: list[int], use_all: bool) -> None:
    """Raise :class:`ExpressionError` unless ``used`` fits the multiset ``given``
    (and equals it when ``use_all``)."""
    over = Counter(used) - Counter(given)
    if over:
        extra = ", ".join(f"{n}" for n in sorted(over))
        raise ExpressionError(f"uses {extra} more often than given")
    if use_all:
        missing = Counter(given) - Counter(used)
        if missing:
            raise ExpressionError(f"does not use {', '.join(map(str, sorted(missing.elements())))}")
