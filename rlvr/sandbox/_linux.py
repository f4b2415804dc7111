"""Linux system calls the sandbox needs that Python 3.10/3.11's standard library lacks.

``unshare``, ``mount``, ``prctl`` and a seccomp-BPF filter, called through ctypes, plus
cgroup (v1 and v2) helpers. Standard library only: the zygote loads this file by path in an
isolated interpreter (``python -I -S``) where the ``rlvr`` package is not importable.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
                   | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    """Move the calling process into the namespace that ``fd`` (from /proc/PID/ns/...) names."""
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` at ``target`` (no submounts), then make that mount read-only, nosuid, nodev.

    The read-only flag belongs to this mount in this namespace only; the host's mount of the
    same directory stays writable.
    """
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


def proc_status(pid: int | str = "self") -> dict[str, list[str]]:
    """/proc/PID/status as field -> words (``{"Seccomp": ["2"], "Uid": ["1", "1", "1", "1"]...}``)."""
    with open(f"/proc/{pid}/status") as f:
        return {key: value.split() for key, _, value in (line.partition(":") for line in f)}


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent (thread) dies."""
    prctl(PR_SET_PDEATHSIG, signum)


def set_no_new_privs() -> None:
    """Forbid gaining privileges from now on (setuid binaries, file capabilities)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_child_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of to init."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


# --- seccomp ------------------------------------------------------------------------------
# A deny-list filter (the approach of Docker's default profile, much shorter): system calls
# that an unprivileged Python program has no business making and that are the usual kernel
# attack surface or escape tools. They fail with EPERM; clone3 fails with ENOSYS so that
# glibc falls back to clone, whose flags (unlike clone3's) the filter can inspect. socket()
# and socketpair() are allowed for the families the code needs only: AF_UNIX, AF_INET and
# AF_INET6 (the network namespace isolates these), and AF_NETLINK with NETLINK_ROUTE (glibc's
# getaddrinfo reads the interface addresses through it); every other family (AF_VSOCK, which no
# network namespace isolates, AF_PACKET, AF_ALG, AF_KEY, AF_XDP, Bluetooth...) fails with
# EAFNOSUPPORT, and other netlink protocols (audit, uevents...) with EPROTONOSUPPORT, as on a
# kernel built without them.
_DENIED = ("ptrace", "syslog", "uselib", "personality", "vhangup", "pivot_root", "_sysctl", "chroot", "acct",
           "mount", "umount2", "swapon", "swapoff", "reboot", "sethostname", "setdomainname", "iopl", "ioperm",
           "create_module", "init_module", "delete_module", "get_kernel_syms", "query_module", "quotactl",
           "nfsservctl", "lookup_dcookie", "kexec_load", "add_key", "request_key", "keyctl", "unshare",
           "perf_event_open", "fanotify_init", "name_to_handle_at", "open_by_handle_at", "setns",
           "process_vm_readv", "process_vm_writev", "kcmp", "finit_module", "kexec_file_load", "bpf",
           "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree", "move_mount",
           "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr")
_SYSCALLS_X86_64 = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "personality": 135, "vhangup": 153,
    "pivot_root": 155, "_sysctl": 156, "chroot": 161, "acct": 163, "mount": 165, "umount2": 166,
    "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "create_module": 174, "init_module": 175, "delete_module": 176,
    "get_kernel_syms": 177, "query_module": 178, "quotactl": 179, "nfsservctl": 180,
    "lookup_dcookie": 212, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "unshare": 272, "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "clone": 56, "clone3": 435, "socket": 41, "socketpair": 53, "getpid": 39,
}
_SYSCALLS_AARCH64 = {  # asm-generic/unistd.h; aarch64 never had uselib, _sysctl, iopl, ioperm...
    "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "nfsservctl": 42, "chroot": 51,
    "vhangup": 58, "quotactl": 60, "acct": 89, "personality": 92, "unshare": 97, "kexec_load": 104,
    "init_module": 105, "delete_module": 106, "syslog": 116, "ptrace": 117, "reboot": 142,
    "sethostname": 161, "setdomainname": 162, "add_key": 217, "request_key": 218, "keyctl": 219,
    "swapon": 224, "swapoff": 225, "perf_event_open": 241, "fanotify_init": 262, "name_to_handle_at": 264,
    "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
    "finit_module": 273, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "clone": 220, "clone3": 435, "socket": 198, "socketpair": 199, "getpid": 172,
}
SECCOMP_ARCHES = {"x86_64": (0xC000003E, _SYSCALLS_X86_64), "aarch64": (0xC00000B7, _SYSCALLS_AARCH64)}
"""machine -> (AUDIT_ARCH_* value, system-call name -> number)."""
_X32_SYSCALL_BIT = 0x40000000
_ALLOWED_FAMILIES = (1, 2, 10)          # AF_UNIX, AF_INET, AF_INET6
_AF_NETLINK, _NETLINK_ROUTE = 16, 0
_EPERM, _ENOSYS, _EPROTONOSUPPORT, _EAFNOSUPPORT = 1, 38, 93, 97

