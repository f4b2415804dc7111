"""Reference-value tests for rlvr.algorithms.value (expected numbers computed by hand)."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms.value import clipped_value_loss

# Row 0 (4 valid tokens) covers every case of the clipped loss with clip = 0.2;
# row 1 has one valid token and garbage on padding.
VALUES = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.3, 100.0, 100.0, 100.0]])
OLD = torch.tensor([[0.7, 0.5, 1.0, 1.0], [0.3, 0.0, 0.0, 0.0]])
RETURNS = torch.tensor([[1.5, 0.0, 2.0, 2.0], [0.3, -100.0, -100.0, -100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])


def test_clipped_by_hand():
    loss, stats = clipped_value_loss(VALUES, OLD, RETURNS, MASK, clip=0.2)
    # tok 0: (1.0 - 1.5)^2 = 0.25;  V_clip = 0.7 + 0.2 = 0.9 -> (0.9 - 1.5)^2 = 0.36;  0.5 * 0.36 = 0.18  (clipped)
    # tok 1: (0.5 - 0)^2 = 0.25;    V_clip = 0.5 -> 0.25 (equal, not clipped);          0.5 * 0.25 = 0.125
    # tok 2: (2 - 2)^2 = 0;         V_clip = 1.0 + 0.2 = 1.2 -> 0.64;                   0.5 * 0.64 = 0.32  (clipped)
    # tok 3: (0 - 2)^2 = 4;         V_clip = 1.0 - 0.2 = 0.8 -> 1.44 < 4 (unclipped);    0.5 * 4 = 2.0
    # row 1: V = R = old -> 0; padding -> 0
    expected = torch.tensor([[0.18, 0.125, 0.32, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert_close(loss, expected)
    # clipped on tokens 0 and 2 of the 5 valid tokens
    assert_close(stats["value_clip_frac"], torch.tensor(0.4))
    # explained variance over the 5 valid tokens:
    #   R = (1.5, 0, 2, 2, 0.3): mean 1.16, squared deviations 0.1156 + 1.3456 + 0.7056 + 0.7056 + 0.7396
    #       = 3.612 -> Var(R) = 0.7224
    #   R - V = (0.5, -0.5, 0, 2, 0): mean 0.4, squared deviations 0.01 + 0.81 + 0.16 + 2.56 + 0.16 = 3.7
    #       -> Var = 0.74;  EV = 1 - 0.74 / 0.7224 = -0.0243632
    assert_close(stats["explained_variance"], torch.tensor(-0.0243632))


def test_unclipped_by_hand():
    loss, stats = clipped_value_loss(VALUES, OLD, RETURNS, MASK, clip=None)
    # 0.5 * (V - R)^2: (0.125, 0.125, 0.0, 2.0); row 1 zero
    assert_close(loss, torch.tensor([[0.125, 0.125, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]))
    assert stats["value_clip_frac"].item() == 0.0
    assert_close(stats["explained_variance"], torch.tensor(-0.0243632))


def test_gradient_is_zero_where_the_clipped_term_wins():
    values = VALUES.clone().requires_grad_(True)
    loss, stats = clipped_value_loss(values, OLD, RETURNS, MASK, clip=0.2)
    loss.sum().backward()
    # tokens 0 and 2: clipped term is a constant in V (V - old beyond the clip range) -> 0
    # token 1: d/dV 0.5 (V - R)^2 = V - R = 0.5;  token 3: 0 - 2 = -2;  row 1: V - R = 0; padding 0
    assert_close(values.grad, torch.tensor([[0.0, 0.5, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0]]))
    assert not stats["explained_variance"].requires_grad


def test_perfect_critic_and_constant_returns():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    _, stats = clipped_value_loss(returns.clone(), returns.clone(), returns, torch.ones(1, 3))
    assert_close(stats["explained_variance"], torch.tensor(1.0))
    # Var(R) = 0: explained variance is undefined -> NaN
    _, stats = clipped_value_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    assert math.isnan(stats["explained_variance"].item())


def test_invalid_arguments():
    with pytest.raises(ValueError):
        clipped_value_loss(VALUES, OLD, RETURNS, MASK, clip=0.0)
    with pytest.raises(ValueError):
        clipped_value_loss(VALUES, OLD, RETURNS[:, :3], MASK)
