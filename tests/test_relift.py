"""ReLIFT (rl.relift): exactly the problems whose every sample failed are buffered, each
with the task's demonstration; a full buffer gives one fine-tuning update whose loss is the
demonstrations' negative log-likelihood; the buffer survives a crash and the resume is
exact."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks import Problem
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.pipeline import new_run_dir, run_pipeline
from rlvr.training.relift import ReliftBuffer, hardest_problems
from rlvr.training.rl import Learner
from rlvr.training.run_dir import RunDir

from crash_resume import crash_in_rl_step_then_resume, rl_records

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "logging.samples_per_step=16", "threads=1"]


def _trajectory(problem: str, group: int, correct: bool) -> Trajectory:
    return Trajectory(problem=Problem(id=problem, prompt="x", answer="1"), group=group, prompt_ids=[5],
                      response_ids=[6], logprobs=[-1.0], loss_mask=[1], finish_reason="stop", correct=correct)


def test_hardest_problems_are_the_groups_without_a_correct_sample():
    trajectories = [_trajectory("a", 0, False), _trajectory("a", 0, False), _trajectory("b", 1, False),
                    _trajectory("b", 1, True), _trajectory("c", 2, False), _trajectory("c", 2, False)]
    assert [p.id for p in hardest_problems(trajectories)] == ["a", "c"]
    assert hardest_problems([_trajectory("d", 0, True)]) == []


def test_fine_tuning_loss_is_the_demonstrations_nll():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    learner = Learner.build(model, load_config(None, ["threads=1", "rl.relift.buffer=4"]), tokenizer.pad_token_id)
    batch = make_token_batch([[5, 6, 7], [8, 9]], [[10, 11, 2], [12, 2]], tokenizer.pad_token_id)
    with torch.no_grad():
        logp = token_logprobs(model, batch)[0]
    expected = float(-(logp * batch.target_mask).sum() / batch.target_mask.sum())  # 5 demonstration tokens
    before = model.lm_head.weight.detach().clone()
    out = learner.fine_tune(batch, 1e-3, 0)
    assert out["relift_loss"] == pytest.approx(expected, rel=1e-6) and out["relift_skipped"] == 0.0
    assert not torch.equal(before, model.lm_head.weight)


def test_relift_trains_on_exactly_the_failed_problems(tmp_path, monkeypatch):
    taken: list[list[str]] = []
    original = ReliftBuffer.take

    def recording(self, tokenizer, step):
        taken.append([p.id for p in self.problems])
        return original(self, tokenizer, step)

    monkeypatch.setattr(ReliftBuffer, "take", recording)
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TINY, "rl.steps=6", "checkpoint.every=10",
                 "rl.relift.buffer=6"]) == 0
    samples = [s for s in RunDir(run).read("samples.jsonl") if s["stage"] == "rl"]
    failed_by_step: dict[int, list[str]] = {}
    for step in sorted({s["step"] for s in samples}):
        groups: dict[str, list[bool]] = {}
        for s in samples:
            if s["step"] == step:
                groups.setdefault(s["problem_id"], []).append(s["correct"])
        failed_by_step[step] = [pid for pid, correct in groups.items() if not any(correct)]
    metrics = [r for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]
    # every step's failed problems, in order, split where the buffer reached 6
    expected, pending = [], []
    for step, record in zip(sorted(failed_by_step), metrics):
        pending += [pid for pid in failed_by_step[step] if pid not in pending]
        if len(pending) >= 6:
            expected.append(pending)
            pending = []
        assert record["relift_buffered"] == len(pending)
    assert taken == expected and len(taken) >= 1
    assert metrics[-1]["relift_demonstrations"] == sum(map(len, taken))
    assert metrics[-1]["relift_updates"] == len(taken)


def test_relift_resumes_exactly_after_a_crash(tmp_path, monkeypatch):
    config = load_config(None, [*TINY, "rl.steps=5", "checkpoint.every=2", "rl.relift.buffer=6"])
    straight = new_run_dir(config, str(tmp_path / "straight"), "t")
    run_pipeline(config, straight)
    crashed = crash_in_rl_step_then_resume(config, tmp_path / "crashed", monkeypatch)
    a = rl_records(straight.path)
    assert a == rl_records(crashed)
    assert a[2]["relift_buffered"] > 0  # the checkpoint at step 2 held a part-full buffer... or the updates ran
    assert a[-1]["relift_updates"] >= 1
    assert json.loads((straight.path / "summary.json").read_text())["final_accuracy"] == \
        json.loads((crashed / "summary.json").read_text())["final_accuracy"]


def test_relift_with_a_multi_turn_environment_is_one_line_before_any_work(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "run"), *TINY, "rl.relift.buffer=4",
                 "rollout.environment.name=try_again"]) == 2
    err = capsys.readouterr().err
    assert "rl.relift.buffer=4" in err and "single-turn" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