_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_ARG_LOW = (16, 24, 32)  # offsets of the low halves of seccomp_data.args[0..2] (little-endian)


def seccomp_supported() -> bool:
    """Whether the filter below has a system-call table for this machine."""
    return platform.machine() in SECCOMP_ARCHES


def seccomp_program(machine: str) -> bytes:
    """Assemble the BPF program for ``machine``; jumps name labels, resolved to relative offsets.

    Another ABI on the same machine (i386 or x32 on x86-64, arm32 on aarch64) is refused:
    its system-call numbers are not the ones checked here.
    """
    arch, table = SECCOMP_ARCHES[machine]
    code: list[tuple[int, object, object, int]] = []  # (op, jump-if-true, jump-if-false, k)
    labels: dict[str, int] = {}

    def emit(op: int, k: int, jt: object = 0, jf: object = 0) -> None:
        code.append((op, jt, jf, k))

    emit(_BPF_LD_W_ABS, 4)                                   # seccomp_data.arch
    emit(_BPF_JEQ_K, arch, 0, "kill")                        # another ABI: kill
    emit(_BPF_LD_W_ABS, 0)                                   # seccomp_data.nr
    if machine == "x86_64":
        emit(_BPF_JGE_K, _X32_SYSCALL_BIT, "eperm", 0)       # x32 ABI
    for nr in sorted(table[name] for name in _DENIED if name in table):
        emit(_BPF_JEQ_K, nr, "eperm", 0)
    emit(_BPF_JEQ_K, table["clone3"], "enosys", 0)
    emit(_BPF_JEQ_K, table["socket"], "socket", 0)
    emit(_BPF_JEQ_K, table["socketpair"], "socket", 0)
    emit(_BPF_JEQ_K, table["clone"], 0, "allow")
    emit(_BPF_LD_W_ABS, _ARG_LOW[0])                         # low half of clone's flags
    emit(_BPF_JSET_K, NAMESPACE_FLAGS & ~0xFF, "eperm", "allow")  # clone's low byte is the exit signal
    labels["socket"] = len(code)
    emit(_BPF_LD_W_ABS, _ARG_LOW[0])                         # the family: an int for the kernel
    for family in _ALLOWED_FAMILIES:
        emit(_BPF_JEQ_K, family, "allow", 0)
    emit(_BPF_JEQ_K, _AF_NETLINK, 0, "eafnosupport")
    emit(_BPF_LD_W_ABS, _ARG_LOW[2])                         # the netlink protocol
    emit(_BPF_JEQ_K, _NETLINK_ROUTE, "allow", "eprotonosupport")
    for name, ret in (("allow", _RET_ALLOW), ("eperm", _RET_ERRNO | _EPERM), ("enosys", _RET_ERRNO | _ENOSYS),
                      ("eafnosupport", _RET_ERRNO | _EAFNOSUPPORT),
                      ("eprotonosupport", _RET_ERRNO | _EPROTONOSUPPORT), ("kill", _RET_KILL_PROCESS)):
        labels[name] = len(code)
        emit(_BPF_RET_K, ret)

    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        rel = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= r <= 255 for r in rel):
            raise AssertionError(f"seccomp program: jump out of range at instruction {i}")
        out += struct.pack("=HBBI", op, rel[0], rel[1], k)
    return bytes(out)


# assembled once, in the zygote, before any fork
_SECCOMP_PROGRAM = seccomp_program(platform.machine()) if seccomp_supported() else b""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp_filter() -> None:
    """Install the deny-list filter on this thread and its future children (irreversible).

    Sets no_new_privs first, which an unprivileged process needs to install a filter.
    """
    if not _SECCOMP_PROGRAM:
        raise OSError(f"seccomp filter: no system-call table for {platform.machine()} "
                      f"(have {sorted(SECCOMP_ARCHES)})")
    program = _SECCOMP_PROGRAM
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    set_no_new_privs()
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
           "prctl(PR_SET_SECCOMP)")


