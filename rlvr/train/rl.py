"""The RL loop, top to bottom: sample prompts, roll out groups, score, compute advantages,
take PPO-style optimizer steps over mini-batches, log, checkpoint.

Which estimator, loss, aggregation and KL estimator run is looked up by name in the
registries, so adding one never touches this file. Estimators declare the extra inputs they
need (``requires``: critic values, a greedy baseline) and the loop provides them.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
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
    clipped_value_loss,
    high_entropy_mask,
    sample_weights,
)
from rlvr.config import RunConfig
from rlvr.data.sampler import PromptSampler
from rlvr.data.selection import group_pass_rates, groups_to_keep
from rlvr.eval.evaluate import accuracy_by_task
from rlvr.models.prompt_fit import check_fits_context
from rlvr.rewards import RewardError, compose_reward, describe_sample
from rlvr.rewards.shaping import ShapingInputs, apply_shapers, build_shaper, overlong_filter_mask, void_turn_filter_mask
from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.environment import EnvironmentFactory
from rlvr.rollout.sampling import sample_trajectories
from rlvr.rollout.trajectory import Trajectory
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem, Task
from rlvr.train.batch import TokenBatch, make_token_batch, token_logprobs
from rlvr.train.critic import ValueModel
from rlvr.train.finite import UpdateGuard, clip_grad_norm, nonfinite_rows
from rlvr.train.optim import lr_at, make_optimizer, set_lr
from rlvr.train.precision import Precision, forward_autocast
from rlvr.train.progress import StageProgress
from rlvr.train.run_dir import RunDir, load_trainer_state, restore_rng_states, rng_states
from rlvr.verify.pool import InlineVerifier, VerifierPool, is_timeout

Verifier = VerifierPool | InlineVerifier


@dataclass
class Learners:
    """Everything the RL stage updates or reads besides the policy, saved in its checkpoints."""

    optimizer: torch.optim.Optimizer
    reference: PreTrainedModel | None
    critic: ValueModel | None
    critic_optimizer: torch.optim.Optimizer | None
    kl_coef: float
    entropy_coef: float
    shapers: list[tuple[Any, dict[str, Any]]]  # (shaper, params) in config order; some keep state
    sampler: PromptSampler | None
    samples_generated: int = 0
    seconds: float = 0.0  # wall-clock time of the RL steps so far (rl.max_seconds)
    guard: UpdateGuard = field(default_factory=lambda: UpdateGuard("RL", "rl", 3))  # skips non-finite updates
    precision: Precision = field(default_factory=Precision.cpu_float32)  # device, autocast dtype, fp16 loss scale

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_coef,
                                 "entropy_coef": self.entropy_coef,
                                 "shapers": [s.state_dict() if hasattr(s, "state_dict") else None
                                             for s, _ in self.shapers],
                                 "sampler": self.sampler.state_dict() if self.sampler else None,
                                 "samples_generated": self.samples_generated, "seconds": self.seconds,
                                 "nonfinite_in_a_row": self.guard.in_a_row,
                                 "precision": self.precision.state_dict()}
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_coef, self.entropy_coef = state["kl_coef"], state["entropy_coef"]
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.samples_generated = state["samples_generated"]
        self.seconds = state.get("seconds", 0.0)
        self.guard.in_a_row = state.get("nonfinite_in_a_row", 0)
        self.precision.load_state_dict(state.get("precision"))
        for (shaper, _), shaper_state in zip(self.shapers, state["shapers"]):
            if shaper_state is not None:
                shaper.load_state_dict(shaper_state)
        if self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])


def make_learners(model: PreTrainedModel, config: RunConfig, sampler: PromptSampler | None = None) -> Learners:
    alg = config.algorithm
    needs_values = "values" in ADVANTAGES.get(alg.advantage).requires
    critic = ValueModel(model) if needs_values else None
    return Learners(
        optimizer=make_optimizer(model, config.rl.lr, config.rl.weight_decay),
        reference=copy.deepcopy(model).eval().requires_grad_(False) if alg.kl.coef > 0 else None,
        critic=critic,
        critic_optimizer=make_optimizer(critic, alg.critic.lr, 0.0) if critic is not None else None,
        kl_coef=alg.kl.coef,
        entropy_coef=alg.entropy.coef,
        shapers=[(build_shaper(step.name), dict(step.params)) for step in config.reward.shaping],
        sampler=sampler,
        guard=UpdateGuard("RL", "rl", config.rl.max_nonfinite_updates),
        precision=Precision.from_config(config),
    )


def rollout_groups(engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   problems: list[Problem], config: RunConfig, generator: torch.Generator,
                   environment: EnvironmentFactory | None = None) -> list[Trajectory]:
    """``samples_per_prompt`` responses (episodes, with an environment) for each problem;
    group i holds problem i's samples."""
    group_size = config.rl.samples_per_prompt
    with forward_autocast(config):
        return sample_trajectories(
            engine, model, tokenizer, [p for p in problems for _ in range(group_size)],
            groups=[i for i in range(len(problems)) for _ in range(group_size)],
            max_new_tokens=config.rollout.max_new_tokens, temperature=config.rollout.temperature,
            top_p=config.rollout.top_p, generator=generator, environment=environment)


