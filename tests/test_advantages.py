"""Reference-value tests for rlvr.algorithms.advantages (expected numbers computed by hand)."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms import ADVANTAGES, dr_grpo_advantages, group_mean_std, grpo_advantages, rloo_advantages

# Group [1, 0, 0]: mean = 1/3, deviations (2/3, -1/3, -1/3),
# unbiased var = (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3, std = sqrt(1/3) = 0.5773503.
STD_100 = 0.5773503


def test_registered_names():
    assert ADVANTAGES.names() == ["dr_grpo", "grpo", "rloo"]
    assert ADVANTAGES.get("grpo") is grpo_advantages
    assert ADVANTAGES.get("dr_grpo") is dr_grpo_advantages
    assert ADVANTAGES.get("rloo") is rloo_advantages


def test_grpo_two_groups_second_constant():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = grpo_advantages(rewards, group_ids)
    # group 0: (2/3) / (0.5773503 + 1e-6) = 1.1547, (-1/3) / (0.5773503 + 1e-6) = -0.5773
    # group 1: all rewards equal -> centred reward 0 -> advantage exactly 0, not NaN
    expected = torch.tensor(
        [
            (2 / 3) / (STD_100 + 1e-6),
            (-1 / 3) / (STD_100 + 1e-6),
            (-1 / 3) / (STD_100 + 1e-6),
            0.0,
            0.0,
            0.0,
        ]
    )
    assert_close(adv, expected, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(adv).all()
    assert (adv[3:] == 0).all()


def test_grpo_uses_unbiased_std_and_eps():
    rewards = torch.tensor([1.0, 0.0])
    group_ids = torch.tensor([0, 0])
    # mean 0.5, deviations +-0.5, unbiased var = (0.25 + 0.25) / 1 = 0.5, std = 0.7071068
    # eps=0:   +-0.5 / 0.7071068 = +-0.7071068   (biased std 0.5 would give +-1.0)
    assert_close(grpo_advantages(rewards, group_ids, eps=0.0), torch.tensor([0.7071068, -0.7071068]))
    # eps=0.5: +-0.5 / (0.7071068 + 0.5) = +-0.4142136
    assert_close(grpo_advantages(rewards, group_ids, eps=0.5), torch.tensor([0.4142136, -0.4142136]))


def test_grpo_scale_by_std_false_is_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    # r - mean: group 0 mean 1/3 -> (2/3, -1/3, -1/3); group 1 -> 0
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    assert_close(grpo_advantages(rewards, group_ids, scale_by_std=False), expected)
    assert_close(dr_grpo_advantages(rewards, group_ids), expected)


def test_grpo_non_contiguous_groups():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    group_ids = torch.tensor([7, 3, 7, 3, 7, 3])
    # group 7 = rewards (1, 3, 5): mean 3, deviations (-2, 0, 2), var (4+0+4)/2 = 4, std 2 -> (-1, 0, 1)
    # group 3 = rewards (2, 4, 6): same -> (-1, 0, 1)
    expected = torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])
    assert_close(grpo_advantages(rewards, group_ids, eps=0.0), expected)
    # dr_grpo: deviations themselves
    assert_close(dr_grpo_advantages(rewards, group_ids), torch.tensor([-2.0, -2.0, 0.0, 0.0, 2.0, 2.0]))


def test_unequal_group_sizes_and_singletons():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.0, 5.0])
    group_ids = torch.tensor([2, 0, 2, 2, 1])
    # group 2 = (0, 1, 0) at indices 0, 2, 3: as the [1, 0, 0] group -> (-0.5773503, 1.1547005, -0.5773503) with eps=0
    # groups 0 and 1 are singletons -> 0
    expected = torch.tensor([-0.5773503, 0.0, 1.1547005, -0.5773503, 0.0])
    assert_close(grpo_advantages(rewards, group_ids, eps=0.0), expected)
    # RLOO on group 2: index 0: 0 - (1+0)/2 = -0.5; index 2: 1 - (0+0)/2 = 1; index 3: -0.5; singletons -> 0
    assert_close(rloo_advantages(rewards, group_ids), torch.tensor([-0.5, 0.0, 1.0, -0.5, 0.0]))


def test_rloo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 5.0, 10.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: 1 - (0+0)/2 = 1;  0 - (1+0)/2 = -0.5;  0 - (1+0)/2 = -0.5
    # group 1: 3 - (5+10)/2 = -4.5;  5 - (3+10)/2 = -1.5;  10 - (3+5)/2 = 6
    expected = torch.tensor([1.0, -0.5, -0.5, -4.5, -1.5, 6.0])
    assert_close(rloo_advantages(rewards, group_ids), expected)


def test_constant_fractional_group_is_exactly_zero():
    # In fp32, sum/count of three 0.9s (or seven 0.3s) is one ulp off 0.9 (0.3), so a naive
    # mean leaves an ulp-sized residual that GRPO divides by (~ulp + eps) into a spurious
    # advantage of ~0.05 (~0.03).
    rewards = torch.tensor([0.9, 0.9, 0.9] + [0.3] * 7)
    group_ids = torch.tensor([0, 0, 0] + [1] * 7)
    for name in ADVANTAGES.names():
        adv = ADVANTAGES.get(name)(rewards, group_ids)
        assert (adv == 0).all(), (name, adv)
    assert (grpo_advantages(rewards, group_ids, eps=0.0) == 0).all()


def test_singleton_groups_zero_even_with_eps_zero():
    rewards = torch.tensor([3.0, 1.0])
    group_ids = torch.tensor([0, 1])
    for name in ADVANTAGES.names():
        adv = ADVANTAGES.get(name)(rewards, group_ids, eps=0.0)
        assert_close(adv, torch.zeros(2))


def test_group_mean_std_helper():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    group_ids = torch.tensor([5, 9, 5, 5])
    mean, std, count = group_mean_std(values, group_ids)
    # group 5 = (1, 3, 10): mean 14/3 = 4.6666667, dev (-11/3, -5/3, 16/3),
    # var = (121 + 25 + 256) / 9 / 2 = 402/18 = 22.333333, std = 4.7258156; group 9 = (2): std 0
    assert_close(mean, torch.tensor([14 / 3, 2.0, 14 / 3, 14 / 3]))
    assert_close(std, torch.tensor([4.7258156, 0.0, 4.7258156, 4.7258156]))
    assert_close(count, torch.tensor([3.0, 1.0, 3.0, 3.0]))


def test_matches_per_group_loop_on_random_data():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(40, generator=gen, dtype=torch.float64)
    group_ids = torch.randint(0, 7, (40,), generator=gen)
    adv = grpo_advantages(rewards, group_ids, eps=1e-6)
    adv_rloo = rloo_advantages(rewards, group_ids)
    for g in group_ids.unique():
        sel = group_ids == g
        r = rewards[sel]
        if r.numel() == 1:
            assert adv[sel].item() == 0 and adv_rloo[sel].item() == 0
            continue
        assert_close(adv[sel], (r - r.mean()) / (r.std() + 1e-6))
        loo = (r.sum() - r) / (r.numel() - 1)
        assert_close(adv_rloo[sel], r - loo)


def test_integer_and_bool_rewards_promoted_to_float():
    group_ids = torch.tensor([0, 0])
    adv = dr_grpo_advantages(torch.tensor([True, False]), group_ids)
    assert adv.dtype == torch.get_default_dtype()
    assert_close(adv, torch.tensor([0.5, -0.5]))
    assert_close(rloo_advantages(torch.tensor([2, 0]), group_ids), torch.tensor([2.0, -2.0]))


def test_shared_signature_accepts_extra_kwargs():
    rewards = torch.tensor([1.0, 0.0])
    group_ids = torch.tensor([0, 0])
    for name in ADVANTAGES.names():
        out = ADVANTAGES.get(name)(rewards, group_ids, eps=1e-6, some_other_option=3)
        assert out.shape == (2,)


def test_input_validation():
    with pytest.raises(TypeError):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))


def test_empty_input():
    out = grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    assert not math.isnan(out.sum().item())
