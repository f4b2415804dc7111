"""Batched sampling with a KV cache, written as a plain loop over decode steps.

Prompts are left-padded so every row's next token sits in the last column; position ids
come from the attention mask so padding never shifts a row's positions (the trainer,
which right-pads, then sees the same positions). Outputs are preallocated; rows that
finished (EOS or a stop sequence) are dropped from the batch and the cache once they are a
quarter of it, so long-tail samples do not keep paying for the finished ones. A prompt
repeated in the batch (a GRPO group) is prefilled once and its cache copied to its rows. The forward
passes come from ``rlvr.rollout.steppers`` (a direct Llama-layout decoder, or the model's
own forward for other architectures).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel

from rlvr.rollout.engine import ROLLOUT_ENGINES, Generation, RolloutEngine
from rlvr.rollout.steppers import make_stepper


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


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` [B, V] (rows need not be normalised), by inverting the
    cumulative distribution at a uniform draw: the same distribution as ``torch.multinomial``
    at a fraction of its cost on CPU. A zero-probability entry is never drawn."""
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


@ROLLOUT_ENGINES.register("kv_cache")
class KVCacheEngine(RolloutEngine):
    """Our own sampling loop over a Hugging Face causal LM with a dynamic KV cache."""

    dedup_prompts = True  # prefill repeated prompts once (False: prefill every row; tests compare)

    def __init__(self) -> None:
        self._kv_storage: list[torch.Tensor] | None = None  # the last call's KV cache, reused by the next

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
        stops = [seq.to(device) for seq in stops]
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        prompt_lengths = [len(p) for p in prompts]
        if 0 in prompt_lengths:
            raise ValueError(f"prompt {prompt_lengths.index(0)} is empty")
        # left-pad with one write (a write per row cost ~2 ms per 256 rows)
        valid = torch.zeros((batch, width + max_new_tokens), dtype=torch.bool, device=device)
        valid[:, :width] = (torch.arange(width) >= width - torch.tensor(prompt_lengths)[:, None]).to(device)
        input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long, device=device)
        input_ids[valid[:, :width]] = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=device)
        positions = (valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)

        tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
        entropies = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
        lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
        rows = torch.arange(batch, device=device)  # original row of each row still in the batch
        live = torch.ones(batch, dtype=torch.bool, device=device)  # not finished yet
        # GRPO repeats each prompt once per sample: prefill each distinct prompt once, then copy
        # its KV cache and last logits to its rows (the draws and per-row outputs are unchanged)
        first_row: dict[tuple[int, ...], int] = {}  # distinct prompt -> first row holding it
        for row, prompt in enumerate(prompts):
            first_row.setdefault(tuple(prompt), row)
        if self.dedup_prompts and len(first_row) < batch:
            slot = {key: i for i, key in enumerate(first_row)}
            firsts = torch.tensor(list(first_row.values()), device=device)
            stepper = make_stepper(model, len(firsts), width + max_new_tokens, max_rows=batch,
                                       storage=self._kv_storage)
            logits = stepper.prefill(input_ids[firsts], positions[firsts], valid[firsts, :width])
            expand = torch.tensor([slot[tuple(p)] for p in prompts], device=device)  # row -> its prompt's slot
            stepper.keep(expand)
            logits = logits[expand]
        else:
            stepper = make_stepper(model, batch, width + max_new_tokens, storage=self._kv_storage)
            logits = stepper.prefill(input_ids, positions, valid[:, :width])
        self._kv_storage = getattr(stepper, "storage", None)
        next_positions = positions[:, -1] + 1
        # per-step log-probs and -entropies with the rows they belong to, written out once at
        # the end (two fewer scatters per decode step)
        step_rows: list[torch.Tensor] = []
        step_logprobs: list[torch.Tensor] = []
        step_neg_entropies: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            logits = logits.float()
            if temperature > 0:
                scaled = logits if temperature == 1.0 else logits / temperature
                logp_all = torch.log_softmax(scaled, dim=-1)
                probs = logp_all.exp()
                sample_from = probs if top_p >= 1.0 else top_p_filter(scaled, top_p).softmax(-1)
                next_tok = sample_categorical(sample_from, generator)
            else:
                logp_all = torch.log_softmax(logits, dim=-1)
                probs = logp_all.exp()
                next_tok = logits.argmax(-1)
            next_tok = torch.where(live, next_tok, pad_token_id)
            tokens[rows, step] = next_tok
            step_rows.append(rows)
            step_logprobs.append(logp_all.gather(-1, next_tok[:, None]))
            step_neg_entropies.append((probs * logp_all).sum(-1))
            finished_now = live & (next_tok == eos_token_id)
            for seq in stops:
                if step + 1 >= len(seq):
                    finished_now |= live & (tokens[rows, step + 1 - len(seq):step + 1] == seq).all(-1)
            if bool(finished_now.any()):
                lengths[rows[finished_now]] = step + 1
                live = live & ~finished_now
                n_live = int(live.sum())
                if n_live == 0:
                    break
                if 4 * (len(rows) - n_live) >= len(rows):  # drop the finished rows
                    keep = live.nonzero().squeeze(-1)
                    stepper.keep(keep)
                    rows, live, valid = rows[keep], live[keep], valid[keep]
                    next_tok, next_positions = next_tok[keep], next_positions[keep]
            if step + 1 == max_new_tokens:
                break
            valid[:, width + step] = True
            logits = stepper.decode(next_tok, next_positions, valid[:, :width + step + 1])
            next_positions = next_positions + 1

        steps = torch.repeat_interleave(torch.arange(len(step_rows), device=device),
                                        torch.tensor([len(r) for r in step_rows], device=device))
        every_row = torch.cat(step_rows)
        logprobs[every_row, steps] = torch.cat(step_logprobs).squeeze(-1)
        entropies[every_row, steps] = -torch.cat(step_neg_entropies)
        generations = []
        stop_lists = [seq.tolist() for seq in stops]
        tokens_list, logprobs_list, entropies_list = tokens.tolist(), logprobs.tolist(), entropies.tolist()
        for row in range(batch):
            n = int(lengths[row])
            response = tokens_list[row][:n]
            if response and response[-1] == eos_token_id:
                reason = "eos"
            elif any(len(seq) <= n and response[n - len(seq):] == seq for seq in stop_lists):
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
