"""Where the model runs and in what precision: ``device`` and ``model.dtype``.

The policy's master weights, gradients and optimizer state are always float32; ``model.dtype``
is the precision of the forward passes, applied with ``torch.autocast`` around each forward
(rollouts, log-probs, losses; never the backward, as the autocast documentation asks). This
is the mixed-precision policy users know from AMP and FSDP's ``MixedPrecision(param_dtype=
bf16)`` with float32 sharded parameters: bf16 matmuls, float32 updates, so small AdamW steps
are not rounded away (bf16 keeps 8 bits of mantissa: a step below ~0.4% of a weight is lost).
Under autocast the residual stream, norms, log-softmax and losses stay float32; only
matrix products run in the low precision.

float16 has too few exponent bits for raw gradients, so it adds dynamic loss scaling
(``torch.amp.GradScaler``): an overflowed step is skipped and the scale halved, counted in
``loss_scale_backoffs``, and not held against ``max_nonfinite_updates``; a non-finite loss
still is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(RuntimeError):
    """The configured device cannot be used here (a user's mistake, reported in one line)."""


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> the first GPU when torch sees one, else the CPU; ``cuda``/``cuda:N`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(f"device: {spec} asked for, but torch sees no GPU (torch {torch.__version__}, "
                              f"{build}); use device=cpu or device=auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device: {spec} asked for, but torch sees {count} GPU(s) (cuda:0..cuda:{count - 1})")
    return device


def check_precision(device: torch.device, dtype: str, attn_implementation: str) -> None:
    """One-line errors for a precision or attention kernel this machine cannot run."""
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"model.dtype: bfloat16 is not supported on {torch.cuda.get_device_name(device)}; "
                          "use float16 or float32")
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise DeviceError("model.attn_implementation: flash_attention_2 needs the flash-attn package "
                              "(pip install flash-attn); use sdpa")
        if device.type != "cuda":
            raise DeviceError(f"model.attn_implementation: flash_attention_2 runs on CUDA only, device is {device}; "
                              "use sdpa")


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass. Non-reentrant: works
    with inputs that need no gradient and under autocast. (transformers >= 5.2x renamed the
    method ``activation_checkpointing_enable``; older releases have only the first name.)"""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def forward_autocast(config: Any) -> ContextManager:
    """The autocast context of ``config``'s forward passes (rollouts, evaluation)."""
    dtype = DTYPES[config.model.dtype]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(resolve_device(config.device).type, dtype=dtype)


@dataclass
class Precision:
    """The device, the compute dtype and (float16 only) the loss scaler of one training run."""

    device: torch.device
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None = None
    loss_scale_backoffs: int = 0

    @classmethod
    def from_config(cls, config: Any) -> "Precision":
        device = resolve_device(config.device)
        dtype = DTYPES[config.model.dtype]
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        return cls(device, dtype, scaler)

    @classmethod
    def cpu_float32(cls) -> "Precision":
        return cls(torch.device("cpu"), torch.float32)

    def autocast(self) -> ContextManager:
        """Run the enclosed forward passes in ``dtype`` (a no-op for float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, *optimizers: torch.optim.Optimizer) -> None:
        """Bring scaled gradients back to their true size before clipping and the norm check."""
        if self.scaler is not None:
            for optimizer in optimizers:
                self.scaler.unscale_(optimizer)

    def overflowed(self, loss: float, grad_norms: list[float]) -> bool:
        """float16 only: the loss is finite but a gradient overflowed, so the scale was too
        high; the step is skipped and the scale backs off (not a divergence)."""
        import math

        return (self.scaler is not None and math.isfinite(loss)
                and not all(math.isfinite(norm) for norm in grad_norms))

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            for optimizer in optimizers:
                optimizer.step()
            return
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.update()

    def update(self) -> None:
        """Adjust the loss scale after a step or a skipped overflow (float16 only)."""
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.update()
            self.loss_scale_backoffs += int(self.scaler.get_scale() < before)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "loss_scale_backoffs": self.loss_scale_backoffs}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            return
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loss_scale_backoffs = state.get("loss_scale_backoffs", 0)
