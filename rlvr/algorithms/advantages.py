"""Token-level advantage estimators for RL with verifiable rewards (GRPO family, REINFORCE++, GAE).

Every estimator in ``ADVANTAGES`` has the same signature, so the training loop
never branches on which one the config selected::

    fn(rewards: Tensor[N], group_ids: Tensor[N], mask: Tensor[N, T], *,
       token_rewards: Tensor[N, T] | None = None,
       values: Tensor[N, T] | None = None,
       baseline: Tensor[N] | None = None,
       gamma: float = 1.0, lam: float = 1.0, eps: float = 1e-6,
       scale_by_std: bool = True, k: int = 1,
       **kwargs) -> tuple[Tensor[N, T], Tensor[N, T]]        # (advantages, returns)

Inputs:
- ``rewards``: outcome reward of each trajectory (float, int or bool; non-float
  inputs are promoted to the default float dtype).
- ``group_ids``: integer tensor; trajectories sampled from the same prompt share
  an id. Groups need not be contiguous, sorted, or of equal size.
- ``mask``: ``mask != 0`` marks the response tokens that are trained on. Zeros are
  padding (normally at the end: right padding) or, in multi-turn rollouts, tool /
  environment output inside the sequence. A masked position is *not a step*:
  it receives no reward, advantage or return, and discounting (gamma, lam) and
  bootstrapping skip over it as if the row were compacted to its valid tokens.
  The outcome reward is credited to the last valid token of each row.
- ``token_rewards``: optional per-token rewards (e.g. -beta * KL_t when the KL
  penalty is put "in the reward"); only valid positions are read.
- ``values`` (``gae`` only): critic values V(s_t) at response positions.
- ``baseline`` (``remax`` only): reward of the greedy response to the same prompt.

Outputs: ``advantages`` and ``returns``, both [N, T] and exactly 0 where mask is 0.
``returns`` are the value-function targets: for ``gae`` A + V; for every other
estimator the per-token discounted reward-to-go
    G_t = sum_{s >= t, s valid} gamma^{(number of valid steps from t to s)} r_s
of the token rewards r (outcome reward at the last valid token), so a critic
trained on them by any estimator learns the same, well-defined quantity.

Outcome-level estimators (grpo, dr_grpo, rloo, remax, and the first stage of
reinforce_pp_baseline) score a trajectory by
    score_i = rewards_i + sum_t token_rewards_{i,t}          ("KL in the reward" folds into the score)
compute one scalar advantage per trajectory and broadcast it over its valid tokens.

Each registered function carries ``requires: frozenset[str]`` (a subset of
{"values", "baseline"}) naming the optional inputs it cannot work without, so the
loop knows what to compute (e.g. run a critic, or generate a greedy response);
calling it without them raises ValueError.

Estimators that whiten over "all valid tokens of the batch" (reinforce_pp,
reinforce_pp_baseline, gae with whiten=True) use the statistics of whatever is
passed in: call them once on the whole rollout batch, not per micro-batch.

Unknown keyword arguments are accepted and ignored so that a trainer can pass
one config dict to whichever estimator is selected by name. Advantages and
returns are targets, computed without gradient.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable, Optional, TypeVar

import torch
from torch import Tensor

from rlvr.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")

__all__ = [
    "ADVANTAGES",
    "OPTIONAL_INPUTS",
    "needs",
    "group_mean_std",
    "masked_whiten",
    "discounted_returns",
    "grpo_advantages",
    "dr_grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "gae_advantages",
    "pass_at_k_advantages",
]

#: Inputs an estimator may declare in ``requires`` (everything else is always available).
OPTIONAL_INPUTS = frozenset({"values", "baseline"})

F = TypeVar("F", bound=Callable[..., tuple[Tensor, Tensor]])


def needs(*inputs: str) -> Callable[[F], F]:
    """Decorator: mark an estimator as requiring the optional keyword inputs ``inputs``.

    Sets ``fn.requires = frozenset(inputs)`` (a subset of ``OPTIONAL_INPUTS``) and makes
    the call raise ValueError when one of them is missing or None, naming what to pass.
    ``@needs()`` marks an estimator that requires nothing beyond rewards/group_ids/mask.
    """
    unknown = set(inputs) - OPTIONAL_INPUTS
    if unknown:
        raise ValueError(f"unknown required input(s) {sorted(unknown)}; allowed: {sorted(OPTIONAL_INPUTS)}")
    required = frozenset(inputs)

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def checked(*args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
            missing = sorted(name for name in required if kwargs.get(name) is None)
            if missing:
                raise ValueError(
                    f"advantage estimator {fn.__name__} requires {', '.join(repr(m) for m in missing)} "
                    f"(pass {', '.join(f'{m}=...' for m in missing)}); its requires = {sorted(required)}"
                )
            return fn(*args, **kwargs)

        checked.requires = required  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return wrap


# --------------------------------------------------------------------------- input handling


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


def _float(x: Tensor) -> Tensor:
    return x if x.dtype.is_floating_point else x.to(torch.get_default_dtype())


def _prepare(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    token_rewards: Optional[Tensor],
    values: Optional[Tensor] = None,
    baseline: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Validate shapes; return (rewards, valid, token_r, values, baseline) in one float dtype.

    ``valid`` is the bool mask; ``token_r`` is token_rewards zeroed at masked positions
    (zeros if None), so garbage at padding can never leak into scores or returns.
    """
    rewards = _check_inputs(rewards, group_ids)
    if mask.dim() != 2 or mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"mask must be [N, T] with N = {rewards.shape[0]}, got shape {tuple(mask.shape)}")
    for name, t in (("token_rewards", token_rewards), ("values", values)):
        if t is not None and t.shape != mask.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} != mask shape {tuple(mask.shape)}")
    if baseline is not None and baseline.shape != rewards.shape:
        raise ValueError(f"baseline shape {tuple(baseline.shape)} != rewards shape {tuple(rewards.shape)}")

    dtype = rewards.dtype
    for t in (token_rewards, values, baseline):
        if t is not None:
            dtype = torch.promote_types(dtype, _float(t).dtype)
    valid = mask != 0
    rewards = rewards.detach().to(dtype)
    if token_rewards is None:
        token_r = torch.zeros(mask.shape, dtype=dtype, device=rewards.device)
    else:
        # where, not multiply: a non-finite value at a masked position must not become NaN.
        token_r = torch.where(valid, token_rewards.detach().to(dtype), torch.zeros((), dtype=dtype))
    if values is not None:
        values = torch.where(valid, values.detach().to(dtype), torch.zeros((), dtype=dtype))
    if baseline is not None:
        baseline = baseline.detach().to(dtype)
    return rewards, valid, token_r, values, baseline


