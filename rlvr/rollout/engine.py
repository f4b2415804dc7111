"""The rollout-engine interface: prompts in token ids, generations out with log-probs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

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
    """Generates responses for a batch of tokenised prompts.

    An engine either samples from the module it is handed (``owns_weights = False``: the
    own KV-cache engine, which reads the trainer's weights in place) or holds a copy of its
    own (``owns_weights = True``: vLLM), which then also implements
    ``load_weights(named_tensors, version)`` and ``verify_sync(named_tensors, version)``."""

    owns_weights = False

    @classmethod
    def build(cls, config: Any, model: PreTrainedModel, tokenizer: Any) -> "RolloutEngine":
        """The engine for a run's ``config``, starting from ``model``'s current weights."""
        return cls()

    @classmethod
    def check(cls, config: Any, head_dim: int | None) -> None:
        """Raise ``ValueError`` (one line naming the field) when ``config`` asks this engine for
        something it cannot do; run before any work. ``head_dim``: the policy's attention
        head size, when known."""

    def close(self) -> None:
        """Release what the engine holds (processes, memory); a no-op for in-process engines."""

    @abstractmethod
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
        """Sample one response per prompt; ``temperature == 0`` means greedy decoding.

        A row finishes ("eos") at any of the ids in ``eos_token_id`` (one id, or several as a
        chat checkpoint's generation config lists them; ``eos_ids`` reads either). A row also
        finishes when its response ends with one of ``stop_sequences`` (token ids; multi-turn
        loops pause there to run a tool call)."""


def eos_ids(eos_token_id: int | Sequence[int]) -> list[int]:
    """The EOS ids an engine stops at, from its ``eos_token_id`` argument (one id or several)."""
    ids = [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    if not ids:
        raise ValueError("eos_token_id is empty: give at least one end-of-sequence token id")
    return ids


def eos_argument(ids: Sequence[int]) -> int | list[int]:
    """What to pass as an engine's ``eos_token_id`` for ``ids``: the id itself when there is
    one (engines written when the argument was always one id keep working), else the list."""
    return int(ids[0]) if len(ids) == 1 else [int(i) for i in ids]


ROLLOUT_ENGINES: Registry[type[RolloutEngine]] = Registry("rollout engine")
