"""What the end-to-end tests of trainer ranks share: a clean environment for `python -m rlvr`
(no torchrun variables leaking in from the test process), the run directory's JSONL
records, and records compared with their wall-clock timings left out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TIMINGS = ("step_time", "tokens_per_s", "rl_seconds_total")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS")


def rank_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    return {**env, "RLVR_NO_WARMSTART_CACHE": "1", "PYTHONUNBUFFERED": "1", **extra}


def rlvr(*args: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """``python -m rlvr ARGS`` in ``cwd``, output captured."""
    return subprocess.run([sys.executable, "-m", "rlvr", *args], cwd=cwd, env=rank_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def records(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines() if line.strip()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS and not k.startswith("time_")} for r in rows]


def vllm_servers() -> list[int]:
    """Process ids of running vLLM servers that rlvr started (their command line names rlvr's
    launcher and a server pool's base checkpoint)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"rlvr.rollout.vllm_launch" in cmdline and b"rlvr-vllm-pool-" in cmdline:
                found.append(int(entry))
    return found
