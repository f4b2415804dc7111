"""Latency of the sandbox against starting a plain Python process.

    python benchmarks/bench_sandbox.py [--n 50]

Prints median and 90th-percentile milliseconds per call, and each row's ratio to the
baseline (``subprocess.run([python, "-c", code])``, no isolation at all), for a tiny program:

* ``python -I -S -c``: the same, isolated mode (no site-packages), a fairer floor;
* ``run_python``: the sandbox as used (the zygote keeps confined spares ready);
* ``run_python, no spares``: every call builds its namespaces, cgroups and processes;
* ``PythonSession.run``: one cell in a live interpreter.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from rlvr.sandbox import PythonSession, SandboxServer, run_python

CODE = "print(sum(range(100)))"


def cpu_seconds() -> float:
    """CPU time of this process and of every descendant it (transitively) waited for."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(make, n: int) -> tuple[list[float], float]:
    """Wall-clock seconds of each call, and CPU seconds per call over the row, counting the
    zygote, spares, supervisors and sandboxes too (they are reaped when the row's server closes)."""
    call, close = make()
    call()  # warm up: the zygote starts, caches fill
    cpu0 = cpu_seconds()
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
    close()
    return walls, (cpu_seconds() - cpu0) / n


def check(result) -> None:
    assert result.ok and result.stdout == "4950\n", result


def subprocess_row(*flags: str):
    return lambda: subprocess.run([sys.executable, *flags, "-c", CODE], capture_output=True, check=True), lambda: None


def sandbox_row(spares: int):
    server = SandboxServer(spares=spares)
    return lambda: check(run_python(CODE, server=server)), server.close


def session_row():
    server = SandboxServer()
    session = PythonSession(server=server)

    def close() -> None:
        session.close()
        server.close()
    return lambda: check(session.run(CODE)), close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="calls per row")
    n = parser.parse_args().n

    t0 = time.perf_counter()
    probe = SandboxServer()
    probe.capabilities()
    startup_ms = (time.perf_counter() - t0) * 1e3
    probe.close()
    rows = [
        ("subprocess python -c (baseline)", lambda: subprocess_row()),
        ("subprocess python -I -S -c", lambda: subprocess_row("-I", "-S")),
        ("run_python", lambda: sandbox_row(spares=2)),
        ("run_python, no spares", lambda: sandbox_row(spares=0)),
        ("PythonSession.run", session_row),
    ]
    results = []
    for name, make in rows:
        walls, cpu = measure(make, n)
        ms = sorted(1e3 * t for t in walls)
        results.append((name, statistics.median(ms), ms[int(0.9 * (len(ms) - 1))], 1e3 * cpu))

    base = results[0][1]
    print(f"sandbox latency, {n} calls per row, code: {CODE!r}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':34} {'median ms':>10} {'p90 ms':>8} {'vs baseline':>12} {'CPU ms/call':>12}")
    for name, median, p90, cpu_ms in results:
        print(f"{name:34} {median:10.2f} {p90:8.2f} {median / base:11.2f}x {cpu_ms:12.2f}")
    print(f"(one-off zygote start, probes included: {startup_ms:.0f} ms; CPU counts every process involved)")


if __name__ == "__main__":
    main()
