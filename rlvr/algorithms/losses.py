"""Per-token policy losses and their reduction to a scalar.

The two steps are separate on purpose: a policy loss (``POLICY_LOSSES``) returns
an un-reduced per-token loss Tensor[B, T]; an aggregation mode
(``LOSS_AGGREGATIONS``) turns it into the scalar to backpropagate. Which
normaliser is used (tokens, sequences, constant length) is exactly where
GRPO, DAPO and Dr. GRPO differ, so it is chosen independently of the loss.

Shapes: B sequences (rows) by T response positions. ``mask`` is 1 (or True) for
response tokens that count and 0 for padding / prompt positions; float masks
act as per-token weights. Values at masked-out positions must be finite
(they are multiplied by 0, and inf * 0 = NaN).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from rlvr.algorithms.kl import LOG_RATIO_CLAMP, kl_k3
from rlvr.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")
LOSS_AGGREGATIONS: Registry = Registry("loss aggregation")

Number = Union[float, int, Tensor]

__all__ = [
    "POLICY_LOSSES",
    "LOSS_AGGREGATIONS",
    "masked_mean",
    "ppo_clip_loss",
    "aggregate_loss",
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 only when every weight is 0, in which case num is exactly 0 too;
    # dividing by 1 there returns 0 instead of NaN and keeps the autograd graph.
    return num / torch.where(den == 0, torch.ones_like(den), den)


def _as_tensor(x: Number, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """sum(x * mask) / sum(mask) over ``dim`` (all elements if None); 0 where sum(mask) == 0.

    Args:
        x: Tensor[...] values.
        mask: Tensor[...] same shape, 1/True = include, 0/False = exclude (float = weight).
        dim: reduction dim, or None for a full reduction.
    """
    m = mask.to(x.dtype)
    if dim is None:
        return _safe_div((x * m).sum(), m.sum())
    return _safe_div((x * m).sum(dim), m.sum(dim))


@POLICY_LOSSES.register("ppo")
def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) with DAPO clip-higher (Yu et al. 2025).

        ratio = exp(logp - old_logp)     (log ratio clamped to [-20, 20] so exp stays finite)
        loss  = -min(ratio * adv, clip(ratio, 1 - clip_low, 1 + clip_high) * adv) * mask

    With clip_low == clip_high == eps this is standard PPO-clip; DAPO's
    clip-higher uses clip_high > clip_low (e.g. 0.28 vs 0.2) so low-probability
    tokens with positive advantage can grow more, countering entropy collapse.
    Where the clipped term is the minimum the loss is constant in logp, so those
    tokens get zero gradient.

    Args:
        logp: Tensor[B, T] log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: Tensor[B, T] log-probs under the behaviour policy that sampled them (no grad).
        adv: Tensor[B, T] advantage per token (a trajectory advantage broadcast over its tokens).
        mask: Tensor[B, T] 1/True for response tokens, 0/False for padding and prompt.
        clip_low: lower clip epsilon, ratio is clipped below at 1 - clip_low.
        clip_high: upper clip epsilon, ratio is clipped above at 1 + clip_high.

    Returns:
        per_token: Tensor[B, T] loss, 0 at masked-out positions, NOT reduced
            (reduce with ``aggregate_loss``).
        stats: detached scalars, masked means over this call's tokens:
            ``clip_frac``: fraction of tokens where the clipped term is strictly
                smaller, i.e. clipping changed the objective (and zeroed the gradient);
            ``ratio_mean``, ``ratio_max``: of ratio over unmasked tokens (0 if none);
            ``approx_kl``: mean of k3 for KL(pi_old || pi_theta) on tokens sampled
                from pi_old: ratio - 1 - log(ratio) (Schulman 2020), >= 0.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    m = mask.to(logp.dtype)
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    surr_unclipped = ratio * adv
    surr_clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(surr_unclipped, surr_clipped) * m

    with torch.no_grad():
        clipped = (surr_clipped < surr_unclipped).to(logp.dtype)
        keep = m > 0
        stats = {
            "clip_frac": masked_mean(clipped, m),
            "ratio_mean": masked_mean(ratio, m),
            # ratio > 0, so 0 is a safe fill that can never win the max.
            "ratio_max": torch.where(keep, ratio, torch.zeros_like(ratio)).max()
            if ratio.numel() > 0
            else ratio.new_zeros(()),
            "approx_kl": masked_mean(kl_k3(old_logp, logp), m),
        }
    return per_token, {k: v.detach() for k, v in stats.items()}


@LOSS_AGGREGATIONS.register("token_mean")
def token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: Optional[Number] = None,
    num_seqs: Optional[Number] = None,
    norm_len: Optional[Number] = None,
) -> Tensor:
    """loss = sum_{b,t} per_token[b,t] * mask[b,t] / num_tokens   (DAPO token-level loss).

    Args:
        per_token: Tensor[B, T] un-reduced loss.
        mask: Tensor[B, T] 1 = counted token, 0 = padding.
        num_tokens: normaliser; defaults to mask.sum() of this tensor. When a
            mini-batch is split into micro-batches, pass the mini-batch's total
            token count so the micro-batch losses sum to the full-batch loss.
        num_seqs, norm_len: unused (shared aggregation signature).
    """
    m = mask.to(per_token.dtype)
    den = m.sum() if num_tokens is None else _as_tensor(num_tokens, per_token)
    return _safe_div((per_token * m).sum(), den)


@LOSS_AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: Optional[Number] = None,
    num_seqs: Optional[Number] = None,
    norm_len: Optional[Number] = None,
) -> Tensor:
    """loss = (1/num_seqs) * sum_b [ sum_t per_token[b,t]*mask[b,t] / sum_t mask[b,t] ]

    The original GRPO objective (Shao et al. 2024): each sequence's token mean,
    then a mean over sequences. A sequence with no unmasked tokens contributes 0
    (it still counts in the default num_seqs = B).

    Args:
        per_token: Tensor[B, T] un-reduced loss.
        mask: Tensor[B, T] 1 = counted token, 0 = padding.
        num_seqs: normaliser; defaults to B. Pass the mini-batch's sequence count
            when splitting into micro-batches.
        num_tokens, norm_len: unused (shared aggregation signature).
    """
    m = mask.to(per_token.dtype)
    seq_means = _safe_div((per_token * m).sum(-1), m.sum(-1))
    den = _as_tensor(per_token.shape[0] if num_seqs is None else num_seqs, per_token)
    return _safe_div(seq_means.sum(), den)


@LOSS_AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: Optional[Number] = None,
    num_seqs: Optional[Number] = None,
    norm_len: Optional[Number] = None,
) -> Tensor:
    """loss = (1/num_seqs) * sum_b sum_t per_token[b,t] * mask[b,t]

    Args:
        per_token: Tensor[B, T] un-reduced loss.
        mask: Tensor[B, T] 1 = counted token, 0 = padding.
        num_seqs: normaliser; defaults to B. Pass the mini-batch's sequence count
            when splitting into micro-batches.
        num_tokens, norm_len: unused (shared aggregation signature).
    """
    m = mask.to(per_token.dtype)
    den = _as_tensor(per_token.shape[0] if num_seqs is None else num_seqs, per_token)
    return _safe_div((per_token * m).sum(), den)


@LOSS_AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    per_token: Tensor,
    mask: Tensor,
    *,
    num_tokens: Optional[Number] = None,
    num_seqs: Optional[Number] = None,
    norm_len: Optional[Number] = None,
) -> Tensor:
    """loss = sum_{b,t} per_token[b,t] * mask[b,t] / (num_seqs * norm_len)

    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): a constant
    length normaliser removes GRPO's length bias (dividing by each sequence's own
    length favours long wrong answers and short right ones).

    Args:
        per_token: Tensor[B, T] un-reduced loss.
        mask: Tensor[B, T] 1 = counted token, 0 = padding.
        num_seqs: defaults to B; pass the mini-batch's sequence count for micro-batches.
        norm_len: constant length, e.g. the max response length; defaults to T.
            Pass it explicitly when micro-batches are padded to different T.
        num_tokens: unused (shared aggregation signature).
    """
    m = mask.to(per_token.dtype)
    n_seqs = per_token.shape[0] if num_seqs is None else num_seqs
    length = per_token.shape[-1] if norm_len is None else norm_len
    den = _as_tensor(n_seqs, per_token) * _as_tensor(length, per_token)
    return _safe_div((per_token * m).sum(), den)


def aggregate_loss(
    per_token: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_tokens: Optional[Number] = None,
    num_seqs: Optional[Number] = None,
    norm_len: Optional[Number] = None,
) -> Tensor:
    """Reduce a per-token loss Tensor[B, T] to a scalar with a mode from ``LOSS_AGGREGATIONS``.

    Modes (m = mask, L = per_token):
        token_mean:              sum(L*m) / num_tokens                (default num_tokens = sum(m))
        seq_mean_token_mean:     sum_b [sum_t L*m / sum_t m] / num_seqs   (default num_seqs = B)
        seq_mean_token_sum:      sum(L*m) / num_seqs
        seq_mean_token_sum_norm: sum(L*m) / (num_seqs * norm_len)     (default norm_len = T)

    Every mode is a sum of per-sequence terms over a normaliser that does not
    depend on the split, so for a mini-batch split into micro-batches, passing the
    mini-batch's global ``num_tokens`` / ``num_seqs`` (and ``norm_len``) makes the
    sum of micro-batch losses equal the full-batch loss, value and gradient.
    Sequences with no unmasked tokens contribute 0; an all-masked batch gives 0, not NaN.

    Args:
        per_token: Tensor[B, T] un-reduced loss.
        mask: Tensor[B, T] 1/True = counted token, 0/False = padding or prompt.
        mode: registered aggregation name.
        num_tokens: global token count (token_mean only); float, int or 0-d Tensor
            (e.g. the result of an all-reduce), as are num_seqs and norm_len.
        num_seqs: global sequence count (seq_* modes).
        norm_len: constant length normaliser (seq_mean_token_sum_norm only).

    Returns:
        scalar Tensor.
    """
    _check_same_shape(per_token=per_token, mask=mask)
    if per_token.dim() != 2:
        raise ValueError(f"per_token must be [B, T], got shape {tuple(per_token.shape)}")
    fn = LOSS_AGGREGATIONS.get(mode)
    return fn(per_token, mask, num_tokens=num_tokens, num_seqs=num_seqs, norm_len=norm_len)
