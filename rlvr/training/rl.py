"""The RL loop, top to bottom: sample prompts, roll out groups, score, compute advantages,
take PPO-style optimizer steps over mini-batches, hand the weights back, log, checkpoint.

The loop names its roles (``RLRoles``): a ``Sampler`` (rollout engine + environment, with a
weight version), a ``Judge`` (verifier pool, rewards, shaping), a ``Learner`` (policy,
optimizer, reference, critic, controllers), and the prompts. ``rl_step`` moves token ids,
scores and weights between them; in one process the sampler reads the learner's module,
with vLLM it gets the weights pushed and verified.

Which estimator, loss, aggregation and KL estimator run is looked up by name in the
registries, so adding one never touches this file. Estimators declare the extra inputs they
need (``requires``: critic values, a greedy baseline) and the loop provides them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.algorithms import (
    ADVANTAGES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    adaptive_entropy_coef,
    adaptive_kl_coef,
    aggregate_loss,
    annealed_coef,
    clipped_value_loss,
    sample_weights,
    select_tokens,
    teacher_response_mask,
)
from rlvr.config import RunConfig
from rlvr.data.sampler import PromptSampler
from rlvr.distributed import SINGLE, World
from rlvr.distributed.fsdp import (SHARDS, full_module_state, full_optimizer_state, is_sharded,
                                   load_full_module_state, load_optimizer_state, load_sharded_state, save_sharded_state,
                                   shard, uses_fsdp)
from rlvr.data.selection import group_pass_rates, groups_to_keep
from rlvr.eval.evaluate import accuracy_by_task
from rlvr.rewards.judge import cache_state, judge_metrics, load_cache_state, reset_judge_stats
from rlvr.rewards.learned import LEARNED, learned_metrics, reset_learned_timing
from rlvr.rewards.verifier_free import answer_clusters, majority_answers, semantic_entropy
from rlvr.models.lora import AdapterDisabled, adapter_state, attach_lora, load_adapter_state, peft_of
from rlvr.models.prompt_fit import check_fits_context, check_prompt_lengths
from rlvr.rewards import describe_sample
from rlvr.rewards.shaping import overlong_filter_mask, void_turn_filter_mask
from rlvr.rollout.sampler import Sampler
from rlvr.rollout.trajectory import Trajectory
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem
from rlvr.training.batch import TokenBatch, make_token_batch, token_logprobs
from rlvr.training.critic import ValueModel
from rlvr.training.relift import ReliftBuffer
from rlvr.training.teacher import load_teacher
from rlvr.training.finite import UpdateGuard, clip_grad_norm, nonfinite_rows
from rlvr.training.optim import lr_at, make_optimizer, set_lr
from rlvr.training.judge import Judge
from rlvr.training.precision import Precision
from rlvr.training.progress import StageProgress
from rlvr.training.run_dir import RunDir, load_trainer_state, restore_rng_states, rng_states
from rlvr.training.timing import StageTimer
from rlvr.verify.pool import is_timeout

class EngineMismatchError(RuntimeError):
    """The rollout engine's log-probs are far from the trainer's on the same tokens: it is not
    sampling from the trainer's weights (a stale or failed sync, or a precision mismatch)."""


