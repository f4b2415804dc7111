"""The environment API of multi-turn rollouts: reset with a problem, step with the policy's
turn, get back a text observation, a reward and whether the episode is over.

The rollout loop (`rlvr.rollout.multi_turn`) owns the tokens: it keeps the ids the policy
generated as they were sampled and tokenizes each observation on its own, so nothing the
policy said is ever re-tokenized. An environment sees and returns text only, which keeps
it independent of the tokenizer and easy to write:

    @ENVIRONMENTS.register("echo")
    class Echo(Environment):
        def step(self, action, finish_reason):
            return StepResult(observation="", done=True)

A user's own environment needs no registration: name it as ``module:Class`` in
``rollout.environment.name``. ``tool`` (a Python interpreter, ReTool / SimpleTIR style) and
``try_again`` (unary feedback after a wrong answer, UFO) are the built-in ones.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from rlvr.registry import Registry
from rlvr.tasks.base import Problem, Score, Task

Scorer = Callable[[list[Problem], list[str]], list[Score]]  # the verifier's score_many


@dataclass
class StepResult:
    """What the environment answers to one policy turn.

    ``observation`` is appended after the turn as raw text (its tokens are masked from the
    loss) when the episode goes on; ``user_message`` instead appends a user turn rendered by
    the tokenizer's chat template (feedback such as "Try again."); ``reward`` is this turn's reward (summed over the episode into the
    ``environment`` reward component); ``tool_call`` / ``tool_error`` count for metrics;
    ``void`` marks a turn that produced neither a tool call nor an answer (SimpleTIR).
    """

    observation: str = ""
    user_message: str | None = None
    reward: float = 0.0
    done: bool = False
    tool_call: bool = False
    tool_error: bool = False
    void: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """One episode per instance: built per trajectory, stepped once per policy turn, closed
    when the episode ends (release interpreters and other resources in `close`).

    ``task`` is the run's task (``extract_answer`` tells an answer turn), ``score`` the run's
    verifier (``score([problem], [text])`` -> [Score]); ``turn_texts`` holds the policy's
    turns so far, appended by the loop before each `step`."""

    @dataclass
    class Params:
        """Environment-specific parameters, from ``rollout.environment.params``."""

    @classmethod
    def stop_strings(cls, params: Any) -> tuple[str, ...]:
        """Strings that end a policy turn early (besides EOS), e.g. the close of a code block."""
        return ()

    def __init__(self, params: Any, task: Task, score: Scorer):
        self.params = params
        self.task = task
        self.score = score
        self.problem: Problem | None = None
        self.turn_texts: list[str] = []

    def reset(self, problem: Problem) -> None:
        """Start an episode on ``problem`` (the prompt itself is rendered by the loop)."""
        self.problem = problem
        self.turn_texts = []

    @abstractmethod
    def step(self, action: str, finish_reason: str) -> StepResult:
        """React to the policy's turn ``action`` (decoded text; ``finish_reason`` is "eos",
        "stop" when a stop string closed it, or "length")."""

    def answer_text(self) -> str:
        """The text the verifier scores at the end: by default every policy turn, joined
        (observations are never part of it, so printing an answer from code cannot fake one)."""
        return "".join(self.turn_texts)

    def episode_violation(self) -> str | None:
        """Why the finished episode breaks the environment's rules (its reward is then 0), or None."""
        return None

    def close(self) -> None:
        """Release what the episode holds."""

    @classmethod
    def demonstrations(cls, params: Any, texts: list[str]) -> list[list[tuple[str, bool]]]:
        """A batch of the task's demonstrations as (text, is_policy) segments for the SFT warm
        start: by default each is one policy segment. Environments with observations (tool
        output) fill them in by actually running the environment."""
        return [[(text, True)] for text in texts]


ENVIRONMENTS: Registry[type[Environment]] = Registry("environment")


@dataclass
class EnvironmentFactory:
    """Builds one environment per trajectory, with the run's task and verifier."""

    cls: type[Environment]
    params: Any
    task: Task
    score: Scorer
    max_turns: int
    observation_tokens: int

    def __call__(self) -> Environment:
        return self.cls(self.params, self.task, self.score)


def build_environment(config: Any, task: Task, score: Scorer, source: str = "config") -> EnvironmentFactory | None:
    """The factory for ``rollout.environment`` (an `EnvironmentConfig`), or None for
    single-turn rollouts; ``params`` are checked against the environment's Params. The
    rollout loop steps environments from several threads and the verifier pool is not
    thread-safe, so environments get ``score`` behind a lock."""
    if config.name is None:
        return None
    from rlvr.typed_yaml import from_dict

    cls = ENVIRONMENTS.get(config.name)
    params = from_dict(cls.Params, config.params, source=f"{source}: rollout.environment.params")
    lock = threading.Lock()

    def locked_score(problems: list[Problem], completions: list[str]) -> list[Score]:
        with lock:
            return score(problems, completions)

    return EnvironmentFactory(cls, params, task, locked_score, config.max_turns, config.observation_tokens)
