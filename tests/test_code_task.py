"""Tests for the code task: the reference files pass, wrong programs get the exact fraction,
timeouts, reward hacks on the assert harness, extraction, loading errors, the held-out
split, and scoring through a VerifierPool worker. Every score runs the real sandbox."""

import json
import pickle
import random
import time
from pathlib import Path

import pytest

from rlvr.tasks import TASKS, Problem
from rlvr.tasks.code import CodeTask, extract_program, normalize_output
from rlvr.typed_yaml import ConfigError, from_dict
from rlvr.verify import VerifierPool

pytestmark = pytest.mark.timeout(120)

DATA = Path(__file__).parent / "data"
ASSERTS, IO = DATA / "code_asserts.jsonl", DATA / "code_io.jsonl"

ADD = Problem(id="add", prompt="", answer={"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0",
                                                    "assert add(10, 5) == 15"]})
SUM_TWO = Problem(id="sum", prompt="", answer={"io": [{"input": "1 2\n", "output": "3\n"},
                                                      {"input": "-5 5\n", "output": "0\n"},
                                                      {"input": "100 23\n", "output": "123\n"}]})


def _task(path: Path | str = "unused.jsonl", **params) -> CodeTask:
    return CodeTask(CodeTask.Params(path=str(path), **params))


def _fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reference files


@pytest.mark.parametrize("path, kind, at_least", [(ASSERTS, "tests", 5), (IO, "io", 5)])
def test_every_reference_solution_scores_one(path, kind, at_least):
    task = _task(path, heldout_fraction=0.0)
    problems = task.problems
    assert len(problems) >= at_least and all(kind in p.answer for p in problems)
    assert task.validate() == []
    for problem in problems:
        score = task.score(problem, task.demonstration(problem, random.Random(0)))
        assert (score.reward, score.correct, score.error) == (1.0, True, None), problem.id
        assert score.components["tests_passed"] == score.components["tests_total"] == len(
            problem.answer[kind])


def test_validate_reports_a_broken_reference(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"id": "ok", "prompt": "p", "tests": ["assert f() == 1"], "solution": "def f():\n    return 1"},
        {"id": "broken", "prompt": "q", "tests": ["assert g() == 1"], "solution": "def g():\n    return 2"},
        {"id": "no_ref", "prompt": "r", "tests": ["assert h() == 1"]},
    ])
    (failure,) = _task(path, heldout_fraction=0.0).validate()
    assert "p.jsonl line 2 (id broken)" in failure and "2 == 1 is false" in failure


# ----------------------------------------------------------------------------- partial credit


def test_wrong_assert_solution_gets_exact_fraction():
    wrong = _fenced("def add(a, b):\n    return abs(a) + b")  # right on 2 of 3 tests
    fraction = _task().score(ADD, wrong)
    assert fraction.reward == pytest.approx(2 / 3) and not fraction.correct
    assert fraction.components == {"tests_passed": 2.0, "tests_total": 3.0}
    assert fraction.error == "test 2/3 `assert add(-1, 1) == 0`: 2 == 0 is false"
    strict = _task(score_mode="all").score(ADD, wrong)
    assert (strict.reward, strict.correct, strict.components["tests_passed"]) == (0.0, False, 2.0)


def test_wrong_io_solution_gets_exact_fraction():
    wrong = _fenced("a, b = map(int, input().split())\nprint(abs(a) + b)")  # wrong on case 2 only
    fraction = _task().score(SUM_TWO, wrong)
    assert fraction.reward == pytest.approx(2 / 3) and not fraction.correct
    assert fraction.components == {"tests_passed": 2.0, "tests_total": 3.0}
    assert fraction.error == "case 2/3: wrong output on line 1: got '10', expected '0'"
    strict = _task(score_mode="all").score(SUM_TWO, wrong)
    assert (strict.reward, strict.correct) == (0.0, False)
    assert strict.components == {"tests_passed": 1.0, "tests_total": 3.0}  # stopped at the first failing case


def test_reference_file_problem_with_two_wrong_of_four():
    task = _task(ASSERTS, heldout_fraction=0.0)
    problem = next(p for p in task.problems if p.id == "fib")
    score = task.score(problem, _fenced("def fib(n):\n    return n"))  # right for 0 and 1 only
    assert score.reward == 0.5 and score.components == {"tests_passed": 2.0, "tests_total": 4.0}