def _last_valid_index(valid: Tensor) -> tuple[Tensor, Tensor]:
    """(index of the last valid position of each row [N] long, row has any valid token [N] bool)."""
    n, t = valid.shape
    has_any = valid.any(dim=-1)
    if t == 0:
        return torch.zeros(n, dtype=torch.long, device=valid.device), has_any
    # argmax returns the first maximum; on the flipped row that is the last valid position.
    last = (t - 1) - valid.flip(-1).to(torch.uint8).argmax(dim=-1)
    return last, has_any


def _token_level_rewards(rewards: Tensor, valid: Tensor, token_r: Tensor) -> Tensor:
    """r_t = token_rewards_t, plus the outcome reward at the last valid token ([N, T]).

    A row without valid tokens has nowhere to put its outcome reward: it is dropped
    (such a row is never trained on anyway).
    """
    last, has_any = _last_valid_index(valid)
    r = token_r.clone()
    if r.shape[1] > 0:
        rows = torch.arange(r.shape[0], device=r.device)
        r[rows, last] += torch.where(has_any, rewards, torch.zeros_like(rewards))
    return r


def _score(rewards: Tensor, token_r: Tensor) -> Tensor:
    """Sequence score [N] of the outcome-level estimators: outcome reward + sum of token rewards."""
    return rewards + token_r.sum(dim=-1)


