"""Rewards: named components, each a function of (task, problem, completion, score), summed
with the weights in ``reward.components``. Every component is logged on its own.

A component may instead follow TRL's convention, ``fn(prompts, completions, **columns) ->
list[float]`` (any function with a ``completions`` parameter): it is called once per batch
with the data's columns (``call_trl_reward``), as ``GRPOTrainer`` calls its reward functions.

A component that also takes an ``episode`` keyword gets the multi-turn trajectory (tool
calls, turns, the environment's own rewards); in single-turn runs ``episode`` is None.

A component must return a finite number. One that raises, or returns NaN, inf or a
non-number, is a ``RewardError`` naming the component and the sample, or with
``reward.on_error: zero`` scores 0 for that sample and is counted (``reward/failed``)."""

from __future__ import annotations

import inspect
import math
from functools import lru_cache
from typing import Any, Callable, Literal

from rlvr.registry import Registry
from rlvr.tasks.base import Problem, Score, Task
from rlvr.tasks.formats import matches_format, think_answer_format, without_confidence

RewardFn = Callable[..., float]  # (task, problem, completion, score, **params) -> float
REWARDS: Registry[RewardFn] = Registry("reward")
EXCERPT_CHARS = 60  # characters of an answer quoted in a reward error


class RewardError(RuntimeError):
    """A reward component or shaper raised, or gave a non-finite value or a non-number.
    ``sample`` is the batch index of the offending sample when only a batch position is known
    (a shaper), else None."""

    def __init__(self, message: str, sample: int | None = None) -> None:
        super().__init__(message)
        self.sample = sample


def describe_sample(problem: Problem, completion: str) -> str:
    """``problem 'id' (answer '…')``: which sample a reward error is about."""
    excerpt = completion if len(completion) <= EXCERPT_CHARS else completion[:EXCERPT_CHARS - 1] + "…"
    return f"problem {problem.id!r} (answer {excerpt!r})"


@REWARDS.register("correctness")
def correctness_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """The task verifier's reward (1.0 for a right final answer on exact tasks, else 0.0)."""
    return score.reward


@REWARDS.register("format")
def format_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """1.0 when the task can find a final answer in the completion at all, else 0.0."""
    return float(score.extracted is not None)


@REWARDS.register("think_answer_format")
def think_answer_format_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """1.0 for exactly one ``<think>...</think>`` followed by one ``<answer>...</answer>`` (the
    DeepSeek-R1 format reward), else 0.0. A stated confidence (RLCR) after the blocks is allowed."""
    return float(think_answer_format(without_confidence(completion) if task.stated_confidence else completion))


@REWARDS.register("regex_format")
def regex_format_reward(task: Task, problem: Problem, completion: str, score: Score, *, pattern: str) -> float:
    """1.0 when the whole completion matches ``pattern`` (``reward.params.regex_format.pattern``)."""
    return float(matches_format(completion, pattern))


@REWARDS.register("environment")
def environment_reward(task: Task, problem: Problem, completion: str, score: Score, *, episode: Any) -> float:
    """The multi-turn environment's per-turn rewards summed over the episode (e.g. the
    try-again environment's decayed success and repetition penalty); 0.0 single-turn."""
    return float(episode.env_reward) if episode is not None else 0.0


@REWARDS.register("tool_calls")
def tool_calls_reward(task: Task, problem: Problem, completion: str, score: Score, *, episode: Any,
                      cap: int = 0) -> float:
    """The number of tool calls of the episode (capped at ``cap`` when > 0): with a negative
    weight a per-call cost, with a positive one a bonus; 0.0 single-turn. For a cost that
    only charges *unnecessary* calls see the ``otc`` shaper."""
    calls = episode.tool_calls if episode is not None else 0
    return float(min(calls, cap) if cap > 0 else calls)


@lru_cache(maxsize=None)
def _signature(fn: RewardFn) -> inspect.Signature:
    return inspect.signature(fn)


def _takes_episode(fn: RewardFn) -> bool:
    return "episode" in _signature(fn).parameters


def _component_kwargs(name: str, fn: RewardFn, params: dict[str, dict[str, Any]], episode: Any,
                      *args: Any) -> dict[str, Any]:
    """The keywords ``fn`` is called with (its params, and ``episode`` when it takes one),
    checked against its signature with positional ``args``: a mismatch is the config's
    mistake, a ``TypeError`` naming the component (never a sample scored 0)."""
    kwargs = {**params.get(name, {}), **({"episode": episode} if _takes_episode(fn) else {})}
    try:
        _signature(fn).bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"reward component {name!r}: {err} (check reward.params.{name})") from None
    return kwargs


def is_trl_reward(fn: RewardFn) -> bool:
    """Whether ``fn`` follows TRL's reward-function convention, ``fn(prompts, completions,
    **columns) -> list[float]`` over a batch (it has a ``completions`` parameter), rather than
    rlvr's per-sample ``fn(task, problem, completion, score, **params) -> float``."""
    try:
        return "completions" in _signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _takes_any_keyword(fn: RewardFn) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _signature(fn).parameters.values())