def test_io_output_comparison_ignores_trailing_whitespace_only():
    task = _task()
    padded = task.score(SUM_TWO, _fenced("a, b = map(int, input().split())\nprint(a + b, '  ')\nprint()\nprint()"))
    assert padded.reward == 1.0
    indented = task.score(SUM_TWO, _fenced("a, b = map(int, input().split())\nprint(' ', a + b)"))
    assert indented.reward == 0.0
    assert normalize_output("1  \n2\t\n\n\n") == "1\n2"


def test_io_runtime_error_names_the_exception():
    score = _task().score(SUM_TWO, _fenced("print(int('x'))"))
    assert score.reward == 0.0 and score.error.startswith("case 1/3: ")
    assert "ValueError: invalid literal for int()" in score.error


# ----------------------------------------------------------------------------- timeouts


def test_infinite_loop_in_asserts_times_out():
    start = time.monotonic()
    score = _task(timeout_s=1.0).score(ADD, _fenced("def add(a, b):\n    while True:\n        pass"))
    assert time.monotonic() - start < 1.0 + 2.0
    assert (score.reward, score.correct) == (0.0, False)
    assert "timeout" in score.error


def test_infinite_loop_in_io_times_out():
    one_case = Problem(id="loop", prompt="", answer={"io": [{"input": "", "output": "1\n"}]})
    start = time.monotonic()
    score = _task(timeout_s=1.0).score(one_case, _fenced("while True:\n    pass"))
    assert time.monotonic() - start < 1.0 + 2.0
    assert score.reward == 0.0 and "timeout" in score.error


def test_tests_before_a_hang_still_count():
    hang_on_second = "def add(a, b):\n    while a < 0:\n        pass\n    return a + b"
    score = _task(timeout_s=1.0).score(ADD, _fenced(hang_on_second))
    assert score.components == {"tests_passed": 1.0, "tests_total": 3.0}
    assert score.error.startswith("test 2/3") and "timeout" in score.error


# ----------------------------------------------------------------------------- reward hacks


@pytest.mark.parametrize("hack, reason", [
    ("import sys\nsys.exit(0)", "the solution raised SystemExit before the tests ran"),
    ("raise SystemExit", "the solution raised SystemExit before the tests ran"),
    ("raise SystemExit(0)\ndef add(a, b):\n    return a + b", "the solution raised SystemExit before the tests ran"),
    ("import os\nos._exit(0)", "the program ended before this test ran (exit code 0)"),
    ("import os, sys\nsys.stdout.flush()\nos.kill(os.getpid(), 9)", "the program ended before this test ran"),
])
def test_ending_the_program_early_scores_zero(hack, reason):
    score = _task().score(ADD, _fenced(hack))
    assert (score.reward, score.correct, score.components["tests_passed"]) == (0.0, False, 0.0)
    assert reason in score.error


def test_exiting_inside_a_tested_function_fails_that_test():
    exits_on_second = "import os\ndef add(a, b):\n    if a < 0:\n        os._exit(0)\n    return a + b"
    assert _task().score(ADD, _fenced(exits_on_second)).components["tests_passed"] == 1.0
    raises_on_second = "import sys\ndef add(a, b):\n    if a < 0:\n        sys.exit(0)\n    return a + b"
    score = _task().score(ADD, _fenced(raises_on_second))
    assert score.components["tests_passed"] == 2.0 and "SystemExit" in score.error


def test_io_exit_hacks_score_zero():
    task = _task()
    for hack in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"):
        assert task.score(SUM_TWO, _fenced(hack)).reward == 0.0


@pytest.mark.parametrize("hack", [
    # add returns -1, wrong on every test. A failing assert raises the real AssertionError,
    # whatever the name is bound to
    "import builtins\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never\n"
    "def add(a, b):\n    return -1",
    "__builtins__.AssertionError = KeyError\ndef add(a, b):\n    return -1",
    # equal to everything, truthy, and a subclass of int that equals everything
    "class Same:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
    "def add(a, b):\n    return Same()",
    "class Same(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
    "def add(a, b):\n    return Same(-1)",
    "class Same(list):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Same()",
    # printing what a result line might look like, without the nonce
    "for i in range(3):\n    print(f'{i} 1 ok')\n    print(f'PASS {i}')\ndef add(a, b):\n    return -1",
])
def test_harness_hacks_score_zero(hack):
    score = _task().score(ADD, _fenced(hack))
    assert (score.reward, score.components["tests_passed"]) == (0.0, 0.0), score.error


