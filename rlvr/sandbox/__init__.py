"""Run untrusted, model-written Python locally: code rewards and tool-calling interpreters.

    result = run_python("print(sum(map(int, input().split())))", stdin="1 2")
    result.ok, result.stdout                       # True, "3\\n"
    with PythonSession() as py:                    # multi-turn tool use, notebook-cell semantics
        py.run("import math; r = 2")
        py.run("math.pi * r**2").stdout            # "12.566370614359172\\n"

Without Docker or a VM, the boundary is the Linux kernel: namespaces, a dropped uid,
rlimits, cgroups and seccomp, set up by a persistent zygote (one per process, started on
first use, see `server.py`, `_zygote.py` and `_executor.py`; Linux 5.3 or later). A call never hangs the
caller: it returns by ``wall_time_s`` + 5 s whatever happens below (2 s more to kill a
supervisor that has not answered by then, 15 s more if the zygote itself is wedged, which
is then restarted), and the code cannot signal, read or write the caller.
`sandbox_capabilities()` reports what this machine allows, probed once
per zygote by applying each protection in a throwaway child and reading it back from the
kernel (/proc/self/status, /proc/self/ns, /proc/self/oom_score_adj), not by what was asked
for; each run reads back its own confinement again before the code starts and refuses to
run with less. Each row below names its key.

Enforced when the caller is root (this project's machines; all keys True):

* processes (``pid_namespace``): every run or session has its own pid namespace under an
  init that only reaps; killing that init at the wall-clock limit, or when the code's main
  process exits, makes the kernel kill every process of the run, so nothing survives a
  run (not even after ``setsid`` or a double fork). The code sees only its own processes.
* identity (``privilege_drop``): a uid/gid of its own per concurrent run (``UID_BASE`` +
  slot, ``UID_SLOTS`` slots, no supplementary groups, no capabilities), so RLIMIT_NPROC
  counts this run only and the code cannot signal the caller (EPERM; it cannot even see
  it). no_new_privs: setuid binaries do not elevate.
* filesystem (``mount_namespace``): the code is chrooted into a read-only tree with only
  /usr, /etc, the /bin and /lib links, the Python installation and (read-only)
  /opt/site-packages; nothing else of the host exists there (/root, /home, /work, /var,
  the host's /tmp). The one writable place is a fresh tmpfs of ``scratch_mb`` at /tmp,
  owned by the run's uid (mode 0700): the working directory, $HOME, $TMPDIR and
  /dev/shm; it vanishes with the run. /proc is the run's own (hidepid=2). Root-only files
  that are visible (/etc/shadow) stay unreadable by permissions. Being chrooted also keeps
  the code from creating user namespaces.
* network (``network_namespace``): an empty network namespace, no interface at all (not
  even loopback), unless ``network=True``. Also own IPC and UTS namespaces
  (``ipc_namespace``, ``uts_namespace``).
* system calls (``seccomp``, x86-64 and aarch64): a filter refuses (EPERM) mount, unshare,
  setns, ptrace, bpf, perf_event_open, userfaultfd, io_uring, keyctl, kexec, module
  loading, process_vm_*, clone with namespace flags and x32 system calls; a system call of
  another ABI (i386, arm32) kills the process. Sockets: only AF_UNIX, AF_INET, AF_INET6
  (isolated by the network namespace) and AF_NETLINK with NETLINK_ROUTE (read by glibc's
  getaddrinfo); any other family (AF_VSOCK, which no network namespace isolates,
  AF_PACKET, AF_ALG, AF_KEY, AF_XDP...) fails with EAFNOSUPPORT, other netlink protocols
  with EPROTONOSUPPORT. ``no_new_privs``: setuid binaries do not elevate.
* control channel (always): what the code writes is data, never a status. A script's
  interpreter closes its control socket before the code runs; its exit status is its wait
  status (from init's own wait, or the supervisor's), timeouts are the supervisor's clock.
  A session keeps one (a SOCK_SEQPACKET socket: one message per write, at most 4 KiB, no
  length to believe, no half message that swallows the next); the supervisor takes from it
  only the current cell's "done" carrying that cell's random nonce, from the interpreter's
  own pid (SCM_CREDENTIALS), once; everything else is dropped and counted in ``error``, and
  past 64 such messages in one call the interpreter is ended ("flooded"). The supervisor
  reads at most 16 messages per wake-up and keeps nothing of them but the counter and an
  exception name (100 characters). Its sends (the code, a cell) never block: they wait in a
  buffer, within the call's deadline. Every send to or from the parent has a deadline, and
  `PythonSession.close` returns once the supervisor has exited, which it does after the
  run's processes are gone (at most 5 s, then it is killed, and the run with it).
* environment (always): the zygote starts from ``python -I -S -B`` with only PATH and LANG,
  so no variable of the caller (secrets) reaches the code; it sees PATH, LANG, HOME,
  TMPDIR, USER, LOGNAME and a few *_NUM_THREADS=1. Site-packages are importable only with
  ``site_packages=True``.
* limits: RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0 and RLIMIT_NPROC
  (``rlimit_nproc``) per process, RLIMIT_CPU for `run_python`; per run a pids cgroup
  (``pids_cgroup``: max_processes + 1), a memory cgroup (``memory_cgroup``: memory_mb +
  scratch_mb + 64 MiB, no swap) and a CPU quota (``cpu_cgroup``: ``cpu_cores``). A
  session's interpreter outlives its calls, so its per-call CPU limit is enforced by the
  supervisor, which polls the interpreter's CPU time every 50 ms and kills it past the
  limit. The OOM killer prefers the sandbox (``oom_score_adj``: 1000, as read back); the
  supervisors ask for -1000, which needs CAP_SYS_RESOURCE (``supervisor_oom_score_adj``
  says what they got, and ``notes`` says so when it is not -1000). Wall
  clock: the supervisor kills the run at ``wall_time_s``. Output past ``max_output_bytes``
  is drained only every 10 ms, so a flood of output mostly waits.

Best effort, or not covered, even as root:

* The kernel is shared: a kernel exploit escapes (as from any container). Read-only
  access to world-readable files under /usr and /etc is allowed.
* A session cell's "finished" and its exception name are the interpreter's own report:
  code that reads the interpreter's memory can forge them, which claims no more than a
  cell that catches its own exception and leaves a thread running (the limits still hold,
  and an exit, a signal or a timeout always comes from the supervisor). A script's
  "(uncaught X)" is read from the end of its stderr.
* ``oom`` is inferred (a MemoryError, or the memory cgroup's OOM-kill counter). The CPU
  limit counts the main process only (RLIMIT_CPU: whole seconds, rounded up); other
  processes of the run are bounded by the wall clock and the CPU quota.
* Runs are forks of one zygote: they share its hash-randomization seed and start with its
  preimported standard-library modules (fresh copies; nothing leaks between runs).
* In a session, threads or processes the code leaves running keep running between calls
  (within the limits) and what they print shows up in a later call's output.
* cgroup v1 is what this machine has and what is tested; v2 is supported where the
  controllers can be enabled for our subtree, else those limits are off (reported).

Fallbacks, each reported False by `sandbox_capabilities()`:

* no pid namespace: what the code leaves behind is killed as descendants of the
  supervisor (a child subreaper, so orphans stay below it), by cgroup if any, and by uid
  (``kill(-1)`` from a helper running as the run's uid, until /proc shows none).
* no mount namespace: the scratch directory is a host directory (0700, owned by the run's
  uid), the code can read what the uid may read and write world-writable directories
  (/tmp, /var/tmp, /dev/shm: what the uid left there at the top level is removed after
  the run), and the uid must be able to read the Python installation (a Python under
  /root is not: then only modules the zygote preimported work).
* no network namespace: an audit hook refuses IP sockets and DNS; not a boundary (ctypes
  or a subprocess get around it).
* no seccomp (another architecture, or disabled): no system-call or socket-family filter,
  so AF_VSOCK and the rest are as open as the kernel leaves them to the run's uid.
* not root: the code runs as the caller's own uid, so it CAN signal the caller and read its
  files and /proc/<pid>/environ: only rlimits, a new session, no_new_privs, seccomp, a
  clean environment and the killing of leftover descendants apply, and RLIMIT_NPROC
  counts every process of that user. Use it for trusted code only.

Cost (``benchmarks/bench_sandbox.py`` on this project's 2-core machine, medians): `run_python`
6.7 ms idle (p90 9.7), 9.6 ms with another job using both cores (p90 19), against 24 ms
for ``subprocess.run([python, "-c", ...])`` from the project's virtualenv and 8.1 ms with
``python -I -S``; `PythonSession.run` 0.3-0.5 ms. The zygote keeps ``spares`` confined
interpreters ready, so a call pays for its limits, its code and the teardown; the CPU
behind a call (every process involved) is about 12 ms. Starting the zygote takes ~80 ms.
"""

from .limits import SandboxLimits, SandboxResult
from .server import UID_BASE, UID_SLOTS, SandboxError, SandboxServer, default_server
from .session import PythonSession

__all__ = ["PythonSession", "SandboxError", "SandboxLimits", "SandboxResult", "SandboxServer", "UID_BASE",
           "UID_SLOTS", "default_server", "run_python", "sandbox_capabilities"]


def run_python(code: str, *, stdin: str = "", limits: SandboxLimits = SandboxLimits(),
               files: dict[str, str | bytes] | None = None, server: SandboxServer | None = None) -> SandboxResult:
    """Run ``code`` as ``python -c`` would, confined, and report what happened.

    ``stdin`` is its standard input; ``files`` (relative path -> text or bytes) are written
    into its fresh scratch directory, which is also its working directory and is removed
    afterwards. Failures of the code (exceptions, signals, timeouts, limits) come back in
    the result, never as exceptions; `SandboxError` means the sandbox itself cannot start.
    """
    return (server if server is not None else default_server()).run_python(code, stdin=stdin, limits=limits,
                                                                          files=files)


def sandbox_capabilities() -> dict:
    """What this machine lets the sandbox enforce (see the module docstring for each key)."""
    return default_server().capabilities()
