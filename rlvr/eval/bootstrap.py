"""Bootstrap confidence intervals over problems (Efron 1979; percentile method).

Benchmark scores are means over problems, and the problems are a sample: resampling them
with replacement B times and taking the alpha/2 and 1 - alpha/2 quantiles of the resampled
means gives an interval that is reproducible for a fixed seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def bootstrap_mean_ci(values: Sequence[float], *, n_boot: int = 1000, alpha: float = 0.05,
                      seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of the mean of ``values`` (one per problem)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ratio_ci(numerators: Sequence[float], denominators: Sequence[float], *, n_boot: int = 1000,
                       alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of sum(numerators) / sum(denominators), resampling
    problems (index pairs) together; a resample whose denominators sum to 0 counts as +inf."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.size == 0 or num.shape != den.shape:
        raise ValueError("bootstrap ratio needs equally many numerators and denominators, at least one")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(n_boot, num.size))
    top, bottom = num[idx].sum(axis=1), den[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.inf)
    low, high = np.quantile(ratios, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")  # no inf - inf
    return float(low), float(high)
