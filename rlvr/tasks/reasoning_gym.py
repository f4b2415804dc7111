"""Any reasoning-gym dataset as a task (Stojanovski et al., 2025, "Reasoning Gym: Reasoning
Environments for Reinforcement Learning with Verifiable Rewards").

**Problems.** One dataset is built per task, ``reasoning_gym.create_dataset(dataset,
**config, seed=dataset_seed, size=size)``; it is a fixed pool of ``size`` items (item ``i``
is a pure function of ``dataset_seed`` and ``i``). ``generate(rng)`` draws an index with
``rng.randrange(size)``, so the run's seed picks which items are seen and ``dataset_seed``
picks the pool; ids are ``"{dataset}/{dataset_seed}/{index}"``, so held-out and training
problems come from the same pool without overlap. Items whose generation raises (some
generators give up at high difficulty) or whose gold answer our own safety guard would
refuse (see below) are skipped and another index is drawn. The prompt is the dataset's
question text as one user message; ``Problem.answer`` is the gold answer string (None for
the datasets that have none: boxnet, graph_color, propositional_logic, rubiks_cube,
rush_hour).

**Difficulty.** ``difficulty`` maps curriculum attribute names to levels; for each named
attribute the dataset's curriculum (``reasoning_gym.factory.create_curriculum``) is set to
that level and the config fields it controls are read with reasoning-gym's
``DefaultCurriculumContext`` in ``difficulty_mode`` ("inclusive": a range attribute at level
L spans levels 0..L, the library's default; "upper_bound": only level L). Attributes not
named keep the dataset's config defaults (unlike ``generate_configuration``, which would
reset them all to level 0); setting a field both in ``config`` and via ``difficulty`` is an
error.

**Scoring.** The answer is extracted (see ``extract_answer``) and passed to the dataset's
``score_answer``; ``strict`` (default) rewards 1.0 only when that score is exactly 1.0, else
the raw score (reasoning-gym gives 0.01-0.5 partial credit to many wrong answers) is the
reward. The raw score is always in ``Score.components["raw"]``. Any exception in a scorer
gives reward 0 with the error. Known-bad scorers are wrapped:

- ``game_of_life_halting`` compares ``bool(answer)`` and so passes every answer: we compare
  the whitespace- and case-normalised text with the gold answer instead.
- ``prime_factorization`` raises on non-numeric answers: caught, reward 0 with the error.
- Nine scorers hand the model's text to ``eval`` or sympy's ``parse_expr`` (which evals):
  binary_matrix, spiral_matrix, n_queens and string_insertion call ``eval(answer)`` to give
  partial credit to Python lists; countdown, puzzle24, polynomial_multiplication,
  simple_integration and intermediate_integration parse with sympy. An answer such as
  ``__import__('os').system(...)`` runs. Before those scorers see an answer it must pass a
  syntax-tree whitelist (literals only for the ``eval`` ones; numbers, one-letter symbols,
  + - * / ** with bounded exponents and a few math functions for the sympy ones), else
  reward 0 with the reason. This also shuts a reward hack: ``Integral(f, x) + C`` scores
  1.0 on both integration datasets, so ``Integral`` is not on the whitelist (and the ~10% of
  intermediate_integration items whose gold answer is an unevaluated ``Integral`` are
  skipped). No time limit is imposed: sympy's ``simplify`` on a long allowed answer can
  still be slow.

**Demonstrations** are answer-only, ``"=> " + gold answer``, for SFT warm start; datasets
without a gold answer have none.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlvr.tasks.base import TASKS, Problem, Score, Task
from rlvr.typed_yaml import check_ranges

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@TASKS.register("reasoning_gym")
class ReasoningGymTask(Task):
    name = "reasoning_gym"
    # Several reasoning-gym scorers eval() or sympy-parse the answer and sympy can take
    # unbounded time: besides the syntax whitelist, score in the verifier pool's workers.
    isolate = True

    @dataclass
    class Params:
        dataset: str = field(default="chain_sum", metadata={"help": "reasoning-gym dataset name, e.g. 'countdown'"})
        config: dict[str, Any] = field(
            default_factory=dict,
            metadata={"help": "fields of the dataset's config dataclass (not seed or size)"},
        )
        difficulty: dict[str, int] = field(
            default_factory=dict,
            metadata={"help": "curriculum attribute -> level (0-based), applied via the dataset's curriculum"},
        )
        difficulty_mode: Literal["inclusive", "upper_bound"] = field(
            default="inclusive",
            metadata={"help": "range attributes at level L span levels 0..L ('inclusive') or only L ('upper_bound')"},
        )
        strict: bool = field(
            default=True,
            metadata={"help": "reward 1.0 only for a raw score of exactly 1.0, else 0.0; false passes partial credit"},
        )
        size: int = field(default=1000, metadata={"help": "items in the dataset's pool (problems drawn from it)", "ge": 1})
        dataset_seed: int = field(default=0, metadata={"help": "seed of the dataset's pool of items", "ge": 0})

        def __post_init__(self) -> None:
            check_ranges(self)
            if not self.dataset:
                raise ValueError("dataset must name a reasoning-gym dataset")
            reserved = sorted({"seed", "size"} & set(self.config))
            if reserved:
                raise ValueError(f"config: set {reserved} through the task's dataset_seed/size params instead")
            negative = [name for name, level in self.difficulty.items() if level < 0]
            if negative:
                raise ValueError(f"difficulty: levels must be >= 0 (got {negative})")
            if self.difficulty_mode not in ("inclusive", "upper_bound"):
                raise ValueError(f"difficulty_mode must be 'inclusive' or 'upper_bound', got {self.difficulty_mode!r}")

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.dataset = build_dataset(self.params)
        self._guard = _GUARDS.get(self.params.dataset)
        self._entries: dict[int, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the dataset object (some hold lambdas, e.g. arc_1d and
        string_manipulation): it is a pure function of the params and is rebuilt on load."""
        state = dict(self.__dict__)
        del state["dataset"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.dataset = build_dataset(self.params)

    def entry(self, index: int) -> dict[str, Any]:
        """Item ``index`` of the pool (cached: some generators take tens of milliseconds)."""
        if index not in self._entries:
            self._entries[index] = self.dataset[index]
        return self._entries[index]

    def generate(self, rng: random.Random) -> Problem:
        p = self.params
        last_failure = None
        for _ in range(100):
            index = rng.randrange(p.size)
            try:
                entry = self.entry(index)
            except Exception as exc:  # some generators give up on some seeds at high difficulty
                last_failure = f"generating item {index} raised {type(exc).__name__}: {exc}"
                continue
            gold = entry.get("answer")
            if gold is None or self._guard is None or self._guard(gold) is None:
                break
            last_failure = f"the safety guard refuses gold answer {gold[:200]!r}"
        else:
            raise ValueError(f"reasoning_gym: 100 draws from {p.dataset!r} all failed; last: {last_failure}")
        return Problem(
            id=f"{p.dataset}/{p.dataset_seed}/{index}",
            prompt=[{"role": "user", "content": entry["question"]}],
            answer=gold,
            metadata={"index": index, "entry": entry},
        )

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        if not isinstance(problem.answer, str):
            raise NotImplementedError(
                f"reasoning-gym dataset {self.params.dataset!r} gives no gold answer, so it has no demonstrations"
            )
        return f"=> {problem.answer}"

    def extract_answer(self, completion: str) -> str | None:
        """The final answer: the content of the last ``<answer>...</answer>`` unless a ``=>``
        follows it; then, within that (or the whole completion), the text after the last
        ``=>``; stripped. None when nothing is left.

        With only one of the two markers present this is "after the last ``=>``" or "the
        tag's content"; with both, the later one wins, so a ``=>`` inside ``<think>`` does
        not hide the ``<answer>``.
        """
        text = completion
        tags = list(_ANSWER_TAG.finditer(completion))
        if tags and "=>" not in completion[tags[-1].end():]:
            text = tags[-1].group(1)
        arrow = text.rfind("=>")
        if arrow >= 0:
            text = text[arrow + 2:]
        text = text.strip()
        return text or None

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        if extracted is None:
            return Score(reward=0.0, correct=False, extracted=None, components={"raw": 0.0}, error="empty answer")
        raw, error = self.raw_score(extracted, problem.metadata["entry"])
        correct = raw == 1.0
        reward = float(correct) if self.params.strict else raw
        return Score(reward=reward, correct=correct, extracted=extracted, components={"raw": raw}, error=error)

    def raw_score(self, answer: str, entry: dict[str, Any]) -> tuple[float, str | None]:
        """The dataset's own score for ``answer`` with the wrappers above; (score, error)."""
        name = self.params.dataset
        if self._guard is not None:
            refusal = self._guard(answer)
            if refusal is not None:
                return 0.0, f"answer not passed to {name}'s scorer: {refusal}"
        try:
            if name in _OWN_SCORERS:
                raw = _OWN_SCORERS[name](answer, entry)
            else:
                raw = float(self.dataset.score_answer(answer, entry))
        except Exception as exc:  # third-party scorers raise anything on odd answers
            return 0.0, f"{name} scorer raised {type(exc).__name__}: {exc}"
        if not (math.isfinite(raw) and 0.0 <= raw <= 1.0):
            return 0.0, f"{name} scorer returned {raw!r}, outside [0, 1]"
        return raw, None


# ----------------------------------------------------------------------------- building


def build_dataset(params: ReasoningGymTask.Params) -> Any:
    """The reasoning-gym dataset ``params`` describe; errors name the offending field."""
    try:  # imported here: it takes about a second and most runs never need it
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError as exc:
        raise ImportError("the reasoning_gym task needs the reasoning-gym package: pip install reasoning-gym") from exc

    name = params.dataset
    if name == "composite":  # its sub-datasets would bypass the per-dataset safety guards below
        raise ValueError("dataset: 'composite' is reasoning-gym's mixer; mix datasets with rlvr's `mix` task "
                         "over one reasoning_gym task per dataset (each keeps its scorer's guard and its metrics)")
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"dataset: reasoning-gym has no dataset {name!r}{hint} ({len(DATASETS)} known)")
    config_cls = DATASETS[name][1]
    fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")]
    unknown = sorted(set(params.config) - set(fields))
    if unknown:
        raise ValueError(f"config: {config_cls.__name__} has no field(s) {unknown}; valid: {', '.join(fields)}")
    values = dict(params.config)
    if params.difficulty:
        levelled = curriculum_values(name, params.difficulty, params.difficulty_mode)
        both = sorted(set(levelled) & set(values))
        if both:
            raise ValueError(f"config sets {both}, which difficulty also sets; drop one of the two")
        values.update(levelled)
    try:
        return reasoning_gym.create_dataset(name, **values, seed=params.dataset_seed, size=params.size)
    except (AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"reasoning-gym rejected the config of {name!r} {values}: {exc}") from exc


