"""Optimizer and learning-rate schedule construction shared by SFT and RL."""

from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; betas (0.9, 0.99) as is usual for small-batch LM training."""
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel: one pass per parameter instead of ~10 ops (3x faster step on CPU)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=fused or None)


def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up to ``peak``, then
    ``constant`` or ``cosine`` decay to 10% of peak at ``total``."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
