"""The RL loop, top to bottom: sample prompts, roll out groups, score, compute advantages,
take PPO-style optimizer steps over mini-batches, log, checkpoint.

Which estimator, loss, aggregation and KL estimator run is looked up by name in the
registries, so adding one never touches this file.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.algorithms import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES, aggregate_loss
from rlvr.config import RunConfig
from rlvr.rewards import compose_reward
from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.trajectory import Trajectory, render_prompt
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem, Task
from rlvr.train.batch import TokenBatch, make_token_batch, token_logprobs
from rlvr.train.optim import lr_at, make_optimizer, set_lr
from rlvr.train.progress import StageProgress
from rlvr.train.run_dir import RunDir, load_trainer_state, restore_rng_states, rng_states


def rollout_groups(engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   problems: list[Problem], config: RunConfig, generator: torch.Generator) -> list[Trajectory]:
    """``samples_per_prompt`` responses for each problem; group i holds problem i's samples."""
    group_size = config.rl.samples_per_prompt
    prompts = [render_prompt(tokenizer, p) for p in problems]
    model.eval()
    gens = engine.generate(
        model, [p for p in prompts for _ in range(group_size)],
        max_new_tokens=config.rollout.max_new_tokens, temperature=config.rollout.temperature,
        top_p=config.rollout.top_p, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, generator=generator,
    )
    model.train()
    return [
        Trajectory(problem=problems[i // group_size], group=i // group_size, prompt_ids=prompts[i // group_size],
                   response_ids=g.response_ids, logprobs=g.logprobs, loss_mask=[1] * len(g.response_ids),
                   finish_reason=g.finish_reason)
        for i, g in enumerate(gens)
    ]


def score_trajectories(trajectories: list[Trajectory], task: Task, tokenizer: PreTrainedTokenizerBase,
                       weights: dict[str, float]) -> None:
    """Decode, verify and reward every trajectory in place."""
    for traj in trajectories:
        traj.text = tokenizer.decode(traj.response_ids, skip_special_tokens=True)
        score = task.score(traj.problem, traj.text)
        traj.correct, traj.extracted, traj.error = score.correct, score.extracted, score.error
        traj.reward, traj.reward_components = compose_reward(weights, task, traj.problem, traj.text, score)


def policy_update(model: PreTrainedModel, optimizer: torch.optim.Optimizer, batch: TokenBatch,
                  adv: torch.Tensor, ref_logprobs: torch.Tensor | None, config: RunConfig,
                  generator: torch.Generator, opt_step: int) -> dict[str, float]:
    """``epochs`` x ``mini_batches`` optimizer steps over one rollout batch.

    Each mini-batch is split into micro-batches for gradient accumulation; the loss
    aggregation gets the mini-batch's global token/sequence counts, so the gradient does not
    depend on the micro-batch size.
    """
    rl, alg = config.rl, config.algorithm
    loss_fn = POLICY_LOSSES.get(alg.loss)
    kl_fn = KL_ESTIMATORS.get(alg.kl.estimator) if alg.kl.coef > 0 else None
    n = batch.input_ids.shape[0]
    mini_size = n // rl.mini_batches
    token_weighted: dict[str, float] = {}  # per-token statistics, weighted by token count
    tokens_seen = 0.0
    loss_sum = grad_norm_sum = 0.0
    updates = 0
    for _ in range(rl.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, mini_size):
            mini = order[start:start + mini_size]
            num_tokens = batch.target_mask[mini].sum()
            lr = lr_at(opt_step + updates, rl.lr, rl.warmup_steps, 0, "constant")
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            for micro_start in range(0, len(mini), rl.micro_batch_size):
                rows = mini[micro_start:micro_start + rl.micro_batch_size]
                micro = batch.rows(rows)
                mask = micro.target_mask
                logp, entropy = token_logprobs(model, micro, config.rollout.temperature, with_entropy=True)
                adv_tok = adv[rows, None].expand_as(logp)
                per_token, stats = loss_fn(logp, micro.old_logprobs, adv_tok, mask,
                                           clip_low=alg.clip_low, clip_high=alg.clip_high)
                agg = dict(num_tokens=num_tokens, num_seqs=len(mini), norm_len=config.rollout.max_new_tokens)
                loss = aggregate_loss(per_token, mask, alg.loss_agg, **agg)
                if kl_fn is not None:
                    ref = ref_logprobs[rows, : logp.shape[1]]
                    kl = kl_fn(logp, ref) * mask
                    loss = loss + alg.kl.coef * aggregate_loss(kl, mask, alg.loss_agg, **agg)
                    stats["kl"] = kl.sum() / mask.sum().clamp(min=1)
                loss.backward()
                loss_sum += float(loss.detach())
                stats["entropy"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
                weight = float(mask.sum())
                tokens_seen += weight
                for key, value in stats.items():
                    token_weighted[key] = token_weighted.get(key, 0.0) + float(value.detach()) * weight
            max_norm = rl.grad_clip if rl.grad_clip > 0 else float("inf")
            grad_norm_sum += float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            optimizer.step()
            updates += 1
    metrics = {key: value / max(tokens_seen, 1.0) for key, value in token_weighted.items()}
    metrics.update(loss=loss_sum / updates, grad_norm=grad_norm_sum / updates, lr=lr)
    return metrics


def train_rl(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, engine: RolloutEngine,
             config: RunConfig, run: RunDir, state: dict[str, Any], exclude: frozenset[str],
             evaluate_fn=None) -> None:
    """Run (or continue) the RL stage; leaves ``checkpoints/final`` and updates ``state``."""
    rl, alg = config.rl, config.algorithm
    optimizer = make_optimizer(model, rl.lr, rl.weight_decay)
    reference = None
    if alg.kl.coef > 0:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    start = 0
    if state.get("checkpoint") and state.get("stage") == "rl":
        trainer_state = load_trainer_state(run.path / state["checkpoint"])
        optimizer.load_state_dict(trainer_state["optimizer"])
        restore_rng_states(trainer_state["rng"])
        start = trainer_state["step"]
        if reference is not None:
            reference.load_state_dict(trainer_state["reference"])
        run.drop_records_after("rl", start)
    advantage_fn = ADVANTAGES.get(alg.advantage)
    updates_per_step = rl.epochs * rl.mini_batches

    with StageProgress("RL", rl.steps, start, config.logging.progress) as progress:
        for step in range(start, rl.steps):
            t0 = time.perf_counter()
            problems = task.sample_problems(rl.prompts_per_step, derive_seed(config.seed, "rl-prompts", step), exclude)
            sampler = torch.Generator().manual_seed(derive_seed(config.seed, "rl-samples", step))
            trajectories = rollout_groups(engine, model, tokenizer, problems, config, sampler)
            t_gen = time.perf_counter() - t0

            score_trajectories(trajectories, task, tokenizer, config.reward.components)
            rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32)
            group_ids = torch.tensor([t.group for t in trajectories], dtype=torch.long)
            adv = advantage_fn(rewards, group_ids, scale_by_std=alg.scale_by_std)
            t_score = time.perf_counter() - t0 - t_gen

            batch = make_token_batch(
                [t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories],
                tokenizer.pad_token_id, response_masks=[t.loss_mask for t in trajectories],
                response_logprobs=[t.logprobs for t in trajectories],
            )
            ref_logprobs = None
            if reference is not None:
                with torch.no_grad():
                    ref_logprobs, _ = token_logprobs(reference, batch, config.rollout.temperature)
            shuffle = torch.Generator().manual_seed(derive_seed(config.seed, "rl-shuffle", step))
            update = policy_update(model, optimizer, batch, adv, ref_logprobs, config, shuffle,
                                   step * updates_per_step)
            elapsed = time.perf_counter() - t0

            record = step_metrics(step + 1, trajectories, rewards, group_ids, config)
            record.update(update)
            record.update(step_time=elapsed, time_generation=t_gen, time_scoring=t_score,
                          time_update=elapsed - t_gen - t_score,
                          tokens_per_s=sum(len(t.response_ids) for t in trajectories) / elapsed)
            run.append("metrics.jsonl", record)
            run.append("samples.jsonl", [
                {"stage": "rl", "step": step + 1, **t.record()}
                for t in trajectories[:: max(1, len(trajectories) // max(1, config.logging.samples_per_step))]
                [: config.logging.samples_per_step]
            ])
            progress.update(step + 1, reward=record["reward_mean"], acc=record["accuracy"],
                            tok_s=record["tokens_per_s"])

            if evaluate_fn is not None and config.eval.every and (step + 1) % config.eval.every == 0 and step + 1 < rl.steps:
                evaluate_fn(f"rl-step-{step + 1}", step + 1)
            if (step + 1) % config.checkpoint.every == 0 and step + 1 < rl.steps:
                name = f"rl-step-{step + 1:06d}"
                trainer_state = {"optimizer": optimizer.state_dict(), "rng": rng_states(), "stage": "rl",
                                 "step": step + 1}
                if reference is not None:
                    trainer_state["reference"] = reference.state_dict()
                run.save_model(name, model, tokenizer, trainer_state)
                state.update(stage="rl", checkpoint=f"checkpoints/{name}")
                run.save_state(state)
                run.prune("rl-step", config.checkpoint.keep_last)

    final = run.save_model("final", model, tokenizer)
    state.update(stage=None, checkpoint=None, final_checkpoint=str(final.relative_to(run.path)))
    state["completed_stages"].append("rl")
    run.save_state(state)


def step_metrics(step: int, trajectories: list[Trajectory], rewards: torch.Tensor, group_ids: torch.Tensor,
                 config: RunConfig) -> dict[str, Any]:
    """Rollout statistics of one step: rewards (total and per component), accuracy, lengths,
    truncation, and the fraction of groups whose rewards are all equal (no learning signal)."""
    n = len(trajectories)
    record: dict[str, Any] = {"stage": "rl", "step": step, "reward_mean": float(rewards.mean()),
                              "reward_std": float(rewards.std()) if n > 1 else 0.0,
                              "accuracy": sum(t.correct for t in trajectories) / n,
                              "response_length": sum(len(t.response_ids) for t in trajectories) / n,
                              "truncated_frac": sum(t.finish_reason == "length" for t in trajectories) / n}
    for name in config.reward.components:
        record[f"reward/{name}"] = sum(t.reward_components.get(name, 0.0) for t in trajectories) / n
    groups = group_ids.unique()
    same = sum(bool((rewards[group_ids == g] == rewards[group_ids == g][0]).all()) for g in groups)
    record["zero_variance_groups"] = same / len(groups)
    return record
