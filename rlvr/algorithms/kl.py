"""Per-token estimators of KL(pi || pi_ref) (Schulman 2020, "Approximating KL divergence").

All estimators in ``KL_ESTIMATORS`` share the signature::

    fn(logp: Tensor, ref_logp: Tensor) -> Tensor      (elementwise, same shape)

- ``logp``: log pi(x) of tokens x sampled from the current policy pi.
- ``ref_logp``: log pi_ref(x) of the same tokens under the reference policy.

With log_ratio = logp - ref_logp (= log pi/pi_ref), averaging any of these over
x ~ pi estimates KL(pi || pi_ref). Masking and reduction are the caller's job.

``k1_st`` / ``k3_st`` are straight-through variants: the value of k1 / k3 (what
gets logged) with the gradient of k2, which is the one that matches the
gradient of KL(pi || pi_ref) (see ``kl_k1_st``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.registry import Registry

KL_ESTIMATORS: Registry = Registry("kl estimator")

LOG_RATIO_CLAMP = 20.0

__all__ = ["KL_ESTIMATORS", "LOG_RATIO_CLAMP", "kl_k1", "kl_k2", "kl_k3", "kl_k1_st", "kl_k3_st"]


def _check(logp: Tensor, ref_logp: Tensor) -> None:
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp shape {tuple(logp.shape)} != ref_logp shape {tuple(ref_logp.shape)}")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log_ratio = logp - ref_logp (Schulman 2020).

    Unbiased for KL(pi || pi_ref) but high-variance and can be negative per token.

    Args:
        logp: Tensor[...] log-probs of sampled tokens under pi.
        ref_logp: Tensor[...] log-probs of the same tokens under pi_ref.

    Returns:
        Tensor[...] elementwise estimate.
    """
    _check(logp, ref_logp)
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * log_ratio^2, log_ratio = logp - ref_logp (Schulman 2020).

    Biased, low-variance, always >= 0; its gradient matches the KL gradient
    to first order when pi is close to pi_ref.

    Args:
        logp: Tensor[...] log-probs of sampled tokens under pi.
        ref_logp: Tensor[...] log-probs of the same tokens under pi_ref.

    Returns:
        Tensor[...] elementwise estimate.
    """
    _check(logp, ref_logp)
    log_ratio = logp - ref_logp
    return 0.5 * log_ratio * log_ratio


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(-log_ratio) - 1 + log_ratio, log_ratio = logp - ref_logp (Schulman 2020).

    Equivalently k3 = ratio_ref - 1 - log(ratio_ref) with ratio_ref = pi_ref/pi.
    Unbiased for KL(pi || pi_ref), low-variance, and >= 0 per token (since
    e^y >= 1 + y). This is the "low_var_kl" penalty used by GRPO.

    The log ratio is clamped to [-20, 20] before use, for numerical stability:
    exp(20) ~ 4.9e8 stays finite, whereas exp of a large gap between the
    policies (e.g. a near-zero-probability token) overflows to inf and poisons
    the loss. The clamped value is used in both terms, so the result is exactly
    k3(clamp(log_ratio)) and stays >= 0; outside the clamp range the gradient is 0.

    Args:
        logp: Tensor[...] log-probs of sampled tokens under pi.
        ref_logp: Tensor[...] log-probs of the same tokens under pi_ref.

    Returns:
        Tensor[...] elementwise estimate, >= 0.
    """
    _check(logp, ref_logp)
    log_ratio = (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(-log_ratio) - 1.0 + log_ratio


def _straight_through_k2(value: Tensor, logp: Tensor, ref_logp: Tensor) -> Tensor:
    # Written as sg[kX] + (k2 - sg[k2]) rather than k2 + sg[kX - k2]: identical value
    # and gradient, but the forward value is exactly kX (k2 - sg[k2] is exactly 0),
    # whereas k2 + (kX - k2) rounds when k2 is much larger than kX.
    k2 = kl_k2(logp, ref_logp)
    return value.detach() + (k2 - k2.detach())


@KL_ESTIMATORS.register("k1_st")
def kl_k1_st(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Straight-through k1: value of k1, gradient of k2.

        out = k2 + sg[k1 - k2]          (sg = stop-gradient)
        out == log_ratio                (value, = k1)
        d out / d logp == log_ratio     (gradient, = d k2 / d logp)

    Why: with x ~ pi_theta, the gradient of the reverse KL is
        grad KL(pi || pi_ref) = E_x[ (log pi(x) - log pi_ref(x)) * grad log pi(x) ]
    (the extra term E_x[grad log pi(x)] is 0). Per sample that is log_ratio *
    grad logp, which is exactly the gradient of k2 = 0.5 * log_ratio^2, not that
    of k1 (gradient 1 * grad logp, whose expectation is 0) or of k3 (gradient
    (1 - exp(-log_ratio)) * grad logp, the gradient of the forward KL
    KL(pi_ref || pi) under on-policy samples). So "k2 as a loss" gives the unbiased
    reverse-KL gradient (Zhang et al. 2025, "On the Design of KL-Regularized Policy
    Gradient Algorithms for LLM Reasoning"; Schulman 2020, "Approximating KL
    divergence", for k1/k2/k3), while k1/k3 remain the better *value* estimates to
    log. The unbiasedness holds on-policy (x sampled from the pi being
    differentiated); with stale samples an importance weight would be needed.

    Args:
        logp: Tensor[...] log-probs of sampled tokens under pi (requires grad).
        ref_logp: Tensor[...] log-probs of the same tokens under pi_ref.

    Returns:
        Tensor[...] elementwise, value k1 = logp - ref_logp, gradient w.r.t. logp
        equal to logp - ref_logp.
    """
    return _straight_through_k2(kl_k1(logp, ref_logp), logp, ref_logp)


@KL_ESTIMATORS.register("k3_st")
def kl_k3_st(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Straight-through k3: value of k3, gradient of k2.

        out = k2 + sg[k3 - k2]          (sg = stop-gradient)
        out == exp(-log_ratio) - 1 + log_ratio      (value, = k3, log ratio clamped to [-20, 20])
        d out / d logp == log_ratio                  (gradient, = d k2 / d logp, NOT clamped)

    k3 is the low-variance, non-negative value estimate GRPO logs and penalises,
    but its own gradient (1 - exp(-log_ratio)) is that of the forward KL
    KL(pi_ref || pi) under on-policy samples, not of the reverse KL it estimates;
    replacing it by k2's gradient log_ratio gives the unbiased reverse-KL gradient
    (derivation and references in ``kl_k1_st``). Unlike ``kl_k3`` the gradient does
    not vanish outside the clamp range.

    Args:
        logp: Tensor[...] log-probs of sampled tokens under pi (requires grad).
        ref_logp: Tensor[...] log-probs of the same tokens under pi_ref.

    Returns:
        Tensor[...] elementwise, value k3 (>= 0), gradient w.r.t. logp equal to
        logp - ref_logp.
    """
    return _straight_through_k2(kl_k3(logp, ref_logp), logp, ref_logp)
