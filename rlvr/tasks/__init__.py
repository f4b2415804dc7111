"""Tasks with checkable answers. Importing this package imports every module in it, so a
task registers itself just by living in a file here (``@TASKS.register("name")``)."""

import importlib
import pkgutil

from rlvr.tasks.base import TASKS, Problem, Score, Task

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Problem", "Score", "Task"]
