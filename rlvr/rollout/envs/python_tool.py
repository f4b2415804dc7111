"""Tool-integrated reasoning: the policy writes Python in ``<code>…</code>``, a persistent
sandboxed interpreter runs it, and its output comes back in ``<output>…</output>``
(ReTool, Feng et al. 2025; SimpleTIR, Xue et al. 2025).

One interpreter per trajectory (`rlvr.sandbox.PythonSession`, started on the first call,
closed with the episode), so variables persist across the episode's calls and every
sandbox limit (time, CPU, memory, processes, no network, writes only to its scratch dir)
applies per trajectory. A turn that ends with EOS or at the budget ends the episode; a
turn that produced neither a code block nor an answer the task can extract is *void*
(SimpleTIR filters trajectories with void turns out of the update).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from rlvr.rollout.environment import ENVIRONMENTS, Environment, StepResult
from rlvr.sandbox import PythonSession, SandboxLimits, SandboxResult
from rlvr.tasks.base import Problem
from rlvr.typed_yaml import check_ranges

_FENCE = re.compile(r"^\s*```(?:python|py)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


@ENVIRONMENTS.register("python")
class PythonToolEnvironment(Environment):
    """A Python interpreter as the policy's tool."""

    @dataclass
    class Params:
        tools: Literal["optional", "required", "forbidden"] = field(
            default="optional", metadata={"help": "optional; required: an answer without any tool call earns reward 0; forbidden: a tool call ends the episode with reward 0"})
        code_open: str = field(default="<code>", metadata={"help": "opens a tool call"})
        code_close: str = field(default="</code>", metadata={"help": "closes a tool call; generation pauses here"})
        output_open: str = field(default="<output>", metadata={"help": "opens the interpreter's output"})
        output_close: str = field(default="</output>", metadata={"help": "closes the interpreter's output"})
        max_output_chars: int = field(default=200, metadata={"help": "output longer than this is cut (head kept, marked '...')", "ge": 1})
        wall_time_s: float = field(default=5.0, metadata={"help": "wall-clock seconds per tool call", "gt": 0})
        cpu_time_s: float = field(default=5.0, metadata={"help": "CPU seconds per tool call", "gt": 0})
        memory_mb: int = field(default=256, metadata={"help": "memory of the trajectory's interpreter (MiB)", "ge": 64})

        def __post_init__(self) -> None:
            check_ranges(self)
            if not (self.code_open and self.code_close):
                raise ValueError("code_open and code_close must be non-empty")

    @classmethod
    def stop_strings(cls, params: Params) -> tuple[str, ...]:
        return (params.code_close,)

    def __init__(self, params: Params, task, score):
        super().__init__(params, task, score)
        self.session: PythonSession | None = None
        self.calls = 0
        self.violation: str | None = None

    def reset(self, problem: Problem) -> None:
        super().reset(problem)
        self.calls, self.violation = 0, None

    def step(self, action: str, finish_reason: str) -> StepResult:
        p = self.params
        code = extract_code(action, p.code_open, p.code_close) if finish_reason == "stop" else None
        if code is not None:
            self.calls += 1
            if p.tools == "forbidden":
                self.violation = "tool call while tools are forbidden"
                return StepResult(done=True, tool_call=True)
            result = self._run(code)
            return StepResult(observation=f"{p.output_open}{format_output(result, p.max_output_chars)}{p.output_close}",
                              tool_call=True, tool_error=not result.ok)
        void = self.task.extract_answer(action) is None
        return StepResult(done=True, void=void)

    def episode_violation(self) -> str | None:
        if self.violation is None and self.params.tools == "required" and self.calls == 0:
            return "answer without a tool call while tools are required"
        return self.violation

    def _run(self, code: str) -> SandboxResult:
        if self.session is None:
            p = self.params
            self.session = PythonSession(SandboxLimits(wall_time_s=p.wall_time_s, cpu_time_s=p.cpu_time_s,
                                                       memory_mb=p.memory_mb))
        return self.session.run(code)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    @classmethod
    def demonstrations(cls, params: Params, texts: list[str]) -> list[list[tuple[str, bool]]]:
        """Split each demonstration after each code block and insert what the interpreter
        really prints for it. The demonstrations are the task's own code; they still run in
        the sandbox, in one session per batch (cells of one notebook: the teacher's code
        defines nothing later demonstrations could depend on)."""
        batch: list[list[tuple[str, bool]]] = []
        session: PythonSession | None = None
        try:
            for text in texts:
                segments: list[tuple[str, bool]] = []
                rest = text
                while (close := rest.find(params.code_close)) >= 0:
                    turn, rest = rest[:close + len(params.code_close)], rest[close + len(params.code_close):]
                    segments.append((turn, True))
                    code = extract_code(turn, params.code_open, params.code_close)
                    if code is not None:
                        session = session or PythonSession()
                        output = format_output(session.run(code), params.max_output_chars)
                        segments.append((f"{params.output_open}{output}{params.output_close}", False))
                segments.append((rest, True))
                batch.append(segments)
        finally:
            if session is not None:
                session.close()
        return batch


def extract_code(turn: str, code_open: str, code_close: str) -> str | None:
    """The code of the tool call that closes ``turn`` (the last ``code_open`` before the
    final ``code_close``); a Markdown fence inside the tags is unwrapped. None when the turn
    does not end with a complete call (trailing whitespace aside)."""
    turn = turn.rstrip()
    if not turn.endswith(code_close):
        return None
    body = turn[:-len(code_close)]
    start = body.rfind(code_open)
    if start < 0:
        return None
    code = body[start + len(code_open):]
    fenced = _FENCE.match(code)
    return fenced.group(1) if fenced else code


def format_output(result: SandboxResult, limit: int) -> str:
    """What the policy sees of a call: stdout, then on failure the error's last line."""
    text = result.stdout
    if not result.ok:
        last = (result.stderr.strip().splitlines() or [""])[-1]
        text += last or (result.error or "error")
    if len(text) > limit:
        text = text[:limit] + "..."
    return text
