"""Supervised warm start: teach the format (and some skill) from task demonstrations.

Only response tokens (the demonstration and its EOS) are in the loss; prompt tokens are
masked. Each step's batch is drawn with a seed derived from (run seed, step), so resuming at
step s replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.config import RunConfig
from rlvr.distributed import SINGLE, World
from rlvr.distributed.fsdp import (SHARDS, copy_full_weights, full_optimizer_state, load_optimizer_state,
                                   load_sharded_state, save_sharded_state, shard, uses_fsdp)
from rlvr.models.prompt_fit import check_fits_context, check_prompt_lengths
from rlvr.rollout.environment import Environment, EnvironmentFactory
from rlvr.rollout.trajectory import render_prompts, truncate_left
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem, Task, sample_training_problems
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.finite import UpdateGuard, clip_grad_norm
from rlvr.training.optim import lr_at, make_optimizer, set_lr
from rlvr.training.precision import Precision
from rlvr.training.progress import StageProgress
from rlvr.training.run_dir import RunDir, load_trainer_state, restore_rng_states, rng_states


def sft_demonstrations(task: Task, config: RunConfig, step: int,
                       exclude: frozenset[str]) -> tuple[list[Problem], list[str]]:
    """Step ``step``'s problems and their demonstration texts, drawn from seeds derived from
    (run seed, step): the same at every call, so a resumed run and the start-up check see
    exactly the batches an uninterrupted run trains on."""
    problems = sample_training_problems(task, config.sft.batch_size, derive_seed(config.seed, "sft-problems", step),
                                        exclude, config.data.reuse_problems)
    demo_rng = random.Random(derive_seed(config.seed, "sft-demos", step))
    texts = [task.laid_out(task.demonstration(problem, demo_rng)) for problem in problems]
    if config.sft.corrupt_content > 0:
        corrupt_rng = random.Random(derive_seed(config.seed, "sft-corrupt", step))
        texts = [corrupt_content(task, text, config.sft.corrupt_content, corrupt_rng) for text in texts]
    return problems, texts


def corrupt_content(task: Task, text: str, rate: float, rng: random.Random) -> str:
    """The demonstration with each digit of its reasoning replaced, with probability ``rate``,
    by another digit drawn uniformly; the final answer (from where the task writes it, or the
    last ``<answer>`` block) and every other character are kept: the structure survives, the
    content does not ("LLMs Can Easily Learn to Reason from Demonstrations: Structure, not
    content, is what matters", Li et al. 2025)."""
    answer = task.extract_answer(task.scored_text(text))
    ends = [text.rfind(task.answer_text(answer)) if answer is not None else -1, text.rfind("<answer>")]
    keep_from = max(ends) if max(ends) >= 0 else len(text)
    head = [c if not c.isdigit() or rng.random() >= rate else rng.choice([d for d in "0123456789" if d != c])
            for c in text[:keep_from]]
    return "".join(head) + text[keep_from:]


def sft_batch(task: Task, tokenizer: PreTrainedTokenizerBase, config: RunConfig, step: int,
              exclude: frozenset[str], environment: EnvironmentFactory | None = None):
    """Step ``step``'s batch of demonstrations as a TokenBatch (prompt tokens masked out).

    With a multi-turn environment a demonstration is split into policy and observation
    segments (tool output really produced by running the demonstration's code); each
    segment is tokenized on its own, as the rollout loop does, and observations are masked."""
    problems, texts = sft_demonstrations(task, config, step, exclude)
    return demonstration_batch(problems, texts, tokenizer, config, environment)


def demonstration_batch(problems: list[Problem], texts: list[str], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, environment: EnvironmentFactory | None = None):
    """``problems`` with their demonstration ``texts`` as a TokenBatch: the rendered prompts
    (masked out), each demonstration and its EOS (trained; a multi-turn environment's
    observations masked, as ``sft_batch`` says)."""
    prompts = truncate_left(render_prompts(tokenizer, problems), config.data.prompt_keep_last)[0]
    demonstrations = (Environment.demonstrations(None, texts) if environment is None
                      else environment.cls.demonstrations(environment.params, texts))
    responses, masks = [], []
    for segments in demonstrations:
        ids, mask = [], []
        for segment, is_policy in segments:
            part = tokenizer(segment, add_special_tokens=False)["input_ids"]
            ids += part
            mask += [int(is_policy)] * len(part)
        responses.append(ids + [tokenizer.eos_token_id])
        masks.append(mask + [1])
    return make_token_batch(prompts, responses, tokenizer.pad_token_id, response_masks=masks)


def train_sft(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, config: RunConfig,
              run: RunDir, state: dict[str, Any], exclude: frozenset[str],
              environment: EnvironmentFactory | None = None, world: World = SINGLE) -> None:
    """Run (or continue) the SFT stage; leaves ``checkpoints/sft-final`` and updates ``state``
    (the caller deletes the step checkpoints). With several trainer ranks each computes the
    loss of its share of the batch's rows over the whole batch's token count, and the
    gradients are summed: the same step as one process. With ``distributed.strategy: fsdp``
    the ranks train a sharded copy of ``model`` and gather it back into ``model`` for each
    checkpoint and at the end."""
    cfg = config.sft
    precision = Precision.from_config(config)
    trained = shard(copy.deepcopy(model), world, precision.dtype) if uses_fsdp(config, world) else model
    optimizer = make_optimizer(trained, cfg.lr, cfg.weight_decay)
    start = 0
    if state.get("checkpoint") and state.get("stage") == "sft":
        trainer_state = load_trainer_state(run.path / state["checkpoint"])
        if "shards" in trainer_state:  # an FSDP run's: resharded to these ranks (or one process)
            load_sharded_state(run.path / state["checkpoint"] / trainer_state["shards"], {"optimizer": (trained, optimizer)})
        else:
            load_optimizer_state(optimizer, trainer_state["optimizer"])
        precision.load_state_dict(trainer_state.get("precision"))
        restore_rng_states(trainer_state["rng"])
        start = trainer_state["step"]
    model.train()
    trained.train()
    guard = UpdateGuard("SFT", "sft", cfg.max_nonfinite_updates)  # a NaN/inf loss or gradient skips the step
    if start:
        guard.in_a_row = trainer_state.get("nonfinite_in_a_row", 0)
    with StageProgress("SFT", cfg.steps, start, config.logging.progress, silent=not world.is_main) as progress:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, "cosine")
            set_lr(optimizer, lr)
            batch = sft_batch(task, tokenizer, config, step, exclude, environment).to(precision.device)
            check_fits_context(batch.attention_mask.sum(-1).tolist(),
                               getattr(model.config, "max_position_embeddings", None),
                               f"SFT step {step + 1}: a prompt + its demonstration")
            limit = config.data.max_prompt_length
            if limit is not None and config.data.prompt_keep_last is None and int(batch.prompt_lengths.max()) > limit:
                # the step's problems, drawn again only to name the one that is too long
                check_prompt_lengths(batch.prompt_lengths.tolist(), sft_demonstrations(task, config, step, exclude)[0],
                                     limit, f"SFT step {step + 1}'s prompts")
            tokens = batch.target_mask.sum()
            mine = batch if not world.distributed else batch.rows(torch.tensor(world.strided(range(len(batch.targets)))))
            with precision.autocast():
                logp, _ = token_logprobs(trained, mine)
                loss = -(logp * mine.target_mask).sum() / tokens
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
            if world.distributed:
                if trained is model:  # FSDP reduce-scattered (summed) the gradients in the backward already
                    world.sum_grads_([model], f"SFT step {step + 1}: summing gradients")
                loss = torch.tensor(world.sum_floats([loss.item()], f"SFT step {step + 1}: summing the loss")[0])
            precision.unscale(optimizer)
            grad_norm = clip_grad_norm(trained, cfg.grad_clip)
            skipped = (precision.overflowed(loss.item(), [grad_norm])  # float16: the loss scale backs off
                       or not guard.allow(f"step {step + 1}", loss.item(), [("model", trained, grad_norm)]))
            if skipped:
                precision.update()
                optimizer.zero_grad(set_to_none=True)
            else:
                precision.step(optimizer)
            elapsed = time.perf_counter() - t0
            record = {"stage": "sft", "step": step + 1, "loss": loss.item(), "lr": lr,
                      "grad_norm": grad_norm, "step_time": elapsed, "tokens_per_s": tokens.item() / elapsed,
                      "skipped_updates": float(skipped)}
            if precision.scaler is not None:
                record.update(loss_scale=precision.scaler.get_scale(),
                              loss_scale_backoffs=float(precision.loss_scale_backoffs))
            run.append("metrics.jsonl", record)
            progress.update(step + 1, loss=record["loss"])
            if (step + 1) % config.checkpoint.every == 0 and step + 1 < cfg.steps:
                trainer_state: dict[str, Any] = {"nonfinite_in_a_row": guard.in_a_row,
                                                 "precision": precision.state_dict()}
                if trained is not model:  # every rank gathers the weights (its optimizer shards: _checkpoint)
                    copy_full_weights(model, trained)
                else:
                    trainer_state["optimizer"] = full_optimizer_state(optimizer)
                _checkpoint(run, model, tokenizer, trainer_state, state, step + 1, config.checkpoint.keep_last,
                            {"optimizer": (trained, optimizer)} if trained is not model else None)
    # The stage's end: the state after it travels inside sft-final, then becomes state.json.
    state.update(stage=None, checkpoint=None, sft_final="checkpoints/sft-final")
    state["completed_stages"].append("sft")
    if trained is not model:
        copy_full_weights(model, trained)
    run.save_model("sft-final", model, tokenizer, state=state)
    run.save_state(state)


def _checkpoint(run: RunDir, model, tokenizer, trainer_state: dict[str, Any], state, step: int,
                keep_last: int, sharded: dict[str, Any] | None) -> None:
    """A resumable SFT checkpoint: weights, ``trainer_state`` (optimizer, skip counter) and
    RNGs; ``sharded`` (FSDP): the optimizer's shards, which every rank writes itself."""
    name = f"sft-step-{step:06d}"
    shards = None
    if sharded is not None:
        save_sharded_state(shards := run.shard_dir(name), sharded)
        trainer_state = {**trainer_state, "shards": SHARDS}
    state.update(stage="sft", checkpoint=f"checkpoints/{name}")
    run.save_model(name, model, tokenizer, {**trainer_state, "rng": rng_states(), "stage": "sft", "step": step},
                   state=state, shards=shards)
    run.prune("sft-step", keep_last)  # (a kill here: the resume takes the checkpoint's newer state)
    run.save_state(state)