def discounted_returns(r: Tensor, valid: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go over valid positions only:  G_t = r_t + gamma * G_{next valid t' > t}.

    Masked positions are not steps (no reward, no discount applied across them),
    i.e. the same as compacting each row to its valid tokens; G is 0 there.

    Args:
        r: Tensor[N, T] per-token rewards.
        valid: Tensor[N, T] bool (or 0/1), True for real steps.
        gamma: discount factor.

    Returns:
        Tensor[N, T] returns, 0 where not valid.
    """
    valid = valid != 0
    out = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])
    # A reverse scan over T: cheap next to the forward passes, and it handles interior masks exactly.
    for t in range(r.shape[1] - 1, -1, -1):
        m = valid[:, t]
        running = torch.where(m, r[:, t] + gamma * running, running)
        out[:, t] = torch.where(m, running, torch.zeros_like(running))
    return out


def masked_whiten(x: Tensor, valid: Tensor, eps: float = 1e-6) -> Tensor:
    """(x - mean) / (std + eps) with mean and std over the valid elements only; 0 elsewhere.

        mean = sum_valid x / n,   std = sqrt( sum_valid (x - mean)^2 / (n - 1) )

    std is Bessel-corrected (n - 1) as in verl's ``masked_whiten`` and GRPO here; with
    n == 1 (no spread estimate) or all valid x equal the result is exactly 0.

    Args:
        x: Tensor[...] float.
        valid: Tensor[...] same shape, nonzero = include.
        eps: added to the std to avoid division by zero.
    """
    valid = valid != 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return torch.zeros_like(x)
    xv = torch.where(valid, x, zero)
    n = valid.sum().to(x.dtype)
    mean = xv.sum() / n.clamp(min=1)
    # As in group_mean_std: sum/n of a constant can be an ulp off the constant, and that
    # residual divided by (0 + eps) would be a spurious O(1) value; use the exact constant.
    vmax = torch.where(valid, x, torch.full((), -math.inf, dtype=x.dtype, device=x.device)).amax()
    vmin = torch.where(valid, x, torch.full((), math.inf, dtype=x.dtype, device=x.device)).amin()
    mean = torch.where(vmax == vmin, vmax, mean)
    dev = torch.where(valid, x - mean, zero)
    var = torch.where(n > 1, (dev * dev).sum() / (n - 1).clamp(min=1), zero)
    den = var.sqrt() + eps
    # den == 0 only with eps == 0 and zero spread, where dev is exactly 0: return 0, not 0/0.
    return dev / torch.where(den == 0, torch.ones_like(den), den)


def _outcome_output(adv: Tensor, rewards: Tensor, valid: Tensor, token_r: Tensor, gamma: float
                    ) -> tuple[Tensor, Tensor]:
    """Broadcast a per-trajectory advantage [N] over valid tokens; returns = reward-to-go."""
    adv_t = torch.where(valid, adv[:, None], torch.zeros((), dtype=adv.dtype, device=adv.device))
    returns = discounted_returns(_token_level_rewards(rewards, valid, token_r), valid, gamma)
    return adv_t, returns


# --------------------------------------------------------------------------- group statistics


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


def _grpo_scalar(score: Tensor, group_ids: Tensor, eps: float, scale_by_std: bool) -> Tensor:
    mean, std, _ = group_mean_std(score, group_ids)
    adv = score - mean
    if scale_by_std:
        den = std + eps
        # Only reachable with eps == 0: then den == 0 exactly for size-1 and constant
        # groups, whose centred score is exactly 0 too, so return 0 rather than 0/0.
        adv = adv / torch.where(den == 0, torch.ones_like(den), den)
    return adv


# --------------------------------------------------------------------------- estimators


@ADVANTAGES.register("grpo")
@needs()
def grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    scale_by_std: bool = True,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """GRPO outcome advantage (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of
    Mathematical Reasoning in Open Language Models", Sec. 4.1.2).

        s_i   = r_i + sum_t token_rewards_{i,t}
        A_i   = (s_i - mean_group(s)) / (std_group(s) + eps)     if scale_by_std
        A_i   =  s_i - mean_group(s)                             otherwise
        A_i,t = A_i at every valid token t of trajectory i

    std_group is the unbiased (Bessel-corrected, n-1) sample std, matching
    ``torch.std`` and the TRL / verl implementations. Groups of size 1 and groups
    whose scores are all equal get advantage exactly 0 (no NaN, even with eps=0).

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, folded into the score.
        gamma: discount of the returned reward-to-go (the advantage does not use it).
        eps: added to the std to avoid division by zero.
        scale_by_std: divide by the group std (False gives the Dr. GRPO estimator).
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages Tensor[N, T], returns Tensor[N, T] reward-to-go), 0 where mask is 0.
    """
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, token_rewards)
    adv = _grpo_scalar(_score(rewards, token_r), group_ids, eps, scale_by_std)
    return _outcome_output(adv, rewards, valid, token_r, gamma)


@ADVANTAGES.register("rft")
@needs()
def rft_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    accept: float = 1.0,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Rejection-sampling fine-tuning, one round of expert iteration (Zelikman et al. 2022,
    STaR; Yuan et al. 2023, RFT; Singh et al. 2023, ReST-EM; Huang et al. 2024, "Self-Improvement
    in Language Models: The Sharpening Mechanism"): sample, keep what the verifier accepts,
    fine-tune on it.

        s_i   = r_i + sum_t token_rewards_{i,t}
        A_i   = 1 if s_i >= accept else 0,   broadcast over the valid tokens of trajectory i

    With the ``reinforce`` loss (-A * log pi per token) the update is the negative
    log-likelihood of the accepted samples only: supervised fine-tuning on the policy's own
    verified samples, rejected ones ignored (no baseline, no negative gradient); ``rl.epochs``
    passes over each batch make one expert-iteration round. Groups play no part.

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long (unused: the acceptance is per sample).
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, folded into the score.
        gamma: discount of the returned reward-to-go.
        accept: the lowest accepted score (the correctness reward's 1.0 by default).
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages, returns), Tensor[N, T] each: 1 on the accepted samples' valid tokens, else 0.
    """
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, token_rewards)
    adv = (_score(rewards, token_r) >= accept).to(rewards.dtype)
    return _outcome_output(adv, rewards, valid, token_r, gamma)


@ADVANTAGES.register("dr_grpo")
@needs()
def dr_grpo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective").

        s_i   = r_i + sum_t token_rewards_{i,t}
        A_i   = s_i - mean_group(s),  broadcast over the valid tokens of trajectory i

    The std division of GRPO is dropped because it up-weights prompts that are
    nearly always or never solved (a question-difficulty bias).

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, folded into the score.
        gamma: discount of the returned reward-to-go.
        eps: unused (shared estimator signature).
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages, returns), Tensor[N, T] each; advantage 0 for size-1 and constant groups.
    """
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, token_rewards)
    adv = _grpo_scalar(_score(rewards, token_r), group_ids, eps, scale_by_std=False)
    return _outcome_output(adv, rewards, valid, token_r, gamma)


@ADVANTAGES.register("rloo")
@needs()
def rloo_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """REINFORCE Leave-One-Out advantage (Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE Style Optimization for Learning from Human Feedback in LLMs").

        s_i = r_i + sum_t token_rewards_{i,t}
        A_i = s_i - (1/(n-1)) * sum_{j != i, j in group(i)} s_j
            = n/(n-1) * (s_i - mean_group(s))

    where n is the size of i's group, broadcast over the valid tokens of i. The
    baseline excludes s_i, so it is independent of the i-th sample and the
    estimator stays unbiased.

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, folded into the score.
        gamma: discount of the returned reward-to-go.
        eps: unused (shared estimator signature).
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages, returns), Tensor[N, T] each; groups of size 1 (no leave-one-out
        baseline) get advantage 0.
    """
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, token_rewards)
    score = _score(rewards, token_r)
    mean, _, count = group_mean_std(score, group_ids)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return _outcome_output((score - mean) * scale, rewards, valid, token_r, gamma)


@ADVANTAGES.register("reinforce_pp")
@needs()
def reinforce_pp_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models"; OpenRLHF ``advantage_estimator=reinforce``).

        r_t = token_rewards_t  (+ rewards at the last valid token)
        G_t = sum_{s >= t} gamma^(s-t) r_s                 (valid steps only)
        A_t = (G_t - mean(G)) / (std(G) + eps)             mean, std over ALL valid tokens of the batch

    No critic and no per-prompt baseline: the global (batch) whitening is the
    baseline, which the paper argues is more stable than per-prompt normalisation.
    std is Bessel-corrected (see ``masked_whiten``). ``group_ids`` is validated but
    otherwise ignored.

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long (unused beyond validation).
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, e.g. -beta * KL_t.
        gamma: discount factor.
        eps: added to the batch std.
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages = whitened G, returns = G), Tensor[N, T] each, 0 where mask is 0.
    """
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, token_rewards)
    returns = discounted_returns(_token_level_rewards(rewards, valid, token_r), valid, gamma)
    return masked_whiten(returns, valid, eps), returns


