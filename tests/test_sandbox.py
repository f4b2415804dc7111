"""Functional tests of rlvr.sandbox: what well-behaved code sees and gets back."""

import threading

import pytest

from rlvr.sandbox import PythonSession, SandboxLimits, SandboxResult, SandboxServer, run_python

LIMITS = SandboxLimits(wall_time_s=5, memory_mb=256)


@pytest.fixture(scope="module")
def server():
    with SandboxServer() as s:
        yield s


def run(server, code, **kw):
    return run_python(code, limits=kw.pop("limits", LIMITS), server=server, **kw)


def test_stdout_stderr_and_exit_code(server):
    r = run(server, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out, r.ok) == ("out\n", "err\n", 3, False, False)
    assert r.error == "exit code 3"
    ok = run(server, "print(6 * 7)")
    assert ok.ok and ok.stdout == "42\n" and ok.error is None and ok.exit_code == 0
    assert 0 < ok.duration_s < 5


def test_uncaught_exception_shows_a_traceback_with_source(server):
    r = run(server, "x = 1\nraise ValueError(f'boom {x}')")
    assert r.exit_code == 1 and not r.ok
    assert r.error == "exit code 1 (uncaught ValueError)"
    assert 'File "<string>", line 2, in <module>' in r.stderr
    assert "raise ValueError(f'boom {x}')" in r.stderr  # the source line, as python -c cannot
    assert r.stderr.rstrip().endswith("ValueError: boom 1")
    assert "_executor" not in r.stderr and "_zygote" not in r.stderr  # no frames of the sandbox itself


def test_syntax_error_and_exit_variants(server):
    r = run(server, "def f(:\n")
    assert r.exit_code == 1 and "SyntaxError" in r.stderr
    assert run(server, "import os; os._exit(7)").exit_code == 7
    assert run(server, "raise SystemExit('bye')").exit_code == 1
    assert run(server, "raise SystemExit('bye')").stderr == "bye\n"
    crashed = run(server, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert crashed.exit_code == -11 and crashed.error == "killed by signal 11 (SIGSEGV)"


def test_stdin_is_fed_and_then_closed(server):
    r = run(server, "a = input(); b = input()\nprint(int(a) + int(b))\ntry:\n    input()\nexcept EOFError:\n"
                    "    print('eof')", stdin="2\n40\n")
    assert r.stdout == "42\neof\n"
    big = "x" * 300_000  # larger than a pipe buffer
    assert run(server, "import sys; print(len(sys.stdin.read()))", stdin=big).stdout == "300000\n"
    via_path = run(server, "print(open('/dev/stdin').read().upper())", stdin="abc")  # as some solutions read
    assert via_path.ok and via_path.stdout == "ABC\n", via_path.stderr


def test_files_are_written_into_the_scratch_working_directory(server):
    files = {"data.txt": "hello", "sub/dir/blob.bin": b"\x00\xff", "solution.py": "def f(x):\n    return 2 * x\n"}
    code = ("import os, tempfile\n"
            "print(open('data.txt').read(), open('sub/dir/blob.bin', 'rb').read())\n"
            "from solution import f\nprint(f(21))\n"
            "open('new.txt', 'w').write('written')\nprint(open('new.txt').read())\n"
            "print(os.getcwd() == os.environ['HOME'] == tempfile.gettempdir())")
    r = run(server, code, files=files)
    assert r.ok, r.stderr
    assert r.stdout == "hello b'\\x00\\xff'\n42\nwritten\nTrue\n"


def test_each_run_gets_a_fresh_scratch_directory(server):
    assert run(server, "open('left_behind.txt', 'w').write('x')").ok
    r = run(server, "import os; print(sorted(os.listdir('.')))", files={"mine.txt": ""})
    assert r.stdout == "['mine.txt']\n"


def test_file_names_must_stay_inside_the_scratch_directory(server):
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(ValueError, match="relative path"):
            run(server, "pass", files={bad: "x"})
    with pytest.raises(TypeError, match="str or bytes"):
        run(server, "pass", files={"a.txt": 3})


def test_files_too_large_for_the_scratch_directory_are_reported(server):
    if not server.capabilities()["mount_namespace"]:
        pytest.skip("without a mount namespace the scratch directory has no size of its own")
    limits = SandboxLimits(wall_time_s=5, memory_mb=256, scratch_mb=1)
    r = run(server, "print('never runs')", files={"big.bin": b"x" * 2**21}, limits=limits)
    assert r.exit_code is None and r.stdout == ""
    assert r.error.startswith("sandbox setup failed") and "No space left" in r.error


def test_unicode_and_invalid_bytes_in_output(server):
    r = run(server, "print('héllo ✓', flush=True)\nimport os; os.write(1, b'\\xff\\n')")
    assert r.stdout == "héllo ✓\n\ufffd\n"


def test_output_is_truncated_at_the_cap(server):
    limits = SandboxLimits(wall_time_s=5, memory_mb=256, max_output_bytes=1000)
    r = run(server, "import sys\nprint('x' * 100_000)\nprint('y' * 5000, file=sys.stderr)", limits=limits)
    assert r.ok and r.truncated
    assert r.stdout == "x" * 1000 and r.stderr == "y" * 1000
    small = run(server, "print('x' * 999)", limits=limits)
    assert not small.truncated and small.stdout == "x" * 999 + "\n"


def test_ordinary_programs_work_inside(server):
    """Threads, subprocesses, multiprocessing, temp files, randomness: what solutions use."""
    code = ("import multiprocessing, subprocess, sys, tempfile, threading, os\n"
            "out = []\n"
            "t = threading.Thread(target=out.append, args=('thread',)); t.start(); t.join()\n"
            "out.append(subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True)"
            ".stdout.strip())\n"
            "def square(x):\n    return x * x\n"
            "if __name__ == '__main__':\n"
            "    with multiprocessing.Pool(2) as pool:\n"
            "        out.append(sum(pool.map(square, range(4))))\n"
            "with tempfile.NamedTemporaryFile() as f:\n"
            "    out.append(f.name.startswith(os.getcwd()))\n"
            "out.append(len(os.urandom(4)))\n"
            "print(out)")
    r = run(server, code)
    assert r.ok, r.stderr
    assert r.stdout == "['thread', '42', 14, True, 4]\n"


def test_standard_library_only_unless_site_packages(server):
    pytest.importorskip("numpy")
    code = "import numpy; print(numpy.arange(4).sum())"
    assert "ModuleNotFoundError: No module named 'numpy'" in run(server, code).stderr
    with_site = run(server, code, limits=SandboxLimits(wall_time_s=10, memory_mb=512, site_packages=True))
    assert with_site.ok and with_site.stdout == "6\n", with_site.stderr


def test_concurrent_runs_from_threads(server):
    results: list[SandboxResult | None] = [None] * 4

    def work(i):
        results[i] = run(server, f"import os, time; time.sleep(0.2); print({i}, os.getuid())")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout.split()[0] for r in results] == ["0", "1", "2", "3"]
    if server.capabilities()["privilege_drop"]:  # each concurrent run holds a uid of its own
        assert len({r.stdout.split()[1] for r in results}) == 4


