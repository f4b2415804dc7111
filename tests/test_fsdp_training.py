"""`rlvr train --nproc 2 distributed.strategy=fsdp` end to end: two gloo ranks train an
FSDP2-sharded model through SFT and RL; rank 0 writes whole HF-format checkpoints (the step
checkpoints with the gathered trainer state); a run cut back to its step-2 checkpoint
resumes with the same ranks exactly (records and final weights equal to the uninterrupted
run's), and with one process it still finishes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rank_runs import records, rlvr, without_timings

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
    # whole HF-format weights, loadable by one process; the step checkpoint's trainer state whole too
    final = load_file(run / "checkpoints" / "final" / "model.safetensors")
    step2 = load_file(run / "checkpoints" / "rl-step-000002" / "model.safetensors")
    sft = load_file(run / "checkpoints" / "sft-final" / "model.safetensors")
    assert final["model.layers.0.self_attn.q_proj.weight"].shape == (32, 32)
    assert not torch.equal(final["model.layers.1.mlp.up_proj.weight"], step2["model.layers.1.mlp.up_proj.weight"])
    assert not torch.equal(step2["model.layers.1.mlp.up_proj.weight"], sft["model.layers.1.mlp.up_proj.weight"])
    trainer = torch.load(run / "checkpoints" / "rl-step-000002" / "trainer_state.pt", weights_only=False)
    assert "reference" in trainer["learners"]  # the sharded KL reference, gathered
    moments = trainer["learners"]["optimizer"]["state"]
    assert all(type(m["exp_avg"]) is torch.Tensor for m in moments.values())
    assert sum(m["exp_avg"].numel() for m in moments.values()) == sum(
        t.numel() for k, t in final.items() if k != "lm_head.weight")  # every parameter's moments, whole


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