@ADVANTAGES.register("reinforce_pp_baseline")
@needs()
def reinforce_pp_baseline_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for
    Aligning Large Language Models"; OpenRLHF ``advantage_estimator=reinforce_baseline``).

        s_i   = r_i + sum_t token_rewards_{i,t}
        a_i   = s_i - mean_group(s)                        (group mean, no std division)
        A_i,t = (a_i - mean(a)) / (std(a) + eps)           mean, std over ALL valid tokens of the
                                                           batch (a_i counted once per valid token)

    The group mean removes per-prompt difficulty; the batch whitening then rescales
    with a statistic that, unlike GRPO's per-group std, does not blow up nearly
    solved / unsolved prompts. With token_rewards the KL enters only through the
    score (OpenRLHF instead adds -KL_t per token after the baseline subtraction and
    recommends the KL-in-loss form for this estimator).

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, folded into the score.
        gamma: discount of the returned reward-to-go.
        eps: added to the batch std.
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages, returns = reward-to-go), Tensor[N, T] each, 0 where mask is 0.
    """
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, token_rewards)
    centred = _grpo_scalar(_score(rewards, token_r), group_ids, eps, scale_by_std=False)
    adv_t, returns = _outcome_output(centred, rewards, valid, token_r, gamma)
    return masked_whiten(adv_t, valid, eps), returns


@ADVANTAGES.register("remax")
@needs("baseline")
def remax_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    baseline: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement
    Learning Method for Aligning Large Language Models").

        s_i   = r_i + sum_t token_rewards_{i,t}
        A_i   = s_i - b_i,   b_i = reward of the greedy (argmax-decoded) response to i's prompt

    broadcast over the valid tokens of i. The greedy baseline does not depend on
    the sampled response, so the estimator is unbiased; it needs one extra greedy
    generation per prompt (``requires = {"baseline"}``). The baseline is used as given
    (the greedy response's outcome reward; fold its own KL in first if you want it).
    ``group_ids`` is validated but otherwise ignored.

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long (unused beyond validation).
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, folded into the score.
        baseline: Tensor[N] greedy-response reward for each trajectory's prompt (required).
        gamma: discount of the returned reward-to-go.
        eps: unused (shared estimator signature).
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages, returns = reward-to-go), Tensor[N, T] each, 0 where mask is 0.
    """
    rewards, valid, token_r, _, baseline = _prepare(rewards, group_ids, mask, token_rewards, baseline=baseline)
    return _outcome_output(_score(rewards, token_r) - baseline, rewards, valid, token_r, gamma)