def greedy_baseline(engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    problems: list[Problem], task: Task, verifier: Verifier, config: RunConfig,
                    environment: EnvironmentFactory | None = None) -> torch.Tensor:
    """Reward of each problem's greedy response (ReMax's baseline), one value per problem."""
    with forward_autocast(config):
        trajectories = sample_trajectories(engine, model, tokenizer, problems, environment=environment,
                                           max_new_tokens=config.rollout.max_new_tokens, temperature=0.0)
    score_trajectories(trajectories, task, verifier, tokenizer, config)
    return torch.tensor([t.reward for t in trajectories], dtype=torch.float32)


def score_trajectories(trajectories: list[Trajectory], task: Task, verifier: Verifier,
                       tokenizer: PreTrainedTokenizerBase, config: RunConfig) -> None:
    """Decode, verify (in the verifier pool when the task needs isolation) and reward every
    trajectory in place; a verifier failure is a zero score with its error recorded.

    A multi-turn episode is judged on its ``answer_text`` (the policy's turns, never the
    tool output); one that broke its environment's rules (``violation``) gets reward 0.
    A reward component that fails (raises, NaN, inf) is a ``RewardError``; with
    ``reward.on_error: zero`` it scores 0, and the sample's ``reward_components["failed"]``
    counts its failed components and ``error`` says why."""
    texts = tokenizer.batch_decode([t.response_ids for t in trajectories], skip_special_tokens=True)
    for traj, text in zip(trajectories, texts):
        traj.text = text
    answers = [t.judged_text(tokenizer) for t in trajectories]
    scores = verifier.score_many([t.problem for t in trajectories], answers)
    for traj, answer, score in zip(trajectories, answers, scores):
        traj.correct, traj.extracted, traj.error = score.correct, score.extracted, score.error
        errors: list[str] = []
        traj.reward, traj.reward_components = compose_reward(
            config.reward.components, task, traj.problem, answer, score, config.reward.params,
            episode=traj if traj.answer_text is not None else None, on_error=config.reward.on_error, errors=errors)
        if errors:
            traj.reward_components["failed"] = float(len(errors))
            traj.error = "; ".join([traj.error, *errors] if traj.error else errors)
        if traj.violation is not None:
            traj.reward = 0.0


def shape_rewards(trajectories: list[Trajectory], shapers: list[tuple[Any, dict[str, Any]]], config: RunConfig,
                  step: int) -> None:
    """Apply the batch-level reward shapers (length shaping, research switches) in place."""
    if not shapers:
        return
    inputs = ShapingInputs(
        rewards=torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        correct=torch.tensor([t.correct for t in trajectories]),
        lengths=torch.tensor([len(t.response_ids) for t in trajectories]),
        truncated=torch.tensor([t.finish_reason == "length" for t in trajectories]),
        group_ids=torch.tensor([t.group for t in trajectories]),
        max_new_tokens=config.rollout.max_new_tokens,
        generator=torch.Generator().manual_seed(derive_seed(config.seed, "rl-shaping", step)),
        format_ok=torch.tensor([t.extracted is not None for t in trajectories]),
        tool_calls=torch.tensor([t.tool_calls for t in trajectories]),
    )
    try:
        shaped = apply_shapers(inputs, shapers)
    except RewardError as err:
        if err.sample is None:
            raise
        traj = trajectories[err.sample]
        answer = traj.answer_text if traj.answer_text is not None else traj.text
        raise RewardError(f"{err} [{describe_sample(traj.problem, answer)}]", err.sample) from None
    for traj, reward in zip(trajectories, shaped.tolist()):
        traj.reward_components["shaping"] = reward - traj.reward
        traj.reward = reward