def trl_columns(problems: list[Problem]) -> dict[str, list[Any]]:
    """The keyword columns a TRL-style reward function gets besides ``prompts`` and
    ``completions``: each problem's data columns (``metadata["columns"]``: the prompts task's
    record, less the prompt; a column missing from a record is None), plus ``answer`` and
    ``problem_id`` unless the data has columns of those names."""
    names: dict[str, None] = {}
    for problem in problems:
        names.update(dict.fromkeys(problem.metadata.get("columns", {})))
    columns = {name: [p.metadata.get("columns", {}).get(name) for p in problems] for name in names}
    columns.setdefault("answer", [p.answer for p in problems])
    columns.setdefault("problem_id", [p.id for p in problems])
    return columns


def call_trl_reward(name: str, fn: RewardFn, problems: list[Problem], completions: list[str],
                    completion_ids: list[list[int]] | None, params: dict[str, Any],
                    verified: list[bool] | None = None, extracted: list[str | None] | None = None,
                    groups: list[int] | None = None, task: Task | None = None, policy: Any = None) -> list[float]:
    """A TRL-style reward function over a batch, called as TRL calls it: ``prompts`` (text or
    conversations, as the data has them), ``completions`` (text, or ``[{"role": "assistant",
    "content": text}]`` for a conversation prompt), ``completion_ids``, the data's columns and
    the component's ``reward.params``; a function without ``**kwargs`` gets only the keywords it
    names. What rlvr knows beyond TRL goes only to a function that names it: ``verified`` (the
    task verifier's verdict on each completion: a learned reward gated by the verifier),
    ``extracted`` (the final answer the task found in it, None if none) and ``groups`` (the
    GRPO group of each sample: a reward computed over a group, such as a majority vote),
    ``task`` (the run's task: how it writes an answer) and ``policy`` (a ``PolicyView`` of the
    policy that sampled the batch: rewards from its own probabilities, ``rlvr.rewards.
    policy_probability``). One finite number per sample, or a ``RewardError`` naming the component."""
    if not is_trl_reward(fn):
        raise TypeError(f"reward {name!r} is not a batch reward function fn(prompts, completions, **columns)")
    kwargs: dict[str, Any] = {
        "prompts": [p.prompt for p in problems],
        "completions": [[{"role": "assistant", "content": text}] if isinstance(p.prompt, list) else text
                        for p, text in zip(problems, completions)],
        "completion_ids": completion_ids if completion_ids is not None else [None] * len(problems),
        **trl_columns(problems), **params}
    if not _takes_any_keyword(fn):
        kwargs = {key: value for key, value in kwargs.items() if key in _signature(fn).parameters}
    known = {"verified": list(verified) if verified is not None else [False] * len(problems),
             "extracted": list(extracted) if extracted is not None else [None] * len(problems),
             "groups": list(groups) if groups is not None else list(range(len(problems))),
             "task": task, "policy": policy}
    if "policy" in _signature(fn).parameters and policy is None:
        raise RewardError(f"reward component {name!r} reads the policy's probabilities, which only an RL step's "
                          "scoring gives")
    kwargs.update({key: value for key, value in known.items() if key in _signature(fn).parameters})
    try:
        values = fn(**kwargs)
    except Exception as err:
        raise RewardError(f"reward component {name!r} {_what_went_wrong(err)} for a batch of {len(problems)} "
                          f"samples (first: {describe_sample(problems[0], completions[0])})") from err
    try:
        values = list(values)
    except TypeError:
        raise RewardError(f"reward component {name!r} returned a {type(values).__name__}; a batch reward function "
                          f"returns one number per completion (a list of {len(problems)})") from None
    if len(values) != len(problems):
        raise RewardError(f"reward component {name!r} returned {len(values)} values for {len(problems)} completions")
    out = []
    for index, value in enumerate(values):
        if value is None:  # TRL: a function that does not apply to a sample returns None for it
            out.append(0.0)
            continue
        try:
            out.append(_finite(value))
        except _NotFinite as err:
            raise RewardError(f"reward component {name!r} {err} for "
                              f"{describe_sample(problems[index], completions[index])}", sample=index) from None
    return out


def trl_reward_values(weights: dict[str, float], problems: list[Problem], completions: list[str],
                      completion_ids: list[list[int]], params: dict[str, dict[str, Any]],
                      on_error: Literal["raise", "zero"] = "raise",
                      errors: list[list[str]] | None = None, verified: list[bool] | None = None,
                      extracted: list[str | None] | None = None,
                      groups: list[int] | None = None, task: Task | None = None,
                      policy: Any = None) -> list[dict[str, float]]:
    """Per sample, ``{name: value}`` of every TRL-style component of ``weights``, each called
    once for the whole batch. With ``on_error="zero"`` a failing function scores the batch 0
    and its message goes to every sample's ``errors`` entry."""
    values: list[dict[str, float]] = [{} for _ in problems]
    for name in weights:
        fn = REWARDS.get(name)
        if not is_trl_reward(fn):
            continue
        try:
            batch = call_trl_reward(name, fn, problems, completions, completion_ids, params.get(name, {}), verified,
                                    extracted, groups, task, policy)
        except RewardError as err:
            if on_error != "zero":
                raise RewardError(f"{err}; fix the function, or set reward.on_error: zero to score such samples 0 "
                                  "and count them (metric reward/failed)", err.sample) from err
            batch = [0.0] * len(problems)
            for sample_errors in errors or []:
                sample_errors.append(str(err))
        for sample, value in zip(values, batch):
            sample[name] = value
    return values


