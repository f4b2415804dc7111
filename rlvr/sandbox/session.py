"""A persistent sandboxed Python interpreter for multi-turn tool use (notebook-cell semantics)."""

from __future__ import annotations

from typing import Mapping

from .limits import SandboxLimits, SandboxResult
from .server import SandboxServer, _Link, default_server


class PythonSession:
    """One confined interpreter whose variables and imports persist between `run` calls.

    Each call is a notebook cell: statements run in the session's ``__main__``, and when the
    last statement is an expression its ``repr`` is printed (unless it ends with ``;``), as in
    Jupyter and ReTool-style code interpreters. Each call gets its own wall-clock and CPU
    limits and its own output caps. A timeout, a crash or ``exit()`` ends the interpreter; the
    next `run` starts a new one and says so in the result's ``error``. ``input()`` sees end of
    file. The interpreter is confined exactly as `run_python` is, for its whole life.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, files: Mapping[str, str | bytes] | None = None,
                 server: SandboxServer | None = None):
        self.limits = limits if limits is not None else SandboxLimits()
        self._files = dict(files or {})
        self._server = server if server is not None else default_server()
        self._link: _Link | None = None
        self._closed = False
        self._ended_because: str | None = None
        self._start()

    @property
    def alive(self) -> bool:
        """Whether the interpreter is running (False after a crash, a timeout or `close`)."""
        return self._link is not None

    def run(self, code: str) -> SandboxResult:
        """Run one cell; restart the interpreter first if the previous one ended.

        ``exit_code`` is 0, or 1 when the cell raised (``error`` names the exception); when
        the interpreter itself ended (``exit()``, a signal) it is that exit status, and
        None after a timeout or the CPU limit.
        """
        if self._closed:
            raise RuntimeError("PythonSession.run: the session is closed")
        if not isinstance(code, str):
            raise TypeError(f"PythonSession.run: code must be str, got {type(code).__name__}")
        note = None
        if self._link is None:
            note = (f"interpreter restarted (the previous one ended: {self._ended_because}); "
                    "variables and imports from earlier calls are lost")
            self._start()
        result, alive = self._server._run_cell(self._link, code, self.limits)
        if not alive:
            self._ended_because = result.error or f"exit code {result.exit_code}"
            self._drop()
        if note is not None:
            result.error = note if result.error is None else f"{note}; then {result.error}"
        return result

    def restart(self) -> None:
        """A fresh interpreter: every variable and import is gone."""
        if self._closed:
            raise RuntimeError("PythonSession.restart: the session is closed")
        self._drop()
        self._start()

    def close(self) -> None:
        """End the interpreter and every process it started; returns once they are gone
        (within a few seconds whatever the code does)."""
        self._drop()
        self._closed = True

    def __enter__(self) -> "PythonSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop(wait=False)
        except Exception:
            pass

    def _start(self) -> None:
        self._link = self._server._start_session(self.limits, self._files)

    def _drop(self, wait: bool = True) -> None:
        link, self._link = self._link, None
        if link is not None:  # the supervisor sees end of file and kills the interpreter's processes
            link.close() if wait else link.close(wait_s=None)
