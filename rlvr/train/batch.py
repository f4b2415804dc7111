"""Padded tensors from token sequences, and per-token log-probs of a causal LM over them.

Everything lives in the *target frame*: column j holds the token at position j+1 of the
sequence and the log-prob the model gave it from the prefix up to position j. A mask in that
frame selects which targets count (response tokens for RL, demonstration tokens for SFT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel


@dataclass
class TokenBatch:
    """Right-padded sequences. ``input_ids``/``attention_mask``: [B, L]; ``targets``,
    ``target_mask`` and ``old_logprobs``: [B, L-1] in the target frame. ``extras`` holds
    further per-row tensors the trainer attaches ([B] or [B, L-1], e.g. advantages)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor
    old_logprobs: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, index: torch.Tensor) -> "TokenBatch":
        """The selected rows, trimmed to the longest of them (less padding to compute)."""
        length = int(self.attention_mask[index].sum(-1).max())
        return TokenBatch(
            input_ids=self.input_ids[index, :length],
            attention_mask=self.attention_mask[index, :length],
            targets=self.targets[index, : length - 1],
            target_mask=self.target_mask[index, : length - 1],
            old_logprobs=self.old_logprobs[index, : length - 1],
            extras={k: v[index] if v.dim() == 1 else v[index, : length - 1] for k, v in self.extras.items()},
        )


def make_token_batch(
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_token_id: int,
    *,
    response_masks: list[list[int]] | None = None,
    response_logprobs: list[list[float]] | None = None,
    response_values: dict[str, list[list[float]]] | None = None,
) -> TokenBatch:
    """Concatenate prompt + response per row and right-pad.

    ``response_masks`` (default all ones) marks which response tokens are trained on;
    ``response_logprobs`` are the behaviour log-probs of the response tokens (default 0);
    ``response_values`` maps extra names to per-response-token values (e.g. behaviour
    entropies), placed in ``extras`` in the target frame.
    """
    total = [len(p) + len(r) for p, r in zip(prompts, responses)]
    batch, width = len(prompts), max(total)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    target_mask = torch.zeros((batch, width - 1), dtype=torch.float32)
    old_logprobs = torch.zeros((batch, width - 1), dtype=torch.float32)
    extras = {name: torch.zeros((batch, width - 1), dtype=torch.float32) for name in (response_values or {})}
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        n = len(prompt) + len(response)
        input_ids[row, :n] = torch.tensor(prompt + response, dtype=torch.long)
        attention[row, :n] = 1
        start = len(prompt) - 1  # target column of the first response token
        span = slice(start, start + len(response))
        mask = response_masks[row] if response_masks is not None else [1] * len(response)
        target_mask[row, span] = torch.tensor(mask, dtype=torch.float32)
        if response_logprobs is not None:
            old_logprobs[row, span] = torch.tensor(response_logprobs[row], dtype=torch.float32)
        for name, values in (response_values or {}).items():
            extras[name][row, span] = torch.tensor(values[row], dtype=torch.float32)
    return TokenBatch(input_ids, attention, input_ids[:, 1:], target_mask, old_logprobs, extras)


def token_logprobs(
    model: PreTrainedModel, batch: TokenBatch, temperature: float = 1.0, *, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(target_j | prefix) for every target column, at ``temperature``; optionally the
    per-position entropy of the (temperature-scaled) distribution, differentiable only when
    ``entropy_grad`` (an entropy bonus needs its gradient; a logged metric does not)."""
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions
    ).logits[:, :-1, :].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
