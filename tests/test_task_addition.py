"""Tests for the addition task (scratchpad, sloppy teacher, scoring, sampling) and rewards."""

import random

import pytest

from rlvr.rewards import REWARDS, compose_reward
from rlvr.tasks import TASKS, Problem
from rlvr.tasks.addition import AdditionTask, count_carries, scratchpad
from rlvr.typed_yaml import ConfigError, from_dict


def _task(**params):
    return AdditionTask(AdditionTask.Params(**params))


def _problem(a, b):
    return Problem(id=f"{a}+{b}", prompt=[{"role": "user", "content": f"{a}+{b}"}], answer=str(a + b),
                   metadata={"a": a, "b": b, "carries": count_carries(a, b)})


# ----------------------------------------------------------------------------- scratchpad


@pytest.mark.parametrize("a, b, expected", [
    (347, 285, "7+5=12 4+8+1=13 3+2+1=6 => 632"),
    (99, 1, "9+1=10 9+0+1=10 => 100"),
    (12, 34, "2+4=6 1+3=4 => 46"),
    (5, 7, "5+7=12 => 12"),
    (0, 0, "0+0=0 => 0"),
    (1000, 1, "0+1=1 0+0=0 0+0=0 1+0=1 => 1001"),
    (1, 999, "1+9=10 0+9+1=10 0+9+1=10 => 1000"),
    (950, 50, "0+0=0 5+5=10 9+0+1=10 => 1000"),
])
def test_scratchpad_exact(a, b, expected):
    assert scratchpad(a, b, random.Random(0)) == expected


@pytest.mark.parametrize("a, b, expected", [
    (347, 285, "7+5=12 4+8=12 3+2=5 => 522"),
    (99, 1, "9+1=10 9+0=9 => 90"),
    (12, 34, "2+4=6 1+3=4 => 46"),  # no carries: nothing to forget
    (95, 10, "5+0=5 9+1=10 => 105"),  # a carry out of the top column is not an incoming carry
])
def test_scratchpad_always_drops_carry(a, b, expected):
    assert scratchpad(a, b, random.Random(0), carry_error=1.0) == expected


def test_scratchpad_correct_for_many_sums():
    rng = random.Random(1)
    task = _task()
    for _ in range(500):
        a, b = rng.randint(0, 99999), rng.randint(0, 99999)
        text = scratchpad(a, b, rng)
        assert task.extract_answer(text) == str(a + b)
        assert text.count("=") - 1 == max(len(str(a)), len(str(b)))  # one step per column


@pytest.mark.parametrize("a, b, carries", [
    (0, 0, 0), (12, 34, 0), (5, 5, 1), (347, 285, 2), (99, 1, 2), (999, 1, 3), (95, 10, 1),
    (1, 999, 3), (4321, 5678, 0), (4329, 5678, 4), (50, 50, 1),
])
def test_count_carries(a, b, carries):
    assert count_carries(a, b) == carries
    assert count_carries(b, a) == carries


def test_demonstration_uses_teacher_error():
    p = _problem(347, 285)
    assert _task().demonstration(p, random.Random(0)) == "7+5=12 4+8+1=13 3+2+1=6 => 632"
    assert _task(teacher_carry_error=1.0).demonstration(p, random.Random(0)) == "7+5=12 4+8=12 3+2=5 => 522"


def _single_internal_carry(a, b):
    """Exactly one carry, and it feeds a column (not the extra top digit)."""
    width = max(len(str(a)), len(str(b)))
    return count_carries(a, b) == 1 and len(str(a + b)) == width


def test_demonstration_error_rate():
    task = _task(min_digits=2, max_digits=3, teacher_carry_error=0.6)
    rng = random.Random(0)
    problems = []
    while len(problems) < 2000:
        p = task.generate(rng)
        if _single_internal_carry(p.metadata["a"], p.metadata["b"]):
            problems.append(p)
    demo_rng = random.Random(1)
    wrong = sum(not task.score(p, task.demonstration(p, demo_rng)).correct for p in problems)
    assert wrong / len(problems) == pytest.approx(0.6, abs=0.05)


def test_demonstration_carry_out_of_top_is_never_dropped():
    task = _task(teacher_carry_error=1.0)
    for a, b in [(95, 10), (50, 50), (81, 42), (900, 100)]:
        assert count_carries(a, b) == 1
        assert task.score(_problem(a, b), task.demonstration(_problem(a, b), random.Random(0))).correct


# ----------------------------------------------------------------------------- scoring


