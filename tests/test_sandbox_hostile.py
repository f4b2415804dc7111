"""Hostile code against rlvr.sandbox: each attack must be contained AND reported, and the
test process (standing in for the trainer) must survive and stay responsive.

Small limits keep the suite short (wall 2 s, 256 MiB). A test is skipped only where
`capabilities()` says the machine cannot provide that protection.
"""

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from rlvr.sandbox import PythonSession, SandboxLimits, SandboxServer, run_python

LIMITS = SandboxLimits(wall_time_s=2, memory_mb=256)
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


@pytest.fixture(scope="module")
def server():
    with SandboxServer() as s:
        yield s


def run(server, code, **kw):
    return run_python(code, limits=kw.pop("limits", LIMITS), server=server, **kw)


def sandbox_processes(server) -> list[int]:
    """Processes on this machine whose real uid is in the sandbox's uid range."""
    low, high = server.capabilities()["uid_range"]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid_line = next(line for line in open(f"/proc/{entry}/status") if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if low <= int(uid_line.split()[1]) < high:
                found.append(int(entry))
    return found


def need(server, *caps):
    missing = [c for c in caps if not server.capabilities()[c]]
    if missing:
        pytest.skip(f"this machine does not provide {', '.join(missing)} (see sandbox_capabilities())")


def assert_parent_fine(server):
    """The trainer can still start processes, and the sandbox still answers."""
    assert subprocess.run(["true"], timeout=10).returncode == 0
    r = run(server, "print('still here')")
    assert r.ok and r.stdout == "still here\n"


def test_infinite_loop_is_killed_at_the_wall_clock_limit(server):
    for code in ("while True: pass", "import time; time.sleep(1000)"):
        t0 = time.monotonic()
        r = run(server, code)
        elapsed = time.monotonic() - t0
        assert r.timed_out and r.exit_code is None and not r.ok
        assert r.error == "timeout after 2 s"
        assert 2.0 <= elapsed < 3.0
    assert_parent_fine(server)


def test_cpu_time_limit(server):
    r = run(server, "while True: pass", limits=SandboxLimits(wall_time_s=5, cpu_time_s=1, memory_mb=256))
    assert not r.timed_out and r.exit_code == -24  # SIGXCPU
    assert r.error == "cpu time limit (1 s) exceeded"
    assert r.duration_s < 3


def test_fork_bomb_is_contained(server):
    need(server, "privilege_drop")
    peak = []
    done = threading.Event()

    def watch():  # how many sandbox processes exist at once while the bomb runs
        while not done.is_set():
            peak.append(len(sandbox_processes(server)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = run(server, FORK_BOMB)
    finally:
        done.set()
        watcher.join()
    assert r.timed_out and r.error == "timeout after 2 s"
    assert 10 <= max(peak) <= LIMITS.max_processes  # it did fork, up to the limit and no further
    assert sandbox_processes(server) == []  # nothing survives the run
    assert_parent_fine(server)


def test_trainer_stays_responsive_during_a_fork_bomb(server):
    need(server, "privilege_drop")
    bomb = threading.Thread(target=run, args=(server, FORK_BOMB))
    bomb.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert subprocess.run(["true"], timeout=10).returncode == 0
        r = run(server, "print(1)")
        elapsed = time.monotonic() - t0
    finally:
        bomb.join()
    assert r.ok and elapsed < 1.5, elapsed


def test_escaped_background_processes_die_with_the_run(server):
    need(server, "privilege_drop")
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60)\n"
            "    os._exit(0)\n"
            "print('main done')")
    r = run(server, code)
    assert r.ok and r.stdout == "main done\n"
    assert sandbox_processes(server) == []


def test_memory_hog_is_stopped_and_reported(server):
    for code in ("x = bytearray(10**9)", "a = []\nwhile True:\n    a.append(bytearray(10**6))"):
        r = run(server, code)
        assert r.oom and r.exit_code == 1 and r.error.startswith("memory limit"), r
        assert "MemoryError" in r.stderr
    assert_parent_fine(server)


def test_memory_spread_over_processes_hits_the_cgroup(server):
    need(server, "memory_cgroup")
    code = ("import os, time\n"
            "kids = []\n"
            "for _ in range(4):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        b = bytearray(180 * 2**20)\n"
            "        for i in range(0, len(b), 4096):\n"
            "            b[i] = 1\n"
            "        time.sleep(2)  # hold it until the others have theirs\n"
            "        os._exit(0)\n"
            "    kids.append(pid)\n"
            "print(sorted(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids))")
    r = run(server, code, limits=SandboxLimits(wall_time_s=10, memory_mb=256))
    assert r.oom  # 4 x 180 MiB > 256 + 64 + 64 MiB for the whole run
    assert "-9" in r.stdout, r  # the cgroup's OOM killer took at least one child
    assert_parent_fine(server)


def test_huge_output_is_truncated_without_buffering_it(server):
    tracemalloc.start()
    try:
        r = run(server, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.timed_out and r.truncated
    assert r.stdout == "x" * LIMITS.max_output_bytes
    assert peak < 8 * 2**20, peak  # gigabytes went by; the caller held at most a few MiB


def test_writes_outside_the_scratch_directory_fail(server):
    need(server, "privilege_drop")
    name = f"sandbox_escape_{secrets.token_hex(4)}"
    project = Path(__file__).resolve().parents[1]
    targets = [project / name, Path("/") / name, Path("/etc") / name, Path("/usr") / name,
               Path("/var/tmp") / name, Path(sys.prefix) / name]
    code = ("import os\n"
            f"for path in {[str(t) for t in targets]!r}:\n"
            "    try:\n"
            "        open(path, 'w').write('x')\n"
            "        print('WROTE', path)\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)\n"
            "open('inside.txt', 'w').write('fine')\n"
            "print(open('inside.txt').read())")
    try:
        r = run(server, code)
        assert r.ok, r.stderr
        assert "WROTE" not in r.stdout
        assert r.stdout.splitlines()[-1] == "fine"  # the scratch directory is writable
    finally:
        leaked = [t for t in targets if t.exists()]
        for t in leaked:
            t.unlink()
    assert leaked == []
    if server.capabilities()["mount_namespace"]:  # the host's /tmp and /dev/shm are not the sandbox's
        r = run(server, f"open('/tmp/{name}', 'w').write('x'); open('/dev/shm/{name}', 'w').write('x')")
        assert r.ok
        assert not Path("/tmp", name).exists() and not Path("/dev/shm", name).exists()


def test_reading_root_only_files_fails(server):
    need(server, "privilege_drop")
    secrets_on_host = ["/etc/shadow"] + [str(p) for p in Path("/root").glob("*") if p.is_file()] \
        if os.access("/root", os.R_OK) else ["/etc/shadow"]
    code = ("import os\n"
            f"for path in {secrets_on_host!r}:\n"
            "    try:\n"
            "        print('READ', path, open(path).read()[:20])\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)\n"
            "try:\n"
            "    print(sorted(os.listdir('/root')))\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)")
    r = run(server, code)
    assert r.ok, r.stderr
    assert "READ" not in r.stdout
    assert r.stdout.splitlines()[0] == "PermissionError"  # /etc/shadow: visible but not readable
    if server.capabilities()["mount_namespace"]:  # /root holds only the path to Python, if anything
        assert r.stdout.splitlines()[-1] in ("[]", "['.pyenv']", "FileNotFoundError")


@pytest.fixture
def secret_server():
    """A secret in the caller's environment, and a zygote started after it was set (so it
    would inherit it, were the environment not scrubbed)."""
    token = secrets.token_hex(16)
    os.environ["RLVR_SANDBOX_TEST_SECRET"] = token
    try:
        with SandboxServer() as fresh:
            yield fresh, token
    finally:
        del os.environ["RLVR_SANDBOX_TEST_SECRET"]


def test_the_callers_environment_is_not_passed_on(secret_server):
    server, token = secret_server
    r = run(server, "import os; print(dict(os.environ))")
    assert r.ok and "PATH" in r.stdout  # the code did print its environment...
    assert token not in r.stdout  # ... without the secret
    with PythonSession(LIMITS, server=server) as py:
        assert py.run("import os; print(os.environ.get('RLVR_SANDBOX_TEST_SECRET'))").stdout == "None\n"


def test_no_other_process_environment_is_readable(secret_server):
    server, token = secret_server
    need(server, "privilege_drop")  # as the caller's own uid, /proc/<caller>/environ is readable
    code = ("import os\n"
            f"for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['{os.getpid()}', 'self', '1']:\n"
            "    try:\n"
            "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError as e:\n"
            "        print(pid, type(e).__name__)")
    r = run(server, code)
    assert r.ok, r.stderr
    assert f"{os.getpid()} " in r.stdout and "self b'PATH=" in r.stdout  # it tried, and can read its own
    assert token not in r.stdout + r.stderr


def test_network_is_off_unless_asked_for(server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = ("import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__, e)")
    try:
        blocked = run(server, code)
        allowed = run(server, code, limits=SandboxLimits(wall_time_s=5, memory_mb=256, network=True))
    finally:
        listener.close()
    assert blocked.ok and "CONNECTED" not in blocked.stdout, blocked.stdout
    assert allowed.ok and allowed.stdout == "CONNECTED\n", allowed  # the port was reachable


def test_the_code_cannot_kill_the_trainer_or_the_zygote(server):
    need(server, "privilege_drop")  # as the caller's own uid, it could
    zygote = server._proc.pid
    code = ("import os, signal\n"
            f"for pid in ({os.getpid()}, os.getppid(), {zygote}):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        print('KILLED', pid)\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)")
    r = run(server, code)
    assert r.ok and "KILLED" not in r.stdout, r.stdout
    assert server._proc.poll() is None  # the zygote lives
    assert_parent_fine(server)  # and so do we


def test_deep_recursion_is_contained(server):
    r = run(server, "def f(n):\n    return f(n + 1)\nf(0)")
    assert r.exit_code == 1 and "RecursionError" in r.stderr
    # recursion in C (repr of a deeply nested list) past a raised limit overflows the stack
    r = run(server, "import sys\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**6):\n    x = [x]\n"
                    "print(len(repr(x)))")
    assert not r.ok and not r.timed_out, r
    assert r.exit_code == -11 or "Error" in r.stderr, r  # SIGSEGV, or Recursion/MemoryError
    assert_parent_fine(server)


def test_user_namespaces_and_mounts_are_refused(server):
    if not (server.capabilities()["seccomp"] or server.capabilities()["mount_namespace"]):
        pytest.skip("neither seccomp nor a chroot is available to refuse user namespaces")
    code = ("import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
            "print(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())")
    r = run(server, code)
    assert r.ok, r.stderr
    assert r.stdout == "-1 1\n-1 1\n"  # EPERM both


def test_fork_bomb_in_a_session(server):
    need(server, "privilege_drop")
    with PythonSession(LIMITS, server=server) as py:
        py.run("x = 1")
        r = py.run(FORK_BOMB)
        assert r.timed_out and not py.alive
        assert sandbox_processes(server) == []
        after = py.run("print('back')")
        assert after.ok and after.stdout == "back\n" and "interpreter restarted" in after.error


def test_session_cpu_limit_is_per_call(server):
    limits = SandboxLimits(wall_time_s=4, cpu_time_s=1, memory_mb=256)
    with PythonSession(limits, server=server) as py:
        busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.7:\n    pass\n'ok'"
        assert py.run(busy).stdout == "'ok'\n"
        assert py.run(busy).stdout == "'ok'\n"  # 1.4 s in total, but under 1 s per call
        r = py.run("while True:\n    pass")
        assert r.error == "cpu time limit (1 s) exceeded" and not py.alive


@pytest.mark.parametrize("disable", [
    ["pid_namespace"],
    ["pid_namespace", "mount_namespace", "network_namespace", "ipc_namespace", "uts_namespace", "cgroups", "seccomp"],
], ids=["no-pid-namespace", "uid-only"])
def test_fallbacks_still_clean_up(disable):
    """Where the kernel lacks namespaces, killing by process group, cgroup and uid takes over."""
    with SandboxServer(disable=disable) as weak:
        need(weak, "privilege_drop")
        caps = weak.capabilities()
        assert not caps["pid_namespace"]
        r = run_python(FORK_BOMB, limits=LIMITS, server=weak)
        assert r.timed_out
        assert sandbox_processes(weak) == []
        escape = run_python("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('ok')",
                            limits=LIMITS, server=weak)
        assert escape.ok and sandbox_processes(weak) == []
        if not caps["network_namespace"]:  # the audit hook: best effort, but present
            r = run_python("import socket; socket.socket()", limits=LIMITS, server=weak)
            assert r.exit_code == 1 and "network access is disabled" in r.stderr


# --- the control channel (issue 13, class 6) ------------------------------------------------
# The code can find every descriptor it holds (/proc/self/fd) and write anything to it. What it
# writes is data at most: the status of a run or a cell comes from what the supervisor sees
# itself (wait status, its own timers), reads are capped, and no send of the supervisor waits
# on the code.
FORGE = '''
import json, os, struct
fake_result = {"t": "result", "stdout": "forged", "stderr": "", "exit_code": 0, "timed_out": False,
               "oom": False, "truncated": False, "error": None, "alive": True}
forged = [{"t": "done", "exc": None}, {"t": "exit", "exc": None}, {"t": "ready"},
          {"t": "setup_error", "error": "forged"}, fake_result] + [{"t": "done", "n": n, "exc": None} for n in (1, 2)]
for prefixed in (True, False):
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        for obj in forged:
            body = json.dumps(obj).encode()
            try:
                os.write(fd, struct.pack(">I", len(body)) + body if prefixed else body)
            except OSError:
                pass
'''
QUICK = SandboxLimits(wall_time_s=1, memory_mb=256)


def zygote_children(server) -> list[int]:
    """The supervisors (and spares) of ``server``: the zygote's children, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server._proc.pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def status_kib(pid: int, key: str) -> int:
    return int(next(line for line in open(f"/proc/{pid}/status") if line.startswith(key + ":")).split()[1])


def test_forged_frames_cannot_set_a_runs_status(server):
    r = run(server, FORGE + "os._exit(3)")
    assert (r.exit_code, r.error, r.timed_out) == (3, "exit code 3", False), r
    r = run(server, FORGE + "import time\ntime.sleep(60)", limits=QUICK)
    assert r.timed_out and r.exit_code is None and r.error == "timeout after 1 s", r


def test_forged_frames_cannot_finish_a_cell(server):
    with PythonSession(QUICK, server=server) as py:
        r = py.run(FORGE + "raise ValueError('real')")
        assert r.exit_code == 1 and r.error.startswith("uncaught ValueError"), r
        assert py.run("print('next')").stdout == "next\n"  # no stale frame answers the next cell
        r = py.run(FORGE + "import time\ntime.sleep(60)")
        assert r.timed_out and r.exit_code is None and not py.alive, r


def test_a_frame_claiming_a_huge_length_is_dropped(server):
    with PythonSession(QUICK, server=server) as py:
        r = py.run("import os, struct\n"
                   "os.write(3, struct.pack('>I', 2**32 - 1) + b'x' * 10)\n"
                   "os.write(3, struct.pack('>Q', 2**40))\n"
                   "print('after')")
        assert r.ok and r.stdout == "after\n" and r.duration_s < 0.9, r
        assert py.run("print(2)").stdout == "2\n"


def test_half_a_frame_then_silence_does_not_desynchronise_the_channel(server):
    code = ("import os, struct, threading, time\n"
            "def half():\n"
            "    os.write(3, struct.pack('>I', 100) + b'{\"t\": \"do')\n"
            "    time.sleep(60)\n"
            "threading.Thread(target=half, daemon=True).start()\n"
            "time.sleep(0.1)\n"
            "print('ok')")
    with PythonSession(QUICK, server=server) as py:
        r = py.run(code)
        assert r.ok and r.stdout == "ok\n", r
        assert py.run("print(2)").stdout == "2\n"


def test_a_flood_on_the_control_channel_is_bounded():
    flood = ("import json, os, struct\n"
             "body = json.dumps({'t': 'noise', 'n': 1}).encode()\n"
             "chunk = (struct.pack('>I', len(body)) + body) * 1000\n"
             "for _ in range(300):\n"
             "    try:\n"
             "        os.write(3, chunk)\n"
             "    except OSError:\n"
             "        pass\n"
             "print('flooded')")
    with SandboxServer(spares=0) as fresh, PythonSession(SandboxLimits(wall_time_s=3, memory_mb=256),
                                                         server=fresh) as py:
        [supervisor] = zygote_children(fresh)
        before = status_kib(supervisor, "VmHWM")
        r = py.run(flood)
        grown = status_kib(supervisor, "VmHWM") - before if py.alive else 0
        assert not r.ok and "control channel" in (r.error or ""), r
        assert grown < 8 << 10, f"the supervisor's peak memory grew by {grown} KiB"
        assert r.duration_s < 1.5, r
        assert py.run("print('fine')").stdout == "fine\n"


def test_a_session_that_stops_reading_cannot_wedge_the_supervisor(server):
    need(server, "privilege_drop")
    swap = ("import os, socket, threading, time\n"
            "def swap():\n"
            "    global keep, a, b\n"
            "    time.sleep(0.2)\n"
            "    keep = os.dup(3)  # hold the channel open, read it never\n"
            "    a, b = socket.socketpair()\n"
            "    os.dup2(a.fileno(), 3)\n"
            "threading.Thread(target=swap).start()")
    py = PythonSession(QUICK, server=server)
    try:
        assert py.run(swap).ok
        time.sleep(0.4)
        r = py.run("x = '" + "a" * (4 << 20) + "'")
        assert r.timed_out and r.duration_s < 2.0, r
    finally:
        t0 = time.monotonic()
        py.close()
        closed_in = time.monotonic() - t0
    assert closed_in < 3.0
    assert sandbox_processes(server) == []


def test_close_returns_promptly_and_leaves_nothing_behind(server):
    need(server, "privilege_drop")
    with SandboxServer(spares=0) as fresh:
        py = PythonSession(QUICK, server=fresh)
        assert py.run("import os, sys, threading, time\n"
                      "if os.fork() == 0:\n"
                      "    os.setsid()\n"
                      "    time.sleep(60)\n"
                      "def noise():\n"
                      "    while True:\n"
                      "        sys.stdout.write('x' * 4096)\n"
                      "threading.Thread(target=noise, daemon=True).start()\n"
                      "'started'").ok
        [supervisor] = zygote_children(fresh)
        assert sandbox_processes(fresh) != []
        t0 = time.monotonic()
        py.close()
        assert time.monotonic() - t0 < 3.0
        assert sandbox_processes(fresh) == []
        assert not os.path.exists(f"/proc/{supervisor}") or zygote_children(fresh) == []


SOCKET_FAMILIES = '''
import errno, socket
refused = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EPERM, errno.EACCES)
for name, family, kind, proto in (("vsock", 40, socket.SOCK_STREAM, 0), ("packet", 17, socket.SOCK_RAW, 0),
                                  ("alg", 38, socket.SOCK_SEQPACKET, 0), ("netlink-uevent", 16, socket.SOCK_DGRAM, 15),
                                  ("netlink-audit", 16, socket.SOCK_RAW, 9), ("key", 15, socket.SOCK_RAW, 2),
                                  ("bluetooth", 31, socket.SOCK_STREAM, 0), ("xdp", 44, socket.SOCK_RAW, 0)):
    try:
        socket.socket(family, kind, proto).close()
        print(name, "OPENED")
    except OSError as e:
        print(name, "refused" if e.errno in refused else e.errno, e.errno == errno.EAFNOSUPPORT)
'''


def test_only_the_socket_families_the_code_needs(server):
    need(server, "seccomp")
    r = run(server, SOCKET_FAMILIES)
    assert r.ok, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.split()[1] == "refused" for line in lines), r.stdout
    # refused by the filter (EAFNOSUPPORT, EPROTONOSUPPORT for netlink), not left to the kernel's luck
    assert all(line.split()[2] == "True" for line in lines if not line.startswith("netlink")), r.stdout
    ordinary = ("import socket, subprocess, sys, json, math\n"
                "a, b = socket.socketpair(); a.send(b'x'); print(b.recv(1))\n"
                "socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n"
                "socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()\n"
                "socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0).close()  # NETLINK_ROUTE: getaddrinfo\n"
                "print(subprocess.run([sys.executable, '-c', 'print(math.pi if 0 else 7)'], capture_output=True,"
                " text=True).stdout.strip(), math.factorial(5))")
    r = run(server, ordinary)
    assert r.ok and r.stdout == "b'x'\n7 120\n", r


def _run_bpf(program: bytes, nr: int, arch: int, args=(0, 0, 0)) -> int:
    """A classic-BPF interpreter for the few instructions the seccomp filter uses."""
    import struct
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        op, jt, jf, k = insns[pc]
        if op == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_for_each_architecture(machine):
    from rlvr.sandbox import _linux
    arch, table = _linux.SECCOMP_ARCHES[machine]
    program = _linux.seccomp_program(machine)
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, eafnosupport, eprotonosupport = 0x50000 | 1, 0x50000 | 97, 0x50000 | 93
    assert _run_bpf(program, table["unshare"], arch) == eperm
    assert _run_bpf(program, table["ptrace"], arch) == eperm
    assert _run_bpf(program, table["clone"], arch, (0x10000000,)) == eperm  # CLONE_NEWUSER
    assert _run_bpf(program, table["clone"], arch, (0x11,)) == allow  # fork: SIGCHLD
    assert _run_bpf(program, table["getpid"], arch) == allow
    for family, verdict in ((1, allow), (2, allow), (10, allow), (40, eafnosupport), (17, eafnosupport),
                            (38, eafnosupport), (0x100000001, allow)):  # the kernel reads an int
        assert _run_bpf(program, table["socket"], arch, (family, 1, 0)) == verdict, family
    assert _run_bpf(program, table["socketpair"], arch, (40, 1, 0)) == eafnosupport
    assert _run_bpf(program, table["socket"], arch, (16, 2, 0)) == allow  # NETLINK_ROUTE
    assert _run_bpf(program, table["socket"], arch, (16, 2, 15)) == eprotonosupport
    assert _run_bpf(program, table["getpid"], 0x40000003) == kill  # another ABI (i386)


def test_capabilities_are_read_back_from_the_kernel(server):
    caps = server.capabilities()
    code = ("import os, resource\n"
            "st = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
            "print({k: st[k].split() for k in ('Uid', 'Gid', 'Groups', 'CapEff', 'NoNewPrivs', 'Seccomp')})\n"
            "print(int(open('/proc/self/oom_score_adj').read()))\n"
            "print([resource.getrlimit(r)[1] for r in (resource.RLIMIT_AS, resource.RLIMIT_NOFILE,"
            " resource.RLIMIT_NPROC)])\n"
            "print({n: os.stat(f'/proc/self/ns/{n}').st_ino for n in ('net', 'ipc', 'uts', 'mnt', 'pid')})")
    r = run(server, code)
    assert r.ok, r.stderr
    status, oom, rlimits, ns = (eval(line) for line in r.stdout.splitlines())
    assert caps["oom_score_adj"] == oom
    assert status["NoNewPrivs"] == ["1"] and caps["no_new_privs"]
    assert status["Seccomp"] == (["2"] if caps["seccomp"] else ["0"])
    if caps["privilege_drop"]:
        low, high = caps["uid_range"]
        assert low <= int(status["Uid"][0]) < high and len(set(status["Uid"])) == 1
        assert status["Groups"] == [] and status["CapEff"] == ["0000000000000000"]
    assert rlimits == [LIMITS.memory_mb << 20, LIMITS.max_open_files, LIMITS.max_processes]
    for name, cap in (("net", "network_namespace"), ("ipc", "ipc_namespace"), ("uts", "uts_namespace"),
                      ("mnt", "mount_namespace"), ("pid", "pid_namespace")):
        assert (ns[name] != os.stat(f"/proc/self/ns/{name}").st_ino) == caps[cap], name
    supervisors = zygote_children(server)
    assert supervisors and all(int(open(f"/proc/{p}/oom_score_adj").read()) == caps["supervisor_oom_score_adj"]
                               for p in supervisors)