def curriculum_values(name: str, difficulty: dict[str, int], mode: str) -> dict[str, Any]:
    """Config fields set by the curriculum of dataset ``name`` at the given attribute levels."""
    from reasoning_gym.coaching.attributes import RangeAttributeDefinition
    from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode
    from reasoning_gym.factory import create_curriculum, has_curriculum

    if not has_curriculum(name):
        raise ValueError(f"difficulty: reasoning-gym dataset {name!r} has no curriculum; use config instead")
    curriculum = create_curriculum(name)
    context = DefaultCurriculumContext(mode=RangeAttributeMode(mode))
    values: dict[str, Any] = {}
    for attr_name, level in difficulty.items():
        if attr_name not in curriculum.attributes:
            raise ValueError(f"difficulty: {name!r} has no curriculum attribute {attr_name!r}; "
                             f"known: {', '.join(curriculum.attributes)}")
        attr = curriculum.attributes[attr_name]
        if not 0 <= level < len(attr.levels):
            raise ValueError(f"difficulty.{attr_name}: level {level} out of range 0..{len(attr.levels) - 1} "
                             f"(levels {attr.levels})")
        curriculum.set_attr_level(attr_name, level)
        value = context.get_attr_value(curriculum, attr)
        if isinstance(attr, RangeAttributeDefinition):
            bounds = list(value) if isinstance(value, (list, tuple)) else [value]
            values[attr.lower_field_name] = min(bounds)
            values[attr.upper_field_name] = max(bounds)
        else:
            values[attr.field_name] = value
    return values


