"""RL algorithm building blocks: advantage estimators, policy losses, loss aggregation, KL.

Importing this package registers every implementation in its registry
(``ADVANTAGES``, ``POLICY_LOSSES``, ``LOSS_AGGREGATIONS``, ``KL_ESTIMATORS``).
"""

from rlvr.algorithms.advantages import (
    ADVANTAGES,
    dr_grpo_advantages,
    group_mean_std,
    grpo_advantages,
    rloo_advantages,
)
from rlvr.algorithms.kl import KL_ESTIMATORS, LOG_RATIO_CLAMP, kl_k1, kl_k2, kl_k3
from rlvr.algorithms.losses import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregate_loss,
    masked_mean,
    ppo_clip_loss,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOG_RATIO_CLAMP",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "aggregate_loss",
    "dr_grpo_advantages",
    "group_mean_std",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "ppo_clip_loss",
    "rloo_advantages",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_mean",
]
