"""Reference-value tests for the policy-loss zoo: PPO dual-clip, GSPO, CISPO, REINFORCE.

Sign convention throughout: the objective J is maximised, the returned per-token
loss is -J (times the mask), and gradients are d(sum of per-token loss)/d logp.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms import (
    POLICY_LOSSES,
    aggregate_loss,
    cispo_loss,
    gspo_loss,
    ppo_clip_loss,
    reinforce_loss,
)

F64 = torch.float64


def _t(rows):
    return torch.tensor(rows, dtype=F64)


def _logp(log_ratios, old_logp):
    return (_t(log_ratios) + old_logp).requires_grad_(True)


def test_registered_names():
    assert POLICY_LOSSES.names() == ["cispo", "gspo", "ppo", "reinforce"]
    assert POLICY_LOSSES.get("gspo") is gspo_loss
    assert POLICY_LOSSES.get("cispo") is cispo_loss
    assert POLICY_LOSSES.get("reinforce") is reinforce_loss


@pytest.mark.parametrize("name", ["cispo", "gspo", "ppo", "reinforce"])
def test_shared_signature_and_padding_is_inert(name):
    """The loop's exact call works for every loss; padding values change nothing."""
    fn = POLICY_LOSSES.get(name)
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(2, 3, generator=gen, dtype=F64) * 2
    lr = 0.3 * torch.randn(2, 3, generator=gen, dtype=F64)
    adv = _t([[1.0] * 3, [-0.5] * 3])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    pad = ~mask

    outs = []
    for garbage in (0.0, 7.0):  # finite garbage at the padded position of logp, old_logp and adv
        logp = (old + lr).masked_fill(pad, garbage).requires_grad_(True)
        loss, stats = fn(logp, old.masked_fill(pad, -garbage), adv.masked_fill(pad, 50 * garbage), mask,
                         clip_low=0.2, clip_high=0.28, clip_c=None, some_future_option=True)
        loss.sum().backward()
        assert loss.shape == (2, 3) and loss[1, 2] == 0 and logp.grad[1, 2] == 0
        assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
        outs.append((loss.detach(), logp.grad, stats))
    assert_close(outs[0][0], outs[1][0])
    assert_close(outs[0][1], outs[1][1])
    assert outs[0][2].keys() == outs[1][2].keys()
    for k in outs[0][2]:
        assert_close(outs[0][2][k], outs[1][2][k])


# ---------------------------------------------------------------- PPO dual-clip

# clip range [0.8, 1.2], clip_c = 3. old_logp = 0, so logp = log(ratio).
# row 0: adv = -1, ratios (5, 2, 1);  row 1: adv = +2, ratios (5, 0.5, pad e^5)
DC_LOGP_RATIOS = [[5.0, 2.0, 1.0], [5.0, 0.5, math.exp(5.0)]]
DC_ADV = [[-1.0] * 3, [2.0] * 3]
DC_MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def _dual_clip_inputs():
    logp = torch.log(_t(DC_LOGP_RATIOS)).requires_grad_(True)
    return logp, torch.zeros(2, 3, dtype=F64), _t(DC_ADV), _t(DC_MASK)


def test_ppo_dual_clip_by_hand():
    logp, old, adv, mask = _dual_clip_inputs()
    loss, stats = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, clip_c=3.0)
    # obj = min(r*A, clip(r)*A), then for A < 0: obj = max(obj, c*A); loss = -obj
    # (0,0) r=5, A=-1: min(-5, -1.2) = -5; c*A = -3 > -5 -> obj = -3 -> loss = 3 = -c*A  (dual-clip)
    # (0,1) r=2, A=-1: min(-2, -1.2) = -2; -3 < -2       -> loss 2   (plain PPO, unclipped)
    # (0,2) r=1, A=-1: -1                                -> loss 1
    # (1,0) r=5, A=+2: min(10, 2.4) = 2.4 (A > 0: dual-clip must NOT apply, c*A = 6 would be wrong)
    #                                                     -> loss -2.4
    # (1,1) r=0.5, A=+2: min(1, 1.6) = 1                 -> loss -1
    # (1,2) padding                                      -> 0
    assert_close(loss, _t([[3.0, 2.0, 1.0], [-2.4, -1.0, 0.0]]))
    loss.sum().backward()
    # d loss/d logp = -r*A where the unclipped term is active, 0 where clip or dual-clip is active
    # (0,1): -2*-1 = 2; (0,2): -1*-1 = 1; (1,1): -0.5*2 = -1
    assert_close(logp.grad, _t([[0.0, 2.0, 1.0], [0.0, -1.0, 0.0]]))
    # dual-clip active on 1 of 5 tokens; ordinary clip active on (1,0) only: 1/5
    assert_close(stats["dual_clip_frac"], torch.tensor(0.2, dtype=F64))
    assert_close(stats["clip_frac"], torch.tensor(0.2, dtype=F64))
    # (5 + 2 + 1 + 5 + 0.5) / 5 = 2.7
    assert_close(stats["ratio_mean"], torch.tensor(2.7, dtype=F64))
    assert_close(stats["ratio_max"], torch.tensor(5.0, dtype=F64))


