"""`rlvr train --nproc 2`: two gloo trainer ranks under torchrun, end to end, from a fresh
shell. Rank 0 alone writes the run directory (every record once); SIGTERM stops every rank
with the last checkpoint kept; `--resume` with the same ranks continues exactly (records and
weights equal to an uninterrupted run's), and with another number of ranks it still
finishes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rank_runs import rank_env, records, rlvr, without_timings

OVERRIDES = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
             "sft.steps=6", "sft.batch_size=8", "rl.steps=10", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
             "rl.mini_batches=2", "rl.micro_batch_size=4", "rollout.max_new_tokens=12", "eval.problems=8",
             "eval.samples=2", "eval.every=0", "checkpoint.every=2", "logging.progress=false"]








@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    done = rlvr("train", "--nproc", "2", "--output-dir", str(root / "a"), *OVERRIDES, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_two_ranks_train_end_to_end_and_rank_0_alone_writes(uninterrupted):
    root, done = uninterrupted
    run = root / "a"
    assert "run dir: " in done.stdout and "(2 trainer ranks)" in done.stdout
    assert "layout: 2 trainer ranks (gloo, cpu; replicated model and optimizer); rollouts: the 'kv_cache' engine " \
           "inside each trainer rank" in done.stdout
    assert done.stdout.count("held-out accuracy:") == 1 and done.stdout.count("SFT 6/6") == 1
    metrics = records(run, "metrics.jsonl")
    assert [m["step"] for m in metrics if m["stage"] == "sft"] == list(range(1, 7))
    assert [m["step"] for m in metrics if m["stage"] == "rl"] == list(range(1, 11))
    assert [e["phase"] for e in records(run, "eval.jsonl")] == ["warmstart", "final"]
    rl = [m for m in metrics if m["stage"] == "rl"]
    assert all(m["samples_generated"] == 16 for m in rl) and "time_gather" in rl[0]
    # every group whole: 4 samples per problem in the logged groups
    samples = [s for s in records(run, "samples.jsonl") if s["stage"] == "rl"]
    per_problem = {}
    for s in samples:
        per_problem.setdefault((s["step"], s["problem_id"]), []).append(s)
    assert all(len(group) % 4 == 0 for group in per_problem.values())
    assert json.loads((run / "summary.json").read_text())["final_checkpoint"].endswith("checkpoints/final")


def _interrupted(root: Path, name: str) -> Path:
    """A two-rank run stopped by SIGTERM once its step-2 RL checkpoint exists."""
    run = root / name
    child = subprocess.Popen([sys.executable, "-m", "rlvr", "train", "--nproc", "2", "--output-dir", str(run),
                              *OVERRIDES], cwd=root, env=rank_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "rl-step-000002").is_dir():
        assert child.poll() is None and time.time() < deadline, "the run ended before its step-2 checkpoint"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    state = json.loads((run / "state.json").read_text())
    assert child.returncode != 0 and "rl" not in state["completed_stages"], err[-2000:]
    return run


def test_sigterm_stops_every_rank_and_resume_continues_exactly(uninterrupted):
    root, _ = uninterrupted
    run = _interrupted(root, "b")
    resumed = rlvr("train", "--nproc", "2", "--resume", str(run), cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from checkpoints/rl-step-" in resumed.stdout
    a, b = root / "a", run
    assert without_timings(records(b, "metrics.jsonl")) == without_timings(records(a, "metrics.jsonl"))
    assert records(b, "eval.jsonl") == records(a, "eval.jsonl")
    wa = load_file(a / "checkpoints" / "final" / "model.safetensors")
    wb = load_file(b / "checkpoints" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_resume_with_another_number_of_ranks_finishes(uninterrupted):
    root, _ = uninterrupted
    run = _interrupted(root, "c")
    resumed = rlvr("train", "--resume", str(run), cwd=root)  # one process now
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in records(run, "metrics.jsonl") if m["stage"] == "rl"] == list(range(1, 11))


def test_two_nodes_of_one_rank_each_train_as_two_ranks_on_one_node(uninterrupted):
    """`--nnodes 2 --node-rank R --master-addr --master-port` (torchrun's static rendezvous),
    the two "machines" being two commands on this one, each from its own working directory,
    the run directory on a filesystem both see: the same records as `--nproc 2`."""
    root, _ = uninterrupted
    run = root / "nodes"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    nodes = []
    for node in (0, 1):
        (root / f"node{node}").mkdir()
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "rlvr", "train", "--nproc", "1", "--nnodes", "2", "--node-rank", str(node),
             "--master-addr", "127.0.0.1", "--master-port", port, "--output-dir", str(run), *OVERRIDES, "threads=1"],
            cwd=root / f"node{node}", env=rank_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "(2 trainer ranks)" in outs[0][0] and "held-out accuracy:" in outs[0][0]
    assert "held-out accuracy:" not in outs[1][0]  # rank 1 prints nothing of the run
    a = root / "a"
    assert without_timings(records(run, "metrics.jsonl")) == without_timings(records(a, "metrics.jsonl"))
    assert records(run, "eval.jsonl") == records(a, "eval.jsonl")
    assert not list((root / "node1").iterdir())  # the run directory is the one named, not a node's own


def test_a_mistake_is_one_line_before_any_rank_starts(tmp_path):
    done = rlvr("train", "--nproc", "2", "--output-dir", str(tmp_path / "x"), "rl.stepz=3", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "rl.stepz" in done.stderr
    assert "torch.distributed" not in done.stderr and not (tmp_path / "x").exists()
    small = rlvr("train", "--nproc", "2", "sft.batch_size=1", cwd=tmp_path)
    assert small.returncode == 2 and "smaller than the 2 trainer ranks" in small.stderr
    for bad, said in ((["--nproc", "0"], "--nproc must be >= 1, got 0"),
                      (["--nnodes", "2", "--node-rank", "2"], "--node-rank 2 must be < --nnodes 2")):
        done = rlvr("train", *bad, "--output-dir", str(tmp_path / "y"), cwd=tmp_path)
        assert done.returncode == 2 and said in done.stderr and not (tmp_path / "y").exists()
