"""Critic (value-function) loss for PPO-style training with a learned baseline (used with ``gae``).

Like the policy losses, the loss is returned per token, un-reduced; the caller turns
it into a scalar with ``rlvr.algorithms.losses.aggregate_loss``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["clipped_value_loss"]


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    # sum(m) == 0 only when nothing is valid; sum(x * m) is then 0 too, so return 0, not 0/0.
    n = m.sum()
    return (x * m).sum() / torch.where(n == 0, torch.ones_like(n), n)


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: Optional[float] = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped value loss (Schulman et al. 2017, "Proximal Policy Optimization Algorithms";
    value clipping as in OpenAI baselines' ppo2 and its LLM ports: TRL, verl, OpenRLHF).

        V_clip = old_V + clip(V - old_V, -clip, +clip)
        loss_t = 0.5 * max( (V_t - R_t)^2, (V_clip_t - R_t)^2 )      if clip is not None
        loss_t = 0.5 * (V_t - R_t)^2                                   if clip is None

    Clipping keeps the critic near the values it had when the batch was collected,
    a trust region for the value function; taking the max makes it pessimistic, so
    moving V towards R beyond the clip range earns no extra credit (zero gradient there).

    Args:
        values: Tensor[B, T] current critic predictions V(s_t) (requires grad).
        old_values: Tensor[B, T] critic predictions at rollout time (detached here).
        returns: Tensor[B, T] value targets R_t, e.g. the returns of ``gae_advantages`` (detached here).
        mask: Tensor[B, T]; nonzero = response token that is trained on (float masks act as weights).
        clip: clip range for V - old_V (> 0), or None for the unclipped loss.

    Returns:
        per_token: Tensor[B, T] loss, 0 where mask is 0, NOT reduced.
        stats: detached scalars over the masked tokens:
            ``value_clip_frac``: fraction of tokens where the clipped term is strictly larger,
                i.e. clipping set the loss (0 when clip is None);
            ``explained_variance``: 1 - Var(R - V) / Var(R) (population variances over the
                masked tokens); 1 = perfect critic, 0 = no better than predicting the mean
                return, < 0 worse; NaN when Var(R) == 0 (undefined, as in Stable-Baselines3).

    Raises:
        ValueError: shapes differ, or clip is not None and clip <= 0.
    """
    shapes = {tuple(t.shape) for t in (values, old_values, returns, mask)}
    if len(shapes) != 1:
        raise ValueError(
            "values, old_values, returns, mask must share one shape, got "
            f"{[tuple(t.shape) for t in (values, old_values, returns, mask)]}"
        )
    if clip is not None and not clip > 0:
        raise ValueError(f"value clip must be > 0 or None, got {clip}")
    old_values = old_values.detach()
    returns = returns.detach()
    m = mask.to(values.dtype)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)

    loss_unclipped = (values - returns) ** 2
    if clip is None:
        loss = loss_unclipped
        clipped = torch.zeros_like(m, dtype=torch.bool)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss_clipped = (v_clipped - returns) ** 2
        loss = torch.maximum(loss_unclipped, loss_clipped)
        clipped = loss_clipped > loss_unclipped
    # where, not multiply: a non-finite value at a padding position must not become NaN.
    per_token = torch.where(m != 0, 0.5 * loss * m, zero)

    with torch.no_grad():
        v = values.detach()
        r_mean = _masked_mean(returns, m)
        var_r = _masked_mean(torch.where(m != 0, returns - r_mean, zero) ** 2, m)
        err = torch.where(m != 0, returns - v, zero)
        err_mean = _masked_mean(err, m)
        var_err = _masked_mean(torch.where(m != 0, err - err_mean, zero) ** 2, m)
        explained = torch.where(
            var_r > 0, 1.0 - var_err / torch.where(var_r > 0, var_r, torch.ones_like(var_r)),
            torch.full_like(var_r, float("nan")),
        )
        stats = {
            "value_clip_frac": _masked_mean(clipped.to(values.dtype), m),
            "explained_variance": explained,
        }
    return per_token, stats