def test_rebinding_builtins_the_tests_use_does_not_help():
    problem = Problem(id="len", prompt="", answer={"tests": ["assert len(pairs(3)) == 3",
                                                             "assert isinstance(pairs(0), list)"]})
    hack = "import builtins\nbuiltins.len = lambda x: 3\nbuiltins.isinstance = lambda *a: True\n" \
           "def pairs(n):\n    return 'no'"
    score = _task().score(problem, _fenced(hack))
    assert score.reward == 0.0 and score.error == "test 1/2 `assert len(pairs(3)) == 3`: 2 == 3 is false"


def test_plain_subclasses_compare_by_value():
    problem = Problem(id="d", prompt="", answer={"tests": ["assert counts() == {'a': 2}", "assert n() == 3",
                                                           "assert not empty()"]})
    honest = ("from collections import OrderedDict, defaultdict\nfrom enum import IntEnum\n"
              "class N(IntEnum):\n    THREE = 3\n"
              "def counts():\n    d = defaultdict(int)\n    d['a'] += 2\n    return d\n"
              "def n():\n    return N.THREE\ndef empty():\n    return OrderedDict()")
    assert _task().score(problem, _fenced(honest)).reward == 1.0


def test_solution_output_cannot_crowd_out_the_reports():
    flood = "print('x' * 200_000)\ndef add(a, b):\n    print('y' * 100_000)\n    return a + b"
    assert _task().score(ADD, _fenced(flood)).reward == 1.0


def test_known_limit_introspecting_the_harness_forges_passes():
    # Documented in rlvr/tasks/code.py: a solution written against this harness can read the
    # nonce from the harness's frame. If this starts failing, the harness got stronger:
    # update the module docstring's "Limits".
    forger = (
        "import os, sys\n"
        "def add(a, b):\n"
        "    f = sys._getframe()\n"
        "    while '_nonce' not in f.f_locals:\n"
        "        f = f.f_back\n"
        "    v = f.f_locals\n"
        "    for i in range(len(v['_plans'])):\n"
        "        os.write(v['_report_fd'], f\"{v['_nonce']} {i} 1 forged\\n\".encode())\n"
        "    os._exit(0)"
    )
    assert _task().score(ADD, _fenced(forger)).reward == 1.0


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("completion, expected", [
    ("first\n```python\nx = 1\n```\nthen\n```python\nx = 2\n```\ndone", "x = 2\n"),
    ("```\nprint(1)\n```", "print(1)\n"),
    ("```py\nprint(1)\n```", "print(1)\n"),
    ("```python\nx = 1\n```\n```bash\nls\n```", "x = 1\n"),
    ("```python\nx = 1\n```\nand a truncated ```python\nx = ", "x = 1\n"),
    ("def f():\n    return 1\n", "def f():\n    return 1\n"),
    ("I think the answer is to loop over the list.", None),
    ("```bash\nls -la\n```", None),
    ("", None),
])
def test_extract_program(completion, expected):
    assert extract_program(completion) == expected


def test_no_code_block_scores_zero_without_running():
    score = _task().score(ADD, "I would add the two numbers together, obviously.")
    assert (score.reward, score.correct, score.extracted, score.error) == (0.0, False, None, None)


# ----------------------------------------------------------------------------- loading


def test_registered_and_isolated():
    assert TASKS.get("code") is CodeTask and CodeTask.isolate is True