def test_ppo_without_clip_c_is_unchanged():
    logp, old, adv, mask = _dual_clip_inputs()
    loss, stats = ppo_clip_loss(logp, old, adv, mask)
    # only (0,0) differs from the dual-clip case: the unbounded r*A = -5 -> loss 5, gradient -r*A = 5
    assert_close(loss, _t([[5.0, 2.0, 1.0], [-2.4, -1.0, 0.0]]))
    loss.sum().backward()
    assert_close(logp.grad, _t([[5.0, 2.0, 1.0], [0.0, -1.0, 0.0]]))
    assert list(stats) == ["clip_frac", "ratio_mean", "ratio_max", "approx_kl"]


@pytest.mark.parametrize("clip_c", [1.0, 0.5, -3.0])
def test_ppo_dual_clip_requires_c_above_one(clip_c):
    logp, old, adv, mask = _dual_clip_inputs()
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old, adv, mask, clip_c=clip_c)


# ---------------------------------------------------------------- GSPO

GS_OLD = _t([[-1.0, -2.0, -0.5], [-0.7, -1.3, -2.0]])
# token log ratios; row 1 has one padding position holding a garbage 7.0
GS_LOG_RATIOS = [[0.3, -0.1, 0.1], [0.2, -0.4, 7.0]]
GS_MASK = _t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# s_0 = exp((0.3 - 0.1 + 0.1) / 3) = exp(0.1)  = 1.1051709181
# s_1 = exp((0.2 - 0.4) / 2)       = exp(-0.1) = 0.9048374180   (padding excluded from sum AND length)
S0, S1 = 1.1051709181, 0.9048374180
GS_ADV = _t([[1.0] * 3, [-2.0] * 3])


def test_gspo_ratio_is_the_sequence_ratio_on_every_token():
    # adv = -1 everywhere and a wide clip range: loss = -(s_i * -1) = s_i on each unmasked token
    logp = _logp(GS_LOG_RATIOS, GS_OLD)
    loss, stats = gspo_loss(logp, GS_OLD, -torch.ones(2, 3, dtype=F64), GS_MASK, clip_low=0.5, clip_high=0.5)
    assert_close(loss, _t([[S0, S0, S0], [S1, S1, 0.0]]))
    # (1.1051709 + 0.9048374) / 2 = 1.0050042
    assert_close(stats["seq_ratio_mean"], torch.tensor(1.0050042, dtype=F64), rtol=0, atol=1e-7)
    assert_close(stats["seq_ratio_max"], torch.tensor(S0, dtype=F64))


def test_gspo_unclipped_by_hand():
    logp = _logp(GS_LOG_RATIOS, GS_OLD)
    loss, stats = gspo_loss(logp, GS_OLD, GS_ADV, GS_MASK, clip_low=0.2, clip_high=0.2)
    # both s_i inside [0.8, 1.2]: loss_i = -s_i * A_i on each token
    # row 0: -1.1051709 * 1 ; row 1: -0.9048374 * -2 = 1.8096748
    assert_close(loss, _t([[-S0, -S0, -S0], [2 * S1, 2 * S1, 0.0]]))
    loss.sum().backward()
    # GSPO-token: d loss_t / d logp_t = -s_i * A_i (value of s_i,t is s_i, d s_i,t / d logp_t = s_i)
    assert_close(logp.grad, _t([[-S0, -S0, -S0], [2 * S1, 2 * S1, 0.0]]))
    assert stats["clip_frac"].item() == 0.0


