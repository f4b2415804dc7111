"""Programming problems from a data file, checked by running the solution in the sandbox.

Problems are a fixed list read from ``path`` with the loaders and the hash-of-the-id
held-out split of every file-backed task (``rlvr.tasks._records``). A record holds:

* ``prompt``: the problem statement (rendered through ``prompt_template``);
* either ``tests``: assert statements run against the solution, e.g.
  ``"assert add(1, 2) == 3"`` (a test may hold several statements; it passes when they all
  run without an exception);
* or ``io``: ``[{"input": "1 2\\n", "output": "3\\n"}, ...]``, the program reads standard
  input and must print the output (compared line by line after stripping trailing
  whitespace, and ignoring trailing blank lines);
* optionally ``solution``: a reference program, the SFT demonstration and what
  ``CodeTask.validate`` runs to check the file;
* optionally ``id`` (else a hash of the prompt).

The field names are parameters. The completion's program is its last fenced block
(```` ```python ```` or a bare ```` ``` ````), else the whole completion when it parses as
Python, else there is none (reward 0, nothing runs). The reward is the fraction of tests
passed (``score_mode: fraction``) or 1 only when all pass (``all``); ``correct`` is "all
passed" in both modes.

**Running.** Every run goes through ``rlvr.sandbox.run_python`` with ``timeout_s`` of wall
clock (and a second more of CPU time, a backstop) and ``memory_mb`` of memory. ``io`` tests
take one run per case; in ``all`` mode scoring stops at the first failing case (the reward
is 0 anyway), so ``tests_passed`` then counts the passes before it. ``tests`` take a single
run: a harness executes the solution as a module named ``solution`` (an ``if __name__ ==
"__main__":`` block does not run), then each test in its own ``try``, and reports each test
as it finishes, so the tests before a hang or a crash still count. Scoring an ``io``
problem can take (cases x ``timeout_s``): keep ``verifier.timeout_s`` above that, or the
verifier pool kills the worker and the score is 0. ``isolate = True``: the trainer scores in
the verifier pool's workers, which call the sandbox themselves (``warm_up`` starts it).

**Reward hacks the assert harness defeats** (each has a test in tests/test_code_task.py):

* ending the program early (``sys.exit(0)``, ``raise SystemExit``, ``os._exit(0)``, an
  exit code of 0 with nothing checked): the solution runs under ``exec`` inside a bare
  ``except``, an exception at its top level fails every test, and a test passes only on a
  result line that carries a random nonce the parent draws per call: no line, no pass;
* rebinding names the tests or the harness use (``builtins.AssertionError = ...``,
  ``builtins.len = ...``): the harness keeps its own references to every built-in it needs,
  taken before the solution runs, and the tests see a copy of the built-ins taken then;
  any exception in a test (whatever its class) is a failure;
* returning an object that equals everything (``__eq__`` always true) or is always truthy:
  the harness evaluates each operand of a top-level ``assert`` comparison itself and
  compares them only as plain built-in values (numbers, strings, bytes, None, ranges, and
  lists, tuples, dicts and sets of them; subclasses are converted to their base type). A value
  compared with a plain value must be plain too, so a solution that returns a
  ``Fraction`` where the test writes ``0.5`` (or a ``deque`` for a list) fails even where
  Python's ``==`` would say equal; two non-plain values (``Point(1, 2) == Point(1, 2)``)
  are compared with their own ``==``;
* flooding standard output: the solution's standard output goes to /dev/null and the
  harness reports on a private copy of the original one.

**Limits.** The solution runs in the harness's own interpreter, so a solution written to
attack *this* harness can still forge a pass: it can reach the nonce and the report
descriptor through the stack (``sys._getframe``, a traceback's frames) or the garbage
collector (``gc.get_objects``); a test pins that this still works
(``test_known_limit_introspecting_the_harness_forges_passes``). It can also change a module
the tests import (``math.isclose = ...``). Asserts nested in loops or functions inside a
test, and comparisons below the top level of an assert (``assert abs(f(x) - 1) < 1e-9``),
run as plain Python, so an always-equal object gets through those. ``io`` tests have none
of these weaknesses: the parent compares the output of a separate process, which learns
nothing of the expected output.
"""

