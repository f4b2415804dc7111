"""RL through the real vLLM engine (colocated, in-process), end to end on CPU: the
issue's "done when" run on a random Qwen2-shaped checkpoint with a BPE ChatML tokenizer,
and a warm-started tiny model whose reward under vLLM tracks the own engine's.
Skipped where vLLM is not installed (CI runs it in the vllm environment, see .ci/run)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from rlvr.cli import main  # noqa: E402
from rlvr.models.random_checkpoint import write_random_checkpoint  # noqa: E402


def _records(run_dir, stage="rl"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["stage"] == stage]


@pytest.mark.parametrize("mode", ["colocated", "server"])
def test_rl_on_a_random_qwen2_chatml_checkpoint_through_vllm(tmp_path, mode):
    checkpoint = write_random_checkpoint(tmp_path / "qwen2-tiny", shape="qwen2-tiny")
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), f"model.path={checkpoint}", "stages=[rl]",
                 "rollout.engine=vllm", f"rollout.vllm.mode={mode}", "rl.steps=3", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
                 "rollout.max_new_tokens=16", "eval.problems=8", "eval.samples=2", "logging.progress=false",
                 "threads=1", "reward.shaping=[{name: random_reward}]"]) == 0
    records = _records(run_dir)
    assert len(records) == 3
    for r in records:
        # every sync verified by checksum (rollout.vllm.verify_every=1), log-probs the trainer's
        assert r["logprob_gap_mean"] < 1e-4 and r["grad_norm"] > 0
        assert r["tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)  # TIS on by default with vllm


def test_lora_rl_through_vllm_samples_from_the_merged_weights(tmp_path):
    # LoRA adapters that move fast (rl.lr 0.05): had the engine kept the base weights, or the
    # weights without the adapters merged, its log-probs would part from the trainer's after
    # the first update; each sync is also checksum-verified against the merged tensors
    checkpoint = write_random_checkpoint(tmp_path / "qwen2-tiny", shape="qwen2-tiny")
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), f"model.path={checkpoint}", "stages=[rl]",
                 "rollout.engine=vllm", "model.lora.r=8", "rl.lr=0.05", "rl.steps=3", "rl.prompts_per_step=4",
                 "rl.samples_per_prompt=4", "rollout.max_new_tokens=16", "eval.problems=8", "eval.samples=2",
                 "logging.progress=false", "threads=1", "reward.shaping=[{name: random_reward}]"]) == 0
    records = _records(run_dir)
    assert len(records) == 3 and all(r["grad_norm"] > 0 for r in records)
    assert all(r["logprob_gap_mean"] < 1e-4 for r in records), [r["logprob_gap_mean"] for r in records]


def test_reward_under_vllm_tracks_the_own_engine(tmp_path):
    common = ["sft.steps=150", "rl.steps=12", "eval.problems=40", "eval.samples=2", "logging.progress=false",
              "task.params={min_digits: 1, max_digits: 2, teacher_carry_error: 0.6}"]
    assert main(["train", "--output-dir", str(tmp_path / "own"), *common]) == 0
    assert main(["train", "--output-dir", str(tmp_path / "vllm"), *common, "rollout.engine=vllm"]) == 0
    own, vllm = _records(tmp_path / "own"), _records(tmp_path / "vllm")

    def mean(rs):
        return sum(r["reward_mean"] for r in rs) / len(rs)

    # the same SFT model, the same prompts, other sampling draws: the reward curves agree in
    # level (12 steps are too few for a trend on this task; the default recipe's full run,
    # measured by hand, is in the issue notes)
    assert 0.2 < mean(own) < 0.9 and abs(mean(own) - mean(vllm)) < 0.1
    assert all(r["logprob_gap_mean"] < 1e-4 for r in vllm)
