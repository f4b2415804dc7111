"""Bootstrap confidence intervals: reproducible, and as wide as binomial theory says."""

from __future__ import annotations

import math

import pytest

from rlvr.eval.bootstrap import bootstrap_mean_ci


def test_reproducible_with_a_seed_and_different_across_seeds():
    values = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1] * 5
    assert bootstrap_mean_ci(values, seed=3) == bootstrap_mean_ci(values, seed=3)
    assert bootstrap_mean_ci(values, seed=3) != bootstrap_mean_ci(values, seed=4)


def test_constant_values_give_a_point_interval():
    assert bootstrap_mean_ci([0.25] * 40) == (0.25, 0.25)


def test_width_matches_the_binomial_standard_error():
    # 400 problems, half solved: the mean's standard error is sqrt(0.5 * 0.5 / 400) = 0.025,
    # so a 95% interval spans about 2 * 1.96 * 0.025 = 0.098 around 0.5.
    values = [1.0, 0.0] * 200
    low, high = bootstrap_mean_ci(values, n_boot=4000, seed=0)
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 400), rel=0.1)
    assert low < 0.5 < high


def test_bad_input():
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError):
        bootstrap_mean_ci([1.0], alpha=1.5)
