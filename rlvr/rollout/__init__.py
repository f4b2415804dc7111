"""Rollouts: generation engines that return token ids and behaviour log-probs, and the
multi-turn loop over environments (tool calls, feedback turns)."""

from rlvr.rollout import envs as _envs  # noqa: F401  (registers "python", "try_again")
from rlvr.rollout import kv_cache as _kv_cache  # noqa: F401  (registers "kv_cache")
from rlvr.rollout import vllm_engine as _vllm_engine  # noqa: F401  (registers "vllm"; imports vllm only when used)
from rlvr.rollout.engine import ROLLOUT_ENGINES, Generation, RolloutEngine
from rlvr.rollout.environment import ENVIRONMENTS, Environment, EnvironmentFactory, StepResult, build_environment

__all__ = ["ENVIRONMENTS", "ROLLOUT_ENGINES", "Environment", "EnvironmentFactory", "Generation", "RolloutEngine",
           "StepResult", "build_environment"]
