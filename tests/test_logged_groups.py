"""samples.jsonl holds whole GRPO groups per RL step (every sample of a prompt), each with its
reward and the advantage the learner trained it with."""

from __future__ import annotations

import statistics
from collections import defaultdict

from rlvr.cli import main
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks import Problem
from rlvr.training.rl import logged_groups
from rlvr.training.run_dir import RunDir


def _trajectories(groups: int, size: int) -> list[Trajectory]:
    problems = [Problem(id=str(g), prompt="p", answer="a") for g in range(groups)]
    return [Trajectory(problem=problems[g], group=g, prompt_ids=[1], response_ids=[2], logprobs=[0.0],
                       loss_mask=[1], finish_reason="eos") for g in range(groups) for _ in range(size)]


def test_whole_groups_spread_over_the_batch():
    batch = _trajectories(groups=8, size=4)
    assert [t.group for t in logged_groups(batch, 8)] == [0] * 4 + [4] * 4
    assert [t.group for t in logged_groups(batch, 17)] == [0] * 4 + [2] * 4 + [4] * 4 + [6] * 4
    assert [t.group for t in logged_groups(batch, 1)] == [0] * 4  # at least one group
    assert logged_groups(batch, 0) == [] and logged_groups([], 8) == []
    assert len(logged_groups(batch, 1000)) == 32


def test_samples_jsonl_has_whole_groups_with_their_advantages(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "logging.samples_per_step=8",
                 "reward.shaping=[{name: random_reward}]"]) == 0  # rewards that differ within groups
    samples = [s for s in RunDir(run_dir).read("samples.jsonl") if s["stage"] == "rl"]
    by_group = defaultdict(list)
    for s in samples:
        by_group[s["step"], s["group"]].append(s)
    assert len(by_group) == 2 * 4  # 4 steps x 2 groups of 4 (samples_per_step 8)
    assert any(len({s["reward"] for s in members}) > 1 for members in by_group.values())  # nonzero advantages
    for members in by_group.values():
        assert len(members) == 4 and len({s["problem_id"] for s in members}) == 1
        rewards = [s["reward"] for s in members]
        if len(set(rewards)) == 1:  # equal rewards: GRPO's advantage is exactly 0
            expected = [0.0] * 4
        else:
            mean, std = statistics.mean(rewards), statistics.stdev(rewards)
            expected = [(r - mean) / (std + 1e-6) for r in rewards]
        for s, want in zip(members, expected):
            assert abs(s["advantage"] - want) < 1e-4, (s["reward"], s["advantage"], want)
