"""A run from start to finish: build or load the model, SFT warm start, evaluate, RL,
evaluate, summarise, plot. Resuming re-enters the same function and skips what is done."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from rlvr.algorithms import ADVANTAGES, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
from rlvr.config import RunConfig
from rlvr.data.sampler import PromptSampler
from rlvr.distributed import SINGLE, World
from rlvr.eval.evaluate import evaluate, problem_outcomes
from rlvr.eval.plots import PASS_AT_K, plot_run
from rlvr.models import build_tiny_model, load_model_and_tokenizer
from rlvr.models.prompting import apply_prompt_settings
from rlvr.models.tokenizer import build_char_tokenizer
from rlvr.rewards import REWARDS, check_reward_params
from rlvr.rewards.shaping import REWARD_SHAPERS, check_shaper_params
from rlvr.rollout import ROLLOUT_ENGINES, build_environment
from rlvr.seeding import derive_seed
from rlvr.tasks import TASKS, Problem, Task
from rlvr.tasks.base import TooFewProblems
from rlvr.training.loggers import Mirror, check_backends
from rlvr.rollout.sampler import Sampler
from rlvr.training.judge import Judge, Verifier
from rlvr.training.rl import train_rl
from rlvr.training.precision import (DeviceError, check_precision, enable_gradient_checkpointing, forward_autocast,
                                   resolve_device)
from rlvr.training.run_dir import FollowerRunDir, RunDir, atomic_write, model_source, resume_point
from rlvr.verify import make_verifier
from rlvr.training import warmstart_cache
from rlvr.training.sft import sft_demonstrations, train_sft
from rlvr.training.teacher import check_teacher
from rlvr.typed_yaml import ConfigError, from_dict, source_of


def build_task(config: RunConfig, source: str = "config") -> Task:
    """The configured task, its ``task.params`` checked against the task's Params dataclass."""
    return _make_task(config.task.name, config.task.params, config,
                      f"{source_of(source, 'task.params')}: task.params")


def _make_task(name: str, params: dict[str, Any], config: RunConfig, params_source: str) -> Task:
    """Registered task ``name`` with ``params`` checked against its Params (errors name
    ``params_source``), in the run's answer layout: the model answers every task the way it
    was trained to. A user's module:Class task is known by what the config calls it."""
    task_cls = TASKS.get(name)
    task = task_cls(from_dict(task_cls.Params, params, source=params_source))
    task.name = task.name or name
    task.answer_layout = config.task.answer_layout
    task.stated_confidence = config.task.stated_confidence
    return task


def build_eval_tasks(config: RunConfig, source: str = "config",
                     tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, Task, list[Problem]]]:
    """Each ``eval.sets`` entry as (name, task, its held-out problems), checked like the run's
    own task: a name that is not a task, params it does not take or a split too small for
    ``problems`` is a config error naming the entry. With ``data.overlong_prompts: drop`` the
    run's ``tokenizer`` measures the prompts that are dropped first."""
    out = []
    for index, spec in enumerate(config.eval.sets):
        where = f"{source_of(source, 'eval.sets')}: eval.sets[{index}]"
        try:
            task = _make_task(spec.task, spec.params, config, f"{where}.params")
        except KeyError as err:
            raise ConfigError(f"{where}.task: {err.args[0]}") from None
        try:
            if tokenizer is not None:
                drop_overlong(task, config, tokenizer)
            problems = task.sample_problems(spec.problems, config.eval.seed, split="heldout")
        except TooFewProblems as err:
            raise ConfigError(f"{where}.problems={spec.problems}: task {spec.task!r} has only {err.available} "
                              "held-out problems") from None
        except (ValueError, OSError) as err:
            raise ConfigError(f"{where}: {err}") from None
        out.append((spec.name, task, problems))
    return out


class TokenizerSettingError(ValueError):
    """The run's tokenizer cannot be had; ``fields`` are the config fields to blame."""

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = fields


def run_tokenizer(config: RunConfig) -> tuple[PreTrainedTokenizerBase, int | None]:
    """The tokenizer the run will render prompts with (chat template and system prompt
    applied) and the model's context length, without loading weights; a
    ``TokenizerSettingError`` naming model.path or the prompt settings."""
    from rlvr.models.prompt_fit import checkpoint_tokenizer

    try:
        if config.model.path is None:
            tokenizer, positions = build_char_tokenizer(), config.model.max_position_embeddings
        else:
            tokenizer, positions = checkpoint_tokenizer(config.model.path)
    except ValueError as err:
        raise TokenizerSettingError(f"model.path: {err}", ("model.path",)) from None
    try:
        apply_prompt_settings(tokenizer, config)
    except ValueError as err:
        raise TokenizerSettingError(str(err), ("model.chat_template", "task.system_prompt")) from None
    return tokenizer, positions


