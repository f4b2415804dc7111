"""Coefficient controllers: adapt the KL and entropy coefficients from measured values.

Pure scalar functions; the training loop keeps the current coefficient in its checkpointed
state and calls these once per RL step.
"""

from __future__ import annotations


def adaptive_kl_coef(beta: float, kl: float, target: float, horizon: int, n_samples: int) -> float:
    """Proportional KL controller (Ziegler et al. 2019, "Fine-Tuning Language Models from
    Human Preferences", Sec. 2.2):

        e = clip(kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n_samples / horizon)

    ``kl``: measured KL(policy || reference) per token this step; ``target``: desired KL;
    ``horizon``: samples over which the error is corrected; ``n_samples``: samples this step.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError("adaptive KL needs target > 0 and horizon > 0")
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_samples / horizon)


def adaptive_entropy_coef(alpha: float, entropy: float, target: float, lr: float) -> float:
    """Target-entropy controller (the SAC temperature rule, Haarnoja et al. 2018, used for
    LLM RL e.g. in Skywork-OR1's adaptive entropy control): raise the bonus when entropy is
    below target, lower it when above, never below zero:

        alpha <- max(0, alpha + lr * (target - entropy))
    """
    return max(0.0, alpha + lr * (target - entropy))