def test_gspo_seq_mean_token_mean_reproduces_paper_objective_and_gradient():
    logp = _logp(GS_LOG_RATIOS, GS_OLD)
    loss, _ = gspo_loss(logp, GS_OLD, GS_ADV, GS_MASK, clip_low=0.2, clip_high=0.2)
    agg = aggregate_loss(loss, GS_MASK, "seq_mean_token_mean")
    # paper: -(1/G) sum_i s_i A_i = -(1.1051709 - 1.8096748) / 2 = 0.35225195
    assert_close(agg, torch.tensor((-S0 + 2 * S1) / 2, dtype=F64))
    agg.backward()
    # paper gradient: -(1/G) s_i A_i (1/|y_i|) per token
    # row 0: -1.1051709 / (2*3) = -0.18419515 ; row 1: 1.8096748 / (2*2) = 0.4524187
    assert_close(logp.grad, _t([[-S0 / 6] * 3, [2 * S1 / 4, 2 * S1 / 4, 0.0]]))
    # token_mean weights by length instead: (3*-1.1051709 + 2*1.8096748) / 5 = 0.06076747
    assert_close(aggregate_loss(loss.detach(), GS_MASK, "token_mean"),
                 torch.tensor((-3 * S0 + 4 * S1) / 5, dtype=F64))


def test_gspo_clips_whole_sequences():
    logp = _logp(GS_LOG_RATIOS, GS_OLD)
    # clip range [0.8, 1.05]: s_0 = 1.105 > 1.05 with A = +1 -> clipped: loss -1.05, gradient 0 on all
    # 3 tokens (even the one whose own token ratio exp(-0.1) is < 1); s_1 = 0.905 inside -> as before
    loss, stats = gspo_loss(logp, GS_OLD, GS_ADV, GS_MASK, clip_low=0.2, clip_high=0.05)
    assert_close(loss, _t([[-1.05] * 3, [2 * S1, 2 * S1, 0.0]]))
    loss.sum().backward()
    assert_close(logp.grad, _t([[0.0] * 3, [2 * S1, 2 * S1, 0.0]]))
    assert_close(stats["clip_frac"], torch.tensor(0.6, dtype=F64))  # 3 of 5 tokens


def test_gspo_token_level_advantages_use_the_straight_through_ratio():
    # With per-token advantages GSPO-token's gradient is -s_i * A_i,t on token t. A version that
    # differentiates through s_i itself would give -(s_i / |y_i|) * sum_t' A_i,t' = -2 s_0 on each token.
    logp = _logp([[0.3, -0.1, 0.1]], GS_OLD[:1])
    adv = _t([[1.0, 2.0, 3.0]])
    loss, _ = gspo_loss(logp, GS_OLD[:1], adv, torch.ones(1, 3, dtype=F64), clip_low=0.5, clip_high=0.5)
    loss.sum().backward()
    # -1.1051709 * (1, 2, 3) = (-1.1051709, -2.2103418, -3.3155128)
    assert_close(logp.grad, _t([[-S0, -2 * S0, -3 * S0]]))


def test_gspo_empty_sequence_is_zero_not_nan():
    logp = torch.zeros(2, 2, dtype=F64, requires_grad=True)
    mask = _t([[1.0, 1.0], [0.0, 0.0]])
    loss, stats = gspo_loss(logp, torch.zeros(2, 2, dtype=F64), torch.ones(2, 2, dtype=F64), mask)
    assert_close(loss, _t([[-1.0, -1.0], [0.0, 0.0]]))  # row 0: s = 1, A = 1
    loss.sum().backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[1] == 0).all()
    assert stats["seq_ratio_mean"].item() == 1.0  # over the non-empty sequence only


# ---------------------------------------------------------------- CISPO

CI_OLD = _t([[-1.0, -2.0, -0.5], [-1.5, -1.2, -3.0]])
CI_RATIOS = [[1.5, 1.0, 0.5], [1.1, 2.0, 1.0]]
CI_ADV = _t([[1.0] * 3, [-2.0] * 3])
CI_MASK = _t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def _ci_logp():
    # logp = old + ln r:
    # (0,0) -1 + 0.4054651 = -0.5945349   (0,1) -2             (0,2) -0.5 - 0.6931472 = -1.1931472
    # (1,0) -1.5 + 0.0953102 = -1.4046898 (1,1) -1.2 + 0.6931472 = -0.5068528   (1,2) padding
    return (CI_OLD + torch.log(_t(CI_RATIOS))).requires_grad_(True)


