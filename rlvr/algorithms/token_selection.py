"""Which tokens and samples an update learns from: pure helpers, in no registry.

- ``high_entropy_mask`` restricts the loss mask to the highest-entropy ("forking")
  tokens of a batch (Wang et al. 2025).
- ``select_tokens`` adds the controls a study of that claim needs: the same fraction chosen
  at random, or the lowest-entropy tokens instead.
- ``sample_weights`` reweights positive vs negative samples by the sign of their
  advantage (Zhu et al. 2025, W-REINFORCE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["high_entropy_mask", "sample_weights", "select_tokens"]


def high_entropy_mask(entropy: Tensor, mask: Tensor, top_fraction: float) -> Tensor:
    """Keep only the top-rho fraction of valid tokens by entropy, across the WHOLE batch.

    Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive
    Effective Reinforcement Learning for LLM Reasoning": restricting the policy
    gradient to the top rho = 0.2 highest-entropy tokens of each batch matches or
    beats training on all tokens. The threshold is a batch-level percentile, not a
    per-sequence one, so a confident sequence may keep no token at all.

        N_valid = #{(b,t) : mask[b,t] > 0}
        k       = ceil(rho * N_valid)
        out     = mask at the k valid positions with the largest entropy, 0 elsewhere

    Exactly k tokens are kept. Ties at the threshold are broken by position in
    row-major order (the earlier [b, t] wins), so the result is deterministic.

    Only positions with mask > 0 can be selected, whatever entropy holds at
    padding. The output keeps mask's dtype and values (a float mask's weights
    survive on the kept tokens).

    To reproduce the paper the selection must be made over the batch the paper
    ranks (the whole rollout / mini-batch), not per micro-batch, and the loss
    normaliser should stay the count of ALL response tokens, as in DAPO's
    token-level loss (the indicator only zeroes terms inside the sum).

    Args:
        entropy: Tensor[B, T] per-token entropy of the policy's next-token
            distribution (any real values; only its order matters; no gradient flows).
        mask: Tensor[B, T] 1/True (or a positive weight) for response tokens,
            0/False for padding and prompt.
        top_fraction: rho in (0, 1]; 1 returns a copy of mask unchanged.

    Returns:
        Tensor[B, T], same dtype as mask: mask restricted to the selected tokens.

    Raises:
        ValueError: rho outside (0, 1], or entropy and mask shapes differ.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy shape {tuple(entropy.shape)} != mask shape {tuple(mask.shape)}")
    if top_fraction == 1.0:
        return mask.clone()
    with torch.no_grad():
        flat_mask = mask.reshape(-1)
        valid_idx = torch.nonzero(flat_mask > 0).squeeze(1)  # ascending = row-major order
        n_valid = valid_idx.numel()
        # round() first: 0.28 * 25 = 7.000000000000001 in floating point, whose ceil would be 8.
        k = math.ceil(round(top_fraction * n_valid, 6))
        # Stable descending sort keeps equal entropies in ascending index order: ties go to the earlier token.
        order = torch.sort(entropy.reshape(-1)[valid_idx], descending=True, stable=True).indices
        keep = torch.zeros(flat_mask.numel(), dtype=torch.bool, device=mask.device)
        keep[valid_idx[order[:k]]] = True
        return torch.where(keep.view_as(mask), mask, torch.zeros_like(mask))


def select_tokens(entropy: Tensor, mask: Tensor, fraction: float, how: str = "top_entropy",
                  generator: torch.Generator | None = None) -> Tensor:
    """The ``fraction`` of the batch's valid tokens an update learns from, chosen ``how``:

    - ``top_entropy``: the highest-entropy ones (``high_entropy_mask``; Wang et al. 2025);
    - ``bottom_entropy``: the lowest-entropy ones (the paper's "bottom 80%" control), ties
      broken as in ``high_entropy_mask``;
    - ``random``: ceil(fraction x N_valid) valid tokens drawn uniformly without replacement
      with ``generator`` (the control that tells "forking tokens" from "fewer tokens").

    Exactly ceil(fraction x N_valid) tokens are kept in every case; mask's dtype and values
    survive on them."""
    if how == "top_entropy":
        return high_entropy_mask(entropy, mask, fraction)
    if how == "bottom_entropy":
        return high_entropy_mask(-entropy, mask, fraction)
    if how == "random":
        scores = torch.rand(entropy.shape, generator=generator, device="cpu").to(entropy.device)
        return high_entropy_mask(scores, mask, fraction)
    raise ValueError(f"token selection must be top_entropy, bottom_entropy or random, got {how!r}")


def sample_weights(adv: Tensor, positive_weight: float, negative_weight: float) -> Tensor:
    """Per-sample weights by advantage sign (positive / negative sample reweighting).

        w[n] = positive_weight   if adv[n] > 0
               negative_weight   if adv[n] < 0
               1                 if adv[n] == 0   (the sample has no gradient anyway)

    Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning": decomposing the RLVR objective into positive-sample reinforcement
    (PSR) and negative-sample reinforcement (NSR), they find NSR alone preserves
    pass@k, and propose W-REINFORCE = lambda * PSR + NSR with lambda = 0.1, i.e.
    ``sample_weights(adv, positive_weight=0.1, negative_weight=1.0)``.
    positive_weight=0 gives NSR-only, negative_weight=0 PSR-only.

    Use: multiply the per-sample advantages before they are broadcast over tokens,
    ``adv = adv * sample_weights(adv, 0.1, 1.0)``. (The paper applies it to
    REINFORCE with rewards +1/-1, i.e. to the ``reinforce`` loss.)

    Args:
        adv: Tensor[N] per-sample advantages (any shape works elementwise).
        positive_weight: weight for samples with adv > 0, >= 0.
        negative_weight: weight for samples with adv < 0, >= 0.

    Returns:
        Tensor[N] weights, adv's dtype (float32 if adv is not floating point).

    Raises:
        ValueError: a negative weight (it would reverse the update's direction).
    """
    if positive_weight < 0 or negative_weight < 0:
        raise ValueError(f"weights must be >= 0, got positive={positive_weight}, negative={negative_weight}")
    dtype = adv.dtype if adv.is_floating_point() else torch.float32
    ones = torch.ones(adv.shape, dtype=dtype, device=adv.device)
    w = torch.where(adv > 0, ones * positive_weight, ones)
    return torch.where(adv < 0, ones * negative_weight, w)
