"""The task protocol: problems with checkable answers, prompts, answer extraction, scoring.

A task turns a seed into problems, renders each as a prompt, pulls the final answer out of
a completion and scores it. It knows nothing about models or tensors. A task registers
itself with one line, ``@TASKS.register("name")``, and is built from the config's
``task.params`` mapping, which is checked against the task's own ``Params`` dataclass.
"""

from __future__ import annotations

import random
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from rlvr.registry import Registry
from rlvr.tasks.formats import without_confidence


@dataclass
class Problem:
    """One question with a checkable answer.

    ``prompt`` is either plain text or a list of chat messages (``{"role", "content"}``).
    ``answer`` is the reference the verifier compares against (for code tasks: tests).
    """

    id: str
    prompt: str | list[dict[str, str]]
    answer: Any
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """A verifier's verdict on one completion.

    ``reward`` is the task's scalar (1.0/0.0 for exact tasks), ``correct`` whether the final
    answer is right, ``extracted`` the answer string found (None when none was found),
    ``error`` why scoring failed, if it did.
    """

    reward: float
    correct: bool
    extracted: str | None = None
    components: dict[str, float] = field(default_factory=dict)
    error: str | None = None


ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class Task(ABC):
    """Base class of every task. Subclasses define ``Params`` (a dataclass) and the methods."""

    name: ClassVar[str] = ""
    # True when scoring may hang, crash or eat memory (math-verify, running code): the trainer
    # then scores in a pool of worker processes with timeouts instead of in-process.
    isolate: ClassVar[bool] = False

    @dataclass
    class Params:
        """Task-specific parameters, filled from ``task.params`` in the config."""

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def generate(self, rng: random.Random) -> Problem:
        """Draw one problem from the task's distribution using ``rng`` only."""

    @abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """Return the final answer written in ``completion``, or None if there is none."""

    @abstractmethod
    def score(self, problem: Problem, completion: str) -> Score:
        """Check ``completion`` against ``problem``'s reference answer."""

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        """A worked solution for supervised warm start; tasks without one cannot be SFT'd."""
        raise NotImplementedError(f"task {self.name!r} has no demonstrations for SFT")

    def step_checks(self, problem: Problem, completion: str) -> list[tuple[int, float]]:
        """Process supervision: the completion's reasoning steps, each as (the character
        offset where it ends, its score in [0, 1]), in order; the last step is the final answer.
        Tasks whose worked solutions have checkable steps implement it (process rewards)."""
        raise NotImplementedError(f"task {self.name!r} has no step checker for process rewards")

    # --- the answer layout (``task.answer_layout``): the task's own, or DeepSeek-R1's ---

    answer_layout: str = "plain"  # set per instance from the config; travels with the task to verifier workers
    # RLCR (``task.stated_confidence``): responses end with <confidence>q</confidence>, which
    # demonstrations carry and scoring never reads; set per instance like answer_layout.
    stated_confidence: bool = False

    def answer_text(self, answer: str) -> str:
        """How this task writes a bare final answer in its own format (what ``extract_answer``
        reads back): the answer itself unless a task says otherwise."""
        return answer

    def scored_text(self, completion: str) -> str:
        """What ``score`` is given for ``completion``: the completion itself, or under the
        ``think_answer`` layout (``<think>...</think><answer>...</answer>``) the text of its last
        ``<answer>`` block written the task's way, '' without one: the thinking never counts.
        A stated confidence (``<confidence>q</confidence>``) is removed first."""
        if self.stated_confidence:
            completion = without_confidence(completion)
        if self.answer_layout != "think_answer":
            return completion
        blocks = ANSWER_BLOCK.findall(completion)
        content = blocks[-1].strip() if blocks else ""
        return self.answer_text(content) if content else ""

    def score_completion(self, problem: Problem, completion: str) -> Score:
        """``score`` under the answer layout: what the verifiers call."""
        return self.score(problem, self.scored_text(completion))

    def laid_out(self, demonstration: str) -> str:
        """A demonstration in the answer layout: under ``think_answer`` the worked solution is
        the thinking and the answer it ends with is the answer block. With ``stated_confidence``
        it ends with ``<confidence>q</confidence>``, q one of 0.1 ... 0.9 chosen by a hash of the
        text: supervised fine-tuning teaches the form and a spread of values, not which value is
        right (a calibration reward teaches that)."""
        if self.stated_confidence:
            tenths = zlib.crc32(demonstration.encode()) % 9 + 1
            return f"{self._laid_out(demonstration)} <confidence>0.{tenths}</confidence>"
        return self._laid_out(demonstration)

    def _laid_out(self, demonstration: str) -> str:
        if self.answer_layout != "think_answer":
            return demonstration
        answer = self.extract_answer(demonstration)
        if answer is None:
            raise NotImplementedError(f"task {self.name!r}: a demonstration holds no answer the task can read, "
                                      "so it cannot be laid out as <think>/<answer>")
        return f"<think>{demonstration}</think><answer>{answer}</answer>"

    def sample_problems(
        self, count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
        split: Literal["train", "heldout"] = "train", replace: bool = False,
    ) -> list[Problem]:
        """``count`` distinct problems drawn with ``seed``, skipping ids in ``exclude``.

        Generated tasks draw both splits from one distribution: the held-out split uses its
        own seed *and* the training stream skips held-out ids, so no held-out problem is
        ever trained on. Tasks backed by a fixed file override this to draw each split from
        its own part of the file.

        When the task has fewer than ``count`` distinct problems, ``replace`` fills the list
        by repeating them (`fill_with_repeats`: whole shuffled passes, as epochs over a small
        file), else `TooFewProblems` is raised with the number there are.
        """
        rng = random.Random(seed)
        problems: list[Problem] = []
        seen = set(exclude)
        attempts = repeats_in_a_row = 0
        while len(problems) < count:
            attempts += 1
            # A long run of repeats means the distribution is (nearly) exhausted: stop in
            # seconds instead of drawing for hours towards a count it cannot reach.
            if attempts > 100 * count + 1000 or repeats_in_a_row > 20_000:
                if replace and problems:
                    return fill_with_repeats(problems, count, rng)
                raise TooFewProblems(
                    f"task {self.name!r} could only produce {len(problems)} distinct problems "
                    f"of the {count} asked for; widen its params or ask for fewer",
                    available=len(problems), requested=count)
            problem = self.generate(rng)
            if problem.id in seen:
                repeats_in_a_row += 1
                continue
            repeats_in_a_row = 0
            seen.add(problem.id)
            problems.append(problem)
        return problems


