"""Mistakes in the rollout-server settings are one line naming the field, before any work
(no vLLM needed: the checks run before vLLM is imported)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("overrides, said", [
    (["rollout.vllm.engines=2"], "rollout.vllm.engines=2 needs rollout.vllm.mode=server"),
    (["rollout.vllm.mode=server", "rollout.vllm.url=localhost:8000"],
     "rollout.vllm.url: 'localhost:8000' is not a comma-separated list of http(s):// URLs"),
    (["rollout.vllm.mode=server", "rollout.vllm.url='http://a:1,http://b:2'", "rollout.vllm.engines=3"],
     "rollout.vllm.engines=3 but rollout.vllm.url names 2 server(s)"),
    (["rollout.vllm.mode=server", "rollout.vllm.weights_dir=/no/such/dir"],
     "rollout.vllm.weights_dir: /no/such/dir is not a directory"),
])
def test_server_settings_mistakes_are_one_line(tmp_path, overrides, said):
    done = subprocess.run([sys.executable, "-m", "rlvr", "train", "--output-dir", str(tmp_path / "run"),
                           "rollout.engine=vllm", *overrides], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert said in done.stderr and not (tmp_path / "run").exists()


def test_the_log_of_a_server_closed_meanwhile_reads_as_removed(tmp_path):
    """A lost server's error reads its log while the pool may already be closing it (its
    restart removes the log): the error must still be made, not fail on the missing file."""
    from rlvr.rollout.vllm_server import VLLMServerEngine

    server = object.__new__(VLLMServerEngine)  # no process: only the log is looked at
    server.log_path = str(tmp_path / "server.log")
    (tmp_path / "server.log").write_text("a\nPOST Route: /v1/completions\nb\n")
    assert server.log_tail() == "a\nb"
    (tmp_path / "server.log").unlink()
    assert server.log_tail() == "(the log was removed: the server has been closed)"
