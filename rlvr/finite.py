"""Non-finite tensors, found and named: the checks that keep a NaN or inf out of a loaded
model, a trainer state and a checkpoint. Low in the package (models and train use it)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """Non-finite numbers the run cannot go past: ``limit`` optimizer updates in a row
    skipped, or non-finite weights in a checkpoint being written or read."""


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> tuple[str, torch.Tensor] | None:
    """The first (name, tensor) whose floating-point values are not all finite, else None."""
    for name, tensor in named:
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name, tensor
    return None


def describe_nonfinite(tensor: torch.Tensor) -> str:
    """``"2 nan, 1 inf of 12 values"``: how much of a tensor is non-finite."""
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return f"{nan} nan, {inf} inf of {tensor.numel()} values"


def check_finite_weights(model: nn.Module, what: str) -> None:
    """Raise ``NonFiniteError`` naming ``what`` (e.g. "checkpoint rl-step-000020") and the
    first parameter or buffer of ``model`` that holds a NaN or inf."""
    bad = first_nonfinite(model.state_dict().items())
    if bad is not None:
        name, tensor = bad
        raise NonFiniteError(f"{what}: tensor {name} holds non-finite values ({describe_nonfinite(tensor)})")


def check_finite_state(state: Any, what: str) -> None:
    """Raise ``NonFiniteError`` naming ``what`` and the first tensor in a nested
    dict/list/tuple ``state`` (an optimizer's moments, a reference model) that is not finite."""
    bad = first_nonfinite(_walk(state, ""))
    if bad is not None:
        name, tensor = bad
        raise NonFiniteError(f"{what}: tensor {name} holds non-finite values ({describe_nonfinite(tensor)})")


def _walk(state: Any, prefix: str) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(state, torch.Tensor):
        yield prefix or "<root>", state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _walk(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _walk(value, f"{prefix}.{i}" if prefix else str(i))