class TooFewProblems(ValueError):
    """A task (or a split of it) has ``available`` distinct problems, fewer than the
    ``requested`` ones."""

    def __init__(self, message: str, available: int, requested: int) -> None:
        super().__init__(message)
        self.available, self.requested = available, requested


def fill_with_repeats(pool: list[Problem], count: int, rng: random.Random) -> list[Problem]:
    """``count`` problems from a ``pool`` smaller than that: whole passes over the pool, each
    in its own shuffled order, then a partial pass, so no problem appears twice more often
    than another (what epochs over a small training file give, as TRL's sampler does)."""
    if not pool:
        raise ValueError("fill_with_repeats: the pool is empty")
    out: list[Problem] = []
    while len(out) < count:
        epoch = list(pool)
        rng.shuffle(epoch)
        out += epoch[:count - len(out)]
    return out


def sample_training_problems(task: Task, count: int, seed: int, exclude: set[str] | frozenset[str],
                             replace: bool) -> list[Problem]:
    """``task.sample_problems`` for a training batch, passing ``replace`` only when it is set,
    so a user's task that overrides ``sample_problems`` with the older signature keeps working
    wherever no repeats are needed."""
    if replace:
        return task.sample_problems(count, seed, exclude, replace=True)
    return task.sample_problems(count, seed, exclude)


TASKS: Registry[type[Task]] = Registry("task")
