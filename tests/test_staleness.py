"""Bounded-staleness asynchronous RL (``rl.max_staleness``): the stale-sample filter and the
staleness metrics on fabricated batches, the config error for an engine that reads the
trainer's module, and (with vLLM installed; CI runs it in the vllm environment, see .ci/run)
a colocated-vLLM run whose step t learns from samples of version t-1, with its metrics and
an exact resume after a crash."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks.base import Problem
from rlvr.training import rl as rl_module
from rlvr.training.rl import drop_stale, staleness_metrics


def _trajectory(version: int, group: int = 0) -> Trajectory:
    problem = Problem(id=f"p{group}", prompt="1+1=", answer="2")
    return Trajectory(problem=problem, group=group, prompt_ids=[1], response_ids=[2], logprobs=[-0.1],
                      loss_mask=[1], finish_reason="stop", policy_version=version)


def test_samples_older_than_the_bound_are_dropped_and_counted():
    batch = [_trajectory(v, g) for g, v in enumerate([5, 4, 3, 2, 5])]
    kept, dropped = drop_stale(batch, step=5, max_staleness=1)  # the trainer holds version 5
    assert [t.policy_version for t in kept] == [5, 4, 5] and dropped == 2
    kept, dropped = drop_stale(batch, step=5, max_staleness=3)
    assert kept == batch and dropped == 0
    kept, dropped = drop_stale(batch, step=5, max_staleness=0)
    assert [t.group for t in kept] == [0, 4] and dropped == 3


def test_staleness_metrics_are_a_histogram_of_floats():
    batch = [_trajectory(v) for v in [3, 3, 2, 3]]
    metrics = staleness_metrics(batch, step=3, max_staleness=2)
    assert metrics == {"staleness_mean": 0.25, "staleness_max": 1.0, "staleness/0": 0.75, "staleness/1": 0.25,
                       "staleness/2": 0.0}
    assert staleness_metrics([], step=3, max_staleness=1) == {}


def test_max_staleness_with_the_own_engine_is_a_one_line_config_error(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "run"), "rl.max_staleness=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rl.max_staleness" in err and "kv_cache" in err
    assert not (tmp_path / "run").exists()  # before any work


def test_truncated_is_is_on_whenever_samples_may_be_stale():
    assert load_config(None, ["rl.max_staleness=0"]).tis_cap() is None  # the own engine, synchronous
    assert load_config(None, ["rl.max_staleness=1"]).tis_cap() == 2.0
    assert load_config(None, ["rl.max_staleness=1", "algorithm.tis_cap=3.0"]).tis_cap() == 3.0


# ----------------------------------------------------------------------------- through vLLM

TIMING = ("step_time", "tokens_per_s", "rl_seconds_total", "overlap_frac")


def _records(run_dir, stage="rl"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["stage"] == stage]


def _comparable(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time_")} for r in _records(run_dir)]


def _samples(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """An uninterrupted 4-step max_staleness=1 run on colocated vLLM, and its arguments."""
    pytest.importorskip("vllm")
    from rlvr.models.random_checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("staleness")
    checkpoint = write_random_checkpoint(root / "qwen2-tiny", shape="qwen2-tiny")
    args = [f"model.path={checkpoint}", "stages=[rl]", "rollout.engine=vllm", "rollout.vllm.mode=colocated",
            "rl.max_staleness=1", "rl.steps=4", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
            "rollout.max_new_tokens=16", "eval.problems=8", "eval.samples=1", "eval.every=2",
            "checkpoint.every=2", "logging.samples_per_step=64", "logging.progress=false", "threads=1",
            "reward.shaping=[{name: random_reward}]"]
    run_dir = root / "straight"
    assert main(["train", "--output-dir", str(run_dir), *args]) == 0
    return root, args, run_dir


def test_step_t_learns_from_version_t_minus_1_with_its_metrics(vllm_run):
    _, _, run_dir = vllm_run
    records = _records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    samples = _samples(run_dir)
    for r in records:
        # step 1 samples the starting weights (version 0); step s >= 2 the weights after step s-2
        expected = max(0, r["step"] - 2)
        versions = {s["policy_version"] for s in samples if s["step"] == r["step"]}
        assert versions == {expected}, r["step"]
        assert r["staleness_max"] == (0.0 if r["step"] == 1 else 1.0)
        assert r["staleness/1"] == (0.0 if r["step"] == 1 else 1.0)
        assert r["stale_dropped"] == 0.0
        assert r["tis_weight_mean"] > 0 and r["grad_norm"] > 0
        assert r["time_generation_background"] >= r["time_generation_overlapped"] >= 0
        assert 0.0 <= r["overlap_frac"] <= 1.0
    # the periodic evaluation saw the newest weights: the engine held version 2 after step 2
    assert [e["phase"] for e in map(json.loads, (run_dir / "eval.jsonl").read_text().splitlines())][:2] == \
        ["warmstart", "rl-step-2"]


def test_a_crash_then_resume_continues_exactly(vllm_run, monkeypatch):
    root, args, straight = vllm_run
    config = load_config(None, args)
    crashed = root / "crashed"
    original = rl_module.policy_update
    crash_at = 2 * config.rl.mini_batches * config.rl.epochs  # inside step 3, after the step-2 checkpoint

    def failing(*a, **kw):
        if kw.get("opt_step", a[3] if len(a) > 3 else None) == crash_at:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(rl_module, "policy_update", failing)
    assert main(["train", "--output-dir", str(crashed), *args]) == 130  # interrupted, resumable
    state = json.loads((crashed / "state.json").read_text())
    assert state["checkpoint"] == "checkpoints/rl-step-000002"
    monkeypatch.undo()

    assert main(["train", "--resume", str(crashed)]) == 0
    assert _comparable(straight) == _comparable(crashed)
    assert _samples(straight) == _samples(crashed)
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(straight / "checkpoints" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(crashed / "checkpoints" / "final").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_a_vllm_server_samples_one_version_behind(tmp_path):
    """The same through a `vllm serve` process (one trainer process, one engine process)."""
    pytest.importorskip("vllm")
    from rlvr.models.random_checkpoint import write_random_checkpoint

    checkpoint = write_random_checkpoint(tmp_path / "qwen2-tiny", shape="qwen2-tiny")
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), f"model.path={checkpoint}", "stages=[rl]",
                 "rollout.engine=vllm", "rollout.vllm.mode=server", "rl.max_staleness=1", "rl.steps=3",
                 "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rollout.max_new_tokens=16", "eval.problems=8",
                 "eval.samples=1", "logging.samples_per_step=64", "logging.progress=false", "threads=1",
                 "reward.shaping=[{name: random_reward}]"]) == 0
    samples = _samples(run_dir)
    for r in _records(run_dir):
        assert {s["policy_version"] for s in samples if s["step"] == r["step"]} == {max(0, r["step"] - 2)}
        assert r["stale_dropped"] == 0.0 and r["grad_norm"] > 0
