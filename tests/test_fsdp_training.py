"""`rlvr train --nproc 2 distributed.strategy=fsdp` end to end: two gloo ranks train an
FSDP2-sharded model through SFT and RL; rank 0 writes whole HF-format weights, and the
trainer state that exists only in shards (optimizer moments, KL reference) goes into the
step checkpoints sharded, a file per rank (torch.distributed.checkpoint). A run cut back to
its step-2 checkpoint resumes with the same ranks exactly (records and final weights equal
to the uninterrupted run's), and with one process it still finishes; an SFT stopped by
SIGTERM resumes from its sharded step checkpoint exactly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from rank_runs import rank_env, records, rlvr, without_timings

OVERRIDES = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
             "sft.steps=4", "sft.batch_size=8", "rl.steps=4", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
             "rl.mini_batches=2", "rl.micro_batch_size=3", "rollout.max_new_tokens=12", "eval.problems=8",
             "eval.samples=2", "eval.every=0", "checkpoint.every=2", "logging.progress=false",
             "algorithm.entropy.coef=0.01", "algorithm.kl.coef=0.05", "distributed.strategy=fsdp"]






def _cut_back_to_step_2(root: Path, name: str) -> Path:
    """A copy of the uninterrupted run as a kill right after its step-2 RL checkpoint leaves
    it: no final checkpoint, no state.json (the resume takes the checkpoint's state and cuts
    the logs back to it)."""
    run = root / name
    shutil.copytree(root / "a", run)
    shutil.rmtree(run / "checkpoints" / "final")
    (run / "state.json").unlink()
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    done = rlvr("train", "--nproc", "2", "--output-dir", str(root / "a"), *OVERRIDES, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_fsdp_ranks_train_end_to_end_with_whole_checkpoints(uninterrupted):
    root, done = uninterrupted
    run = root / "a"
    assert "(2 trainer ranks)" in done.stdout and done.stdout.count("held-out accuracy:") == 1
    metrics = records(run, "metrics.jsonl")
    assert [m["step"] for m in metrics if m["stage"] == "rl"] == [1, 2, 3, 4]
    assert [e["phase"] for e in records(run, "eval.jsonl")] == ["warmstart", "final"]
    # whole HF-format weights, loadable by one process
    final = load_file(run / "checkpoints" / "final" / "model.safetensors")
    step2 = load_file(run / "checkpoints" / "rl-step-000002" / "model.safetensors")
    sft = load_file(run / "checkpoints" / "sft-final" / "model.safetensors")
    assert final["model.layers.0.self_attn.q_proj.weight"].shape == (32, 32)
    assert not torch.equal(final["model.layers.1.mlp.up_proj.weight"], step2["model.layers.1.mlp.up_proj.weight"])
    assert not torch.equal(step2["model.layers.1.mlp.up_proj.weight"], sft["model.layers.1.mlp.up_proj.weight"])
    # the trainer state that lives in shards (Adam moments, KL reference) written sharded, a file per rank
    checkpoint = run / "checkpoints" / "rl-step-000002"
    trainer = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert trainer["learners"]["shards"] == "trainer_shards" and "optimizer" not in trainer["learners"]
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert {"trainer_shards/.metadata", "trainer_shards/__0_0.distcp", "trainer_shards/__1_0.distcp"} <= manifest.keys()
    stored = FileSystemReader(str(checkpoint / "trainer_shards")).read_metadata().state_dict_metadata
    for key in ("optimizer.state.model.layers.1.mlp.up_proj.weight.exp_avg", "reference.model.layers.1.mlp.up_proj.weight"):
        halves = [(tuple(c.offsets), tuple(c.sizes)) for c in stored[key].chunks]  # rank 0's rows, rank 1's rows
        assert tuple(stored[key].size) == (64, 32) and halves == [((0, 0), (32, 32)), ((32, 0), (32, 32))], halves
    assert not list((run / "checkpoints").glob(".*"))  # no shard folder left behind


def test_fsdp_resume_with_the_same_ranks_is_exact(uninterrupted):
    root, _ = uninterrupted
    run = _cut_back_to_step_2(root, "b")
    resumed = rlvr("train", "--nproc", "2", "--resume", str(run), cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from checkpoints/rl-step-000002" in resumed.stdout
    a = root / "a"
    assert without_timings(records(run, "metrics.jsonl")) == without_timings(records(a, "metrics.jsonl"))
    assert records(run, "eval.jsonl") == records(a, "eval.jsonl")
    wa = load_file(a / "checkpoints" / "final" / "model.safetensors")
    wb = load_file(run / "checkpoints" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp_run_resumes_in_one_process(uninterrupted):
    root, _ = uninterrupted
    run = _cut_back_to_step_2(root, "c")
    resumed = rlvr("train", "--resume", str(run), cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in records(run, "metrics.jsonl") if m["stage"] == "rl"] == [1, 2, 3, 4]
    assert (run / "checkpoints" / "final" / "model.safetensors").exists()


def test_fsdp_with_float16_is_one_line_before_any_rank_starts(tmp_path):
    done = rlvr("train", "--nproc", "2", "--output-dir", str(tmp_path / "x"), "distributed.strategy=fsdp",
                 "model.dtype=float16", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "use bfloat16 or float32" in done.stderr
    assert not (tmp_path / "x").exists()


SFT_ONLY = [*OVERRIDES, "stages=[sft]", "sft.steps=40"]


def test_fsdp_sft_sigterm_then_resume_is_exact(tmp_path):
    whole = rlvr("train", "--nproc", "2", "--output-dir", str(tmp_path / "a"), *SFT_ONLY, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "b"
    child = subprocess.Popen([sys.executable, "-m", "rlvr", "train", "--nproc", "2", "--output-dir", str(run),
                              *SFT_ONLY], cwd=tmp_path, env=rank_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "sft-step-000002").is_dir():
        assert child.poll() is None and time.time() < deadline, "the run ended before its step-2 checkpoint"
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=120)
    assert child.returncode != 0 and "sft" not in json.loads((run / "state.json").read_text())["completed_stages"]
    resumed = rlvr("train", "--nproc", "2", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: continuing from checkpoints/sft-step-" in resumed.stdout
    a = tmp_path / "a"
    assert without_timings(records(run, "metrics.jsonl")) == without_timings(records(a, "metrics.jsonl"))
    wa = load_file(a / "checkpoints" / "sft-final" / "model.safetensors")
    wb = load_file(run / "checkpoints" / "sft-final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
