"""Tests for VerifierPool: hangs time out, crashes and exceptions become error Scores, the
pool keeps answering afterwards, and order is preserved. The misbehaving tasks live at module
level so the spawned workers can unpickle them."""

import ctypes
import multiprocessing
import os
import random
import signal
import time

import pytest

from rlvr.tasks.base import Problem, Score, Task
from rlvr.tasks.math import MathTask
from rlvr.verify import InlineVerifier, VerifierPool, make_verifier, score_inline

pytestmark = pytest.mark.timeout(120)  # a hung pool must fail the test, not the suite

TIMEOUT_S = 1.0


class MisbehavingTask(Task):
    """Scores ``completion == answer``, except for completions that ask it to misbehave."""

    name = "misbehaving"

    def generate(self, rng: random.Random) -> Problem:
        n = rng.randint(0, 999)
        return Problem(id=str(n), prompt=str(n), answer=str(n))

    def extract_answer(self, completion: str) -> str | None:
        return completion

    def score(self, problem: Problem, completion: str) -> Score:
        if completion == "hang":
            time.sleep(100)
        elif completion == "exit":
            os._exit(1)
        elif completion == "segfault":
            ctypes.string_at(0)
        elif completion == "raise":
            raise ValueError("bad input " * 50)
        elif completion == "allocate":
            bytearray(3 * 2**30)  # over the worker's address-space cap
        elif completion == "not a score":
            return 1.0  # type: ignore[return-value]
        elif completion.startswith("sleep "):
            time.sleep(float(completion.split()[1]))
            completion = completion.split()[2]
        correct = completion == problem.answer
        return Score(reward=float(correct), correct=correct, extracted=completion)


class UnloadableTask(MisbehavingTask):
    def __setstate__(self, state: dict) -> None:
        raise RuntimeError("cannot load in a worker")


def _rebuild_poison() -> "Poison":
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("this object cannot be rebuilt in a worker")
    return Poison()


class Poison:
    """Pickles fine in the trainer, fails to unpickle in a worker."""

    def __reduce__(self):
        return _rebuild_poison, ()


def _problems(n: int) -> list[Problem]:
    return [Problem(id=str(i), prompt=str(i), answer=str(i)) for i in range(n)]


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(MisbehavingTask(), workers=2, timeout_s=TIMEOUT_S) as p:
        p.score_many(_problems(2), ["0", "1"])  # started, so tests time scoring, not start-up
        yield p


def _assert_healthy(pool: VerifierPool) -> None:
    scores = pool.score_many(_problems(6), ["0", "1", "x", "3", "4", "y"])
    assert [s.correct for s in scores] == [True, True, False, True, True, False]
    assert all(s.error is None for s in scores)


def test_order_preserved(pool):
    problems = _problems(24)
    completions = [f"sleep {0.01 * (i % 5)} {i if i % 3 else 'wrong'}" for i in range(24)]
    scores = pool.score_many(problems, completions)
    assert [s.correct for s in scores] == [bool(i % 3) for i in range(24)]
    assert [s.extracted for s in scores] == [str(i) if i % 3 else "wrong" for i in range(24)]


def test_hang_times_out_and_the_rest_are_scored(pool):
    t0 = time.monotonic()
    scores = pool.score_many(_problems(6), ["0", "1", "hang", "3", "4", "5"])
    wall = time.monotonic() - t0
    assert scores[2] == Score(reward=0.0, correct=False, error=f"verifier timeout after {TIMEOUT_S} s")
    assert [s.correct for i, s in enumerate(scores) if i != 2] == [True] * 5
    assert wall < TIMEOUT_S + 2.0
    _assert_healthy(pool)


@pytest.mark.parametrize("completion, how", [("exit", "exit code 1"), ("segfault", "killed by SIGSEGV")])
def test_crash_is_recorded_and_pool_recovers(pool, completion, how):
    scores = pool.score_many(_problems(3), ["0", completion, "2"])
    assert scores[1].error == f"verifier crashed: {how}" and scores[1].reward == 0.0
    assert scores[0].correct and scores[2].correct
    _assert_healthy(pool)


def test_memory_error_under_the_address_space_cap(pool):
    scores = pool.score_many(_problems(2), ["allocate", "1"])
    assert scores[0].error.startswith("verifier crashed: MemoryError") and not scores[0].correct
    assert scores[1].correct
    _assert_healthy(pool)


def test_exception_becomes_a_truncated_error(pool):
    scores = pool.score_many(_problems(3), ["raise", "not a score", "2"])
    assert scores[0].error.startswith("ValueError: bad input bad input")
    assert len(scores[0].error) == 200 and scores[0].error.endswith("…")
    assert scores[1].error == "task.score returned float, not Score"
    assert scores[2].correct


