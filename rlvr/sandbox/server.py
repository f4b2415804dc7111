"""The parent's side of the sandbox: starts the zygote, sends it runs, enforces a last deadline.

`SandboxServer` owns one zygote process (see `_zygote.py`), started on first use. Each run
or session gets its own socket to its own supervisor, so calls from many threads run in
parallel. Whatever happens below, a call returns within ``wall_time_s + _GRACE_S`` (plus up
to ``_HELLO_TIMEOUT_S`` when the zygote itself is wedged, in which case it is restarted);
every send has a deadline; ending a session waits for its supervisor to exit (which it does
only once the run's processes are gone) for at most ``_CLOSE_TIMEOUT_S``, then kills it.
``RLVR_SANDBOX_DEBUG=1`` in the caller's environment lets the zygote's stderr through.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import asdict
from typing import Iterable, Mapping

from ._protocol import FrameReader, _safe_relpath, encode_frame, recv_frame
from .limits import SandboxLimits, SandboxResult

UID_BASE = 0x70000000
"""First uid of the sandbox's range, just above the one systemd gives containers (0x80000-0x6FFFFFFF)."""
UID_SLOTS = 4096
"""Concurrent runs on one machine; each holds its own uid, so RLIMIT_NPROC and kill-by-uid are per run."""
_HELLO_TIMEOUT_S = 15.0
_GRACE_S = 5.0
_START_TIMEOUT_S = 60.0
_CLOSE_TIMEOUT_S = 5.0
_DISABLE_CHOICES = frozenset({"privilege_drop", "pid_namespace", "network_namespace", "ipc_namespace",
                              "uts_namespace", "mount_namespace", "seccomp", "cgroups"})
_HERE = os.path.dirname(os.path.abspath(__file__))
_BOOT = """\
import importlib.util, json, sys
config = json.loads(sys.argv[1])
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
for name in ("linux", "protocol", "executor"):
    load("_rlvr_sandbox_" + name, config["dir"] + "/_" + name + ".py")
load("_rlvr_sandbox_zygote", config["dir"] + "/_zygote.py").zygote_main(config)
"""


class SandboxError(RuntimeError):
    """The sandbox itself cannot work (the zygote does not start, or a session cannot start)."""


class SandboxServer:
    """One zygote and the runs it serves; thread-safe.

    ``spares`` confined interpreters are kept ready (namespaces, cgroups, chroot done), so a
    call only pays for applying its limits and running its code. ``disable`` turns
    protections off on purpose (names as in `capabilities()`: "pid_namespace",
    "mount_namespace", "network_namespace", "cgroups", "seccomp", "privilege_drop", ...), to
    exercise the fallbacks used where the kernel or the user lacks them.
    """

    def __init__(self, *, disable: Iterable[str] = (), spares: int = 2, uid_base: int = UID_BASE,
                 uid_slots: int = UID_SLOTS):
        unknown = set(disable) - _DISABLE_CHOICES
        if unknown:
            raise ValueError(f"SandboxServer(disable=...): unknown {sorted(unknown)}; "
                             f"choose from {sorted(_DISABLE_CHOICES)}")
        self.disable = tuple(sorted(set(disable)))
        self.spares = spares
        self.uid_base, self.uid_slots = uid_base, uid_slots
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ctrl: socket.socket | None = None
        self._caps: dict | None = None
        self._owner_pid = os.getpid()

    # -- zygote lifecycle
    def capabilities(self) -> dict:
        """What this machine lets the sandbox enforce, probed once when the zygote first starts."""
        if self._caps is None:
            self._ensure_started()
        return dict(self._caps)

    def _ensure_started(self) -> None:
        if self._owner_pid != os.getpid():
            self._forget()
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop_locked()
                self._start_locked()

    def _start_locked(self) -> None:
        import sysconfig
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        site_dirs = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
        config = {
            "ctrl_fd": theirs.fileno(), "dir": _HERE, "disable": list(self.disable),
            "uid_base": self.uid_base, "uid_slots": self.uid_slots, "lock_dir": _lock_dir(),
            "runtime_dir": "/tmp" if os.path.isdir("/tmp") else os.path.realpath(_tempdir()),
            "site_dirs": [d for d in site_dirs if os.path.isdir(d)], "spares": self.spares,
        }
        debug = os.environ.get("RLVR_SANDBOX_DEBUG") == "1"
        try:
            proc = subprocess.Popen(
                [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", _BOOT, json.dumps(config)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL, cwd="/", start_new_session=True,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
        finally:
            theirs.close()
        if not select.select([ours], [], [], _START_TIMEOUT_S)[0]:
            proc.kill()
            ours.close()
            raise SandboxError(f"the sandbox zygote did not start within {_START_TIMEOUT_S:g} s")
        msg = ours.recv(1 << 20)
        ready = json.loads(msg) if msg else {"t": "error", "error": "it exited during startup"}
        if ready.get("t") != "ready":
            proc.kill()
            ours.close()
            raise SandboxError(f"the sandbox zygote failed to start: {ready.get('error')}")
        self._proc, self._ctrl, self._caps = proc, ours, ready["caps"]
        _live_servers.add(self)

    def _stop_locked(self, graceful: bool = True) -> None:
        """Graceful: the zygote sees end of file, lets its supervisors clean up and exits.
        Otherwise (a wedged zygote) SIGKILL: its supervisors and their runs die with it."""
        proc, ctrl = self._proc, self._ctrl
        self._proc = self._ctrl = None
        if ctrl is not None:
            ctrl.close()
        if proc is not None:
            if not graceful:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _forget(self) -> None:
        """In a forked child: drop the parent's zygote without touching it."""
        if self._ctrl is not None:
            self._ctrl.close()
        self._proc = self._ctrl = None
        self._owner_pid = os.getpid()
        self._lock, self._send_lock = threading.Lock(), threading.Lock()  # may have been held at fork

    def close(self) -> None:
        if self._owner_pid != os.getpid():
            self._forget()
            return
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> "SandboxServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- talking to supervisors
    def _connect(self, request: dict) -> "_Link":
        """A socket to a supervisor that has received ``request`` (sent without waiting)."""
        problem = "?"
        for attempt in range(4):
            self._ensure_started()
            zygote = self._proc
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with self._send_lock:
                    ctrl = self._ctrl
                    if ctrl is None:
                        raise OSError("the zygote is stopped")
                    socket.send_fds(ctrl, [b"r"], [theirs.fileno()])
                theirs.close()
                ours.settimeout(_HELLO_TIMEOUT_S)  # bounded even if nobody ever reads
                ours.sendall(encode_frame(request))
                ours.settimeout(None)
                reader = FrameReader()
                hello = recv_frame(ours, reader, time.monotonic() + _HELLO_TIMEOUT_S)
                if isinstance(hello, dict) and hello.get("t") == "hello":
                    return _Link(ours, reader, _pidfd_or_none(hello.get("pid")))
                problem = "the supervisor hung up before starting"  # e.g. a spare that had just died
                ours.close()
            except (OSError, TimeoutError, ValueError) as e:
                problem = f"the zygote is not answering ({e})"
                ours.close()
                theirs.close()
                with self._lock:  # gone or wedged: the next attempt starts a new one
                    if self._proc is zygote:  # (unless another thread already did)
                        self._stop_locked(graceful=False)
        raise SandboxError(f"could not start a sandboxed run: {problem}")

    def _answer(self, link: "_Link", limits: SandboxLimits, t0: float) -> tuple[SandboxResult, bool]:
        """One result frame, and whether the interpreter lives on; past wall time + grace,
        give up and cancel the run."""
        timed_out = False
        try:
            reply = recv_frame(link.sock, link.reader, time.monotonic() + limits.wall_time_s + _GRACE_S)
            ok = isinstance(reply, dict) and reply.get("t") == "result"
            error = None if ok else "the supervisor closed the connection"
        except TimeoutError:
            reply, timed_out = None, True
            error = (f"timeout after {limits.wall_time_s:g} s; the supervisor did not answer within "
                     f"{_GRACE_S:g} s more and the run was cancelled")
        except (OSError, ValueError) as e:
            reply, error = None, f"lost the supervisor: {e}"
        if error is not None:
            link.close(wait_s=1.0)  # the supervisor sees end of file and kills the run, or is killed
            return SandboxResult(stdout="", stderr="", exit_code=None, timed_out=timed_out, oom=False,
                                 truncated=False, duration_s=time.monotonic() - t0, error=error), False
        result = SandboxResult(stdout=reply["stdout"], stderr=reply["stderr"], exit_code=reply["exit_code"],
                               timed_out=reply["timed_out"], oom=reply["oom"], truncated=reply["truncated"],
                               duration_s=time.monotonic() - t0, error=reply["error"])
        return result, bool(reply.get("alive"))

    def run_python(self, code: str, *, stdin: str = "", limits: SandboxLimits | None = None,
                   files: Mapping[str, str | bytes] | None = None) -> SandboxResult:
        """Run ``code`` as ``python -c`` would, confined; see `rlvr.sandbox.run_python`."""
        limits = limits if limits is not None else SandboxLimits()
        if not isinstance(code, str) or not isinstance(stdin, str):
            raise TypeError("run_python: code and stdin must be str")
        request = {"mode": "script", "code": code, "stdin": stdin, "limits": asdict(limits),
                   "files": _wire_files(files)}
        t0 = time.monotonic()
        link = self._connect(request)
        try:
            return self._answer(link, limits, t0)[0]
        finally:
            link.close(wait_s=None)  # a script's processes are gone before its result is sent

    def _start_session(self, limits: SandboxLimits, files) -> "_Link":
        request = {"mode": "session", "limits": asdict(limits), "files": _wire_files(files)}
        link = self._connect(request)
        try:
            reply = recv_frame(link.sock, link.reader, time.monotonic() + 30 + _GRACE_S)
        except (TimeoutError, OSError, ValueError) as e:
            link.close(wait_s=1.0)
            raise SandboxError(f"the interpreter did not start: {e}") from e
        if not isinstance(reply, dict) or reply.get("t") != "started":
            link.close(wait_s=1.0)
            raise SandboxError("the interpreter did not start: "
                               + str(reply.get("error") if isinstance(reply, dict) else "connection closed"))
        return link

    def _run_cell(self, link: "_Link", code: str, limits: SandboxLimits) -> tuple[SandboxResult, bool]:
        t0 = time.monotonic()
        try:
            link.sock.settimeout(_HELLO_TIMEOUT_S)  # a supervisor that does not read: bounded
            link.sock.sendall(encode_frame({"t": "cell", "code": code}))
            link.sock.settimeout(None)
        except OSError as e:  # TimeoutError included
            link.close(wait_s=1.0)
            return SandboxResult("", "", None, False, False, False, time.monotonic() - t0,
                                 f"lost the interpreter: {e}"), False
        return self._answer(link, limits, t0)


class _Link:
    """The parent's end of one run or session: the socket to its supervisor, and a pidfd of
    that supervisor so that ending it can be waited for (and forced)."""

    def __init__(self, sock: socket.socket, reader: FrameReader, pidfd: int | None):
        self.sock, self.reader, self.pidfd = sock, reader, pidfd

    def close(self, wait_s: float | None = _CLOSE_TIMEOUT_S) -> None:
        """Hang up: the supervisor kills the run and exits. Wait up to ``wait_s`` for it to
        exit, then SIGKILL it (its run dies with it: parent-death signals, pid namespace);
        ``None``: do not wait."""
        self.sock.close()
        pidfd, self.pidfd = self.pidfd, None
        if pidfd is None:
            return
        if wait_s is None:
            os.close(pidfd)
            return
        try:
            if not select.select([pidfd], [], [], wait_s)[0]:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
                select.select([pidfd], [], [], 1.0)
        finally:
            os.close(pidfd)

    def __del__(self) -> None:
        if self.pidfd is not None:  # dropped without close (garbage collection): do not wait
            os.close(self.pidfd)


def _pidfd_or_none(pid: object) -> int | None:
    """A pidfd of the supervisor (a child of our zygote, so its pid is not reused while we look)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _wire_files(files: Mapping[str, str | bytes] | None) -> list[list[str]]:
    out = []
    for name, data in (files or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"files: names must be str, got {name!r}")
        _safe_relpath(name)
        if isinstance(data, str):
            out.append([name, "text", data])
        elif isinstance(data, (bytes, bytearray)):
            out.append([name, "base64", base64.b64encode(data).decode()])
        else:
            raise TypeError(f"files[{name!r}] must be str or bytes, got {type(data).__name__}")
    return out


def _tempdir() -> str:
    import tempfile
    return tempfile.gettempdir()


def _lock_dir() -> str:
    if os.path.isdir("/run") and os.access("/run", os.W_OK):
        return "/run/rlvr-sandbox"
    return os.path.join(_tempdir(), ".rlvr-sandbox-locks")


_default: SandboxServer | None = None
_default_lock = threading.Lock()


def default_server() -> SandboxServer:
    """The process-wide server `run_python` and `PythonSession` use unless given one.

    A deliberate cache (one zygote per process, started on first use), reset in forked
    children so they never share their parent's zygote.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = SandboxServer()
        return _default


def _after_fork_in_child() -> None:
    global _default, _default_lock
    _default_lock = threading.Lock()
    if _default is not None:
        _default._forget()
    _default = None


_live_servers: "weakref.WeakSet[SandboxServer]" = weakref.WeakSet()


def _close_all() -> None:
    """At interpreter exit: let every zygote clean up its runs (they would on EOF anyway)."""
    for server in list(_live_servers):
        server.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
