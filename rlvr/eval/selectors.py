"""Test-time scaling: pick one of N sampled answers, and the accuracy of that pick.

Strategies (``rlvr eval --strategy``):

* ``majority``: the most voted extracted answer (maj@N, see ``rlvr.eval.majority``);
* ``best_of_n``: the sample a *selector* scores highest. A selector is a function
  ``(problem, sample) -> float`` where ``sample`` is a cached sample record (``text``,
  ``extracted``, ``tokens``, ``mean_logprob``, ``reward``, ...). Built in:

  - ``verifier``: the task's own reward. With 0/1 rewards this is an *oracle* (it uses the
    reference answer), so best-of-N accuracy equals pass@N; it is reported with the unbiased
    pass@N estimator and is an upper bound for every real selector, not a deployable method.
  - ``mean_logprob``: the sample with the highest mean token log-probability under the
    model that sampled it (unsupervised confidence selection).
  - ``shortest``: the sample with the fewest policy tokens.

  A reward model plugs in as ``module:function`` with the same signature.

best-of-N accuracy of one problem is, like maj@k, the mean over the floor(n/N) disjoint
groups of N consecutive samples of the correctness of the group's pick (the first of equal
scores wins), an unbiased estimate for i.i.d. samples.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rlvr.registry import Registry
from rlvr.tasks.base import Problem

Selector = Callable[[Problem, dict[str, Any]], float]
SELECTORS: Registry[Selector] = Registry("selector")
STRATEGIES = ("majority", "best_of_n")


@SELECTORS.register("verifier")
def verifier_selector(problem: Problem, sample: dict[str, Any]) -> float:
    """The task's reward: an oracle (it knows the reference answer)."""
    return float(sample["reward"])


@SELECTORS.register("mean_logprob")
def mean_logprob_selector(problem: Problem, sample: dict[str, Any]) -> float:
    """Mean log-probability of the sample's policy tokens (nats/token): the model's confidence."""
    return float(sample["mean_logprob"])


@SELECTORS.register("shortest")
def shortest_selector(problem: Problem, sample: dict[str, Any]) -> float:
    """Minus the number of policy tokens: prefer the shortest answer."""
    return -float(sample["tokens"])


def best_of_k(scores: Sequence[float], correct: Sequence[bool], k: int) -> float:
    """Best-of-k accuracy of one problem: mean over disjoint groups of k consecutive samples
    of ``correct`` at the group's highest score (first one on ties)."""
    n = len(scores)
    if len(correct) != n:
        raise ValueError(f"{n} scores for {len(correct)} correctness flags")
    if not 1 <= k <= n:
        raise ValueError(f"best-of-k: need 1 <= k <= n, got k={k}, n={n}; draw at least k samples")
    groups = n // k
    hits = 0
    for g in range(groups):
        window = list(scores[g * k:(g + 1) * k])
        hits += bool(correct[g * k + window.index(max(window))])
    return hits / groups
