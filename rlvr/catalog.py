"""What ``rlvr list`` and ``rlvr describe`` print: every registered component and built-in
recipe, with a one-line description, the config field that selects it and its parameters
(a task's or environment's ``Params`` dataclass with each field's help; a function's keyword
arguments with their defaults, and the ``Params:`` section of its docstring)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.typed_yaml import field_help


@dataclass(frozen=True)
class Category:
    name: str  # as ``rlvr list NAME`` takes it
    title: str
    field: str  # the config field that selects a member
    registry: Callable[[], Any]  # imported on use: the registries pull in torch
    fixed_args: tuple[str, ...] = ()  # positional arguments the framework passes, not config parameters


def _tasks() -> Any:
    from rlvr.tasks import TASKS
    return TASKS


def _rewards() -> Any:
    from rlvr.rewards import REWARDS
    return REWARDS


def _shapers() -> Any:
    from rlvr.rewards.shaping import REWARD_SHAPERS
    return REWARD_SHAPERS


def _algorithms(name: str) -> Callable[[], Any]:
    def get() -> Any:
        import rlvr.algorithms as algorithms
        return getattr(algorithms, name)
    return get


def _engines() -> Any:
    from rlvr.rollout import ROLLOUT_ENGINES
    return ROLLOUT_ENGINES


def _environments() -> Any:
    from rlvr.rollout import ENVIRONMENTS
    return ENVIRONMENTS


CATEGORIES = (
    Category("tasks", "tasks", "task.name (knobs in task.params)", _tasks),
    Category("rewards", "reward components", "reward.components (keywords in reward.params.NAME)", _rewards,
             ("task", "problem", "completion", "score", "episode",  # given by rlvr, not set in a config:
              "prompts", "completions", "completion_ids", "verified", "extracted", "groups",
              "answer", "problem_id", "policy")),  # columns every problem has; the sampling policy
    Category("shapers", "reward shapers", "reward.shaping (a list of {name, params})", _shapers, ("inputs",)),
    Category("advantages", "advantage estimators", "algorithm.advantage", _algorithms("ADVANTAGES"),
             ("rewards", "group_ids", "mask", "token_rewards", "values", "baseline", "kwargs")),
    Category("losses", "policy losses", "algorithm.loss", _algorithms("POLICY_LOSSES"),
             ("logp", "old_logp", "advantages", "mask", "kwargs")),
    Category("aggregations", "loss aggregations", "algorithm.loss_agg", _algorithms("LOSS_AGGREGATIONS"),
             ("values", "mask", "kwargs")),
    Category("kl", "KL estimators", "algorithm.kl.estimator", _algorithms("KL_ESTIMATORS"),
             ("logp", "ref_logp", "kwargs")),
    Category("engines", "rollout engines", "rollout.engine", _engines),
    Category("environments", "rollout environments", "rollout.environment.name (knobs in .params)", _environments),
)
CATEGORY_NAMES = tuple(c.name for c in CATEGORIES) + ("recipes",)


def own_doc(obj: Any) -> str:
    """``obj``'s own docstring; for a class without one (a task), its module's: an inherited
    base-class docstring describes the base, not the task."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc and inspect.isclass(obj):
        module = inspect.getmodule(obj)
        doc = module.__doc__ if module is not None else None
    return inspect.cleandoc(doc) if doc else ""


def _one_line(text: str, width: int = 110) -> str:
    line = " ".join(text.strip().split("\n\n")[0].split())
    return line if len(line) <= width else line[: width - 4].rsplit(" ", 1)[0] + " ..."


def first_line(obj: Any) -> str:
    return _one_line(own_doc(obj))


def list_lines(category: str | None = None) -> list[str]:
    """``rlvr list [CATEGORY]``: every member of each category with its one-line description."""
    if category is not None and category not in CATEGORY_NAMES:
        raise ValueError(f"unknown category {category!r}; one of {', '.join(CATEGORY_NAMES)}")
    lines: list[str] = []
    for cat in CATEGORIES:
        if category not in (None, cat.name):
            continue
        registry = cat.registry()
        lines.append(f"{cat.title} ({cat.field}):")
        width = max(len(n) for n in registry.names())
        lines += [f"  {name:<{width}}  {first_line(registry.get(name))}" for name in registry.names()]
    if category in (None, "recipes"):
        from rlvr.recipes import recipe_names, recipe_path, recipe_summary

        names = recipe_names()
        width = max(len(n) for n in names)
        lines.append("recipes (rlvr train --config NAME):")
        lines += [f"  {name:<{width}}  {_one_line(recipe_summary(recipe_path(name)))}" for name in names]
    if category is None:
        lines.append("rlvr describe NAME prints one's parameters and full description.")
    return lines


def _parameters(obj: Any, fixed: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of what a config can set on ``obj``."""
    params = getattr(obj, "Params", None)
    if isinstance(params, type) and dataclasses.is_dataclass(params):
        return field_help(params)
    if not callable(obj) or inspect.isclass(obj):
        return []
    rows = []
    for name, p in inspect.signature(obj).parameters.items():
        if name in fixed or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = "<required>" if p.default is p.empty else repr(p.default)
        kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        rows.append((name, "" if p.annotation is p.empty else str(kind), default, ""))
    return rows


def describe_lines(name: str) -> list[str]:
    """``rlvr describe NAME``: each registered component or recipe called ``name``."""
    lines: list[str] = []
    for cat in CATEGORIES:
        registry = cat.registry()
        if name not in registry.names():
            continue
        obj = registry.get(name)
        if lines:
            lines.append("")
        lines.append(f"{name}: {cat.title[:-1] if cat.title.endswith('s') else cat.title} ({cat.field})")
        doc = own_doc(obj) or "(no description)"
        lines += ["  " + line if line else "" for line in doc.splitlines()]
        rows = _parameters(obj, cat.fixed_args)
        if rows:
            lines.append("  parameters:")
            width = max(len(r[0]) for r in rows)
            for pname, tp, default, help_text in rows:
                lines.append(f"    {pname:<{width}}  {tp} = {default}" + (f"  {help_text}" if help_text else ""))
        else:
            lines.append("  parameters: none")
    from rlvr.recipes import recipe_path

    path = recipe_path(name)
    if path is not None:
        if lines:
            lines.append("")
        lines.append(f"{name}: recipe ({path}; rlvr train --config {name})")
        lines += ["  " + line for line in path.read_text().rstrip().splitlines()]
    if not lines:
        import difflib

        known = [n for cat in CATEGORIES for n in cat.registry().names()]
        from rlvr.recipes import recipe_names

        known += recipe_names()
        close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `rlvr list` prints every name"
        raise ValueError(f"nothing is called {name!r}{hint}")
    return lines
