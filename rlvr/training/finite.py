"""Non-finite numbers stop at the optimizer and never reach a checkpoint.

A NaN or inf in a loss, a gradient or an update's inputs (advantages, log-probs) would turn
every weight into NaN at the next ``optimizer.step()``. ``UpdateGuard`` decides once per
optimizer update whether it may be applied: if not, the caller drops the gradients and does
not step (weights and Adam moments stay bit-identical), the skip is logged and counted, and
``limit`` skips in a row stop the stage with a ``NonFiniteError`` saying what was
non-finite. The check reads the loss and the total gradient norm that the loop computes
anyway, so it costs no extra device sync; only a skip walks the parameters to name the
first bad gradient. (Loaded and saved weights are checked by ``rlvr.finite``.)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from rlvr.finite import NonFiniteError, first_nonfinite


def clip_grad_norm(module: nn.Module, max_norm: float) -> float:
    """The total (L2) gradient norm of ``module``, after scaling the gradients down to
    ``max_norm`` if it is larger (``max_norm`` <= 0: no clipping), as
    ``torch.nn.utils.clip_grad_norm_`` does; but a NaN/inf norm leaves the gradients as they
    are, so ``first_nonfinite_grad`` can still name the parameter it came from."""
    params = [p for p in module.parameters() if p.grad is not None and p.requires_grad]  # (frozen: not trained)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    value = float(norm)
    if max_norm > 0 and math.isfinite(value):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return value


def first_nonfinite_grad(model: nn.Module) -> str | None:
    """Name of the first parameter whose gradient holds a NaN or inf (None if none does)."""
    bad = first_nonfinite((name, p.grad) for name, p in model.named_parameters())
    return bad[0] if bad is not None else None


@dataclass
class UpdateGuard:
    """Counts optimizer updates skipped in a row for non-finite numbers; stops the stage at
    ``limit``. ``stage`` ("SFT", "RL") and ``section`` (its config section) go into messages."""

    stage: str
    section: str
    limit: int
    in_a_row: int = 0

    def allow(self, where: str, loss: float, grads: Sequence[tuple[str, nn.Module, float]]) -> bool:
        """Whether this update may be applied: ``loss`` (the update's summed loss) and each
        (label, module, total grad norm) in ``grads`` are finite. On False the caller must
        zero the gradients and not step; the skip has been logged and counted."""
        reason = None
        if not math.isfinite(loss):
            reason = f"loss is {loss}"
        else:
            for label, module, norm in grads:
                if not math.isfinite(norm):
                    bad = first_nonfinite_grad(module)
                    reason = (f"{label} gradient norm is {norm} " + (
                        f"(first non-finite gradient: {bad})" if bad is not None else
                        f"(every gradient is finite, the norm overflowed: largest |gradient| "
                        f"{max(float(p.grad.abs().max()) for p in module.parameters() if p.grad is not None):.3g})"))
                    break
        if reason is None:
            self.in_a_row = 0
            return True
        self.skip(where, reason)
        return False

    def skip(self, where: str, reason: str, updates: int = 1) -> None:
        """Count ``updates`` skipped updates at ``where`` for ``reason``: one line on stderr,
        and ``NonFiniteError`` once ``limit`` have been skipped in a row."""
        self.in_a_row += updates
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"{self.stage} {where}: {self.in_a_row} optimizer updates in a row skipped for non-finite values "
                f"(the last: {reason}); stopping ({self.section}.max_nonfinite_updates = {self.limit}). The weights "
                f"are those before the first skipped update. Lower {self.section}.lr, keep {self.section}.grad_clip "
                "on, check the reward functions, or resume from an earlier checkpoint")
        print(f"rlvr: {self.stage} {where}: skipped {updates} optimizer update{'s' * (updates > 1)}: {reason} "
              f"({self.in_a_row} in a row; the run stops at {self.limit})", file=sys.stderr)


def nonfinite_rows(tensors: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[str, int] | None:
    """The first (name, row) where a [rows, T] tensor in ``tensors`` is not finite on a
    position ``mask`` selects (masked-out positions are never used); None if all are finite."""
    if not tensors:
        return None
    keep = mask.bool()
    bad = torch.stack([~torch.isfinite(t) & keep for t in tensors.values()])  # [tensors, rows, T]
    if not bool(bad.any()):  # the only device sync when everything is finite
        return None
    which, row = bad.any(-1).nonzero()[0].tolist()
    return list(tensors)[which], row