@dataclass
class Learner:
    """The trainer role: the policy and everything its updates change or read (optimizer,
    reference model, critic, adaptive coefficients, the non-finite guard, the precision),
    saved in the RL checkpoints. It gets trajectories (token ids, behaviour log-probs,
    rewards) and gives back metrics and weights; nothing here samples."""

    policy: PreTrainedModel
    config: RunConfig
    pad_token_id: int
    optimizer: torch.optim.Optimizer
    reference: PreTrainedModel | None
    critic: ValueModel | None
    critic_optimizer: torch.optim.Optimizer | None
    kl_coef: float
    entropy_coef: float
    guard: UpdateGuard
    precision: Precision
    world: World = SINGLE  # trainer ranks: each computes its share of every forward and backward
    teacher: PreTrainedModel | None = None  # teacher.path: frozen, whole on every rank (rlvr.training.teacher)
    teacher_coef: float = 0.0  # this step's (annealed) teacher coefficient, set by prepare
    sft_optimizer: torch.optim.Optimizer | None = None  # ReLIFT's fine-tuning updates: moments of their own

    @classmethod
    def build(cls, policy: PreTrainedModel, config: RunConfig, pad_token_id: int,
              world: World = SINGLE) -> "Learner":
        """The learner of ``policy``. With ``distributed.strategy: fsdp`` (several ranks) it
        trains a sharded copy (``rlvr.distributed.fsdp``) and ``policy`` stays whole: the
        sampler gathers each update into it (``Sampler.load_weights``)."""
        alg = config.algorithm
        precision = Precision.from_config(config)
        critic = ValueModel(policy) if "values" in ADVANTAGES.get(alg.advantage).requires else None
        if config.model.lora.r:  # adapters in place: the sampler and evaluation see them; the reference is the base
            attach_lora(policy, config.model.lora)
            reference = AdapterDisabled(policy) if alg.kl.coef > 0 else None
        else:
            reference = copy.deepcopy(policy).eval().requires_grad_(False) if alg.kl.coef > 0 else None
        if uses_fsdp(config, world):  # policy, reference and critic sharded; optimizers over the shards
            policy = shard(copy.deepcopy(policy), world, precision.dtype)
            reference = shard(reference, world, precision.dtype) if reference is not None else None
            critic = shard(critic, world, precision.dtype) if critic is not None else None
        teacher = load_teacher(config, precision.device) if config.teacher.path else None
        return cls(
            policy=policy, config=config, pad_token_id=pad_token_id, teacher=teacher,
            optimizer=make_optimizer(policy, config.rl.lr, config.rl.weight_decay),
            reference=reference,
            critic=critic,
            critic_optimizer=make_optimizer(critic, alg.critic.lr, 0.0) if critic is not None else None,
            kl_coef=alg.kl.coef, entropy_coef=alg.entropy.coef,
            guard=UpdateGuard("RL", "rl", config.rl.max_nonfinite_updates),
            precision=precision, world=world,
            sft_optimizer=make_optimizer(policy, config.rl.relift.lr or config.rl.lr, config.sft.weight_decay)
            if config.rl.relift.buffer else None,
        )

    @property
    def sharded(self) -> bool:
        """Whether the learner trains FSDP shards (its tensor state is checkpointed sharded)."""
        return is_sharded(self.policy)

    def _tensor_parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = {"optimizer": (self.policy, self.optimizer)}
        if self.sft_optimizer is not None:
            parts["sft_optimizer"] = (self.policy, self.sft_optimizer)
        if self.reference is not None:
            parts["reference"] = self.reference
        if self.critic is not None:
            parts["critic"] = self.critic
            parts["critic_optimizer"] = (self.critic, self.critic_optimizer)
        return parts

    def state_dict(self) -> dict[str, Any]:
        """The learner's state. Sharded (FSDP), the tensors (optimizer moments, reference,
        critic) are left out and marked ``shards``: ``save_shards`` writes them, each rank its
        own. Otherwise whole, in the same format with any number of ranks."""
        state: dict[str, Any] = {"kl_coef": self.kl_coef, "entropy_coef": self.entropy_coef,
                                 "nonfinite_in_a_row": self.guard.in_a_row,
                                 "precision": self.precision.state_dict()}
        if self.sharded:
            return {**state, "shards": SHARDS}
        state["optimizer"] = full_optimizer_state(self.optimizer)
        if self.sft_optimizer is not None:
            state["sft_optimizer"] = full_optimizer_state(self.sft_optimizer)
        if self.reference is not None and not isinstance(self.reference, AdapterDisabled):
            state["reference"] = full_module_state(self.reference)
        if peft_of(self.policy) is not None:  # the adapters (the base is the RL stage's starting model)
            state["lora"] = adapter_state(self.policy)
        if self.critic is not None:
            state["critic"] = full_module_state(self.critic)
            state["critic_optimizer"] = full_optimizer_state(self.critic_optimizer)
        return state

    def save_shards(self, directory: Path) -> None:
        """Write the sharded tensor state to ``directory`` (torch.distributed.checkpoint; a
        collective)."""
        save_sharded_state(directory, self._tensor_parts())

    def load_state_dict(self, state: dict[str, Any], checkpoint: Path | None = None) -> None:
        """Load ``state``; a sharded one reads its tensors from ``checkpoint``'s shards,
        resharded to this learner's ranks (any number, or one process)."""
        self.kl_coef, self.entropy_coef = state["kl_coef"], state["entropy_coef"]
        self.guard.in_a_row = state.get("nonfinite_in_a_row", 0)
        self.precision.load_state_dict(state.get("precision"))
        if "shards" in state:
            if checkpoint is None:
                raise ValueError("a sharded learner state is read from its checkpoint directory")
            load_sharded_state(checkpoint / state["shards"], self._tensor_parts())
            return
        if peft_of(self.policy) is not None:  # before the optimizer: its state is keyed by these parameters
            if "lora" not in state:
                raise ValueError("this checkpoint was written without model.lora: resume it without LoRA")
            load_adapter_state(self.policy, state["lora"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.sft_optimizer is not None:
            load_optimizer_state(self.sft_optimizer, state["sft_optimizer"])
        if self.reference is not None and not isinstance(self.reference, AdapterDisabled):
            load_full_module_state(self.reference, state["reference"])
        if self.critic is not None:
            load_full_module_state(self.critic, state["critic"])
            load_optimizer_state(self.critic_optimizer, state["critic_optimizer"])

    def prepare(self, trajectories: list[Trajectory], baseline: torch.Tensor | None = None,
                step: int = 0) -> tuple[TokenBatch, dict[str, float]]:
        """Tensors for the update of RL step ``step`` (0-based): advantages and returns,
        per-token weights (truncated IS, high-entropy token selection), reference and teacher
        log-probs, critic values — whatever the config uses, in the batch's ``extras``.
        ``baseline`` [N]: each trajectory's group baseline, for estimators that require one
        (ReMax's greedy reward)."""
        config, model = self.config, self.policy
        alg, temperature = config.algorithm, config.rollout.temperature
        # an engine that returns no entropies (vLLM): the learner computes them when needed
        sampler_entropies = all(len(t.entropies) == len(t.response_ids) for t in trajectories)
        batch = make_token_batch(
            [t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories], self.pad_token_id,
            response_masks=[t.loss_mask for t in trajectories], response_logprobs=[t.logprobs for t in trajectories],
            response_values={**({"entropy": [t.entropies for t in trajectories]} if sampler_entropies else {}),
                             **({"step_reward": [t.step_rewards for t in trajectories]}
                                if config.reward.step_rewards.coef else {})} or None,
        )
        if config.rl.mask_truncated:
            keep = overlong_filter_mask(torch.tensor([t.finish_reason == "length" for t in trajectories]))
            batch.target_mask = batch.target_mask * keep[:, None]
        if config.rollout.environment.filter_void_turns:
            keep = void_turn_filter_mask(torch.tensor([t.void_turns for t in trajectories]))
            batch.target_mask = batch.target_mask * keep[:, None]
        device = self.precision.device
        batch = batch.to(device)
        mask, stats = batch.target_mask, {}
        rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32, device=device)  # [N]
        group_ids = torch.tensor([t.group for t in trajectories], dtype=torch.long, device=device)  # [N]

        with torch.no_grad(), self.precision.autocast():
            needs_entropy = alg.top_entropy_fraction < 1.0 and not sampler_entropies
            if config.tis_cap() is not None or needs_entropy:
                # The trainer's own log-probs are the proximal policy; the sampler's are the behaviour.
                behaviour = batch.old_logprobs
                trainer, entropy = self.by_rows(
                    lambda rows: token_logprobs(model, rows, temperature, with_entropy=needs_entropy), batch)
                if needs_entropy:
                    batch.extras["entropy"] = entropy
                stats.update(logprob_gap(trainer, behaviour, mask))
                if config.tis_cap() is not None:
                    batch.old_logprobs = trainer
                    tis_weight = torch.exp(trainer - behaviour).clamp(max=config.tis_cap()) * mask  # [N, L-1]
                    batch.extras["token_weight"] = tis_weight
                    stats["tis_weight_mean"] = float(tis_weight.sum() / mask.sum())
            token_rewards = None
            if self.reference is not None:
                ref = self.by_rows(lambda rows: token_logprobs(self.reference, rows, temperature)[0], batch)
                batch.extras["ref_logprobs"] = ref
                kl = KL_ESTIMATORS.get(alg.kl.estimator)(batch.old_logprobs, ref) * mask  # [N, L-1]
                stats["kl_rollout"] = float(kl.sum() / mask.sum())
                if alg.kl.placement == "reward":
                    token_rewards = -self.kl_coef * kl
            if "step_reward" in batch.extras:  # process rewards at the steps' last tokens (reward.step_rewards)
                steps = batch.extras["step_reward"] * mask
                token_rewards = steps if token_rewards is None else token_rewards + steps
            if self.teacher is not None:
                token_rewards = self._teacher_term(batch, trajectories, step, stats, token_rewards)
            if not config.teacher.outcome:  # pure on-policy distillation: the teacher term is the signal
                rewards = torch.zeros_like(rewards)
            estimator = ADVANTAGES.get(alg.advantage)
            inputs: dict[str, Any] = {}
            if "values" in estimator.requires:
                inputs["values"] = self.by_rows(self.critic, batch) * mask
                batch.extras["old_values"] = inputs["values"]
            if "baseline" in estimator.requires:
                inputs["baseline"] = baseline.to(device)
            adv, returns = estimator(rewards, group_ids, mask, token_rewards=token_rewards, gamma=alg.gamma,
                                     lam=alg.lam, scale_by_std=alg.scale_by_std, k=alg.pass_k, accept=alg.accept_reward,
                                     **inputs)
            adv = adv * sample_weights(adv, alg.positive_weight, alg.negative_weight)
            batch.extras["advantages"] = adv
            batch.extras["returns"] = returns
            if alg.top_entropy_fraction < 1.0:
                # Only the policy-gradient term is restricted; the normaliser stays all response
                # tokens, as in the paper's objective (1/sum|o_i|) * sum I[H_t >= tau] * ...
                selected = select_tokens(batch.extras["entropy"], mask, alg.top_entropy_fraction, alg.token_selection,
                                         torch.Generator().manual_seed(derive_seed(config.seed, "token-selection",
                                                                                   step)))
                batch.extras["token_weight"] = batch.extras.get("token_weight", mask) * selected
                stats["selected_token_frac"] = float(selected.sum() / mask.sum())
        return batch, stats

    def _teacher_term(self, batch: TokenBatch, trajectories: list[Trajectory], step: int, stats: dict[str, float],
                      token_rewards: torch.Tensor | None) -> torch.Tensor | None:
        """The teacher's log-probs of the sampled tokens (``teacher_logprobs``), the responses
        its term covers (``teacher_mask``) in the batch's extras, this step's coefficient in
        ``teacher_coef``; with ``teacher.placement: reward``, the token rewards with
        -coef * KL_t added. Logs ``teacher_kl`` (k1, an unbiased estimate of KL(policy ||
        teacher) per token on the rollout), ``teacher_coef``, ``teacher_covered_frac`` and
        ``time_teacher`` (part of ``time_prepare``)."""
        t, mask = self.config.teacher, batch.target_mask
        started = time.perf_counter()
        teacher = self.by_rows(lambda rows: token_logprobs(self.teacher, rows, self.config.rollout.temperature)[0],
                               batch)
        stats["time_teacher"] = time.perf_counter() - started
        covered = teacher_response_mask(torch.tensor([tr.correct for tr in trajectories]), t.mask).to(mask.device)
        coef = annealed_coef(t.coef, t.coef_final, step, self.config.rl.steps)
        batch.extras["teacher_logprobs"] = teacher
        batch.extras["teacher_mask"] = mask * covered[:, None]
        self.teacher_coef = coef
        stats["teacher_kl"] = float(((batch.old_logprobs - teacher) * mask).sum() / mask.sum().clamp(min=1))
        stats["teacher_coef"] = coef
        stats["teacher_covered_frac"] = float(covered.mean())
        if t.placement != "reward":
            return token_rewards
        kl = KL_ESTIMATORS.get(t.estimator)(batch.old_logprobs, teacher) * batch.extras["teacher_mask"]
        return -coef * kl if token_rewards is None else token_rewards - coef * kl

    def by_rows(self, forward: Callable[[TokenBatch], Any], batch: TokenBatch) -> Any:
        """``forward(batch)`` (a tensor [N, L-1], or a tuple of them and Nones), with each
        trainer rank computing its block of rows and the blocks gathered: every rank gets
        the whole result for 1/size of the compute."""
        world = self.world
        if not world.distributed:
            return forward(batch)
        n, width = batch.targets.shape
        start, end = world.block(n)
        # a rank left without rows computes one and discards it: the gather needs every rank
        out = forward(batch.rows(torch.arange(start, end) if end > start else torch.arange(1)))
        parts = out if isinstance(out, tuple) else (out,)
        gathered = []
        for part in parts:
            if part is None:
                gathered.append(None)
                continue
            block = torch.zeros((end - start, width), dtype=part.dtype, device=part.device)
            block[:, :part.shape[1]] = part[:end - start]  # rows() trimmed the block's padding columns
            gathered.append(world.gather_rows(block, n, "a forward pass over the batch's rows"))
        return tuple(gathered) if isinstance(out, tuple) else gathered[0]

    def update(self, batch: TokenBatch, step: int, trajectories: list[Trajectory]) -> dict[str, float]:
        """The optimizer phase of RL step ``step`` (0-based) on a prepared batch; a batch with
        NaN/inf inputs is skipped whole (every update of it would be non-finite)."""
        updates_per_step = self.config.rl.epochs * self.config.rl.mini_batches
        bad = nonfinite_rows(update_inputs(batch), batch.target_mask)
        if bad is not None:
            name, row = bad
            traj = trajectories[row]
            self.guard.skip(f"step {step + 1}", f"non-finite {name} for {describe_sample(traj.problem, traj.text)}",
                            updates_per_step)
            return {"skipped_updates": float(updates_per_step)}
        shuffle = torch.Generator().manual_seed(derive_seed(self.config.seed, "rl-shuffle", step))
        return policy_update(self, batch, shuffle, step * updates_per_step,
                             train_policy=step >= self.config.algorithm.critic.warmup_steps)

    def fine_tune(self, batch: TokenBatch, lr: float, step: int) -> dict[str, float]:
        """One supervised update of the policy on ``batch`` (ReLIFT's demonstrations): the
        negative log-likelihood per counted token, through an AdamW of its own (``sft_optimizer``:
        the demonstrations' large gradients do not inflate the RL optimizer's moments) at ``lr``,
        clipped like an RL update; with several ranks each computes its share of the rows over
        the whole batch's token count and the gradients are summed."""
        world, precision, model, optimizer = self.world, self.precision, self.policy, self.sft_optimizer
        assert optimizer is not None, "fine_tune needs rl.relift.buffer > 0 (the learner's sft_optimizer)"
        batch = batch.to(precision.device)
        tokens = batch.target_mask.sum()
        mine = batch if not world.distributed else batch.rows(torch.tensor(world.strided(range(len(batch.targets)))))
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            logp, _ = token_logprobs(model, mine)
            loss = -(logp * mine.target_mask).sum() / tokens
        precision.backward(loss)
        value = loss.item()
        if world.distributed:
            if not self.sharded:  # FSDP reduce-scattered (summed) the gradients in the backward already
                world.sum_grads_([model], f"RL step {step + 1}: summing the ReLIFT gradients")
            value = world.sum_floats([value], f"RL step {step + 1}: summing the ReLIFT loss")[0]
        precision.unscale(optimizer)
        grad_norm = clip_grad_norm(model, self.config.rl.grad_clip)
        if precision.overflowed(value, [grad_norm]) or not self.guard.allow(
                f"step {step + 1} (ReLIFT fine-tuning)", value, [("policy", model, grad_norm)]):
            precision.update()
            optimizer.zero_grad(set_to_none=True)
            return {"relift_loss": value, "relift_skipped": 1.0}
        precision.step(optimizer)
        return {"relift_loss": value, "relift_grad_norm": grad_norm, "relift_skipped": 0.0}

    def update_coefficients(self, metrics: dict[str, float], step: int, n_samples: int) -> None:
        """Adaptive KL / entropy coefficients, and ProRL's reference reset, after a step."""
        kl_cfg, ent_cfg = self.config.algorithm.kl, self.config.algorithm.entropy
        if self.reference is not None and kl_cfg.target is not None and "kl_rollout" in metrics:
            self.kl_coef = adaptive_kl_coef(self.kl_coef, metrics["kl_rollout"], kl_cfg.target, kl_cfg.horizon,
                                            n_samples)
        if ent_cfg.target is not None and "entropy" in metrics:
            self.entropy_coef = adaptive_entropy_coef(self.entropy_coef, metrics["entropy"], ent_cfg.target,
                                                      ent_cfg.lr)
        reset = self.reference is not None and (
            (kl_cfg.reset_every and step % kl_cfg.reset_every == 0)
            or (kl_cfg.reset_threshold is not None and metrics.get("kl_rollout", 0.0) > kl_cfg.reset_threshold))
        if reset:
            self.reference.load_state_dict(self.policy.state_dict())
            if kl_cfg.reset_optimizer:
                self.optimizer.state.clear()
        metrics.update(kl_coef=self.kl_coef, entropy_coef=self.entropy_coef, reference_reset=float(bool(reset)))


def logprob_gap(trainer: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean and max |log pi_trainer - log pi_engine| over the counted tokens: how far the
    sampler's policy is from the trainer's on the same tokens (0 up to rounding when both
    hold the same weights in the same precision)."""
    gap = (trainer - behaviour).abs()[mask != 0]
    if not len(gap):
        return {}
    return {"logprob_gap_mean": float(gap.mean()), "logprob_gap_max": float(gap.max())}


def check_logprob_gap(metrics: dict[str, float], config: RunConfig, step: int) -> None:
    """Stop the run when the engine's log-probs are too far from the trainer's
    (``rollout.max_logprob_gap``, mean nats per token)."""
    limit = config.rollout.max_logprob_gap
    gap = metrics.get("logprob_gap_mean")
    if limit is not None and gap is not None and gap > limit:
        raise EngineMismatchError(
            f"RL step {step}: the rollout engine's log-probs differ from the trainer's on the same tokens by "
            f"{gap:.3g} nats per token on average (max {metrics['logprob_gap_max']:.3g}), over "
            f"rollout.max_logprob_gap={limit}: the engine is not sampling from the trainer's weights "
            "(a stale or failed weight sync, or a precision mismatch between engine and trainer)")


def policy_update(learner: Learner, batch: TokenBatch, generator: torch.Generator, opt_step: int,
                  train_policy: bool = True) -> dict[str, float]:
    """``epochs`` x ``mini_batches`` optimizer steps over one rollout batch (policy, and the
    critic when there is one).

    Each mini-batch is split into micro-batches for gradient accumulation; the loss
    aggregation gets the mini-batch's global token/sequence counts, so the gradient does not
    depend on the micro-batch size. A mini-batch's rows are ordered by length before the
    split, so each micro-batch is trimmed to similar lengths (less padding to compute; the
    sum over micro-batches is the same). ``time_logprob`` / ``time_backward`` are the seconds
    spent in the forward passes (log-probs and losses) and in backward + optimizer steps.
    The first mini-batch runs before any step, so its log-probs against the sampler's give
    ``logprob_gap_*`` for free (unless ``prepare`` measured it on the whole batch).

    An update whose loss or total gradient norm is NaN/inf is skipped (``learner.guard``:
    no optimizer step, gradients dropped) and counted in ``skipped_updates``.
    """
    config, model = learner.config, learner.policy
    rl, alg = config.rl, config.algorithm
    loss_fn = POLICY_LOSSES.get(alg.loss)
    kl_fn = KL_ESTIMATORS.get(alg.kl.estimator) if alg.kl.placement == "loss" and learner.reference else None
    teacher_fn = KL_ESTIMATORS.get(config.teacher.estimator) \
        if config.teacher.placement == "loss" and learner.teacher is not None else None
    entropy_coef = learner.entropy_coef
    precision, world = learner.precision, learner.world
    sharded = is_sharded(model)
    n = batch.input_ids.shape[0]
    mini_size = -(-n // rl.mini_batches)  # filtering can leave a batch that does not divide evenly
    token_weighted: dict[str, float] = defaultdict(float)  # per-token statistics, weighted by token count
    stat_weights: dict[str, float] = defaultdict(float)
    loss_sum = grad_norm_sum = time_logprob = time_backward = 0.0
    updates = skipped = zero_gradient = 0
    step = opt_step // (rl.epochs * rl.mini_batches) + 1  # the RL step, for messages
    lengths = batch.attention_mask.sum(-1).cpu()  # indexes the CPU permutation below
    # the sampler's log-probs against the trainer's before any step (TIS measured it already)
    gaps: list[torch.Tensor] | None = [] if config.tis_cap() is None and train_policy else None
    for _ in range(rl.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, mini_size):
            mini = order[start:start + mini_size]
            mini = mini[lengths[mini].argsort(descending=True, stable=True)]
            agg = dict(num_tokens=batch.target_mask[mini].sum(), num_seqs=len(mini),
                       norm_len=config.rollout.max_new_tokens)
            lr = lr_at(opt_step + updates, rl.lr, rl.warmup_steps, rl.steps * rl.epochs * rl.mini_batches,
                       rl.lr_schedule, rl.min_lr_ratio)
            set_lr(learner.optimizer, lr)
            learner.optimizer.zero_grad(set_to_none=True)
            if learner.critic is not None:
                learner.critic_optimizer.zero_grad(set_to_none=True)
            update_loss = 0.0
            mine = mini[world.rank::world.size]  # this rank's share, balanced in length
            micros: list[torch.Tensor | None] = [mine[i:i + rl.micro_batch_size]
                                                 for i in range(0, len(mine), rl.micro_batch_size)]
            if sharded:  # FSDP's gathers are collectives: every rank runs as many forwards and backwards,
                # a rank short of rows one more on a row whose loss counts zero (its gradient is 0)
                most = -(-(-(-len(mini) // world.size)) // rl.micro_batch_size)
                micros += [None] * (most - len(micros))
            for rows in micros:
                padding = rows is None
                micro = batch.rows(mini[:1] if padding else rows)
                mask = micro.target_mask
                stats: dict[str, torch.Tensor] = {}
                if train_policy:
                    t_forward = time.perf_counter()
                    with precision.autocast():  # the forward and the loss; never the backward
                        logp, entropy = token_logprobs(model, micro, config.rollout.temperature, with_entropy=True,
                                                       entropy_grad=entropy_coef > 0)
                        per_token, stats = loss_fn(logp, micro.old_logprobs, micro.extras["advantages"], mask,
                                                   clip_low=alg.clip_low, clip_high=alg.clip_high,
                                                   clip_c=alg.clip_c)
                        if "token_weight" in micro.extras:  # truncated IS and/or token selection
                            per_token = per_token * micro.extras["token_weight"]
                        loss = aggregate_loss(per_token, mask, alg.loss_agg, **agg)
                        if kl_fn is not None:
                            kl = kl_fn(logp, micro.extras["ref_logprobs"]) * mask
                            loss = loss + learner.kl_coef * aggregate_loss(kl, mask, alg.loss_agg, **agg)
                            stats["kl"] = kl.sum() / mask.sum().clamp(min=1)
                        if teacher_fn is not None:  # KDRL / on-policy distillation: beta * KL(pi || teacher)
                            covered = micro.extras["teacher_mask"]
                            kd = teacher_fn(logp, micro.extras["teacher_logprobs"]) * covered
                            loss = loss + learner.teacher_coef * aggregate_loss(kd, mask, alg.loss_agg, **agg)
                            stats["teacher_loss_kl"] = kd.sum() / mask.sum().clamp(min=1)
                        if entropy_coef > 0:
                            loss = loss - entropy_coef * aggregate_loss(entropy * mask, mask, alg.loss_agg, **agg)
                        stats["entropy"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
                        if padding:
                            loss = loss * 0.0
                    if gaps is not None and updates == 0 and not padding:
                        gaps.append((logp.detach() - micro.old_logprobs).abs()[mask != 0])
                    t_backward = time.perf_counter()
                    precision.backward(loss)
                    time_logprob += t_backward - t_forward
                    time_backward += time.perf_counter() - t_backward
                    update_loss += float(loss.detach())
                if learner.critic is not None:
                    with precision.autocast():
                        values = learner.critic(micro)
                        per_token_v, value_stats = clipped_value_loss(
                            values, micro.extras["old_values"], micro.extras["returns"], micro.target_mask,
                            clip=alg.critic.value_clip)
                        value_loss = aggregate_loss(per_token_v, micro.target_mask, "token_mean", **agg)
                        if padding:
                            value_loss = value_loss * 0.0
                    precision.backward(value_loss)
                    stats.update(value_stats)
                weight = 0.0 if padding else float(mask.sum())
                for key, value in stats.items():
                    value = float(value.detach())
                    if value == value:  # explained variance is NaN on a micro-batch of equal returns
                        token_weighted[key] += value * weight
                        stat_weights[key] += weight
            if world.distributed:  # the ranks' partial sums make the mini-batch's gradient and loss
                t_sum = time.perf_counter()
                if not sharded:  # FSDP reduce-scattered (summed) the gradients in the backward already
                    world.sum_grads_([model] + ([learner.critic] if learner.critic is not None else []),
                                     f"RL step {step}: summing gradients")
                update_loss = world.sum_floats([update_loss], f"RL step {step}: summing the loss")[0]
                time_backward += time.perf_counter() - t_sum
            # Clip, then step only if the loss and the total gradient norms are finite.
            t_step = time.perf_counter()
            grads: list[tuple[str, torch.nn.Module, float]] = []  # (label, module, total grad norm)
            optimizers = ([learner.optimizer] if train_policy else []) + (
                [learner.critic_optimizer] if learner.critic is not None else [])
            precision.unscale(*optimizers)
            if train_policy:
                grads.append(("policy", model, clip_grad_norm(model, rl.grad_clip)))
                grad_norm_sum += grads[-1][2]
            if learner.critic is not None:
                grads.append(("critic", learner.critic, clip_grad_norm(learner.critic, rl.grad_clip)))
            if rl.skip_zero_gradient and grads and all(norm == 0.0 for _, _, norm in grads):
                for optimizer in optimizers:  # no signal: a step would move the weights by momentum and decay alone
                    optimizer.zero_grad(set_to_none=True)
                zero_gradient += 1
            elif precision.overflowed(update_loss, [norm for _, _, norm in grads]):
                precision.update()  # float16: the scale was too high; back off and skip, not a divergence
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                skipped += 1
            elif learner.guard.allow(f"step {step} (optimizer update {opt_step + updates + 1})", update_loss, grads):
                precision.step(*optimizers)
            else:
                precision.update()
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                skipped += 1
            if train_policy:
                time_backward += time.perf_counter() - t_step
            loss_sum += update_loss
            updates += 1
    if world.distributed:  # token-weighted statistics over every rank's tokens
        sums = world.all_gather_objects((dict(token_weighted), dict(stat_weights), gaps), f"RL step {step}: statistics")
        token_weighted, stat_weights = defaultdict(float), defaultdict(float)
        for rank_weighted, rank_weights, _ in sums:
            for key, value in rank_weighted.items():
                token_weighted[key] += value
                stat_weights[key] += rank_weights[key]
        gaps = [g for _, _, rank_gaps in sums for g in rank_gaps or []] if gaps is not None else None
    metrics = {key: value / max(stat_weights[key], 1.0) for key, value in token_weighted.items()}
    metrics.update(loss=loss_sum / updates, grad_norm=grad_norm_sum / updates, lr=lr, time_logprob=time_logprob,
                   time_backward=time_backward, skipped_updates=float(skipped),
                   zero_gradient_updates=float(zero_gradient))
    if gaps:
        gap = torch.cat(gaps)
        if len(gap):
            metrics.update(logprob_gap_mean=float(gap.mean()), logprob_gap_max=float(gap.max()))
    if precision.scaler is not None:
        metrics.update(loss_scale=precision.scaler.get_scale(), loss_scale_backoffs=float(precision.loss_scale_backoffs))
    return metrics


def update_inputs(batch: TokenBatch) -> dict[str, torch.Tensor]:
    """The per-token tensors of a prepared batch that enter the loss, by name."""
    named = {"old log-probs": batch.old_logprobs, "advantages": batch.extras.get("advantages"),
             "returns": batch.extras.get("returns"), "reference log-probs": batch.extras.get("ref_logprobs"),
             "teacher log-probs": batch.extras.get("teacher_logprobs"),
             "token weights": batch.extras.get("token_weight"), "old values": batch.extras.get("old_values")}
    return {name: tensor for name, tensor in named.items() if tensor is not None}


def greedy_baselines(sampler: Sampler, judge: Judge, trajectories: list[Trajectory],
                     config: RunConfig) -> torch.Tensor:
    """ReMax's baseline [N]: the reward of a greedy response to each trajectory's problem,
    one greedy response per group (the rollout side generates it, the judge scores it)."""
    first_of_group = {t.group: t.problem for t in reversed(trajectories)}
    order = {g: i for i, g in enumerate(first_of_group)}
    greedy = sampler.generate(list(first_of_group.values()), max_new_tokens=config.rollout.max_new_tokens,
                              temperature=0.0)
    judge.score(greedy)
    per_group = torch.tensor([t.reward for t in greedy], dtype=torch.float32)  # [groups]
    return per_group[torch.tensor([order[t.group] for t in trajectories])]


def rollout_generator(config: RunConfig, step: int, round_: int, world: World = SINGLE) -> torch.Generator:
    """The sampling seed of generation round ``round_`` of RL step ``step`` on this rank."""
    return torch.Generator().manual_seed(derive_seed(config.seed, "rl-samples", step,
                                                     *([round_] if round_ or world.distributed else []),
                                                     *([world.rank] if world.distributed else [])))


def generate_groups(sampler: Sampler, problems: list[Problem], config: RunConfig, rng: torch.Generator,
                    world: World = SINGLE) -> list[Trajectory]:
    """This rank's groups of ``problems`` (every ``size``-th; all of them in one process),
    ``rl.samples_per_prompt`` samples each, tagged with their group's index in ``problems``."""
    group_size = config.rl.samples_per_prompt
    mine = world.strided(range(len(problems)))  # every group, in one process
    return sampler.generate(
        [problems[i] for i in mine for _ in range(group_size)],
        groups=[i for i in mine for _ in range(group_size)],
        max_new_tokens=config.rollout.max_new_tokens, temperature=config.rollout.temperature,
        top_p=config.rollout.top_p, generator=rng)


def drop_stale(trajectories: list[Trajectory], step: int, max_staleness: int) -> tuple[list[Trajectory], int]:
    """The trajectories RL step ``step`` (0-based: the trainer holds weight version ``step``)
    may learn from under ``rl.max_staleness``: those sampled at most ``max_staleness``
    versions ago; and how many were older (dropped)."""
    kept = [t for t in trajectories if step - t.policy_version <= max_staleness]
    return kept, len(trajectories) - len(kept)


def staleness_metrics(trajectories: list[Trajectory], step: int, max_staleness: int) -> dict[str, float]:
    """How old the samples a step learned from were, in weight versions: mean, max, and the
    fraction at each staleness 0..``max_staleness`` (``staleness/<s>``)."""
    ages = [step - t.policy_version for t in trajectories]
    if not ages:
        return {}
    metrics = {"staleness_mean": sum(ages) / len(ages), "staleness_max": float(max(ages))}
    metrics.update({f"staleness/{age}": ages.count(age) / len(ages) for age in range(max_staleness + 1)})
    return metrics


def collect_rollouts(sampler: Sampler, judge: Judge, prompts: PromptSampler, step: int,
                     timer: StageTimer, world: World = SINGLE,
                     ahead: tuple[list[Problem], list[Trajectory]] | None = None,
                     ) -> tuple[list[Trajectory], dict[str, float], dict[str, float]]:
    """Roll out, score and shape groups until ``prompts_per_step`` groups pass the data filter
    (DAPO dynamic sampling / online difficulty filtering) or ``data.max_rounds`` rounds are
    spent; without a filter this is one round. Returns the kept trajectories, the rollout
    statistics and every group's pass rate by problem id (the input of LIMR selection).

    With several trainer ranks every rank draws the same prompts and generates and verifies
    every ``size``-th group (a group is never split; each rank samples with its own seed);
    the groups are then gathered in order, so every rank shapes, filters and learns from the
    same batch.

    ``ahead`` (``rl.max_staleness`` > 0): round 0's prompts and this rank's trajectories,
    generated earlier in the background (``AheadGenerator``); samples older than the bound
    are dropped (``stale_dropped``). Later rounds are generated here, with the current weights."""
    config = judge.config
    rl, data = config.rl, config.data
    rounds = data.max_rounds if data.filter != "none" else 1
    kept: list[Trajectory] = []
    kept_groups = generated_groups = 0
    problems_by_group: dict[int, Problem] = {}
    all_groups: list[int] = []
    all_correct: list[bool] = []
    stale_dropped = 0
    tokens_generated = 0
    reset_learned_timing()  # this step's reward-model and judge seconds only
    reset_judge_stats()
    for round_ in range(rounds):
        if round_ == 0 and ahead is not None:
            problems, trajectories = ahead
            trajectories, stale_dropped = drop_stale(trajectories, step, rl.max_staleness)
        else:
            problems = prompts.draw(rl.prompts_per_step - kept_groups, step, round_)
            with timer("generation"):
                trajectories = generate_groups(sampler, problems, config,
                                               rollout_generator(config, step, round_, world), world)
        check_fits_context([len(t.prompt_ids) + config.rollout.max_new_tokens for t in trajectories],
                           getattr(sampler.policy.config, "max_position_embeddings", None),
                           f"RL step {step + 1}: a prompt + rollout.max_new_tokens")
        if config.data.max_prompt_length is not None and config.data.prompt_keep_last is None:
            check_prompt_lengths([len(t.prompt_ids) for t in trajectories], [t.problem for t in trajectories],
                                 config.data.max_prompt_length, f"RL step {step + 1}'s prompts")
        for traj in trajectories:
            traj.group += generated_groups
        problems_by_group.update({generated_groups + i: problem for i, problem in enumerate(problems)})
        generated_groups += len(problems)
        with timer("scoring"):
            judge.score(trajectories)
        if world.distributed:
            with timer("gather"):
                shares = world.all_gather_objects(trajectories, f"RL step {step + 1}: gathering the groups")
                trajectories = sorted((t for share in shares for t in share), key=lambda t: t.group)
                for traj in trajectories:  # the gathered copies: one problem object per group again
                    traj.problem = problems_by_group[traj.group]
        with timer("scoring"):
            judge.shape(trajectories, step)
        tokens_generated += sum(sum(t.loss_mask) if t.loss_mask else len(t.response_ids) for t in trajectories)
        groups = [t.group for t in trajectories]
        correct = [t.correct for t in trajectories]
        all_groups += groups
        all_correct += correct
        keep = groups_to_keep(groups, [t.reward for t in trajectories], correct, data.filter,
                              data.pass_rate_low, data.pass_rate_high, data.filter_metric)
        kept += [t for t in trajectories if t.group in keep]
        kept_groups += len(keep)
        if kept_groups >= rl.prompts_per_step:
            break
    rates = {problems_by_group[g].id: r for g, r in group_pass_rates(all_groups, all_correct).items()}
    stats = {"filter_kept_frac": kept_groups / generated_groups, "rollout_rounds": float(round_ + 1),
             "samples_generated": float(generated_groups * rl.samples_per_prompt),
             "tokens_generated": float(tokens_generated)}
    if ahead is not None:
        if world.distributed:
            stale_dropped = world.sum_floats([float(stale_dropped)], f"RL step {step + 1}: stale samples")[0]
        stats["stale_dropped"] = float(stale_dropped)
    stats.update(prompts.observe(problems_by_group, all_groups, all_correct))
    return kept, stats, rates


@dataclass
class AheadBatch:
    """Round 0 of one RL step's rollouts, generated in the background: the prompts, and this
    rank's trajectories once the job is done (``future`` until then)."""

    step: int
    problems: list[Problem]
    future: Future | None = None
    trajectories: list[Trajectory] | None = None
    seconds: float = 0.0  # the job's generation time


class AheadGenerator:
    """Bounded-staleness asynchronous RL (``rl.max_staleness`` = k >= 1): one background
    thread generates the rollouts of later steps while the main thread scores and learns.

    Only generation runs in the background; prompt drawing, scoring, the collectives between
    trainer ranks, learning, evaluation and weight pushes stay in the main thread (the ranks
    keep their collectives in one order). The loop, for step t: take batch t (sampled under
    version t-k, or t at the start); score, shape and learn from it while batch t+k generates
    under version t; then ``push``: wait for the background job, push version t+1 (the engine
    is idle, so a push never lands in the middle of a generation); evaluation and checkpoints
    come next (the engine idle again and holding the newest weights); then ``submit`` batch
    t+k+1. A checkpoint saves the finished batches not yet learned from (``state_dict``), so a
    resumed run learns from the very samples the uninterrupted one did."""

    def __init__(self, sampler: Sampler, prompts: PromptSampler, config: RunConfig, world: World = SINGLE) -> None:
        self.sampler, self.prompts, self.config, self.world = sampler, prompts, config, world
        self.max_staleness = config.rl.max_staleness
        self.pending: dict[int, AheadBatch] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlvr-generation")
        self.generated = self.waited = 0.0  # since the last step_metrics: job seconds, main-thread waits

    def fill(self, step: int) -> None:
        """Submit every batch from ``step`` to ``step + max_staleness`` (within rl.steps) not
        generated or on its way yet, under the engine's current weights."""
        for ahead in range(step, min(step + self.max_staleness + 1, self.config.rl.steps)):
            if ahead not in self.pending:
                self.submit(ahead)

    def submit(self, step: int) -> None:
        config, world = self.config, self.world
        problems = self.prompts.draw(config.rl.prompts_per_step, step, 0)
        rng = rollout_generator(config, step, 0, world)
        batch = AheadBatch(step, problems)

        def job() -> list[Trajectory]:
            t0 = time.perf_counter()
            trajectories = generate_groups(self.sampler, problems, config, rng, world)
            batch.seconds = time.perf_counter() - t0
            return trajectories

        batch.future = self._pool.submit(job)
        self.pending[step] = batch

    def _finish(self, batch: AheadBatch) -> None:
        if batch.future is None:
            return
        t0 = time.perf_counter()
        try:
            batch.trajectories = batch.future.result()
        finally:
            self.waited += time.perf_counter() - t0
            self.generated += batch.seconds
            batch.future = None

    def take(self, step: int) -> tuple[list[Problem], list[Trajectory]]:
        """Batch ``step``'s prompts and this rank's trajectories (waiting for its job)."""
        batch = self.pending.pop(step)
        self._finish(batch)
        return batch.problems, batch.trajectories

    def drain(self) -> None:
        """Wait for every job: the engine is idle afterwards."""
        for batch in sorted(self.pending.values(), key=lambda b: b.step):
            self._finish(batch)

    def push(self, policy: PreTrainedModel, version: int, timer: StageTimer) -> None:
        """The background jobs finished (on every rank: engines that ranks share must not get
        weights while another rank's requests run), then the weights ``version`` to the engine."""
        with timer("generation_wait"):
            self.drain()
            if self.world.distributed:
                self.world.sum_floats([0.0], f"RL step {version}: every rank's background generation done")
        with timer("sync"), self.sampler.lock:
            self.sampler.load_weights(policy, version=version)

    def step_metrics(self) -> dict[str, float]:
        """Background generation since the last call: its seconds (``time_generation_background``),
        those that overlapped the main thread's work and their fraction (``overlap_frac``)."""
        overlapped = max(0.0, self.generated - self.waited)
        metrics = {"time_generation_background": self.generated, "time_generation_overlapped": overlapped,
                   "overlap_frac": overlapped / self.generated if self.generated > 0 else 0.0}
        self.generated = self.waited = 0.0
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The generated batches not yet learned from, every rank's groups (a collective: every
        rank calls it at the same point)."""
        self.drain()
        mine = {step: batch.trajectories for step, batch in self.pending.items()}
        shares = self.world.all_gather_objects(mine, "a checkpoint: the batches generated ahead")
        batches = []
        for step in sorted(self.pending):
            trajectories = sorted((t for share in shares for t in share[step]), key=lambda t: t.group)
            batches.append({"step": step, "problems": self.pending[step].problems, "trajectories": trajectories})
        return {"max_staleness": self.max_staleness, "batches": batches}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """The saved batches, each rank taking its own groups (with the ranks the run has now)."""
        for saved in (state or {}).get("batches", []):
            mine = set(self.world.strided(range(len(saved["problems"]))))
            self.pending[saved["step"]] = AheadBatch(saved["step"], saved["problems"],
                                                     trajectories=[t for t in saved["trajectories"] if t.group in mine])

    def close(self) -> None:
        """Cancel queued jobs and wait for a running one (the engine is then free to close)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "AheadGenerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class RLRoles:
    """The roles of an RL run, built once per stage: who samples, who judges, who learns,
    and where the prompts come from."""

    sampler: Sampler
    judge: Judge
    learner: Learner
    prompts: PromptSampler
    samples_generated: int = 0
    tokens_generated: int = 0  # response tokens the policy generated (rl.max_tokens)
    seconds: float = 0.0  # wall-clock time of the RL steps so far (rl.max_seconds)
    relift: ReliftBuffer | None = None  # rl.relift.buffer > 0

    def state_dict(self) -> dict[str, Any]:
        state = {**self.learner.state_dict(), "shapers": self.judge.state_dict(),
                 "sampler": self.prompts.state_dict(), "samples_generated": self.samples_generated,
                 "tokens_generated": self.tokens_generated,
                 "seconds": self.seconds}
        if self.relift is not None:
            state["relift"] = self.relift.state_dict()
        judges = judges_in_use(self.judge.config)
        if judges:  # a resumed run then judges exactly what the uninterrupted one did
            state["judge_cache"] = [cache_state(params) for params in judges]
        return state

    def load_state_dict(self, state: dict[str, Any], checkpoint: Path | None = None) -> None:
        if self.relift is not None:
            self.relift.load_state_dict(state["relift"])
        self.learner.load_state_dict(state, checkpoint)
        self.judge.load_state_dict(state["shapers"])
        for params, cache in zip(judges_in_use(self.judge.config), state.get("judge_cache", [])):
            load_cache_state(params, cache)
        self.prompts.load_state_dict(state["sampler"])
        self.samples_generated = state["samples_generated"]
        self.tokens_generated = state.get("tokens_generated", 0)  # checkpoints from before the token budget
        self.seconds = state.get("seconds", 0.0)


def note_advantages(trajectories: list[Trajectory], batch: TokenBatch) -> None:
    """Each trajectory's advantage for the logs: the mean over its loss tokens (a GRPO-family
    advantage is the same at every token; GAE's varies), None where no token is trained."""
    adv, mask = batch.extras["advantages"].detach().float(), batch.target_mask.float()
    counts = mask.sum(dim=1)
    means = ((adv * mask).sum(dim=1) / counts.clamp(min=1)).tolist()
    for trajectory, mean, count in zip(trajectories, means, counts.tolist()):
        trajectory.advantage = round(mean, 6) if count > 0 else None


def logged_groups(trajectories: list[Trajectory], limit: int) -> list[Trajectory]:
    """The samples a step writes to samples.jsonl: whole groups (every sample of a prompt),
    spread evenly over the batch, as many as fit in ``limit`` samples and at least one."""
    groups: dict[int, list[Trajectory]] = {}
    for trajectory in trajectories:
        groups.setdefault(trajectory.group, []).append(trajectory)
    if limit <= 0 or not groups:
        return []
    members = list(groups.values())
    size = max(1, max(len(group) for group in members))
    count = min(len(members), max(1, limit // size))
    stride = len(members) / count
    return [t for index in range(count) for t in members[int(index * stride)]]


def rl_step(roles: RLRoles, step: int, ahead: AheadGenerator | None = None,
            ) -> tuple[dict[str, Any], list[Trajectory], dict[str, float]]:
    """One RL step (0-based), top to bottom: sample and judge groups, learn from them, hand
    the new weights to the sampler. Returns the metrics record, the kept trajectories and the
    pass rates of every group generated. With ``ahead`` (``rl.max_staleness`` > 0) the first
    round of groups was generated in the background, and the background job of a later step
    runs while this one learns."""
    sampler, judge, learner, config = roles.sampler, roles.judge, roles.learner, roles.learner.config
    timer = StageTimer()
    # 1. rollout: groups until enough pass the data filter, scored and shaped
    first = None
    if ahead is not None:
        with timer("generation_wait"):
            first = ahead.take(step)
    trajectories, rollout_stats, rates = collect_rollouts(sampler, judge, roles.prompts, step, timer, learner.world,
                                                          ahead=first)
    roles.samples_generated += int(rollout_stats["samples_generated"])
    roles.tokens_generated += int(rollout_stats["tokens_generated"])
    record: dict[str, Any] = {"stage": "rl", "step": step + 1}
    if trajectories:
        # 2. ReMax's greedy baseline, when the estimator asks for one (rollout side too)
        baseline = None
        if "baseline" in ADVANTAGES.get(config.algorithm.advantage).requires:
            with timer("baseline"):
                baseline = greedy_baselines(sampler, judge, trajectories, config)
        # 3. learn: advantages and reference, then the optimizer phase
        with timer("prepare"):
            batch, batch_stats = learner.prepare(trajectories, baseline, step)
            note_advantages(trajectories, batch)
        with timer("update"):
            update = learner.update(batch, step, trajectories)
        if roles.relift is not None:  # ReLIFT: the failed problems' demonstrations, once enough are buffered
            with timer("relift"):
                roles.relift.collect(trajectories)
                if roles.relift.ready():
                    update.update(learner.fine_tune(roles.relift.take(judge.tokenizer, step),
                                                    config.rl.relift.lr or config.rl.lr, step))
        if update.get("skipped_updates") and "loss" not in update:
            batch_stats = {key: value for key, value in batch_stats.items() if math.isfinite(value)}
        # 4. the new weights to the sampler
        if ahead is None:
            with timer("sync"):
                sampler.load_weights(learner.policy, version=step + 1)
        record = step_metrics(step + 1, trajectories, config)
        record.update(batch_stats)
        record.update(update)
        if roles.relift is not None:
            record.update(roles.relift.metrics())
        learner.update_coefficients(record, step + 1, len(trajectories))
        check_logprob_gap(record, config, step + 1)
    if ahead is not None:  # the background job done, then the new weights (even after a step without a batch)
        ahead.push(learner.policy, step + 1, timer)
        record.update(staleness_metrics(trajectories, step, ahead.max_staleness))
        record.update(ahead.step_metrics())
    record.update(rollout_stats)
    engine_stats = getattr(sampler.engine, "stats", None)  # a server pool: servers alive, restarts, re-issues
    if engine_stats is not None:
        record.update(engine_stats())
    elapsed = timer.elapsed()
    record.update(step_time=elapsed, **timer.metrics())
    if trajectories:
        record["tokens_per_s"] = sum(len(t.response_ids) for t in trajectories) / elapsed
    return record, trajectories, rates


class NoSignalWatch:
    """Says, once, when RL cannot learn: ``window`` steps in a row in which every group's
    rewards were equal (GRPO-family advantages are then all zero), with the likely cause read
    from those steps' samples."""

    def __init__(self, run_dir: Any, window: int = 3) -> None:
        self.run_dir, self.window = run_dir, window
        self.flat_steps: list[list[Trajectory]] = []
        self.said = False

    def observe(self, record: dict[str, Any], trajectories: list[Trajectory]) -> str | None:
        flat = record.get("zero_variance_groups") == 1.0 or (not trajectories and record.get("filter_kept_frac") == 0)
        self.flat_steps = self.flat_steps + [trajectories] if flat else []
        if self.said or len(self.flat_steps) < self.window:
            return None
        self.said = True
        seen = [t for step in self.flat_steps for t in step]
        if not seen:
            cause = ("the group filter kept no group: every group was all right or all wrong (data.filter); the task "
                     "is too hard or too easy for the model")
        elif all(t.extracted is None for t in seen):
            truncated = sum(t.finish_reason == "length" for t in seen) / len(seen)
            cause = ("no completion held an answer the task can read: the answer format is unreachable (check the "
                     "prompt's format instructions, the chat template, task.params" +
                     (f"; {100 * truncated:.0f}% of responses hit rollout.max_new_tokens" if truncated else "") + ")")
        elif not any(t.correct for t in seen):
            cause = ("every answer was wrong: the warm start is too weak for this task (a longer SFT stage, a stronger "
                     "model.path, or an easier task or curriculum)")
        elif all(t.correct for t in seen):
            cause = "every answer was right: the task is too easy for the model (raise its difficulty)"
        else:
            cause = "rewards do not vary within a group although correctness does: check reward.components and weights"
        return (f"RL steps {record['step'] - self.window + 1}-{record['step']}: every group's rewards were equal, so "
                f"the advantages are zero and nothing is learned; likely cause: {cause}; see "
                f"{self.run_dir}/samples.jsonl")


def train_rl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, judge: Judge, sampler: Sampler,
             config: RunConfig, run: RunDir, state: dict[str, Any], exclude: frozenset[str],
             evaluate_fn: Callable[[str, int], Any] | None = None, world: World = SINGLE) -> None:
    """Run (or continue) the RL stage; leaves ``checkpoints/final`` and updates ``state``.
    With several trainer ranks, every rank runs this; rank 0 alone writes the run directory
    and evaluates (``run`` and ``evaluate_fn`` do nothing on the others)."""
    rl = config.rl
    roles = RLRoles(sampler, judge, Learner.build(model, config, tokenizer.pad_token_id, world),
                    PromptSampler(judge.task, config, exclude),
                    relift=ReliftBuffer(rl.relift.buffer, judge.task, config) if rl.relift.buffer else None)
    start = 0
    for params in judges_in_use(config):  # this run's verdicts only (a resume restores its own)
        load_cache_state(params, {})
    if state.get("checkpoint") and state.get("stage") == "rl":
        trainer_state = load_trainer_state(run.path / state["checkpoint"])
        roles.load_state_dict(trainer_state["learners"], run.path / state["checkpoint"])
        restore_rng_states(trainer_state["rng"])
        start = trainer_state["step"]
    sampler.load_weights(model, version=start)
    ahead = None  # rl.max_staleness > 0: later steps' rollouts generated in the background
    if rl.max_staleness > 0:
        if not getattr(sampler.engine, "owns_weights", False):
            raise ValueError(f"rl.max_staleness={rl.max_staleness} needs a rollout engine that holds its own weights "
                             f"(rollout.engine: vllm), not {config.rollout.engine}")
        ahead = AheadGenerator(sampler, roles.prompts, config, world)
        if start:  # the batches the checkpoint's run had generated and not learned from yet
            ahead.load_state_dict(trainer_state.get("ahead"))
        ahead.fill(start)

    watch = NoSignalWatch(run.path)
    with StageProgress("RL", rl.steps, start, config.logging.progress, silent=not world.is_main) as progress, \
            ahead if ahead is not None else contextlib.nullcontext():
        for step in range(start, rl.steps):
            record, trajectories, rates = rl_step(roles, step, ahead)
            # (a teacher term learns from every sample, whatever the rewards)
            warning = watch.observe(record, trajectories) if roles.learner.teacher is None else None
            if warning is not None and world.is_main:
                progress.note(f"rlvr: warning: {warning}")
            run.append("pass_rates.jsonl", {"stage": "rl", "step": step + 1, "rates": rates})
            logged = logged_groups(trajectories, config.logging.samples_per_step)
            if logged:
                run.append("samples.jsonl", [{"stage": "rl", "step": step + 1, **t.record()} for t in logged])
            roles.seconds += record["step_time"]
            out_of_time = (0 < rl.max_seconds <= roles.seconds or 0 < rl.max_samples <= roles.samples_generated
                           or 0 < rl.max_tokens <= roles.tokens_generated)  # the budgets besides rl.steps
            record.update(samples_generated_total=roles.samples_generated, tokens_generated_total=roles.tokens_generated,
                          rl_seconds_total=roles.seconds)
            if roles.learner.precision.device.type == "cuda":
                record["gpu_memory_peak_gib"] = torch.cuda.max_memory_allocated(roles.learner.precision.device) / 2**30
            run.append("metrics.jsonl", record)
            shown = {"reward": "reward_mean", "acc": "accuracy", "tok_s": "tokens_per_s"}
            progress.update(step + 1, **{label: record[key] for label, key in shown.items() if key in record})

            if out_of_time:
                state["rl_last_step"] = step + 1
                break
            if evaluate_fn is not None and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < rl.steps:
                # (with rl.max_staleness no background job runs here, and the engine holds the new weights)
                with sampler.lock if ahead is not None else contextlib.nullcontext():
                    evaluate_fn(f"rl-step-{step + 1}", step + 1)
            if (step + 1) % config.checkpoint.every == 0 and step + 1 < rl.steps:
                name = f"rl-step-{step + 1:06d}"
                state.update(stage="rl", checkpoint=f"checkpoints/{name}")
                trainer_state = {"learners": roles.state_dict(), "rng": rng_states(), "stage": "rl", "step": step + 1}
                if ahead is not None:
                    trainer_state["ahead"] = ahead.state_dict()
                shards = None
                if roles.learner.sharded:  # every rank writes its shards, then rank 0 the checkpoint around them
                    roles.learner.save_shards(shards := run.shard_dir(name))
                run.save_model(name, model, tokenizer, trainer_state, state=state, shards=shards)
                run.prune("rl-step", config.checkpoint.keep_last)  # (a kill here: the resume takes the checkpoint's newer state)
                run.save_state(state)
            if ahead is not None:
                ahead.fill(step + 1)  # batch step+1+k, under the weights just pushed

    # The stage's end: the state after it travels inside final, then becomes state.json.
    state.update(stage=None, checkpoint=None, final_checkpoint="checkpoints/final")
    state["completed_stages"].append("rl")
    run.save_model("final", model, tokenizer, state=state)
    run.save_state(state)


def step_metrics(step: int, trajectories: list[Trajectory], config: RunConfig) -> dict[str, Any]:
    """Rollout statistics of one step: rewards (total and per component), accuracy, lengths,
    truncation, and the fraction of groups whose rewards are all equal (no learning signal)."""
    n = len(trajectories)
    rewards = torch.tensor([t.reward for t in trajectories])
    record: dict[str, Any] = {"stage": "rl", "step": step, "reward_mean": float(rewards.mean()),
                              "reward_std": float(rewards.std()) if n > 1 else 0.0,
                              "accuracy": sum(t.correct for t in trajectories) / n,
                              "response_length": sum(len(t.response_ids) for t in trajectories) / n,
                              "truncated_frac": sum(t.finish_reason == "length" for t in trajectories) / n}
    for name in [*config.reward.components, *(["shaping"] if config.reward.shaping else []),
                 *(["steps"] if config.reward.step_rewards.coef else [])]:
        record[f"reward/{name}"] = sum(t.reward_components.get(name, 0.0) for t in trajectories) / n
    if config.reward.on_error == "zero":  # samples with a component that failed and was scored 0
        record["reward/failed"] = float(sum("failed" in t.reward_components for t in trajectories))
    record["verifier_timeout_frac"] = sum(is_timeout(t.error) for t in trajectories) / n
    if config.data.prompt_keep_last is not None:
        record["prompts_truncated"] = sum(t.prompt_tokens_cut > 0 for t in trajectories) / n
    per_task = accuracy_by_task([t.problem for t in trajectories], [t.correct for t in trajectories])
    record.update({f"accuracy/{name}": accuracy for name, accuracy in per_task.items()})
    groups: dict[int, set[float]] = defaultdict(set)
    for t in trajectories:
        groups[t.group].add(t.reward)
    record["zero_variance_groups"] = sum(len(r) == 1 for r in groups.values()) / len(groups)
    if config.rollout.environment.name is not None:
        record.update(episode_metrics(trajectories))
    proxy = next((name for name in LEARNED if name in config.reward.components), None)
    if proxy is not None:  # a reward standing in for the verifier, which still runs: is it hacked?
        record.update(learned_metrics([t.reward_components.get(proxy, 0.0) for t in trajectories],
                                      [t.correct for t in trajectories], proxy))
    if judges_in_use(config):
        record.update(judge_metrics())
    if "semantic_entropy" in config.reward.components:
        clusters = answer_clusters([t.extracted for t in trajectories], [t.group for t in trajectories]).values()
        record["semantic_entropy"] = sum(semantic_entropy(c, n) for c, n in clusters) / len(clusters)
    if "majority_vote" in config.reward.components:
        labels = majority_answers([t.extracted for t in trajectories], [t.group for t in trajectories])
        right = {t.group for t in trajectories if t.correct and t.extracted == labels[t.group]}
        record["majority_label_accuracy"] = len(right) / len(labels)
    return record


def judges_in_use(config: RunConfig) -> list[dict[str, Any]]:
    """The params of each generative judge the run calls: the ``judge`` component's, and the
    step scorer's (``reward.step_rewards.scorer: judge``, with the component's options)."""
    params = config.reward.params.get("judge", {})
    out = [params] if "judge" in config.reward.components else []
    steps = config.reward.step_rewards
    if steps.scorer == "judge" and (steps.coef or "process" in config.reward.components):
        out.append({**params, "path": steps.path})
    return out


def episode_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Multi-turn statistics: turns, tool calls (and the fraction of episodes with any),
    tool errors per call, void turns, rule violations, and the share of response tokens
    that are observations (masked from the loss)."""
    n = len(trajectories)
    calls = sum(t.tool_calls for t in trajectories)
    tokens = sum(len(t.loss_mask) for t in trajectories)
    return {"turns": sum(t.turns for t in trajectories) / n,
            "tool_calls": calls / n,
            "tool_use_frac": sum(t.tool_calls > 0 for t in trajectories) / n,
            "tool_error_rate": sum(t.tool_errors for t in trajectories) / max(calls, 1),
            "void_turn_frac": sum(t.void_turns > 0 for t in trajectories) / n,
            "violation_frac": sum(t.violation is not None for t in trajectories) / n,
            "observation_token_frac": sum(len(t.loss_mask) - sum(t.loss_mask) for t in trajectories) / max(tokens, 1)}
