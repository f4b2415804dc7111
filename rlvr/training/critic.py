"""The critic for PPO with GAE: a value model and its clipped-loss update.

The critic copies the policy's transformer trunk (as verl and OpenRLHF initialise the critic
from the actor) and adds a zero-initialised linear head, so its first predictions are 0 and
it learns the returns from there.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from rlvr.training.batch import TokenBatch


class ValueModel(nn.Module):
    """V(s_t) for every target column t of a TokenBatch: the value of the state whose next
    token is ``targets[:, t]`` (aligned with the log-probs of those tokens)."""

    def __init__(self, policy: PreTrainedModel) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(policy.base_model)
        self.head = nn.Linear(policy.config.hidden_size, 1, device=next(policy.parameters()).device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.trunk(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=positions).last_hidden_state
        return self.head(hidden[:, :-1].float()).squeeze(-1)