def test_prompt_rendering_and_custom_field_names(tmp_path):
    path = _write_jsonl(tmp_path / "mbpp.jsonl", [
        {"task_id": 7, "text": "Write f.", "test_list": ["assert f() == 1"], "code": "def f():\n    return 1"}])
    task = _task(path, prompt_field="text", tests_field="test_list", solution_field="code", id_field="task_id",
                 heldout_fraction=0.0)
    (problem,) = task.problems
    assert problem.id == "7" and problem.answer == {"tests": ["assert f() == 1"]}
    assert problem.prompt == [{"role": "user", "content": "Write f.\n\nWrite your complete solution in Python, "
                                                          "in one ```python code block."}]
    assert task.demonstration(problem, random.Random(0)) == "```python\ndef f():\n    return 1\n```"
    plain = _task(path, prompt_field="text", tests_field="test_list", chat=False, prompt_template="Q: {prompt}",
                  heldout_fraction=0.0)
    assert plain.problems[0].prompt == "Q: Write f."
    with pytest.raises(NotImplementedError, match="no reference solution"):
        plain.demonstration(plain.problems[0], random.Random(0))


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "tests": ["assert 1"]}\n\n{"prompt": "b", "tests": [\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 3: invalid JSON"):
        _ = _task(path).problems


@pytest.mark.parametrize("record, message", [
    ({"prompt": "a"}, r"p\.jsonl line 2: a problem needs exactly one of the fields 'tests' .* or 'io' .*"
                      r"it has neither \(fields: prompt\)"),
    ({"prompt": "a", "tests": ["assert 1"], "io": [{"input": "", "output": ""}]}, r"line 2: .* it has both"),
    ({"question": "a", "tests": ["assert 1"]}, r"line 2: no field 'prompt' \(fields: question, tests\); "
                                               r"set prompt_field"),
    ({"prompt": "a", "tests": "assert f() == 1"}, r"line 2: field 'tests' must be a non-empty list of strings"),
    ({"prompt": "a", "tests": ["assert f( == 1"]}, r"line 2: field 'tests', test 0: not valid Python"),
    ({"prompt": "a", "io": [{"input": "1"}]}, r"line 2: field 'io', case 0: expected \{\"input\": str, "),
])
def test_bad_records_name_line_and_field(tmp_path, record, message):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok", "tests": ["assert 1"]}, record])
    with pytest.raises(ValueError, match=message):
        _ = _task(path).problems


def test_params_are_checked():
    with pytest.raises(ConfigError, match="path is required"):
        from_dict(CodeTask.Params, {})
    with pytest.raises(ConfigError, match="score_mode"):
        from_dict(CodeTask.Params, {"path": "x.jsonl", "score_mode": "best"})
    with pytest.raises(ConfigError, match="prompt_template must contain"):
        from_dict(CodeTask.Params, {"path": "x.jsonl", "prompt_template": "solve it"})
    with pytest.raises(ConfigError, match="timeout_s"):
        from_dict(CodeTask.Params, {"path": "x.jsonl", "timeout_s": 0})
    with pytest.raises(ConfigError, match="memory_mb"):
        from_dict(CodeTask.Params, {"path": "x.jsonl", "memory_mb": 16})


def test_heldout_and_training_splits_are_disjoint(tmp_path):
    records = [{"id": f"p{i}", "prompt": f"problem {i}", "tests": [f"assert f() == {i}"]} for i in range(300)]
    task = _task(_write_jsonl(tmp_path / "p.jsonl", records), heldout_fraction=0.2)
    split = task.heldout_ids
    assert 30 <= len(split) <= 90
    heldout = task.sample_problems(20, seed=0, split="heldout")
    assert {p.id for p in heldout} <= split
    for seed in range(10):
        train = task.sample_problems(30, seed=seed, exclude={p.id for p in heldout})
        assert len({p.id for p in train}) == 30 and not {p.id for p in train} & split


def test_pickled_task_leaves_data_behind(tmp_path):
    task = _task(ASSERTS, heldout_fraction=0.0)
    problem = task.problems[0]
    clone = pickle.loads(pickle.dumps(task))
    assert clone._splits is None and len(pickle.dumps(task)) < 2000
    assert clone.score(problem, task.demonstration(problem, random.Random(0))).correct


# ----------------------------------------------------------------------------- in a verifier worker


def test_scores_in_a_verifier_pool_worker():
    task = _task(IO, heldout_fraction=0.0)
    problems = task.problems[:3]
    rng = random.Random(0)
    completions = [task.demonstration(p, rng) for p in problems] + ["no code here", _fenced("import os\nos._exit(0)")]
    with VerifierPool(task, workers=1, timeout_s=20.0) as pool:
        scores = pool.score_many(problems + problems[:2], completions)
    assert [s.reward for s in scores] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert all(s.error is None for s in scores[:3])
    assert scores[3].extracted is None
    assert scores[4].components == {"tests_passed": 0.0, "tests_total": 3.0}
