"""The records of the sandbox: what a run may use (`SandboxLimits`) and what it did (`SandboxResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one `run_python` call, or of each `PythonSession.run` call.

    Every limit is enforced by the kernel or by the supervising process, never by the code
    under test; see the `rlvr.sandbox` docstring for which mechanism enforces which.
    """

    wall_time_s: float = 5.0
    """Wall-clock seconds; then SIGKILL of every process of the run (the whole pid namespace)."""
    cpu_time_s: float = 5.0
    """CPU seconds of the main process: RLIMIT_CPU for `run_python` (SIGXCPU, SIGKILL one
    second later; whole seconds, rounded up); per call for a session, where the supervisor
    polls the interpreter's CPU time every 50 ms and kills it past the limit."""
    memory_mb: int = 512
    """Address space per process in MiB (RLIMIT_AS); with a memory cgroup, also the resident
    memory of the whole run, scratch files included, plus scratch_mb and 64 MiB of slack."""
    file_size_mb: int = 16
    """Largest file a process may write, in MiB (RLIMIT_FSIZE)."""
    max_processes: int = 32
    """Processes and threads of the run (RLIMIT_NPROC of the run's own uid, and pids.max)."""
    max_output_bytes: int = 65536
    """Bytes kept of stdout and of stderr each; the rest is read and discarded (`truncated`),
    at most every 10 ms, so that a flood of output mostly waits instead of burning CPU."""
    network: bool = False
    """False: no network (an empty network namespace: no interface, not even loopback)."""
    scratch_mb: int = 64
    """Size in MiB of the private scratch directory (a RAM-backed tmpfs, also /tmp and $HOME)."""
    max_open_files: int = 256
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    cpu_cores: float = 1.0
    """CPU bandwidth of the whole run in cores (a cpu cgroup quota, where one is writable), so
    that even a fork bomb leaves the rest of the machine to the trainer."""
    site_packages: bool = False
    """True: the code may import the packages installed in the caller's environment (numpy,
    sympy...); False: the standard library only. They are readable either way."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"SandboxLimits.{f.name} must be a bool, got {value!r}")
                continue
            numeric = (int, float) if f.type == "float" else (int,)
            if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
                raise TypeError(f"SandboxLimits.{f.name} must be a finite {f.type}, got {value!r}")
        for name in ("wall_time_s", "cpu_time_s", "cpu_cores"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        # 64 MiB: the interpreter itself needs about 30 MiB of address space
        for name, low in (("memory_mb", 64), ("file_size_mb", 0), ("max_processes", 1),
                          ("max_output_bytes", 0), ("scratch_mb", 1), ("max_open_files", 16)):
            if getattr(self, name) < low:
                raise ValueError(f"SandboxLimits.{name} must be >= {low}, got {getattr(self, name)!r}")


@dataclass
class SandboxResult:
    """What one run did. `exit_code` is negative (-signal) when a signal killed the process,
    None when there is no exit status (timeout, or the sandbox itself failed)."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    oom: bool
    """Best effort: a MemoryError was seen, or the memory cgroup's OOM killer struck."""
    truncated: bool
    """stdout or stderr went beyond `max_output_bytes`."""
    duration_s: float
    """Wall-clock seconds of the call, as the caller saw it."""
    error: str | None = None
    """A short reason when the run did not end cleanly ("timeout after 5 s", "killed by
    signal 11 (SIGSEGV)", "memory limit (uncaught MemoryError)", ...), or a note such as a
    session's restart."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out