# ----------------------------------------------------------------------------- scorer wrappers


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def _score_game_of_life_halting(answer: str, entry: dict[str, Any]) -> float:
    return float(_normalise(answer) == _normalise(str(entry["answer"])))


_OWN_SCORERS: dict[str, Callable[[str, dict[str, Any]], float]] = {
    "game_of_life_halting": _score_game_of_life_halting,
}


class _Refused(Exception):
    """An answer is not safe to hand to a scorer that evaluates it."""


def _parse(text: str, max_chars: int) -> ast.expr:
    if len(text) > max_chars:
        raise _Refused(f"longer than {max_chars} characters")
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _Refused(f"not a plain expression ({type(exc).__name__})") from None


def literal_only(text: str) -> str | None:
    """Guard for scorers that call ``eval(answer)``: None (safe) when the text is not Python
    at all (``eval`` raises SyntaxError) or only literals and bare names (nothing is called,
    indexed or computed); else the reason it is refused."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Name, ast.Load)):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant):
            continue
        if isinstance(node, (ast.USub, ast.UAdd)):
            continue
        return f"only literals are allowed where the scorer calls eval(), found {type(node).__name__}"
    return None


_MATH_FUNCTIONS = frozenset({"sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh",
                             "tanh", "exp", "log", "ln", "sqrt", "Abs"})
_MATH_CONSTANTS = frozenset({"pi", "oo"})
_ARITHMETIC_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_MAX_EXPONENT = 1000  # x**1000 stays symbolic
_MAX_NUMERIC_EXPONENT = 100  # of a base without symbols, which sympy computes out
_MAX_NUMERIC_BASE = 10**6  # literals in such a base: at most ~600 digits per power


@dataclass(frozen=True)
class SympyGuard:
    """Guard for scorers that run ``sympy.parse_expr`` (an ``eval``) on the answer.

    Allowed: int/float literals; + - * /; unary + -; and, when ``names``, one-letter symbols,
    ``pi``, ``oo`` and calls of ``functions`` with positional arguments; ``a**b`` where the
    exponent has no power and literals of at most 1000 (at most 100, with base literals of at
    most 10**6, when the base has no symbol) and powers nest at most two deep, so no answer
    makes sympy build a huge number. Calling it returns None when the text is allowed, else
    the reason.

    A frozen dataclass, not a closure: the task holding it is pickled for the verifier
    workers, and a closure cannot be.
    """

    names: bool
    functions: frozenset[str] = frozenset()
    max_chars: int = 20_000

    def __call__(self, text: str) -> str | None:
        try:
            self._check(_parse(text, self.max_chars), None, 0)
        except _Refused as exc:
            return str(exc)
        except RecursionError:
            return "expression nested too deeply"
        return None

    def _check(self, node: ast.AST, bound: tuple[float, str] | None, pow_depth: int) -> None:
        check = self._check
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float):
                raise _Refused(f"literal {node.value!r} is not a number")
            if bound is not None and abs(node.value) > bound[0]:
                raise _Refused(f"{node.value} is too large for {bound[1]} (at most {bound[0]:g})")
        elif isinstance(node, ast.Name):
            if not self.names or not (node.id in _MATH_CONSTANTS
                                      or (len(node.id) == 1 and node.id in string.ascii_letters)):
                raise _Refused(f"name {node.id!r} is not allowed")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            check(node.operand, bound, pow_depth)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _ARITHMETIC_OPS):
            check(node.left, bound, pow_depth)
            check(node.right, bound, pow_depth)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if bound is not None and bound[1] == "an exponent":
                raise _Refused("a power inside an exponent is not allowed")
            if pow_depth >= 2:
                raise _Refused("powers nested more than two deep are not allowed")
            numeric = not any(isinstance(sub, ast.Name) for sub in ast.walk(node.left))
            check(node.left, (_MAX_NUMERIC_BASE, "a number raised to a power") if numeric else bound, pow_depth + 1)
            check(node.right, (_MAX_NUMERIC_EXPONENT if numeric else _MAX_EXPONENT, "an exponent"), pow_depth)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.functions \
                and not node.keywords and not any(isinstance(a, ast.Starred) for a in node.args):
            for arg in node.args:
                check(arg, bound, pow_depth)
        else:
            raise _Refused(f"{type(node).__name__} is not allowed where the scorer runs sympy.parse_expr")


def sympy_guard(names: bool, functions: frozenset[str] = frozenset(), max_chars: int = 20_000) -> SympyGuard:
    """A `SympyGuard` (kept for callers that built guards with this function)."""
    return SympyGuard(names, frozenset(functions), max_chars)


_GUARDS: dict[str, Callable[[str], str | None]] = {
    "binary_matrix": literal_only,
    "spiral_matrix": literal_only,
    "n_queens": literal_only,
    "string_insertion": literal_only,
    "countdown": sympy_guard(names=False),
    "puzzle24": sympy_guard(names=False),
    "polynomial_multiplication": sympy_guard(names=True),
    "simple_integration": sympy_guard(names=True),
    "intermediate_integration": sympy_guard(names=True, functions=_MATH_FUNCTIONS),
}
