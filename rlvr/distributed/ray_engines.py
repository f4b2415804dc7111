"""vLLM servers as Ray actors (``distributed.launcher: ray`` with ``rollout.vllm.mode: server``).

The Ray launcher reserves a placement-group bundle per server (``rollout.vllm.engines`` of
them, ``distributed.ray_cpus_per_engine`` CPUs each, and ``rollout.vllm.tensor_parallel_size``
GPUs on a GPU run) next to the ranks' bundles, and puts an ``EngineHost`` actor in each. Rank
0's server pool starts, watches, stops and restarts its servers exactly as it does on its own
machine; only the process it starts is a small proxy (``python -m rlvr.distributed.ray_engines
... -- SERVER ARGS``) that asks its host actor to run ``vllm serve`` (``rlvr.rollout.vllm_launch``)
in the actor's bundle, on the actor's node, and:

* relays the server's output (the pool's server log, with what "address already in use" or a
  crash says), and exits with the server's exit code when the server ends, so the pool's
  liveness probe, its error messages and its restart on the same port work unchanged;
* on SIGTERM (the pool closing or restarting a server), or once rank 0 is gone (however it
  ended), has the actor stop the server's process group, SIGTERM then SIGKILL;
* the server itself watches its actor (``RLVR_PARENT_PID``): an actor killed with the run's
  placement group takes its server with it.

The server listens on the actor node's address, which the launcher hands rank 0 with the
actor's name (``RLVR_RAY_ENGINES``). Weight files and the starting checkpoint travel by path:
servers on other nodes need ``rollout.vllm.weights_dir`` on a filesystem every node mounts.
Every call to an actor has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

ENV = "RLVR_RAY_ENGINES"  # {"address", "namespace", "hosts": [{"name", "ip"}], "env"}: set by the launcher
CALL_TIMEOUT_S = 60.0
POLL_S = 0.5


class EngineHost:
    """A Ray actor (threaded) holding one placement-group bundle: it runs one vLLM server at a
    time as its child process group and buffers its output for the proxy."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def node(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def serve(self, argv: list[str], env: dict[str, str]) -> int:
        """Start ``python -m rlvr.rollout.vllm_launch ARGV`` (after stopping a previous server)."""
        self.stop(5.0)
        child_env = {**env, "RLVR_PARENT_PID": str(os.getpid())}  # the server ends with this actor
        for name in ("CUDA_VISIBLE_DEVICES",):  # the devices Ray gave this actor, not the caller's
            if name in os.environ:
                child_env[name] = os.environ[name]
            else:
                child_env.pop(name, None)
        self.lines = []
        self.proc = subprocess.Popen([sys.executable, "-m", "rlvr.rollout.vllm_launch", *argv], env=child_env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        out = self.proc.stdout
        threading.Thread(target=lambda: [self.lines.append(line) for line in out], daemon=True).start()
        return int(self.proc.pid)

    def read(self) -> tuple[list[str], int | None]:
        """The output lines since the last call, and the exit code once the server has ended."""
        code = self.proc.poll() if self.proc is not None else None
        if code is not None:
            time.sleep(0.1)  # the reader thread takes the last lines
        lines = self.lines[:]
        del self.lines[:len(lines)]
        return lines, code

    def stop(self, grace_s: float) -> int | None:
        """End the server's process group: SIGTERM, then SIGKILL after ``grace_s``."""
        proc = self.proc
        if proc is None:
            return None
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)  # the API server's engine core too
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        return proc.returncode


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def hosts_from_env() -> dict[str, Any] | None:
    """The launcher's engine hosts (``RLVR_RAY_ENGINES``), None when servers start locally."""
    text = os.environ.get(ENV)
    return json.loads(text) if text else None


def proxy_command(index: int) -> list[str]:
    """The command prefix that runs server ``index`` on its host actor (the server's own
    arguments follow it; ``RLVR_RAY_ENGINES`` must be in its environment)."""
    return [sys.executable, "-m", "rlvr.distributed.ray_engines", "--engine", str(index), "--"]


def proxy(index: int, argv: list[str]) -> int:
    """Run ``argv`` as a vLLM server on engine host ``index``, relay its output, and return
    its exit code; SIGTERM, or our parent's end, stops it."""
    hosts = hosts_from_env()
    if hosts is None or not 0 <= index < len(hosts["hosts"]):
        print(f"rlvr.distributed.ray_engines: no engine host {index} in {ENV}", file=sys.stderr)
        return 2
    os.environ.update(hosts.get("env", {}))  # the cluster's auth mode, as the launcher connected (read on import)
    import logging

    import ray

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    parent = os.environ.get("RLVR_PARENT_PID", "")
    ray.init(address=hosts["address"], namespace=hosts["namespace"], include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=False)
    host = ray.get_actor(hosts["hosts"][index]["name"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in ("RLVR_PARENT_PID", ENV)}
    ray.get(host.serve.remote(argv, env), timeout=CALL_TIMEOUT_S)
    try:
        while True:
            lines, code = ray.get(host.read.remote(), timeout=CALL_TIMEOUT_S)
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
            if code is not None:
                return code
            if stopping or (parent.isdigit() and os.getppid() != int(parent)):
                break
            time.sleep(POLL_S)
    except BaseException:
        _stop(ray, host)
        raise
    code = _stop(ray, host)
    return 128 + signal.SIGTERM if code is None or code < 0 else code


def _stop(ray: Any, host: Any) -> int | None:
    try:
        return ray.get(host.stop.remote(5.0), timeout=CALL_TIMEOUT_S)  # within the pool's 10 s grace
    except Exception:  # noqa: BLE001 (a gone actor took its server with it)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description="run a vLLM server on an rlvr engine host actor")
    parser.add_argument("--engine", type=int, required=True, help="the index of the engine host in RLVR_RAY_ENGINES")
    parser.add_argument("server_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    sys.exit(proxy(args.engine, argv))


if __name__ == "__main__":
    main()