def test_score_and_extract():
    task = _task()
    p = _problem(347, 285)
    right = task.score(p, "7+5=12 4+8+1=13 3+2+1=6 => 632")
    assert (right.reward, right.correct, right.extracted) == (1.0, True, "632")
    wrong = task.score(p, "7+5=12 4+8=12 3+2=5 => 522")
    assert (wrong.reward, wrong.correct, wrong.extracted) == (0.0, False, "522")
    missing = task.score(p, "7+5=12 4+8+1=13 3+2+1=6 632")
    assert (missing.reward, missing.correct, missing.extracted) == (0.0, False, None)
    assert task.score(p, "").extracted is None


def test_last_answer_counts():
    task = _task()
    p = _problem(347, 285)
    assert task.extract_answer("=> 522 oops => 632") == "632"
    assert task.score(p, "=> 522 oops => 632").correct
    assert not task.score(p, "=> 632 oops => 522").correct
    assert task.extract_answer("=>632") == "632"
    assert task.extract_answer("=> -5") == "-5"
    assert task.score(p, "=> 0632").correct  # compared as integers


# ----------------------------------------------------------------------------- sampling


def test_generate_problem_fields():
    p = _task().generate(random.Random(3))
    a, b = p.metadata["a"], p.metadata["b"]
    assert p.id == f"{a}+{b}"
    assert p.prompt == [{"role": "user", "content": f"{a}+{b}"}]
    assert p.answer == str(a + b)
    assert p.metadata["carries"] == count_carries(a, b)
    assert p.metadata["digits"] == max(len(str(a)), len(str(b)))


def test_sample_problems_deterministic_distinct_and_in_range():
    task = _task(min_digits=2, max_digits=4)
    first = task.sample_problems(300, seed=7)
    again = task.sample_problems(300, seed=7)
    other = task.sample_problems(300, seed=8)
    assert [p.id for p in first] == [p.id for p in again]
    assert [p.id for p in first] != [p.id for p in other]
    assert len({p.id for p in first}) == 300
    lengths = set()
    for p in first:
        for x in (p.metadata["a"], p.metadata["b"]):
            assert 2 <= len(str(x)) <= 4
            lengths.add(len(str(x)))
    assert lengths == {2, 3, 4}


def test_sample_problems_respects_exclude():
    task = _task(min_digits=1, max_digits=1)  # only 100 distinct problems exist
    heldout = task.sample_problems(40, seed=0)
    exclude = frozenset(p.id for p in heldout)
    train = task.sample_problems(60, seed=1, exclude=exclude)
    assert not exclude & {p.id for p in train}
    assert len({p.id for p in train}) == 60
    with pytest.raises(ValueError, match="distinct problems"):
        task.sample_problems(61, seed=1, exclude=exclude)


def test_one_digit_operands_include_zero():
    problems = _task(min_digits=1, max_digits=1).sample_problems(100, seed=0)
    assert len(problems) == 100  # all of 0..9 x 0..9
    assert {p.metadata["a"] for p in problems} == set(range(10))


def test_params_validation():
    with pytest.raises(ValueError, match="min_digits"):
        AdditionTask.Params(min_digits=4, max_digits=3)
    with pytest.raises(ValueError, match="min_digits"):
        AdditionTask.Params(min_digits=0)
    with pytest.raises(ValueError, match="teacher_carry_error"):
        AdditionTask.Params(teacher_carry_error=1.5)
    with pytest.raises(ValueError, match="teacher_carry_error"):
        AdditionTask.Params(teacher_carry_error=-0.1)
    with pytest.raises(ConfigError, match="teacher_carry_error"):
        from_dict(AdditionTask.Params, {"teacher_carry_error": 1.5}, source="task.params")
    assert TASKS.get("addition") is AdditionTask


# ----------------------------------------------------------------------------- rewards


def test_compose_reward():
    task = _task()
    p = _problem(347, 285)
    weights = {"correctness": 1.0, "format": 0.5}
    cases = [("7+5=12 4+8+1=13 3+2+1=6 => 632", 1.5, {"correctness": 1.0, "format": 1.0}),
             ("7+5=12 4+8=12 3+2=5 => 522", 0.5, {"correctness": 0.0, "format": 1.0}),
             ("seven hundred", 0.0, {"correctness": 0.0, "format": 0.0})]
    for completion, total, parts in cases:
        got_total, got_parts = compose_reward(weights, task, p, completion, task.score(p, completion))
        assert got_total == pytest.approx(total)
        assert got_parts == parts


def test_compose_reward_weights_and_unknown_name():
    task = _task()
    p = _problem(1, 2)
    completion = "1+2=3 => 3"
    score = task.score(p, completion)
    assert compose_reward({"correctness": 2.0}, task, p, completion, score) == (2.0, {"correctness": 1.0})
    assert {"correctness", "format"} <= set(REWARDS.names())
    with pytest.raises(KeyError, match="unknown reward 'lenght'"):
        compose_reward({"lenght": 1.0}, task, p, completion, score)