def test_items_that_cannot_travel(pool):
    problems = _problems(3)
    problems[0].metadata["callback"] = lambda: None  # cannot be pickled by the trainer
    problems[1].metadata["poison"] = Poison()  # cannot be unpickled by the worker
    scores = pool.score_many(problems, ["0", "1", "2"])
    assert scores[0].error.startswith("item cannot be sent to a worker: ")
    assert scores[1].error == "RuntimeError: this object cannot be rebuilt in a worker"
    assert scores[2].correct
    _assert_healthy(pool)


def test_three_consecutive_timeouts_then_correct():
    with VerifierPool(MisbehavingTask(), workers=1, timeout_s=0.5) as pool:
        scores = pool.score_many(_problems(5), ["hang", "hang", "hang", "3", "nope"])
        assert [s.error for s in scores[:3]] == ["verifier timeout after 0.5 s"] * 3
        assert scores[3].correct and not scores[4].correct and scores[4].error is None
        assert pool.respawns == 3
        _assert_healthy(pool)


def test_pathological_math_input_cannot_hang():
    problem = Problem(id="p", prompt="", answer="1")
    tower = "so \\boxed{10^{10^{10^{10}}}}"
    # math-verify unguarded (verify_timeout_s=0): the pool's kill is what stops it
    task = MathTask(MathTask.Params(path="unused.jsonl", verify_timeout_s=0))
    with VerifierPool(task, workers=1, timeout_s=1.5) as pool:
        t0 = time.monotonic()
        scores = pool.score_many([problem, problem], [tower, "\\boxed{1}"])
        assert time.monotonic() - t0 < 20  # start-up and warm-up included
        assert scores[0].reward == 0.0 and scores[0].error == "verifier timeout after 1.5 s"
        assert scores[1].correct


def test_empty_batch_length_mismatch_and_close(pool):
    assert pool.score_many([], []) == []
    with pytest.raises(ValueError, match="2 problems but 1 completions"):
        pool.score_many(_problems(2), ["0"])
    spare = VerifierPool(MisbehavingTask(), workers=1)
    spare.close()
    spare.close()
    with pytest.raises(RuntimeError, match="closed"):
        spare.score_many(_problems(1), ["0"])


def test_unpicklable_task_fails_at_construction():
    task = MisbehavingTask()
    task.callback = lambda: None
    with pytest.raises(TypeError, match="cannot be pickled.*define it at module level"):
        VerifierPool(task)


def test_unpicklable_builtin_task_is_reported_as_our_bug_not_the_users():
    from rlvr.tasks.addition import AdditionTask

    task = AdditionTask()
    task.callback = lambda: None
    with pytest.raises(TypeError, match="built-in task AdditionTask cannot be pickled.*bug in rlvr") as info:
        VerifierPool(task)
    assert "module level" not in str(info.value)


def test_task_that_cannot_load_in_a_worker_raises():
    pool = VerifierPool(UnloadableTask(), workers=1)
    with pytest.raises(RuntimeError, match="could not load task UnloadableTask: RuntimeError: cannot load"):
        pool.score_many(_problems(1), ["0"])


def test_score_inline_converts_exceptions():
    task, problem = MisbehavingTask(), _problems(1)[0]
    assert score_inline(task, problem, "0").correct
    assert score_inline(task, problem, "raise").error.startswith("ValueError: bad input")
    assert score_inline(task, problem, "not a score").error == "task.score returned float, not Score"


def test_make_verifier_isolates_only_when_asked():
    with make_verifier(MisbehavingTask()) as verifier:
        assert isinstance(verifier, InlineVerifier)
        assert [s.correct for s in verifier.score_many(_problems(2), ["0", "x"])] == [True, False]
    with make_verifier(MathTask(MathTask.Params(path="unused.jsonl")), workers=1) as verifier:
        assert isinstance(verifier, VerifierPool)


def test_interrupted_call_does_not_misfile_later_scores():
    with VerifierPool(MisbehavingTask(), workers=1, timeout_s=30.0) as pool:
        pool.score_many(_problems(1), ["0"])
        with pytest.raises(KeyboardInterrupt):
            _interrupt_after(0.3, lambda: pool.score_many(_problems(1), ["sleep 0.6 0"]))
        assert [s.correct for s in pool.score_many(_problems(2), ["x", "1"])] == [False, True]


def _interrupt_after(seconds: float, call):
    """Run ``call`` and raise KeyboardInterrupt in it after ``seconds`` (as Ctrl-C would)."""
    def on_alarm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
