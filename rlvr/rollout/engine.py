"""The rollout-engine interface: prompts in token ids, generations out with log-probs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import PreTrainedModel

from rlvr.registry import Registry


@dataclass
class Generation:
    """One sampled response.

    ``response_ids`` excludes the prompt and includes the EOS token when one was produced;
    ``logprobs[i]`` is log pi(response_ids[i] | prefix) under the behaviour policy at the
    sampling temperature (before top-p truncation, matching how the trainer recomputes it);
    ``finish_reason`` is "eos", "stop" (a stop sequence closed; it is included) or "length";
    ``entropies[i]`` is the entropy (nats) of the
    temperature-scaled distribution token i was drawn from (token selection uses it).
    """

    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    entropies: list[float] = field(default_factory=list)


class RolloutEngine(ABC):
    """Generates responses for a batch of tokenised prompts."""

    @abstractmethod
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
        """Sample one response per prompt; ``temperature == 0`` means greedy decoding.

        A row also finishes when its response ends with one of ``stop_sequences`` (token ids;
        multi-turn loops pause there to run a tool call)."""


ROLLOUT_ENGINES: Registry[type[RolloutEngine]] = Registry("rollout engine")
