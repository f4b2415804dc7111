"""Calibration of stated confidences: Brier score and expected calibration error.

A model trained with RLCR (``task.stated_confidence``) states a confidence q_i in [0, 1] with
each answer; c_i in {0, 1} is whether the answer is right.

- Brier score (Brier 1950): (1/N) sum_i (q_i - c_i)^2; 0 is perfect, always stating 0.5
  scores 0.25; a proper scoring rule, minimised in expectation by the true P(right).
- Expected calibration error (Naeini et al. 2015; Guo et al. 2017): the confidences split
  into ``bins`` equal-width bins B_b over [0, 1] (1.0 falls in the last), ECE =
  sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|, acc the share right and conf the mean confidence
  of the bin. Ten bins, as RLCR (Damani et al. 2025) reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def brier_score(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Mean (q_i - c_i)^2; ``ValueError`` for an empty or mismatched input."""
    q, c = _arrays(confidences, correct)
    return float(np.mean((q - c) ** 2))


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """sum_b (|B_b| / N) |acc(B_b) - conf(B_b)| over ``bins`` equal-width confidence bins."""
    q, c = _arrays(confidences, correct)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    index = np.minimum((q * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() / len(q) * abs(c[members].mean() - q[members].mean())
    return float(total)


def _arrays(confidences: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(confidences, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    if q.shape != c.shape or q.ndim != 1 or len(q) == 0:
        raise ValueError(f"need one confidence per answer, got {q.shape} confidences and {c.shape} answers")
    if ((q < 0) | (q > 1)).any():
        raise ValueError("confidences must lie in [0, 1]")
    return q, c
