"""The RL stage's prompt source: fresh or few-shot problems, pre-filtered by tracked pass
rates, with an adaptive curriculum on a task parameter. Its state is checkpointed with the
run, so a resumed run draws exactly the prompts an uninterrupted one would have."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from rlvr.config import RunConfig
from rlvr.data.selection import Curriculum, PassRateTracker, group_pass_rates
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem, Task, sample_training_problems


class PromptSampler:
    def __init__(self, task: Task, config: RunConfig, exclude: frozenset[str]) -> None:
        self.task, self.config, self.exclude = task, config, exclude
        data = config.data
        self.tracker = PassRateTracker(data.tracker_decay)
        self.fixed: list[Problem] = []
        if data.fixed_problems:
            self.fixed = task.sample_problems(data.fixed_problems, derive_seed(config.seed, "few-shot"), exclude)
        if data.include_ids:
            self.fixed = self._included(data.include_ids, exclude)
        self.curriculum: Curriculum | None = None
        cur = data.curriculum
        if cur.param is not None:
            start = _get_param(task.params, cur.param, config.task.name)
            for value in (cur.minimum, cur.maximum):  # both ends must be valid task settings
                try:
                    type(task)(_with_param(task.params, cur.param, value))
                except ValueError as err:
                    raise ValueError(f"data.curriculum: {cur.param}={value} is not a valid setting of task "
                                     f"{config.task.name!r}: {err}") from None
            self.curriculum = Curriculum(start, cur.minimum, cur.maximum, cur.target_low, cur.target_high,
                                         cur.window)

    def _included(self, path: str, exclude: frozenset[str]) -> list[Problem]:
        """The task's problems whose ids the file lists (training split only), in file order."""
        try:
            wanted = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"data.include_ids: cannot read a JSON list of ids from {path}: {err}") from None
        if not hasattr(self.task, "problems"):
            raise ValueError(f"data.include_ids needs a task backed by a fixed problem list (e.g. math), "
                             f"not {self.config.task.name!r}")
        by_id = {p.id: p for p in self.task.problems if p.id not in exclude}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise ValueError(f"data.include_ids: {len(missing)} ids of {path} are not training problems of the "
                             f"task, e.g. {missing[0]!r}")
        return [by_id[i] for i in wanted]

    def draw(self, count: int, step: int, round_: int) -> list[Problem]:
        """``count`` prompts for generation round ``round_`` of RL step ``step``."""
        seed = derive_seed(self.config.seed, "rl-prompts", step, *([round_] if round_ else []))
        if self.fixed:
            start = (step * self.config.rl.prompts_per_step + round_ * count) % len(self.fixed)
            return [self.fixed[(start + i) % len(self.fixed)] for i in range(count)]
        data = self.config.data
        if not data.prefilter:
            return sample_training_problems(self.task, count, seed, self.exclude, data.reuse_problems)
        candidates = sample_training_problems(self.task, 2 * count, seed, self.exclude, data.reuse_problems)
        fresh = [p for p in candidates if not self.tracker.outside(p.id, data.pass_rate_low, data.pass_rate_high)]
        return (fresh + [p for p in candidates if p not in fresh])[:count]

    def observe(self, problems_by_group: dict[int, Problem], groups: list[int], correct: list[bool]) -> dict[str, float]:
        """Update tracked pass rates and the curriculum from one step's rollouts."""
        rates = group_pass_rates(groups, correct)
        self.tracker.update({problems_by_group[g].id: r for g, r in rates.items()})
        stats: dict[str, float] = {}
        if self.curriculum is not None:
            value = self.curriculum.observe(sum(correct) / max(1, len(correct)))
            self._set_difficulty(value)
            stats[f"curriculum/{self.config.data.curriculum.param}"] = float(value)
        return stats

    def _set_difficulty(self, value: int) -> None:
        """Rebuild the task at a new difficulty (a new instance, so tasks that precompute
        from their params, like reasoning-gym datasets, regenerate); the trainer's own task
        object, which scores and evaluates, is left as it is."""
        param = self.config.data.curriculum.param
        if value != _get_param(self.task.params, param, self.config.task.name):
            self.task = type(self.task)(_with_param(self.task.params, param, value))

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(),
                "curriculum": self.curriculum.state_dict() if self.curriculum else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state["curriculum"])
            self._set_difficulty(self.curriculum.value)


def _get_param(params: Any, path: str, task_name: str) -> int:
    """An integer task parameter by name, or inside a mapping parameter as ``field.key``
    (reasoning-gym's ``difficulty.<curriculum attribute>``, which must be set: it is the
    starting level)."""
    field_name, _, key = path.partition(".")
    if not hasattr(params, field_name):
        raise ValueError(f"data.curriculum.param: task {task_name!r} has no parameter {field_name!r}")
    value = getattr(params, field_name)
    if key:
        if not isinstance(value, dict):
            raise ValueError(f"data.curriculum.param: {field_name!r} of task {task_name!r} is not a mapping")
        if key not in value:
            raise ValueError(f"data.curriculum.param: set task.params.{field_name}.{key} to the starting level")
        value = value[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"data.curriculum.param: {path!r} of task {task_name!r} is not an integer")
    return value


def _with_param(params: Any, path: str, value: int) -> Any:
    field_name, _, key = path.partition(".")
    if key:
        return dataclasses.replace(params, **{field_name: {**getattr(params, field_name), key: value}})
    return dataclasses.replace(params, **{field_name: value})
