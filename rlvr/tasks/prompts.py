"""TRL-style prompt data: records with a ``prompt`` column and any other columns.

The data is what TRL's ``GRPOTrainer`` takes as ``train_dataset``: a ``prompt`` that is either
plain text or a conversation (a list of ``{"role", "content"}`` messages), plus columns that
reward functions receive by name (``fn(prompts, completions, **columns)``: see
``rlvr.rewards``). It comes from a file (JSONL, JSON, Parquet, a ``save_to_disk`` directory or
a dataset already in the local Hugging Face cache: ``task.params.path``) or, from Python, from a
``datasets.Dataset`` or a list of dicts (``PromptsTask.from_records``).

**Which answers are right** (held-out accuracy, pass@k, ``correct`` in the logs) needs one of:

- ``answer_field``: a reference answer column, checked as the ``math`` task checks answers
  (the completion's last ``\\boxed{...}``, else the text after ``####`` or "answer is";
  equal strings, exact decimals, then math-verify);
- ``correct_reward``: a reward function (a registered reward or ``module:function``, either
  convention) whose value on a sample is at least ``correct_threshold``.

Without either the task is refused: a run would report an accuracy of 0 that means nothing.
The task's own reward (the ``correctness`` component) is 1.0 for a right answer, else 0.0.
``system_prompt`` is put before every conversation that has no system message of its own.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from rlvr.tasks._records import FileParams, FileTask, load_problems, require_field, text_id
from rlvr.tasks.base import TASKS, Problem, Score


@dataclass
class PromptsParams(FileParams):
    path: str = field(default="", metadata={
        "help": "local .jsonl/.json/.parquet file, a datasets save_to_disk directory, or a dataset name already in "
                "the local Hugging Face cache (never downloaded); from Python, PromptsTask.from_records needs none"})
    prompt_field: str = field(default="prompt", metadata={
        "help": "column holding the prompt: text, or a list of {role, content} chat messages (TRL's convention)"})
    answer_field: str | None = field(default=None, metadata={
        "help": "column holding a reference answer, checked like the math task's answers; null: use correct_reward"})
    correct_reward: str | None = field(default=None, metadata={
        "help": "without answer_field: the reward function (registered name or module:function) whose value marks "
                "a sample correct"})
    correct_threshold: float = field(default=1.0, metadata={
        "help": "correct_reward: the value at or above which a sample counts as correct"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "a system message put before every conversation prompt that has none"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.answer_field is None and self.correct_reward is None:
            raise ValueError("answer_field or correct_reward is required: without one no answer can be called "
                             "right, and held-out accuracy would mean nothing")


@TASKS.register("prompts")
class PromptsTask(FileTask):
    """TRL-style prompt data (a prompt column plus columns for reward functions); answers
    checked against an answer column, or marked right by a reward function."""

    name = "prompts"
    Params = PromptsParams
    isolate: ClassVar[bool] = True  # math-verify on an answer column; rebuilt per instance below

    def __init__(self, params: PromptsParams | None = None) -> None:
        if params is None:
            raise ValueError("the prompts task needs params: path and answer_field or correct_reward")
        super().__init__(params)
        self.isolate = params.answer_field is not None  # only math-verify needs the worker pool's guard
        self._records: list[dict[str, Any]] | None = None

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], **params: Any) -> "PromptsTask":
        """The task over in-memory records: a ``datasets.Dataset`` or any iterable of dicts."""
        rows = [dict(row) for row in records]
        task = cls(PromptsParams(path=params.pop("path", "<in-memory records>"), **params))
        task._records = rows
        return task

    def read_problems(self) -> list[Problem]:
        if self._records is None:
            return super().read_problems()
        p = self.params
        return load_problems(p.path, p.split, p.max_problems, self.to_problem, self.name,
                             records=((f"record {index}", record) for index, record in enumerate(self._records)))

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_records": None}  # workers only score

    def to_problem(self, record: dict[str, Any], where: str) -> Problem:
        p = self.params
        prompt = require_field(record, p.prompt_field, where, "prompt_field")
        if isinstance(prompt, str):
            rendered: str | list[dict[str, str]] = [{"role": "user", "content": prompt}] if p.chat else prompt
        elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m
                                              for m in prompt):
            rendered = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        else:
            raise ValueError(f"{where}: field {p.prompt_field!r} must be text or a list of {{role, content}} "
                             f"messages, not {type(prompt).__name__}")
        if p.system_prompt is not None and isinstance(rendered, list) and rendered[0]["role"] != "system":
            rendered = [{"role": "system", "content": p.system_prompt}, *rendered]
        answer = None
        if p.answer_field is not None:
            from rlvr.tasks.math import reference_answer

            answer = reference_answer(str(require_field(record, p.answer_field, where, "answer_field")), "auto")
        columns = {k: v for k, v in record.items() if k != p.prompt_field}
        if record.get(p.id_field) is not None:
            problem_id = str(record[p.id_field])
        else:
            problem_id = text_id(json.dumps(prompt, sort_keys=True, default=str), "p")
        return Problem(id=problem_id, prompt=rendered, answer=answer, metadata={"columns": columns})

    def extract_answer(self, completion: str) -> str | None:
        from rlvr.tasks.math import extract_final_answer

        return extract_final_answer(completion)

    def answer_text(self, answer: str) -> str:
        from rlvr.tasks.math import MathTask

        return MathTask.answer_text(self, answer)

    def score_batch(self, problems: list[Problem], completions: list[str]) -> list[Score]:
        """``score`` of each sample, with ``correct_reward`` called once for the whole batch."""
        if self.params.answer_field is not None:
            return [self.score(p, c) for p, c in zip(problems, completions)]
        from rlvr.rewards import REWARDS, call_trl_reward

        name = self.params.correct_reward
        values = call_trl_reward(name, REWARDS.get(name), problems, completions, None, {})
        return [Score(reward=float(v >= self.params.correct_threshold), correct=v >= self.params.correct_threshold,
                      extracted=None) for v in values]

    def score(self, problem: Problem, completion: str) -> Score:
        p = self.params
        if p.answer_field is not None:
            from rlvr.tasks.math import answers_match

            extracted = self.extract_answer(completion)
            correct = extracted is not None and answers_match(str(problem.answer), extracted)
            return Score(reward=float(correct), correct=correct, extracted=extracted)
        from rlvr.rewards import REWARDS, call_trl_reward

        value = call_trl_reward(p.correct_reward, REWARDS.get(p.correct_reward), [problem], [completion], None, {})[0]
        correct = value >= p.correct_threshold
        return Score(reward=float(correct), correct=correct, extracted=None)

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        raise NotImplementedError("prompt data has no demonstrations: train with 'stages=[rl]' from a checkpoint "
                                  "(model.path)")
