"""Verifier-free rewards: the policy's own samples stand in for the missing checker.

``majority_vote`` is TTRL's (Zuo et al. 2025, "TTRL: Test-Time Reinforcement Learning"): the
most common final answer of a group is taken as its pseudo-label, and a sample earns 1 when
its answer equals it (0 otherwise, and for a sample with no answer). No reference answer is
read; the verifier still runs beside it, so ``proxy_gold_gap`` and ``proxy_gold_corr`` show how
far the pseudo-labels are from the truth, and ``majority_label_accuracy`` is the share of
groups whose pseudo-label is right (TTRL's "label accuracy").
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlvr.rewards import REWARDS


def majority_answers(extracted: list[str | None], groups: list[int]) -> dict[int, str | None]:
    """Each group's most common answer (samples without one do not vote; a tie goes to the
    answer reached first), None for a group with no answer at all."""
    votes: dict[int, Counter] = {}
    for answer, group in zip(extracted, groups):
        votes.setdefault(group, Counter())
        if answer is not None:
            votes[group][answer] += 1
    return {group: (counter.most_common(1)[0][0] if counter else None) for group, counter in votes.items()}


@REWARDS.register("majority_vote")
def majority_vote_reward(prompts: list[Any], completions: list[Any], *, extracted: list[str | None],
                         groups: list[int]) -> list[float]:
    """1.0 when the sample's final answer is its group's most common answer, else 0.0 (TTRL's
    majority-vote pseudo-label; no reference answer is used)."""
    labels = majority_answers(extracted, groups)
    return [float(answer is not None and answer == labels[group]) for answer, group in zip(extracted, groups)]
