"""Tasks with checkable answers; importing this package registers the built-in ones."""

from rlvr.tasks import addition as _addition  # noqa: F401  (registers "addition")
from rlvr.tasks.base import TASKS, Problem, Score, Task

__all__ = ["TASKS", "Problem", "Score", "Task"]
