"""Tests for the arithmetic task: precedence-aware scratchpad, scoring, sampling, params."""

import random
import statistics

import pytest

from rlvr.tasks import TASKS, Problem
from rlvr.tasks.arithmetic import ArithmeticTask, evaluate_steps, render, scratchpad
from rlvr.typed_yaml import ConfigError, from_dict


def _task(**params):
    return ArithmeticTask(ArithmeticTask.Params(**params))


def _problem(operands, ops):
    _, value = evaluate_steps(operands, ops)
    expression = render(operands, ops)
    return Problem(id=expression, prompt=[{"role": "user", "content": expression}], answer=str(value),
                   metadata={"operands": operands, "ops": ops})


@pytest.mark.parametrize("operands, ops, expected", [
    ([3, 4, 5], ["*", "+"], "3*4=12 12+5=17 => 17"),
    ([3, 4, 5], ["+", "*"], "4*5=20 3+20=23 => 23"),
    ([3, 4, 5, 6], ["+", "*", "-"], "4*5=20 3+20=23 23-6=17 => 17"),
    ([3, 10, 2], ["-", "+"], "3-10=-7 -7+2=-5 => -5"),
    ([2, 3, 4], ["*", "*"], "2*3=6 6*4=24 => 24"),
    ([9, 2, 3, 4], ["-", "*", "*"], "2*3=6 6*4=24 9-24=-15 => -15"),
    ([12, 0], ["*"], "12*0=0 => 0"),
    ([7, 8], ["-"], "7-8=-1 => -1"),
    ([5, 6, 7, 8], ["*", "-", "*"], "5*6=30 7*8=56 30-56=-26 => -26"),
])
def test_scratchpad_exact(operands, ops, expected):
    assert scratchpad(operands, ops) == expected
    assert _task().demonstration(_problem(operands, ops), random.Random(0)) == expected


def test_render():
    assert render([3, 4, 5], ["+", "*"]) == "3+4*5"
    assert render([10, 2], ["-"]) == "10-2"


def test_evaluate_steps_rejects_bad_input():
    with pytest.raises(ValueError, match="operators"):
        evaluate_steps([1, 2, 3], ["+"])
    with pytest.raises(ValueError, match="unknown operator"):
        evaluate_steps([1, 2], ["/"])


def test_demonstrations_score_one_and_match_python():
    task = _task(min_digits=1, max_digits=3, num_operands=4)
    rng = random.Random(0)
    for _ in range(200):
        p = task.generate(rng)
        demo = task.demonstration(p, rng)
        assert task.score(p, demo).reward == 1.0
        # the reference is Python's own value of the expression (only + - * and ints)
        assert int(p.answer) == eval(p.id)  # noqa: S307 - p.id is built from digits and + - * only
        assert demo.count("=") - 1 == 3  # one step per operator
        assert demo.isascii() and demo.isprintable()


def test_wrong_answers_score_zero():
    task = _task()
    p = _problem([3, 4, 5], ["+", "*"])
    assert task.score(p, "=> 23").correct
    for wrong in ["=> 22", "=> 24", "=> -23", "3+4=7 7*5=35 => 35", "23", ""]:
        s = task.score(p, wrong)
        assert (s.reward, s.correct) == (0.0, False), wrong


def test_extraction_edge_cases():
    task = _task()
    assert task.extract_answer("=> 5 then => -12") == "-12"
    assert task.extract_answer("=>-7") == "-7"
    assert task.extract_answer("4*5=20 3+20=23") is None
    assert task.extract_answer("=> abc") is None
    p = _problem([3, 10], ["-"])
    assert task.score(p, "=> -7").correct
    assert task.score(p, "=> -07").correct  # compared as integers
    assert not task.score(p, "=> 7").correct


def test_generate_fields_and_determinism():
    task = _task(operations=["+", "*"], num_operands=3)
    p = task.generate(random.Random(5))
    assert p.prompt == [{"role": "user", "content": p.id}]
    assert set(p.metadata["ops"]) <= {"+", "*"} and len(p.metadata["operands"]) == 3
    first = [q.id for q in task.sample_problems(50, seed=3)]
    assert first == [q.id for q in task.sample_problems(50, seed=3)]
    assert first != [q.id for q in task.sample_problems(50, seed=4)]


def test_operations_subset_respected():
    problems = _task(operations=["-"], num_operands=2).sample_problems(100, seed=0)
    assert all(p.metadata["ops"] == ["-"] for p in problems)
    assert any(int(p.answer) < 0 for p in problems)  # negative results occur


def test_difficulty_knobs_change_distribution():
    def mean_operand_length(**params):
        problems = _task(**params).sample_problems(300, seed=0)
        return statistics.mean(len(str(x)) for p in problems for x in p.metadata["operands"])

    assert mean_operand_length(min_digits=1, max_digits=1) == 1.0
    assert 2.8 < mean_operand_length(min_digits=2, max_digits=4) < 3.2
    long = _task(num_operands=4).sample_problems(50, seed=0)
    short = _task(num_operands=2).sample_problems(50, seed=0)
    assert {len(p.metadata["operands"]) for p in long} == {4}
    assert {len(p.metadata["operands"]) for p in short} == {2}
    assert statistics.mean(len(p.id) for p in long) > statistics.mean(len(p.id) for p in short) + 4


def test_params_validation():
    with pytest.raises(ValueError, match="operations"):
        ArithmeticTask.Params(operations=[])
    with pytest.raises(ValueError, match="operations"):
        ArithmeticTask.Params(operations=["+", "/"])
    with pytest.raises(ValueError, match="operations"):
        ArithmeticTask.Params(operations=["+", "+"])
    with pytest.raises(ValueError, match="min_digits"):
        ArithmeticTask.Params(min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="num_operands"):
        ArithmeticTask.Params(num_operands=5)
    with pytest.raises(ValueError, match="num_operands"):
        ArithmeticTask.Params(num_operands=1)
    with pytest.raises(ConfigError, match="operations"):
        from_dict(ArithmeticTask.Params, {"operations": ["^"]}, source="task.params")
    assert from_dict(ArithmeticTask.Params, {"operations": ["*"]}).operations == ["*"]
    assert TASKS.get("arithmetic") is ArithmeticTask