def prepare_batch(trajectories: list[Trajectory], model: PreTrainedModel, learners: Learners,
                  tokenizer: PreTrainedTokenizerBase, config: RunConfig,
                  baseline: Callable[[list[Problem]], torch.Tensor] | None) -> tuple[TokenBatch, dict[str, float]]:
    """Tensors for the update: advantages and returns, per-token weights (truncated IS,
    high-entropy token selection), reference log-probs, critic values — whatever the config
    uses, attached to the batch's ``extras``."""
    alg, temperature = config.algorithm, config.rollout.temperature
    batch = make_token_batch(
        [t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories], tokenizer.pad_token_id,
        response_masks=[t.loss_mask for t in trajectories], response_logprobs=[t.logprobs for t in trajectories],
        response_values={"entropy": [t.entropies for t in trajectories]},
    )
    if config.rl.mask_truncated:
        keep = overlong_filter_mask(torch.tensor([t.finish_reason == "length" for t in trajectories]))
        batch.target_mask = batch.target_mask * keep[:, None]
    if config.rollout.environment.filter_void_turns:
        keep = void_turn_filter_mask(torch.tensor([t.void_turns for t in trajectories]))
        batch.target_mask = batch.target_mask * keep[:, None]
    device = learners.precision.device
    batch = batch.to(device)
    mask, stats = batch.target_mask, {}
    rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32, device=device)
    group_ids = torch.tensor([t.group for t in trajectories], dtype=torch.long, device=device)

    with torch.no_grad(), learners.precision.autocast():
        if alg.tis_cap is not None:
            # The trainer's own log-probs are the proximal policy; the sampler's are the behaviour.
            behaviour = batch.old_logprobs
            batch.old_logprobs, _ = token_logprobs(model, batch, temperature)
            tis_weight = torch.exp(batch.old_logprobs - behaviour).clamp(max=alg.tis_cap) * mask
            batch.extras["token_weight"] = tis_weight
            stats["tis_weight_mean"] = float(tis_weight.sum() / mask.sum())
        token_rewards = None
        if learners.reference is not None:
            ref, _ = token_logprobs(learners.reference, batch, temperature)
            batch.extras["ref_logprobs"] = ref
            kl = KL_ESTIMATORS.get(alg.kl.estimator)(batch.old_logprobs, ref) * mask
            stats["kl_rollout"] = float(kl.sum() / mask.sum())
            if alg.kl.placement == "reward":
                token_rewards = -learners.kl_coef * kl
        estimator = ADVANTAGES.get(alg.advantage)
        inputs: dict[str, Any] = {}
        if "values" in estimator.requires:
            inputs["values"] = learners.critic(batch) * mask
            batch.extras["old_values"] = inputs["values"]
        if "baseline" in estimator.requires:
            first_of_group = {t.group: t.problem for t in reversed(trajectories)}
            order = {g: i for i, g in enumerate(first_of_group)}
            per_group = baseline(list(first_of_group.values())).to(device)
            inputs["baseline"] = per_group[torch.tensor([order[t.group] for t in trajectories], device=device)]
        adv, returns = estimator(rewards, group_ids, mask, token_rewards=token_rewards, gamma=alg.gamma,
                                 lam=alg.lam, scale_by_std=alg.scale_by_std, k=alg.pass_k, **inputs)
        adv = adv * sample_weights(adv, alg.positive_weight, alg.negative_weight)
        batch.extras["advantages"] = adv
        batch.extras["returns"] = returns
        if alg.top_entropy_fraction < 1.0:
            # Only the policy-gradient term is restricted; the normaliser stays all response
            # tokens, as in the paper's objective (1/sum|o_i|) * sum I[H_t >= tau] * ...
            selected = high_entropy_mask(batch.extras["entropy"], mask, alg.top_entropy_fraction)
            batch.extras["token_weight"] = batch.extras.get("token_weight", mask) * selected
            stats["selected_token_frac"] = float(selected.sum() / mask.sum())
    return batch, stats


