"""The multiplication task: operands by digit count, exact answer check, tool or direct demonstrations."""

from __future__ import annotations

import random

import pytest

from rlvr.tasks import TASKS
from rlvr.typed_yaml import ConfigError, from_dict


def _task(**params):
    cls = TASKS.get("multiplication")
    return cls(from_dict(cls.Params, params))


def test_problems_answers_and_scoring():
    task = _task(min_digits=2, max_digits=3)
    for problem in task.sample_problems(50, 0):
        a, b = problem.metadata["a"], problem.metadata["b"]
        assert 10 <= a <= 999 and 10 <= b <= 999 and problem.answer == str(a * b)
        assert problem.prompt == [{"role": "user", "content": f"{a}*{b}"}]
        assert task.score(problem, f"<code>print({a}*{b})</code><output>{a * b}\n</output>=> {a * b}").correct
        assert not task.score(problem, f"=> {a * b + 1}").correct
        assert task.score(problem, "no answer").extracted is None


def test_demonstrations_follow_the_tool_rate():
    problem = _task().sample_problems(1, 1)[0]
    a, b = problem.metadata["a"], problem.metadata["b"]
    assert _task(tool_demo_rate=1.0).demonstration(problem, random.Random(0)) == f"<code>print({a}*{b})</code>=> {a * b}"
    assert _task(tool_demo_rate=0.0).demonstration(problem, random.Random(0)) == f"=> {a * b}"
    rng = random.Random(0)
    demos = [_task(tool_demo_rate=0.3).demonstration(problem, rng) for _ in range(2000)]
    assert sum(d.startswith("<code>") for d in demos) / 2000 == pytest.approx(0.3, abs=0.03)


def test_bad_params_name_the_field():
    with pytest.raises(ConfigError, match="tool_demo_rate"):
        _task(tool_demo_rate=1.5)
