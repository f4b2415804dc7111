"""Padded tensors from token sequences, and per-token log-probs of a causal LM over them.

Everything lives in the *target frame*: column j holds the token at position j+1 of the
sequence and the log-prob the model gave it from the prefix up to position j. A mask in that
frame selects which targets count (response tokens for RL, demonstration tokens for SFT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from rlvr.rollout.steppers import warn_fallback
from rlvr.training.packed import packed_token_logprobs, packed_unsupported_reason


@dataclass
class TokenBatch:
    """Right-padded sequences. ``input_ids``/``attention_mask``: [B, L]; ``targets``,
    ``target_mask`` and ``old_logprobs``: [B, L-1] in the target frame. ``extras`` holds
    further per-row tensors the trainer attaches ([B] or [B, L-1], e.g. advantages).
    ``prompt_lengths`` [B] and ``prompt_ids`` [B] (equal ids = equal prompt tokens) let the
    packed forward compute a prompt that several rows share once."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor
    old_logprobs: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt_lengths: torch.Tensor | None = None
    prompt_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "TokenBatch":
        """The same batch on ``device`` (itself when already there)."""
        if self.input_ids.device == torch.device(device):
            return self
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return TokenBatch(move(self.input_ids), move(self.attention_mask), move(self.targets),
                          move(self.target_mask), move(self.old_logprobs),
                          {k: move(v) for k, v in self.extras.items()}, move(self.prompt_lengths),
                          move(self.prompt_ids))

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
            prompt_lengths=None if self.prompt_lengths is None else self.prompt_lengths[index],
            prompt_ids=None if self.prompt_ids is None else self.prompt_ids[index],
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
    if any(not p for p in prompts):
        raise ValueError(f"prompt {[len(p) for p in prompts].index(0)} is empty: a response needs a prompt token "
                         "to be predicted from")
    response_lengths = [len(r) for r in responses]
    per_token = {"response_masks": response_masks, "response_logprobs": response_logprobs,
                 **{f"response_values[{name!r}]": v for name, v in (response_values or {}).items()}}
    for field_name, rows in per_token.items():
        if rows is not None and [len(r) for r in rows] != response_lengths:
            row = next(i for i, (r, n) in enumerate(zip(rows, response_lengths)) if len(r) != n)
            raise ValueError(f"{field_name}[{row}] has {len(rows[row])} values for a response of "
                             f"{response_lengths[row]} tokens")
    # One tensor write per field instead of one per row: this runs every RL step on every
    # sample. Boolean-mask writes fill the selected cells row by row, in the lists' order.
    prompt_lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    total = prompt_lengths + torch.tensor(response_lengths, dtype=torch.long)
    batch, width = len(prompts), int(total.max())
    columns = torch.arange(width)
    attention = (columns[None] < total[:, None]).long()
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    input_ids[attention.bool()] = torch.tensor([t for p, r in zip(prompts, responses) for t in (*p, *r)],
                                               dtype=torch.long)
    # response token k of row b is target column len(prompt_b) - 1 + k
    target_columns = columns[None, :-1]
    in_response = (target_columns >= prompt_lengths[:, None] - 1) & (target_columns < total[:, None] - 1)

    def target_frame(values: list[list[float]] | None, default: float) -> torch.Tensor:
        out = torch.zeros((batch, width - 1), dtype=torch.float32)
        out[in_response] = default if values is None else torch.tensor([x for v in values for x in v],
                                                                        dtype=torch.float32)
        return out

    target_mask = target_frame(response_masks, 1.0)
    old_logprobs = target_frame(response_logprobs, 0.0)
    extras = {name: target_frame(values, 0.0) for name, values in (response_values or {}).items()}
    distinct: dict[tuple[int, ...], int] = {}
    prompt_ids = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts], dtype=torch.long)
    return TokenBatch(input_ids, attention, input_ids[:, 1:], target_mask, old_logprobs, extras,
                      prompt_lengths=prompt_lengths, prompt_ids=prompt_ids)


def token_logprobs(
    model: PreTrainedModel, batch: TokenBatch, temperature: float = 1.0, *, with_entropy: bool = False,
    entropy_grad: bool = False, packed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(target_j | prefix) at ``temperature`` for the target columns that count
    (``target_mask != 0``; other columns may hold 0); optionally the per-position entropy of
    the (temperature-scaled) distribution, differentiable only when ``entropy_grad`` (an
    entropy bonus needs its gradient; a logged metric does not).

    Llama-layout models go through the packed forward (``rlvr.training.packed``: no padding,
    each prefix rows share computed once, the LM head on counted targets only) unless
    ``packed`` is False;
    other models through their own forward over the padded batch. A LoRA run's reference
    (``AdapterDisabled``) is its policy with the adapters switched off, through the same path."""
    adapted = getattr(model, "adapted", None)
    if adapted is not None and hasattr(model, "adapters_off"):
        with model.adapters_off():
            return token_logprobs(adapted, batch, temperature, with_entropy=with_entropy,
                                  entropy_grad=entropy_grad, packed=packed)
    if packed:
        reason = packed_unsupported_reason(model)
        if reason is None:
            return packed_token_logprobs(model, batch, temperature, with_entropy=with_entropy,
                                         entropy_grad=entropy_grad)
        warn_fallback("the packed forward", reason)
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
