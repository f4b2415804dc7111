"""Per-token estimators of KL(pi || pi_ref) (Schulman 2020, "Approximating KL divergence").

All estimators in ``KL_ESTIMATORS`` share the signature::

    fn(logp: Tensor, ref_logp: Tensor) -> Tensor      (elementwise, same shape)

- ``logp``: log pi(x) of tokens x sampled from the current policy pi.
- ``ref_logp``: log pi_ref(x) of the same tokens under the reference policy.

With log_ratio = logp - ref_logp (= log pi/pi_ref), averaging any of these over
x ~ pi estimates KL(pi || pi_ref). Masking and reduction are the caller's job.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.registry import Registry

KL_ESTIMATORS: Registry = Registry("kl estimator")

LOG_RATIO_CLAMP = 20.0

__all__ = ["KL_ESTIMATORS", "LOG_RATIO_CLAMP", "kl_k1", "kl_k2", "kl_k3"]


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
