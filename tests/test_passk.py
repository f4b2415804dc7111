"""Tests for the unbiased pass@k estimator (Chen et al. 2021)."""

import itertools
import math

import numpy as np
import pytest

from rlvr.eval.passk import mean_pass_at_k, pass_at_k, pass_at_k_array


def test_hand_values():
    # 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # 1 - C(4,1)/C(5,1) = 1 - 4/5 = 0.2 (pass@1 = c/n)
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2, abs=1e-12)
    # 1 - C(7,3)/C(10,3) = 1 - 35/120 = 0.7083333
    assert pass_at_k(10, 3, 3) == pytest.approx(1 - 35 / 120, abs=1e-12)


def test_edge_cases():
    assert pass_at_k(5, 0, 3) == 0.0  # no correct samples
    assert pass_at_k(5, 5, 1) == 1.0  # all correct
    assert pass_at_k(5, 3, 3) == 1.0  # k > n - c = 2: every 3-subset holds a correct one
    assert pass_at_k(5, 3, 5) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize(
    "n, c, k",
    [(5, 2, 6), (5, 2, 0), (5, 2, -1), (5, 6, 1), (5, -1, 1), (0, 0, 1), (5, 2.5, 1), (5.0, 2, 1)],
)
def test_invalid_arguments_raise(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_numpy_integers_accepted():
    assert pass_at_k(np.int64(5), np.int32(2), np.int64(2)) == pytest.approx(0.7)


def test_brute_force_all_subsets():
    # pass@k = fraction of k-subsets of the n samples that contain at least one correct sample
    for n in range(1, 9):
        for c in range(0, n + 1):
            correct = set(range(c))
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hits = sum(1 for s in subsets if correct.intersection(s))
                assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets), abs=1e-12), (n, c, k)


def test_large_n_matches_exact_binomials():
    for n, c, k in [(200, 7, 10), (1000, 1, 1), (1000, 500, 100), (10000, 3, 50)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_array_with_varying_n():
    # (5, 2, k=2) -> 0.7 ; (10, 0) -> 0 ; (3, 3) -> 1
    out = pass_at_k_array([5, 10, 3], [2, 0, 3], 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, [0.7, 0.0, 1.0], atol=1e-12)
    # scalar n shared by all problems: pass@1 = c/n = (0.2, 0.4, 0)
    np.testing.assert_allclose(pass_at_k_array(5, np.array([1, 2, 0]), 1), [0.2, 0.4, 0.0], atol=1e-12)
    with pytest.raises(ValueError):
        pass_at_k_array([5, 1], [2, 0], 2)  # k > n for the second problem


def test_mean_pass_at_k():
    # k=1: c/n = (0.4, 0, 1) -> mean 1.4/3 = 0.4666667 ; k=2: (0.7, 0, 1) -> mean 1.7/3 = 0.5666667
    out = mean_pass_at_k([2, 0, 3], [5, 10, 3], [1, 2])
    assert list(out) == [1, 2]
    assert out[1] == pytest.approx(1.4 / 3, abs=1e-12)
    assert out[2] == pytest.approx(1.7 / 3, abs=1e-12)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 5, [1])
