"""Process rewards on the addition scratchpad: each column step checked against the right
one, aggregated by hand, placed on the steps' last tokens (with Delta's telescoping sum), and
carried into the learner's token rewards."""

from __future__ import annotations

import pytest

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rewards.process import decoded_ends, process_reward, step_token_rewards
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks import Problem
from rlvr.tasks.addition import AdditionTask, scratchpad_step_checks
from rlvr.training.rl import Learner
from rlvr.training.run_dir import RunDir

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1"]
# 275 + 48 = 323: columns 5+8=13, 7+4+1=12, 2+0+1=3
RIGHT = "5+8=13 7+4+1=12 2+0+1=3 => 323"
FORGOT_A_CARRY = "5+8=13 7+4=11 2+0+1=3 => 313"


def test_each_column_step_is_checked_against_the_right_one():
    assert scratchpad_step_checks(275, 48, RIGHT) == [(6, 1.0), (15, 1.0), (23, 1.0), (30, 1.0)]
    # the second column forgot the carry; the third is right again; the answer is wrong
    assert scratchpad_step_checks(275, 48, FORGOT_A_CARRY) == [(6, 1.0), (13, 0.0), (21, 1.0), (28, 0.0)]
    assert scratchpad_step_checks(275, 48, "5+8=13 junk") == [(6, 1.0), (11, 0.0)]  # no answer step
    assert scratchpad_step_checks(275, 48, "") == []


@pytest.mark.parametrize("aggregate, expected", [("min", 0.0), ("last", 0.0), ("mean", 0.5), ("product", 0.0)])
def test_the_process_component_aggregates_the_steps(aggregate, expected):
    task = AdditionTask(AdditionTask.Params(min_digits=2, max_digits=3))
    problem = Problem(id="275+48", prompt="275+48", answer="323", metadata={"a": 275, "b": 48})
    assert process_reward(task, problem, FORGOT_A_CARRY, None, aggregate=aggregate) == expected
    assert process_reward(task, problem, RIGHT, None, aggregate=aggregate) == 1.0


def test_step_rewards_sit_on_the_steps_last_tokens():
    tokenizer = build_char_tokenizer()
    ids = tokenizer(FORGOT_A_CARRY, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ends = decoded_ends(tokenizer, ids)
    assert ends[-1] == ends[-2] == len(FORGOT_A_CARRY)  # the EOS adds no text
    checks = scratchpad_step_checks(275, 48, FORGOT_A_CARRY)
    rewards = step_token_rewards(checks, ends, coef=0.5)
    by_hand = [0.0] * len(ids)
    for end, value in checks:
        by_hand[end - 1] += 0.5 * value  # one character per token: the step's last character
    assert rewards == by_hand
    delta = step_token_rewards(checks, ends, coef=0.5, delta=True)
    assert [delta[end - 1] for end, _ in checks] == [0.5, -0.5, 0.5, -0.5]
    assert sum(delta) == pytest.approx(0.5 * checks[-1][1])  # telescopes to coef x the last step's score


def test_the_learner_adds_them_to_the_token_rewards_it_credits(monkeypatch):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    config = load_config(None, ["reward.step_rewards.coef=0.5", "algorithm.advantage=reinforce_pp",
                                "algorithm.gamma=1.0", "threads=1"])
    learner = Learner.build(model, config, tokenizer.pad_token_id)
    trajectories = []
    for text, reward in ((RIGHT, 1.0), (FORGOT_A_CARRY, 0.0)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        t = Trajectory(problem=Problem(id="275+48", prompt="275+48", answer="323"), group=0, prompt_ids=[5, 6],
                       response_ids=ids, logprobs=[-1.0] * len(ids), loss_mask=[1] * len(ids), finish_reason="stop",
                       reward=reward)
        t.step_rewards = step_token_rewards(scratchpad_step_checks(275, 48, text), decoded_ends(tokenizer, ids), 0.5)
        trajectories.append(t)
    captured = {}
    from rlvr.algorithms import ADVANTAGES

    original = ADVANTAGES.get("reinforce_pp")

    def spy(rewards, group_ids, mask, token_rewards=None, **kwargs):
        captured["token_rewards"], captured["mask"] = token_rewards, mask
        return original(rewards, group_ids, mask, token_rewards=token_rewards, **kwargs)

    spy.requires = original.requires
    monkeypatch.setitem(ADVANTAGES._entries, "reinforce_pp", spy)
    learner.prepare(trajectories)
    token_rewards = captured["token_rewards"]
    for row, t in enumerate(trajectories):  # response token k is target column len(prompt) - 1 + k
        placed = token_rewards[row, 1:1 + len(t.response_ids)]
        assert placed.tolist() == pytest.approx(t.step_rewards)
        assert float(token_rewards[row].sum()) == pytest.approx(sum(t.step_rewards))


def test_a_run_with_step_rewards_logs_them_and_a_task_without_a_checker_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *TINY, "rl.steps=2", "reward.step_rewards.coef=0.5",
                 "algorithm.advantage=reinforce_pp", "reward.components={correctness: 1.0, process: 0.5}"]) == 0
    records = [r for r in RunDir(run_dir).read("metrics.jsonl") if r["stage"] == "rl"]
    assert len(records) == 2 and all("reward/steps" in r and "reward/process" in r for r in records)
    assert main(["train", "--output-dir", str(tmp_path / "bad"), *TINY, "task.name=countdown",
                 "reward.step_rewards.coef=0.5"]) == 2
    err = capsys.readouterr().err
    assert "no step checker" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