def policy_update(model: PreTrainedModel, learners: Learners, batch: TokenBatch, config: RunConfig,
                  generator: torch.Generator, opt_step: int, train_policy: bool = True) -> dict[str, float]:
    """``epochs`` x ``mini_batches`` optimizer steps over one rollout batch (policy, and the
    critic when there is one).

    Each mini-batch is split into micro-batches for gradient accumulation; the loss
    aggregation gets the mini-batch's global token/sequence counts, so the gradient does not
    depend on the micro-batch size. A mini-batch's rows are ordered by length before the
    split, so each micro-batch is trimmed to similar lengths (less padding to compute; the
    sum over micro-batches is the same). ``time_logprob`` / ``time_backward`` are the seconds
    spent in the forward passes (log-probs and losses) and in backward + optimizer steps.

    An update whose loss or total gradient norm is NaN/inf is skipped (``learners.guard``:
    no optimizer step, gradients dropped) and counted in ``skipped_updates``.
    """
    rl, alg = config.rl, config.algorithm
    loss_fn = POLICY_LOSSES.get(alg.loss)
    kl_fn = KL_ESTIMATORS.get(alg.kl.estimator) if alg.kl.placement == "loss" and learners.reference else None
    entropy_coef = learners.entropy_coef
    n = batch.input_ids.shape[0]
    mini_size = -(-n // rl.mini_batches)  # filtering can leave a batch that does not divide evenly
    token_weighted: dict[str, float] = defaultdict(float)  # per-token statistics, weighted by token count
    stat_weights: dict[str, float] = defaultdict(float)
    loss_sum = grad_norm_sum = time_logprob = time_backward = 0.0
    updates = skipped = 0
    step = opt_step // (rl.epochs * rl.mini_batches) + 1  # the RL step, for messages
    precision = learners.precision
    lengths = batch.attention_mask.sum(-1).cpu()  # indexes the CPU permutation below
    for _ in range(rl.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, mini_size):
            mini = order[start:start + mini_size]
            mini = mini[lengths[mini].argsort(descending=True, stable=True)]
            agg = dict(num_tokens=batch.target_mask[mini].sum(), num_seqs=len(mini),
                       norm_len=config.rollout.max_new_tokens)
            lr = lr_at(opt_step + updates, rl.lr, rl.warmup_steps, 0, "constant")
            set_lr(learners.optimizer, lr)
            learners.optimizer.zero_grad(set_to_none=True)
            if learners.critic is not None:
                learners.critic_optimizer.zero_grad(set_to_none=True)
            update_loss = 0.0
            for micro_start in range(0, len(mini), rl.micro_batch_size):
                micro = batch.rows(mini[micro_start:micro_start + rl.micro_batch_size])
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
                            loss = loss + learners.kl_coef * aggregate_loss(kl, mask, alg.loss_agg, **agg)
                            stats["kl"] = kl.sum() / mask.sum().clamp(min=1)
                        if entropy_coef > 0:
                            loss = loss - entropy_coef * aggregate_loss(entropy * mask, mask, alg.loss_agg, **agg)
                        stats["entropy"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
                    t_backward = time.perf_counter()
                    precision.backward(loss)
                    time_logprob += t_backward - t_forward
                    time_backward += time.perf_counter() - t_backward
                    update_loss += float(loss.detach())
                if learners.critic is not None:
                    with precision.autocast():
                        values = learners.critic(micro)
                        per_token_v, value_stats = clipped_value_loss(
                            values, micro.extras["old_values"], micro.extras["returns"], micro.target_mask,
                            clip=alg.critic.value_clip)
                        value_loss = aggregate_loss(per_token_v, micro.target_mask, "token_mean", **agg)
                    precision.backward(value_loss)
                    stats.update(value_stats)
                weight = float(mask.sum())
                for key, value in stats.items():
                    value = float(value.detach())
                    if value == value:  # explained variance is NaN on a micro-batch of equal returns
                        token_weighted[key] += value * weight
                        stat_weights[key] += weight
            # Clip, then step only if the loss and the total gradient norms are finite.
            t_step = time.perf_counter()
            grads: list[tuple[str, torch.nn.Module, float]] = []  # (label, module, total grad norm)
            optimizers = ([learners.optimizer] if train_policy else []) + (
                [learners.critic_optimizer] if learners.critic is not None else [])
            precision.unscale(*optimizers)
            if train_policy:
                grads.append(("policy", model, clip_grad_norm(model, rl.grad_clip)))
                grad_norm_sum += grads[-1][2]
            if learners.critic is not None:
                grads.append(("critic", learners.critic, clip_grad_norm(learners.critic, rl.grad_clip)))
            if precision.overflowed(update_loss, [norm for _, _, norm in grads]):
                precision.update()  # float16: the scale was too high; back off and skip, not a divergence
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                skipped += 1
            elif learners.guard.allow(f"step {step} (optimizer update {opt_step + updates + 1})", update_loss, grads):
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
    metrics = {key: value / max(stat_weights[key], 1.0) for key, value in token_weighted.items()}
    metrics.update(loss=loss_sum / updates, grad_norm=grad_norm_sum / updates, lr=lr, time_logprob=time_logprob,
                   time_backward=time_backward, skipped_updates=float(skipped))
    if precision.scaler is not None:
        metrics.update(loss_scale=precision.scaler.get_scale(), loss_scale_backoffs=float(precision.loss_scale_backoffs))
    return metrics


def update_inputs(batch: TokenBatch) -> dict[str, torch.Tensor]:
    """The per-token tensors of a prepared batch that enter the loss, by name."""
    named = {"old log-probs": batch.old_logprobs, "advantages": batch.extras.get("advantages"),
             "returns": batch.extras.get("returns"), "reference log-probs": batch.extras.get("ref_logprobs"),
             "token weights": batch.extras.get("token_weight"), "old values": batch.extras.get("old_values")}
    return {name: tensor for name, tensor in named.items() if tensor is not None}


def update_coefficients(learners: Learners, model: PreTrainedModel, metrics: dict[str, float],
                        config: RunConfig, step: int, n_samples: int) -> None:
    """Adaptive KL / entropy coefficients, and ProRL's reference reset, after a step."""
    kl_cfg, ent_cfg = config.algorithm.kl, config.algorithm.entropy
    if learners.reference is not None and kl_cfg.target is not None and "kl_rollout" in metrics:
        learners.kl_coef = adaptive_kl_coef(learners.kl_coef, metrics["kl_rollout"], kl_cfg.target,
                                            kl_cfg.horizon, n_samples)
    if ent_cfg.target is not None and "entropy" in metrics:
        learners.entropy_coef = adaptive_entropy_coef(learners.entropy_coef, metrics["entropy"], ent_cfg.target,
                                                      ent_cfg.lr)
    reset = learners.reference is not None and (
        (kl_cfg.reset_every and step % kl_cfg.reset_every == 0)
        or (kl_cfg.reset_threshold is not None and metrics.get("kl_rollout", 0.0) > kl_cfg.reset_threshold))
    if reset:
        learners.reference.load_state_dict(model.state_dict())
        if kl_cfg.reset_optimizer:
            learners.optimizer.state.clear()
    metrics.update(kl_coef=learners.kl_coef, entropy_coef=learners.entropy_coef, reference_reset=float(bool(reset)))


def collect_rollouts(engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     task: Task, verifier: Verifier, learners: Learners, sampler: PromptSampler,
                     config: RunConfig, run: RunDir, step: int,
                     environment: EnvironmentFactory | None = None) -> tuple[list[Trajectory], dict[str, float]]:
    """Roll out, score and shape groups until ``prompts_per_step`` groups pass the data filter
    (DAPO dynamic sampling / online difficulty filtering) or ``data.max_rounds`` rounds are
    spent; without a filter this is one round. Every group's pass rate goes to
    ``pass_rates.jsonl`` (the input of LIMR selection)."""
    rl, data = config.rl, config.data
    rounds = data.max_rounds if data.filter != "none" else 1
    kept: list[Trajectory] = []
    kept_groups = generated_groups = 0
    problems_by_group: dict[int, Problem] = {}
    all_groups: list[int] = []
    all_correct: list[bool] = []
    for round_ in range(rounds):
        problems = sampler.draw(rl.prompts_per_step - kept_groups, step, round_)
        sampler_rng = torch.Generator().manual_seed(derive_seed(config.seed, "rl-samples", step,
                                                                *([round_] if round_ else [])))
        trajectories = rollout_groups(engine, model, tokenizer, problems, config, sampler_rng, environment)
        check_fits_context([len(t.prompt_ids) + config.rollout.max_new_tokens for t in trajectories],
                           getattr(model.config, "max_position_embeddings", None),
                           f"RL step {step + 1}: a prompt + rollout.max_new_tokens")
        for traj in trajectories:
            traj.group += generated_groups
            problems_by_group[traj.group] = traj.problem
        generated_groups += len(problems)
        score_trajectories(trajectories, task, verifier, tokenizer, config)
        shape_rewards(trajectories, learners.shapers, config, step)
        groups = [t.group for t in trajectories]
        correct = [t.correct for t in trajectories]
        all_groups += groups
        all_correct += correct
        keep = groups_to_keep(groups, [t.reward for t in trajectories], correct, data.filter,
                              data.pass_rate_low, data.pass_rate_high)
        kept += [t for t in trajectories if t.group in keep]
        kept_groups += len(keep)
        if kept_groups >= rl.prompts_per_step:
            break
    rates = group_pass_rates(all_groups, all_correct)
    run.append("pass_rates.jsonl", {"stage": "rl", "step": step + 1,
                                    "rates": {problems_by_group[g].id: r for g, r in rates.items()}})
    stats = {"filter_kept_frac": kept_groups / generated_groups, "rollout_rounds": float(round_ + 1),
             "samples_generated": float(generated_groups * rl.samples_per_prompt)}
    stats.update(sampler.observe(problems_by_group, all_groups, all_correct))
    return kept, stats


def learn_from(trajectories: list[Trajectory], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               task: Task, engine: RolloutEngine, verifier: Verifier, learners: Learners, config: RunConfig,
               step: int, t0: float, t_gen: float, environment: EnvironmentFactory | None = None) -> dict[str, Any]:
    """Advantages, the policy (and critic) update and the coefficient controllers for one
    step's kept trajectories; returns the step's metrics record."""
    batch, batch_stats = prepare_batch(
        trajectories, model, learners, tokenizer, config,
        baseline=lambda problems: greedy_baseline(engine, model, tokenizer, problems, task, verifier, config,
                                                  environment))
    t_prep = time.perf_counter() - t0 - t_gen
    shuffle = torch.Generator().manual_seed(derive_seed(config.seed, "rl-shuffle", step))
    updates_per_step = config.rl.epochs * config.rl.mini_batches
    bad = nonfinite_rows(update_inputs(batch), batch.target_mask)
    if bad is None:
        update = policy_update(model, learners, batch, config, shuffle, step * updates_per_step,
                               train_policy=step >= config.algorithm.critic.warmup_steps)
    else:  # NaN/inf advantages or log-probs: every update of this step would be non-finite
        name, row = bad
        traj = trajectories[row]
        learners.guard.skip(f"step {step + 1}", f"non-finite {name} for {describe_sample(traj.problem, traj.text)}",
                            updates_per_step)
        update = {"skipped_updates": float(updates_per_step)}
        batch_stats = {key: value for key, value in batch_stats.items() if math.isfinite(value)}
    elapsed = time.perf_counter() - t0
    record = step_metrics(step + 1, trajectories, config)
    record.update(batch_stats)
    record.update(update)
    update_coefficients(learners, model, record, config, step + 1, len(trajectories))
    record.update(step_time=elapsed, time_generation=t_gen, time_scoring=t_prep,
                  time_update=elapsed - t_gen - t_prep,
                  tokens_per_s=sum(len(t.response_ids) for t in trajectories) / elapsed)
    return record


def train_rl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, engine: RolloutEngine,
             verifier: Verifier, config: RunConfig, run: RunDir, state: dict[str, Any], exclude: frozenset[str],
             evaluate_fn: Callable[[str, int], Any] | None = None,
             environment: EnvironmentFactory | None = None) -> None:
    """Run (or continue) the RL stage; leaves ``checkpoints/final`` and updates ``state``.
    With an ``environment`` every sample is a multi-turn episode."""
    rl = config.rl
    sampler = PromptSampler(task, config, exclude)
    learners = make_learners(model, config, sampler)
    start = 0
    if state.get("checkpoint") and state.get("stage") == "rl":
        trainer_state = load_trainer_state(run.path / state["checkpoint"])
        learners.load_state_dict(trainer_state["learners"])
        restore_rng_states(trainer_state["rng"])
        start = trainer_state["step"]

    with StageProgress("RL", rl.steps, start, config.logging.progress) as progress:
        for step in range(start, rl.steps):
            t0 = time.perf_counter()
            trajectories, rollout_stats = collect_rollouts(engine, model, tokenizer, task, verifier, learners,
                                                           sampler, config, run, step, environment)
            learners.samples_generated += int(rollout_stats["samples_generated"])
            t_gen = time.perf_counter() - t0
            if trajectories:
                record = learn_from(trajectories, model, tokenizer, task, engine, verifier, learners, config, step,
                                    t0, t_gen, environment)
                run.append("samples.jsonl", [
                    {"stage": "rl", "step": step + 1, **t.record()}
                    for t in trajectories[:: max(1, len(trajectories) // max(1, config.logging.samples_per_step))]
                    [: config.logging.samples_per_step]
                ])
            else:  # every group was filtered out: nothing to learn from this step
                record = {"stage": "rl", "step": step + 1, "step_time": time.perf_counter() - t0}
            learners.seconds += time.perf_counter() - t0
            out_of_time = 0 < rl.max_seconds <= learners.seconds
            record.update(rollout_stats, samples_generated_total=learners.samples_generated,
                          rl_seconds_total=learners.seconds)
            if learners.precision.device.type == "cuda":
                record["gpu_memory_peak_gib"] = torch.cuda.max_memory_allocated(learners.precision.device) / 2**30
            run.append("metrics.jsonl", record)
            shown = {"reward": "reward_mean", "acc": "accuracy", "tok_s": "tokens_per_s"}
            progress.update(step + 1, **{label: record[key] for label, key in shown.items() if key in record})

            if out_of_time:
                state["rl_last_step"] = step + 1
                break
            if evaluate_fn is not None and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < rl.steps:
                evaluate_fn(f"rl-step-{step + 1}", step + 1)
            if (step + 1) % config.checkpoint.every == 0 and step + 1 < rl.steps:
                name = f"rl-step-{step + 1:06d}"
                state.update(stage="rl", checkpoint=f"checkpoints/{name}")
                run.save_model(name, model, tokenizer, {"learners": learners.state_dict(), "rng": rng_states(),
                                                        "stage": "rl", "step": step + 1}, state=state)
                run.prune("rl-step", config.checkpoint.keep_last)  # (a kill here: the resume takes the checkpoint's newer state)
                run.save_state(state)

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
    for name in [*config.reward.components, *(["shaping"] if config.reward.shaping else [])]:
        record[f"reward/{name}"] = sum(t.reward_components.get(name, 0.0) for t in trajectories) / n
    if config.reward.on_error == "zero":  # samples with a component that failed and was scored 0
        record["reward/failed"] = float(sum("failed" in t.reward_components for t in trajectories))
    record["verifier_timeout_frac"] = sum(is_timeout(t.error) for t in trajectories) / n
    per_task = accuracy_by_task([t.problem for t in trajectories], [t.correct for t in trajectories])
    record.update({f"accuracy/{name}": accuracy for name, accuracy in per_task.items()})
    groups: dict[int, set[float]] = defaultdict(set)
    for t in trajectories:
        groups[t.group].add(t.reward)
    record["zero_variance_groups"] = sum(len(r) == 1 for r in groups.values()) / len(groups)
    if config.rollout.environment.name is not None:
        record.update(episode_metrics(trajectories))
    return record


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
