"""Reference-value tests for rlvr.algorithms.kl (Schulman 2020 k1/k2/k3)."""

import torch
from torch.testing import assert_close

from rlvr.algorithms import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3

# log_ratio = logp - ref_logp = (0.5, 0.0, -0.5)
LOGP = torch.tensor([[-1.0, -2.0, -0.5]])
REF_LOGP = torch.tensor([[-1.5, -2.0, 0.0]])


def test_registered_names():
    assert KL_ESTIMATORS.names() == ["k1", "k1_st", "k2", "k3", "k3_st"]
    assert KL_ESTIMATORS.get("k1") is kl_k1
    assert KL_ESTIMATORS.get("k2") is kl_k2
    assert KL_ESTIMATORS.get("k3") is kl_k3


def test_k1_values():
    assert_close(kl_k1(LOGP, REF_LOGP), torch.tensor([[0.5, 0.0, -0.5]]))


def test_k2_values():
    # 0.5 * 0.5^2 = 0.125
    assert_close(kl_k2(LOGP, REF_LOGP), torch.tensor([[0.125, 0.0, 0.125]]))


def test_k3_values():
    # exp(-0.5) - 1 + 0.5 = 0.6065307 - 0.5 = 0.1065307
    # exp(0)    - 1 + 0   = 0
    # exp(0.5)  - 1 - 0.5 = 1.6487213 - 1.5 = 0.1487213
    assert_close(kl_k3(LOGP, REF_LOGP), torch.tensor([[0.1065307, 0.0, 0.1487213]]))


def test_k3_gradient():
    logp = LOGP.clone().requires_grad_(True)
    kl_k3(logp, REF_LOGP).sum().backward()
    # d/dlogp [exp(-lr) - 1 + lr] = 1 - exp(-lr): 1 - 0.6065307 = 0.3934693, 0, 1 - 1.6487213 = -0.6487213
    assert_close(logp.grad, torch.tensor([[0.3934693, 0.0, -0.6487213]]))


def test_k3_nonnegative_and_finite_on_extremes():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(1000, generator=gen) * 10
    ref = torch.randn(1000, generator=gen) * 10
    out = kl_k3(logp, ref)
    assert (out >= 0).all()
    assert torch.isfinite(out).all()
    extreme = kl_k3(torch.tensor([0.0, -1000.0, 0.0]), torch.tensor([-1000.0, 0.0, 0.0]))
    assert torch.isfinite(extreme).all() and (extreme >= 0).all()


def test_k3_clamps_log_ratio_at_20():
    # log_ratio 50 -> clamped to 20: exp(-20) - 1 + 20 = 19.000000002
    # log_ratio -50 -> clamped to -20: exp(20) - 1 - 20 = 485165195.4 - 21 = 485165174.4
    out = kl_k3(torch.tensor([50.0, -50.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert_close(out, torch.tensor([19.000000002, 485165174.4097903], dtype=torch.float64))
    logp = torch.tensor([50.0], requires_grad=True)
    kl_k3(logp, torch.zeros(1)).sum().backward()
    assert logp.grad.item() == 0.0  # outside the clamp range the estimator is constant


def test_estimators_are_kl_pi_given_samples_from_pi():
    # pi = (0.5, 0.3, 0.2), pi_ref = (0.2, 0.5, 0.3)
    # KL(pi || pi_ref) = 0.5 ln(2.5) + 0.3 ln(0.6) + 0.2 ln(2/3)
    #                  = 0.4581454 - 0.1532477 - 0.0810930 = 0.2238047
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    pi_ref = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(pi, 200_000, replacement=True, generator=gen)
    logp, ref_logp = pi.log()[x], pi_ref.log()[x]
    kl_true = 0.2238047
    # Unbiased estimators; MC std-error ~ 1e-3 at this sample size.
    assert abs(kl_k1(logp, ref_logp).mean().item() - kl_true) < 0.01
    assert abs(kl_k3(logp, ref_logp).mean().item() - kl_true) < 0.01
    # Exact expectations (no sampling): sum_x pi(x) * k(x)
    lr = pi.log() - pi_ref.log()
    assert_close((pi * kl_k1(pi.log(), pi_ref.log())).sum(), torch.tensor(kl_true, dtype=torch.float64), rtol=0, atol=1e-7)
    assert_close((pi * kl_k3(pi.log(), pi_ref.log())).sum(), torch.tensor(kl_true, dtype=torch.float64), rtol=0, atol=1e-7)
    assert (pi * kl_k2(pi.log(), pi_ref.log())).sum() == (pi * 0.5 * lr**2).sum()
