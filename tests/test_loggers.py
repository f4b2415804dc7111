"""logging.backends: what the run appends to metrics.jsonl / eval.jsonl reaches each backend.
TensorBoard, W&B and MLflow are optional extras: their tests skip when not installed."""

from __future__ import annotations

import pytest

from rlvr.config import load_config
from rlvr.training import loggers
from rlvr.training.loggers import Mirror, check_backends
from rlvr.training.run_dir import RunDir
from rlvr.typed_yaml import ConfigError

RECORDS = [("metrics.jsonl", {"stage": "sft", "step": 1, "loss": 2.5, "lr": 1e-3}),
           ("metrics.jsonl", {"stage": "rl", "step": 1, "reward_mean": 0.25, "clip_frac": 0.1, "note": "text",
                              "bad": float("nan")}),
           ("metrics.jsonl", {"stage": "rl", "step": 2, "reward_mean": 0.5, "clip_frac": 0.0}),
           ("samples.jsonl", {"stage": "rl", "step": 2, "reward": 1.0}),
           ("eval.jsonl", {"stage": "eval", "phase": "final", "step": 2, "greedy_accuracy": 0.75, "pass@4": 0.9,
                           "pass@4_ci95": [0.8, 1.0]})]


class Recorder:
    def __init__(self, run_path, config, project):
        self.logged, self.closed = [], False

    def log(self, tag_values, step, stage):
        self.logged.append((stage, step, tag_values))

    def close(self):
        self.closed = True


def _replay(run: RunDir) -> None:
    for name, record in RECORDS:
        run.append(name, record)


def test_mirror_forwards_numeric_fields_of_metrics_and_evals(tmp_path, monkeypatch):
    monkeypatch.setitem(loggers.BACKENDS, "recorder", Recorder)
    run = RunDir(tmp_path)
    mirror = Mirror(["recorder"], tmp_path, {"seed": 0})
    run.on_append = mirror
    _replay(run)
    (recorder,) = mirror.loggers
    assert recorder.logged == [
        ("sft", 1, {"sft/loss/loss": 2.5, "sft/loss/lr": 1e-3}),  # metric namespaces: rollout/, loss/, timing/
        ("rl", 1, {"rl/rollout/reward_mean": 0.25, "rl/loss/clip_frac": 0.1}),  # text and NaN are left out
        ("rl", 2, {"rl/rollout/reward_mean": 0.5, "rl/loss/clip_frac": 0.0}),
        ("eval", 2, {"eval/greedy_accuracy": 0.75, "eval/pass@4": 0.9}),  # samples.jsonl is not mirrored
    ]
    mirror.close()
    assert recorder.closed and len(run.read("metrics.jsonl")) == 3  # the JSONL files are written as before


def test_missing_backend_package_fails_before_any_work(monkeypatch):
    assert load_config(None, ["logging.backends=[tensorboard, mlflow]"]).logging.backends == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="logging.backends"):
        load_config(None, ["logging.backends=[neptune]"])
    monkeypatch.setitem(loggers.MODULES, "wandb", "rlvr_no_such_package")
    with pytest.raises(ConfigError, match="pip install 'rlvr\\[wandb\\]'"):
        check_backends(["wandb"], "recipe.yaml")
    check_backends([])  # the default: nothing to check


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="optional extra: pip install 'rlvr[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path)
    run.on_append = mirror = Mirror(["tensorboard"], tmp_path, {"rl": {"steps": 2}})
    _replay(run)
    mirror.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("rl/rollout/reward_mean")] == [(1, 0.25), (2, 0.5)]
    assert events.Scalars("eval/pass@4")[0].value == pytest.approx(0.9)


def test_mlflow_local_file_store(tmp_path):
    pytest.importorskip("mlflow", reason="optional extra: pip install 'rlvr[mlflow]'")
    run = RunDir(tmp_path)
    run.on_append = mirror = Mirror(["mlflow"], tmp_path, {"rl": {"steps": 2}}, project="tests")
    _replay(run)
    mirror.close()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    history = client.get_metric_history(found.info.run_id, "rl/rollout/reward_mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (2, 0.5)]
    assert client.get_metric_history(found.info.run_id, "eval/pass_at_4")[0].value == pytest.approx(0.9)
    assert found.data.params["rl.steps"] == "2"


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="optional extra: pip install 'rlvr[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path)
    run.on_append = mirror = Mirror(["wandb"], tmp_path, {"rl": {"steps": 2}}, project="tests")
    _replay(run)
    mirror.close()
    offline = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
