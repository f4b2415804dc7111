"""Batched sampling with a KV cache, written as a plain loop over decode steps.

Prompts are left-padded so every row's next token sits in the last column; position ids
come from the attention mask so padding never shifts a row's positions (the trainer,
which right-pads, then sees the same positions). Outputs are preallocated.

Rows whose tokens so far are equal share one cache row (a *slot*) and one forward pass:
a prompt repeated in the batch (a GRPO group) is prefilled once, and its samples stay on
one slot until their sampled tokens differ, when the cache row is copied for the new
branch (each row always draws its own token from the shared logits). On the default recipe
the 8 samples of a prompt agree on their first 8-16 tokens, so a rollout decodes about a
quarter of its tokens. Finished rows (EOS or a stop sequence) leave at once; slots no row
is on are dropped once they are a quarter of the cache. The forward passes come from
``rlvr.rollout.steppers`` (a direct Llama-layout decoder, or the model's own forward for
other architectures).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel

from rlvr.rollout.engine import ROLLOUT_ENGINES, Generation, RolloutEngine, eos_ids
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
    # drawn where the generator lives (a CPU generator serves a GPU run: the same draws either way)
    where = generator.device if generator is not None else cdf.device
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=cdf.dtype, device=where).to(cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


@ROLLOUT_ENGINES.register("kv_cache")
class KVCacheEngine(RolloutEngine):
    """Our own sampling loop over a Hugging Face causal LM with a dynamic KV cache."""

    share_prefixes = True  # one forward per distinct prefix (False: one per row; tests compare)

    def __init__(self) -> None:
        self._kv_storage: list[torch.Tensor] | None = None  # the last call's KV cache, reused by the next

    @staticmethod
    def _fork(slot: torch.Tensor, token: torch.Tensor, n_slots: int, capacity: int, vocab: int,
              pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """After each row sampled ``token`` on its ``slot``: the rows' new slots, the token
        each slot decodes next, and the cache rows the new slots copy (None: unchanged).
        The first distinct (slot, token) of a slot keeps the slot; others take new slots at
        the end, copied from their parent. Slots no row is on any more are dropped once
        they are a quarter of all or the cache (``capacity`` rows) would overflow (until
        then they decode padding)."""
        keys, inverse = torch.unique(slot * vocab + token, return_inverse=True)
        parent, chosen = keys // vocab, keys % vocab
        first = torch.ones_like(parent, dtype=torch.bool)
        first[1:] = parent[1:] != parent[:-1]
        n_new = int((~first).sum())
        new_slot = torch.where(first, parent, n_slots + (~first).long().cumsum(0) - 1)
        slot_tokens = torch.full((n_slots + n_new,), pad_token_id, dtype=torch.long, device=slot.device)
        slot_tokens[new_slot] = chosen
        parents = None
        if n_new:
            parents = torch.cat([torch.arange(n_slots, device=slot.device), parent[~first]])
        dead = n_slots - int(first.sum())
        if dead and (4 * dead >= n_slots + n_new or n_slots + n_new > capacity):  # compact
            used = torch.unique(new_slot)  # sorted
            remap = torch.empty(n_slots + n_new, dtype=torch.long, device=slot.device)
            remap[used] = torch.arange(len(used), device=slot.device)
            parents = (parents if parents is not None else torch.arange(n_slots, device=slot.device))[used]
            new_slot, slot_tokens = remap[new_slot], slot_tokens[used]
        return new_slot[inverse], slot_tokens, parents

    @torch.inference_mode()
    def generate(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        generator: torch.Generator | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
    ) -> list[Generation]:
        if not prompts:
            return []
        device = next(model.parameters()).device
        stops = [torch.tensor(list(seq), dtype=torch.long, device=device) for seq in stop_sequences if len(seq)]
        eos_list = eos_ids(eos_token_id)
        eos = torch.tensor(eos_list, dtype=torch.long, device=device)
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
        # Rows whose tokens so far are all equal get the same logits, so they share one cache
        # row (a *slot*) and one forward: GRPO's samples of a prompt start as one slot and
        # fork when their sampled tokens differ (each row still draws its own token).
        if self.share_prefixes:
            slot_of: dict[tuple[int, ...], int] = {}  # distinct prompt -> its slot
            slot = torch.tensor([slot_of.setdefault(tuple(p), len(slot_of)) for p in prompts], device=device)
            firsts = torch.zeros(len(slot_of), dtype=torch.long, device=device).scatter_reduce(
                0, slot, torch.arange(batch, device=device), reduce="amin", include_self=False)
        else:
            slot = firsts = torch.arange(batch, device=device)
        stepper = make_stepper(model, len(firsts), width + max_new_tokens, max_rows=batch,
                               storage=self._kv_storage)
        self._kv_storage = getattr(stepper, "storage", None)
        slot_logits = stepper.prefill(input_ids[firsts], positions[firsts], valid[firsts, :width])
        slot_valid, slot_positions = valid[firsts], positions[firsts, -1] + 1
        rows = torch.arange(batch, device=device)  # original row of each unfinished row
        alone = len(firsts) == batch  # once every row has its own slot, rows can only finish
        # per-step log-probs and -entropies with the rows they belong to, written out once at
        # the end (two fewer scatters per decode step)
        step_rows: list[torch.Tensor] = []
        step_logprobs: list[torch.Tensor] = []
        step_neg_entropies: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            logits = slot_logits.float()[slot]
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
            tokens[rows, step] = next_tok
            step_rows.append(rows)
            step_logprobs.append(logp_all.gather(-1, next_tok[:, None]))
            step_neg_entropies.append((probs * logp_all).sum(-1))
            finished = torch.isin(next_tok, eos)
            for seq in stops:
                if step + 1 >= len(seq):
                    finished |= (tokens[rows, step + 1 - len(seq):step + 1] == seq).all(-1)
            if bool(finished.any()):
                lengths[rows[finished]] = step + 1
                going = ~finished
                rows, slot, next_tok = rows[going], slot[going], next_tok[going]
            if len(rows) == 0 or step + 1 == max_new_tokens:
                break
            if alone:  # every row on a slot of its own: no forks, only finished rows to drop
                slot_tokens = torch.full((len(slot_positions),), pad_token_id, dtype=torch.long, device=device)
                slot_tokens[slot] = next_tok
                parents = None
                if 4 * (len(slot_positions) - len(rows)) >= len(slot_positions):
                    parents, slot, slot_tokens = slot, torch.arange(len(rows), device=device), next_tok
            else:
                slot, slot_tokens, parents = self._fork(slot, next_tok, len(slot_positions), batch,
                                                        slot_logits.shape[-1], pad_token_id)
                alone = len(slot_tokens) == len(rows) == len(torch.unique(slot))
            if parents is not None:
                stepper.keep(parents)
                slot_valid, slot_positions = slot_valid[parents], slot_positions[parents]
            slot_valid[:, width + step] = True
            slot_logits = stepper.decode(slot_tokens, slot_positions, slot_valid[:, :width + step + 1])
            slot_positions = slot_positions + 1

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
            if response and response[-1] in eos_list:
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