def drop_overlong(task: Task, config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """``data.overlong_prompts: drop``: take the problems whose prompts are longer than
    ``data.max_prompt_length`` out of ``task``'s data; returns what was dropped, to say."""
    if config.data.overlong_prompts != "drop":
        return None
    from rlvr.models.prompt_fit import drop_overlong_prompts

    dropped, total = drop_overlong_prompts(task, tokenizer, config.data.max_prompt_length)
    return (f"data.overlong_prompts=drop: {dropped} of {total} problems of task {task.name!r} have prompts longer "
            f"than data.max_prompt_length={config.data.max_prompt_length} tokens and are left out") if dropped else None


HELDOUT_HALF_WIDTH_WARNING = 0.10  # warn when a held-out accuracy's 95% interval is wider than +-10 points


def check_data_sizes(task: Task, config: RunConfig, source: str) -> tuple[list[Problem], list[str]]:
    """Every size the run asks of the task's data, checked at once before any work: the
    held-out split (``eval.problems``), the training problems left beside it for SFT batches,
    RL prompts per step and few-shot problems. What cannot be met is one config error listing
    each limit and what to set; training batches larger than the training problems repeat
    them (``data.reuse_problems``) with a warning, as do held-out splits too small for their
    accuracy to mean much. Returns the held-out problems and the warnings (printed by the
    caller once the run directory exists: an error stays one line, and a run refused for
    another reason does not warn)."""
    limits: list[str] = []
    warnings: list[str] = []
    shares_pool = not hasattr(task, "heldout_ids")  # generated: held-out ids are taken out of the training stream
    try:
        heldout = task.sample_problems(config.eval.problems, config.eval.seed, split="heldout")
    except TooFewProblems as err:
        room = max(1, err.available // 5) if shares_pool else err.available
        limits.append(f"eval.problems={config.eval.problems}: the held-out split has only {err.available} problems"
                      + (f" and takes them from the training problems, so set eval.problems={room} or fewer"
                         if shares_pool else f"; set eval.problems={room} or fewer"))
        heldout = task.sample_problems(room, config.eval.seed, split="heldout") if err.available else []
    exclude = frozenset(p.id for p in heldout)
    asks = []  # (field, count) of the training draws the run makes
    if "sft" in config.stages:
        asks.append(("sft.batch_size", config.sft.batch_size))
    if "rl" in config.stages and not config.data.fixed_problems and not config.data.include_ids:
        per_step = config.rl.prompts_per_step
        asks.append(("rl.prompts_per_step" + (" (x2 with data.prefilter)" if config.data.prefilter else ""),
                     2 * per_step if config.data.prefilter else per_step))
    if config.data.fixed_problems:
        asks.append(("data.fixed_problems", config.data.fixed_problems))
    if asks:
        largest = max(count for _, count in asks)
        try:
            task.sample_problems(largest, derive_seed(config.seed, "size-check"), exclude)
            available = largest
        except TooFewProblems as err:
            available = err.available
        short = [(name, count) for name, count in asks if count > available]
        if available == 0:
            limits.append("no training problems are left beside the held-out split"
                          + ("; lower eval.problems or widen the task" if shares_pool else "; use a larger file"))
        elif short:
            fixed = [(name, count) for name, count in short if name == "data.fixed_problems"]
            if fixed:
                limits.append(f"data.fixed_problems={fixed[0][1]}: the task has only {available} training problems; "
                              f"set data.fixed_problems={available} or fewer")
            repeated = [(name, count) for name, count in short if name != "data.fixed_problems"]
            if repeated and config.data.reuse_problems:
                warnings.append(f"the task has only {available} training problems: "
                                + ", ".join(f"{name}={count}" for name, count in repeated)
                                + " repeats them within a batch (data.reuse_problems; as epochs over a small file)")
            elif repeated:
                limits.append(f"the task has only {available} training problems, fewer than "
                              + ", ".join(f"{name}={count}" for name, count in repeated)
                              + f"; lower them to {available} or set data.reuse_problems=true")
    if limits:
        where = source_of(source, "eval.problems", "sft.batch_size", "rl.prompts_per_step", "data", "task")
        raise ConfigError(f"{where}: task {task.name!r} cannot meet: " + "; ".join(limits))
    if heldout:
        half_width = 1.96 * (0.25 / len(heldout)) ** 0.5
        if half_width > HELDOUT_HALF_WIDTH_WARNING:
            warnings.append(f"eval.problems={len(heldout)}: held-out accuracy on {len(heldout)} problems has a 95% "
                            f"interval of about +-{100 * half_width:.0f} points; differences smaller than that are noise")
    return heldout, warnings


def check_names(config: RunConfig, source: str = "config", task: Task | None = None,
                later_stage: bool = False) -> list[str]:
    """Fail before any work (and before a run directory exists) when a config names a component
    that is not registered, or its task's data cannot be read, or a sampled prompt (with
    rollout.max_new_tokens) or SFT demonstration does not fit the model's context or holds a
    character its tokenizer cannot encode. Cheap: one held-out split, one step of each stage.
    A chain of stages is checked stage by stage, each with its own settings (``later_stage``:
    one that starts from the stage before it, not from ``model``).
    Returns warnings (small data) for the caller to show once the run has started."""
    if config.is_chain():
        warnings: list[str] = []
        for index, kind in enumerate(config.stage_kinds()):
            stage_source = f"{source_of(source, 'stages')}: stages[{index}] ({kind})"
            for warning in check_names(config.stage_config(index), stage_source, task, later_stage=index > 0):
                if warning not in warnings:
                    warnings.append(warning)
        return warnings
    checks = [("task.name", TASKS, [config.task.name] if task is None else []),
              ("reward.components", REWARDS, list(config.reward.components)),
              ("reward.shaping", REWARD_SHAPERS, [step.name for step in config.reward.shaping]),
              ("rollout.engine", ROLLOUT_ENGINES, [config.rollout.engine]),
              ("algorithm.advantage", ADVANTAGES, [config.algorithm.advantage]),
              ("algorithm.loss", POLICY_LOSSES, [config.algorithm.loss]),
              ("algorithm.loss_agg", LOSS_AGGREGATIONS, [config.algorithm.loss_agg]),
              ("algorithm.kl.estimator", KL_ESTIMATORS, [config.algorithm.kl.estimator]),
              ("teacher.estimator", KL_ESTIMATORS, [config.teacher.estimator] if config.teacher.coef > 0 else [])]
    for field_name, registry, names in checks:
        for name in names:
            try:
                registry.get(name)
            except KeyError as err:
                raise ConfigError(f"{source_of(source, field_name)}: {field_name}: {err.args[0]}") from None
    check_staleness(config, source)
    task = build_task(config, source) if task is None else task
    try:
        build_environment(config.rollout.environment, task, lambda problems, texts: [], source)
    except KeyError as err:
        raise ConfigError(f"{source_of(source, 'rollout.environment')}: rollout.environment.name: {err.args[0]}") from None
    try:
        check_reward_params(config.reward.components, config.reward.params)
    except TypeError as err:
        raise ConfigError(f"{source_of(source, 'reward.params', 'reward.components')}: reward.params: {err}") from None
    if config.reward.components.get("rlcr") and not config.task.stated_confidence:
        raise ConfigError(f"{source_of(source, 'reward.components', 'task.stated_confidence')}: reward.components.rlcr "
                          "rewards a stated confidence: set task.stated_confidence: true (the rlcr recipe does)")
    try:
        check_shaper_params([(step.name, step.params) for step in config.reward.shaping],
                            config.rollout.max_new_tokens)
    except ValueError as err:
        raise ConfigError(f"{source_of(source, 'reward.shaping')}: reward.shaping{err}") from None
    check_backends(config.logging.backends, source)
    try:
        check_precision(resolve_device(config.device), config.model.dtype, config.model.attn_implementation)
    except DeviceError as err:
        raise ConfigError(f"{source_of(source, 'device', 'model.dtype', 'model.attn_implementation')}: {err}") from None
    if config.model.path is None and "sft" not in config.stages and not later_stage:
        raise ConfigError(f"{source_of(source, 'stages')}: stages: a freshly built tiny model needs the 'sft' stage "
                          "(or set model.path to a trained checkpoint)")
    # The data, drawn as the run will draw it: the held-out split, RL step 0's prompts and
    # SFT step 0's demonstrations, rendered with the run's tokenizer (a data file is read
    # here, so a missing or malformed one fails before the run directory exists).
    from rlvr.models.prompt_fit import check_prompts_fit, checkpoint_head_dim

    try:
        tokenizer, positions = run_tokenizer(config)
    except TokenizerSettingError as err:
        raise ConfigError(f"{source_of(source, *err.fields)}: {err}") from None
    if "rl" in config.stages:
        check_teacher(config, tokenizer, source)
        check_relift(config, task, source)
        check_process_rewards(config, task, source)
    check_lora(config, source)
    data = config.data
    if data.max_prompt_length is not None and positions is not None \
            and data.max_prompt_length + config.rollout.max_new_tokens > positions:
        raise ConfigError(f"{source_of(source, 'data.max_prompt_length', 'rollout.max_new_tokens')}: "
                          f"data.max_prompt_length={data.max_prompt_length} + rollout.max_new_tokens="
                          f"{config.rollout.max_new_tokens} > the model's {positions} positions: a prompt of the "
                          "allowed length would leave no room for its response; lower one of them")
    try:
        dropped = drop_overlong(task, config, tokenizer)
    except ValueError as err:
        raise ConfigError(f"{source_of(source, 'data.overlong_prompts', 'data.max_prompt_length')}: {err}") from None
    if config.model.path is None:
        _check_tiny_model_fits_memory(config, len(tokenizer), source)
    head_dim = (config.model.hidden_size // config.model.num_heads if config.model.path is None
                else checkpoint_head_dim(config.model.path))
    try:
        ROLLOUT_ENGINES.get(config.rollout.engine).check(config, head_dim)
    except ValueError as err:
        raise ConfigError(f"{source_of(source, 'rollout')}: {err}") from None
    try:
        heldout, warnings = check_data_sizes(task, config, source)
        warnings = ([dropped] if dropped else []) + warnings
        check_prompts_fit(tokenizer, positions, config.rollout.max_new_tokens, heldout, "held-out problems",
                          data=data)
        for name, _, problems in build_eval_tasks(config, source, tokenizer):
            check_prompts_fit(tokenizer, positions, config.rollout.max_new_tokens, problems,
                              f"evaluation set {name!r}", data=data)
        exclude = frozenset(p.id for p in heldout)
        sampler = PromptSampler(task, config, exclude)
        if "rl" in config.stages:
            check_prompts_fit(tokenizer, positions, config.rollout.max_new_tokens,
                              sampler.draw(config.rl.prompts_per_step, 0, 0), "RL training problems", data=data)
        if "sft" in config.stages:
            problems, demos = sft_demonstrations(task, config, 0, exclude)
            check_prompts_fit(tokenizer, positions, config.rollout.max_new_tokens, problems, "SFT problems", demos,
                              data=data)
    except NotImplementedError as err:
        raise ConfigError(f"{source_of(source, 'stages', 'task')}: stages: the 'sft' stage needs demonstrations: "
                          f"{err}") from None
    except ConfigError:
        raise
    except (ValueError, OSError) as err:  # the message names the file and record, or the fields
        raise ConfigError(f"{source}: {err}") from None
    return warnings


def check_lora(config: RunConfig, source: str = "config") -> None:
    """``model.lora``: peft installed, an RL stage, and nothing it does not combine with yet."""
    if not config.model.lora.r:
        return
    where = f"{source_of(source, 'model.lora')}: model.lora.r={config.model.lora.r}"
    try:
        import peft  # noqa: F401,F811
    except ImportError:
        raise ConfigError(f"{where}: LoRA needs peft, which is not installed: pip install -e \".[lora]\"") from None
    kl = config.algorithm.kl
    for bad, why in (("rl" not in config.stages, "the adapters train in the RL stage, and stages has no rl"),
                     (config.distributed.strategy == "fsdp", "distributed.strategy=fsdp does not shard adapters "
                      "yet; use replicate (the adapters are small)"),
                     (bool(kl.reset_every or kl.reset_threshold), "algorithm.kl.reset_* would copy the policy into "
                      "the reference, which with LoRA is the base itself (adapters off)")):
        if bad:
            raise ConfigError(f"{where}: {why}")


def check_process_rewards(config: RunConfig, task: Task, source: str = "config") -> None:
    """The ``process`` component and ``reward.step_rewards`` read the task's step checker, on
    single-turn text in the task's own answer layout."""
    uses = [name for name, on in (("reward.components.process", "process" in config.reward.components),
                                  ("reward.step_rewards.coef", bool(config.reward.step_rewards.coef))) if on]
    if not uses:
        return
    where = f"{source_of(source, 'reward')}: {uses[0]}"
    if config.rollout.environment.name:
        raise ConfigError(f"{where}: process rewards score single-turn responses; not with "
                          f"rollout.environment ({config.rollout.environment.name}) yet")
    settings = config.reward.step_rewards
    if settings.scorer != "task":
        check_step_scorer(settings, config.reward.params.get("judge", {}), source)
        return
    if config.task.answer_layout != "plain":
        raise ConfigError(f"{where}: process rewards read the task's own worked solution; not with "
                          f"task.answer_layout={config.task.answer_layout} yet")
    try:
        problem = task.sample_problems(1, config.seed, split="train")[0]
        task.step_checks(problem, "")
    except NotImplementedError as err:
        raise ConfigError(f"{where}: {err} (the addition task has one)") from None
    except Exception:  # noqa: BLE001 (too little data and the like: the data checks say it)
        return


def check_step_scorer(settings: Any, judge_params: dict[str, Any], source: str = "config") -> None:
    """A learned step scorer (``reward.step_rewards.scorer``) has a checkpoint that loads and
    a delimiter to split the response at."""
    where = f"{source_of(source, 'reward.step_rewards')}: reward.step_rewards"
    if not settings.delimiter:
        raise ConfigError(f"{where}.delimiter must not be empty: the response is split into steps at it")
    if settings.path is None:
        raise ConfigError(f"{where}.path is required with scorer {settings.scorer}: the "
                          f"{'process reward model' if settings.scorer == 'reward_model' else 'judge'}'s checkpoint")
    try:
        if settings.scorer == "reward_model":
            from rlvr.rewards.learned import load_reward_model

            load_reward_model(settings.path)
        else:
            from rlvr.rewards.judge import check_judge

            check_judge({**judge_params, "path": settings.path})
    except ValueError as err:
        raise ConfigError(f"{where}.path: {err}") from None


def check_relift(config: RunConfig, task: Task, source: str = "config") -> None:
    """``rl.relift.buffer`` needs demonstrations from the task, as single-turn text."""
    if not config.rl.relift.buffer:
        return
    where = f"{source_of(source, 'rl.relift.buffer')}: rl.relift.buffer={config.rl.relift.buffer}"
    if config.rollout.environment.name:
        raise ConfigError(f"{where}: ReLIFT's fine-tuning on demonstrations is single-turn; it does not run with a "
                          f"multi-turn rollout.environment ({config.rollout.environment.name}) yet")
    import random

    try:
        problem = task.sample_problems(1, config.seed, split="train")[0]
        task.demonstration(problem, random.Random(0))
    except NotImplementedError as err:
        raise ConfigError(f"{where}: ReLIFT fine-tunes on the task's demonstrations: {err}") from None
    except Exception:  # noqa: BLE001 (too little data and the like: the data checks below say it)
        return


def check_staleness(config: RunConfig, source: str = "config") -> None:
    """``rl.max_staleness > 0`` samples from older weights while the trainer moves on: only an
    engine that holds its own copy of the weights can (vllm, colocated or server), not one that
    reads the trainer's module (the own kv_cache engine)."""
    if config.rl.max_staleness > 0 and not getattr(ROLLOUT_ENGINES.get(config.rollout.engine), "owns_weights", False):
        raise ConfigError(f"{source_of(source, 'rl.max_staleness', 'rollout.engine')}: rl.max_staleness="
                          f"{config.rl.max_staleness} needs a rollout engine that holds its own weights "
                          f"(rollout.engine: vllm); rollout.engine: {config.rollout.engine} samples from the "
                          "trainer's module, so it cannot sample an older version while the trainer trains")


def _check_tiny_model_fits_memory(config: RunConfig, vocab: int, source: str) -> None:
    """A tiny model too large to train in this machine's memory is a config error, not an
    allocator crash after the run dir exists. Training holds about 16 bytes per fp32
    parameter (weights, gradients, Adam's two moments), plus 4 for a KL reference copy."""
    m = config.model
    params = 2 * vocab * m.hidden_size + m.num_layers * (4 * m.hidden_size ** 2 + 3 * m.hidden_size * m.intermediate_size)
    need = params * (16 + (4 if config.algorithm.kl.coef > 0 else 0))
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(f"{source}: model: the tiny model would have {params / 1e9:.1f}B parameters and need about "
                          f"{need / 2**30:.0f} GiB to train, more than this machine's {have / 2**30:.0f} GiB; "
                          "lower model.hidden_size, num_layers or intermediate_size")


def run_pipeline(config: RunConfig, run: RunDir, task: Task | None = None,
                 callbacks: Sequence[Any] = (), world: World = SINGLE) -> dict[str, Any]:
    """Run every stage of ``config`` not yet completed in ``run``; returns the summary.
    The run dir is locked for the duration (a second process gets a ``RunDirError``).
    ``task``: a task object instead of ``config.task``; ``callbacks``: ``rlvr.api`` callbacks,
    told of every log record after the ``logging.backends`` mirror. ``world``: the trainer
    ranks (``rlvr.distributed``); on ranks other than 0 ``run`` is a ``FollowerRunDir``."""
    run.lock()
    try:
        threads_before = torch.get_num_threads()
        # the machine's cores shared by the ranks on it (oversubscribed OpenMP threads crawl)
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world.local_size))
        mirror = Mirror(config.logging.backends if world.is_main else [], run.path, asdict(config),
                        config.logging.project)
        if callbacks:
            from rlvr.api import _dispatch

            hooks = _dispatch(callbacks)

            def on_append(stream: str, records: list[dict[str, Any]]) -> None:
                mirror(stream, records)
                hooks(stream, records)

            run.on_append = on_append
        else:
            run.on_append = mirror
        try:
            return _run_stages(config, run, task, world)
        finally:
            torch.set_num_threads(threads_before)
            run.on_append = None
            mirror.close()
    finally:
        run.unlock()


