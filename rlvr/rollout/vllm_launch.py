"""``python -m rlvr.rollout.vllm_launch ARGS``: vLLM's API server (the same ``ARGS`` as
``vllm.entrypoints.launchers.api_server.entry``) with the settings rlvr's sampling needs on
the platform the server finds itself on.

On a CPU, vLLM 0.32 cannot chunk the prefill of a request that has its own seed: when a chunk
ends mid-prompt it rewinds the request's generator, and a CPU ``torch.Generator`` has no offset
("CPU Generator does not use offset"). rlvr seeds every request (reproducible rollouts), so a
CPU server starts with chunked prefill off unless the command line says otherwise; vLLM then
raises its token budget per step to at least ``max_model_len``.

With ``RLVR_PARENT_PID`` set (rlvr's engines set it), the server's process group ends when
that process does, however it ends (SIGKILL included) and whichever of its threads started
the server: a thread here watches for the server being re-parented.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

CHUNKED_PREFILL_FLAGS = ("--enable-chunked-prefill", "--no-enable-chunked-prefill")


def platform_args(argv: list[str], on_cpu: bool) -> list[str]:
    """The flags to add to ``argv`` for a server on this platform."""
    if on_cpu and not any(arg.split("=")[0] in CHUNKED_PREFILL_FLAGS for arg in argv):
        return ["--no-enable-chunked-prefill"]
    return []


def watch_parent(parent: int, interval_s: float = 0.5, grace_s: float = 5.0) -> None:
    """End this process group (SIGTERM, then SIGKILL) once ``parent`` is no longer our parent."""
    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        group = os.getpgid(0)
        os.killpg(group, signal.SIGTERM)
        time.sleep(grace_s)
        os.killpg(group, signal.SIGKILL)

    threading.Thread(target=run, name="rlvr-parent-watch", daemon=True).start()


def main() -> None:
    parent = os.environ.get("RLVR_PARENT_PID", "")
    if parent.isdigit():
        watch_parent(int(parent))
    from vllm.platforms import current_platform

    sys.argv += platform_args(sys.argv[1:], bool(current_platform.is_cpu()))
    from vllm.entrypoints.launchers.api_server.entry import main as serve

    serve()


if __name__ == "__main__":
    main()
