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


def lr_at(step: int, peak: float, warmup: int, total: int, schedule: str, floor: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up to ``peak`` over
    ``warmup`` steps, then ``constant``, or ``linear`` / ``cosine`` decay from ``peak`` to
    ``floor * peak`` at step ``total`` (held there after it):

        linear: peak * (floor + (1 - floor) * (1 - p))
        cosine: peak * (floor + (1 - floor) * (1 + cos(pi * p)) / 2),   p = (step - warmup) / (total - warmup)

    (the schedules of transformers' ``get_linear/cosine_schedule_with_warmup`` with verl's
    ``min_lr_ratio`` as ``floor``). A pure function of the step, so a resumed run continues
    the schedule exactly."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return peak * (floor + (1 - floor) * (1 - progress))
    if schedule == "cosine":
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
