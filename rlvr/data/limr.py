"""LIMR sample selection (Li et al. 2025, "LIMR: Less is More for RL Scaling").

Learning Impact Measurement scores how well a training problem's reward curve follows the
model's average learning curve over K epochs of RL on a fixed problem set:

    r_avg^k = (1/N) * sum_i r_i^k                      (mean reward of epoch k)
    s_i     = 1 - sum_k (r_i^k - r_avg^k)^2 / sum_k (1 - r_avg^k)^2

s_i = 1 means the problem improved exactly like the average; problems whose rewards stay
flat (always solved, never solved) or move erratically score low. LIMR keeps the problems
with s_i >= 0.6 and trains on those only.

Here r_i^k is the problem's pass rate (fraction of its G samples correct) the k-th time it
was drawn, read from a run's ``pass_rates.jsonl``; a problem is scored over the first K
occurrences, K being the smallest number of occurrences among the problems scored.
"""

from __future__ import annotations

import numpy as np


def lim_scores(curves: dict[str, list[float]], epochs: int | None = None) -> dict[str, float]:
    """LIM score per problem from its per-epoch rewards (``curves[id][k]`` = r_i^k).

    Problems with fewer than ``epochs`` observations are skipped; ``epochs`` defaults to the
    largest K that every problem reaches. Returns {} when fewer than one epoch is shared.
    """
    if not curves:
        return {}
    k = epochs if epochs is not None else min(len(c) for c in curves.values())
    ids = [i for i, c in curves.items() if len(c) >= k]
    if k < 1 or not ids:
        return {}
    r = np.array([curves[i][:k] for i in ids], dtype=np.float64)  # [N, K]
    r_avg = r.mean(axis=0)
    denom = ((1.0 - r_avg) ** 2).sum()
    if denom == 0.0:  # the model solves everything every epoch: no learning to align with
        return {i: 0.0 for i in ids}
    scores = 1.0 - ((r - r_avg) ** 2).sum(axis=1) / denom
    return dict(zip(ids, scores.tolist()))


def select(scores: dict[str, float], threshold: float = 0.6) -> list[str]:
    """Ids with LIM score >= ``threshold`` (LIMR's 0.6), best first."""
    return sorted((i for i, s in scores.items() if s >= threshold), key=lambda i: -scores[i])