@ADVANTAGES.register("gae")
@needs("values")
def gae_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    values: Optional[Tensor] = None,
    gamma: float = 1.0,
    lam: float = 1.0,
    eps: float = 1e-6,
    whiten: bool = True,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation"), as used by PPO for LLMs.

        r_t     = token_rewards_t  (+ rewards at the last valid token)
        delta_t = r_t + gamma * V_{t+1} - V_t              V after the last valid token = 0 (terminal)
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}
        R_t     = A_t + V_t                                (returns: the value targets, TD(lambda))
        A_t     <- (A_t - mean(A)) / (std(A) + eps)        if whiten: over all valid tokens of the batch

    Whitening the advantages (not the returns) is standard PPO practice (OpenAI
    baselines, TRL, verl, OpenRLHF); it keeps the policy-gradient scale fixed while
    the value targets stay in reward units. lam = 1 gives the Monte-Carlo
    advantage G_t - V_t, lam = 0 the one-step TD error.

    Masks: right padding ends the episode at the last valid token. Masked positions
    inside a row (tool / environment output in multi-turn rollouts) are not steps:
    t+1 means the next *valid* position, so delta, gamma and lam skip over them,
    exactly as if each row were compacted to its valid tokens. Values there are ignored.
    ``group_ids`` is validated but otherwise ignored. ``values`` are detached: the
    outputs are targets.

    Args:
        rewards: Tensor[N] outcome reward per trajectory.
        group_ids: Tensor[N] long (unused beyond validation).
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: optional Tensor[N, T] per-token rewards, e.g. -beta * KL_t.
        values: Tensor[N, T] critic values V(s_t) at response positions (required).
        gamma: discount factor.
        lam: GAE lambda (bias / variance trade-off).
        eps: added to the std when whitening.
        whiten: whiten the advantages over the valid tokens of the batch.
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages Tensor[N, T], returns Tensor[N, T] = unwhitened A + V), 0 where mask is 0.
    """
    rewards, valid, token_r, values, _ = _prepare(rewards, group_ids, mask, token_rewards, values=values)
    assert values is not None  # guaranteed by @needs("values")
    r = _token_level_rewards(rewards, valid, token_r)
    adv = torch.zeros_like(r)
    next_value = r.new_zeros(r.shape[0])   # V of the next valid step; 0 past the end (terminal)
    next_adv = r.new_zeros(r.shape[0])     # A of the next valid step
    for t in range(r.shape[1] - 1, -1, -1):
        m = valid[:, t]
        delta = r[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_adv
        # At a masked position nothing moves: the carried V and A jump straight over it.
        next_adv = torch.where(m, a_t, next_adv)
        next_value = torch.where(m, values[:, t], next_value)
        adv[:, t] = torch.where(m, a_t, torch.zeros_like(a_t))
    returns = torch.where(valid, adv + values, torch.zeros_like(adv))
    if whiten:
        adv = masked_whiten(adv, valid, eps)
    return adv, returns


def _binom_ratio(a: Tensor, b: Tensor, m: int) -> Tensor:
    """C(a, m) / C(b, m) = prod_{i<m} (a - i) / (b - i), elementwise, for integer-valued a <= b, m <= b.

    The product form is exact for small m and never forms the (huge) binomials. If a < m
    the factor with i = a is exactly 0, so the ratio is 0 (C(a, m) = 0). m = 0 gives 1.
    """
    i = torch.arange(m, dtype=a.dtype, device=a.device)
    return ((a[:, None] - i) / (b[:, None] - i)).clamp(min=0).prod(dim=-1)


@ADVANTAGES.register("pass_at_k")
@needs()
def pass_at_k_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_rewards: Optional[Tensor] = None,
    gamma: float = 1.0,
    eps: float = 1e-6,
    k: int = 1,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Analytical Pass@k-training advantage for binary rewards (Chen et al. 2025, "Pass@k
    Training for Adaptively Balancing Exploration and Exploitation of Large Reasoning Models").

    A group of N samples with N_pos correct, N_neg = N - N_pos wrong. Pass@k training
    scores every k-subset of the group by its pass@k reward max_{j in subset} r_j and
    gives each response the mean normalised advantage of the subsets that contain it:

        R̄     = 1 - C(N_neg, k) / C(N, k)             mean subset reward (unbiased pass@k)
        σ     = sqrt(R̄ (1 - R̄))                       population std of the 0/1 subset rewards
        A_pos = (1 - R̄) / (σ + eps)
        A_neg = (1 - R̄ - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / (σ + eps)

    Derivation. A subset fails iff all its k members are wrong: C(N_neg, k) of the C(N, k)
    subsets, which gives R̄; subset rewards are Bernoulli(R̄), hence σ. A correct response
    makes every subset containing it succeed, so its mean (reward - R̄) is 1 - R̄. For a
    wrong response, of the C(N-1, k-1) subsets containing it, C(N_neg-1, k-1) consist only
    of wrong responses, so a random one succeeds with probability
    1 - C(N_neg-1, k-1)/C(N-1, k-1); subtracting R̄ gives A_neg. (Equivalently
    A_neg = -(N_pos/N) * C(N_neg-1, k-1)/C(N-1, k-1) / σ <= 0, and the group's advantages
    sum to 0.) For k = 1: R̄ = N_pos/N = p, A_pos = (1-p)/σ, A_neg = -p/σ, i.e. GRPO
    with the population (1/N) std instead of the Bessel-corrected one.

    A response is correct iff its outcome reward > 0.5 (rewards are meant to be 0/1;
    the threshold makes e.g. 0.9/0.1-shaped rewards work too). Groups where R̄ is 0 or 1
    (all wrong, all right, or fewer than k wrong so every subset succeeds) have σ = 0
    and get advantage exactly 0. Each scalar is broadcast over the valid tokens.

    The formula needs binary outcomes, so a KL-in-the-reward penalty cannot be folded
    into the score: token_rewards must be None (use a KL loss term instead).

    Args:
        rewards: Tensor[N] outcome reward per trajectory (> 0.5 = correct).
        group_ids: Tensor[N] long; trajectories of the same prompt share an id.
        mask: Tensor[N, T]; nonzero = trained response token.
        token_rewards: must be None (see above).
        gamma: discount of the returned reward-to-go.
        eps: added to σ to avoid division by zero.
        k: subset size of pass@k, 1 <= k <= every group's size.
        **kwargs: ignored (shared estimator signature).

    Returns:
        (advantages, returns = reward-to-go of the outcome reward), Tensor[N, T] each,
        0 where mask is 0.

    Raises:
        ValueError: k not an integer >= 1, k larger than some group, or token_rewards given.
    """
    if token_rewards is not None:
        raise ValueError(
            "pass_at_k needs binary outcome rewards and cannot fold token_rewards (KL in the reward) "
            "into them; pass token_rewards=None and use a KL loss term instead"
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"pass_at_k: k must be an integer >= 1, got {k!r}")
    k = int(k)
    rewards, valid, token_r, _, _ = _prepare(rewards, group_ids, mask, None)

    uniq, inv = torch.unique(group_ids, return_inverse=True)
    # float64: the binomial ratios are products of k fractions; exact enough for any real k.
    correct = rewards > 0.5
    zeros = torch.zeros(uniq.numel(), dtype=torch.float64, device=rewards.device)
    n = zeros.index_add(0, inv, torch.ones_like(rewards, dtype=torch.float64))
    n_pos = zeros.index_add(0, inv, correct.to(torch.float64))
    if uniq.numel() > 0 and bool((n < k).any()):
        raise ValueError(f"pass_at_k: k = {k} exceeds the smallest group size {int(n.min().item())}")
    n_neg = n - n_pos

    r_bar = 1.0 - _binom_ratio(n_neg, n, k)
    sigma = (r_bar * (1.0 - r_bar)).clamp(min=0).sqrt()
    # Probability that a random k-subset containing a given wrong response is all wrong.
    p_all_wrong = _binom_ratio(n_neg - 1, n - 1, k - 1)
    den = sigma + eps
    den = torch.where(den == 0, torch.ones_like(den), den)
    # sigma == 0 exactly iff r_bar is exactly 0 or 1 (the ratio is then 1 or 0 exactly):
    # no subset contrast, advantage 0.
    a_pos = torch.where(sigma > 0, (1.0 - r_bar) / den, zeros)
    a_neg = torch.where(sigma > 0, (1.0 - r_bar - p_all_wrong) / den, zeros)
    adv = torch.where(correct, a_pos[inv], a_neg[inv]).to(rewards.dtype)
    return _outcome_output(adv, rewards, valid, token_r, gamma)
