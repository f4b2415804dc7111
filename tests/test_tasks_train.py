"""Every built-in generated task trains end to end by changing only the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.training.run_dir import RunDir

TASK_CONFIGS = {
    "addition": "{min_digits: 1, max_digits: 2}",
    "arithmetic": "{operations: ['+', '*'], num_operands: 2}",
    "countdown": "{num_numbers: 3}",
    "sort": "{mode: sort, max_length: 3}",
    "pointer_chase": "{num_nodes: 4, max_hops: 2}",
    "reasoning_gym": "{dataset: chain_sum, size: 200}",
}


@pytest.mark.parametrize("name", sorted(TASK_CONFIGS))
def test_task_trains_two_steps(tmp_path, tiny_overrides, name):
    pytest.importorskip("reasoning_gym") if name == "reasoning_gym" else None
    run_dir = tmp_path / name
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, f"task.name={name}",
            f"task.params={TASK_CONFIGS[name]}", "rl.steps=2", "eval.samples=2",
            "sft.steps=30", "sft.warmup_steps=0"]
    assert main(args) == 0
    state = RunDir(run_dir).load_state()
    assert state["completed_stages"] == ["sft", "rl"]
    sft = [m for m in RunDir(run_dir).read("metrics.jsonl") if m["stage"] == "sft"]
    # The task's demonstrations are learnable at all: 30 steps cut the loss by a quarter.
    assert sum(m["loss"] for m in sft[-5:]) / 5 < 0.75 * sft[0]["loss"]


def test_code_task_trains_from_a_problem_file(tmp_path, tiny_overrides):
    data = Path(__file__).parent / "data" / "code_asserts.jsonl"
    run_dir = tmp_path / "code"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "task.name=code",
            f"task.params={{path: '{data}', heldout_fraction: 0.3, timeout_s: 1.0}}", "model.max_position_embeddings=1024",
            "rl.steps=1", "rl.prompts_per_step=2", "sft.batch_size=4", "eval.problems=2", "eval.samples=0",
            "verifier.timeout_s=20"]
    assert main(args) == 0
    assert RunDir(run_dir).load_state()["completed_stages"] == ["sft", "rl"]
