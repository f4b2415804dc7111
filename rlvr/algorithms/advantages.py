"""Trajectory-level advantage estimators for group-sampled RL (GRPO family).

Every estimator in ``ADVANTAGES`` has the same signature::

    fn(rewards: Tensor[N], group_ids: Tensor[N], *, eps: float = 1e-6, **kwargs) -> Tensor[N]

- ``rewards``: one scalar reward per trajectory (float, int or bool; non-float
  inputs are promoted to the default float dtype).
- ``group_ids``: integer tensor; trajectories sampled from the same prompt share
  an id. Groups need not be contiguous, sorted, or of equal size.
- returns one scalar advantage per trajectory; the trainer broadcasts it over
  that trajectory's response tokens.

Unknown keyword arguments are accepted and ignored so that a trainer can pass
one config dict to whichever estimator is selected by name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlvr.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")

__all__ = [
    "ADVANTAGES",
    "group_mean_std",
    "grpo_advantages",
    "dr_grpo_advantages",
    "rloo_advantages",
]


def _check_inputs(rewards: Tensor, group_ids: Tensor) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(rewards.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor (long), got {group_ids.dtype}")
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.get_default_dtype())
    return rewards


def group_mean_std(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group mean, unbiased std and size, broadcast back to each element.

    For group g with members {i : group_ids[i] == g} and size n_g:
        mean_g = (1/n_g) * sum_i values[i]
        std_g  = sqrt( sum_i (values[i] - mean_g)^2 / (n_g - 1) )   (Bessel-corrected,
                 i.e. torch.std's default, as in TRL and verl); std_g = 0 when n_g == 1.

    Vectorised with ``torch.unique`` + ``index_add`` (no Python loop over groups).

    Args:
        values: Tensor[N], float.
        group_ids: Tensor[N], integer group label of each element (any order, any sizes).

    Returns:
        (mean, std, count), each Tensor[N]: the statistic of the element's own group.
        ``count`` has the dtype of ``values``.
    """
    values = _check_inputs(values, group_ids)
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    num_groups = uniq.numel()
    zeros = values.new_zeros(num_groups)

    count = zeros.index_add(0, inv, torch.ones_like(values))
    mean = zeros.index_add(0, inv, values) / count
    # sum/count can be off by an ulp for a constant group (e.g. 3 * 0.1 / 3 != 0.1);
    # GRPO then divides that ulp-sized residual by (0 + eps) and yields a spurious
    # O(1) advantage, so constant groups get their exact value as mean.
    gmax = zeros.scatter_reduce(0, inv, values, reduce="amax", include_self=False)
    gmin = zeros.scatter_reduce(0, inv, values, reduce="amin", include_self=False)
    mean = torch.where(gmax == gmin, gmax, mean)

    dev = values - mean[inv]
    sq = zeros.index_add(0, inv, dev * dev)
    # Size-1 groups have no spread estimate; 0 keeps them NaN-free (torch.std gives NaN).
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.zeros_like(sq))
    std = var.sqrt()
    return mean[inv], std[inv], count[inv]


@ADVANTAGES.register("grpo")
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
    **kwargs: object,
) -> Tensor:
    """GRPO outcome advantage (Shao et al. 2024, "DeepSeekMath", Sec. 4.1.2).

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)     if scale_by_std
        A_i =  r_i - mean_group(r)                             otherwise

    std_group is the unbiased (Bessel-corrected, n-1) sample std, matching
    ``torch.std`` and the TRL / verl implementations. Groups of size 1 and groups
    whose rewards are all equal get advantage exactly 0 (no NaN, even with eps=0).

    Args:
        rewards: Tensor[N], one scalar reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        eps: added to the std to avoid division by zero.
        scale_by_std: divide by the group std (False gives the Dr. GRPO estimator).
        **kwargs: ignored (shared estimator signature).

    Returns:
        Tensor[N] advantages, one per trajectory.
    """
    rewards = _check_inputs(rewards, group_ids)
    mean, std, _ = group_mean_std(rewards, group_ids)
    adv = rewards - mean
    if scale_by_std:
        den = std + eps
        # Only reachable with eps == 0: then den == 0 exactly for size-1 and constant
        # groups, whose centred reward is exactly 0 too, so return 0 rather than 0/0.
        adv = adv / torch.where(den == 0, torch.ones_like(den), den)
    return adv


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    eps: float = 1e-6,
    **kwargs: object,
) -> Tensor:
    """Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training").

        A_i = r_i - mean_group(r)

    The std division of GRPO is dropped because it up-weights prompts that are
    nearly always or never solved (a question-difficulty bias).

    Args:
        rewards: Tensor[N], one scalar reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        eps: unused (shared estimator signature).
        **kwargs: ignored (shared estimator signature).

    Returns:
        Tensor[N] advantages; 0 for groups of size 1 and constant groups.
    """
    return grpo_advantages(rewards, group_ids, eps=eps, scale_by_std=False)


@ADVANTAGES.register("rloo")
def rloo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    eps: float = 1e-6,
    **kwargs: object,
) -> Tensor:
    """REINFORCE Leave-One-Out advantage (Ahmadian et al. 2024, "Back to Basics").

        A_i = r_i - (1/(n-1)) * sum_{j != i, j in group(i)} r_j
            = n/(n-1) * (r_i - mean_group(r))

    where n is the size of i's group. The baseline excludes r_i, so it is
    independent of the i-th sample and the estimator stays unbiased.

    Args:
        rewards: Tensor[N], one scalar reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        eps: unused (shared estimator signature).
        **kwargs: ignored (shared estimator signature).

    Returns:
        Tensor[N] advantages; groups of size 1 (no leave-one-out baseline) get 0.
    """
    rewards = _check_inputs(rewards, group_ids)
    mean, _, count = group_mean_std(rewards, group_ids)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return (rewards - mean) * scale