from __future__ import annotations

import ast
import dataclasses
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from rlvr.sandbox import SandboxLimits, SandboxResult, run_python
from rlvr.tasks._records import FileParams, FileTask, require_field, text_id
from rlvr.tasks.base import TASKS, Problem, Score

ERROR_CHARS = 200  # longest Score.error
_SHOWN_CHARS = 60  # longest value or test shown inside an error


@TASKS.register("code")
class CodeTask(FileTask):
    """Programming problems from a file, scored by running tests in the sandbox (module docstring)."""

    name = "code"
    isolate: ClassVar[bool] = True

    @dataclass
    class Params(FileParams):
        prompt_field: str = field(default="prompt", metadata={"help": "record field holding the problem statement"})
        tests_field: str = field(default="tests", metadata={
            "help": "record field holding a list of assert statements (strings) run against the solution"})
        io_field: str = field(default="io", metadata={
            "help": "record field holding a list of {input, output} cases: stdin text and the expected stdout"})
        solution_field: str | None = field(default="solution", metadata={
            "help": "record field holding a reference solution (optional per record), the SFT demonstration; "
                    "null: ignore it"})
        score_mode: Literal["fraction", "all"] = field(default="fraction", metadata={
            "help": "reward: fraction = share of tests passed (0..1), all = 1 only when every test passes"})
        timeout_s: float = field(default=2.0, metadata={
            "help": "seconds of wall clock for one program run: per io case, or for all the asserts together", "gt": 0})
        memory_mb: int = field(default=256, metadata={"help": "memory of one program run in MiB (the interpreter alone needs about 30)", "ge": 64})
        prompt_template: str = field(
            default="{prompt}\n\nWrite your complete solution in Python, in one ```python code block.",
            metadata={"help": "str.format template of the prompt with {prompt}; write literal braces doubled"})

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.tests_field == self.io_field:
                raise ValueError("tests_field and io_field must name different fields")
            if "{prompt}" not in self.prompt_template:
                raise ValueError("prompt_template must contain {prompt}")
            try:
                self.prompt_template.format(prompt="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"prompt_template is not a valid str.format template with only {{prompt}} "
                                 f"({e}); write literal braces doubled") from None

    @property
    def limits(self) -> SandboxLimits:
        """The sandbox limits of one program run. The CPU limit is a backstop a second above
        the wall clock, so a busy loop is reported as the timeout it is."""
        p = self.params
        return SandboxLimits(wall_time_s=p.timeout_s, cpu_time_s=p.timeout_s + 1.0, memory_mb=p.memory_mb)

    # ------------------------------------------------------------------------- problems

    def to_problem(self, record: dict[str, Any], where: str) -> Problem:
        p = self.params
        statement = require_field(record, p.prompt_field, where, "prompt_field")
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError(f"{where}: field {p.prompt_field!r} must be a non-empty string")
        has_tests = record.get(p.tests_field) is not None
        has_io = record.get(p.io_field) is not None
        if has_tests == has_io:
            fields = ", ".join(sorted(map(str, record))) or "none"
            which = "both" if has_tests else "neither"
            raise ValueError(f"{where}: a problem needs exactly one of the fields {p.tests_field!r} (assert tests) "
                             f"or {p.io_field!r} (stdin/stdout cases), it has {which} (fields: {fields}); "
                             f"set tests_field or io_field")
        if has_tests:
            answer = {"tests": _check_tests(record[p.tests_field], f"{where}: field {p.tests_field!r}")}
        else:
            answer = {"io": _check_io(record[p.io_field], f"{where}: field {p.io_field!r}")}
        solution = None
        if p.solution_field is not None and record.get(p.solution_field) is not None:
            solution = record[p.solution_field]
            if not isinstance(solution, str):
                raise ValueError(f"{where}: field {p.solution_field!r} must be a string (a Python program)")
        problem_id = str(record[p.id_field]) if record.get(p.id_field) is not None else text_id(statement, "c")
        text = p.prompt_template.format(prompt=statement)
        prompt: str | list[dict[str, str]] = [{"role": "user", "content": text}] if p.chat else text
        return Problem(id=problem_id, prompt=prompt, answer=answer,
                       metadata={"statement": statement, "solution": solution, "source": where})

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        solution = problem.metadata.get("solution")
        if solution is None:
            raise NotImplementedError(
                f"code task: problem {problem.id!r} has no reference solution to demonstrate; give every record a "
                f"{self.params.solution_field!r} field (solution_field) or skip SFT")
        return f"```python\n{solution.rstrip()}\n```"

    def validate(self) -> list[str]:
        """Run every reference solution against its own tests; one line per problem whose
        reference does not pass them all (empty: the file is consistent)."""
        failures = []
        for problem in self.problems:
            solution = problem.metadata.get("solution")
            if solution is None:
                continue
            score = self.score(problem, f"```python\n{solution}\n```")
            if not score.correct:
                failures.append(f"{problem.metadata['source']} (id {problem.id}): {score.error}")
        return failures

    # ------------------------------------------------------------------------- scoring

    def extract_answer(self, completion: str) -> str | None:
        return extract_program(completion)

    def score(self, problem: Problem, completion: str) -> Score:
        program = self.extract_answer(completion)
        if program is None:
            return Score(reward=0.0, correct=False, extracted=None)  # no answer, as in every task: no error
        answer = problem.answer
        if "io" in answer:
            passed, total, error = self._score_io(program, answer["io"])
        elif "tests" in answer:
            passed, total, error = self._score_asserts(program, answer["tests"])
        else:
            raise ValueError(f"code task: problem {problem.id!r} has neither 'tests' nor 'io' in its answer")
        correct = passed == total
        reward = float(correct) if self.params.score_mode == "all" else passed / total
        return Score(reward=reward, correct=correct, extracted=program,
                     components={"tests_passed": float(passed), "tests_total": float(total)},
                     error=None if error is None else _cut(error, ERROR_CHARS))

    def _score_io(self, program: str, cases: list[dict[str, str]]) -> tuple[int, int, str | None]:
        passed, first_error = 0, None
        for i, case in enumerate(cases):
            limits = self.limits  # room for the expected output and then some
            need = 2 * len(case["output"].encode("utf-8")) + 1024
            limits = dataclasses.replace(limits, max_output_bytes=max(limits.max_output_bytes, need))
            result = run_python(program, stdin=case["input"], limits=limits)
            reason = _io_failure(result, case["output"])
            if reason is None:
                passed += 1
                continue
            if first_error is None:
                first_error = f"case {i + 1}/{len(cases)}: {reason}"
            if self.params.score_mode == "all":
                break
        return passed, len(cases), first_error

    def _score_asserts(self, program: str, tests: list[str]) -> tuple[int, int, str | None]:
        nonce = secrets.token_hex(16)
        limits = self.limits  # room for one report line (<= 301 characters) per test
        limits = dataclasses.replace(limits, max_output_bytes=max(limits.max_output_bytes, 1204 * len(tests) + 1024))
        result = run_python(harness(program, tests, nonce), limits=limits)
        reports = _read_reports(result.stdout, nonce, len(tests))
        passed, first_error = 0, None
        for i, test in enumerate(tests):
            if i in reports and reports[i][0]:
                passed += 1
            elif first_error is None:
                reason = (reports[i][1] or "failed") if i in reports else _missing_report(result)
                first_error = f"test {i + 1}/{len(tests)} `{_cut(_one_line(test), _SHOWN_CHARS)}`: {reason}"
        return passed, len(tests), first_error

    def warm_up(self) -> None:
        """Start this process's sandbox (a verifier worker calls this before its first item,
        so the ~0.1 s start does not count against an item's timeout)."""
        run_python("pass", limits=self.limits)