def check_reward_params(weights: dict[str, float], params: dict[str, dict[str, Any]]) -> None:
    """Raise ``TypeError`` naming the component when ``params`` gives a keyword its function
    does not take, leaves out one it needs, or gives NaN/inf: a config mistake, found before
    any work."""
    for name in weights:
        fn = REWARDS.get(name)
        if is_trl_reward(fn):
            unknown = [] if _takes_any_keyword(fn) else [key for key in params.get(name, {})
                                                          if key not in _signature(fn).parameters]
            if unknown:
                raise TypeError(f"reward component {name!r}: got an unexpected keyword argument {unknown[0]!r} "
                                f"(check reward.params.{name})")
        else:
            _component_kwargs(name, fn, params, None, None, None, None, None)
        for key, value in params.get(name, {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise TypeError(f"reward component {name!r}: {key} must be a finite number, got {value}")
        check = getattr(fn, "check", None)  # a component's own start-up check (a reward model loads)
        if check is not None:
            try:
                check(params.get(name, {}))
            except ValueError as err:
                raise TypeError(str(err)) from None


def compose_reward(
    weights: dict[str, float], task: Task, problem: Problem, completion: str, score: Score,
    params: dict[str, dict[str, Any]] | None = None, episode: Any = None,
    on_error: Literal["raise", "zero"] = "raise", errors: list[str] | None = None,
    batch_values: dict[str, float] | None = None,
) -> tuple[float, dict[str, float]]:
    """Weighted sum of the named components, each called with its keyword ``params`` (and
    ``episode`` when it takes one); returns (total, {name: unweighted value}).

    A component that raises or returns a non-finite value or a non-number is a
    ``RewardError`` naming it and the sample; with ``on_error="zero"`` it counts 0 instead
    and its message is appended to ``errors`` (when given)."""
    params = params or {}
    parts = {}
    for name in weights:
        if batch_values is not None and name in batch_values:  # a TRL-style function, called on the batch
            parts[name] = batch_values[name]
            continue
        fn = REWARDS.get(name)
        if is_trl_reward(fn):
            parts[name] = call_trl_reward(name, fn, [problem], [completion], None, params.get(name, {}))[0]
            continue
        kwargs = _component_kwargs(name, fn, params, episode, task, problem, completion, score)
        try:
            parts[name] = _finite(fn(task, problem, completion, score, **kwargs))
        except Exception as err:
            message = f"reward component {name!r} {_what_went_wrong(err)} for {describe_sample(problem, completion)}"
            if on_error != "zero":
                raise RewardError(f"{message}; fix the function, or set reward.on_error: zero to score such "
                                  "samples 0 and count them (metric reward/failed)") from err
            parts[name] = 0.0
            if errors is not None:
                errors.append(message)
    total = sum(weights[name] * value for name, value in parts.items())
    if not math.isfinite(total):  # finite parts whose weighted sum overflows (1e308 * 10)
        raise RewardError(f"the weighted sum of the reward components is {total} for "
                          f"{describe_sample(problem, completion)} (components: {parts}, weights: {weights}); "
                          "rescale the reward functions or their weights")
    return total, parts


class _NotFinite(ValueError):
    pass


def _finite(value: Any) -> float:
    """``value`` as a float; _NotFinite for NaN, inf, a string or anything float() refuses."""
    if isinstance(value, (str, bytes)):
        raise _NotFinite(f"returned {value!r}, not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _NotFinite(f"returned a {type(value).__name__}, not a number") from None
    if not math.isfinite(number):
        raise _NotFinite(f"returned {number}")
    return number


def _what_went_wrong(err: Exception) -> str:
    if isinstance(err, _NotFinite):
        return str(err)
    return f"raised {type(err).__name__}: {str(err)[:200]}"


from rlvr.rewards import otc as _otc  # noqa: E402,F401  (registers the "otc" shaper)
from rlvr.rewards import learned as _learned  # noqa: E402,F401  (registers "reward_model")
from rlvr.rewards import verifier_free as _verifier_free  # noqa: E402,F401  (registers "majority_vote")
from rlvr.rewards import process as _process  # noqa: E402,F401  (registers "process")
from rlvr.rewards import calibration as _calibration  # noqa: E402,F401  (registers "rlcr")
from rlvr.rewards import judge as _judge  # noqa: E402,F401  (registers "judge")
from rlvr.rewards import policy_probability as _policy_probability  # noqa: E402,F401  ("rlpr", "self_certainty")
