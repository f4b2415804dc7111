"""The rollout role: an engine, what it samples with, and the version of the weights it holds.

The RL driver hands a ``Sampler`` problems and gets trajectories back; after each optimizer
phase it hands it the learner's weights with a version number (``load_weights``). An engine
that reads the trainer's module (the own KV-cache engine: ``owns_weights = False``) needs no
copy, only the version; an engine with weights of its own (vLLM) gets them pushed and, every
``verify_every`` syncs, checked against the trainer's by checksum (a sync that silently left
stale weights is the worst bug in this field). The same class serves evaluation.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Callable, ContextManager

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.distributed.fsdp import copy_full_weights, is_sharded
from rlvr.models.lora import merged_state_dict, peft_of
from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.sampling import sample_trajectories
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks.base import Problem

if TYPE_CHECKING:
    from rlvr.rollout.environment import EnvironmentFactory


class Sampler:
    """Samples trajectories from a versioned copy of the policy.

    ``policy`` is the trainer's module: a local engine samples from it directly; an engine
    that owns its weights ignores it for sampling. ``autocast`` is the forward-precision
    context (``rlvr.training.precision.forward_autocast``); a prompt longer than
    ``max_prompt_tokens`` keeps its last that many tokens."""

    def __init__(self, engine: RolloutEngine, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 environment: EnvironmentFactory | None = None,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext, verify_every: int = 1,
                 max_prompt_tokens: int | None = None) -> None:
        self.engine, self.policy, self.tokenizer = engine, policy, tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.environment, self.autocast, self.verify_every = environment, autocast, verify_every
        self.version = 0
        self.syncs = 0
        self.asleep = False
        # one engine call at a time: a background generation (rl.max_staleness), the main
        # thread's own rollouts, weight pushes and evaluation (the RL loop holds it for those)
        self.lock = threading.RLock()

    def generate(self, problems: list[Problem], *, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                 groups: list[int] | None = None, generator: torch.Generator | None = None,
                 batch_size: int | None = None) -> list[Trajectory]:
        """One trajectory per problem (repeat a problem for a group), each tagged with the
        weight version that produced it. Safe to call from several threads (``rl.max_staleness``
        generates in a background thread): calls take turns on the engine (``lock``)."""
        with self.lock:
            version = self.version  # the weights this call samples from (no push runs meanwhile)
            self._wake()
            with self.autocast():
                trajectories = sample_trajectories(
                    self.engine, self.policy, self.tokenizer, problems, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, generator=generator, groups=groups,
                    batch_size=batch_size, environment=self.environment, max_prompt_tokens=self.max_prompt_tokens)
            self._sleep()
        for trajectory in trajectories:
            trajectory.policy_version = version
        return trajectories

    def load_weights(self, policy: PreTrainedModel, version: int) -> None:
        """Sample from ``policy``'s current weights from now on, as version ``version``."""
        if policy is not self.policy and is_sharded(policy):
            # FSDP trainer ranks (distributed.strategy=fsdp): the update gathered into the whole
            # copy that sampling, evaluation and checkpoints read (a collective: every rank calls it)
            copy_full_weights(self.policy, policy)
            policy = self.policy
        if getattr(self.engine, "owns_weights", False):
            # LoRA (model.lora): the engine gets the merged weights (W + scale * B A), under the
            # plain names, as a model without adapters has them: the engine needs no LoRA support
            named = list((merged_state_dict(policy) if peft_of(policy) is not None else policy.state_dict()).items())
            self._wake()
            self.engine.load_weights(named, version)
            self.syncs += 1
            if self.verify_every and self.syncs % self.verify_every == 0:
                self.engine.verify_sync(named, version)
        elif policy is not self.policy:
            raise ValueError("a local engine samples from the trainer's own module: load_weights got another one")
        self.version = version

    def _wake(self) -> None:
        if self.asleep:
            self.engine.wake_up()
            self.asleep = False

    def _sleep(self) -> None:
        """Colocated on a GPU (``rollout.vllm.sleep_level``): free the engine's memory while the
        trainer trains; it wakes for the next sync or rollout."""
        if getattr(self.engine, "sleep_level", None):
            self.engine.sleep()
            self.asleep = True

    def close(self) -> None:
        self.engine.close()