def test_session_keeps_variables_imports_and_functions(server):
    with PythonSession(LIMITS, server=server) as py:
        assert py.run("import math\nx = 20\ndef double(v):\n    return 2 * v").ok
        r = py.run("print(double(x) + 2)")
        assert r.ok and r.stdout == "42\n"
        assert py.run("math.floor(math.pi)").stdout == "3\n"
        assert py.alive


def test_session_displays_the_last_expression_like_a_notebook(server):
    with PythonSession(LIMITS, server=server) as py:
        assert py.run("1 + 1").stdout == "2\n"
        assert py.run("'text'").stdout == "'text'\n"  # the repr
        assert py.run("print('a')\n[1, 2][0] + 5").stdout == "a\n6\n"
        assert py.run("None").stdout == ""
        assert py.run("y = 3").stdout == ""
        assert py.run("y * 2;").stdout == ""  # a trailing semicolon suppresses the display
        assert py.run("_").stdout == "6\n"  # ... but _ still holds the last displayed value
        assert py.run("for i in range(2):\n    i").stdout == ""  # only a final top-level expression


def test_session_error_in_a_cell_keeps_the_state(server):
    with PythonSession(LIMITS, server=server) as py:
        py.run("x = 5")
        r = py.run("def f():\n    return missing\nf()")
        assert r.exit_code == 1 and r.error == "uncaught NameError" and py.alive
        assert 'File "<cell 2>", line 3' in r.stderr and "return missing" in r.stderr
        assert py.run("x").stdout == "5\n"


def test_session_restarts_after_a_crash_and_says_so(server):
    with PythonSession(LIMITS, files={"data.txt": "42"}, server=server) as py:
        py.run("x = 1")
        crash = py.run("import os; os._exit(3)")
        assert crash.exit_code == 3 and not py.alive
        after = py.run("print(open('data.txt').read())\nx")
        assert "interpreter restarted" in after.error and "exit code 3" in after.error
        assert after.stdout == "42\n"  # the files are there again...
        assert "NameError" in after.stderr  # ... the variables are not
        assert py.alive
        exited = py.run("exit(0)")
        assert exited.exit_code == 0 and not py.alive


def test_session_restart_and_close(server):
    py = PythonSession(LIMITS, server=server)
    py.run("x = 1")
    py.restart()
    r = py.run("'x' in dir()")
    assert r.stdout == "False\n" and r.error is None
    py.close()
    assert not py.alive
    with pytest.raises(RuntimeError, match="closed"):
        py.run("1")


def test_limits_are_validated_with_the_field_name():
    with pytest.raises(ValueError, match="wall_time_s"):
        SandboxLimits(wall_time_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=16)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=0)
    with pytest.raises(TypeError, match="network"):
        SandboxLimits(network="no")
    with pytest.raises(TypeError, match="memory_mb"):
        SandboxLimits(memory_mb=256.5)
    with pytest.raises(TypeError, match="cpu_time_s"):
        SandboxLimits(cpu_time_s=float("inf"))
    with pytest.raises(TypeError, match="max_processes"):
        SandboxLimits(max_processes=True)
    assert SandboxLimits(wall_time_s=1).cpu_time_s == 5.0


def test_result_ok():
    base = dict(stdout="", stderr="", oom=False, truncated=False, duration_s=0.0)
    assert SandboxResult(exit_code=0, timed_out=False, **base).ok
    assert not SandboxResult(exit_code=1, timed_out=False, **base).ok
    assert not SandboxResult(exit_code=None, timed_out=True, **base).ok


def test_capabilities_are_reported(server):
    caps = server.capabilities()
    for key in ("root", "privilege_drop", "pid_namespace", "network_namespace", "mount_namespace", "seccomp",
                "pids_cgroup", "memory_cgroup", "cpu_cgroup", "rlimit_nproc"):
        assert isinstance(caps[key], bool), key
    assert caps["network_isolation"] in ("namespace", "audit-hook")
    low, high = caps["uid_range"]
    assert low < high


def test_unknown_disable_name_is_rejected():
    with pytest.raises(ValueError, match="pid_namspace"):
        SandboxServer(disable=["pid_namspace"])
