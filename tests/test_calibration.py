"""RLCR (Damani et al. 2025): stated confidences parsed, the Brier and ECE metrics against
hand-computed values, the reward c - (q - c)^2, demonstrations that carry a confidence the
verifier never reads, evaluation's calibration numbers, the config check, and the recipe
end to end."""

from __future__ import annotations

import json
import random

import pytest

from rlvr.cli import main
from rlvr.eval.calibration import brier_score, expected_calibration_error
from rlvr.eval.evaluate import summarize
from rlvr.eval.sample_cache import ProblemSamples, task_description
from rlvr.rewards import REWARDS
from rlvr.rewards.calibration import rlcr
from rlvr.tasks import Problem
from rlvr.tasks.addition import AdditionTask
from rlvr.tasks.formats import stated_confidence, without_confidence

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1"]


@pytest.mark.parametrize("text, expected", [
    ("=> 12 <confidence>0.7</confidence>", 0.7),
    ("=> 12 <confidence> .25 </confidence>", 0.25),
    ("=> 12 <confidence>70%</confidence>", 0.7),
    ("=> 12 <confidence>1</confidence>", 1.0),
    ("<confidence>0.2</confidence> => 12 <confidence>0.9</confidence>", 0.9),  # the last block counts
    ("=> 12", None),
    ("=> 12 <confidence>high</confidence>", None),
    ("=> 12 <confidence>1.5</confidence>", None),
    ("=> 12 <confidence>150%</confidence>", None),
    ("=> 12 <confidence>-0.1</confidence>", None),
    ("=> 12 <confidence>0.7", None),  # unclosed
])
def test_stated_confidence_is_read_from_the_last_block(text, expected):
    got = stated_confidence(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_brier_and_ece_against_hand_computed_values():
    q, c = [0.9, 0.8, 0.3, 0.1, 0.95], [True, False, False, True, True]
    # (0.01 + 0.64 + 0.09 + 0.81 + 0.0025) / 5
    assert brier_score(q, c) == pytest.approx(1.5525 / 5)
    # bins: 0.1 -> [0.1,0.2): acc 1, conf 0.1; 0.3 -> [0.3,0.4): acc 0, conf 0.3;
    # 0.8 -> [0.8,0.9): acc 0, conf 0.8; 0.9, 0.95 -> [0.9,1]: acc 1, conf 0.925
    assert expected_calibration_error(q, c) == pytest.approx((0.9 + 0.3 + 0.8 + 2 * 0.075) / 5)
    assert expected_calibration_error([1.0, 1.0], [True, False]) == pytest.approx(0.5)  # 1.0 is in the last bin
    assert expected_calibration_error([0.7] * 10, [True] * 7 + [False] * 3) == pytest.approx(0.0)
    assert brier_score([0.5] * 4, [True, False, True, False]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="one confidence per answer"):
        brier_score([0.5], [True, False])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [True])


def test_rlcr_reward_is_correctness_minus_brier():
    assert rlcr(True, 0.8) == pytest.approx(0.96)
    assert rlcr(False, 0.8) == pytest.approx(-0.64)
    assert rlcr(False, 0.0) == pytest.approx(0.0)
    assert rlcr(True, None) == pytest.approx(0.0)
    assert rlcr(False, None) == pytest.approx(-1.0)
    # a proper scoring rule: with P(right) = 0.7 the expected reward peaks at q = 0.7
    expected = {q / 10: 0.7 * rlcr(True, q / 10) + 0.3 * rlcr(False, q / 10) for q in range(11)}
    assert max(expected, key=expected.get) == pytest.approx(0.7)

    task = AdditionTask(AdditionTask.Params(min_digits=2, max_digits=2))
    task.stated_confidence = True
    problem = Problem("12+30", "12+30", "42")
    right = "2+0=2 1+3=4 => 42 <confidence>0.9</confidence>"
    score = task.score_completion(problem, right)
    assert score.correct and score.extracted == "42"
    assert REWARDS.get("rlcr")(task, problem, right, score) == pytest.approx(1 - 0.01)
    wrong = "2+0=2 1+3=5 => 52 <confidence>0.9</confidence>"
    assert REWARDS.get("rlcr")(task, problem, wrong, task.score_completion(problem, wrong)) == pytest.approx(-0.81)


