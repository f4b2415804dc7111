"""Majority voting over extracted answers (self-consistency, Wang et al. 2023) and maj@k.

A vote counts the extracted answer strings of k samples (surrounding whitespace stripped;
samples without an extracted answer do not vote). The vote's credit is

    1 / t   if the correct answer is among the t answers tied for the most votes,
    0       otherwise, or when no sample produced an answer,

which is the expected accuracy of the vote under a uniformly random tie-break, computed
exactly, so no tie-break randomness enters the numbers.

maj@k of one problem with n samples is the mean credit over the floor(n/k) disjoint groups
of k consecutive samples (0..k-1, k..2k-1, ...; leftover samples are unused). The samples are
i.i.d., so every group is a random k-sample and this is an unbiased estimate of the model's
maj@k; it is exact for k = n. (Averaging over all C(n, k) subsets, as pass@k does, would
lower the variance but has no closed form for a vote over many distinct answers.)
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def _key(answer: str | None) -> str | None:
    if answer is None:
        return None
    answer = answer.strip()
    return answer or None


def vote_credit(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Credit in [0, 1] of a majority vote over ``answers`` (``correct[i]``: sample i is right)."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers for {len(correct)} correctness flags")
    keys = [_key(a) for a in answers]
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = {k for k, v in votes.items() if v == top}
    right = {k for k, ok in zip(keys, correct) if k in tied and ok}
    return len(right) / len(tied)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one problem: mean vote credit over the disjoint groups of k consecutive samples."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k: need 1 <= k <= n, got k={k}, n={n}; draw at least k samples")
    groups = n // k
    return sum(vote_credit(answers[g * k:(g + 1) * k], correct[g * k:(g + 1) * k]) for g in range(groups)) / groups
