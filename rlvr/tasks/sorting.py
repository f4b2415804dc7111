"""Sort or reverse a short list of digits or letters.

Items are single characters (``0``-``9`` or ``a``-``z``, repeats allowed), written with
spaces. For ``mode: sort`` the demonstration is a selection-sort trace: each step writes the
smallest remaining item, a colon, and what is left after removing it (one occurrence), so
finding the next item only needs the text just written::

    prompt:   sort 3 1 2
    response: 1:3 2 2:3 3: => 1 2 3

The trace grows as n*n + n characters for n items, so lists longer than
``trace_max_length`` get an answer-only demonstration (``=> 1 2 3``). Reversal always
gets the answer only (``prompt: reverse 3 1 2``, ``response: => 2 1 3``). Scoring compares
the whitespace-separated items after the last ``=>`` (up to the end of that line) with
the expected list, exactly.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Literal

from rlvr.tasks.base import TASKS, Problem, Score, Task
from rlvr.typed_yaml import check_ranges

_ALPHABETS = {"digits": string.digits, "letters": string.ascii_lowercase}


@TASKS.register("sort")
class SortTask(Task):
    name = "sort"

    @dataclass
    class Params:
        mode: Literal["sort", "reverse"] = field(
            default="sort", metadata={"help": "'sort' ascending or 'reverse' the given order"}
        )
        alphabet: Literal["digits", "letters"] = field(
            default="digits", metadata={"help": "items are single 'digits' (0-9) or lowercase 'letters' (a-z)"}
        )
        min_length: int = field(default=3, metadata={"help": "fewest items in a list", "ge": 1})
        max_length: int = field(default=4, metadata={"help": "most items in a list", "ge": 1})
        trace_max_length: int = field(
            default=6,
            metadata={"help": "longest list whose sort demonstration shows the selection trace "
                              "(n*n+n characters); longer lists get the answer only", "ge": 0},
        )

        def __post_init__(self) -> None:
            check_ranges(self)
            if self.mode not in ("sort", "reverse"):
                raise ValueError(f"mode must be 'sort' or 'reverse', got {self.mode!r}")
            if self.alphabet not in _ALPHABETS:
                raise ValueError(f"alphabet must be 'digits' or 'letters', got {self.alphabet!r}")
            if self.min_length > self.max_length:
                raise ValueError(f"min_length ({self.min_length}) must be <= max_length ({self.max_length})")

    def generate(self, rng: random.Random) -> Problem:
        p = self.params
        items = [rng.choice(_ALPHABETS[p.alphabet]) for _ in range(rng.randint(p.min_length, p.max_length))]
        prompt = f"{p.mode} {' '.join(items)}"
        target = sorted(items) if p.mode == "sort" else items[::-1]
        return Problem(
            id=prompt,
            prompt=[{"role": "user", "content": prompt}],
            answer=" ".join(target),
            metadata={"items": items, "length": len(items)},
        )

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        items = problem.metadata["items"]
        if self.params.mode == "sort" and len(items) <= self.params.trace_max_length:
            return selection_trace(items)
        return f"=> {problem.answer}"

    def extract_answer(self, completion: str) -> str | None:
        """The items after the last ``=>`` up to the end of that line, single-spaced
        (None when there is no ``=>`` or nothing follows it)."""
        at = completion.rfind("=>")
        if at < 0:
            return None
        return " ".join(completion[at + 2:].split("\n", 1)[0].split()) or None

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        correct = extracted is not None and extracted.split() == problem.answer.split()
        return Score(reward=float(correct), correct=correct, extracted=extracted)


def selection_trace(items: list[str]) -> str:
    """``["3", "1", "2"]`` -> ``"1:3 2 2:3 3: => 1 2 3"``: repeatedly the smallest remaining
    item, then the remaining items (in their original order) without that one occurrence."""
    rest = list(items)
    steps, chosen = [], []
    while rest:
        smallest = min(rest)
        rest.remove(smallest)
        chosen.append(smallest)
        steps.append(f"{smallest}:{' '.join(rest)}")
    return " ".join(steps) + f" => {' '.join(chosen)}"
