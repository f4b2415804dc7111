"""RLCR's calibration reward (Damani et al. 2025, "Beyond Binary Rewards: Training LMs to
Reason about Their Uncertainty").

With ``task.stated_confidence`` the model ends each response with ``<confidence>q</confidence>``
and the reward is correctness minus the Brier score of that confidence:

    R_RLCR = c - (q - c)^2,    c = 1 if the answer is right else 0,  q in [0, 1].

The Brier score is a bounded proper scoring rule, so for any answer the expected reward is
highest when q is the answer's true probability of being right, and the correctness term still
makes the most likely answer the best one to give (the paper's Theorem 1). A response with no
readable confidence (no block, not a number, outside [0, 1]) pays the largest Brier penalty, 1:
stating any confidence is never worse than stating none. Evaluation reports ``brier`` and ``ece``
(``rlvr.eval.calibration``) beside accuracy.
"""

from __future__ import annotations

from rlvr.rewards import REWARDS
from rlvr.tasks.base import Problem, Score, Task
from rlvr.tasks.formats import stated_confidence


def rlcr(correct: bool, confidence: float | None) -> float:
    """c - (q - c)^2, with (q - c)^2 = 1 when no confidence was stated."""
    c = float(correct)
    return c - (1.0 if confidence is None else (confidence - c) ** 2)


@REWARDS.register("rlcr")
def rlcr_reward(task: Task, problem: Problem, completion: str, score: Score) -> float:
    """RLCR: correctness - Brier(stated confidence, correctness); a missing confidence costs 1
    (needs ``task.stated_confidence: true``)."""
    return rlcr(score.correct, stated_confidence(completion))
