"""The Python API: ``rlvr.train(...)`` from a script or a notebook, with the typed config, the
same checks and the same run directory as ``rlvr train`` (the command line is a thin layer
over this function).

    import rlvr

    result = rlvr.train("dapo", overrides=["rl.steps=20"], output_dir="runs/dapo")
    result.final_accuracy, result.run_dir

TRL users bring their data and reward functions as they would to ``GRPOTrainer``:

    def accuracy(completions, solution, **kwargs):      # TRL's convention, one call per batch
        return [float(c[-1]["content"].strip().endswith(s)) for c, s in zip(completions, solution)]

    rlvr.train(overrides=["model.path=Qwen/Qwen2.5-0.5B-Instruct", "stages=[rl]"],
               train_dataset=dataset, rewards=[accuracy])

``train_dataset`` (a ``datasets.Dataset`` or a list of dicts with a ``prompt`` column; see
``rlvr.tasks.prompts``) is written to the run directory (``data/train.jsonl``) and becomes the
run's ``prompts`` task, so ``rlvr train --resume RUN_DIR`` continues the run from the shell.
Reward functions passed as objects are named by their import path (``module:function``) when
they have one; a function defined in a notebook is registered under its ``__name__`` for this
process (resuming such a run takes the same ``rewards=`` again, through ``train(resume=...)``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rlvr.config import RunConfig, TaskConfig, load_config, save_config
from rlvr.typed_yaml import ConfigError, ConfigSource, apply_overrides, from_dict, to_dict


class Callback:
    """Hooks a run calls as it writes its logs; override the ones you need. An exception
    raised here stops the run (it resumes from its last checkpoint, as after Ctrl-C)."""

    def on_log(self, record: dict[str, Any]) -> None:
        """Every metrics record (one per SFT log interval and per RL step: metrics.jsonl)."""

    def on_evaluate(self, record: dict[str, Any]) -> None:
        """Every held-out evaluation (eval.jsonl): warm start, periodic, final."""

    def on_samples(self, records: list[dict[str, Any]]) -> None:
        """The samples an RL step logs (samples.jsonl): whole GRPO groups with rewards and advantages."""


@dataclass
class TrainResult:
    """What a run produced: its directory, ``summary.json`` and the resolved config."""

    run_dir: Path
    config: RunConfig
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")

    @property
    def warmstart_accuracy(self) -> float | None:
        return self.summary.get("warmstart_accuracy")

    @property
    def final_checkpoint(self) -> Path | None:
        path = self.summary.get("final_checkpoint")
        return Path(path) if path else None


def _dispatch(callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]]) -> Callable[[str, list], None]:
    """``RunDir.on_append`` for the callbacks: a ``Callback``'s hooks by log, a plain function
    gets every metrics record (a logger)."""
    def on_append(stream: str, records: list[dict[str, Any]]) -> None:
        for callback in callbacks:
            if isinstance(callback, Callback) or hasattr(callback, "on_log"):
                if stream == "metrics.jsonl":
                    for record in records:
                        callback.on_log(record)
                elif stream == "eval.jsonl" and hasattr(callback, "on_evaluate"):
                    for record in records:
                        callback.on_evaluate(record)
                elif stream == "samples.jsonl" and hasattr(callback, "on_samples"):
                    callback.on_samples(list(records))
            elif stream == "metrics.jsonl":
                for record in records:
                    callback(record)
    return on_append


def _resolve_config(config: RunConfig | str | Path | None, overrides: Sequence[str]) -> tuple[RunConfig, ConfigSource, str]:
    """(config, where it came from, recipe name for the run dir)."""
    if isinstance(config, RunConfig):
        data = apply_overrides(to_dict(config), list(overrides))
        return from_dict(RunConfig, data, source="the RunConfig given"), ConfigSource("the RunConfig given",
                                                                                     overrides), "python"
    from rlvr.recipes import recipe_config

    path, name = recipe_config(None if config is None else str(config))
    return load_config(path, list(overrides)), ConfigSource(path or "default recipe", overrides), name


def reward_name(fn: Callable[..., Any]) -> str:
    """How a config names a reward function object: ``module:qualname`` when that imports back
    to it, else its ``__name__`` registered for this process."""
    from rlvr.rewards import REWARDS

    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname and "." not in qualname:
        spec = f"{module}:{qualname}"
        try:
            if REWARDS.get(spec) is fn:
                return spec
        except KeyError:
            pass
    name = getattr(fn, "__name__", "") or "reward"
    if name == "<lambda>":
        raise ConfigError("a reward function passed to rlvr.train needs a name: define it with def, not lambda")
    REWARDS.register_runtime(name, fn)
    return name


def _dataset_task(config: RunConfig, rows: list[dict[str, Any]], rewards: list[str]) -> tuple[RunConfig, Any]:
    """The ``prompts`` task over ``records``: the config's ``task.params`` when it names that
    task, else defaults; an ``answer``/``solution`` column is the reference answer, else the
    first reward function says which samples are right."""
    from rlvr.tasks.prompts import PromptsTask

    if not rows:
        raise ConfigError("train_dataset is empty")
    params = dict(config.task.params) if config.task.name == "prompts" else {}
    if params.get("answer_field") is None and params.get("correct_reward") is None:
        column = next((c for c in ("answer", "solution") if c in rows[0]), None)
        if column is not None:
            params["answer_field"] = column
        elif rewards:
            params["correct_reward"] = rewards[0]
        else:
            raise ConfigError("train_dataset has no answer or solution column and no reward function was given: "
                              "set task.params.answer_field or pass rewards=[...]")
    try:
        task = PromptsTask.from_records(rows, **{k: v for k, v in params.items() if k != "path"})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"train_dataset: {err}") from None
    return dataclasses.replace(config, task=TaskConfig(name="prompts", params=params)), task


def train(
    config: RunConfig | str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    task: Any = None,
    train_dataset: Iterable[dict[str, Any]] | None = None,
    rewards: Sequence[Callable[..., Any] | str] | None = None,
    reward_weights: Sequence[float] | None = None,
    callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (),
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    stages: Sequence[str] | None = None,
    _on_run_dir: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train as ``rlvr train`` does and return the result.

    ``config``: a ``RunConfig``, a YAML file, a built-in recipe's name (``"dapo"``) or None
    (the default recipe); ``overrides``: dotted ``key=value`` strings applied on top.
    ``task``: a ``Task`` object instead of ``task.name`` (resuming takes the same object again).
    ``train_dataset``: TRL-style records (``rlvr.tasks.prompts``). ``rewards``: reward functions
    or names, either convention (``rlvr.rewards``), replacing ``reward.components``, with
    ``reward_weights`` (default 1 each). ``callbacks``: ``Callback`` objects, or functions that
    get every metrics record. ``resume``: a run directory to continue (its own config).
    Mistakes raise ``ConfigError`` before the run directory exists.
    """
    if resume is not None:
        if config is not None or overrides or output_dir is not None or stages is not None:
            raise ConfigError("resume takes the run's own config.yaml; drop config, overrides, output_dir and stages")
        from rlvr.training.run_dir import RunDir

        run = RunDir.open(resume)
        source = ConfigSource(str(run.path / "config.yaml"))
        resolved, recipe = load_config(source), "resume"
    else:
        resolved, source, recipe = _resolve_config(config, overrides)
        if stages is not None:
            resolved = dataclasses.replace(resolved, stages=list(stages))
    names = [fn if isinstance(fn, str) else reward_name(fn) for fn in rewards or []]
    if names:
        weights = list(reward_weights) if reward_weights is not None else [1.0] * len(names)
        if len(weights) != len(names):
            raise ConfigError(f"reward_weights has {len(weights)} values for {len(names)} reward functions")
        resolved = dataclasses.replace(resolved, reward=dataclasses.replace(
            resolved.reward, components=dict(zip(names, map(float, weights)))))
    records = None
    if train_dataset is not None:
        if task is not None:
            raise ConfigError("give task or train_dataset, not both")
        records = [dict(row) for row in train_dataset]
        resolved, task = _dataset_task(resolved, records, names)
    if task is not None:
        task.name = task.name or type(task).__name__
        task.answer_layout = resolved.task.answer_layout
        task.stated_confidence = resolved.task.stated_confidence

    from rlvr.training.pipeline import check_names, new_run_dir, run_pipeline

    warnings = check_names(resolved, source, task=task)
    world = _join_ranks(resolved)
    if not world.is_main:
        return _follow(world, resolved, task)
    if resume is None:
        try:
            run = new_run_dir(resolved, str(output_dir) if output_dir is not None else None, recipe)
        except Exception as err:
            world.broadcast_object(("error", str(err)), "the run directory")
            raise
        if records is not None:  # the data travels with the run: resumable from the shell
            data = run.path / "data" / "train.jsonl"
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text("".join(json.dumps(row, default=str) + "\n" for row in records))
            resolved = dataclasses.replace(resolved, task=TaskConfig(
                name="prompts", params={**resolved.task.params, "path": str(data.resolve())}))
            save_config(resolved, run.path / "config.yaml")
    world.broadcast_object(("run", str(run.path), resolved), "the run directory")
    if _on_run_dir is not None:
        _on_run_dir(run.path)
    print(f"run dir: {run.path}" + (f" ({world.size} trainer ranks)" if world.distributed else ""))
    print(_layout(resolved, world))
    for warning in warnings if resume is None else []:
        print(f"rlvr: warning: {warning}")  # stdout, with the run's other notes; stderr is for errors
    sys.stdout.flush()
    summary = run_pipeline(_rank_config(resolved, world), run, task=task, callbacks=callbacks, world=world)
    world.close()
    return TrainResult(run_dir=run.path, config=resolved, summary=summary)