def test_demonstrations_carry_a_spread_of_confidences_that_scoring_ignores():
    task = AdditionTask(AdditionTask.Params(min_digits=2, max_digits=3, teacher_carry_error=0.0))
    plain = [task.laid_out(task.demonstration(task.generate(random.Random(i)), random.Random(i))) for i in range(60)]
    task.stated_confidence = True
    rng = random.Random(0)
    values = set()
    for i in range(60):
        problem = task.generate(random.Random(i))
        demo = task.laid_out(task.demonstration(problem, random.Random(i)))
        assert demo.startswith(plain[i]) and without_confidence(demo) == plain[i]
        q = stated_confidence(demo)
        assert q is not None and 0.1 <= q <= 0.9
        values.add(q)
        assert task.score_completion(problem, demo).correct
    assert len(values) >= 7  # the form is taught, not one value
    assert task_description(task)["stated_confidence"] is True  # cached samples of another layout never match
    del rng


def _sample(correct: bool, confidence: str | None):
    text = "=> 1" + (f" <confidence>{confidence}</confidence>" if confidence is not None else "")
    return {"text": text, "extracted": "1", "correct": correct, "reward": float(correct), "tokens": 4,
            "finish_reason": "eos", "mean_logprob": -1.0, "tool_calls": 0, "error": None}


def test_evaluation_reports_calibration_over_greedy_and_sampled_answers():
    per_problem = [
        ProblemSamples(Problem("a", "q", "1"), _sample(True, "0.9"), [_sample(True, "0.8"), _sample(False, "0.6")]),
        ProblemSamples(Problem("b", "q", "1"), _sample(False, "0.2"), [_sample(False, None), _sample(True, "1.0")]),
    ]
    result = summarize(per_problem)
    assert result["confidence_stated"] == 1.0
    assert result["confidence"] == pytest.approx(0.55)
    assert result["brier"] == pytest.approx((0.01 + 0.04) / 2)
    assert result["ece"] == pytest.approx((0.1 + 0.2) / 2)
    # sampled: 0.8 right, 0.6 wrong, 1.0 right stated; one without a confidence
    assert result["sampled_confidence_stated"] == pytest.approx(0.75)
    assert result["sampled_confidence"] == pytest.approx(0.8)
    assert result["sampled_brier"] == pytest.approx((0.04 + 0.36 + 0.0) / 3)
    assert result["sampled_ece"] == pytest.approx((0.2 + 0.6 + 0.0) / 3)
    plain = summarize([ProblemSamples(Problem("a", "q", "1"), _sample(True, None), [_sample(True, None)])])
    assert not any("confidence" in k or "brier" in k or k.endswith("ece") for k in plain)


def test_rlcr_without_a_stated_confidence_is_refused_in_one_line(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "bad"), *TINY, "reward.components={rlcr: 1.0}"]) == 2
    err = capsys.readouterr().err
    assert "task.stated_confidence" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_the_rlcr_recipe_trains_and_reports_calibration(tmp_path):
    run = tmp_path / "run"
    # a model just big enough to learn the form in 250 steps (~9 s)
    assert main(["train", "--config", "rlcr", "--output-dir", str(run), *TINY, "model.hidden_size=64",
                 "model.num_layers=2", "model.intermediate_size=128", "sft.steps=250", "sft.batch_size=16",
                 "rl.steps=2"]) == 0
    config = (run / "config.yaml").read_text()
    assert "stated_confidence: true" in config
    rl = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert rl and all(r["reward_components"].keys() == {"rlcr"} for r in rl)
    for r in rl:  # each reward is c - (q - c)^2 of the completion it was given for
        assert r["reward"] == pytest.approx(rlcr(r["correct"], stated_confidence(r["completion"])))
    final = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()][-1]
    assert {"confidence_stated", "brier", "ece", "sampled_brier"} <= final.keys() and final["confidence_stated"] > 0.5
