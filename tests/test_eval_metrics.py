"""Evaluation numbers on hand-made samples: maj@k, best-of-k selection, summarize's metrics
and intervals (values written out by hand in the comments)."""

from __future__ import annotations

import pytest

from rlvr.eval.bootstrap import bootstrap_ratio_ci
from rlvr.eval.evaluate import summarize
from rlvr.eval.majority import maj_at_k, vote_credit
from rlvr.eval.sample_cache import ProblemSamples, round_bounds
from rlvr.eval.selectors import best_of_k
from rlvr.tasks import Problem


def _sample(answer, correct, tokens=4, logprob=-1.0, tool_calls=0):
    return {"text": f"=> {answer}", "extracted": answer, "correct": correct, "reward": float(correct),
            "tokens": tokens, "finish_reason": "eos", "mean_logprob": logprob, "tool_calls": tool_calls, "error": None}


def crafted() -> list[ProblemSamples]:
    # P1: answers 7 7 3 7, the 7s right; P2: answers 5 - 2 5, only 2 right (one sample has no answer).
    p1 = ProblemSamples(Problem("p1", "q1", "7"), _sample("7", True), [
        _sample("7", True, 4, -0.1), _sample("7", True, 4, -0.2), _sample("3", False, 6, -0.05),
        _sample("7", True, 4, -0.3)])
    p2 = ProblemSamples(Problem("p2", "q2", "2"), _sample("5", False), [
        _sample("5", False, 5, -1.0), _sample(None, False, 5, -2.0), _sample("2", True, 5, -0.5),
        _sample("5", False, 5, -3.0)])
    return [p1, p2]


def test_vote_credit_counts_ties_as_expected_credit():
    assert vote_credit(["7", "7", "3"], [True, True, False]) == 1.0
    assert vote_credit(["3", "3", "7"], [False, False, True]) == 0.0
    assert vote_credit(["a", "b", "c"], [False, False, True]) == pytest.approx(1 / 3)  # 3-way tie, one right
    assert vote_credit([" 7", "7 ", "8"], [True, True, False]) == 1.0  # whitespace does not split votes
    assert vote_credit([None, None, "4"], [False, False, True]) == 1.0  # no answer, no vote
    assert vote_credit([None, None], [False, False]) == 0.0


def test_maj_at_k_uses_disjoint_groups():
    answers, correct = ["7", "7", "3", "7"], [True, True, False, True]
    assert maj_at_k(answers, correct, 1) == 0.75
    assert maj_at_k(answers, correct, 2) == 0.75  # (7, 7) -> 1, (3, 7) tie -> 1/2
    assert maj_at_k(answers, correct, 3) == 1.0  # one group (7, 7, 3); the 4th sample is unused
    assert maj_at_k(answers, correct, 4) == 1.0
    with pytest.raises(ValueError):
        maj_at_k(answers, correct, 5)


def test_best_of_k_picks_the_highest_score_first_on_ties():
    correct = [True, True, False, True]
    assert best_of_k([-0.1, -0.2, -0.05, -0.3], correct, 2) == 0.5  # picks sample 0 (right), sample 2 (wrong)
    assert best_of_k([-0.1, -0.2, -0.05, -0.3], correct, 4) == 0.0
    assert best_of_k([1, 1, 1, 1], [False, True, True, True], 4) == 0.0  # tie: the first one


def test_round_bounds_double_to_64_then_step_by_64():
    assert round_bounds(1) == [(0, 1)]
    assert round_bounds(5) == [(0, 1), (1, 2), (2, 4), (4, 8)]
    bounds = round_bounds(256)
    assert bounds[:7] == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    assert bounds[7:] == [(64, 128), (128, 192), (192, 256)]


def test_summarize_hand_values():
    m = summarize(crafted(), seed=0, strategy="best_of_n", selector="mean_logprob")
    assert m["problems"] == 2 and m["samples"] == 4
    assert m["greedy_accuracy"] == 0.5
    # pass@1 = mean(3/4, 1/4); pass@2 = mean(1, 1 - C(3,2)/C(4,2) = 1/2); pass@4 = 1
    assert m["pass@1"] == pytest.approx(0.5) and m["pass@2"] == pytest.approx(0.75) and m["pass@4"] == 1.0
    # maj@1 = mean(3/4, 1/4); maj@2: P1 (7,7)=1 (3,7)=1/2, P2 (5,-)=0 (2,5)=1/2 -> mean(3/4, 1/4); maj@4 = mean(1, 0)
    assert m["maj@1"] == pytest.approx(0.5) and m["maj@2"] == pytest.approx(0.5) and m["maj@4"] == pytest.approx(0.5)
    assert m["mean@n"] == pytest.approx(0.5)
    assert m["tokens_per_correct"] == pytest.approx((18 + 20) / 4)
    assert m["sampled_length"] == pytest.approx(38 / 8)
    assert "tool_calls" not in m  # no sample called a tool
    # mean_logprob best-of-k: k=2 -> P1 (1 + 0)/2, P2 (0 + 1)/2; k=4 -> P1 picks the wrong '3', P2 the right '2'
    assert m["scaling"]["k"] == [1, 2, 4]
    assert m["scaling"]["accuracy"] == pytest.approx([0.5, 0.5, 0.5])
    for key in ("greedy_accuracy", "pass@2", "maj@2", "mean@n"):
        low, high = m[f"{key}_ci95"]
        assert low <= m[key] <= high


def test_summarize_strategies_and_explicit_ks():
    oracle = summarize(crafted(), ks=[4, 1], strategy="best_of_n")  # default selector: the verifier
    assert oracle["scaling"]["selector"] == "verifier"
    assert oracle["scaling"]["accuracy"] == [oracle["pass@1"], oracle["pass@4"]]  # oracle best-of-k = pass@k
    assert "pass@2" not in oracle
    majority = summarize(crafted(), strategy="majority")
    assert majority["scaling"]["accuracy"] == [majority["maj@1"], majority["maj@2"], majority["maj@4"]]
    with pytest.raises(ValueError, match="k=8"):
        summarize(crafted(), ks=[8])


def test_tool_calls_are_averaged_when_present():
    problems = crafted()
    problems[0].sampled[0]["tool_calls"] = 4  # P1: 4/4 calls per sample = 1; P2: 0
    assert summarize(problems)["tool_calls"] == pytest.approx(0.5)


def test_intervals_are_reproducible_with_a_seed():
    many = [ProblemSamples(Problem(str(i), "q", "1"), _sample("1", i % 3 == 0),
                           [_sample("1", j < i % 5, tokens=3 + i % 5) for j in range(4)]) for i in range(30)]
    a, b, c = summarize(many, seed=7), summarize(many, seed=7), summarize(many, seed=8)
    assert a == b
    assert a["pass@2_ci95"] != c["pass@2_ci95"]
    assert bootstrap_ratio_ci([4, 6], [1, 0], seed=1) == bootstrap_ratio_ci([4, 6], [1, 0], seed=1)
    low, high = bootstrap_ratio_ci([4.0] * 10, [2.0] * 10)
    assert low == high == 2.0