# --- cgroups ------------------------------------------------------------------------------
class CgroupSet:
    """Per-run cgroups for the process-count, memory and CPU-bandwidth limits, under one base
    per zygote.

    cgroup v1 (one hierarchy per controller, as on this project's CI machine) and v2 (one
    unified hierarchy, where the controllers must be delegable to our subtree) are both
    handled; ``open`` returns None where neither can be written, and the sandbox then relies
    on RLIMIT_NPROC alone.
    """

    def __init__(self, bases: dict[str, str], version: int):
        self.bases = bases      # controller ("pids", "memory", "cpu") -> directory we own
        self.version = version

    @classmethod
    def open(cls, name: str) -> "CgroupSet | None":
        own = _own_cgroups()
        if os.path.isfile("/sys/fs/cgroup/pids/cgroup.procs") and "pids" in own:  # v1
            bases = {}
            for c in ("pids", "memory", "cpu"):
                root = f"/sys/fs/cgroup/{c}"
                if c in own and os.path.isfile(f"{root}/cgroup.procs"):
                    _remove_stale(root + own[c], name)
                    bases[c] = _mkdir(os.path.join(root + own[c], name))
            return cls(bases, 1)
        if "" in own and os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):  # v2
            parent = "/sys/fs/cgroup" + own[""]
            with open(os.path.join(parent, "cgroup.controllers")) as f:
                controllers = [c for c in ("pids", "memory", "cpu") if c in f.read().split()]
            if "pids" not in controllers:
                return None
            enable = " ".join("+" + c for c in controllers)
            _write(os.path.join(parent, "cgroup.subtree_control"), enable)
            _remove_stale(parent, name)
            base = _mkdir(os.path.join(parent, name))
            _write(os.path.join(base, "cgroup.subtree_control"), enable)
            return cls({c: base for c in controllers}, 2)
        return None

    def create_run(self, run: str) -> "RunCgroup":
        """An empty cgroup per controller for one run; limits come with `RunCgroup.set_limits`."""
        return RunCgroup({c: _mkdir(os.path.join(base, run)) for c, base in self.bases.items()}, self.version)

    def remove(self) -> None:
        for base in set(self.bases.values()):
            for entry in _listdir(base):
                _rmdir(os.path.join(base, entry))
            _rmdir(base)


class RunCgroup:
    def __init__(self, dirs: dict[str, str], version: int):
        self.dirs = dirs
        self.version = version

    def set_limits(self, max_tasks: int, memory_bytes: int, cpu_cores: float) -> None:
        _write(os.path.join(self.dirs["pids"], "pids.max"), str(max_tasks))
        d = self.dirs.get("cpu")
        if d is not None:
            period = 100_000  # microseconds
            quota = max(1000, int(cpu_cores * period))
            if self.version == 1:
                _write(os.path.join(d, "cpu.cfs_period_us"), str(period))
                _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
            else:
                _write(os.path.join(d, "cpu.max"), f"{quota} {period}")
        d = self.dirs.get("memory")
        if d is None:
            return
        if self.version == 1:
            # memsw (memory + swap) must stay >= the memory limit: order the writes accordingly
            names = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            if not os.path.exists(os.path.join(d, names[1])):
                names = names[:1]
            for order in (names, names[::-1]):
                try:
                    for name in order:
                        _write(os.path.join(d, name), str(memory_bytes))
                    return
                except OSError:
                    continue
            raise OSError(f"cannot set the memory limit of {d}")
        _write(os.path.join(d, "memory.max"), str(memory_bytes))
        try:
            _write(os.path.join(d, "memory.swap.max"), "0")
        except OSError:
            pass

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.dirs["pids"], "cgroup.procs")) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def add(self, pid: int) -> None:
        for d in set(self.dirs.values()):
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took in this cgroup so far."""
        d = self.dirs.get("memory")
        if d is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            with open(os.path.join(d, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            pass
        return 0

    def remove(self) -> None:
        for d in set(self.dirs.values()):
            _rmdir(d)


def _remove_stale(parent: str, name: str) -> None:
    """Remove the (empty) cgroups of zygotes that died: names are "<prefix>z<pid>"."""
    prefix = name.rsplit("z", 1)[0] + "z"
    for entry in _listdir(parent):
        pid = entry[len(prefix):]
        if entry.startswith(prefix) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            base = os.path.join(parent, entry)
            for run in _listdir(base):
                _rmdir(os.path.join(base, run))
            _rmdir(base)


def _own_cgroups() -> dict[str, str]:
    """controller -> path of this process's cgroup (v2's unified hierarchy under key "")."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(","):
                out[c] = path.rstrip("/")
    return out


def _mkdir(path: str) -> str:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    return path


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
