"""Tests for the countdown task: solvable generation, safe expression checking, scoring."""

import os
import random
import statistics

import pytest

from rlvr.tasks import TASKS, Problem
from rlvr.tasks.countdown import (CountdownTask, ExpressionError, check_numbers, parse_expression, render,
                                  tree_steps)
from rlvr.typed_yaml import ConfigError, from_dict


def _task(**params):
    return CountdownTask(CountdownTask.Params(**params))


def _problem(numbers, target, tree):
    steps = []
    tree_steps(tree, steps)
    prompt = f"make {target} from {' '.join(map(str, numbers))}"
    return Problem(id=prompt, prompt=[{"role": "user", "content": prompt}], answer=str(target),
                   metadata={"numbers": numbers, "target": target, "solution": render(tree), "steps": steps})


@pytest.mark.parametrize("numbers, target, tree, expected", [
    ([3, 5, 8, 4], 23, ("+", ("*", 5, 4), 3), "5*4=20 20+3=23 => 5*4+3"),
    ([2, 6, 7], 30, ("*", ("-", 7, 2), 6), "7-2=5 5*6=30 => (7-2)*6"),
    ([9, 3, 2, 5], 1, ("-", ("/", 9, 3), 2), "9/3=3 3-2=1 => 9/3-2"),
    ([10, 4, 3, 1], 2, ("/", 10, ("+", 4, 1)), "4+1=5 10/5=2 => 10/(4+1)"),
    ([8, 3, 6, 3], 2, ("-", 8, ("+", 3, 3)), "3+3=6 8-6=2 => 8-(3+3)"),
    ([4, 6, 2, 5], 12, ("*", 4, ("/", 6, 2)), "6/2=3 4*3=12 => 4*6/2"),
])
def test_demonstration_exact(numbers, target, tree, expected):
    p = _problem(numbers, target, tree)
    assert _task().demonstration(p, random.Random(0)) == expected


def test_render_parentheses():
    assert render(("-", 10, ("-", 4, 1))) == "10-(4-1)"
    assert render(("+", 10, ("-", 4, 1))) == "10+4-1"
    assert render(("*", ("+", 1, 2), ("+", 3, 4))) == "(1+2)*(3+4)"
    assert render(("/", ("*", 6, 4), ("/", 6, 3))) == "6*4/(6/3)"


@pytest.mark.parametrize("params", [{}, {"use_all": True}, {"num_numbers": 6, "max_value": 25, "max_target": 500},
                                    {"num_numbers": 3, "use_all": True, "max_target": 30}])
def test_demonstrations_score_one(params):
    task = _task(**params)
    rng = random.Random(0)
    for _ in range(200):
        p = task.generate(rng)
        demo = task.demonstration(p, rng)
        score = task.score(p, demo)
        assert score.reward == 1.0, (p.id, demo, score)
        assert 1 <= p.metadata["target"] <= task.params.max_target
        assert p.metadata["target"] not in p.metadata["numbers"]
        assert demo.isascii() and demo.isprintable()


def test_use_all_solutions_use_every_number():
    task = _task(use_all=True, num_numbers=5)
    for p in task.sample_problems(100, seed=1):
        _, used = parse_expression(p.metadata["solution"])
        assert sorted(used) == sorted(p.metadata["numbers"])


def test_wrong_answers_score_zero():
    task = _task()
    p = _problem([3, 5, 8, 4], 23, ("+", ("*", 5, 4), 3))
    assert task.score(p, "=> 3+4*5").correct
    assert task.score(p, "=> 8*3-5+4").correct
    cases = {
        "=> 5*4+4": "more often",          # 4 used twice
        "=> 5*4+3+0": "more often",        # 0 is not given
        "=> 6*4-1": "more often",          # numbers not given
        "=> 5*4+8": "equals 28",           # off target
        "=> 8/3*5+4+3": "not an exact division",
        "=> -3+5*4+3+3": "not allowed",    # unary minus: only the given numbers may appear
        "=> 5**2-3+1": "not allowed",
        "=> 5*4//1+3": "not allowed",
        "=> 5*4+3=23": "only digits",
        "=> ": "no expression",
        "5*4+3\n=>": "no expression",
        "5*4+3": "no expression",
    }
    for completion, reason in cases.items():
        s = task.score(p, completion)
        assert (s.reward, s.correct) == (0.0, False), completion
        assert reason in s.error, (completion, s.error)


