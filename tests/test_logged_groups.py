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


def test_a_run_that_cannot_learn_says_why(tmp_path, tiny_overrides, capsys):
    """The tiny model after 4 SFT steps answers nothing readable: every group's rewards are
    equal (all 0), and after 3 such steps the run says so once, with the cause."""
    assert main(["train", "--output-dir", str(tmp_path / "run"), *tiny_overrides, "rl.steps=5"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "nothing is learned" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("rlvr: warning: RL steps 1-3: every group's rewards were equal")
    assert "answer format is unreachable" in lines[0] or "warm start is too weak" in lines[0]
    assert f"{tmp_path / 'run'}/samples.jsonl" in lines[0]


def test_the_cause_is_read_from_the_samples(tmp_path):
    from rlvr.training.rl import NoSignalWatch

    def batch(extracted, correct):
        out = _trajectories(groups=2, size=2)
        for t in out:
            t.extracted, t.correct = extracted, correct
        return out

    flat = {"zero_variance_groups": 1.0}
    for extracted, correct, cause in ((None, False, "answer format is unreachable"),
                                      ("7", False, "warm start is too weak"), ("7", True, "task is too easy")):
        watch = NoSignalWatch(tmp_path)
        said = [watch.observe({**flat, "step": s}, batch(extracted, correct)) for s in range(1, 6)]
        assert said[:2] == [None, None] and said[3:] == [None, None] and cause in said[2]
    watch = NoSignalWatch(tmp_path)  # a step with signal starts the count again
    records = [flat, flat, {"zero_variance_groups": 0.5}, flat, flat]
    assert all(watch.observe({**r, "step": s}, batch("7", False)) is None for s, r in enumerate(records, 1))
