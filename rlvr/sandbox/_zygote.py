"""The sandbox's trusted processes: the zygote and one supervisor per run or session.

This file runs inside a fresh interpreter (``python -I -S -B``, scrubbed environment) that the
parent (``server.py``) starts once and talks to over a socket. Standard library only, and it
never imports ``rlvr`` (the zygote loads the sandbox's files by path).

* **zygote** (root when the parent is root): probes what the kernel allows, builds a
  read-only root tree in a private mount namespace, imports common modules, then forks
  supervisors: ``spares`` of them ahead of time, which prepare everything that does not
  depend on a request at low priority, and a fresh one for a request when none is ready.
  It never runs untrusted code.
* **supervisor** (one per ``run_python`` call or ``PythonSession``): takes a uid slot and
  the run's cgroups, enters new pid/mount/network/ipc/uts namespaces and forks init (see
  `_executor.py` for init and the executor below it). Given a request, it sets the cgroup
  limits, sends the executor its "go" (limits, files, code), pumps stdin/stdout/stderr with
  caps, enforces the wall-clock (and a session's per-call CPU) limit and answers the
  parent. Killing init ends every process of the run: the kernel tears the pid namespace
  down.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

if __package__:
    from . import _linux
    from ._executor import STATUS, Executor, Init, write_proc_self
    from ._protocol import MESSAGE_BYTES, FrameReader, Outbox, encode_frame, recv_frame
else:  # loaded by path inside the zygote, where the rlvr package is not importable
    import _rlvr_sandbox_linux as _linux  # type: ignore[no-redef]
    from _rlvr_sandbox_executor import STATUS, Executor, Init, write_proc_self  # type: ignore
    from _rlvr_sandbox_protocol import MESSAGE_BYTES, FrameReader, Outbox, encode_frame, recv_frame  # type: ignore

_CTL_MAX_IGNORED = 64   # messages per call on the control channel that are not the one expected
_CTL_BATCH = 16         # messages read per wake-up (the rest waits for the next select)
_PARENT_SEND_S = 10.0   # a send to the parent that takes longer: the parent is gone or stuck
_SPARE_NICE = 10
_CPU_POLL_S = 0.05
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_F_SETPIPE_SZ = 1031
_DISCARD_PAUSE_S = 0.01  # past the output cap, read at most every 10 ms: the writer waits, idle
_PREIMPORT = ("_sitebuiltins", "ast", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal",
              "fractions", "functools", "heapq", "itertools", "json", "math", "operator",
              "random", "re", "statistics", "string", "typing")


# --- zygote -------------------------------------------------------------------------------
def zygote_main(config: dict) -> None:
    """Entry point of the zygote process; returns when the parent closes the control socket."""
    ctrl = socket.socket(fileno=config["ctrl_fd"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer's Ctrl-C is the trainer's
    try:
        zygote = Zygote(config, ctrl)
    except BaseException:
        ctrl.send(json.dumps({"t": "error", "error": traceback.format_exc()}).encode())
        return
    ctrl.send(json.dumps({"t": "ready", "pid": os.getpid(), "caps": zygote.caps}).encode())
    try:
        zygote.serve()
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


def _probe_value(fn):
    """What ``fn`` returns (JSON) when run in a throwaway child; None if it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else None


# Each probe applies a protection, then reads back from the kernel whether it holds: writes to
# /proc and some prctl calls fail silently, so what was asked for is not what is reported.
def _seccomp_probe() -> None:
    import errno
    _linux.install_seccomp_filter()
    if _linux.proc_status().get("Seccomp") != ["2"]:
        raise RuntimeError("Seccomp is not 2 in /proc/self/status")
    try:
        _linux.unshare(0)
        raise RuntimeError("the seccomp filter did not block unshare")
    except PermissionError:
        pass
    try:
        socket.socket(40, socket.SOCK_STREAM).close()  # AF_VSOCK
        raise RuntimeError("the seccomp filter did not refuse AF_VSOCK")
    except OSError as e:
        if e.errno != errno.EAFNOSUPPORT:
            raise


def _namespace_probe(flag: int, name: str) -> None:
    """``name``: the /proc/self/ns entry that must change. A new pid namespace is the
    children's only: a child must be pid 1 of it."""
    before = os.stat(f"/proc/self/ns/{name}").st_ino
    _linux.unshare(flag)
    if flag == _linux.CLONE_NEWPID:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if os.getpid() == 1 and os.stat("/proc/self/ns/pid").st_ino != before else 1)
        if os.waitpid(pid, 0)[1] != 0:
            raise RuntimeError("unshare did not give a new pid namespace")
    elif os.stat(f"/proc/self/ns/{name}").st_ino == before:
        raise RuntimeError(f"unshare did not give a new {name} namespace")


