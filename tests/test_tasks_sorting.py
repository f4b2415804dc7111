"""Tests for the sort task: selection trace, reversal, exact list scoring, params."""

import random
import statistics

import pytest

from rlvr.tasks import TASKS, Problem
from rlvr.tasks.sorting import SortTask, selection_trace
from rlvr.typed_yaml import ConfigError, from_dict


def _task(**params):
    return SortTask(SortTask.Params(**params))


def _problem(mode, items):
    target = sorted(items) if mode == "sort" else items[::-1]
    prompt = f"{mode} {' '.join(items)}"
    return Problem(id=prompt, prompt=[{"role": "user", "content": prompt}], answer=" ".join(target),
                   metadata={"items": items, "length": len(items)})


@pytest.mark.parametrize("items, expected", [
    ("312", "1:3 2 2:3 3: => 1 2 3"),
    ("5282", "2:5 8 2 2:5 8 5:8 8: => 2 2 5 8"),
    ("7", "7: => 7"),
    ("cab", "a:c b b:c c: => a b c"),
    ("11", "1:1 1: => 1 1"),
])
def test_selection_trace_exact(items, expected):
    assert selection_trace(list(items)) == expected
    assert _task(min_length=1).demonstration(_problem("sort", list(items)), random.Random(0)) == expected


def test_trace_length_formula_and_fallback():
    items = list("935170")
    trace = selection_trace(items)
    assert len(trace.split(" => ")[0]) == len(items) ** 2 + len(items)
    task = _task(min_length=1, max_length=8, trace_max_length=5)
    p = _problem("sort", items)
    assert task.demonstration(p, random.Random(0)) == "=> 0 1 3 5 7 9"
    assert task.demonstration(_problem("sort", list("93517")), random.Random(0)).startswith("1:9 3 5 7 ")


def test_reverse_demonstration_is_answer_only():
    task = _task(mode="reverse")
    assert task.demonstration(_problem("reverse", list("312")), random.Random(0)) == "=> 2 1 3"
    assert task.demonstration(_problem("reverse", list("dcba")), random.Random(0)) == "=> a b c d"


@pytest.mark.parametrize("params", [{}, {"mode": "reverse"}, {"alphabet": "letters", "max_length": 8},
                                    {"mode": "reverse", "alphabet": "letters", "min_length": 1, "max_length": 9}])
def test_demonstrations_score_one(params):
    task = _task(**params)
    rng = random.Random(0)
    for _ in range(200):
        p = task.generate(rng)
        demo = task.demonstration(p, rng)
        assert task.score(p, demo).reward == 1.0, (p.id, demo)
        assert demo.isascii() and demo.isprintable()
        items = p.metadata["items"]
        expected = sorted(items) if task.params.mode == "sort" else items[::-1]
        assert p.answer.split() == expected


def test_wrong_answers_score_zero():
    task = _task()
    p = _problem("sort", list("5282"))
    assert task.score(p, "=> 2 2 5 8").correct
    for wrong in ["=> 2 5 8", "=> 2 2 8 5", "=> 8 5 2 2", "=> 2 2 5 8 8", "=> 2258", "=> 2,2,5,8", "2 2 5 8", ""]:
        s = task.score(p, wrong)
        assert (s.reward, s.correct) == (0.0, False), wrong
    r = _problem("reverse", list("abc"))
    assert _task(mode="reverse").score(r, "=> c b a").correct
    assert not _task(mode="reverse").score(r, "=> a b c").correct


def test_extraction_edge_cases():
    task = _task()
    assert task.extract_answer("=> 1 2 => 1  2   3 ") == "1 2 3"
    assert task.extract_answer("=> 1 2 3\n=>") is None
    assert task.extract_answer("=> 1 2 3\nnotes 9") == "1 2 3"
    assert task.extract_answer("1 2 3") is None
    p = _problem("sort", list("312"))
    assert task.score(p, "1:3 2 2:3 3:  =>  1   2 3").correct


def test_generate_and_determinism():
    task = _task(alphabet="letters", min_length=2, max_length=6)
    problems = task.sample_problems(100, seed=4)
    assert [p.id for p in problems] == [p.id for p in task.sample_problems(100, seed=4)]
    assert [p.id for p in problems] != [p.id for p in task.sample_problems(100, seed=5)]
    for p in problems:
        assert p.id == p.prompt[0]["content"] == "sort " + " ".join(p.metadata["items"])
        assert all(ch.islower() for ch in p.metadata["items"])
        assert 2 <= p.metadata["length"] <= 6


def test_difficulty_knob_changes_length():
    short = _task(min_length=2, max_length=3).sample_problems(200, seed=0)
    long = _task(min_length=6, max_length=8).sample_problems(200, seed=0)
    assert {p.metadata["length"] for p in short} == {2, 3}
    assert {p.metadata["length"] for p in long} == {6, 7, 8}
    assert statistics.mean(p.metadata["length"] for p in long) > 6.5 > 3 > statistics.mean(
        p.metadata["length"] for p in short)


def test_params_validation():
    with pytest.raises(ValueError, match="mode"):
        SortTask.Params(mode="shuffle")
    with pytest.raises(ValueError, match="alphabet"):
        SortTask.Params(alphabet="emoji")
    with pytest.raises(ValueError, match="min_length"):
        SortTask.Params(min_length=0)
    with pytest.raises(ValueError, match="min_length"):
        SortTask.Params(min_length=5, max_length=4)
    with pytest.raises(ValueError, match="trace_max_length"):
        SortTask.Params(trace_max_length=-1)
    with pytest.raises(ConfigError, match="mode"):
        from_dict(SortTask.Params, {"mode": "ascending"}, source="task.params")
    assert TASKS.get("sort") is SortTask
