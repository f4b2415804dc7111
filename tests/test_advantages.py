"""Reference-value tests for rlvr.algorithms.advantages (expected numbers computed by hand)."""

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms.advantages import (
    ADVANTAGES,
    discounted_returns,
    dr_grpo_advantages,
    gae_advantages,
    group_mean_std,
    grpo_advantages,
    masked_whiten,
    needs,
    pass_at_k_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    rft_advantages,
    rloo_advantages,
)

# Group [1, 0, 0]: mean = 1/3, deviations (2/3, -1/3, -1/3),
# unbiased var = (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3, std = sqrt(1/3) = 0.5773503.
STD_100 = 0.5773503

GROUP_ESTIMATORS = ["dr_grpo", "grpo", "pass_at_k", "reinforce_pp_baseline", "rloo"]


def ragged_mask(n: int, t: int = 3) -> torch.Tensor:
    """Right-padded mask whose row i has (i % t) + 1 valid tokens, so padding is exercised."""
    lengths = torch.tensor([(i % t) + 1 for i in range(n)])
    return (torch.arange(t)[None, :] < lengths[:, None]).float()


def per_trajectory(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Check that adv is one scalar per row broadcast over valid tokens, 0 on padding; return the scalars."""
    valid = mask != 0
    assert (adv[~valid] == 0).all(), adv
    scalars = adv[:, 0]
    assert_close(torch.where(valid, adv, 0.0), torch.where(valid, scalars[:, None].expand_as(adv), 0.0))
    return scalars


def outcome_adv(fn, rewards, group_ids, **kwargs):
    mask = ragged_mask(len(rewards))
    adv, returns = fn(rewards, group_ids, mask, **kwargs)
    assert adv.shape == returns.shape == mask.shape
    return per_trajectory(adv, mask)


# --------------------------------------------------------------------------- registry / requires


def test_registered_names():
    assert ADVANTAGES.names() == [
        "dr_grpo", "gae", "grpo", "pass_at_k", "reinforce_pp", "reinforce_pp_baseline", "remax", "rft", "rloo",
    ]
    assert ADVANTAGES.get("rft") is rft_advantages
    assert ADVANTAGES.get("grpo") is grpo_advantages
    assert ADVANTAGES.get("dr_grpo") is dr_grpo_advantages
    assert ADVANTAGES.get("rloo") is rloo_advantages
    assert ADVANTAGES.get("reinforce_pp") is reinforce_pp_advantages
    assert ADVANTAGES.get("reinforce_pp_baseline") is reinforce_pp_baseline_advantages
    assert ADVANTAGES.get("remax") is remax_advantages
    assert ADVANTAGES.get("gae") is gae_advantages
    assert ADVANTAGES.get("pass_at_k") is pass_at_k_advantages


def test_requires_attributes():
    expected = {
        "dr_grpo": frozenset(), "grpo": frozenset(), "pass_at_k": frozenset(), "reinforce_pp": frozenset(),
        "reinforce_pp_baseline": frozenset(), "rloo": frozenset(), "rft": frozenset(),
        "remax": frozenset({"baseline"}), "gae": frozenset({"values"}),
    }
    for name in ADVANTAGES.names():
        assert isinstance(ADVANTAGES.get(name).requires, frozenset)
        assert ADVANTAGES.get(name).requires == expected[name], name


def test_missing_required_input_raises():
    rewards, group_ids, mask = torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(2, 2)
    with pytest.raises(ValueError, match="values"):
        gae_advantages(rewards, group_ids, mask)
    with pytest.raises(ValueError, match="values"):
        gae_advantages(rewards, group_ids, mask, values=None)
    with pytest.raises(ValueError, match="baseline"):
        remax_advantages(rewards, group_ids, mask)
    with pytest.raises(ValueError, match="baseline"):
        ADVANTAGES.get("remax")(rewards, group_ids, mask, values=torch.zeros(2, 2))


def test_needs_rejects_unknown_input():
    with pytest.raises(ValueError):
        needs("critic")
    assert needs("values", "baseline")(lambda *a, **k: None).requires == frozenset({"values", "baseline"})


# --------------------------------------------------------------------------- grpo / dr_grpo / rloo


def test_grpo_two_groups_second_constant():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = outcome_adv(grpo_advantages, rewards, group_ids)
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
    assert (adv[3:] == 0).all()


def test_grpo_output_layout_and_returns():
    rewards = torch.tensor([1.0, 0.0])
    group_ids = torch.tensor([0, 0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, returns = grpo_advantages(rewards, group_ids, mask, eps=0.0)
    # +-0.5 / unbiased std 0.7071068 = +-0.7071068, broadcast over valid tokens, 0 on padding
    assert_close(adv, torch.tensor([[0.7071068, 0.7071068, 0.7071068], [-0.7071068, 0.0, 0.0]]))
    # reward-to-go with gamma=1: the outcome reward at every valid token, 0 on padding
    assert_close(returns, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    # gamma=0.5: row 0 is [0.25, 0.5, 1] (outcome at the last valid token, discounted backwards)
    _, returns = grpo_advantages(rewards, group_ids, mask, gamma=0.5)
    assert_close(returns[0], torch.tensor([0.25, 0.5, 1.0]))


def test_grpo_uses_unbiased_std_and_eps():
    rewards = torch.tensor([1.0, 0.0])
    group_ids = torch.tensor([0, 0])
    # mean 0.5, deviations +-0.5, unbiased var = (0.25 + 0.25) / 1 = 0.5, std = 0.7071068
    # eps=0:   +-0.5 / 0.7071068 = +-0.7071068   (biased std 0.5 would give +-1.0)
    assert_close(outcome_adv(grpo_advantages, rewards, group_ids, eps=0.0), torch.tensor([0.7071068, -0.7071068]))
    # eps=0.5: +-0.5 / (0.7071068 + 0.5) = +-0.4142136
    assert_close(outcome_adv(grpo_advantages, rewards, group_ids, eps=0.5), torch.tensor([0.4142136, -0.4142136]))


def test_grpo_scale_by_std_false_is_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    # r - mean: group 0 mean 1/3 -> (2/3, -1/3, -1/3); group 1 -> 0
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])
    assert_close(outcome_adv(grpo_advantages, rewards, group_ids, scale_by_std=False), expected)
    assert_close(outcome_adv(dr_grpo_advantages, rewards, group_ids), expected)


def test_grpo_non_contiguous_groups():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    group_ids = torch.tensor([7, 3, 7, 3, 7, 3])
    # group 7 = rewards (1, 3, 5): mean 3, deviations (-2, 0, 2), var (4+0+4)/2 = 4, std 2 -> (-1, 0, 1)
    # group 3 = rewards (2, 4, 6): same -> (-1, 0, 1)
    expected = torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])
    assert_close(outcome_adv(grpo_advantages, rewards, group_ids, eps=0.0), expected)
    # dr_grpo: deviations themselves
    assert_close(outcome_adv(dr_grpo_advantages, rewards, group_ids), torch.tensor([-2.0, -2.0, 0.0, 0.0, 2.0, 2.0]))


def test_unequal_group_sizes_and_singletons():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.0, 5.0])
    group_ids = torch.tensor([2, 0, 2, 2, 1])
    # group 2 = (0, 1, 0) at indices 0, 2, 3: as the [1, 0, 0] group -> (-0.5773503, 1.1547005, -0.5773503) with eps=0
    # groups 0 and 1 are singletons -> 0
    expected = torch.tensor([-0.5773503, 0.0, 1.1547005, -0.5773503, 0.0])
    assert_close(outcome_adv(grpo_advantages, rewards, group_ids, eps=0.0), expected)
    # RLOO on group 2: index 0: 0 - (1+0)/2 = -0.5; index 2: 1 - (0+0)/2 = 1; index 3: -0.5; singletons -> 0
    assert_close(outcome_adv(rloo_advantages, rewards, group_ids), torch.tensor([-0.5, 0.0, 1.0, -0.5, 0.0]))


def test_rloo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 5.0, 10.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    # group 0: 1 - (0+0)/2 = 1;  0 - (1+0)/2 = -0.5;  0 - (1+0)/2 = -0.5
    # group 1: 3 - (5+10)/2 = -4.5;  5 - (3+10)/2 = -1.5;  10 - (3+5)/2 = 6
    expected = torch.tensor([1.0, -0.5, -0.5, -4.5, -1.5, 6.0])
    assert_close(outcome_adv(rloo_advantages, rewards, group_ids), expected)


def test_token_rewards_fold_into_score():
    rewards = torch.tensor([1.0, 0.0, 1.0])
    group_ids = torch.tensor([0, 0, 0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # -beta*KL per token; the 9.0 sits on padding and must be ignored
    token_rewards = torch.tensor([[-0.1, -0.2, 9.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.0]])
    # scores: 1 - 0.1 - 0.2 = 0.7;  0 - 0.3 = -0.3;  1 + 0 = 1.0;  mean = 1.4 / 3
    # dr_grpo: 0.7 - 1.4/3 = 0.2333333, -0.3 - 1.4/3 = -0.7666667, 1 - 1.4/3 = 0.5333333
    adv, returns = dr_grpo_advantages(rewards, group_ids, mask, token_rewards=token_rewards)
    assert_close(per_trajectory(adv, mask), torch.tensor([0.2333333, -0.7666667, 0.5333333]))
    # rloo: 0.7 - (-0.3 + 1)/2 = 0.35;  -0.3 - (0.7 + 1)/2 = -1.15;  1 - (0.7 - 0.3)/2 = 0.8
    adv, _ = rloo_advantages(rewards, group_ids, mask, token_rewards=token_rewards)
    assert_close(per_trajectory(adv, mask), torch.tensor([0.35, -1.15, 0.8]))
    # reward-to-go, gamma=1: row 0: r = [-0.1, -0.2 + 1] -> G = [0.7, 0.8]; row 1: r = [0, -0.3, 0] -> [-0.3, -0.3, 0]
    assert_close(returns, torch.tensor([[0.7, 0.8, 0.0], [-0.3, -0.3, 0.0], [1.0, 0.0, 0.0]]))


def test_constant_fractional_group_is_exactly_zero():
    # In fp32, sum/count of three 0.9s (or seven 0.3s) is one ulp off 0.9 (0.3), so a naive
    # mean leaves an ulp-sized residual that GRPO divides by (~ulp + eps) into a spurious
    # advantage of ~0.05 (~0.03).
    rewards = torch.tensor([0.9, 0.9, 0.9] + [0.3] * 7)
    group_ids = torch.tensor([0, 0, 0] + [1] * 7)
    mask = ragged_mask(10)
    for name in GROUP_ESTIMATORS:
        adv, _ = ADVANTAGES.get(name)(rewards, group_ids, mask)
        assert (adv == 0).all(), (name, adv)
    assert (grpo_advantages(rewards, group_ids, mask, eps=0.0)[0] == 0).all()
    # the whole batch constant: reinforce_pp's batch whitening is exactly 0 too
    adv, _ = reinforce_pp_advantages(torch.full((3,), 0.3), torch.tensor([0, 1, 2]), torch.ones(3, 1))
    assert (adv == 0).all()


def test_singleton_groups_zero_even_with_eps_zero():
    rewards = torch.tensor([3.0, 1.0])
    group_ids = torch.tensor([0, 1])
    mask = ragged_mask(2)
    for name in GROUP_ESTIMATORS:
        adv, _ = ADVANTAGES.get(name)(rewards, group_ids, mask, eps=0.0)
        assert_close(adv, torch.zeros(2, 3))


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
    mask = ragged_mask(40)
    adv = per_trajectory(grpo_advantages(rewards, group_ids, mask, eps=1e-6)[0], mask)
    adv_rloo = per_trajectory(rloo_advantages(rewards, group_ids, mask)[0], mask)
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
    mask = torch.ones(2, 1, dtype=torch.bool)  # bool masks are accepted too
    adv, returns = dr_grpo_advantages(torch.tensor([True, False]), group_ids, mask)
    assert adv.dtype == returns.dtype == torch.get_default_dtype()
    assert_close(adv, torch.tensor([[0.5], [-0.5]]))
    assert_close(rloo_advantages(torch.tensor([2, 0]), group_ids, mask)[0], torch.tensor([[2.0], [-2.0]]))


def test_shared_signature_accepts_all_inputs_and_extra_kwargs():
    rewards = torch.tensor([1.0, 0.0])
    group_ids = torch.tensor([0, 0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    for name in ADVANTAGES.names():
        adv, returns = ADVANTAGES.get(name)(
            rewards, group_ids, mask, token_rewards=None, values=torch.zeros(2, 2), baseline=torch.zeros(2),
            gamma=1.0, lam=1.0, eps=1e-6, scale_by_std=True, k=1, some_other_option=3,
        )
        assert adv.shape == returns.shape == (2, 2), name
        assert adv[1, 1] == 0 and returns[1, 1] == 0, name


def test_input_validation():
    mask = torch.ones(2, 2)
    with pytest.raises(TypeError):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), mask)
    with pytest.raises(ValueError):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 1]), mask)
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), mask)
    with pytest.raises(ValueError):  # mask rows != N
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(3, 2))
    with pytest.raises(ValueError):  # token_rewards shape != mask shape
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, token_rewards=torch.ones(2, 3))
    with pytest.raises(ValueError):
        gae_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, values=torch.ones(2, 3))
    with pytest.raises(ValueError):
        remax_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, baseline=torch.ones(3))


@pytest.mark.parametrize("t", [0, 3])
def test_empty_input(t):
    for name in ADVANTAGES.names():
        adv, returns = ADVANTAGES.get(name)(
            torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, t),
            values=torch.zeros(0, t), baseline=torch.zeros(0),
        )
        assert adv.shape == returns.shape == (0, t), name
        assert not math.isnan(adv.sum().item())


def test_rows_without_valid_tokens():
    # row 1 has no trained token: all-zero outputs, and the other rows are unaffected
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    rewards = torch.tensor([1.0, 1.0, 0.0])
    for name in ADVANTAGES.names():
        adv, returns = ADVANTAGES.get(name)(
            rewards, torch.tensor([0, 0, 0]), mask, values=torch.zeros(3, 2), baseline=torch.zeros(3),
        )
        assert torch.isfinite(adv).all() and torch.isfinite(returns).all(), name
        assert (adv[1] == 0).all() and (returns[1] == 0).all(), name


# --------------------------------------------------------------------------- whitening / returns helpers


def test_masked_whiten_excludes_padding():
    x = torch.tensor([[1.0, 3.0, 99.0]])
    valid = torch.tensor([[1, 1, 0]])
    # valid (1, 3): mean 2, deviations -1, +1, unbiased var (1 + 1) / 1 = 2, std 1.4142136
    # -> -1/1.4142136 = -0.7071068, +0.7071068; padding 0 (including it would give mean 34.33)
    assert_close(masked_whiten(x, valid, eps=0.0), torch.tensor([[-0.7071068, 0.7071068, 0.0]]))


def test_discounted_returns_skip_interior_masked_positions():
    r = torch.tensor([[0.0, 5.0, 0.0, 1.0]])
    valid = torch.tensor([[1, 0, 1, 1]])
    # valid steps compacted: r = (0, 0, 1), gamma 0.5 -> G = (0.25, 0.5, 1); the masked position
    # neither adds its 5.0 nor counts as a discount step (which would give G_0 = 0.125)
    assert_close(discounted_returns(r, valid, gamma=0.5), torch.tensor([[0.25, 0.0, 0.5, 1.0]]))


# --------------------------------------------------------------------------- reinforce++


def test_reinforce_pp_with_token_kl_penalty():
    rewards = torch.tensor([1.0, 0.0])
    group_ids = torch.tensor([0, 0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    token_rewards = torch.tensor([[-0.1, -0.2, 0.0], [0.0, -0.1, 0.0]])  # -beta * KL_t
    adv, returns = reinforce_pp_advantages(rewards, group_ids, mask, token_rewards=token_rewards, eps=0.0)
    # token rewards with the outcome at the last valid token:
    #   row 0: (-0.1, -0.2, 0 + 1) -> G = (-0.1 - 0.2 + 1, -0.2 + 1, 1) = (0.7, 0.8, 1.0)
    #   row 1: (0, -0.1 + 0)       -> G = (-0.1, -0.1), padding 0
    assert_close(returns, torch.tensor([[0.7, 0.8, 1.0], [-0.1, -0.1, 0.0]]))
    # whiten over the 5 valid tokens: mean = 2.3 / 5 = 0.46, deviations (0.24, 0.34, 0.54, -0.56, -0.56),
    # squares sum 0.0576 + 0.1156 + 0.2916 + 0.3136 + 0.3136 = 1.092, var = 1.092 / 4 = 0.273,
    # std = 0.5224940; A = dev / std
    expected = torch.tensor([[0.4593354, 0.6507252, 1.0335047], [-1.0717826, -1.0717826, 0.0]])
    assert_close(adv, expected)


def test_reinforce_pp_ignores_groups_and_whitens_over_batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = ragged_mask(4)
    a1, _ = reinforce_pp_advantages(rewards, torch.tensor([0, 0, 1, 1]), mask)
    a2, _ = reinforce_pp_advantages(rewards, torch.tensor([3, 1, 2, 0]), mask)
    assert_close(a1, a2)
    valid = mask != 0
    assert abs(a1[valid].mean().item()) < 1e-6 and abs(a1[valid].std().item() - 1) < 1e-4


def test_reinforce_pp_discount():
    # one row, outcome 1 at the last of 3 tokens, gamma 0.5: G = (0.25, 0.5, 1.0)
    _, returns = reinforce_pp_advantages(torch.tensor([1.0]), torch.tensor([0]), torch.ones(1, 3), gamma=0.5)
    assert_close(returns, torch.tensor([[0.25, 0.5, 1.0]]))


def test_reinforce_pp_baseline_by_hand():
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.0])
    group_ids = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    adv, returns = reinforce_pp_baseline_advantages(rewards, group_ids, mask, eps=0.0)
    # group means: 0.5 and 1.5 -> centred (0.5, -0.5, 1.5, -1.5) (no group std: dividing by it
    # would make both groups +-0.7071 and change the whitened result)
    # valid tokens: 0.5, 0.5 | -0.5 | 1.5 | -1.5 : mean 0.5 / 5 = 0.1, deviations (0.4, 0.4, -0.6, 1.4, -1.6),
    # squares 0.16 + 0.16 + 0.36 + 1.96 + 2.56 = 5.2, var 5.2 / 4 = 1.3, std 1.1401754
    expected = torch.tensor([[0.3508232, 0.3508232], [-0.5262348, 0.0], [1.2278812, 0.0], [-1.4032928, 0.0]])
    assert_close(adv, expected)
    assert_close(returns, torch.tensor([[1.0, 1.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0]]))


# --------------------------------------------------------------------------- remax


def test_remax_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0])
    baseline = torch.tensor([0.5, 0.5, 1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    token_rewards = torch.tensor([[-0.1, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -0.2, 0.0]])
    adv, returns = remax_advantages(rewards, torch.tensor([0, 0, 1]), mask, token_rewards=token_rewards,
                                    baseline=baseline)
    # scores: 1 - 0.1 = 0.9;  0;  1 - 0.2 = 0.8.  A = score - greedy reward: 0.4, -0.5, -0.2
    assert_close(adv, torch.tensor([[0.4, 0.4, 0.4], [-0.5, -0.5, 0.0], [-0.2, -0.2, -0.2]]))
    # reward-to-go: row 0: (0.9, 1, 1); row 1: (0, 0); row 2: (0.8, 0.8, 1)
    assert_close(returns, torch.tensor([[0.9, 1.0, 1.0], [0.0, 0.0, 0.0], [0.8, 0.8, 1.0]]))


# --------------------------------------------------------------------------- gae


def test_gae_by_hand_1x3():
    rewards = torch.tensor([1.0])
    values = torch.tensor([[0.5, 0.4, 0.6]])
    mask = torch.ones(1, 3)
    adv, returns = gae_advantages(rewards, torch.tensor([0]), mask, values=values, gamma=0.9, lam=0.8, whiten=False)
    # r = (0, 0, 1);  gamma * lam = 0.72
    # delta_2 = 1 + 0.9 * 0   - 0.6 = 0.4        (V after the last token = 0)
    # delta_1 = 0 + 0.9 * 0.6 - 0.4 = 0.14
    # delta_0 = 0 + 0.9 * 0.4 - 0.5 = -0.14
    # A_2 = 0.4;  A_1 = 0.14 + 0.72 * 0.4 = 0.428;  A_0 = -0.14 + 0.72 * 0.428 = 0.16816
    assert_close(adv, torch.tensor([[0.16816, 0.428, 0.4]]))
    # returns = A + V = (0.66816, 0.828, 1.0)
    assert_close(returns, torch.tensor([[0.66816, 0.828, 1.0]]))
    # whiten=True (default): mean (0.16816 + 0.428 + 0.4) / 3 = 0.3320533, deviations
    # (-0.1638933, 0.0959467, 0.0679467), var 0.0406835 / 2 = 0.0203418, std 0.1426246
    adv_w, returns_w = gae_advantages(rewards, torch.tensor([0]), mask, values=values, gamma=0.9, lam=0.8, eps=0.0)
    assert_close(adv_w, torch.tensor([[-1.1491241, 0.6727219, 0.4764022]]))
    assert_close(returns_w, returns)  # returns are never whitened


def test_gae_right_padding():
    rewards = torch.tensor([1.0, 1.0])
    values = torch.tensor([[0.5, 0.4, 0.6], [0.2, 0.1, 7.0]])  # 7.0 sits on padding: must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, returns = gae_advantages(rewards, torch.tensor([0, 0]), mask, values=values, gamma=0.9, lam=0.8,
                                  whiten=False)
    # row 1: r = (0, 1);  delta_1 = 1 + 0.9 * 0 - 0.1 = 0.9 (episode ends at the last valid token, not 0.9 * 7.0)
    # delta_0 = 0 + 0.9 * 0.1 - 0.2 = -0.11;  A_1 = 0.9, A_0 = -0.11 + 0.72 * 0.9 = 0.538
    # returns = (0.538 + 0.2, 0.9 + 0.1) = (0.738, 1.0)
    assert_close(adv, torch.tensor([[0.16816, 0.428, 0.4], [0.538, 0.9, 0.0]]))
    assert_close(returns, torch.tensor([[0.66816, 0.828, 1.0], [0.738, 1.0, 0.0]]))


def test_gae_interior_mask_is_not_a_step():
    # multi-turn: position 1 is tool output; compacted row: V = (0.5, 0.6), r = (0, 1)
    values = torch.tensor([[0.5, 9.0, 0.6]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    adv, returns = gae_advantages(torch.tensor([1.0]), torch.tensor([0]), mask, values=values, gamma=0.9,
                                  lam=0.8, whiten=False)
    # delta_1' = 1 - 0.6 = 0.4;  delta_0' = 0.9 * 0.6 - 0.5 = 0.04;  A = (0.04 + 0.72 * 0.4, 0.4) = (0.328, 0.4)
    assert_close(adv, torch.tensor([[0.328, 0.0, 0.4]]))
    assert_close(returns, torch.tensor([[0.828, 0.0, 1.0]]))


def test_gae_token_rewards_and_lambda_one_is_monte_carlo():
    values = torch.tensor([[0.3, 0.2, 0.1]])
    token_rewards = torch.tensor([[-0.1, -0.2, 0.0]])
    adv, returns = gae_advantages(torch.tensor([1.0]), torch.tensor([0]), torch.ones(1, 3), values=values,
                                  token_rewards=token_rewards, gamma=1.0, lam=1.0, whiten=False)
    # r = (-0.1, -0.2, 1);  G = (0.7, 0.8, 1.0);  lam = 1: A = G - V = (0.4, 0.6, 0.9), returns = G
    assert_close(adv, torch.tensor([[0.4, 0.6, 0.9]]))
    assert_close(returns, torch.tensor([[0.7, 0.8, 1.0]]))


# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_by_hand_n4_one_correct_k2():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # R̄ = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5;  σ = sqrt(0.5 * 0.5) = 0.5
    # A_pos = (1 - 0.5) / 0.5 = 1
    # A_neg = (1 - 0.5 - C(2,1)/C(3,1)) / 0.5 = (0.5 - 2/3) / 0.5 = -1/3
    adv = outcome_adv(pass_at_k_advantages, rewards, torch.zeros(4, dtype=torch.long), k=2, eps=0.0)
    assert_close(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    # default eps: divided by (0.5 + 1e-6) instead
    adv = outcome_adv(pass_at_k_advantages, rewards, torch.zeros(4, dtype=torch.long), k=2)
    assert_close(adv, torch.tensor([0.5, -1 / 6, -1 / 6, -1 / 6]) / (0.5 + 1e-6))


def test_pass_at_k_by_hand_n4_two_correct_k2_and_threshold():
    # rewards > 0.5 are correct: 0.9 and 0.6 -> N_pos = 2 (0.5 itself is not correct)
    rewards = torch.tensor([0.9, 0.5, 0.6, 0.0])
    # R̄ = 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6;  σ = sqrt(5/6 * 1/6) = sqrt(5)/6 = 0.3726780
    # A_pos = (1/6) / (sqrt(5)/6) = 1/sqrt(5) = 0.4472136
    # A_neg = (1/6 - C(1,1)/C(3,1)) / σ = (1/6 - 1/3) / (sqrt(5)/6) = -1/sqrt(5)
    adv = outcome_adv(pass_at_k_advantages, rewards, torch.zeros(4, dtype=torch.long), k=2, eps=0.0)
    assert_close(adv, torch.tensor([0.4472136, -0.4472136, 0.4472136, -0.4472136]))


def test_pass_at_k_all_subsets_brute_force():
    # Each response's advantage = mean over the k-subsets containing it of (max reward - R̄) / σ,
    # with R̄ and σ the mean and population std of the subset rewards over all k-subsets.
    gen = torch.Generator().manual_seed(1)
    for n in range(1, 7):
        for n_pos in range(n + 1):
            rewards = torch.zeros(n, dtype=torch.float64)
            rewards[torch.randperm(n, generator=gen)[:n_pos]] = 1.0
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                subset_r = torch.tensor([max(rewards[list(s)].tolist()) for s in subsets], dtype=torch.float64)
                r_bar, sigma = subset_r.mean(), subset_r.std(unbiased=False)
                expected = torch.zeros(n, dtype=torch.float64)
                if sigma > 1e-12:
                    for i in range(n):
                        mine = [j for j, s in enumerate(subsets) if i in s]
                        expected[i] = ((subset_r[mine] - r_bar) / sigma).mean()
                adv, _ = pass_at_k_advantages(rewards, torch.zeros(n, dtype=torch.long), torch.ones(n, 1),
                                              k=k, eps=0.0)
                assert_close(adv[:, 0], expected, msg=f"n={n} n_pos={n_pos} k={k}")


def test_pass_at_k_k1_is_grpo_with_population_std():
    gen = torch.Generator().manual_seed(2)
    rewards = (torch.rand(20, generator=gen) > 0.5).double()
    group_ids = torch.arange(20) % 4  # 4 groups of 5, non-contiguous
    mask = ragged_mask(20)
    adv = per_trajectory(pass_at_k_advantages(rewards, group_ids, mask, k=1, eps=0.0)[0], mask)
    grpo = per_trajectory(grpo_advantages(rewards, group_ids, mask, eps=0.0)[0], mask)
    for g in range(4):
        sel = group_ids == g
        r = rewards[sel]
        pop_std = r.std(unbiased=False)
        expected = (r - r.mean()) / pop_std if pop_std > 0 else torch.zeros_like(r)
        assert_close(adv[sel], expected)
        # unbiased std = population std * sqrt(n / (n - 1)) with n = 5
        assert_close(adv[sel], grpo[sel] * math.sqrt(5 / 4))


def test_pass_at_k_constant_and_saturated_groups_are_zero():
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    # group 0 all wrong, group 1 all right, group 2 has N_neg = 1 < k = 2: every pair holds a correct one
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    adv, _ = pass_at_k_advantages(rewards, group_ids, ragged_mask(9), k=2, eps=0.0)
    assert (adv == 0).all()


def test_pass_at_k_invalid_arguments():
    rewards, mask = torch.tensor([1.0, 0.0, 0.0]), torch.ones(3, 1)
    with pytest.raises(ValueError, match="k"):
        pass_at_k_advantages(rewards, torch.tensor([0, 0, 0]), mask, k=4)  # group of 3
    with pytest.raises(ValueError, match="k"):
        pass_at_k_advantages(rewards, torch.tensor([0, 0, 1]), mask, k=2)  # group 1 has size 1
    with pytest.raises(ValueError):
        pass_at_k_advantages(rewards, torch.tensor([0, 0, 0]), mask, k=0)
    with pytest.raises(ValueError, match="token_rewards"):
        pass_at_k_advantages(rewards, torch.tensor([0, 0, 0]), mask, k=1, token_rewards=torch.zeros(3, 1))


def test_rft_accepts_the_samples_at_or_above_the_threshold():
    # rewards 1 (correct), 0.2 (format only), 0 and 1.5 (correct + bonus); groups play no part
    rewards = torch.tensor([1.0, 0.2, 0.0, 1.5])
    adv = outcome_adv(rft_advantages, rewards, torch.tensor([0, 0, 1, 1]))
    assert adv.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert outcome_adv(rft_advantages, rewards, torch.tensor([0, 0, 1, 1]), accept=0.1).tolist() == [1, 1, 0, 1]
    # a group all accepted still learns (unlike a group baseline, which would give it 0)
    assert outcome_adv(rft_advantages, torch.ones(3), torch.zeros(3, dtype=torch.long)).tolist() == [1, 1, 1]


def test_rft_with_reinforce_is_the_nll_of_the_accepted_samples():
    from rlvr.algorithms.losses import aggregate_loss, reinforce_loss

    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -0.3, 0.0], [-4.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv, _ = rft_advantages(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 0]), mask)
    per_token, _ = reinforce_loss(logp, logp.detach(), adv, mask)
    loss = aggregate_loss(per_token, mask, "token_mean", num_tokens=mask.sum(), num_seqs=3, norm_len=3)
    # accepted rows 0 and 2: -(-0.5 - 1.0 - 2.0 - 4.0) / 6 counted tokens
    assert loss.item() == pytest.approx(7.5 / 6)