def _join_ranks(config: RunConfig):
    """This process's trainer rank: a single process, or one of the ranks torchrun (or
    ``rlvr train --nproc``) started, joined into their process group (gloo on CPU, NCCL on
    GPU, each rank on its own GPU)."""
    from rlvr.distributed import SINGLE, init_world, launched_ranks

    if launched_ranks() <= 1:
        return SINGLE
    return init_world(config.distributed.timeout_s, "cuda" if _on_gpu(config) else "cpu")


def _on_gpu(config: RunConfig) -> bool:
    import torch

    return config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())


def _rank_config(config: RunConfig, world) -> RunConfig:
    """The config a trainer rank runs with: on GPUs each rank takes its local rank's GPU."""
    if world.distributed and _on_gpu(config):
        return dataclasses.replace(config, device=f"cuda:{world.local_rank}")
    return config


def _layout(config: RunConfig, world: Any) -> str:
    """The run's process layout line (``rlvr.distributed.layout``)."""
    from rlvr.distributed.layout import describe_layout
    from rlvr.training.precision import resolve_device

    return describe_layout(config, world, resolve_device(config.device).type)


def _follow(world, config: RunConfig, task: Any) -> TrainResult:
    """A rank other than 0: the run directory (and the config, with any data path) rank 0
    made, then the same stages in step with it, writing nothing."""
    from rlvr.training.pipeline import run_pipeline
    from rlvr.training.run_dir import FollowerRunDir

    message = world.broadcast_object(None, "the run directory")
    if message[0] == "error":
        raise ConfigError(f"rank 0 could not create the run directory: {message[1]}")
    _, path, config = message
    run = FollowerRunDir(path)
    summary = run_pipeline(_rank_config(config, world), run, task=task, world=world)
    world.close()
    return TrainResult(run_dir=run.path, config=config, summary=summary)
