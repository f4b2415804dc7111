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
    "gspo_loss",
    "cispo_loss",
    "reinforce_loss",
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


def _ratio_stats(ratio: Tensor, logp: Tensor, old_logp: Tensor, m: Tensor) -> dict[str, Tensor]:
    """ratio_mean / ratio_max / approx_kl over unmasked tokens (shared by every policy loss)."""
    with torch.no_grad():
        return {
            "ratio_mean": masked_mean(ratio, m),
            # ratio > 0, so 0 is a safe fill that can never win the max.
            "ratio_max": torch.where(m > 0, ratio, torch.zeros_like(ratio)).max()
            if ratio.numel() > 0
            else ratio.new_zeros(()),
            "approx_kl": masked_mean(kl_k3(old_logp, logp), m),
        }


def _token_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    # Clamp the log ratio so exp stays finite (exp(20) ~ 4.9e8) even for a near-zero-probability token.
    return torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


@POLICY_LOSSES.register("ppo")
def ppo_clip_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: Optional[float] = None,
    **kwargs: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) with DAPO clip-higher (Yu et al. 2025)
    and optional dual-clip (Ye et al. 2020).

        ratio = exp(logp - old_logp)     (log ratio clamped to [-20, 20] so exp stays finite)
        obj   = min(ratio * adv, clip(ratio, 1 - clip_low, 1 + clip_high) * adv)
        obj   = max(obj, clip_c * adv)   where adv < 0, only if clip_c is not None  (dual-clip)
        loss  = -obj * mask

    With clip_low == clip_high == eps this is standard PPO-clip; DAPO's
    clip-higher uses clip_high > clip_low (e.g. 0.28 vs 0.2) so low-probability
    tokens with positive advantage can grow more, countering entropy collapse.
    Where the clipped term is the minimum the loss is constant in logp, so those
    tokens get zero gradient.

    Dual-clip: Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    Reinforcement Learning". For adv < 0 plain PPO's pessimistic min picks
    ratio * adv when ratio > 1 + clip_high, which is unbounded below as the ratio
    grows (a stale, very off-policy token can dominate the batch). Dual-clip bounds
    the objective below by clip_c * adv, i.e. the per-token loss is
    min(ppo_loss, -clip_c * adv) = -clip_c * adv = clip_c * |adv| once
    ratio > clip_c, with zero gradient there. Tokens with adv >= 0 are unchanged.

    Args:
        logp: Tensor[B, T] log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: Tensor[B, T] log-probs under the behaviour policy that sampled them (no grad).
        adv: Tensor[B, T] advantage per token (a trajectory advantage broadcast over its tokens).
        mask: Tensor[B, T] 1/True for response tokens, 0/False for padding and prompt.
        clip_low: lower clip epsilon, ratio is clipped below at 1 - clip_low.
        clip_high: upper clip epsilon, ratio is clipped above at 1 + clip_high.
        clip_c: dual-clip constant c > 1 (the paper uses 3); None (default) disables dual-clip.
        **kwargs: ignored; accepted so every registered loss shares one call signature.

    Returns:
        per_token: Tensor[B, T] loss, 0 at masked-out positions, NOT reduced
            (reduce with ``aggregate_loss``).
        stats: detached scalars, masked means over this call's tokens:
            ``clip_frac``: fraction of tokens where the clipped term is strictly
                smaller, i.e. clipping changed the objective (and zeroed the gradient);
            ``dual_clip_frac`` (only when clip_c is not None): fraction of tokens
                where the dual-clip bound clip_c * adv is strictly active;
            ``ratio_mean``, ``ratio_max``: of ratio over unmasked tokens (0 if none);
            ``approx_kl``: mean of k3 for KL(pi_old || pi_theta) on tokens sampled
                from pi_old: ratio - 1 - log(ratio) (Schulman 2020), >= 0.

    Raises:
        ValueError: shapes differ, or clip_c is not None and clip_c <= 1.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    if clip_c is not None and not clip_c > 1.0:
        # c <= 1 would bound the objective at or above ratio = 1, cutting into the trust region itself.
        raise ValueError(f"dual-clip constant clip_c must be > 1, got {clip_c}")
    m = mask.to(logp.dtype)
    ratio = _token_ratio(logp, old_logp)
    surr_unclipped = ratio * adv
    surr_clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    obj = torch.minimum(surr_unclipped, surr_clipped)
    if clip_c is not None:
        # Lower bound only for adv < 0: for adv >= 0 the bound clip_c * adv would raise the objective.
        dual_active = (adv < 0) & (clip_c * adv > obj)
        obj = torch.where(dual_active, clip_c * adv, obj)
    per_token = -obj * m

    with torch.no_grad():
        clipped = (surr_clipped < surr_unclipped).to(logp.dtype)
        stats = {"clip_frac": masked_mean(clipped, m)}
        if clip_c is not None:
            stats["dual_clip_frac"] = masked_mean(dual_active.to(logp.dtype), m)
        stats.update(_ratio_stats(ratio, logp, old_logp, m))
    return per_token, {k: v.detach() for k, v in stats.items()}


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: Optional[float] = None,
    **kwargs: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: sequence-level importance ratio and clipping (Zheng et al. 2025,
    "Group Sequence Policy Optimization"), in its GSPO-token form.

        |y_i|    = sum_t mask[i,t]
        s_i      = exp( (1/|y_i|) * sum_t mask[i,t] * (logp[i,t] - old_logp[i,t]) )
                   (geometric mean of the token ratios; its log clamped to [-20, 20])
        s_i,t    = sg[s_i] * exp(logp[i,t] - sg[logp[i,t]])      (GSPO-token; value == s_i)
        loss_i,t = -min(s_i,t * adv[i,t], clip(s_i,t, 1 - clip_low, 1 + clip_high) * adv[i,t]) * mask[i,t]

    sg[] is stop-gradient. The value of s_i,t is s_i for every token of sequence i,
    so every token of a sequence shares one loss value and one clip decision,
    and d loss_i,t / d logp[i,t] = -s_i * adv[i,t] when not clipped (0 when clipped).
    With adv constant over the sequence (adv[i,t] = A_i) this is exactly the GSPO
    gradient  s_i * A_i * (1/|y_i|) * sum_t grad logp[i,t]  once aggregated with
    ``seq_mean_token_mean``; GSPO-token additionally allows per-token advantages.

    Aggregation: the paper's objective (both GSPO and GSPO-token) is
    (1/G) * sum_i (1/|y_i|) * sum_t (...) = mean over sequences of the sequence
    term, which is reproduced by ``loss_agg: seq_mean_token_mean``. ``token_mean``
    instead weights each sequence by its length |y_i| (DAPO-style), which is NOT
    the paper's objective.

    Clip range: because s_i is a per-token geometric mean it stays very close to
    1, and the paper uses far smaller clip ranges than PPO: clip_low = 3e-4,
    clip_high = 4e-4. The defaults (0.2) barely ever clip; set them explicitly.

    Args:
        logp: Tensor[B, T] log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: Tensor[B, T] log-probs under the behaviour policy that sampled them (no grad).
        adv: Tensor[B, T] advantage per token; GSPO uses the sequence advantage A_i
            broadcast over the sequence's tokens.
        mask: Tensor[B, T] 1/True for response tokens, 0/False for padding and prompt;
            defines |y_i| and which tokens enter s_i. A row with no unmasked token
            gets s_i = 1 and loss 0.
        clip_low: s_i is clipped below at 1 - clip_low.
        clip_high: s_i is clipped above at 1 + clip_high.
        clip_c: unused (shared policy-loss signature).
        **kwargs: ignored (shared policy-loss signature).

    Returns:
        per_token: Tensor[B, T] loss (the sequence's value on each of its tokens),
            0 at masked-out positions, NOT reduced.
        stats: detached scalars:
            ``clip_frac``: fraction of unmasked tokens whose sequence term is
                clipped (= length-weighted fraction of clipped sequences);
            ``seq_ratio_mean``, ``seq_ratio_max``: of s_i over non-empty sequences (0 if none);
            ``ratio_mean``, ``ratio_max``, ``approx_kl``: token-level, as for ``ppo``.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    m = mask.to(logp.dtype)
    # where(), not multiply: keeps a non-finite value at a masked position out of the sum.
    token_log_ratio = torch.where(m > 0, logp - old_logp, torch.zeros_like(logp)) * m
    lengths = m.sum(-1)
    seq_log_ratio = _safe_div(token_log_ratio.sum(-1), lengths).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    seq_ratio = torch.exp(seq_log_ratio)  # s_i, Tensor[B]
    # GSPO-token: value s_i, gradient s_i * d logp[i,t] (the factor exp(x - sg[x]) is 1 with derivative 1).
    s_tok = seq_ratio.detach()[:, None] * torch.exp(logp - logp.detach())
    surr_unclipped = s_tok * adv
    surr_clipped = s_tok.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(surr_unclipped, surr_clipped) * m

    with torch.no_grad():
        clipped = (surr_clipped < surr_unclipped).to(logp.dtype)
        nonempty = lengths > 0
        stats = {
            "clip_frac": masked_mean(clipped, m),
            "seq_ratio_mean": masked_mean(seq_ratio, nonempty),
            "seq_ratio_max": torch.where(nonempty, seq_ratio, torch.zeros_like(seq_ratio)).max()
            if seq_ratio.numel() > 0
            else seq_ratio.new_zeros(()),
        }
        stats.update(_ratio_stats(_token_ratio(logp, old_logp), logp, old_logp, m))
    return per_token, {k: v.detach() for k, v in stats.items()}


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: Optional[float] = None,
    **kwargs: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: clipped importance-sampling-weight policy optimisation (MiniMax 2025,
    "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention").

        ratio = exp(logp - old_logp)                     (log ratio clamped to [-20, 20])
        w     = sg[clip(ratio, 1 - clip_low, 1 + clip_high)]
        loss  = -w * adv * logp * mask

    PPO clips the *update*: a token whose clipped term is active gets zero
    gradient, and in long-CoT RL those are often the rare, low-probability
    "fork" tokens (e.g. "However", "Wait"). CISPO clips only the importance
    weight, under stop-gradient, so EVERY token keeps the REINFORCE gradient
    d loss / d logp = -w * adv; clipping merely bounds its size.

    MiniMax-M1 uses token-level normalisation (``loss_agg: token_mean``) and
    effectively no lower clip (only the upper bound is tuned): reproduce this
    with clip_low >= 1 (e.g. 1.0, lower bound 0, which a ratio > 0 never hits).

    Note the loss *value* is a surrogate whose only meaning is its gradient
    (it contains logp itself, so it is not comparable across losses).

    Args:
        logp: Tensor[B, T] log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: Tensor[B, T] log-probs under the behaviour policy that sampled them (no grad).
        adv: Tensor[B, T] advantage per token.
        mask: Tensor[B, T] 1/True for response tokens, 0/False for padding and prompt.
        clip_low: the IS weight is clipped below at 1 - clip_low.
        clip_high: the IS weight is clipped above at 1 + clip_high.
        clip_c: unused (shared policy-loss signature).
        **kwargs: ignored (shared policy-loss signature).

    Returns:
        per_token: Tensor[B, T] loss, 0 at masked-out positions, NOT reduced.
        stats: detached scalars:
            ``clip_frac``: fraction of unmasked tokens whose IS weight was clipped
                (they still get a gradient, unlike PPO);
            ``ratio_mean``, ``ratio_max``, ``approx_kl``: as for ``ppo``.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    m = mask.to(logp.dtype)
    ratio = _token_ratio(logp, old_logp)
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    per_token = -weight * adv * logp * m

    with torch.no_grad():
        stats = {"clip_frac": masked_mean((weight != ratio).to(logp.dtype), m)}
        stats.update(_ratio_stats(ratio, logp, old_logp, m))
    return per_token, {k: v.detach() for k, v in stats.items()}


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: Optional[float] = None,
    **kwargs: object,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain policy gradient (Williams 1992, "Simple Statistical Gradient-Following
    Algorithms for Connectionist Reinforcement Learning"):

        loss = -adv * logp * mask          d loss / d logp = -adv

    On-policy: there is no importance ratio and no clipping, so it is unbiased only
    when logp's policy is the one that sampled the tokens (one epoch, one
    mini-batch per rollout batch). old_logp is used only for the stats, which
    show how far off-policy the update has drifted.

    Args:
        logp: Tensor[B, T] log-probs of the sampled tokens under the current policy (requires grad).
        old_logp: Tensor[B, T] log-probs under the behaviour policy (stats only).
        adv: Tensor[B, T] advantage per token (or the return, for a no-baseline REINFORCE).
        mask: Tensor[B, T] 1/True for response tokens, 0/False for padding and prompt.
        clip_low, clip_high, clip_c: unused (shared policy-loss signature).
        **kwargs: ignored (shared policy-loss signature).

    Returns:
        per_token: Tensor[B, T] loss, 0 at masked-out positions, NOT reduced.
        stats: detached scalars ``ratio_mean``, ``ratio_max``, ``approx_kl`` as for ``ppo``.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv, mask=mask)
    m = mask.to(logp.dtype)
    per_token = -adv * logp * m
    stats = _ratio_stats(_token_ratio(logp, old_logp), logp, old_logp, m)
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
