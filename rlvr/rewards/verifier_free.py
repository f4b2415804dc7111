"""Verifier-free rewards: the policy's own samples stand in for the missing checker.

``majority_vote`` is TTRL's (Zuo et al. 2025, "TTRL: Test-Time Reinforcement Learning"): the
most common final answer of a group is taken as its pseudo-label, and a sample earns 1 when
its answer equals it (0 otherwise, and for a sample with no answer). No reference answer is
read; the verifier still runs beside it, so ``proxy_gold_gap`` and ``proxy_gold_corr`` show how
far the pseudo-labels are from the truth, and ``majority_label_accuracy`` is the share of
groups whose pseudo-label is right (TTRL's "label accuracy").

``semantic_entropy`` is EMPO's (Zhang et al. 2025, "Right Question is Already Half the Answer:
Fully Unsupervised LLM Reasoning Incentivization"): a group's responses are clustered by
meaning, which for tasks with a final answer means by that answer, and each response earns its
cluster's share of the group, p(c) = |c| / G; a response with no answer earns 0 (and is no
cluster). GRPO on this reward minimises the group's semantic entropy H = -sum_c p(c) log p(c),
logged per step as ``semantic_entropy`` (mean over groups, nats): a soft majority vote, where
TTRL's is hard.
"""

from __future__ import annotations

import math
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


def answer_clusters(extracted: list[str | None], groups: list[int]) -> dict[int, tuple[Counter, int]]:
    """Each group's answer counts and its size (samples without an answer count in the size only)."""
    out: dict[int, tuple[Counter, int]] = {}
    for answer, group in zip(extracted, groups):
        counts, size = out.get(group, (Counter(), 0))
        if answer is not None:
            counts[answer] += 1
        out[group] = (counts, size + 1)
    return out


def semantic_entropy(counts: Counter, size: int) -> float:
    """H = -sum_c p(c) log p(c) over a group's answer clusters, p(c) = |c| / size (nats)."""
    return -sum(n / size * math.log(n / size) for n in counts.values() if n)


@REWARDS.register("semantic_entropy")
def semantic_entropy_reward(prompts: list[Any], completions: list[Any], *, extracted: list[str | None],
                            groups: list[int]) -> list[float]:
    """EMPO: the share of its group that gave the sample's final answer, |c| / G; 0 without an
    answer (no reference answer is used)."""
    clusters = answer_clusters(extracted, groups)
    return [0.0 if answer is None else clusters[group][0][answer] / clusters[group][1]
            for answer, group in zip(extracted, groups)]
