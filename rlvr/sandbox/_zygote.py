"""The sandbox's process tree: zygote -> supervisor -> init -> executor.

This file runs inside a fresh interpreter (``python -I -S -B``, scrubbed environment) that the
parent (``server.py``) starts once and talks to over a socket. Standard library only, and it
never imports ``rlvr``.

* **zygote** (root when the parent is root): probes what the kernel allows, prepares a
  read-only root directory in a private mount namespace, imports common modules, then forks
  one supervisor per request. It never runs untrusted code.
* **supervisor** (one per ``run_python`` call or ``PythonSession``; trusted): takes a uid
  slot, creates the run's cgroups, enters new pid/mount/network/ipc/uts namespaces and forks
  init; it pumps stdin/stdout/stderr with caps, enforces the wall-clock limit and answers the
  parent. Killing init ends every process of the run (the kernel tears the pid namespace down).
* **init** (pid 1 of the run's pid namespace): mounts the run's /proc and /tmp (the scratch
  directory), writes the caller's files, forks the executor and reaps until it exits.
* **executor**: sets rlimits, chroots into the read-only root, drops to the run's uid, sets
  no_new_privs, installs the seccomp filter, resets the interpreter to look fresh, then runs
  the untrusted code (a script, or notebook cells for a session).

Messages are length-prefixed JSON frames (never pickle: the executor's side is untrusted).
"""

from __future__ import annotations

import ast
import atexit
import base64
import builtins
import codeop
import fcntl
import io
import json
import linecache
import math
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback
import types

if __package__:
    from . import _linux
else:  # loaded by path inside the zygote, where the rlvr package is not importable
    import _rlvr_sandbox_linux as _linux  # type: ignore[no-redef]

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20
_EXECUTOR_FRAME_BYTES = 1 << 16          # the untrusted side's frames are small
_STATUS = struct.Struct("=id")           # init -> supervisor: wait status, CPU seconds used
_ROOT_ONLY_MODULES = ("_rlvr_sandbox_zygote", "_rlvr_sandbox_linux")
_PREIMPORT = ("ast", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal",
              "fractions", "functools", "heapq", "itertools", "json", "math", "operator",
              "random", "re", "statistics", "string", "typing")


# --- framing ------------------------------------------------------------------------------
def encode_frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return FRAME_HEADER.pack(len(body)) + body


class FrameReader:
    """Accumulates bytes and splits them into JSON frames."""

    def __init__(self, max_bytes: int = MAX_FRAME_BYTES):
        self.buf = bytearray()
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> None:
        self.buf += data

    def pop(self) -> object | None:
        if len(self.buf) < FRAME_HEADER.size:
            return None
        (n,) = FRAME_HEADER.unpack_from(self.buf)
        if n > self.max_bytes:
            raise ValueError(f"frame of {n} bytes exceeds the {self.max_bytes}-byte limit")
        if len(self.buf) < FRAME_HEADER.size + n:
            return None
        body = bytes(self.buf[FRAME_HEADER.size:FRAME_HEADER.size + n])
        del self.buf[:FRAME_HEADER.size + n]
        return json.loads(body)


def recv_frame(sock: socket.socket, reader: FrameReader, deadline: float | None) -> object | None:
    """The next frame from a stream socket; None at end of stream; TimeoutError at ``deadline``."""
    while True:
        obj = reader.pop()
        if obj is not None:
            return obj
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise TimeoutError("no answer before the deadline")
        data = sock.recv(1 << 16)
        if not data:
            return None
        reader.feed(data)


