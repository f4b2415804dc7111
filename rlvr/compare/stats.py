"""The statistics of a comparison: intervals over seeds, and paired differences over seeds
and problems.

- ``seed_interval``: the mean of one value per seed (a run's final accuracy, its seconds)
  with a Student-t 95% interval, mean +- t_{0.975, n-1} s / sqrt(n), s the sample standard
  deviation (n - 1 in the denominator). Seeds are the runs' independent replications, so
  this interval says how much a number moves from one training run to the next.
- ``paired_difference``: an arm against the first arm, both evaluated on the same held-out
  problems under the same seeds. d[s, p] = a[s, p] - b[s, p] per seed s and problem p; the
  estimate is the mean of d, and the interval a two-level percentile bootstrap (Davison &
  Hinkley 1997, sec. 3.8): resample seeds with replacement, then problems with replacement
  within each drawn seed, B times. It carries both sources of noise (which training run, which
  problems), and pairing removes what the arms share (a problem that every arm finds easy).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Student-t 0.975 quantiles by degrees of freedom (1..30, then 40, 60, 120; beyond: the normal's)
_T975 = [12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272]
_T975_TAIL = [(40, 2.021075), (60, 2.000298), (120, 1.979930)]


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (tabulated; between
    table rows the next smaller df's, which errs wide)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    below = _T975[-1]
    for rows, value in _T975_TAIL:
        if df < rows:
            return below
        below = value
    return below if df < 1000 else 1.959964


def seed_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t 95% interval of the mean over seeds; one seed has no
    interval (low = high = nan)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("an interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def paired_difference(arm: np.ndarray, baseline: np.ndarray, *, n_boot: int = 2000, seed: int = 0
                      ) -> tuple[float, float, float]:
    """(mean, low, high) of arm - baseline over [seeds x problems] matrices of per-problem
    values: the mean difference and its two-level percentile-bootstrap 95% interval (module
    docstring); one seed resamples problems only."""
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired values need equal [seeds x problems] shapes, got {a.shape} and {b.shape}")
    d = a - b
    seeds, problems = d.shape
    rng = np.random.default_rng(seed)
    drawn_seeds = rng.integers(0, seeds, size=(n_boot, seeds)) if seeds > 1 else np.zeros((n_boot, 1), dtype=int)
    drawn_problems = rng.integers(0, problems, size=(n_boot, seeds, problems))
    means = d[drawn_seeds[:, :, None], drawn_problems].mean(axis=(1, 2))
    low, high = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    return float(d.mean()), float(low), float(high)
