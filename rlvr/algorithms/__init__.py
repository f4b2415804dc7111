"""RL algorithm building blocks: advantage estimators, policy losses, loss aggregation, KL.

Importing this package registers every implementation in its registry
(``ADVANTAGES``, ``POLICY_LOSSES``, ``LOSS_AGGREGATIONS``, ``KL_ESTIMATORS``).
Token/sample selection helpers (``high_entropy_mask``, ``sample_weights``) are
plain functions in no registry.
"""

from rlvr.algorithms.advantages import (
    ADVANTAGES,
    OPTIONAL_INPUTS,
    discounted_returns,
    dr_grpo_advantages,
    gae_advantages,
    group_mean_std,
    grpo_advantages,
    masked_whiten,
    needs,
    pass_at_k_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    rft_advantages,
    rloo_advantages,
)
from rlvr.algorithms.controllers import adaptive_entropy_coef, adaptive_kl_coef
from rlvr.algorithms.distill import annealed_coef, teacher_response_mask
from rlvr.algorithms.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP, kl_k1, kl_k1_st, kl_k2, kl_k3, kl_k3_st
from rlvr.algorithms.losses import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregate_loss,
    cispo_loss,
    gspo_loss,
    masked_mean,
    ppo_clip_loss,
    reinforce_loss,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from rlvr.algorithms.token_selection import high_entropy_mask, sample_weights, select_tokens
from rlvr.algorithms.value import clipped_value_loss

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "LOSS_AGGREGATIONS",
    "OPTIONAL_INPUTS",
    "POLICY_LOSSES",
    "adaptive_entropy_coef",
    "adaptive_kl_coef",
    "aggregate_loss",
    "annealed_coef",
    "cispo_loss",
    "clipped_value_loss",
    "discounted_returns",
    "dr_grpo_advantages",
    "gae_advantages",
    "group_mean_std",
    "grpo_advantages",
    "gspo_loss",
    "high_entropy_mask",
    "select_tokens",
    "kl_k1",
    "kl_k1_st",
    "kl_k2",
    "kl_k3",
    "kl_k3_st",
    "masked_mean",
    "masked_whiten",
    "needs",
    "pass_at_k_advantages",
    "ppo_clip_loss",
    "reinforce_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "rft_advantages",
    "rloo_advantages",
    "sample_weights",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "teacher_response_mask",
    "token_mean",
]
