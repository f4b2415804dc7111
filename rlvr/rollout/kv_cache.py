"""Batched sampling with a KV cache, written as a plain loop over decode steps.

Prompts are left-padded so every row's next token sits in the last column; position ids
come from the attention mask so padding never shifts a row's positions (the trainer,
which right-pads, then sees the same positions). Rows that emitted EOS keep being fed
padding until every row is done; their extra tokens are discarded (rows are not yet
dropped from the batch: at tiny-model sizes the per-step overhead dominates anyway).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from rlvr.rollout.engine import ROLLOUT_ENGINES, Generation, RolloutEngine


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability mass reaches top_p
    (nucleus sampling, Holtzman et al. 2020). The most likely token always survives."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@ROLLOUT_ENGINES.register("kv_cache")
class KVCacheEngine(RolloutEngine):
    """Our own sampling loop over a Hugging Face causal LM with a dynamic KV cache."""

    @torch.inference_mode()
    def generate(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        eos_token_id: int,
        pad_token_id: int,
        generator: torch.Generator | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
    ) -> list[Generation]:
        if not prompts:
            return []
        stops = [torch.tensor(list(seq), dtype=torch.long) for seq in stop_sequences if len(seq)]
        device = next(model.parameters()).device
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long, device=device)
        attention = torch.zeros((batch, width), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {row} is empty")
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, device=device)
            attention[row, width - len(prompt):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)

        cache = DynamicCache()
        tokens = torch.empty((batch, 0), dtype=torch.long, device=device)
        logprobs = torch.empty((batch, 0), dtype=torch.float32, device=device)
        entropies = torch.empty((batch, 0), dtype=torch.float32, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
        step_ids, step_positions = input_ids, positions
        for step in range(max_new_tokens):
            out = model(
                input_ids=step_ids,
                attention_mask=attention,
                position_ids=step_positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            if temperature > 0:
                scaled = logits / temperature
                logp_all = torch.log_softmax(scaled, dim=-1)
                probs = top_p_filter(scaled, top_p).softmax(-1)
                next_tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                logp_all = torch.log_softmax(logits, dim=-1)
                next_tok = logits.argmax(-1)
            next_tok = torch.where(done, torch.full_like(next_tok, pad_token_id), next_tok)
            tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
            logprobs = torch.cat([logprobs, logp_all.gather(-1, next_tok[:, None])], dim=1)
            entropy = -(logp_all.exp() * logp_all).sum(-1, keepdim=True)
            entropies = torch.cat([entropies, entropy], dim=1)
            finished_now = (~done) & (next_tok == eos_token_id)
            for seq in stops:
                if tokens.shape[1] >= len(seq):
                    finished_now |= (~done) & (tokens[:, -len(seq):] == seq.to(device)).all(-1)
            lengths = torch.where(finished_now, torch.full_like(lengths, step + 1), lengths)
            done = done | finished_now
            if bool(done.all()):
                break
            attention = torch.cat([attention, attention.new_ones((batch, 1))], dim=1)
            step_positions = step_positions[:, -1:] + 1
            step_ids = next_tok[:, None]

        generations = []
        tokens_list, logprobs_list, entropies_list = tokens.tolist(), logprobs.tolist(), entropies.tolist()
        for row in range(batch):
            n = int(lengths[row])
            response = tokens_list[row][:n]
            if response and response[-1] == eos_token_id:
                reason = "eos"
            elif any(len(seq) <= n and response[n - len(seq):] == seq.tolist() for seq in stops):
                reason = "stop"
            else:
                reason = "length"
            generations.append(
                Generation(
                    response_ids=response,
                    logprobs=logprobs_list[row][:n],
                    finish_reason=reason,
                    entropies=entropies_list[row][:n],
                )
            )
        return generations
