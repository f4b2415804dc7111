"""`mix`: several tasks as one, sampled with weights; each problem remembers its task.

    task:
      name: mix
      params:
        tasks:
          - {name: addition, weight: 2, params: {max_digits: 3}}
          - {name: countdown, weight: 1}

Problem ids become ``<task>/<id>`` and ``metadata["task"]`` names the component, which the
trainer and the evaluator use for per-task accuracy (``accuracy/<task>``).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from rlvr.seeding import derive_seed
from rlvr.tasks.base import TASKS, Problem, Score, Task
from rlvr.typed_yaml import check_ranges, from_dict


@dataclass
class MixComponent:
    name: str = field(metadata={"help": "registered task name (or module:Class)"})
    weight: float = field(default=1.0, metadata={"help": "relative sampling weight", "gt": 0})
    params: dict[str, Any] = field(default_factory=dict, metadata={"help": "that task's params"})

    def __post_init__(self) -> None:
        check_ranges(self)


@TASKS.register("mix")
class MixTask(Task):
    name = "mix"

    @dataclass
    class Params:
        tasks: list[MixComponent] = field(default_factory=list, metadata={"help": "the tasks to mix"})

        def __post_init__(self) -> None:
            if not self.tasks:
                raise ValueError("tasks must name at least one task")
            names = [c.name for c in self.tasks]
            if len(set(names)) != len(names):
                raise ValueError(f"each task may appear once in a mix: {names}")

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.components: dict[str, Task] = {}
        for component in self.params.tasks:
            task_cls = TASKS.get(component.name)
            sub = from_dict(task_cls.Params, component.params, source=f"task.params.tasks[{component.name}]")
            self.components[component.name] = task_cls(sub)
        self.weights = {c.name: c.weight for c in self.params.tasks}
        self.isolate = any(t.isolate for t in self.components.values())

    def _wrap(self, name: str, problem: Problem) -> Problem:
        return dataclasses.replace(problem, id=f"{name}/{problem.id}", metadata={**problem.metadata, "task": name})

    def _unwrap(self, problem: Problem) -> tuple[Task, Problem]:
        name = problem.metadata["task"]
        return self.components[name], dataclasses.replace(problem, id=problem.id.split("/", 1)[1])

    def generate(self, rng: random.Random) -> Problem:
        name = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        return self._wrap(name, self.components[name].generate(rng))

    def sample_problems(self, count: int, seed: int, exclude: set[str] | frozenset[str] = frozenset(),
                        split: Literal["train", "heldout"] = "train", replace: bool = False) -> list[Problem]:
        """Each component contributes its weight's share (largest remainder) from its own
        ``sample_problems``, so file-backed components keep their own held-out split (and
        repeat their own problems with ``replace``)."""
        total = sum(self.weights.values())
        shares = {name: count * w / total for name, w in self.weights.items()}
        counts = {name: int(share) for name, share in shares.items()}
        for name in sorted(shares, key=lambda n: counts[n] - shares[n])[: count - sum(counts.values())]:
            counts[name] += 1
        problems: list[Problem] = []
        for name, n in counts.items():
            if n:
                own = frozenset(i.split("/", 1)[1] for i in exclude if i.startswith(f"{name}/"))
                drawn = (self.components[name].sample_problems(n, derive_seed(seed, name), own, split, replace=True)
                         if replace else self.components[name].sample_problems(n, derive_seed(seed, name), own, split))
                problems += [self._wrap(name, p) for p in drawn]
        random.Random(seed).shuffle(problems)
        return problems

    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError("a mix extracts answers per problem: use score()")

    def score(self, problem: Problem, completion: str) -> Score:
        task, inner = self._unwrap(problem)
        return task.score(inner, completion)

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        task, inner = self._unwrap(problem)
        return task.demonstration(inner, rng)