# ----------------------------------------------------------------------------- records


def _check_tests(tests: Any, where: str) -> list[str]:
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"{where} must be a non-empty list of strings (assert statements)")
    for i, test in enumerate(tests):
        try:
            ast.parse(test)
        except SyntaxError as e:
            raise ValueError(f"{where}, test {i}: not valid Python ({e.msg}, line {e.lineno})") from None
    return tests


def _check_io(cases: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(cases, list) or not cases:
        raise ValueError(f'{where} must be a non-empty list of {{"input": str, "output": str}} cases')
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("input"), str) or not isinstance(
                case.get("output"), str):
            raise ValueError(f'{where}, case {i}: expected {{"input": str, "output": str}}, got {case!r:.80}')
    return [{"input": c["input"], "output": c["output"]} for c in cases]


# ----------------------------------------------------------------------------- extraction

_FENCE = re.compile(r"```[ \t]*(python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_program(completion: str) -> str | None:
    """The last ```` ```python ```` (or bare ```` ``` ````) fenced block; else the whole
    completion when it parses as Python; else None."""
    blocks = [m.group(2) for m in _FENCE.finditer(completion)]
    blocks = [b for b in blocks if b.strip()]
    if blocks:
        return blocks[-1]
    if "```" in completion or not completion.strip():
        return None  # a fence in another language, or an unclosed one: no Python program
    try:
        ast.parse(completion)
    except (SyntaxError, ValueError):
        return None
    return completion


# ----------------------------------------------------------------------------- io tests


def normalize_output(text: str) -> str:
    """Output as compared: trailing whitespace stripped from each line, trailing blank lines dropped."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _io_failure(result: SandboxResult, expected: str) -> str | None:
    """Why a run fails its case, or None when it passes."""
    if result.timed_out:
        return result.error or "timeout"
    if result.oom:
        return result.error or "memory limit"
    if result.exit_code != 0:
        return f"{result.error or f'exit code {result.exit_code}'}{_stderr_tail(result.stderr)}"
    if result.truncated:
        return "output over the limit"
    got, want = normalize_output(result.stdout), normalize_output(expected)
    if got == want:
        return None
    got_lines, want_lines = got.split("\n"), want.split("\n")
    for n, (g, w) in enumerate(zip(got_lines, want_lines), 1):
        if g != w:
            return f"wrong output on line {n}: got {_cut(g, 40)!r}, expected {_cut(w, 40)!r}"
    return f"wrong output: {len(got_lines)} lines, expected {len(want_lines)}"


def _stderr_tail(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return f" ({_cut(lines[-1].strip(), 80)})" if lines else ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- assert tests


def harness(program: str, tests: list[str], nonce: str) -> str:
    """The program one sandbox run executes for assert ``tests``: the harness source with
    the solution, the tests (pre-parsed here, in the trusted parent) and ``nonce`` bound in."""
    plans = [_plan_test(t) for t in tests]
    return f"{_HARNESS}\n_rlvr_main({program!r}, {plans!r}, {nonce!r})\n"


def _plan_test(test: str) -> list[tuple]:
    """A test as steps for the harness: ``("assert", check)`` for a top-level assert, whose
    ``check`` is a tree of and/or/not over comparisons and values, ``("exec", source)`` for
    any other statement."""
    steps: list[tuple] = []
    for statement in ast.parse(test).body:
        if isinstance(statement, ast.Assert):
            steps.append(("assert", _plan_check(statement.test)))
        else:
            steps.append(("exec", ast.unparse(statement)))
    return steps


_CMP_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
            ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


def _plan_check(node: ast.expr) -> tuple:
    if isinstance(node, ast.BoolOp):
        return ("and" if isinstance(node.op, ast.And) else "or", [_plan_check(v) for v in node.values])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ("not", _plan_check(node.operand))
    if isinstance(node, ast.Compare):
        operands = [ast.unparse(n) for n in [node.left, *node.comparators]]
        return ("cmp", operands, [_CMP_OPS[type(op)] for op in node.ops])
    return ("val", ast.unparse(node))


def _read_reports(stdout: str, nonce: str, count: int) -> dict[int, tuple[bool, str]]:
    """The harness's per-test lines ``<nonce> <index> <1|0> <reason>``; lines without the
    nonce (anything the solution printed or forged) are ignored."""
    reports: dict[int, tuple[bool, str]] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[0] != nonce or not parts[1].isdigit() or parts[2] not in ("0", "1"):
            continue
        index = int(parts[1])
        if index < count and index not in reports:
            reports[index] = (parts[2] == "1", parts[3] if len(parts) > 3 else "")
    return reports


def _missing_report(result: SandboxResult) -> str:
    """Why a test has no report line: the run ended before the harness reached it."""
    if result.timed_out:
        return result.error or "timeout"
    if result.oom:
        return result.error or "memory limit"
    what = result.error or f"exit code {result.exit_code}"
    return f"the program ended before this test ran ({what}){_stderr_tail(result.stderr)}"


# The harness runs in the sandbox as ``python -c``. Everything it uses after the solution has
# run is bound to a local name first, since the solution shares its interpreter and may have
# rebound any global or built-in name by then. Comments say why each step is there.
_HARNESS = r'''
def _rlvr_main(_solution, _plans, _nonce):
    import builtins as _builtins
    import operator as _operator
    import os as _os
    import sys as _sys

    _exec, _eval, _compile, _type, _repr, _len = exec, eval, compile, type, repr, len
    _int, _float, _complex, _bool, _str, _bytes = int, float, complex, bool, str, bytes
    _list, _tuple, _dict, _set, _frozenset, _issubclass = list, tuple, dict, set, frozenset, issubclass
    _range = range
    _exc_info, _write, _NoneType = _sys.exc_info, _os.write, type(None)
    _SCALARS = (_int, _float, _complex, _bool, _str, _bytes, _NoneType, range)  # immutable C types
    _OPS = {"==": _operator.eq, "!=": _operator.ne, "<": _operator.lt, "<=": _operator.le, ">": _operator.gt,
            ">=": _operator.ge, "is": _operator.is_, "is not": _operator.is_not,
            "in": lambda a, b: _operator.contains(b, a), "not in": lambda a, b: not _operator.contains(b, a)}
    _pristine = _dict(_builtins.__dict__)  # the tests' built-ins: a copy taken before the solution runs
    _NOT_PLAIN = object()

    # Report on a private copy of stdout; the solution's own output goes to /dev/null so it
    # can neither crowd the reports out of the kept output nor be mistaken for them. Its
    # stderr stays: the parent shows the last line when the run dies.
    _report_fd = _os.dup(1)
    _null = _os.open(_os.devnull, _os.O_WRONLY)
    _sys.stdout.flush()
    _os.dup2(_null, 1)

    def _report(index, ok, reason):
        line = _nonce + " " + _str(index) + " " + ("1" if ok else "0") + " " + reason
        _write(_report_fd, (_str.replace(line, "\n", " ")[:300] + "\n").encode("utf-8", "backslashreplace"))

    def _describe():
        try:
            exc = _exc_info()[1]
            text = _str.__str__(_type(exc).__name__)
            message = exc.args[0] if _type(exc.args) is _tuple and _len(exc.args) == 1 else ""
            if _type(message) is _str and message:
                text = text + ": " + message[:80]
            return text
        except:  # noqa: E722 (a hostile exception may break even this)
            return "an exception"

    def _plain(value, depth):
        """``value`` as built-in data (exact types, subclasses converted to their base), or _NOT_PLAIN."""
        t = _type(value)
        for s in _SCALARS:
            if t is s:
                return value
        if depth > 100:
            return _NOT_PLAIN
        if _issubclass(t, _int):
            return _int.__index__(value)
        if _issubclass(t, _float):
            return _float.__float__(value)
        if _issubclass(t, _str):
            return _str.__str__(value)
        if _issubclass(t, _list) or _issubclass(t, _tuple):
            items = []
            for item in (_list.__iter__(value) if _issubclass(t, _list) else _tuple.__iter__(value)):
                item = _plain(item, depth + 1)
                if item is _NOT_PLAIN:
                    return _NOT_PLAIN
                items.append(item)
            return items if _issubclass(t, _list) else _tuple(items)
        if _issubclass(t, _dict):
            out = {}
            for key, item in _dict.items(value):
                key, item = _plain(key, depth + 1), _plain(item, depth + 1)
                if key is _NOT_PLAIN or item is _NOT_PLAIN:
                    return _NOT_PLAIN
                out[key] = item
            return out
        if _issubclass(t, _set) or _issubclass(t, _frozenset):
            out = _set()
            for item in (_set.__iter__(value) if _issubclass(t, _set) else _frozenset.__iter__(value)):
                item = _plain(item, depth + 1)
                if item is _NOT_PLAIN:
                    return _NOT_PLAIN
                out.add(item)
            return out if _issubclass(t, _set) else _frozenset(out)
        return _NOT_PLAIN

    def _show(value):
        plain = _plain(value, 0)
        if plain is _NOT_PLAIN:
            return "<" + _str.__str__(_type(value).__name__) + " object>"
        text = _repr(plain)
        return text if _len(text) <= 40 else text[:39] + "..."

    def _value(source, ns):
        return _eval(_compile(source, "<test>", "eval", 0, True, 0), ns)

    def _check(node, ns):
        """(passed, reason) of one assert's condition, evaluated by the harness itself."""
        kind = node[0]
        if kind == "and" or kind == "or":
            for child in node[1]:
                ok, reason = _check(child, ns)
                if ok is (kind == "or"):
                    return ok, reason
            return kind == "and", reason
        if kind == "not":
            ok, reason = _check(node[1], ns)
            return not ok, ("the negated condition holds" + (": " + reason if reason else "")) if ok else ""
        if kind == "cmp":
            values = [_value(source, ns) for source in node[1]]
            for i in _range(_len(node[2])):
                op, left, right = node[2][i], values[i], values[i + 1]
                if op == "is" or op == "is not":
                    ok = _OPS[op](left, right)
                else:
                    a, b = _plain(left, 0), _plain(right, 0)
                    if (a is _NOT_PLAIN) != (b is _NOT_PLAIN):
                        odd = node[1][i] if a is _NOT_PLAIN else node[1][i + 1]
                        return False, odd[:60] + " is " + _show(left if a is _NOT_PLAIN else right) + \
                            ", not a plain built-in value"
                    ok = _OPS[op](left, right) if a is _NOT_PLAIN else _OPS[op](a, b)
                    ok = _bool(ok)
                if not ok:
                    return False, _show(left) + " " + op + " " + _show(right) + " is false"
            return True, ""
        value = _plain(_value(node[1], ns), 0)
        if value is _NOT_PLAIN:
            return False, node[1][:60] + " is not a plain built-in value"
        return _bool(value), node[1][:60] + " is " + _show(value)

    namespace = {"__name__": "solution", "__builtins__": _builtins}
    try:
        _exec(_compile(_solution, "<solution>", "exec", 0, True, 0), namespace)
    except:  # noqa: E722 (bare: matches without looking a name up, whatever the solution rebound)
        reason = "the solution raised " + _describe() + " before the tests ran"
        for index in _range(_len(_plans)):
            _report(index, False, reason)
        return
    tests_ns = _dict(namespace)
    tests_ns["__builtins__"] = _pristine
    for index in _range(_len(_plans)):
        ok, reason = True, ""
        try:
            for step in _plans[index]:
                if step[0] == "exec":
                    _exec(_compile(step[1], "<test>", "exec", 0, True, 0), tests_ns)
                else:
                    ok, reason = _check(step[1], tests_ns)
                    if not ok:
                        break
        except:  # noqa: E722
            ok, reason = False, _describe()
        _report(index, ok, reason)
'''
