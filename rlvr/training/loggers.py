"""Optional metric sinks next to the run directory's JSONL files: TensorBoard, Weights &
Biases, MLflow (``logging.backends``; each needs its extra, e.g. ``pip install rlvr[wandb]``).

The run directory stays the record; a backend only mirrors the numeric fields of what the
run appends to ``metrics.jsonl`` (tags ``sft/<namespace>/<key>``, ``rl/<namespace>/<key>`` with
namespaces ``rollout``, ``loss`` and ``timing`` (``metric_tag``), x = the stage's step) and
``eval.jsonl`` (``eval/<key>``, x = RL step). Every backend writes under the run directory
and needs no network: TensorBoard event files in ``tensorboard/``, W&B in offline mode in
``wandb/`` (``WANDB_MODE=online`` in the environment syncs instead), MLflow's local file
store in ``mlruns/`` (``mlflow ui --backend-store-uri RUN_DIR/mlruns``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from rlvr.typed_yaml import ConfigError

STREAMS = ("metrics.jsonl", "eval.jsonl")


class MetricsLogger(Protocol):
    def log(self, tag_values: dict[str, float], step: int, stage: str) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a record (bools as 0/1), without its ``step``."""
    out = {}
    for key, value in record.items():
        if key == "step" or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class TensorBoardLogger:
    def __init__(self, run_path: Path, config: dict[str, Any], project: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(run_path / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(config).items()))

    def log(self, tag_values: dict[str, float], step: int, stage: str) -> None:
        for tag, value in tag_values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_path: Path, config: dict[str, Any], project: str) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_path.name, dir=str(run_path), config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")
        for stage in ("sft", "rl", "eval"):
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            for space in ("rollout", "loss", "timing"):
                self.run.define_metric(f"{stage}/{space}/*", step_metric=f"{stage}/step")

    def log(self, tag_values: dict[str, float], step: int, stage: str) -> None:
        self.run.log({**tag_values, f"{stage}/step": step})

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    # MLflow metric names allow letters, digits and _-. /: 'pass@4' is logged as 'pass_at_4'.
    _BAD = re.compile(r"[^\w\-. /]")

    def __init__(self, run_path: Path, config: dict[str, Any], project: str) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # recent MLflow asks before using a file store
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=(run_path / "mlruns").resolve().as_uri())
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment_id, run_name=run_path.name).info.run_id
        for key, value in flatten(config).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, tag_values: dict[str, float], step: int, stage: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(self._BAD.sub("_", tag.replace("@", "_at_")), value, now, step)
                   for tag, value in tag_values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS: dict[str, Callable[[Path, dict[str, Any], str], MetricsLogger]] = {
    "tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MLflowLogger}


MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_backends(backends: list[str], source: str = "config") -> None:
    """Fail before any work when a configured backend's package is not installed."""
    for name in backends:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise ConfigError(f"{source}: logging.backends names {name!r} but the {MODULES[name]!r} package is "
                              f"not installed; pip install 'rlvr[{name}]' or remove it from logging.backends")


TIMING = {"step_time", "tokens_per_s", "rl_seconds_total", "gpu_memory_peak_gib", "overlap_frac"}
ROLLOUT = {"reward_mean", "reward_std", "accuracy", "response_length", "truncated_frac", "zero_variance_groups",
           "verifier_timeout_frac", "filter_kept_frac", "rollout_rounds", "samples_generated",
           "samples_generated_total", "turns", "tool_calls", "tool_use_frac", "tool_error_rate", "void_turn_frac",
           "violation_frac", "observation_token_frac", "logprob_gap_mean", "logprob_gap_max", "prompts_truncated"}


def metric_tag(stage: str, key: str) -> str:
    """A metric's dashboard tag: ``<stage>/<namespace>/<key>`` with namespaces ``rollout/``
    (samples, rewards, the engine's log-prob gap), ``timing/`` (seconds, throughput, memory)
    and ``loss/`` (the update: losses, gradients, KL, clipping, coefficients), so dashboards
    group them; evaluation metrics are ``eval/<key>``. The JSONL files keep the plain keys."""
    if stage == "eval":
        return f"eval/{key}"
    if key in TIMING or key.startswith("time_"):
        space = "timing"
    elif key in ROLLOUT or key.startswith(("reward/", "accuracy/", "curriculum", "pass_rate", "stale")):
        space = "rollout"
    else:
        space = "loss"
    return f"{stage}/{space}/{key}"


class Mirror:
    """Forwards the records a run appends to its JSONL logs to every configured backend."""

    def __init__(self, backends: list[str], run_path: Path, config: dict[str, Any], project: str = "rlvr") -> None:
        self.loggers: list[MetricsLogger] = []
        for name in backends:
            self.loggers.append(BACKENDS[name](Path(run_path), config, project))

    def __call__(self, stream: str, records: list[dict[str, Any]]) -> None:
        if stream not in STREAMS:
            return
        for record in records:
            stage = "eval" if stream == "eval.jsonl" else str(record.get("stage", "train"))
            values = {metric_tag(stage, key): value for key, value in scalars(record).items()}
            for logger in self.loggers:
                logger.log(values, int(record.get("step", 0)), stage)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []
