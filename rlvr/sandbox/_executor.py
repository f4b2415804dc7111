"""The confined side of a run: init (pid 1 of its pid namespace) and the executor.

Both are forked by the supervisor (`_zygote.py`) and inherit its state. The executor is
prepared as root before any request exists (new session, chroot, a fresh-looking
interpreter); on the supervisor's "go" it applies the request (network choice, scratch
size, files, rlimits), drops to the run's uid, sets no_new_privs, installs the seccomp
filter and runs the untrusted code: one script as ``python -c`` would, or notebook cells.
Standard library only; the zygote loads this file by path (see `server.py`).
"""

from __future__ import annotations

import ast
import atexit
import base64
import builtins
import codeop
import fcntl
import gc
import io
import linecache
import math
import os
import resource
import signal
import socket
import struct
import sys
import traceback
import types
from typing import TYPE_CHECKING

if __package__:
    from . import _linux
    from ._protocol import FrameReader, _safe_relpath, recv_frame, send_message
else:  # loaded by path inside the zygote, where the rlvr package is not importable
    import _rlvr_sandbox_linux as _linux  # type: ignore[no-redef]
    from _rlvr_sandbox_protocol import FrameReader, _safe_relpath, recv_frame, send_message  # type: ignore

if TYPE_CHECKING:
    from ._zygote import Supervisor

STATUS = struct.Struct("=id")  # init -> supervisor: the executor's wait status, CPU seconds used
ROOT_ONLY_MODULES = ("_rlvr_sandbox_zygote", "_rlvr_sandbox_executor", "_rlvr_sandbox_protocol",
                     "_rlvr_sandbox_linux")


class Init:
    """pid 1 of the run's pid namespace: mounts /proc and /tmp, forks the executor, reaps."""

    def __init__(self, sup: Supervisor, fds: dict):
        self.sup, self.fds = sup, fds

    def main(self) -> None:
        sup, fds = self.sup, self.fds
        _linux.set_parent_death_signal(signal.SIGKILL)
        _close_all_except(fds.values())
        if os.read(fds["go_r"], 1) != b"g":  # the supervisor died before we joined the cgroups
            return
        _mount_run_fs(sup)
        if sup.caps["uts_namespace"]:
            socket.sethostname("sandbox")
        pid = os.fork()
        if pid == 0:
            try:
                Executor(sup, fds, wait_go=False).main()
            finally:
                os._exit(1)
        for name, fd in fds.items():
            if name != "st_w":
                os.close(fd)
        while True:
            try:
                done, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                return
            if done == pid:
                os.write(fds["st_w"], STATUS.pack(status, usage.ru_utime + usage.ru_stime))
                return  # exiting as pid 1 makes the kernel kill what is left of the run


def _mount_run_fs(sup: Supervisor) -> None:
    """The run's own /proc (its pid namespace only) and scratch /tmp (a tmpfs owned by its uid)."""
    if sup.caps["mount_namespace"]:
        r = sup.z.root_dir
        _linux.mount("proc", f"{r}/proc", "proc", _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC,
                     "hidepid=2")
        _linux.mount("tmpfs", f"{r}/tmp", "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                     f"size=64m,mode=0700,uid={sup.uid},gid={sup.gid}")


class Executor:
    """The confined process: prepared as root before the request, then it drops everything
    and runs the untrusted code (never returns)."""

    def __init__(self, sup: Supervisor, fds: dict, wait_go: bool):
        self.sup, self.fds, self.wait_go = sup, fds, wait_go

    def main(self) -> None:
        sup, caps, fds = self.sup, self.sup.caps, self.fds
        _linux.set_parent_death_signal(signal.SIGKILL)
        if self.wait_go:  # no init above us: do its part here
            _close_all_except(fds.values())
            if os.read(fds["go_r"], 1) != b"g":
                os._exit(1)
            _mount_run_fs(sup)
        os.setsid()
        write_proc_self("oom_score_adj", "1000")
        keep = [fds["in_r"], fds["out_w"], fds["err_w"], fds["ctl_u"]] + ([fds["netns"]] if "netns" in fds else [])
        _install_fds(keep)  # 0 stdin, 1 stdout, 2 stderr, 3 control channel, 4 host network namespace
        if caps["mount_namespace"]:
            os.chroot(sup.z.root_dir)
        os.chdir(sup.scratch_inside)
        _reset_interpreter(sup.scratch_inside)
        ctl = socket.socket(fileno=3)
        go = recv_frame(ctl, FrameReader(), None)
        if not isinstance(go, dict) or go.get("t") != "go":
            os._exit(1)
        try:
            self.confine(go)
        except Exception as e:  # e.g. files larger than the scratch directory
            send_message(ctl, {"t": "setup_error", "error": f"{type(e).__name__}: {e}"[:500]})
            os._exit(1)
        self.run(go, ctl)

    def confine(self, go: dict) -> None:
        """Still root: the request's network choice, scratch size and files; then drop everything."""
        sup, caps, fds, lim = self.sup, self.sup.caps, self.fds, go["limits"]
        if sup.z.can_renice:
            os.setpriority(os.PRIO_PROCESS, 0, 0)  # spares are prepared at low priority
        if "netns" in fds:
            if lim["network"]:
                _linux.setns(4, _linux.CLONE_NEWNET)
            os.close(4)
        if caps["mount_namespace"]:
            _linux.mount(None, "/tmp", None, _linux.MS_REMOUNT | _linux.MS_NOSUID | _linux.MS_NODEV,
                         f"size={lim['scratch_mb']}m")
        _write_files(go["files"], sup.uid, sup.gid)
        limits = [(resource.RLIMIT_AS, lim["memory_mb"] << 20, lim["memory_mb"] << 20),
                  (resource.RLIMIT_FSIZE, lim["file_size_mb"] << 20, lim["file_size_mb"] << 20),
                  (resource.RLIMIT_NOFILE, lim["max_open_files"], lim["max_open_files"]),
                  (resource.RLIMIT_CORE, 0, 0),
                  (resource.RLIMIT_NPROC, lim["max_processes"], lim["max_processes"])]
        if go["mode"] == "script":  # a session's per-call CPU limit is watched by the supervisor
            cpu = max(1, math.ceil(lim["cpu_time_s"]))
            limits.append((resource.RLIMIT_CPU, cpu, cpu + 1))  # SIGXCPU, then SIGKILL
        for res, soft, hard in limits:
            _, current_hard = resource.getrlimit(res)
            if current_hard != resource.RLIM_INFINITY:  # raising it would need CAP_SYS_RESOURCE
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(res, (soft, hard))
        if caps["privilege_drop"]:
            for fd in (0, 1, 2):  # our pipes, so that reopening them (/dev/stdin) works as the uid
                os.fchown(fd, sup.uid, sup.gid)
            parent = os.getppid()
            os.setgroups([])
            os.setresgid(sup.gid, sup.gid, sup.gid)
            os.setresuid(sup.uid, sup.uid, sup.uid)
            _linux.set_parent_death_signal(signal.SIGKILL)  # a change of uid cleared it
            if os.getppid() != parent:
                os._exit(1)
            # ... and made the process non-dumpable, which gives its /proc/self files to root:
            # /dev/stdin (a /proc/self/fd link) and /proc/self/environ would fail. Only the
            # run's own processes share its uid (and seccomp refuses ptrace anyway).
            _linux.prctl(_linux.PR_SET_DUMPABLE, 1)
        _linux.set_no_new_privs()
        if caps["seccomp"]:
            _linux.install_seccomp_filter()
        if lim["site_packages"] and sup.z.site_dirs:
            import site
            for d in sup.z.site_dirs:
                site.addsitedir(d)
        if not lim["network"] and not caps["network_namespace"]:
            sys.addaudithook(_block_network_hook)
        _check_confinement(sup, lim)
        for name in ROOT_ONLY_MODULES:
            sys.modules.pop(name, None)
        gc.unfreeze()

    def run(self, go: dict, ctl: socket.socket) -> None:
        """Run the untrusted code: one script, or cells until the supervisor hangs up.

        The last message the supervisor believes is "ready", sent before any untrusted code
        runs. A script gets no control channel at all (its status is its wait status); a
        session's cell ends with "done" carrying the cell's nonce, which the code could
        forge only by reading this process's memory, and which then claims no more than the
        cell could by catching its own exception and leaving a thread running.
        """
        me = os.getpid()

        def send(obj: dict) -> None:
            if os.getpid() == me:  # not from processes the code forked
                try:
                    send_message(ctl, obj)
                except OSError:
                    pass

        send({"t": "ready"})
        if go["mode"] == "script":
            ctl.close()  # fd 3: nothing of the run can write to the supervisor any more
            rc, _ = _run_script(go["code"])
            os._exit(_finish(rc))
        compiler = codeop.Compile()
        reader = FrameReader()
        while True:
            try:
                frame = recv_frame(ctl, reader, None)
            except (OSError, ValueError):
                frame = None
            if not isinstance(frame, dict):
                os._exit(_finish(0))
            exc = None
            n, nonce = frame.get("n", 0), frame.get("nonce")
            try:
                _run_cell(frame.get("code", ""), f"<cell {n}>", compiler)
            except SystemExit as e:
                os._exit(_finish(_exit_code(e)))
            except BaseException as e:
                exc = type(e).__name__
                _print_exception(e)
            _flush_stdio()
            if os.getpid() != me:  # a process forked by the cell: it ends with the cell
                os._exit(0)
            send({"t": "done", "n": n, "nonce": nonce, "exc": exc})


def _write_files(files: list, uid: int, gid: int) -> None:
    """The caller's files, into the (fresh, still untouched) scratch directory, as root."""
    for name, kind, payload in files:
        data = base64.b64decode(payload) if kind == "base64" else payload.encode()
        path = _safe_relpath(name)
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
            d = parent
            while d:
                os.chown(d, uid, gid)
                d = os.path.dirname(d)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data)
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)