# --- zygote -------------------------------------------------------------------------------
def zygote_main(config: dict) -> None:
    """Entry point of the zygote process; returns when the parent closes the control socket."""
    ctrl = socket.socket(fileno=config["ctrl_fd"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer's Ctrl-C is the trainer's
    try:
        zygote = Zygote(config)
    except BaseException:
        ctrl.send(json.dumps({"t": "error", "error": traceback.format_exc()}).encode())
        return
    ctrl.send(json.dumps({"t": "ready", "pid": os.getpid(), "caps": zygote.caps}).encode())
    try:
        zygote.serve(ctrl)
    finally:
        zygote.shutdown()


def _probe(fn) -> bool:
    """Whether ``fn`` succeeds in a throwaway child (namespaces and filters are irreversible)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def _seccomp_probe() -> None:
    _linux.install_seccomp_filter()
    try:
        _linux.unshare(0)
    except PermissionError:
        return
    raise RuntimeError("the seccomp filter did not block unshare")


class Zygote:
    def __init__(self, config: dict):
        self.config = config
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.root_dir: str | None = None
        self.cgroups: _linux.CgroupSet | None = None
        self.lock_dir_fd: int | None = None
        self.site_dirs: list[str] = []
        disabled = set(config.get("disable", ()))
        notes: list[str] = []
        root = os.geteuid() == 0
        caps: dict = {"root": root, "uid": os.geteuid()}

        caps["privilege_drop"] = root and "privilege_drop" not in disabled
        if caps["privilege_drop"]:
            os.makedirs(config["lock_dir"], 0o700, exist_ok=True)
            self.lock_dir_fd = os.open(config["lock_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            caps["uid_range"] = [config["uid_base"], config["uid_base"] + config["uid_slots"]]
        else:
            caps["uid_range"] = [os.getuid(), os.getuid() + 1]

        for name, flag in (("pid_namespace", _linux.CLONE_NEWPID), ("network_namespace", _linux.CLONE_NEWNET),
                           ("ipc_namespace", _linux.CLONE_NEWIPC), ("uts_namespace", _linux.CLONE_NEWUTS),
                           ("mount_namespace", _linux.CLONE_NEWNS)):
            caps[name] = root and name not in disabled and _probe(lambda f=flag: _linux.unshare(f))
        if caps["mount_namespace"]:
            try:
                self.root_dir = self._build_root()
            except Exception as e:  # keep going with a weaker sandbox, and say so
                caps["mount_namespace"] = False
                notes.append(f"private root not built: {e}")
        if not caps["mount_namespace"]:
            self.site_dirs = list(config.get("site_dirs", ()))

        caps["seccomp"] = "seccomp" not in disabled and _linux.seccomp_supported() and _probe(_seccomp_probe)
        caps["pids_cgroup"] = caps["memory_cgroup"] = False
        if root and "cgroups" not in disabled:
            try:
                self.cgroups = _linux.CgroupSet.open(f"rlvr-sandbox-z{self.pid}")
                if self.cgroups is not None:
                    self.cgroups.create_run("probe", 8, 64 << 20).remove()
                    caps["pids_cgroup"] = True
                    caps["memory_cgroup"] = "memory" in self.cgroups.bases
            except OSError as e:
                notes.append(f"cgroups unavailable: {e}")
                if self.cgroups is not None:
                    self.cgroups.remove()
                self.cgroups = None
        caps["rlimit_nproc"] = caps["privilege_drop"] or not root
        caps["network_isolation"] = "namespace" if caps["network_namespace"] else "audit-hook"
        caps["notes"] = notes
        self.caps = caps

        for name in _PREIMPORT:  # shared copy-on-write by every run; runs start faster
            __import__(name)

    def _build_root(self) -> str:
        """Private mount namespace with a read-only root tree for the runs to chroot into.

        The tree holds /usr, /etc and the /bin, /lib... links or binds, the Python
        installation (at its own path, so compiled-in paths work), the caller's site-packages
        under /opt/site-packages/<i>, a few device nodes, and empty /proc and /tmp that each
        run mounts afresh. Nothing else of the host (home directories, /root, /work, /var,
        the host /tmp) is visible.
        """
        _linux.unshare(_linux.CLONE_NEWNS)
        _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
        base = self.config["runtime_dir"]
        for entry in os.listdir(base):  # mount points of zygotes that died without cleaning up
            if entry.startswith(".rlvr-sandbox-root-") and not _pid_alive(entry.rsplit("-", 1)[-1]):
                try:
                    os.rmdir(os.path.join(base, entry))
                except OSError:
                    pass
        r = os.path.join(base, f".rlvr-sandbox-root-{self.pid}")
        os.makedirs(r, 0o700, exist_ok=True)
        _linux.mount("tmpfs", r, "tmpfs", _linux.MS_NOSUID, "mode=0755,size=8m")
        old_umask = os.umask(0)
        try:
            for d in ("usr", "etc"):
                os.mkdir(f"{r}/{d}", 0o755)
                _linux.bind_readonly(f"/{d}", f"{r}/{d}")
            for d in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
                if os.path.islink(f"/{d}"):
                    os.symlink(os.readlink(f"/{d}"), f"{r}/{d}")
                elif os.path.isdir(f"/{d}"):
                    os.mkdir(f"{r}/{d}", 0o755)
                    _linux.bind_readonly(f"/{d}", f"{r}/{d}")
            bound = ["/usr/", "/etc/"]
            for prefix in sorted({sys.base_prefix, sys.prefix}):
                real = os.path.realpath(prefix)
                if not any((real + "/").startswith(b) for b in bound):
                    os.makedirs(r + real, 0o755, exist_ok=True)
                    _linux.bind_readonly(real, r + real)
                    bound.append(real + "/")
            for i, d in enumerate(self.config.get("site_dirs", ())):
                if os.path.isdir(d):
                    inside = f"/opt/site-packages/{i}"
                    os.makedirs(r + inside, 0o755)
                    _linux.bind_readonly(d, r + inside)
                    self.site_dirs.append(inside)
            os.mkdir(f"{r}/dev", 0o755)
            for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)):
                os.mknod(f"{r}/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(1, minor))
            for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("shm", "/tmp")):
                os.symlink(target, f"{r}/dev/{name}")
            for d in ("proc", "tmp"):
                os.mkdir(f"{r}/{d}", 0o755)
        finally:
            os.umask(old_umask)
        _linux.mount(None, r, None, _linux.MS_REMOUNT | _linux.MS_RDONLY | _linux.MS_NOSUID)
        return r

    def serve(self, ctrl: socket.socket) -> None:
        while True:
            readable = select.select([ctrl], [], [], 1.0)[0]
            self._reap()
            if not readable:
                continue
            try:
                msg, fds, _, _ = socket.recv_fds(ctrl, 64, 4)
            except OSError:
                return
            for fd in fds[1:]:
                os.close(fd)
            if not msg:  # the parent is gone
                for fd in fds[:1]:
                    os.close(fd)
                return
            if not fds:
                continue
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ctrl.close()
                    Supervisor(self, fds[0]).main()
                    code = 0
                finally:
                    os._exit(code)
            os.close(fds[0])
            self.children.add(pid)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if self.cgroups is not None:
                for base in set(self.cgroups.bases.values()):
                    _linux._rmdir(os.path.join(base, f"r{pid}"))

    def shutdown(self) -> None:
        for pid in self.children:  # their runs die with them (parent-death signals)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()
        if self.cgroups is not None:
            self.cgroups.remove()
        if self.root_dir is not None:
            try:
                _linux.umount(self.root_dir)
                os.rmdir(self.root_dir)
            except OSError:
                pass


def _pid_alive(text: str) -> bool:
    return text.isdigit() and os.path.exists(f"/proc/{text}")


# --- supervisor ---------------------------------------------------------------------------
class Supervisor:
    """One run or one session: sets up the processes, pumps I/O, enforces the limits."""

    def __init__(self, zygote: Zygote, chan_fd: int):
        self.z = zygote
        self.caps = zygote.caps
        self.chan = socket.socket(fileno=chan_fd)
        self.reader = FrameReader()
        self.child: int | None = None          # init (pid namespace) or the executor
        self.child_fd: int | None = None       # pidfd of self.child
        self.executor_pid: int | None = None   # the executor's pid as seen from here
        self.status: tuple[int, float] | None = None
        self.cg: _linux.RunCgroup | None = None
        self.scratch: str | None = None        # host path of the scratch dir when no mount ns
        self.ctl: socket.socket | None = None
        self.ctl_reader = FrameReader(_EXECUTOR_FRAME_BYTES)
        self.exec_frames: list[dict] = []
        self.cells = 0

    # -- lifecycle
    def main(self) -> None:
        _linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.z.pid:
            return
        _write_proc_self("oom_score_adj", "-1000")  # the OOM killer takes the sandbox, not us
        self.chan.sendall(encode_frame({"t": "hello", "pid": os.getpid()}))
        try:
            req = recv_frame(self.chan, self.reader, time.monotonic() + 30)
        except (TimeoutError, OSError, ValueError):
            return
        if not isinstance(req, dict):
            return
        try:
            self.limits = req["limits"]
            self.mode = req["mode"]
            self.start(req)
            if self.mode == "script":
                self.chan.sendall(encode_frame(self.run_script()))
            else:
                self.serve_session()
        except Exception:
            try:
                self.chan.sendall(encode_frame({"t": "result", "stdout": "", "stderr": "", "exit_code": None,
                                                "timed_out": False, "oom": False, "truncated": False,
                                                "alive": False,
                                                "error": "sandbox internal error: " + traceback.format_exc(limit=3)}))
            except OSError:
                pass
        finally:
            self.stop()

    def start(self, req: dict) -> None:
        lim = self.limits
        caps = self.caps
        self.uid = self.gid = os.getuid()
        if caps["privilege_drop"]:
            self.uid = self.gid = self._acquire_uid()
        if self.z.cgroups is not None:
            memory = (lim["memory_mb"] + lim["scratch_mb"] + 64) << 20
            self.cg = self.z.cgroups.create_run(f"r{os.getpid()}", lim["max_processes"] + 1, memory)
        self.oom_kills = 0
        if not caps["mount_namespace"]:
            self.scratch = os.path.join(self.z.config["runtime_dir"], f"rlvr-sandbox-{os.getpid()}-{time.time_ns()}")
            os.mkdir(self.scratch, 0o700)
            os.chown(self.scratch, self.uid, self.gid)
        self.scratch_inside = "/tmp" if caps["mount_namespace"] else self.scratch

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe()
        ctl_s, ctl_u = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl_s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

        flags = 0
        if caps["pid_namespace"]:
            flags |= _linux.CLONE_NEWPID
        else:
            _linux.set_child_subreaper()  # escaped descendants come back to us to be reaped
        if caps["mount_namespace"]:
            flags |= _linux.CLONE_NEWNS
        if caps["network_namespace"] and not lim["network"]:
            flags |= _linux.CLONE_NEWNET
        if caps["ipc_namespace"]:
            flags |= _linux.CLONE_NEWIPC
        if caps["uts_namespace"]:
            flags |= _linux.CLONE_NEWUTS
        if flags:
            _linux.unshare(flags)

        self.run_files = req.get("files", [])
        self.code = req.get("code", "")
        child_fds = dict(in_r=in_r, out_w=out_w, err_w=err_w, ctl_u=ctl_u.fileno(), go_r=go_r, st_w=st_w)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if caps["pid_namespace"]:
                    self._init_main(child_fds)
                else:
                    self._executor_main(child_fds, wait_go=True)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.child = pid
        self.child_fd = os.pidfd_open(pid)
        for fd in (out_w, err_w, in_r, go_r, st_w):
            os.close(fd)
        ctl_u.close()
        if self.cg is not None:
            self.cg.add(pid)
        os.write(go_w, b"g")
        os.close(go_w)
        if not caps["pid_namespace"]:
            self.executor_pid = pid
        self.out_r, self.err_r, self.in_w, self.st_r = out_r, err_r, in_w, st_r
        self.ctl = ctl_s
        for fd in (out_r, err_r, in_w):
            os.set_blocking(fd, False)
        self.stdin = req.get("stdin", "").encode()
        if not self.stdin:
            self._close_stdin()

    def stop(self) -> None:
        if self.child is not None and self.status is None:
            self._kill_run()
            self._wait_child()
        if not self.caps["pid_namespace"] and self.caps["privilege_drop"] and self.child is not None:
            self._kill_uid()
        if self.cg is not None:
            self.cg.remove()
        if self.scratch is not None:
            import shutil  # only the fallback without a mount namespace needs it
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _acquire_uid(self) -> int:
        """A uid no other live run uses: lock files held (flock) for this supervisor's life."""
        base, slots = self.z.config["uid_base"], self.z.config["uid_slots"]
        start = os.getpid() % slots
        for k in range(slots):
            n = (start + k) % slots
            fd = os.open(f"{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.z.lock_dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid_lock_fd = fd
            return base + n
        raise RuntimeError(f"all {slots} sandbox uids are in use")

    # -- the process tree below the supervisor
    def _init_main(self, fds: dict) -> None:
        """pid 1 of the run's pid namespace: set up the filesystem, fork the executor, reap."""
        _linux.set_parent_death_signal(signal.SIGKILL)
        self.chan.detach()
        _close_all_except(fds.values())
        if os.read(fds["go_r"], 1) != b"g":
            return
        self._prepare_fs()
        if self.caps["uts_namespace"]:
            socket.sethostname("sandbox")
        pid = os.fork()
        if pid == 0:
            try:
                self._executor_main(fds, wait_go=False)
            finally:
                os._exit(1)
        for name in ("in_r", "out_w", "err_w", "ctl_u", "go_r"):
            os.close(fds[name])
        while True:
            try:
                done, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                return
            if done == pid:
                os.write(fds["st_w"], _STATUS.pack(status, usage.ru_utime + usage.ru_stime))
                return  # exiting as pid 1 makes the kernel kill what is left of the run

    def _prepare_fs(self) -> None:
        """Mount the run's /proc and scratch /tmp (mount namespace) and write the caller's files."""
        lim = self.limits
        if self.caps["mount_namespace"]:
            r = self.z.root_dir
            _linux.mount("proc", f"{r}/proc", "proc", _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC,
                         "hidepid=2")
            _linux.mount("tmpfs", f"{r}/tmp", "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV,
                         f"size={lim['scratch_mb']}m,mode=0700,uid={self.uid},gid={self.gid}")
            scratch = f"{r}/tmp"
        else:
            scratch = self.scratch
        for name, kind, payload in self.run_files:
            data = base64.b64decode(payload) if kind == "base64" else payload.encode()
            path = os.path.join(scratch, _safe_relpath(name))
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                os.makedirs(parent, 0o755)
                d = parent
                while d != scratch:
                    os.chown(d, self.uid, self.gid)
                    d = os.path.dirname(d)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
                os.fchown(fd, self.uid, self.gid)
            finally:
                os.close(fd)

    def _executor_main(self, fds: dict, wait_go: bool) -> None:
        """Confine this process, then run the untrusted code in it (never returns)."""
        lim, caps = self.limits, self.caps
        self.chan.detach()
        if wait_go:  # no init above us: do its setup here
            _linux.set_parent_death_signal(signal.SIGKILL)
            if os.read(fds["go_r"], 1) != b"g":
                os._exit(1)
            self._prepare_fs()
        os.setsid()
        _write_proc_self("oom_score_adj", "1000")
        _install_fds([fds["in_r"], fds["out_w"], fds["err_w"], fds["ctl_u"]])
        cpu = max(1, math.ceil(lim["cpu_time_s"]))
        for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                           (resource.RLIMIT_AS, (lim["memory_mb"] << 20,) * 2),
                           (resource.RLIMIT_FSIZE, (lim["file_size_mb"] << 20,) * 2),
                           (resource.RLIMIT_NOFILE, (lim["max_open_files"],) * 2),
                           (resource.RLIMIT_CORE, (0, 0)),
                           (resource.RLIMIT_NPROC, (lim["max_processes"],) * 2)):
            resource.setrlimit(res, value)
        if caps["mount_namespace"]:
            os.chroot(self.z.root_dir)
        os.chdir(self.scratch_inside)
        if caps["privilege_drop"]:
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)
        _linux.set_no_new_privs()
        if caps["seccomp"]:
            _linux.install_seccomp_filter()
        ctl = socket.socket(fileno=3)
        _reset_interpreter(self.scratch_inside, self.z.site_dirs if lim["site_packages"] else [],
                           block_network=not lim["network"] and not caps["network_namespace"])
        me = os.getpid()

        def send(obj: dict) -> None:
            if os.getpid() == me:  # not from processes the code forked
                try:
                    ctl.sendall(encode_frame(obj))
                except OSError:
                    pass

        send({"t": "ready"})
        if self.mode == "script":
            rc, exc = _run_script(self.code)
            rc = _finish(rc)
            send({"t": "exit", "exc": exc})
            os._exit(rc)
        compiler = codeop.Compile()
        reader = FrameReader(MAX_FRAME_BYTES)
        while True:
            try:
                frame = recv_frame(ctl, reader, None)
            except (OSError, ValueError):
                frame = None
            if not isinstance(frame, dict):
                os._exit(_finish(0))
            exc = None
            try:
                _run_cell(frame.get("code", ""), f"<cell {frame.get('n', 0)}>", compiler)
            except SystemExit as e:
                rc = _finish(_exit_code(e))
                send({"t": "exit", "exc": None})
                os._exit(rc)
            except BaseException as e:
                exc = type(e).__name__
                _print_exception(e)
            _flush_stdio()
            if os.getpid() != me:  # a process forked by the cell: it ends with the cell
                os._exit(0)
            send({"t": "done", "exc": exc})

    # -- running
    def run_script(self) -> dict:
        deadline = time.monotonic() + self.limits["wall_time_s"]
        self._reset_output()
        outcome = self._pump(deadline, until_done=False)
        return self._finish_result(outcome)

    def serve_session(self) -> None:
        self._reset_output()
        outcome = self._pump(time.monotonic() + 30, until_done=False, until_ready=True)
        if outcome != "done":
            result = self._finish_result(outcome)
            result["error"] = "interpreter failed to start: " + (result["error"] or "no reason")
            self.chan.sendall(encode_frame(result))
            return
        self.chan.sendall(encode_frame({"t": "started"}))
        while True:
            try:
                req = recv_frame(self.chan, self.reader, None)
            except (OSError, ValueError):
                return
            if not isinstance(req, dict) or req.get("t") != "cell":
                return
            self.chan.sendall(encode_frame(self.run_cell(req.get("code", ""))))
            if self.status is not None:
                return

    def run_cell(self, code: str) -> dict:
        self._reset_output()
        if self.status is not None:
            return self._finish_result("exited")
        self.cells += 1
        self._set_cell_cpu_limit()
        try:
            self.ctl.sendall(encode_frame({"t": "cell", "n": self.cells, "code": code}))
        except OSError:
            pass
        deadline = time.monotonic() + self.limits["wall_time_s"]
        return self._finish_result(self._pump(deadline, until_done=True))

    def _set_cell_cpu_limit(self) -> None:
        """RLIMIT_CPU counts the executor's whole life: move it to (used so far + per-call limit)."""
        pid = self.executor_pid
        if pid is None:
            return
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != (self.child if self.caps["pid_namespace"] else os.getpid()):
                return  # not our executor any more
            used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return
        soft = math.ceil(used + self.limits["cpu_time_s"])
        try:
            resource.prlimit(pid, resource.RLIMIT_CPU, (soft, soft + 1))
        except OSError:
            pass

    def _reset_output(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.truncated = False
        self.exec_frames = [f for f in self.exec_frames if f.get("t") == "ready"]
        if self.cg is not None:
            self.oom_kills = self.cg.oom_kills()

    def _pump(self, deadline: float, until_done: bool, until_ready: bool = False) -> str:
        """Move bytes until the code finishes (a cell's "done", or exit), the deadline, or cancel."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            rl = [fd for fd in (self.out_r, self.err_r) if fd is not None]
            if self.ctl is not None:
                rl.append(self.ctl)
            rl += [self.child_fd, self.chan]
            wl = [self.in_w] if self.in_w is not None else []
            readable, writable, _ = select.select(rl, wl, [], remaining)
            for fd in readable:
                if fd == self.out_r or fd == self.err_r:
                    self._read_stream(fd)
            if writable:
                self._write_stdin()
            finished = False
            if self.ctl is not None and self.ctl in readable:
                for frame in self._read_ctl():
                    if frame.get("t") == "done" and until_done:
                        finished = True
                    if frame.get("t") == "ready" and until_ready:
                        finished = True
            if finished:
                self._drain(blocking=False)
                return "done"
            if self.child_fd in readable:
                return "exited"
            if self.chan in readable:
                return "cancelled"  # the parent closed the session or gave up on us

    def _read_stream(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            os.close(fd)
            if fd == self.out_r:
                self.out_r = None
            else:
                self.err_r = None
            return
        buf = self.out if fd == self.out_r else self.err
        room = self.limits["max_output_bytes"] - len(buf)
        if room > 0:
            buf += data[:room]
        if len(data) > room:
            self.truncated = True  # keep reading, and discarding, so the writer never blocks

    def _drain(self, blocking: bool, timeout: float = 2.0) -> None:
        end = time.monotonic() + timeout
        while self.out_r is not None or self.err_r is not None:
            fds = [fd for fd in (self.out_r, self.err_r) if fd is not None]
            if blocking:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
                ready = select.select(fds, [], [], remaining)[0]
            else:
                ready = select.select(fds, [], [], 0)[0]
                if not ready:
                    return
            for fd in ready:
                self._read_stream(fd)

    def _write_stdin(self) -> None:
        try:
            n = os.write(self.in_w, self.stdin[:1 << 16])
        except BlockingIOError:
            return
        except OSError:  # the reader is gone
            n = len(self.stdin)
        self.stdin = self.stdin[n:]
        if not self.stdin:
            self._close_stdin()

    def _close_stdin(self) -> None:
        os.close(self.in_w)
        self.in_w = None

    def _read_ctl(self) -> list[dict]:
        """Frames from the executor (untrusted: only their type and exception name are used)."""
        try:
            data, anc, _, _ = self.ctl.recvmsg(1 << 16, socket.CMSG_SPACE(12))
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data, anc = b"", []
        if not data:
            self.ctl.close()
            self.ctl = None
            return []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and self.executor_pid is None:
                pid, uid, _ = struct.unpack("=3i", payload[:12])
                if uid == self.uid:
                    self.executor_pid = pid  # its pid outside its pid namespace, for prlimit
        self.ctl_reader.feed(data)
        frames = []
        try:
            while (frame := self.ctl_reader.pop()) is not None:
                if isinstance(frame, dict):
                    frames.append(frame)
        except (ValueError, RecursionError):  # garbage from the untrusted side: stop listening
            self.ctl.close()
            self.ctl = None
        self.exec_frames += frames
        return frames

    # -- ending
    def _kill_run(self) -> None:
        """SIGKILL everything of the run: init (the pid namespace dies with it), or the group."""
        if self.child is None:
            return
        try:
            if self.caps["pid_namespace"]:
                signal.pidfd_send_signal(self.child_fd, signal.SIGKILL)
            else:
                os.killpg(self.child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self.caps["pid_namespace"]:
            try:
                signal.pidfd_send_signal(self.child_fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.cg is not None:
                self._kill_cgroup()

    def _kill_cgroup(self) -> None:
        path = os.path.join(self.cg.dirs["pids"], "cgroup.procs")
        end = time.monotonic() + 2
        while time.monotonic() < end:
            try:
                with open(path) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap_orphans()
            time.sleep(0.002)

    def _kill_uid(self) -> None:
        """Without a pid namespace: SIGKILL every process of the run's uid, from that uid."""
        helper = os.fork()
        if helper == 0:
            try:
                os.setresuid(self.uid, self.uid, self.uid)
                end = time.monotonic() + 2
                while time.monotonic() < end:
                    os.kill(-1, signal.SIGKILL)  # all processes we may signal, except us
                    time.sleep(0.002)
            except (ProcessLookupError, PermissionError):
                pass
            finally:
                os._exit(0)
        while True:
            self._reap_orphans()
            try:
                if os.waitpid(helper, os.WNOHANG)[0] == helper:
                    break
            except ChildProcessError:
                break
            time.sleep(0.002)
        self._reap_orphans()

    def _reap_orphans(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _wait_child(self) -> None:
        """Reap our child; the executor's wait status comes from init, or from the reap."""
        if self.child is None or self.status is not None:
            return
        _, status, usage = os.wait4(self.child, 0)
        if self.caps["pid_namespace"]:
            data = os.read(self.st_r, _STATUS.size) if select.select([self.st_r], [], [], 0)[0] else b""
            self.status = _STATUS.unpack(data) if len(data) == _STATUS.size else (None, 0.0)
        else:
            self.status = (status, usage.ru_utime + usage.ru_stime)

    def _finish_result(self, outcome: str) -> dict:
        timed_out = outcome == "timeout"
        if outcome in ("timeout", "cancelled"):
            self._kill_run()
        if outcome != "done" and self.child is not None:
            if outcome == "exited" and not self.caps["pid_namespace"]:
                self._kill_run()  # what the executor left behind
            self._wait_child()
            self._drain(blocking=True)
            if self.ctl is not None:
                while select.select([self.ctl], [], [], 0)[0] and self.ctl is not None:
                    self._read_ctl()
        exc = next((f.get("exc") for f in reversed(self.exec_frames) if f.get("t") in ("done", "exit")), None)
        exc = exc if isinstance(exc, str) else None
        alive = outcome == "done"
        exit_code: int | None = None
        error: str | None = None
        lim = self.limits
        oom = exc == "MemoryError" or "MemoryError" in self.err[-2048:].decode("utf-8", "replace")
        if self.cg is not None and self.cg.oom_kills() > self.oom_kills:
            oom = True
        if outcome == "done":
            exit_code = 0 if exc is None else 1
            if exc is not None:
                error = f"uncaught {exc}"
        elif timed_out:
            error = f"timeout after {lim['wall_time_s']:g} s"
        elif outcome == "cancelled":
            error = "cancelled by the caller"
        elif self.status is not None and self.status[0] is not None:
            exit_code = os.waitstatus_to_exitcode(self.status[0])
            cpu_used = self.status[1]
            if exit_code < 0:
                sig = -exit_code
                name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
                if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= lim["cpu_time_s"]):
                    error = f"cpu time limit ({lim['cpu_time_s']:g} s) exceeded"
                elif oom:
                    error = "memory limit (killed by the kernel's out-of-memory killer)"
                else:
                    error = f"killed by signal {sig} ({name})"
            elif exit_code != 0:
                error = f"exit code {exit_code}" + (f" (uncaught {exc})" if exc else "")
        else:
            error = "sandbox process ended without a status"
        if oom and exit_code != 0 and (error is None or not error.startswith("memory limit")):
            error = "memory limit" + (f" ({error})" if error else "")
        return {"t": "result", "stdout": self.out.decode("utf-8", "replace"),
                "stderr": self.err.decode("utf-8", "replace"), "exit_code": exit_code,
                "timed_out": timed_out, "oom": oom, "truncated": self.truncated,
                "error": error, "alive": alive}


# --- executor helpers (run in the confined process) -----------------------------------------
def _write_proc_self(name: str, text: str) -> None:
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
    """Make ``sources`` fds 0, 1, 2, 3 (3 close-on-exec) and close every other descriptor."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in sources]
    for target, fd in enumerate(high):
        os.dup2(fd, target, inheritable=target < 3)
    os.closerange(len(sources), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _safe_relpath(name: str) -> str:
    norm = os.path.normpath(name)
    if not name or os.path.isabs(name) or norm.startswith("..") or norm == "." or "\0" in name:
        raise ValueError(f"file name {name!r} must be a relative path inside the scratch directory")
    return norm


class _NetworkBlocked(PermissionError):
    pass


def _block_network_hook(event: str, args: tuple) -> None:
    """Best effort only (ctypes or a subprocess bypass it): used when no network namespace."""
    if event == "socket.__new__" and args and args[1] in (socket.AF_INET, socket.AF_INET6):
        raise _NetworkBlocked("network access is disabled in this sandbox")
    if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
                 "socket.gethostbyname", "socket.gethostbyaddr"):
        target = args[1] if len(args) > 1 and event in ("socket.connect", "socket.bind") else None
        if not (isinstance(target, (str, bytes))):  # AF_UNIX addresses are paths
            raise _NetworkBlocked("network access is disabled in this sandbox")


def _reset_interpreter(scratch: str, site_dirs: list[str], block_network: bool) -> None:
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
    if site_dirs:
        import site
        for d in site_dirs:
            site.addsitedir(d)
    for name in _ROOT_ONLY_MODULES:
        sys.modules.pop(name, None)
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
    if block_network:
        sys.addaudithook(_block_network_hook)


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