def test_use_all_requires_every_number():
    task = _task(use_all=True)
    p = _problem([3, 5, 8, 4], 23, ("+", ("*", 5, 4), 3))
    p.metadata["numbers"] = [3, 5, 4]
    assert task.score(p, "=> 5*4+3").correct
    p.metadata["numbers"] = [3, 5, 4, 8]
    s = task.score(p, "=> 5*4+3")
    assert not s.correct and "does not use 8" in s.error


def test_code_injection_is_refused_without_side_effects(tmp_path):
    task = _task()
    p = _problem([3, 5, 8, 4], 23, ("+", ("*", 5, 4), 3))
    marker = tmp_path / "pwned"
    for payload in [f"__import__('os').system('touch {marker}')",
                    f"open('{marker}', 'w')",
                    "().__class__.__bases__[0].__subclasses__()",
                    "lambda: 1",
                    "9**9**9**9",
                    "(" * 150 + "1" + ")" * 150]:
        s = task.score(p, f"=> {payload}")
        assert (s.reward, s.correct) == (0.0, False)
        assert s.error
    assert not os.path.exists(marker)


def test_parse_expression():
    assert parse_expression("(8-5)+4*5") == (23, [8, 5, 4, 5])
    assert parse_expression(" 12 / 4 ") == (3, [12, 4])
    assert parse_expression("2-7") == (-5, [2, 7])  # negative intermediates are fine
    for bad in ["12/5", "1/0", "1 2", "03+1", "1_0", "", "x"]:
        with pytest.raises(ExpressionError):
            parse_expression(bad)


def test_check_numbers_multiset():
    check_numbers([5, 5], [5, 5, 3], use_all=False)
    with pytest.raises(ExpressionError, match="5 more often"):
        check_numbers([5, 5], [5, 3], use_all=False)
    with pytest.raises(ExpressionError, match="does not use 3"):
        check_numbers([5], [5, 3], use_all=True)


def test_extraction_edge_cases():
    task = _task()
    assert task.extract_answer("a => 1+2 => 5*4+3") == "5*4+3"
    assert task.extract_answer("=>  5*4+3  \nmore text") == "5*4+3"
    assert task.extract_answer("5*4+3") is None
    assert task.extract_answer("=>") is None
    assert task.extract_answer("=>  \n5*4+3") is None


def test_determinism_and_ids():
    task = _task()
    a = task.sample_problems(50, seed=11)
    assert [p.id for p in a] == [p.id for p in task.sample_problems(50, seed=11)]
    assert [p.id for p in a] != [p.id for p in task.sample_problems(50, seed=12)]
    p = a[0]
    assert p.id == p.prompt[0]["content"] == f"make {p.answer} from {' '.join(map(str, p.metadata['numbers']))}"


def test_difficulty_knobs_change_distribution():
    small = _task(num_numbers=3, max_value=9).sample_problems(200, seed=0)
    large = _task(num_numbers=6, min_value=10, max_value=99, max_target=999).sample_problems(200, seed=0)
    assert {len(p.metadata["numbers"]) for p in small} == {3}
    assert {len(p.metadata["numbers"]) for p in large} == {6}
    assert statistics.mean(len(p.metadata["steps"]) for p in large) > statistics.mean(
        len(p.metadata["steps"]) for p in small) + 0.5
    assert statistics.mean(p.metadata["target"] for p in large) > 3 * statistics.mean(
        p.metadata["target"] for p in small)


def test_params_validation():
    with pytest.raises(ValueError, match="num_numbers"):
        CountdownTask.Params(num_numbers=2)
    with pytest.raises(ValueError, match="num_numbers"):
        CountdownTask.Params(num_numbers=7)
    with pytest.raises(ValueError, match="min_value"):
        CountdownTask.Params(min_value=0)
    with pytest.raises(ValueError, match="min_value"):
        CountdownTask.Params(min_value=5, max_value=4)
    with pytest.raises(ValueError, match="max_target"):
        CountdownTask.Params(max_target=1)
    with pytest.raises(ConfigError, match="use_all"):
        from_dict(CountdownTask.Params, {"use_all": "yes"}, source="task.params")

    class PlusOnly(random.Random):
        def choice(self, seq):
            return seq[0]  # "+" among the operators: every target is at least 100 here

    with pytest.raises(ValueError, match="raise max_target"):
        _task(num_numbers=3, min_value=50, max_value=50, max_target=99).generate(PlusOnly(0))
    assert TASKS.get("countdown") is CountdownTask
