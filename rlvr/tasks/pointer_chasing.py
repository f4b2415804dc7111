"""Pointer chasing: follow a table of arrows from a start node for k hops.

The table maps every node to its successor; the nodes are distinct lowercase letters and
the arrows form one cycle through all of them, listed in random order, so a walk never
revisits a node before ``num_nodes`` hops. The prompt is the table, ``|``, the start node
and the number of hops; the demonstration writes the path, one node per hop, then the
node reached::

    prompt:   c->f a->c f->b b->a | a 3
    response: a c f b => b

Difficulty is the table size (``num_nodes``) and the number of hops.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

from rlvr.tasks.base import TASKS, Problem, Score, Task
from rlvr.typed_yaml import check_ranges

_ANSWER = re.compile(r"=>\s*([a-z])(?![a-z])")


@TASKS.register("pointer_chase")
class PointerChaseTask(Task):
    name = "pointer_chase"

    @dataclass
    class Params:
        num_nodes: int = field(default=5, metadata={"help": "nodes in the table, one arrow each (one lowercase letter each)", "ge": 2, "le": 26})
        min_hops: int = field(default=1, metadata={"help": "fewest hops to follow", "ge": 1})
        max_hops: int = field(default=3, metadata={"help": "most hops to follow", "ge": 1})

        def __post_init__(self) -> None:
            check_ranges(self)
            if self.min_hops > self.max_hops:
                raise ValueError(f"min_hops ({self.min_hops}) must be <= max_hops ({self.max_hops})")

    def generate(self, rng: random.Random) -> Problem:
        p = self.params
        cycle = rng.sample(string.ascii_lowercase, p.num_nodes)
        successor = {a: cycle[(i + 1) % len(cycle)] for i, a in enumerate(cycle)}
        order = list(successor)
        rng.shuffle(order)
        table = " ".join(f"{a}->{successor[a]}" for a in order)
        start = rng.choice(cycle)
        hops = rng.randint(p.min_hops, p.max_hops)
        path = chase(successor, start, hops)
        prompt = f"{table} | {start} {hops}"
        return Problem(
            id=prompt,
            prompt=[{"role": "user", "content": prompt}],
            answer=path[-1],
            metadata={"successor": successor, "start": start, "hops": hops, "path": path},
        )

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        path = problem.metadata["path"]
        return f"{' '.join(path)} => {path[-1]}"

    def extract_answer(self, completion: str) -> str | None:
        found = _ANSWER.findall(completion)
        return found[-1] if found else None

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        correct = extracted == problem.answer
        return Score(reward=float(correct), correct=correct, extracted=extracted)


def chase(successor: dict[str, str], start: str, hops: int) -> list[str]:
    """The nodes visited from ``start`` over ``hops`` hops, start included (``hops + 1`` nodes)."""
    path = [start]
    for _ in range(hops):
        path.append(successor[path[-1]])
    return path
