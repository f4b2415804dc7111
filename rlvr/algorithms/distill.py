"""The teacher term of KDRL and on-policy distillation: its coefficient schedule and the
responses it covers. The term itself is a KL estimator from ``rlvr.algorithms.kl`` applied
to the policy's and the teacher's log-probs of the policy's own sampled tokens.

KDRL (Xu et al. 2025, "KDRL: Post-Training Reasoning LLMs via Unified Knowledge
Distillation and Reinforcement Learning") maximises one objective on the student's samples
o ~ pi_theta:

    J(theta) = J_GRPO(theta) - beta_t * KL(pi_theta || pi_T)

with the reverse KL estimated per token (k2 = 0.5 (log pi_theta - log pi_T)^2 as the loss:
its gradient, log(pi_theta/pi_T) * grad log pi_theta, is the exact reverse-KL gradient in
expectation over the policy's own samples; k3's is not), beta annealed over training, and
reward-guided masking (the KD term only on responses the verifier rejects). On-policy
distillation (Agarwal et al. 2024, GKD; Gu et al. 2024, MiniLLM) is the same term without the
task's reward.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["annealed_coef", "teacher_response_mask"]


def annealed_coef(start: float, final: float | None, step: int, steps: int) -> float:
    """Linear schedule of the teacher coefficient (KDRL's annealing):

        beta_t = start + (final - start) * t / (steps - 1),   t = 0 .. steps - 1

    ``step`` is the 0-based RL step of ``steps``; ``final`` None keeps ``start``. One step
    gets ``start``; a step past the end gets ``final``.
    """
    if final is None or steps <= 1:
        return float(start)
    fraction = min(max(step, 0), steps - 1) / (steps - 1)
    return float(start + (final - start) * fraction)


def teacher_response_mask(correct: Tensor, mode: str) -> Tensor:
    """Which responses the teacher term covers, as a float [N] of 0/1.

    ``all``: every response. ``incorrect``: KDRL's reward-guided masking, the responses the
    verifier rejected (``correct`` False) only, so that the teacher does not pull a response
    the task already rewards towards its own phrasing.
    """
    if mode == "all":
        return torch.ones_like(correct, dtype=torch.float32)
    if mode == "incorrect":
        return (~correct.bool()).to(torch.float32)
    raise ValueError(f"teacher mask must be 'all' or 'incorrect', got {mode!r}")