def _run_stages(config: RunConfig, run: RunDir, task: Task | None = None, world: World = SINGLE) -> dict[str, Any]:
    config = _with_trained_teacher(config, run, task, world)
    if config.is_chain():
        from rlvr.training.chain import run_chain

        return run_chain(config, run, task, world, _run_stages)
    cacheable = task is None and warmstart_cache.enabled(config)  # a task object has no config to key on
    task = build_task(config) if task is None else task
    tokenizer = run_tokenizer(config)[0] if config.data.overlong_prompts == "drop" else None
    if tokenizer is not None:
        drop_overlong(task, config, tokenizer)  # said by the start-up check
    with contextlib.ExitStack() as stack:
        verifier = stack.enter_context(make_task_verifier(task, config))
        eval_sets = []
        for name, other, problems in build_eval_tasks(config, tokenizer=tokenizer):
            other_verifier = stack.enter_context(make_task_verifier(other, config))
            eval_sets.append(EvalTarget(name, other, problems, other_verifier, build_environment(
                config.rollout.environment, other, other_verifier.score_many)))
        return _run_stages_with(config, run, task, verifier, eval_sets, cacheable, world)


TEACHER_DIR = "teacher"


def _with_trained_teacher(config: RunConfig, run: RunDir, task: Task | None, world: World) -> RunConfig:
    """``teacher.sft_steps``: train the run's teacher (SFT on the task's demonstrations, then
    ``teacher.rl_steps`` of RL; the run's model, SFT and RL settings, its own seed) as a run
    directory of its own in ``<run>/teacher``, resumed if interrupted and reused once done;
    the config the student runs with names it as ``teacher.path``."""
    t = config.teacher
    if t.path or not t.sft_steps or "rl" not in config.stage_kinds():
        return config
    path = run.path / TEACHER_DIR
    stages: list[Any] = ["sft", "rl"] if t.rl_steps else ["sft"]
    teacher_config = replace(config, stages=stages, seed=derive_seed(config.seed, "teacher") % 2**31,
                             sft=replace(config.sft, steps=t.sft_steps),
                             rl=replace(config.rl, steps=max(t.rl_steps, 1)), teacher=type(t)())
    if not world.is_main:
        sub: RunDir = FollowerRunDir(path)
    elif (path / "config.yaml").is_file():
        sub = RunDir.open(path)
    else:
        sub = RunDir.create(teacher_config, path)
    done = None
    if world.is_main:
        state = sub.recover()
        done = set(stages) <= set(state["completed_stages"]) and ("final" if t.rl_steps else "warmstart") in state["evals"]
    done = world.broadcast_object(done, "the teacher's state")
    if not done:
        if world.is_main:
            print(f"teacher: SFT for {t.sft_steps} steps" + (f", then RL for {t.rl_steps}" if t.rl_steps else "")
                  + f", in {path}", flush=True)
        summary = run_pipeline(teacher_config, sub, task=task, world=world)
        if world.is_main:
            print(f"teacher: held-out accuracy {100 * summary['final_accuracy']:.1f}%", flush=True)
    return replace(config, teacher=replace(t, path=str(path), sft_steps=0, rl_steps=0))


