"""Reference-value tests for rlvr.algorithms.token_selection (high-entropy token mask, sample weights)."""

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms import high_entropy_mask, sample_weights

F64 = torch.float64


def test_high_entropy_half_by_hand():
    # valid entropies: 0.9 (0,0), 0.1 (0,1), 0.5 (0,2), 0.7 (1,0), 0.3 (1,1); (1,2) is padding with 5.0
    # N_valid = 5, k = ceil(0.5 * 5) = 3 -> 0.9, 0.7, 0.5 -> (0,0), (1,0), (0,2)
    entropy = torch.tensor([[0.9, 0.1, 0.5], [0.7, 0.3, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = high_entropy_mask(entropy, mask, 0.5)
    assert torch.equal(out, torch.tensor([[1, 0, 1], [1, 0, 0]]))
    assert out.dtype == mask.dtype


def test_high_entropy_threshold_is_batch_wide_not_per_sequence():
    # N = 6, k = 3: the three highest are all in row 1; row 0 keeps nothing
    entropy = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    out = high_entropy_mask(entropy, torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert torch.equal(out, torch.tensor([[False, False, False], [True, True, True]]))


def test_high_entropy_ties_keep_exactly_k_earliest_first():
    # 0.9 at (1,1), then a three-way tie at 0.5: (0,0), (0,1), (1,0) in row-major order
    entropy = torch.tensor([[0.5, 0.5, 0.2], [0.5, 0.9, 0.0]])
    mask = torch.ones(2, 3)
    # rho = 0.5: k = 3 -> (1,1), (0,0), (0,1)
    assert torch.equal(high_entropy_mask(entropy, mask, 0.5), torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    # rho = 0.2: k = ceil(1.2) = 2 -> (1,1), (0,0)
    assert torch.equal(high_entropy_mask(entropy, mask, 0.2), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def test_high_entropy_float_rounding_and_weights():
    # 0.28 * 25 = 7.000000000000001 in floating point: still k = 7, not 8 -> entropies 18..24 kept
    entropy = torch.arange(25, dtype=F64).reshape(5, 5)
    out = high_entropy_mask(entropy, torch.ones(5, 5, dtype=F64), 0.28)
    assert out.sum().item() == 7
    assert torch.equal(out, (entropy >= 18).to(F64))
    # float mask weights survive on kept tokens: k = ceil(0.5 * 3) = 2 -> 0.8 (0,2) and 0.6 (1,0)
    weights = torch.tensor([[0.5, 0.0, 2.0], [3.0, 0.25, 0.0]])
    out = high_entropy_mask(torch.tensor([[0.1, 0.99, 0.8], [0.6, 0.2, 0.95]]), weights, 0.5)
    assert_close(out, torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]))


def test_high_entropy_rho_one_and_empty():
    mask = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]])
    out = high_entropy_mask(torch.rand(2, 3), mask, 1.0)
    assert torch.equal(out, mask) and out is not mask
    empty = torch.zeros(2, 3)
    assert torch.equal(high_entropy_mask(torch.rand(2, 3), empty, 0.2), empty)


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5])
def test_high_entropy_rejects_bad_fraction(rho):
    with pytest.raises(ValueError):
        high_entropy_mask(torch.rand(2, 3), torch.ones(2, 3), rho)


def test_high_entropy_shape_mismatch():
    with pytest.raises(ValueError):
        high_entropy_mask(torch.rand(2, 3), torch.ones(3, 2), 0.5)


def test_sample_weights():
    adv = torch.tensor([0.5, -1.2, 0.0, 2.0, -0.1], dtype=F64)
    # W-REINFORCE (lambda = 0.1 on positives): + -> 0.1, - -> 1.0, 0 -> 1
    assert_close(sample_weights(adv, 0.1, 1.0), torch.tensor([0.1, 1.0, 1.0, 0.1, 1.0], dtype=F64))
    assert_close(sample_weights(adv, 2.0, 0.5), torch.tensor([2.0, 0.5, 1.0, 2.0, 0.5], dtype=F64))
    # NSR only: positives get weight 0
    assert_close(adv * sample_weights(adv, 0.0, 1.0), torch.tensor([0.0, -1.2, 0.0, 0.0, -0.1], dtype=F64))
    with pytest.raises(ValueError):
        sample_weights(adv, -0.1, 1.0)
