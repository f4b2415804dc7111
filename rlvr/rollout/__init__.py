"""Rollouts: generation engines that return token ids and behaviour log-probs."""

from rlvr.rollout import kv_cache as _kv_cache  # noqa: F401  (registers "kv_cache")
from rlvr.rollout.engine import ROLLOUT_ENGINES, Generation, RolloutEngine

__all__ = ["ROLLOUT_ENGINES", "Generation", "RolloutEngine"]