def _check_confinement(sup: Supervisor, lim: dict) -> None:
    """Read back from the kernel what `confine` set, before any untrusted code runs: a run
    never goes ahead with less than `sandbox_capabilities()` reports (writes to /proc and
    some prctl calls fail silently without the right capability)."""
    caps = sup.caps
    status = _linux.proc_status()
    wrong = []
    if status.get("NoNewPrivs") != ["1"]:
        wrong.append(f"NoNewPrivs {status.get('NoNewPrivs')}")
    if caps["seccomp"] and status.get("Seccomp") != ["2"]:
        wrong.append(f"Seccomp {status.get('Seccomp')}")
    if caps["privilege_drop"]:
        if set(status.get("Uid", ())) != {str(sup.uid)} or set(status.get("Gid", ())) != {str(sup.gid)}:
            wrong.append(f"Uid {status.get('Uid')} Gid {status.get('Gid')}")
        if status.get("Groups") or int(status.get("CapEff", ["1"])[0], 16):
            wrong.append(f"Groups {status.get('Groups')} CapEff {status.get('CapEff')}")
    with open("/proc/self/oom_score_adj") as f:
        oom = int(f.read())
    if oom != caps["oom_score_adj"]:
        wrong.append(f"oom_score_adj {oom}")
    if resource.getrlimit(resource.RLIMIT_AS)[1] > lim["memory_mb"] << 20:
        wrong.append(f"RLIMIT_AS {resource.getrlimit(resource.RLIMIT_AS)}")
    if wrong:
        raise RuntimeError("confinement not in effect: " + ", ".join(wrong))


def write_proc_self(name: str, text: str) -> None:
    try:
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    except OSError:
        pass


def _close_all_except(keep) -> None:
    lo = 0
    for fd in sorted(set(keep)):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, max(lo, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _install_fds(sources: list[int]) -> None:
    """Make ``sources`` fds 0, 1, 2, 3... (3 and up close-on-exec) and close every other one."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in sources]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=target < 3)
    os.closerange(len(sources), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _block_network_hook(event: str, args: tuple) -> None:
    """Best effort only (ctypes or a subprocess bypass it): used when no network namespace."""
    if event == "socket.__new__" and args and args[1] in (socket.AF_INET, socket.AF_INET6):
        raise PermissionError("network access is disabled in this sandbox (network=False)")
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
                 "socket.gethostbyname", "socket.gethostbyaddr"):
        target = args[1] if len(args) > 1 and event in ("socket.connect", "socket.bind") else None
        if not (isinstance(target, (str, bytes))):  # AF_UNIX addresses are paths
            raise PermissionError("network access is disabled in this sandbox (network=False)")


def _reset_interpreter(scratch: str) -> None:
    """Make this forked interpreter look like a fresh ``python -c`` started in ``scratch``."""
    os.environ.clear()
    os.environ.update({
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch, "USER": "sandbox", "LOGNAME": "sandbox",
        "PYTHONDONTWRITEBYTECODE": "1",
        # RLIMIT_AS counts every thread's stack: keep numerical libraries single-threaded
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    })
    os.umask(0o022)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGALRM, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # as CPython sets them at startup
        signal.signal(sig, signal.SIG_IGN)
    sys.argv = ["-c"]
    sys.path[:0] = [scratch]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    linecache.clearcache()
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                                   encoding="utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                                   encoding="utf-8", errors="backslashreplace",
                                                   line_buffering=True)
    sys.displayhook = sys.__displayhook__
    sys.excepthook = sys.__excepthook__
    import _sitebuiltins  # exit() and quit(), which -S leaves out
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")


def _register_source(filename: str, code: str) -> None:
    """Let tracebacks show the lines of code that never existed as a file."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)


def _run_script(code: str) -> tuple[int, str | None]:
    """Run ``code`` as ``python -c`` would; the exit code and the uncaught exception's name."""
    _register_source("<string>", code)
    main = sys.modules["__main__"]
    try:
        exec(compile(code, "<string>", "exec", dont_inherit=True), main.__dict__)
    except SystemExit as e:
        return _exit_code(e), None
    except BaseException as e:
        _print_exception(e)
        return 1, type(e).__name__
    return 0, None


def _run_cell(code: str, filename: str, compiler: codeop.Compile) -> None:
    """Run a notebook cell: statements, then the value of a final expression is displayed.

    As in Jupyter, a trailing semicolon suppresses the display; ``_`` holds the last value.
    """
    _register_source(filename, code)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not code.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
    namespace = sys.modules["__main__"].__dict__
    exec(compiler(tree, filename, "exec"), namespace)
    if last is not None:
        value = eval(compiler(last, filename, "eval"), namespace)
        sys.displayhook(value)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    try:
        print(e.code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _print_exception(e: BaseException) -> None:
    """The traceback without the sandbox's own frames."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        traceback.print_exception(type(e), e, tb, file=sys.stderr)
    except Exception:
        pass


def _flush_stdio() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            ok = False
    return ok


def _finish(rc: int) -> int:
    """Interpreter shutdown as CPython does it: join threads, atexit handlers, flush."""
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    if not _flush_stdio() and rc == 0:
        rc = 120
    return rc
