"""Reference-value tests for the straight-through KL estimators k1_st / k3_st (value of k1/k3, gradient of k2)."""

import torch
from torch.testing import assert_close

from rlvr.algorithms import KL_ESTIMATORS, kl_k1, kl_k1_st, kl_k2, kl_k3, kl_k3_st

F64 = torch.float64
# log_ratio = logp - ref_logp = [[0.5, 0.0, -0.5], [1.0, -1.0, 0.0]]
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, -1.0]], dtype=F64)
REF_LOGP = torch.tensor([[-1.5, -2.0, 0.0], [-1.3, -3.0, -1.0]], dtype=F64)
LOG_RATIO = torch.tensor([[0.5, 0.0, -0.5], [1.0, -1.0, 0.0]], dtype=F64)


def test_registered():
    assert KL_ESTIMATORS.get("k1_st") is kl_k1_st
    assert KL_ESTIMATORS.get("k3_st") is kl_k3_st


def test_k1_st_value_is_k1_gradient_is_log_ratio():
    logp = LOGP.clone().requires_grad_(True)
    out = kl_k1_st(logp, REF_LOGP)
    assert_close(out, LOG_RATIO)  # value = k1 = log_ratio
    out.sum().backward()
    # gradient of k2 = 0.5 lr^2 is lr; k1's own gradient would be 1 everywhere
    assert_close(logp.grad, LOG_RATIO)


def test_k3_st_value_is_k3_gradient_is_log_ratio():
    logp = LOGP.clone().requires_grad_(True)
    out = kl_k3_st(logp, REF_LOGP)
    # k3 = exp(-lr) - 1 + lr:
    #   0.5: 0.6065307 - 0.5 = 0.1065307     0: 0     -0.5: 1.6487213 - 1.5 = 0.1487213
    #   1.0: 0.3678794 - 1 + 1 = 0.3678794   -1: 2.7182818 - 2 = 0.7182818   0: 0
    expected = torch.tensor([[0.1065307, 0.0, 0.1487213], [0.3678794, 0.7182818, 0.0]], dtype=F64)
    assert_close(out, expected, rtol=0, atol=1e-7)
    out.sum().backward()
    # k2's gradient lr, not k3's 1 - exp(-lr) (= 0.3934693, 0, -0.6487213, 0.6321206, -1.7182818, 0)
    assert_close(logp.grad, LOG_RATIO)


def test_st_value_is_bit_exact_and_masked_gradient():
    gen = torch.Generator().manual_seed(0)
    logp = (torch.randn(2, 3, generator=gen, dtype=F64) * 8).requires_grad_(True)  # large k2 vs kX
    ref = torch.randn(2, 3, generator=gen, dtype=F64) * 8
    assert torch.equal(kl_k1_st(logp, ref), kl_k1(logp, ref))
    assert torch.equal(kl_k3_st(logp, ref), kl_k3(logp, ref))
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=F64)
    (kl_k3_st(logp, ref) * mask).sum().backward()
    assert_close(logp.grad, (logp - ref).detach() * mask)


def test_k3_st_gradient_survives_the_clamp():
    # log_ratio 50: value is the clamped k3 = exp(-20) - 1 + 20 = 19.000000002, but the gradient is 50
    # (kl_k3's own gradient is 0 there)
    logp = torch.tensor([50.0], dtype=F64, requires_grad=True)
    out = kl_k3_st(logp, torch.zeros(1, dtype=F64))
    assert_close(out, torch.tensor([19.000000002], dtype=F64))
    out.sum().backward()
    assert_close(logp.grad, torch.tensor([50.0], dtype=F64))


def test_st_gives_exact_reverse_kl_gradient_on_policy():
    """E_{x~pi}[d k(logp_theta(x)) / d theta] (samples fixed) == d KL(pi_theta || pi_ref) / d theta for k2 and
    the ST estimators; k3's own gradient gives d KL(pi_ref || pi_theta) / d theta instead."""
    theta = torch.tensor([0.3, -0.2, 0.9], dtype=F64, requires_grad=True)
    ref_logp = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=F64))

    def expected_grad(estimator):
        logp = torch.log_softmax(theta, -1)
        (g,) = torch.autograd.grad((logp.exp().detach() * estimator(logp, ref_logp)).sum(), theta)
        return g

    logp = torch.log_softmax(theta, -1)
    (true_rev,) = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta)
    logp = torch.log_softmax(theta, -1)
    (true_fwd,) = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta)
    for est in (kl_k2, kl_k1_st, kl_k3_st):
        assert_close(expected_grad(est), true_rev)
    assert_close(expected_grad(kl_k3), true_fwd)
    assert (true_rev - true_fwd).abs().max() > 1e-2  # the two targets really differ here