@dataclass
class EvalTarget:
    """One ``eval.sets`` entry, ready: its task, held-out problems, verifier and environment."""

    name: str
    task: Task
    problems: list[Problem]
    verifier: Verifier
    environment: Any


def make_task_verifier(task: Task, config: RunConfig) -> Verifier:
    v = config.verifier
    isolate = {"auto": None, "always": True, "never": False}[v.isolate]
    return make_verifier(task, v.workers, v.timeout_s, v.memory_limit_mb, isolate, v.max_timeout_batches)


def _run_stages_with(config: RunConfig, run: RunDir, task: Task, verifier: Verifier,
                     eval_sets: Sequence[EvalTarget] = (), cacheable: bool = False,
                     world: World = SINGLE) -> dict[str, Any]:
    """The stages still to do. Every stage ends in a saved state (a resume point) whose model
    is a checkpoint: sft-final, the warm-start evaluation, rl's final, the final evaluation;
    within a stage the resume points are its checkpoints. A periodic evaluation is saved with
    the next checkpoint, so a crash before it drops the evaluation and the resume redoes it."""
    hf_logging.disable_progress_bar()  # per-checkpoint 'Writing model shards' bars drown the run's own
    torch.manual_seed(config.seed)
    state = world.broadcast_object(run.recover() if world.is_main else None, "the run's state")
    point = resume_point(state, config)
    if point is not None and world.is_main:
        print(f"resume: continuing {point}", flush=True)
    heldout = task.sample_problems(config.eval.problems, config.eval.seed, split="heldout")
    exclude = frozenset(p.id for p in heldout)
    sft_to_do = "sft" in config.stages and "sft" not in state["completed_stages"]
    if sft_to_do and cacheable and not state.get("checkpoint"):
        if world.is_main:
            entry = warmstart_cache.lookup(config)
            if entry is not None:
                _reuse_warm_start(entry, config, run, state)
        state = world.broadcast_object(state, "the warm start's state")
        sft_to_do = "sft" not in state["completed_stages"]
    model, tokenizer = _starting_model(config, run, state)
    environment = build_environment(config.rollout.environment, task, verifier.score_many)

    if sft_to_do:
        train_sft(model, tokenizer, task, config, run, state, exclude, environment, world)
        if cacheable and world.is_main:
            warmstart_cache.store(config, run.path / state["sft_final"],
                                  [r for r in run.read("metrics.jsonl") if r.get("stage") == "sft"], run.path)
    # Pruning after a stage is redone on every resume: a kill may have come before it.
    run.prune("sft-step", 0)
    # The rollout engine starts from the weights evaluation and RL begin with (after SFT);
    # one that holds its own copy gets every later update pushed (Sampler.load_weights).
    engine = build_engine(config, model, tokenizer, world)
    sampler = Sampler(engine, model, tokenizer, environment, autocast=lambda: forward_autocast(config),
                      verify_every=config.rollout.vllm.verify_every, max_prompt_tokens=config.data.prompt_keep_last)
    try:
        def evaluate_on(target_task: Task, problems: list[Problem], target_verifier: Verifier,
                        target_environment: Any, per_problem: list | None = None) -> dict[str, Any]:
            with forward_autocast(config):
                return evaluate(model, tokenizer, target_task, problems, engine, verifier=target_verifier,
                                samples=config.eval.samples, environment=target_environment,
                                ks=config.eval.ks or None, temperature=config.eval.temperature,
                                max_new_tokens=config.rollout.max_new_tokens, batch_size=config.eval.batch_size,
                                seed=config.eval.seed, max_prompt_tokens=config.data.prompt_keep_last,
                                per_problem_out=per_problem)

        def run_eval(phase: str, step: int = 0) -> dict[str, Any]:
            if not world.is_main:  # rank 0 evaluates; the others go on to the next collective
                return {}
            per_problem: list = []
            result = evaluate_on(task, heldout, verifier, environment, per_problem)
            # each problem's outcome, for paired comparisons (rlvr compare); before the record,
            # whose presence marks the evaluation done
            run.append("eval_problems.jsonl", {"phase": phase, "step": step, **problem_outcomes(per_problem)})
            record = {"stage": "eval", "phase": phase, "step": step, **result}
            if eval_sets:  # the other tasks, in the same record: one resume point per evaluation
                record["sets"] = {target.name: evaluate_on(target.task, target.problems, target.verifier,
                                                           target.environment) for target in eval_sets}
            run.append("eval.jsonl", record)
            state["evals"][phase] = record
            return record

        if "warmstart" not in state["evals"]:
            run_eval("warmstart")
            run.save_state(state)
        if "rl" in config.stages and "rl" not in state["completed_stages"]:
            train_rl(model, tokenizer, Judge(task, verifier, tokenizer, config, model), sampler, config, run, state,
                     exclude, evaluate_fn=run_eval, world=world)
        if "rl" in config.stages:
            run.prune("rl-step", config.checkpoint.keep_last)
        if "rl" in config.stages and "final" not in state["evals"]:
            run_eval("final", state.get("rl_last_step", config.rl.steps))
    finally:
        sampler.close()
    if not world.is_main:
        return world.broadcast_object(None, "the run's summary")
    run.save_state(state)  # the final evaluation, and the wall time up to here
    summary = write_summary(run, state)
    plot_run(run.read("metrics.jsonl"), run.read("eval.jsonl"), run.plots)
    return world.broadcast_object(summary, "the run's summary")


