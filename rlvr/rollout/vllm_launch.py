"""``python -m rlvr.rollout.vllm_launch ARGS``: vLLM's API server (the same ``ARGS`` as
``vllm.entrypoints.launchers.api_server.entry``) with the settings rlvr's sampling needs on
the platform the server finds itself on.

On a CPU, vLLM 0.32 cannot chunk the prefill of a request that has its own seed: when a chunk
ends mid-prompt it rewinds the request's generator, and a CPU ``torch.Generator`` has no offset
("CPU Generator does not use offset"). rlvr seeds every request (reproducible rollouts), so a
CPU server starts with chunked prefill off unless the command line says otherwise; vLLM then
raises its token budget per step to at least ``max_model_len``.
"""

from __future__ import annotations

import sys

CHUNKED_PREFILL_FLAGS = ("--enable-chunked-prefill", "--no-enable-chunked-prefill")


def platform_args(argv: list[str], on_cpu: bool) -> list[str]:
    """The flags to add to ``argv`` for a server on this platform."""
    if on_cpu and not any(arg.split("=")[0] in CHUNKED_PREFILL_FLAGS for arg in argv):
        return ["--no-enable-chunked-prefill"]
    return []


def main() -> None:
    from vllm.platforms import current_platform

    sys.argv += platform_args(sys.argv[1:], bool(current_platform.is_cpu()))
    from vllm.entrypoints.launchers.api_server.entry import main as serve

    serve()


if __name__ == "__main__":
    main()
