"""Unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", Sec. 2.1 / Fig. 3).

For a problem with n sampled answers of which c are correct, the probability that
a uniformly random k-subset of the n samples contains at least one correct one is

    pass@k = 1 - C(n - c, k) / C(n, k)

which is an unbiased estimate of the model's pass@k. The binomials overflow for
realistic n, so it is evaluated as the equivalent product

    pass@k = 1 - prod_{i = n-c+1}^{n} (1 - k / i)      (and 1.0 when n - c < k).
"""

from __future__ import annotations

import numbers
from typing import Iterable, Sequence, Union

import numpy as np

__all__ = ["pass_at_k", "pass_at_k_array", "mean_pass_at_k"]

ArrayLike = Union[np.ndarray, Sequence[int], int]


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"pass@k: {name} must be an integer, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    Computed stably as 1 - prod_{i=n-c+1}^{n} (1 - k/i).

    Args:
        n: number of samples drawn for the problem (n >= 1).
        c: number of those samples that are correct (0 <= c <= n).
        k: subset size (1 <= k <= n).

    Returns:
        float in [0, 1]; exactly 1.0 when n - c < k (every k-subset has a correct one),
        exactly 0.0 when c == 0.

    Raises:
        ValueError: if any argument is not an integer, or k < 1, k > n, c < 0, c > n.
    """
    n, c, k = _as_int("n", n), _as_int("c", c), _as_int("k", k)
    if n < 1:
        raise ValueError(f"pass@k: n (number of samples) must be >= 1, got n={n}")
    if c < 0 or c > n:
        raise ValueError(f"pass@k: need 0 <= c <= n (correct samples), got c={c}, n={n}")
    if k < 1 or k > n:
        raise ValueError(f"pass@k: need 1 <= k <= n, got k={k}, n={n}; draw at least k samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_array(n: ArrayLike, c: ArrayLike, k: int) -> np.ndarray:
    """pass@k per problem, ``pass_at_k(n[j], c[j], k)`` for each j.

    Args:
        n: samples per problem, shape [P] (may differ per problem) or a scalar
            shared by all problems.
        c: correct samples per problem, shape [P].
        k: subset size, 1 <= k <= min(n).

    Returns:
        float64 ndarray of shape [P].

    Raises:
        ValueError: as ``pass_at_k`` for any problem, or if n and c do not broadcast to 1-D.
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n), np.asarray(c))
    if n_arr.ndim != 1:
        n_arr, c_arr = n_arr.reshape(-1), c_arr.reshape(-1)
    return np.array([pass_at_k(ni.item(), ci.item(), k) for ni, ci in zip(n_arr, c_arr)], dtype=np.float64)


def mean_pass_at_k(correct_counts: ArrayLike, n: ArrayLike, ks: Iterable[int]) -> dict[int, float]:
    """Mean pass@k over a set of problems, for each k in ``ks``.

        mean_pass@k = (1/P) * sum_j pass@k(n_j, c_j)

    Args:
        correct_counts: c_j, correct samples per problem, shape [P].
        n: samples per problem, a scalar or shape [P].
        ks: the k values to report, each 1 <= k <= min(n).

    Returns:
        {k: mean pass@k} in the order of ``ks``.

    Raises:
        ValueError: if there are no problems, or as ``pass_at_k``.
    """
    counts = np.asarray(correct_counts).reshape(-1)
    if counts.size == 0:
        raise ValueError("mean_pass_at_k: no problems given (correct_counts is empty)")
    return {int(k): float(pass_at_k_array(n, counts, k).mean()) for k in ks}