def build_engine(config: RunConfig, model: Any, tokenizer: Any, world: World = SINGLE) -> Any:
    """The run's rollout engine. An engine that trainer ranks share (vLLM servers) is built
    by rank 0 alone; the other ranks connect to the address it broadcasts (or raise the
    error it broadcasts, so that no rank waits for engines that never start)."""
    engine_cls = ROLLOUT_ENGINES.get(config.rollout.engine)
    shared = getattr(engine_cls, "shared_by_ranks", None)
    if not world.distributed or shared is None or not shared(config):
        return engine_cls.build(config, model, tokenizer)
    if world.is_main:
        try:
            engine = engine_cls.build(config, model, tokenizer)
        except BaseException as err:
            world.broadcast_object({"error": f"{type(err).__name__}: {err}"}, "the rollout engines' address")
            raise
        world.broadcast_object({"address": engine.address()}, "the rollout engines' address")
        return engine
    answer = world.broadcast_object(None, "the rollout engines' address")
    if "error" in answer:
        raise RuntimeError(f"trainer rank 0 could not start the rollout engines: {answer['error']}")
    return engine_cls.connect(config, answer["address"])


def _reuse_warm_start(entry: Path, config: RunConfig, run: RunDir, state: dict[str, Any]) -> None:
    """The cached SFT stage at ``entry`` becomes this run's: its metrics records, then a
    ``checkpoints/sft-final`` written by this run (its own state and manifest)."""
    model, tokenizer = load_model_and_tokenizer(entry / "model", attn_implementation=config.model.attn_implementation)
    records = [json.loads(line) for line in (entry / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if records:
        run.append("metrics.jsonl", records)
    state.update(stage=None, checkpoint=None, sft_final="checkpoints/sft-final", sft_cache=str(entry))
    state["completed_stages"].append("sft")
    run.save_model("sft-final", model, tokenizer, state=state)
    run.save_state(state)
    print(f"SFT: reused the warm start cached at {entry} (same config, data, seed and code; sft.cache: false "
          "trains it again)", flush=True)


def _starting_model(config: RunConfig, run: RunDir, state: dict[str, Any]):
    """Where this invocation's model comes from: the RL result once RL is done, the latest
    checkpoint of an interrupted stage, the SFT result (``model_source``), else the
    configured checkpoint or a freshly built tiny model. Float32 master weights on
    ``config.device`` (``rlvr.training.precision``)."""
    m = config.model
    source = model_source(state)
    if m.lora.r and state.get("stage") == "rl" and state.get("checkpoint"):
        # an interrupted LoRA RL stage: its checkpoints hold merged weights; the adapters (in the
        # trainer state) go back onto the stage's starting model, the frozen base
        source = state.get("sft_final")
    if source or m.path:
        model, tokenizer = load_model_and_tokenizer(run.path / source if source else m.path,
                                                    attn_implementation=m.attn_implementation)
    else:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, architecture=m.architecture, hidden_size=m.hidden_size,
                                 num_layers=m.num_layers, num_heads=m.num_heads,
                                 intermediate_size=m.intermediate_size,
                                 max_position_embeddings=m.max_position_embeddings, seed=config.seed,
                                 attn_implementation=m.attn_implementation)
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(resolve_device(config.device)), apply_prompt_settings(tokenizer, config)


def write_summary(run: RunDir, state: dict[str, Any]) -> dict[str, Any]:
    evals = state["evals"]
    warm = evals.get("warmstart", {})
    final = evals.get("final", warm)
    final_checkpoint = state.get("final_checkpoint") or state.get("sft_final")
    summary: dict[str, Any] = {
        "warmstart_accuracy": warm.get("greedy_accuracy"),
        "final_accuracy": final.get("greedy_accuracy"),
        "accuracy_gain_points": 100 * (final.get("greedy_accuracy", 0) - warm.get("greedy_accuracy", 0)),
        "wall_seconds": round(state.get("wall_seconds", 0.0), 1),
        "final_checkpoint": str((run.path / final_checkpoint).resolve()) if final_checkpoint else None,
        "run_dir": str(run.path),
    }
    summary["final_accuracy_ci95"] = final.get("greedy_accuracy_ci95")
    if final.get("sets"):
        summary["eval_sets"] = {name: {"warmstart_accuracy": warm.get("sets", {}).get(name, {}).get("greedy_accuracy"),
                                       "final_accuracy": result.get("greedy_accuracy"),
                                       "final_accuracy_ci95": result.get("greedy_accuracy_ci95")}
                                for name, result in final["sets"].items()}
    for key in sorted(k for k in final if PASS_AT_K.fullmatch(k)):
        summary[f"warmstart_{key}"] = warm.get(key)
        summary[f"final_{key}"] = final.get(key)
    atomic_write(run.path / "summary.json", json.dumps(summary, indent=2))
    return summary


def new_run_dir(config: RunConfig, output_dir: str | None, recipe: str) -> RunDir:
    """Create the run directory: ``output_dir`` if given, else ``<config.output_dir>/<run_name>``."""
    if output_dir:
        path = Path(output_dir)
    else:
        name = config.run_name or f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(config.output_dir) / name
    return RunDir.create(config, path)
