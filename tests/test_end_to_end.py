"""Short runs through the CLI and the pipeline: artefacts, resume, and a real learning gain."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.training import rl as rl_module
from rlvr.training import sft as sft_module
from rlvr.training.pipeline import new_run_dir, run_pipeline
from rlvr.training.run_dir import RunDir

TIMING_KEYS = {"step_time", "time_generation", "time_scoring", "time_prepare", "time_update", "time_sync",
               "time_baseline", "time_logprob", "time_backward",
               "tokens_per_s", "rl_seconds_total"}


def test_short_run_writes_every_artefact(tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy:" in out and "(after SFT) ->" in out

    for name in ("config.yaml", "state.json", "metrics.jsonl", "samples.jsonl", "eval.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("warmstart_accuracy", "final_accuracy", "wall_seconds", "final_checkpoint"):
        assert key in summary
    assert 0.0 <= summary["warmstart_accuracy"] <= 1.0 and summary["wall_seconds"] > 0
    low, high = summary["final_accuracy_ci95"]
    assert low <= summary["final_accuracy"] <= high

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["stage"] == "sft"] == [1, 2, 3, 4]
    rl_steps = [m for m in metrics if m["stage"] == "rl"]
    assert [m["step"] for m in rl_steps] == [1, 2, 3, 4]
    for key in ("reward_mean", "accuracy", "response_length", "entropy", "clip_frac", "grad_norm",
                "step_time", "tokens_per_s", "zero_variance_groups"):
        assert all(math.isfinite(m[key]) for m in rl_steps), key
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples and {"completion", "reward", "correct", "step"} <= samples[0].keys()

    # The final checkpoint is a plain HF directory and reproduces the trained model's outputs.
    final = AutoModelForCausalLM.from_pretrained(summary["final_checkpoint"], local_files_only=True)
    ids = torch.tensor([[4, 9, 10, 79, 11, 5]])
    assert torch.isfinite(final(ids).logits).all()
    plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert plots == ["heldout_accuracy.png", "rl_curves.png", "sft_loss.png"]
    assert main(["report", str(run_dir)]) == 0  # the report of a real run: curves, evals, transcripts
    page = (run_dir / "report.html").read_text()
    assert all(f'<section id="{s}">' in page for s in ("config", "training", "evaluation", "transcripts"))
    assert "Late training" in page and "<b>prompt</b>" in page
    # Resumable intermediate checkpoints are pruned to keep_last; SFT ones are removed at the end.
    assert not list((run_dir / "checkpoints").glob("sft-step-*"))
    assert config_roundtrip(run_dir)


def config_roundtrip(run_dir) -> bool:
    return load_config(run_dir / "config.yaml").rl.steps == 4


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).state_dict()


def _comparable(run_dir, stage):
    records = RunDir(run_dir).read("metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records if r["stage"] == stage]


@pytest.mark.parametrize("crash_stage", ["sft", "rl"])
def test_resume_after_crash_continues_exactly(tmp_path, tiny_overrides, monkeypatch, crash_stage):
    # Resume must restore the reference model, the LASER-D shaper, the pass-rate tracker and
    # the curriculum too.
    overrides = [*tiny_overrides, "algorithm.kl.coef=0.05",
                 "reward.shaping=[{name: laser_d, params: {interval: 2}}]", "data.prefilter=true",
                 "data.curriculum={param: max_digits, minimum: 2, maximum: 3, target_low: 0.5, window: 1}"]
    config = load_config(None, overrides)
    straight = new_run_dir(config, str(tmp_path / "straight"), "t")
    run_pipeline(config, straight)

    crashed = new_run_dir(config, str(tmp_path / "crashed"), "t")
    module = sft_module if crash_stage == "sft" else rl_module
    # Fail inside step 3, after the step-2 checkpoint and with step 3's log record half-written.
    if crash_stage == "sft":
        original = module.sft_batch

        def failing(task, tokenizer, cfg, step, *rest):
            if step == 3:
                raise KeyboardInterrupt
            return original(task, tokenizer, cfg, step, *rest)

        monkeypatch.setattr(module, "sft_batch", failing)
    else:
        original = module.policy_update

        def failing(*args, **kwargs):
            if kwargs.get("opt_step", args[-1] if args else 0) == 3 * config.rl.mini_batches * config.rl.epochs:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "policy_update", failing)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, crashed)
    state = crashed.load_state()
    assert state["checkpoint"] == f"checkpoints/{crash_stage}-step-000002"
    monkeypatch.undo()

    assert main(["train", "--resume", str(crashed.path)]) == 0
    a = _weights(straight.path / "checkpoints" / "final")
    b = _weights(crashed.path / "checkpoints" / "final")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    for stage in ("sft", "rl"):
        assert _comparable(straight.path, stage) == _comparable(crashed.path, stage)
    assert json.loads((straight.path / "summary.json").read_text())["final_accuracy"] == \
        json.loads((crashed.path / "summary.json").read_text())["final_accuracy"]


def test_resume_refuses_overrides(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "rl.steps=3"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(tmp_path, tiny_overrides):
    config = load_config(None, tiny_overrides)
    run = new_run_dir(config, str(tmp_path / "r"), "t")
    run.append("metrics.jsonl", {"stage": "sft", "step": 1, "loss": 1.0})  # the run got going
    run.unlock()
    with pytest.raises(FileExistsError, match="--resume"):
        new_run_dir(config, str(tmp_path / "r"), "t")
    fresh = new_run_dir(config, str(tmp_path / "f"), "t")  # an attempt that never took a step
    fresh.unlock()
    assert new_run_dir(config, str(tmp_path / "f"), "t").path == tmp_path / "f"


def test_sft_then_eval_then_rl_from_checkpoint_path(tmp_path, tiny_overrides, capsys):
    sft_dir = tmp_path / "sft"
    assert main(["sft", "--output-dir", str(sft_dir), *tiny_overrides]) == 0
    summary = json.loads((sft_dir / "summary.json").read_text())
    assert summary["final_checkpoint"].endswith("checkpoints/sft-final")
    assert not (sft_dir / "checkpoints" / "final").exists()
    assert "(after SFT)," in capsys.readouterr().out

    # `rlvr eval` on the run directory reproduces the run's own warm-start evaluation.
    assert main(["eval", str(sft_dir), "--json"]) == 0
    (evaluated,) = json.loads(capsys.readouterr().out)
    recorded = RunDir(sft_dir).load_state()["evals"]["warmstart"]
    for key in ("greedy_accuracy", "pass@1", "pass@4", "greedy_length"):
        assert evaluated[key] == recorded[key], key

    # Any local HF checkpoint can start an RL-only run.
    rl_dir = tmp_path / "rl"
    overrides = [o for o in tiny_overrides if not o.startswith("model.")]
    assert main(["train", "--output-dir", str(rl_dir), f"model.path={summary['final_checkpoint']}",
                 "stages=[rl]", *overrides]) == 0
    rl_state = RunDir(rl_dir).load_state()
    assert rl_state["evals"]["warmstart"]["greedy_accuracy"] == recorded["greedy_accuracy"]
    assert rl_state["completed_stages"] == ["rl"]


def test_tiny_model_without_sft_is_refused(tmp_path, tiny_overrides, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "r"), "stages=[rl]", *tiny_overrides]) == 2
    assert "stages" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_micro_batch_size_does_not_change_the_update(tmp_path, tiny_overrides):
    """Gradient accumulation over micro-batches must give the same step as one big batch."""
    finals, grad_norms = [], []
    for micro in (1, 8):
        # The tiny model earns no reward and starts at its reference (zero KL gradient): the
        # entropy bonus gives every step a real gradient, so the comparison is not of float
        # noise that Adam would blow up to a full step.
        config = load_config(None, [*tiny_overrides, f"rl.micro_batch_size={micro}", "rl.steps=2",
                                    "algorithm.kl.coef=0.1", "algorithm.entropy.coef=0.01"])
        run = new_run_dir(config, str(tmp_path / f"m{micro}"), "t")
        run_pipeline(config, run)
        finals.append(_weights(run.path / "checkpoints" / "final"))
        grad_norms.append([m["grad_norm"] for m in run.read("metrics.jsonl") if m["stage"] == "rl"])
    # Adam hides a uniform scale error in the weights; the pre-clip gradient norm does not.
    assert grad_norms[0] == pytest.approx(grad_norms[1], rel=1e-4)
    for name in finals[0]:
        torch.testing.assert_close(finals[0][name], finals[1][name], rtol=1e-4, atol=1e-6, msg=name)