def _privilege_drop_probe(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    status = _linux.proc_status()
    if set(status["Uid"]) != {str(uid)} or set(status["Gid"]) != {str(uid)} or status.get("Groups") \
            or int(status["CapEff"][0], 16):
        raise RuntimeError(f"privileges not dropped: {status}")


def _no_new_privs_probe() -> None:
    _linux.set_no_new_privs()
    if _linux.proc_status().get("NoNewPrivs") != ["1"]:
        raise RuntimeError("NoNewPrivs is not 1 in /proc/self/status")


def _oom_score_adj_probe(value: int) -> int:
    """oom_score_adj after writing ``value``: lowering it needs CAP_SYS_RESOURCE, and
    `write_proc_self` ignores the refusal."""
    write_proc_self("oom_score_adj", str(value))
    with open("/proc/self/oom_score_adj") as f:
        return int(f.read())


class Zygote:
    """Probes the machine once, then serves requests with pre-confined spare supervisors."""

    def __init__(self, config: dict, ctrl: socket.socket):
        self.config = config
        self.ctrl = ctrl
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.spares: dict[int, socket.socket] = {}   # pid -> socket to hand it a run
        self.ready_spares: list[int] = []             # those done preparing, oldest first
        self.spare_target = int(config.get("spares", 2))
        self.spare_failures = 0
        self.root_dir: str | None = None
        self.cgroups: _linux.CgroupSet | None = None
        self.lock_dir_fd: int | None = None
        self.host_netns_fd: int | None = None
        self.site_dirs: list[str] = []
        self.pending_cgroups: list[str] = []
        disabled = set(config.get("disable", ()))
        notes: list[str] = []
        root = os.geteuid() == 0
        caps: dict = {"root": root, "uid": os.geteuid()}

        caps["privilege_drop"] = (root and "privilege_drop" not in disabled
                                  and _probe(lambda: _privilege_drop_probe(config["uid_base"])))
        if caps["privilege_drop"]:
            os.makedirs(config["lock_dir"], 0o700, exist_ok=True)
            self.lock_dir_fd = os.open(config["lock_dir"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            caps["uid_range"] = [config["uid_base"], config["uid_base"] + config["uid_slots"]]
        else:
            caps["uid_range"] = [os.getuid(), os.getuid() + 1]

        for name, flag, ns in (("pid_namespace", _linux.CLONE_NEWPID, "pid"),
                               ("network_namespace", _linux.CLONE_NEWNET, "net"),
                               ("ipc_namespace", _linux.CLONE_NEWIPC, "ipc"),
                               ("uts_namespace", _linux.CLONE_NEWUTS, "uts"),
                               ("mount_namespace", _linux.CLONE_NEWNS, "mnt")):
            caps[name] = root and name not in disabled and _probe(lambda f=flag, n=ns: _namespace_probe(f, n))
        if caps["network_namespace"]:  # spares are built offline; network=True runs rejoin this one
            self.host_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if caps["mount_namespace"]:
            try:
                self.root_dir = self._build_root()
            except Exception as e:  # keep going with a weaker sandbox, and say so
                caps["mount_namespace"] = False
                notes.append(f"private root not built: {e}")
        if not caps["mount_namespace"]:
            self.site_dirs = list(config.get("site_dirs", ()))
            if caps["privilege_drop"] and not _others_can_read(sys.prefix):
                notes.append(f"without a mount namespace the sandbox's uid cannot read the Python installation "
                             f"({sys.prefix}): only the modules the zygote preimported can be imported")

        # spares are prepared at low priority, which needs CAP_SYS_NICE to undo
        self.can_renice = _probe(lambda: (os.setpriority(os.PRIO_PROCESS, 0, _SPARE_NICE),
                                          os.setpriority(os.PRIO_PROCESS, 0, 0)))
        caps["seccomp"] = "seccomp" not in disabled and _linux.seccomp_supported() and _probe(_seccomp_probe)
        if "seccomp" not in disabled and not _linux.seccomp_supported():
            notes.append(f"no seccomp filter for {os.uname().machine}: socket families and system calls "
                         "are not restricted")
        caps["no_new_privs"] = _probe(_no_new_privs_probe)
        caps["oom_score_adj"] = _probe_value(lambda: _oom_score_adj_probe(1000))
        caps["supervisor_oom_score_adj"] = _probe_value(lambda: _oom_score_adj_probe(-1000))
        if caps["supervisor_oom_score_adj"] != -1000:
            notes.append(f"supervisors keep oom_score_adj {caps['supervisor_oom_score_adj']} (lowering it "
                         "needs CAP_SYS_RESOURCE): the OOM killer may pick them")
        caps["pids_cgroup"] = caps["memory_cgroup"] = caps["cpu_cgroup"] = False
        if root and "cgroups" not in disabled:
            try:
                self.cgroups = _linux.CgroupSet.open(f"rlvr-sandbox-z{self.pid}")
                if self.cgroups is not None:
                    probe = self.cgroups.create_run("probe")
                    try:
                        probe.set_limits(8, 64 << 20, 1.0)
                    finally:
                        probe.remove()
                    caps["pids_cgroup"] = True
                    caps["memory_cgroup"] = "memory" in self.cgroups.bases
                    caps["cpu_cgroup"] = "cpu" in self.cgroups.bases
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
        gc.freeze()  # keep the collector from dirtying these shared pages in every child

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

    def serve(self) -> None:
        while True:
            self._reap()
            idle = 0.5 if len(self.spares) >= self.spare_target else 0.0
            preparing = {sock: pid for pid, sock in self.spares.items() if pid not in self.ready_spares}
            readable = select.select([self.ctrl, *preparing], [], [], idle)[0]
            for sock in readable:
                if sock is not self.ctrl and _recv_or_empty(sock) == b"ready":
                    self.ready_spares.append(preparing[sock])
            if self.ctrl not in readable:
                if not readable and len(self.spares) < self.spare_target:  # requests come first
                    self._fork_supervisor(None)
                continue
            try:
                msg, fds, _, _ = socket.recv_fds(self.ctrl, 64, 4)
            except OSError:
                return
            for fd in fds[1:]:
                os.close(fd)
            if not msg:  # the parent is gone
                for fd in fds[:1]:
                    os.close(fd)
                return
            if fds:
                self._dispatch(fds[0])
                os.close(fds[0])

    def _dispatch(self, chan_fd: int) -> None:
        """Hand the run's socket to a spare that is done preparing, or fork a supervisor for it
        (a spare still preparing at low priority would be slower than a fresh one)."""
        while self.ready_spares:
            pid = self.ready_spares.pop(0)
            sock = self.spares.pop(pid)
            try:
                socket.send_fds(sock, [b"c"], [chan_fd])
                return
            except OSError:
                pass  # that spare died; it is reaped later
            finally:
                sock.close()
        self._fork_supervisor(chan_fd)

    def _fork_supervisor(self, chan_fd: int | None) -> None:
        ours = theirs = None
        if chan_fd is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.ctrl.close()
                for sock in self.spares.values():
                    sock.close()
                if ours is not None:
                    ours.close()
                Supervisor(self, theirs, chan_fd).main()
                code = 0
            finally:
                os._exit(code)
        self.children.add(pid)
        if ours is not None:
            theirs.close()
            self.spares[pid] = ours

    def _reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if pid in self.spares:  # died before serving: do not respawn it forever
                self.spares.pop(pid).close()
                if pid in self.ready_spares:
                    self.ready_spares.remove(pid)
                self.spare_failures += 1
                if self.spare_failures >= 3:
                    self.spare_target = 0
            self._cleanup_after(pid)
        self._cleanup_after(None)

    def scratch_path(self, supervisor_pid: int) -> str:
        """Host scratch directory of a run when there is no mount namespace."""
        return os.path.join(self.config["runtime_dir"], f"rlvr-sandbox-{self.pid}-{supervisor_pid}")

    def _cleanup_after(self, pid: int | None) -> None:
        """What a supervisor may have left when killed: its cgroups (removable once its runs'
        last processes are gone, so retried) and its host scratch directory."""
        if pid is not None:
            if self.cgroups is not None:
                self.pending_cgroups += [os.path.join(b, f"r{pid}") for b in set(self.cgroups.bases.values())]
            if not self.caps["mount_namespace"] and os.path.isdir(self.scratch_path(pid)):
                import shutil
                shutil.rmtree(self.scratch_path(pid), ignore_errors=True)
        still = []
        for d in self.pending_cgroups:
            _linux._rmdir(d)
            if os.path.isdir(d):
                still.append(d)
        self.pending_cgroups = still

    def shutdown(self) -> None:
        """Supervisors get SIGTERM to clean up their runs, then SIGKILL; runs in a pid
        namespace die with their supervisor in any case (parent-death signals)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.children:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 3
            while self.children and time.monotonic() < end:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    self.children.clear()
                    break
                if pid:
                    self.children.discard(pid)
                    self._cleanup_after(pid)
                else:
                    time.sleep(0.01)
        self.children.clear()
        end = time.monotonic() + 2
        while self.pending_cgroups and time.monotonic() < end:  # runs' last processes exiting
            time.sleep(0.01)
            self._cleanup_after(None)
        if self.cgroups is not None:
            self.cgroups.remove()
        if self.root_dir is not None:
            try:
                _linux.umount(self.root_dir)
                os.rmdir(self.root_dir)
            except OSError:
                pass


def _processes_of_uid(uid: int, exclude: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("State:", "Uid:")))
        except (OSError, ValueError):
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            found.append(int(entry))
    return found


def _others_can_read(path: str) -> bool:
    """Whether a uid with no special rights can reach ``path`` (every directory on the way)."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def _descendants(root: int) -> list[int]:
    """Live processes below ``root`` in the process tree, from /proc (zombies left out)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _recv_or_empty(sock: socket.socket) -> bytes:
    try:
        return sock.recv(16)
    except OSError:
        return b""


def _pid_alive(text: str) -> bool:
    return text.isdigit() and os.path.exists(f"/proc/{text}")


# --- supervisor ---------------------------------------------------------------------------
class Supervisor:
    """One run or one session: builds the confined processes, pumps I/O, enforces the limits.

    Everything that does not depend on the request (uid, cgroups, namespaces, init, the
    executor up to its chroot) is done first, so that a spare can do it before any request
    exists; the request then only configures limits and files and starts the code.
    """

    def __init__(self, zygote: Zygote, handoff: socket.socket | None, chan_fd: int | None):
        self.z = zygote
        self.caps = zygote.caps
        self.handoff = handoff
        self.chan_fd = chan_fd
        self.chan: socket.socket | None = None
        self.reader = FrameReader()
        self.child: int | None = None          # init (pid namespace) or the executor
        self.child_fd: int | None = None       # pidfd of self.child
        self.executor_pid: int | None = None   # the executor's pid as seen from here
        self.status: tuple[int | None, float] | None = None
        self.cg: _linux.RunCgroup | None = None
        self.scratch: str | None = None        # host path of the scratch dir when no mount ns
        self.ctl: socket.socket | None = None  # the control channel (the code can write to it too)
        self.ctl_out = Outbox()
        self.ready = False                     # the executor said "ready": untrusted code may run
        self.setup_error: str | None = None
        self.nonce: str | None = None          # of the cell in progress; its "done" must carry it
        self.done_exc: str | None = None
        self.ignored = 0                       # messages of this call that were not the expected one
        self.cells = 0
        self.oom_kills = 0
        self.out_r = self.err_r = self.in_w = None
        self.leftovers_killed = False

    # -- lifecycle
    def main(self) -> None:
        _linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.z.pid:
            return
        signal.signal(signal.SIGTERM, _exit_on_signal)  # the zygote's shutdown: clean up first
        write_proc_self("oom_score_adj", "-1000")  # the OOM killer takes the sandbox, not us
        spare = self.chan_fd is None and self.z.can_renice
        try:
            if spare:  # preparing ahead must not slow down the runs in progress
                os.setpriority(os.PRIO_PROCESS, 0, _SPARE_NICE)
            self.prepare()
            if self.chan_fd is None:
                self.handoff.send(b"ready")
                self.chan_fd = self._await_handoff()
                if self.chan_fd is None:
                    return
            if spare:  # back to normal priority: init here, the executor after its "go"
                os.setpriority(os.PRIO_PROCESS, 0, 0)
                os.setpriority(os.PRIO_PROCESS, self.child, 0)
            self.chan = socket.socket(fileno=self.chan_fd)
            self._send_parent({"t": "hello", "pid": os.getpid()})
            req = recv_frame(self.chan, self.reader, time.monotonic() + 30)
            if not isinstance(req, dict):
                return
            self.limits, self.mode = req["limits"], req["mode"]
            self.configure(req)
            if self.mode == "script":
                self._send_parent(self.run_script())
            else:
                self.serve_session()
        except Exception:
            if self.chan is not None:
                try:
                    self._send_parent({
                        "t": "result", "stdout": "", "stderr": "", "exit_code": None, "timed_out": False,
                        "oom": False, "truncated": False, "alive": False,
                        "error": "sandbox internal error: " + traceback.format_exc(limit=3)})
                except OSError:
                    pass
        finally:
            self.stop()

    def prepare(self) -> None:
        """uid, cgroups, namespaces, and the confined process tree waiting for its "go"."""
        caps = self.caps
        self.uid = self.gid = os.getuid()
        if caps["privilege_drop"]:
            self.uid = self.gid = self._acquire_uid()
        if self.z.cgroups is not None:
            self.cg = self.z.cgroups.create_run(f"r{os.getpid()}")
        if not caps["mount_namespace"]:
            self.scratch = self.z.scratch_path(os.getpid())
            os.mkdir(self.scratch, 0o700)
            os.chown(self.scratch, self.uid, self.gid)
        self.scratch_inside = "/tmp" if caps["mount_namespace"] else self.scratch

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe()
        ctl_s, ctl_u = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctl_s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # each message says who sent it
        ctl_s.setblocking(False)

        flags = 0
        if caps["pid_namespace"]:
            flags |= _linux.CLONE_NEWPID
        else:
            _linux.set_child_subreaper()  # escaped descendants come back to us to be reaped
        for cap, flag in (("mount_namespace", _linux.CLONE_NEWNS), ("network_namespace", _linux.CLONE_NEWNET),
                          ("ipc_namespace", _linux.CLONE_NEWIPC), ("uts_namespace", _linux.CLONE_NEWUTS)):
            if caps[cap]:
                flags |= flag
        if flags:
            _linux.unshare(flags)

        child_fds = {"in_r": in_r, "out_w": out_w, "err_w": err_w, "ctl_u": ctl_u.fileno(), "go_r": go_r,
                     "st_w": st_w}
        if self.z.host_netns_fd is not None:
            child_fds["netns"] = self.z.host_netns_fd
        pid = os.fork()
        if pid == 0:
            try:
                if caps["pid_namespace"]:
                    Init(self, child_fds).main()
                else:
                    Executor(self, child_fds, wait_go=True).main()
            except BaseException:
                pass
            finally:
                os._exit(1)
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
        for fd in (out_r, err_r):  # bigger pipes: fewer wake-ups per megabyte
            try:
                fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass

    def _await_handoff(self) -> int | None:
        """A spare waits here for the zygote to give it a run's socket."""
        while True:
            ready = select.select([self.handoff, self.child_fd], [], [])[0]
            if self.child_fd in ready:
                return None  # the confined side died while waiting: this spare is broken
            try:
                msg, fds, _, _ = socket.recv_fds(self.handoff, 16, 1)
            except OSError:
                return None
            if not msg:
                return None
            if fds:
                self.handoff.close()
                self.handoff = None
                return fds[0]

    def configure(self, req: dict) -> None:
        """Apply the request: cgroup limits, stdin, and the executor's "go" with code and files."""
        lim = self.limits
        if self.cg is not None:
            self.cg.set_limits(lim["max_processes"] + 1, (lim["memory_mb"] + lim["scratch_mb"] + 64) << 20,
                               lim["cpu_cores"])
            self.oom_kills = self.cg.oom_kills()
        self.stdin = req.get("stdin", "").encode()
        if not self.stdin:
            self._close_stdin()
        go = {"t": "go", "mode": self.mode, "limits": lim, "code": req.get("code", ""), "files": req.get("files", [])}
        self.ctl_out.put(encode_frame(go))  # sent by `_pump`, within the call's deadline

    def stop(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up, even on shutdown
        if self.child is not None and self.status is None:
            self._kill_run()
            self._wait_child()
        self._kill_leftovers()
        if self.cg is not None:
            self.cg.remove()
        if self.scratch is not None:
            import shutil  # only the fallback without a mount namespace needs it
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _acquire_uid(self) -> int:
        """A uid no other live run uses: lock files held (flock) for this supervisor's life."""
        base, slots = self.z.config["uid_base"], self.z.config["uid_slots"]
        for n in range(slots):  # lowest free slot: the lock files stay as few as the peak concurrency
            fd = os.open(f"{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=self.z.lock_dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid_lock_fd = fd
            return base + n
        raise RuntimeError(f"all {slots} sandbox uids are in use")

    # -- running
    def run_script(self) -> dict:
        deadline = time.monotonic() + self.limits["wall_time_s"]
        self._reset_output()
        return self._finish_result(self._pump(deadline, until=None))

    def serve_session(self) -> None:
        self._reset_output()
        outcome = self._pump(time.monotonic() + 30, until="ready")
        if outcome != "done":
            result = self._finish_result(outcome)
            result["error"] = "interpreter failed to start: " + (result["error"] or "no reason")
            self._send_parent(result)
            return
        self._send_parent({"t": "started"})
        while True:
            try:
                req = recv_frame(self.chan, self.reader, None)
            except (OSError, ValueError):
                return
            if not isinstance(req, dict) or req.get("t") != "cell":
                return
            self._send_parent(self.run_cell(req.get("code", "")))
            if self.status is not None:
                return

    def run_cell(self, code: str) -> dict:
        self._reset_output()
        if self.status is not None:
            return self._finish_result("exited")
        self.cells += 1
        self.nonce = os.urandom(16).hex()
        self.cell_cpu_start = self._executor_cpu()
        self.ctl_out = Outbox()
        if self.ctl is not None:
            self.ctl_out.put(encode_frame({"t": "cell", "n": self.cells, "nonce": self.nonce, "code": code}))
        deadline = time.monotonic() + self.limits["wall_time_s"]
        return self._finish_result(self._pump(deadline, until="done", watch_cpu=True))

    def _executor_cpu(self) -> float | None:
        """CPU seconds the executor (all its threads) has used, from /proc; None if unknown."""
        pid = self.executor_pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != (self.child if self.caps["pid_namespace"] else os.getpid()):
                return None  # not our executor any more
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            return None

    def _send_parent(self, obj: dict) -> None:
        """A frame to the parent, within `_PARENT_SEND_S` (TimeoutError past it)."""
        self.chan.settimeout(_PARENT_SEND_S)
        try:
            self.chan.sendall(encode_frame(obj))
        finally:
            self.chan.settimeout(None)

    def _reset_output(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.truncated = False
        self.discard_until = 0.0
        self.done_exc = None
        self.ignored = 0
        if self.cg is not None:
            self.oom_kills = self.cg.oom_kills()

    def _pump(self, deadline: float, until: str | None, watch_cpu: bool = False) -> str:
        """Move bytes until the executor sends message ``until`` ("ready" or "done"), its
        process ends ("exited"), the deadline passes ("timeout"), the caller hangs up
        ("cancelled"), the control channel carries more than `_CTL_MAX_IGNORED` unexpected
        messages ("flooded") or, with ``watch_cpu``, the call's CPU time passes the limit
        ("cpu"). Nothing here blocks: what goes to the executor waits in `ctl_out`.

        A session's interpreter outlives its calls, so RLIMIT_CPU (which counts a process's
        whole life, and whose hard limit cannot be raised without CAP_SYS_RESOURCE) cannot
        serve as a per-call limit: its CPU time is polled here instead.
        """
        next_cpu_check = 0.0
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return "timeout"
            streams = [fd for fd in (self.out_r, self.err_r) if fd is not None]
            if self.truncated and now < self.discard_until:
                streams = []  # output past the cap: let the writer block instead of burning our CPU
                remaining = min(remaining, self.discard_until - now)
            if watch_cpu and self.cell_cpu_start is not None:
                if now >= next_cpu_check:
                    used = self._executor_cpu()
                    if used is not None and used - self.cell_cpu_start > self.limits["cpu_time_s"]:
                        return "cpu"
                    next_cpu_check = now + _CPU_POLL_S
                remaining = min(remaining, max(0.0, next_cpu_check - now))
            rl = streams + ([self.ctl] if self.ctl is not None else []) + [self.child_fd, self.chan]
            wl = ([self.in_w] if self.in_w is not None else []) + \
                ([self.ctl] if self.ctl is not None and self.ctl_out.pending else [])
            readable, writable, _ = select.select(rl, wl, [], remaining)
            if not readable and not writable:
                continue
            for fd in readable:
                if fd == self.out_r or fd == self.err_r:
                    self._read_stream(fd)
            if self.in_w is not None and self.in_w in writable:
                self._write_stdin()
            if self.ctl is not None and self.ctl in writable:
                self.ctl_out.send_some(self.ctl)
            if self.ctl is not None and self.ctl in readable:
                event = self._read_ctl()
                if event == "flooded":
                    return "flooded"
                if event is not None and event == until:
                    self._drain(blocking=False)
                    return "done"
            if self.child_fd in readable:
                return "exited"
            if self.chan in readable:
                return "cancelled"  # the parent closed the session or gave up on us

    def _read_stream(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 20)
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
        if len(data) > room:  # keep reading and discarding, slowly, so the writer is not stuck
            self.truncated = True
            self.discard_until = time.monotonic() + _DISCARD_PAUSE_S

    def _drain(self, blocking: bool, timeout: float = 2.0) -> None:
        end = time.monotonic() + timeout
        while self.out_r is not None or self.err_r is not None:
            fds = [fd for fd in (self.out_r, self.err_r) if fd is not None]
            wait = max(0.0, end - time.monotonic()) if blocking else 0.0
            ready = select.select(fds, [], [], wait)[0]
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

    def _read_ctl(self) -> str | None:
        """Read up to `_CTL_BATCH` messages of the control channel; the event one of them
        makes ("ready", "setup_error", "done"), "flooded", or None.

        Before "ready", only the sandbox's own code has run in the executor: "ready" and
        "setup_error" are believed. After it, the code can write here too, so the only
        message taken is the current cell's "done", with the cell's nonce, from the
        executor's own pid (SCM_CREDENTIALS, from the kernel), once. The rest is counted and
        dropped; a message longer than `MESSAGE_BYTES` is cut by the kernel and dropped.
        """
        for _ in range(_CTL_BATCH):
            try:
                data, anc, flags, _ = self.ctl.recvmsg(MESSAGE_BYTES, socket.CMSG_SPACE(12), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                data, anc, flags = b"", [], 0
            if not data and not anc:  # end of file (every message, even an empty one, has credentials)
                self.ctl.close()
                self.ctl = None
                return None
            sender = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid, uid, _ = struct.unpack("=3i", payload[:12])
                    sender = (pid, uid)
            event = None if flags & socket.MSG_TRUNC else self._accept(_json_or_none(data), sender)
            if event is not None:
                return event
            self.ignored += 1
            if self.ignored > _CTL_MAX_IGNORED:
                return "flooded"
        return None

    def _accept(self, msg: object, sender: tuple[int, int] | None) -> str | None:
        """The event ``msg`` makes, if the protocol expects it now from ``sender``; else None."""
        if not isinstance(msg, dict) or sender is None:
            return None
        kind = msg.get("t")
        if not self.ready:
            if kind == "ready":
                self.ready = True
                if self.executor_pid is None and sender[1] == self.uid:
                    self.executor_pid = sender[0]  # its pid outside its pid namespace
                return "ready"
            if kind == "setup_error" and isinstance(msg.get("error"), str):
                self.setup_error = msg["error"][:500]
                return "setup_error"
            return None
        if kind == "done" and self.nonce is not None and msg.get("nonce") == self.nonce \
                and sender[0] == self.executor_pid:
            self.nonce = None  # once
            exc = msg.get("exc")
            self.done_exc = exc[:100] if isinstance(exc, str) else None
            return "done"
        return None

    # -- ending
    def _kill_leftovers(self) -> None:
        """Without a pid namespace, processes may outlive the executor (setsid, double fork):
        kill our descendants (orphans come back to us, the subreaper), the run's cgroup and
        uid, and remove what the uid left in shared temp dirs."""
        if self.caps["pid_namespace"] or self.child is None or self.leftovers_killed:
            return
        self.leftovers_killed = True
        self._kill_descendants()
        if self.cg is not None:
            self._kill_cgroup()
        if self.caps["privilege_drop"]:
            self._kill_uid()
            if not self.caps["mount_namespace"]:
                self._clean_world_writable()

    def _kill_run(self) -> None:
        """SIGKILL everything of the run: init (the pid namespace dies with it), or the group."""
        if self.child is None:
            return
        if self.caps["pid_namespace"]:
            signal.pidfd_send_signal(self.child_fd, signal.SIGKILL)
            return
        try:
            os.killpg(self.child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        signal.pidfd_send_signal(self.child_fd, signal.SIGKILL)
        if self.cg is not None:
            self._kill_cgroup()

    def _kill_descendants(self) -> None:
        self._kill_until_gone(lambda: _descendants(os.getpid()))

    def _kill_cgroup(self) -> None:
        self._kill_until_gone(self.cg.pids)

    def _kill_until_gone(self, victims: Callable[[], Iterable[int]]) -> None:
        """SIGKILL whatever ``victims()`` lists until it lists nothing (at most 2 s): a
        forking process may add new ones between two passes."""
        end = time.monotonic() + 2
        while time.monotonic() < end:
            pids = list(victims())
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
                    if not _processes_of_uid(self.uid, exclude=os.getpid()):
                        break
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
        """Reap whatever has ended (orphans come to us as subreaper), our own child included."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child and self.status is None:
                self._child_ended(status, usage)

    def _wait_child(self) -> None:
        if self.child is not None and self.status is None:
            _, status, usage = os.wait4(self.child, 0)
            self._child_ended(status, usage)

    def _child_ended(self, status: int, usage) -> None:
        """The executor's wait status: reported by init, or our own child's."""
        if self.caps["pid_namespace"]:
            data = os.read(self.st_r, STATUS.size) if select.select([self.st_r], [], [], 0)[0] else b""
            self.status = STATUS.unpack(data) if len(data) == STATUS.size else (None, 0.0)
        else:
            self.status = (status, usage.ru_utime + usage.ru_stime)

    def _clean_world_writable(self) -> None:
        """Without a mount namespace: remove what the run's uid left in the shared temp dirs."""
        import shutil
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.stat(follow_symlinks=False).st_uid != self.uid:
                        continue
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        os.unlink(e.path)
                except OSError:
                    pass

    def _finish_result(self, outcome: str) -> dict:
        timed_out = outcome == "timeout"
        if outcome in ("timeout", "cancelled", "cpu", "flooded"):
            self._kill_run()
        if outcome != "done" and self.child is not None:
            if outcome == "exited" and not self.caps["pid_namespace"]:
                self._kill_run()  # what the executor left behind
            self._wait_child()
            self._kill_leftovers()
            self._drain(blocking=True)
            if self.ctl is not None and not self.ready:  # a setup error sent just before exiting
                self._read_ctl()
        setup = self.setup_error
        exc = self.done_exc if outcome == "done" else None
        if outcome == "exited" and self.mode == "script":
            exc = _uncaught_name(self.err)  # the code's own stderr: a description, nothing more
        lim = self.limits
        exit_code: int | None = None
        error: str | None = None
        oom = exc == "MemoryError" or b"MemoryError" in self.err[-2048:]
        if self.cg is not None and self.cg.oom_kills() > self.oom_kills:
            oom = True
        if outcome == "done":
            exit_code = 0 if exc is None else 1
            error = None if exc is None else f"uncaught {exc}"
        elif timed_out:
            error = f"timeout after {lim['wall_time_s']:g} s"
        elif outcome == "cpu":
            error = f"cpu time limit ({lim['cpu_time_s']:g} s) exceeded"
        elif outcome == "cancelled":
            error = "cancelled by the caller"
        elif outcome == "flooded":
            error = (f"the code wrote more than {_CTL_MAX_IGNORED} messages to the sandbox's control channel; "
                     "the interpreter was ended")
        elif self.status is not None and self.status[0] is not None:
            exit_code = os.waitstatus_to_exitcode(self.status[0])
            if exit_code < 0:
                sig = -exit_code
                name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
                if sig == signal.SIGXCPU or (sig == signal.SIGKILL and self.status[1] >= lim["cpu_time_s"]):
                    error = f"cpu time limit ({lim['cpu_time_s']:g} s) exceeded"
                elif oom:
                    error = "memory limit (killed by the kernel's out-of-memory killer)"
                else:
                    error = f"killed by signal {sig} ({name})"
            elif exit_code != 0:
                error = f"exit code {exit_code}" + (f" (uncaught {exc})" if exc else "")
        else:
            error = "sandbox process ended without a status"
        if oom and exit_code != 0 and not (error or "").startswith("memory limit"):
            error = "memory limit" + (f": {error}" if error else "")
        if setup is not None:
            error, exit_code = f"sandbox setup failed: {setup}", None
        elif self.ignored and outcome != "flooded":
            note = f"{self.ignored} message(s) the code wrote to the sandbox's control channel were ignored"
            error = note if error is None else f"{error}; {note}"
        return {"t": "result", "stdout": self.out.decode("utf-8", "replace"),
                "stderr": self.err.decode("utf-8", "replace"), "exit_code": exit_code,
                "timed_out": timed_out, "oom": oom, "truncated": self.truncated,
                "error": error, "alive": outcome == "done"}


def _json_or_none(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _uncaught_name(err: bytes) -> str | None:
    """The exception a traceback at the end of ``err`` names ("ValueError"), if there is one."""
    text = err[-4096:].decode("utf-8", "replace")
    if "Traceback (most recent call last):" not in text and 'File "<string>"' not in text:
        return None
    lines = text.rstrip().splitlines()
    match = re.match(r"([A-Za-z_][\w.]*)(:|$)", lines[-1]) if lines else None
    return match.group(1).rsplit(".", 1)[-1][:100] if match else None


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)
