"""Name → implementation registries, so configs select components by name.

Every pluggable kind (task, reward, advantage estimator, policy loss, rollout engine)
has one `Registry`; an implementation joins it with a one-line decorator and the
training loop looks it up by the name written in the config. A config may also name an
object in the user's own code as ``"package.module:attribute"``; it is imported on lookup,
so a custom task or reward needs no registration at all.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of implementations of one kind (e.g. "advantage estimator")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@ADVANTAGES.register("grpo")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def register_runtime(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name`` for this process (an object handed to ``rlvr.train``, e.g.
        a reward function defined in a notebook). It may replace an earlier runtime entry of
        that name, never a built-in one."""
        runtime = self.__dict__.setdefault("_runtime", set())
        if name in self._entries and name not in runtime and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is a built-in name; give your function another name")
        self._entries[name] = obj
        runtime.add(name)

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._import(name)
        known = ", ".join(sorted(self._entries)) or "(none)"
        raise KeyError(f"unknown {self.kind} {name!r}; known: {known} (or 'package.module:attribute')")

    def _import(self, path: str) -> T:
        module_name, _, attribute = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise KeyError(f"{self.kind} {path!r}: cannot import module {module_name!r} ({err})") from None
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise KeyError(f"{self.kind} {path!r}: module {module_name!r} has no attribute {attribute!r}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        """Registered names, and ``module:attribute`` paths that import."""
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
