"""Reference-value tests for rlvr.algorithms.losses (PPO-clip / clip-higher and aggregation)."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms import LOSS_AGGREGATIONS, POLICY_LOSSES, aggregate_loss, masked_mean, ppo_clip_loss

F64 = torch.float64
MODES = ["seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_mean"]


def _logp_for_ratios(ratios, old_logp):
    return (torch.log(torch.tensor(ratios, dtype=F64)) + old_logp).requires_grad_(True)


def test_registered_names():
    assert POLICY_LOSSES.names() == ["cispo", "gspo", "ppo", "reinforce"]
    assert POLICY_LOSSES.get("ppo") is ppo_clip_loss
    assert LOSS_AGGREGATIONS.names() == MODES


def test_ppo_clip_higher_by_hand():
    # clip range [1 - 0.2, 1 + 0.28] = [0.8, 1.28]
    ratios = [[1.1, 1.25, 1.5, 0.5], [1.1, 1.25, 1.5, 0.5]]
    old_logp = torch.tensor([[-1.0, -2.0, -0.3, -4.0], [-0.7, -1.1, -2.2, -0.1]], dtype=F64)
    logp = _logp_for_ratios(ratios, old_logp)
    adv = torch.tensor([[2.0] * 4, [-1.0] * 4], dtype=F64)
    mask = torch.ones(2, 4, dtype=F64)
    loss, stats = ppo_clip_loss(logp, old_logp, adv, mask, clip_low=0.2, clip_high=0.28)
    # adv = +2:  1.1  inside       -> -min(2.2, 2.2)   = -2.2
    #            1.25 inside (<1.28)-> -min(2.5, 2.5)  = -2.5
    #            1.5  above        -> -min(3.0, 2.56)  = -2.56  (clipped)
    #            0.5  below        -> -min(1.0, 1.6)   = -1.0   (not clipped: pessimistic term is unclipped)
    # adv = -1:  1.1               -> -min(-1.1, -1.1) = 1.1
    #            1.25              -> 1.25
    #            1.5  above        -> -min(-1.5, -1.28)= 1.5    (not clipped)
    #            0.5  below        -> -min(-0.5, -0.8) = 0.8    (clipped)
    expected = torch.tensor([[-2.2, -2.5, -2.56, -1.0], [1.1, 1.25, 1.5, 0.8]], dtype=F64)
    assert_close(loss, expected)

    # d loss / d logp = -ratio * adv where unclipped, 0 where the clipped term is active
    loss.sum().backward()
    expected_grad = torch.tensor([[-2.2, -2.5, 0.0, -1.0], [1.1, 1.25, 1.5, 0.0]], dtype=F64)
    assert_close(logp.grad, expected_grad)

    # clip_frac = 2 clipped / 8 tokens
    assert_close(stats["clip_frac"], torch.tensor(0.25, dtype=F64))
    # ratio_mean = 2 * (1.1 + 1.25 + 1.5 + 0.5) / 8 = 8.7 / 8 = 1.0875
    assert_close(stats["ratio_mean"], torch.tensor(1.0875, dtype=F64))
    assert_close(stats["ratio_max"], torch.tensor(1.5, dtype=F64))
    # approx_kl = mean of r - 1 - ln r:
    #   1.1: 0.1 - 0.0953102 = 0.0046898;  1.25: 0.25 - 0.2231436 = 0.0268564
    #   1.5: 0.5 - 0.4054651 = 0.0945349;  0.5: -0.5 + 0.6931472 = 0.1931472
    #   2 * 0.3192283 / 8 = 0.0798071
    assert_close(stats["approx_kl"], torch.tensor(0.0798071, dtype=F64), rtol=0, atol=1e-7)
    for v in stats.values():
        assert not v.requires_grad


def test_ppo_symmetric_clip_clips_1_25():
    # With clip_high = 0.2 the same 1.25 / adv=+2 token is clipped: -min(2.5, 1.2 * 2) = -2.4
    old_logp = torch.zeros(1, 1, dtype=F64)
    logp = _logp_for_ratios([[1.25]], old_logp)
    loss, stats = ppo_clip_loss(logp, old_logp, torch.full((1, 1), 2.0, dtype=F64), torch.ones(1, 1, dtype=F64))
    assert_close(loss, torch.tensor([[-2.4]], dtype=F64))
    assert stats["clip_frac"].item() == 1.0
    loss.sum().backward()
    assert logp.grad.item() == 0.0


def test_ppo_on_policy_ratio_one():
    # logp == old_logp -> ratio 1, loss = -adv, gradient = -adv (the REINFORCE gradient), nothing clipped
    old_logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=F64)
    logp = old_logp.clone().requires_grad_(True)
    adv = torch.tensor([[0.5, -1.5, 0.0]], dtype=F64)
    loss, stats = ppo_clip_loss(logp, old_logp, adv, torch.ones(1, 3, dtype=F64))
    assert_close(loss, torch.tensor([[-0.5, 1.5, 0.0]], dtype=F64))
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[-0.5, 1.5, 0.0]], dtype=F64))
    assert stats["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


def test_ppo_mask_excludes_padding():
    # Padding positions hold a huge ratio (e^5) and a huge advantage; they must not leak.
    old_logp = torch.zeros(2, 3, dtype=F64)
    logp = torch.tensor([[math.log(1.1), math.log(0.9), 5.0], [math.log(1.5), 5.0, 5.0]], dtype=F64)
    logp.requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, 100.0], [-2.0, 100.0, 100.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, stats = ppo_clip_loss(logp, old_logp, adv, mask)
    # 1.1, +1 -> -1.1;  0.9, +1 -> -0.9;  1.5, -2 -> -min(-3.0, -2.4) = 3.0 (unclipped); padding -> 0
    assert_close(loss, torch.tensor([[-1.1, -0.9, 0.0], [3.0, 0.0, 0.0]], dtype=F64))
    loss.sum().backward()
    assert_close(logp.grad, torch.tensor([[-1.1, -0.9, 0.0], [3.0, 0.0, 0.0]], dtype=F64))
    assert stats["clip_frac"].item() == 0.0
    # (1.1 + 0.9 + 1.5) / 3 = 1.1666667; max over real tokens only = 1.5 (not e^5 = 148.4)
    assert_close(stats["ratio_mean"], torch.tensor(3.5 / 3, dtype=F64))
    assert_close(stats["ratio_max"], torch.tensor(1.5, dtype=F64))
    # (0.1 - ln 1.1) + (-0.1 - ln 0.9) + (0.5 - ln 1.5) = 0.0046898 + 0.0053605 + 0.0945349 = 0.1045852; / 3
    assert_close(stats["approx_kl"], torch.tensor(0.1045852 / 3, dtype=F64), rtol=0, atol=1e-7)


def test_ppo_clamps_log_ratio():
    old_logp = torch.zeros(1, 2)
    logp = torch.tensor([[100.0, -100.0]], requires_grad=True)
    adv = torch.tensor([[-1.0, 1.0]])
    loss, stats = ppo_clip_loss(logp, old_logp, adv, torch.ones(1, 2))
    # ratio = exp(20) = 485165195.4 (unclamped exp(100) would be inf in fp32), adv -1 -> loss = ratio
    assert torch.isfinite(loss).all()
    assert_close(loss[0, 0], torch.tensor(math.exp(20.0)))
    assert torch.isfinite(torch.stack(list(stats.values()))).all()


def test_ppo_all_masked_gives_zero_stats():
    loss, stats = ppo_clip_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 2))
    assert (loss == 0).all()
    for v in stats.values():
        assert v.item() == 0.0


def test_ppo_shape_mismatch_raises():
    with pytest.raises(ValueError):
        ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3))


# ---------------------------------------------------------------- aggregation

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_aggregation_by_hand():
    # masked tokens: row 0 -> (1, 2), row 1 -> (4); total 7 over 3 tokens
    assert_close(aggregate_loss(PER_TOKEN, MASK, "token_mean"), torch.tensor(7 / 3))  # 2.3333
    # ((1+2)/2 + 4/1) / 2 = (1.5 + 4) / 2 = 2.75
    assert_close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_mean"), torch.tensor(2.75))
    # (3 + 4) / 2 = 3.5
    assert_close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum"), torch.tensor(3.5))
    # 7 / (2 * T=3) = 1.1666667
    assert_close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum_norm"), torch.tensor(7 / 6))


def test_aggregation_explicit_normalisers():
    assert_close(aggregate_loss(PER_TOKEN, MASK, "token_mean", num_tokens=7), torch.tensor(1.0))  # 7/7
    assert_close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_mean", num_seqs=4), torch.tensor(1.375))  # 5.5/4
    assert_close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum", num_seqs=7), torch.tensor(1.0))  # 7/7
    # 7 / (2 * 10) = 0.35 ; 7 / (7 * 10) = 0.1
    assert_close(aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum_norm", norm_len=10), torch.tensor(0.35))
    assert_close(
        aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum_norm", num_seqs=7, norm_len=10), torch.tensor(0.1)
    )
    # normalisers passed as tensors (e.g. after an all-reduce) work too
    assert_close(aggregate_loss(PER_TOKEN, MASK, "token_mean", num_tokens=torch.tensor(14.0)), torch.tensor(0.5))


def test_aggregation_empty_sequence_contributes_zero():
    per_token = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # token_mean: 3/2 = 1.5; seq_mean_token_mean: (1.5 + 0)/2 = 0.75;
    # seq_mean_token_sum: 3/2 = 1.5; seq_mean_token_sum_norm: 3/(2*2) = 0.75
    expected = {"token_mean": 1.5, "seq_mean_token_mean": 0.75, "seq_mean_token_sum": 1.5, "seq_mean_token_sum_norm": 0.75}
    for mode, value in expected.items():
        per_token.grad = None
        out = aggregate_loss(per_token, mask, mode)
        assert_close(out, torch.tensor(value))
        out.backward()
        assert (per_token.grad[1] == 0).all()


def test_aggregation_all_masked_is_zero_not_nan():
    per_token = torch.ones(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3)
    for mode in MODES:
        per_token.grad = None
        out = aggregate_loss(per_token, mask, mode)
        assert out.item() == 0.0
        out.backward()
        assert torch.isfinite(per_token.grad).all()


def test_aggregation_unknown_mode():
    with pytest.raises(KeyError):
        aggregate_loss(PER_TOKEN, MASK, "sum_everything")


def test_masked_mean():
    # (1 + 2 + 4) / 3 ; per row: (1+2)/2 = 1.5, 4/1 = 4
    assert_close(masked_mean(PER_TOKEN, MASK), torch.tensor(7 / 3))
    assert_close(masked_mean(PER_TOKEN, MASK, dim=-1), torch.tensor([1.5, 4.0]))


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_split_matches_full_batch(mode):
    """Summing micro-batch losses with GLOBAL counts equals the full-batch loss, value and gradient."""
    gen = torch.Generator().manual_seed(0)
    B, T = 4, 5
    old_logp = -torch.rand(B, T, generator=gen, dtype=F64) * 3
    logp0 = old_logp + 0.3 * torch.randn(B, T, generator=gen, dtype=F64)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=F64)[:, None].expand(B, T)
    lengths = torch.tensor([5, 2, 4, 0])  # unequal, including an empty sequence
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)

    logp_full = logp0.clone().requires_grad_(True)
    per_token, _ = ppo_clip_loss(logp_full, old_logp, adv, mask, clip_low=0.2, clip_high=0.28)
    full = aggregate_loss(per_token, mask, mode)
    full.backward()

    logp_micro = logp0.clone().requires_grad_(True)
    global_counts = dict(num_tokens=mask.sum().item(), num_seqs=B, norm_len=T)
    total = torch.zeros((), dtype=F64)
    for sl in (slice(0, 2), slice(2, 4)):
        pt, _ = ppo_clip_loss(logp_micro[sl], old_logp[sl], adv[sl], mask[sl], clip_low=0.2, clip_high=0.28)
        micro = aggregate_loss(pt, mask[sl], mode, **global_counts)
        micro.backward()  # gradient accumulation, as a trainer would do
        total = total + micro.detach()

    assert_close(total, full.detach())
    assert_close(logp_micro.grad, logp_full.grad)
    assert logp_full.grad.abs().sum() > 0


def test_micro_batch_split_without_global_counts_differs():
    # Guards the test above: with local counts (7 and 4 tokens) the sum is NOT the full token mean.
    per_token = torch.tensor([[1.0] * 5, [1.0] * 5, [3.0] * 5, [3.0] * 5])
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 0])[:, None]).float()
    full = aggregate_loss(per_token, mask, "token_mean")  # (7*1 + 4*3) / 11 = 19/11
    assert_close(full, torch.tensor(19 / 11))
    local = aggregate_loss(per_token[:2], mask[:2], "token_mean") + aggregate_loss(per_token[2:], mask[2:], "token_mean")
    assert abs(local.item() - full.item()) > 0.1  # 1 + 3 = 4 vs 1.727
