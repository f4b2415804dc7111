"""Process rewards on the addition scratchpad: each column step checked against the right
one, aggregated by hand, placed on the steps' last tokens (with Delta's telescoping sum), and
carried into the learner's token rewards."""

from __future__ import annotations

import math

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


def test_responses_split_into_steps_at_the_delimiter():
    from rlvr.rewards.process import split_steps

    assert split_steps("6+1=7 7+4=11 => 117", " ") == [5, 12, 15, 19]
    assert split_steps("a\n\nb\n\n\n\nc ", "\n\n") == [1, 4, 9]  # empty pieces are no step; trailing space is not
    assert split_steps("", "\n\n") == [] and split_steps("one step", "\n\n") == [8]


def _settings(**kw):
    from rlvr.config import StepRewardSettings

    return StepRewardSettings(**kw)


def test_a_process_reward_model_scores_each_prefix_that_ends_at_a_step(random_rm):
    import torch

    from rlvr.rewards.learned import load_reward_model, render
    from rlvr.rewards.process import aggregate_steps, step_scores

    task = AdditionTask(AdditionTask.Params(min_digits=2, max_digits=2))
    problems = [Problem("a", [{"role": "user", "content": "12+30"}], "42"), Problem("b", "7+8", "15")]
    completions = ["2+0=2 1+3=4 => 42", "7+8=15 => 15"]
    checks = step_scores(_settings(scorer="reward_model", path=str(random_rm), delimiter=" "), task, problems,
                         completions)
    assert [[end for end, _ in row] for row in checks] == [[5, 11, 14, 17], [6, 9, 12]]
    loaded = load_reward_model(str(random_rm))
    for problem, completion, row in zip(problems, completions, checks):
        for end, value in row:  # one prefix at a time, no padding: the head reads its last token
            ids = loaded.tokenizer(render(loaded.tokenizer, problem.prompt, completion[:end]),
                                   add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logit = float(loaded.model(input_ids=torch.tensor([ids])).logits[0, 0])
            assert value == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-5)
    values = [v for _, v in checks[0]]
    assert aggregate_steps(checks[0], "min") == pytest.approx(min(values))
    assert aggregate_steps(checks[0], "product") == pytest.approx(math.prod(values))


def test_a_judge_as_step_scorer_counts_steps_without_a_verdict(tmp_path):
    from rlvr.rewards.judge import judge_metrics, reset_judge_stats
    from rlvr.rewards.process import step_scores

    tokenizer = build_char_tokenizer()
    judge = tmp_path / "untrained"
    build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64).save_pretrained(judge)
    tokenizer.save_pretrained(judge)
    task = AdditionTask(AdditionTask.Params(min_digits=2, max_digits=2))
    reset_judge_stats()
    checks = step_scores(_settings(scorer="judge", path=str(judge), delimiter=" "), task,
                         [Problem("a", "12+30", "42")], ["2+0=2 1+3=4 => 42"], {"rubric": "{prompt} {response} ?"})
    # a random model writes no verdict word: every step scores 0, and each one is counted
    assert checks == [[(5, 0.0), (11, 0.0), (14, 0.0), (17, 0.0)]]
    assert judge_metrics()["judge_parse_failures"] == pytest.approx(1.0)


def test_a_run_with_a_process_reward_model_logs_step_rewards_and_bad_scorers_are_one_line(tmp_path, capsys,
                                                                                         random_rm):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *TINY, "rl.steps=2", "reward.step_rewards.coef=0.5",
                 "reward.step_rewards.scorer=reward_model", f"reward.step_rewards.path={random_rm}",
                 "reward.step_rewards.delimiter=' '", "algorithm.advantage=reinforce_pp",
                 "reward.components={correctness: 1.0, process: 0.5}", "reward.params={process: {aggregate: min}}"]) == 0
    records = [r for r in RunDir(run_dir).read("metrics.jsonl") if r["stage"] == "rl"]
    assert len(records) == 2 and all(0 < r["reward/process"] < 1 and r["reward/steps"] != 0 for r in records)
    for args, said in ((["reward.step_rewards.scorer=reward_model"], "reward.step_rewards.path is required"),
                       (["reward.step_rewards.scorer=judge", f"reward.step_rewards.path={tmp_path / 'none'}"],
                        "reward.step_rewards.path: judge.path"),
                       (["reward.step_rewards.scorer=reward_model", f"reward.step_rewards.path={random_rm}",
                         "reward.step_rewards.delimiter=''"], "delimiter must not be empty")):
        assert main(["train", "--output-dir", str(tmp_path / "bad"), *TINY, "reward.step_rewards.coef=0.5",
                     *args]) == 2, args
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()