def test_cispo_by_hand():
    logp = _ci_logp()
    loss, stats = cispo_loss(logp, CI_OLD, CI_ADV, CI_MASK, clip_low=0.2, clip_high=0.2)
    # w = sg[clip(r, 0.8, 1.2)]: (1.2, 1.0, 0.8), (1.1, 1.2, -) ; loss = -w * A * logp
    # (0,0) -1.2 * 1 * -0.5945349 = 0.7134419     (0,1) -1.0 * 1 * -2 = 2.0
    # (0,2) -0.8 * 1 * -1.1931472 = 0.9545177     (1,0) -1.1 * -2 * -1.4046898 = -3.0903176
    # (1,1) -1.2 * -2 * -0.5068528 = -1.2164468   (1,2) padding 0
    assert_close(loss, _t([[0.7134419, 2.0, 0.9545177], [-3.0903176, -1.2164468, 0.0]]), rtol=0, atol=1e-7)
    loss.sum().backward()
    # d loss / d logp = -w * A on EVERY token, clipped ones included:
    # row 0 (A=+1): -1.2, -1.0, -0.8 ; row 1 (A=-2): 2.2, 2.4 ; padding 0
    assert_close(logp.grad, _t([[-1.2, -1.0, -0.8], [2.2, 2.4, 0.0]]))
    # weight clipped at (0,0), (0,2), (1,1): 3 / 5
    assert_close(stats["clip_frac"], torch.tensor(0.6, dtype=F64))
    # (1.5 + 1 + 0.5 + 1.1 + 2) / 5 = 1.22
    assert_close(stats["ratio_mean"], torch.tensor(1.22, dtype=F64))


def test_cispo_keeps_gradient_where_ppo_drops_it():
    # Token (0,0): ratio 1.5 > 1.2 with A = +1. PPO's clipped term is active -> zero gradient;
    # CISPO's gradient is -w * A = -1.2 * 1 = -1.2.
    logp_ppo, logp_cispo = _ci_logp(), _ci_logp()
    ppo_clip_loss(logp_ppo, CI_OLD, CI_ADV, CI_MASK)[0].sum().backward()
    cispo_loss(logp_cispo, CI_OLD, CI_ADV, CI_MASK)[0].sum().backward()
    assert logp_ppo.grad[0, 0].item() == 0.0
    assert_close(logp_cispo.grad[0, 0], torch.tensor(-1.2, dtype=F64))


def test_cispo_no_lower_clip_with_clip_low_one():
    # MiniMax-M1 setting: clip_low = 1.0 -> bounds [0, 1 + clip_high]; ratio 0.5 keeps w = 0.5
    logp = _ci_logp()
    loss, stats = cispo_loss(logp, CI_OLD, CI_ADV, CI_MASK, clip_low=1.0, clip_high=0.2)
    loss.sum().backward()
    # (0,2): -0.5 * 1 = -0.5 instead of -0.8; others as in test_cispo_by_hand
    assert_close(logp.grad, _t([[-1.2, -1.0, -0.5], [2.2, 2.4, 0.0]]))
    assert_close(stats["clip_frac"], torch.tensor(0.4, dtype=F64))  # (0,0), (1,1)


# ---------------------------------------------------------------- REINFORCE


def test_reinforce_by_hand():
    logp = _t([[-1.0, -2.0, -0.5], [-0.25, -3.0, 9.0]]).requires_grad_(True)
    adv = _t([[1.5] * 3, [-1.0] * 3])
    mask = _t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # old_logp: ratio 2 at (0,0) (ln 2 = 0.6931472 below logp), 1 elsewhere; must not affect the loss
    old = logp.detach().clone()
    old[0, 0] -= math.log(2.0)
    loss, stats = reinforce_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    # -A * logp: row 0: -1.5 * (-1, -2, -0.5) = (1.5, 3.0, 0.75); row 1: 1 * (-0.25, -3) = (-0.25, -3.0)
    assert_close(loss, _t([[1.5, 3.0, 0.75], [-0.25, -3.0, 0.0]]))
    loss.sum().backward()
    assert_close(logp.grad, _t([[-1.5, -1.5, -1.5], [1.0, 1.0, 0.0]]))
    # ratio_mean = (2 + 1 + 1 + 1 + 1) / 5 = 1.2 ; approx_kl = (2 - 1 - ln 2) / 5 = 0.3068528 / 5
    assert_close(stats["ratio_mean"], torch.tensor(1.2, dtype=F64))
    assert_close(stats["ratio_max"], torch.tensor(2.0, dtype=F64))
    assert_close(stats["approx_kl"], torch.tensor(0.3068528 / 5, dtype=F64), rtol=0, atol=1e-7)
    loss_on_policy, _ = reinforce_loss(logp, logp.detach(), adv, mask)
    assert_close(loss_on_policy, loss)
