"""Tests for the pointer_chase task: tables, paths, scoring, params."""

import random
import re
import statistics

import pytest

from rlvr.tasks import TASKS, Problem
from rlvr.tasks.pointer_chasing import PointerChaseTask, chase
from rlvr.typed_yaml import ConfigError, from_dict

_TABLE = {"a": "c", "c": "f", "f": "b", "b": "a"}


def _task(**params):
    return PointerChaseTask(PointerChaseTask.Params(**params))


def _problem(successor, start, hops):
    path = chase(successor, start, hops)
    prompt = " ".join(f"{a}->{b}" for a, b in successor.items()) + f" | {start} {hops}"
    return Problem(id=prompt, prompt=[{"role": "user", "content": prompt}], answer=path[-1],
                   metadata={"successor": successor, "start": start, "hops": hops, "path": path})


@pytest.mark.parametrize("start, hops, expected", [
    ("a", 3, "a c f b => b"),
    ("a", 1, "a c => c"),
    ("f", 2, "f b a => a"),
    ("b", 4, "b a c f b => b"),  # a full cycle returns to the start
    ("c", 6, "c f b a c f b => b"),
])
def test_demonstration_exact(start, hops, expected):
    assert _task().demonstration(_problem(_TABLE, start, hops), random.Random(0)) == expected


def test_chase():
    assert chase(_TABLE, "a", 0) == ["a"]
    assert chase(_TABLE, "c", 2) == ["c", "f", "b"]


def test_generated_tables_form_one_cycle():
    task = _task(num_nodes=7, min_hops=1, max_hops=6)
    for p in task.sample_problems(50, seed=2):
        table, query = p.id.split(" | ")
        pairs = [entry.split("->") for entry in table.split()]
        successor = dict(pairs)
        assert len(successor) == 7 and sorted(successor.values()) == sorted(successor)
        assert len(set(chase(successor, p.metadata["start"], 6))) == 7  # no repeat before a full cycle
        start, hops = query.split()
        assert successor == p.metadata["successor"] and start == p.metadata["start"]
        assert chase(successor, start, int(hops))[-1] == p.answer
        assert re.fullmatch(r"([a-z]->[a-z] )+\| [a-z] \d+", p.id)


def test_demonstrations_score_one():
    task = _task(num_nodes=12, min_hops=1, max_hops=8)
    rng = random.Random(0)
    for _ in range(200):
        p = task.generate(rng)
        demo = task.demonstration(p, rng)
        assert task.score(p, demo).reward == 1.0, (p.id, demo)
        assert len(demo.split(" => ")[0].split()) == p.metadata["hops"] + 1
        assert demo.isascii() and demo.isprintable()


def test_wrong_answers_score_zero():
    task = _task()
    p = _problem(_TABLE, "a", 3)
    assert task.score(p, "=> b").correct
    for wrong in ["a c f b => f",  # one hop short
                  "a c f b a => a",  # one hop too many
                  "=> B", "=> ba", "b", "", "=> 3"]:
        s = task.score(p, wrong)
        assert (s.reward, s.correct) == (0.0, False), wrong


def test_extraction_edge_cases():
    task = _task()
    assert task.extract_answer("=> a then => b") == "b"
    assert task.extract_answer("=>b") == "b"
    assert task.extract_answer("a c f b => b\n") == "b"
    assert task.extract_answer("=> bc") is None
    assert task.extract_answer("a c f b") is None


def test_determinism():
    task = _task()
    ids = [p.id for p in task.sample_problems(50, seed=9)]
    assert ids == [p.id for p in task.sample_problems(50, seed=9)]
    assert ids != [p.id for p in task.sample_problems(50, seed=10)]


def test_difficulty_knobs_change_distribution():
    small = _task(num_nodes=3, min_hops=1, max_hops=2).sample_problems(100, seed=0)
    large = _task(num_nodes=10, min_hops=4, max_hops=8).sample_problems(100, seed=0)
    assert {len(p.metadata["successor"]) for p in small} == {3}
    assert {len(p.metadata["successor"]) for p in large} == {10}
    assert statistics.mean(p.metadata["hops"] for p in large) > 5 > 2 >= statistics.mean(
        p.metadata["hops"] for p in small)


def test_params_validation():
    with pytest.raises(ValueError, match="num_nodes"):
        PointerChaseTask.Params(num_nodes=1)
    with pytest.raises(ValueError, match="num_nodes"):
        PointerChaseTask.Params(num_nodes=27)
    with pytest.raises(ValueError, match="min_hops"):
        PointerChaseTask.Params(min_hops=0)
    with pytest.raises(ValueError, match="min_hops"):
        PointerChaseTask.Params(min_hops=4, max_hops=3)
    with pytest.raises(ConfigError, match="num_nodes"):
        from_dict(PointerChaseTask.Params, {"num_nodes": 30}, source="task.params")
    assert TASKS.get("pointer_chase") is PointerChaseTask
