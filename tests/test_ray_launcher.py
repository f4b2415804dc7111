"""`distributed.launcher: ray`: `rlvr train --nproc 2` with the trainer ranks as Ray actors on
a local Ray cluster (rlvr.distributed.ray_launch): the same run as torchrun's (rank 0 alone
writes, its output relayed unprefixed), SIGTERM to the launcher stops every rank and leaves
no rank process behind, `--resume` continues exactly, a killed rank ends the run with an
error, and ranks Ray cannot place are one line. Skipped without Ray (CI installs the extra)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from safetensors.torch import load_file  # noqa: E402

from rank_runs import rank_env, records, without_timings  # noqa: E402

OVERRIDES = ["distributed.launcher=ray", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
             "model.intermediate_size=64", "sft.steps=6", "sft.batch_size=8", "rl.steps=8", "rl.prompts_per_step=4",
             "rl.samples_per_prompt=4", "rl.mini_batches=2", "rl.micro_batch_size=4", "rollout.max_new_tokens=12",
             "eval.problems=8", "eval.samples=2", "eval.every=0", "checkpoint.every=2", "logging.progress=false"]






def _ranks_running(run: Path) -> list[int]:
    """Trainer rank processes of ``run`` still alive (their command line names the run dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if b"rlvr" in cmdline and str(run).encode() in cmdline and b"\0RANK=" in b"\0" + environ:
                found.append(int(entry))
    return found


def _start(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlvr", "train", "--nproc", "2", "--output-dir", str(run),
                             *OVERRIDES, *extra], cwd=run.parent, env=rank_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_ranks")
    child = _start(root / "a")
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-3000:]
    return root, out


def test_ray_places_two_ranks_and_rank_0_alone_writes(uninterrupted):
    root, out = uninterrupted
    run = root / "a"
    assert "layout: 2 trainer ranks (placed by Ray, gloo, cpu; replicated model and optimizer)" in out
    assert out.count("held-out accuracy:") == 1 and out.count("SFT 6/6") == 1 and "[rank 1]" not in out
    metrics = records(run, "metrics.jsonl")
    assert [m["step"] for m in metrics if m["stage"] == "rl"] == list(range(1, 9))
    assert all(m["samples_generated"] == 16 for m in metrics if m["stage"] == "rl")
    assert [e["phase"] for e in records(run, "eval.jsonl")] == ["warmstart", "final"]
    assert not _ranks_running(run)


def _wait_for(path: Path, child: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not path.is_dir():
        assert child.poll() is None and time.time() < deadline, f"the run ended before {path.name}"
        time.sleep(0.05)


def test_sigterm_stops_every_rank_and_resume_continues_exactly(uninterrupted):
    root, _ = uninterrupted
    run = root / "b"
    child = _start(run)
    _wait_for(run / "checkpoints" / "rl-step-000002", child)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=180)
    assert child.returncode == 143, err[-2000:]
    assert "rl" not in json.loads((run / "state.json").read_text())["completed_stages"]
    assert "continue from the last checkpoint with `rlvr train --nproc 2 --resume" in err
    assert not _ranks_running(run)
    resumed = subprocess.run([sys.executable, "-m", "rlvr", "train", "--nproc", "2", "--resume", str(run)],
                             cwd=root, env=rank_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "placed by Ray" in resumed.stdout  # the run's own config says ray
    a = root / "a"
    assert without_timings(records(run, "metrics.jsonl")) == without_timings(records(a, "metrics.jsonl"))
    wa = load_file(a / "checkpoints" / "final" / "model.safetensors")
    wb = load_file(run / "checkpoints" / "final" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_a_killed_rank_ends_the_run(tmp_path):
    run = tmp_path / "c"
    child = _start(run, "distributed.timeout_s=60")
    _wait_for(run / "checkpoints" / "rl-step-000002", child)
    victims = [pid for pid in _ranks_running(run)
               if b"\0RANK=1\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()]
    assert victims
    os.kill(victims[0], signal.SIGKILL)
    _, err = child.communicate(timeout=180)
    assert child.returncode != 0 and "the trainer ranks stopped" in err
    assert not _ranks_running(run)


def test_ranks_ray_cannot_place_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rlvr", "train", "--nproc", "2", "--output-dir", str(tmp_path / "d"),
                           *OVERRIDES, "distributed.ray_cpus_per_rank=512", "distributed.timeout_s=5"],
                          cwd=tmp_path, env=rank_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    line = [x for x in done.stderr.splitlines() if "Ray could not place" in x]
    assert line and "{'CPU': 512.0} each within distributed.timeout_s=5 s" in line[0]
    assert not (tmp_path / "d").exists()
