"""A chain of stages (``stages: [sft, rl, sft, rl]``, per-stage settings): each stage starts from
the one before, the chain's records are every stage's, renumbered, and a crash inside a later
stage resumes exactly."""

from __future__ import annotations

import json

import pytest

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.training import chain as chain_module
from rlvr.training.pipeline import new_run_dir, run_pipeline
from rlvr.training.run_dir import RunDir

from crash_resume import crash_in_rl_step_then_resume, rl_records

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.batch_size=8", "sft.warmup_steps=0", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
        "rl.mini_batches=2", "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8",
        "eval.samples=2", "eval.every=0", "logging.progress=false", "logging.samples_per_step=4", "threads=1"]
CHAIN = "stages=[sft, {rl: {rl.steps: 2}}, {sft: {sft.steps: 4, sft.lr: 1.0e-3}}, rl]"


def _eval_values(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("phase", "step", "stage_index")}


def test_each_stage_starts_from_the_last_and_the_chain_gathers_their_records(tmp_path):
    config = load_config(None, [*TINY, "sft.steps=8", "rl.steps=3", CHAIN])
    run = new_run_dir(config, str(tmp_path / "chain"), "t")
    summary = run_pipeline(config, run)
    stages = run.path / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["1-sft", "2-rl", "3-sft", "4-rl"]

    # every later stage's model is the stage before's result, with the stage's own settings
    for before, after in (("1-sft/checkpoints/sft-final", "2-rl"), ("2-rl/checkpoints/final", "3-sft"),
                          ("3-sft/checkpoints/sft-final", "4-rl")):
        stage_config = load_config(stages / after / "config.yaml")
        assert stage_config.model.path == str((stages / before).resolve())
    third = load_config(stages / "3-sft" / "config.yaml")
    assert (third.sft.steps, third.sft.lr, third.stages) == (4, 1e-3, ["sft"])
    assert third.seed != config.seed and load_config(stages / "1-sft" / "config.yaml").seed == config.seed

    # an RL stage's own start evaluation is the previous stage's end, evaluated again on the same weights
    own = {name: RunDir(stages / name).read("eval.jsonl") for name in ("1-sft", "2-rl", "3-sft", "4-rl")}
    assert _eval_values(own["2-rl"][0]) == _eval_values(own["1-sft"][0])
    assert _eval_values(own["4-rl"][0]) == _eval_values(own["3-sft"][0])

    metrics = RunDir(run.path).read("metrics.jsonl")
    sft = [(r["step"], r["stage_step"], r["stage_index"]) for r in metrics if r["stage"] == "sft"]
    assert sft == [(s, s, 1) for s in range(1, 9)] + [(8 + s, s, 3) for s in range(1, 5)]
    rl = [(r["step"], r["stage_step"], r["stage_index"]) for r in metrics if r["stage"] == "rl"]
    assert rl == [(1, 1, 2), (2, 2, 2), (3, 1, 4), (4, 2, 4), (5, 3, 4)]
    assert max(r["lr"] for r in metrics if r["stage_index"] == 3) == 1e-3
    assert {r["step"] for r in RunDir(run.path).read("samples.jsonl")} == {1, 2, 3, 4, 5}

    evals = RunDir(run.path).read("eval.jsonl")
    assert [(e["phase"], e["step"], e["stage_index"]) for e in evals] == \
        [("warmstart", 0, 1), ("stage-2-rl", 2, 2), ("stage-3-sft", 2, 3), ("final", 5, 4)]
    assert _eval_values(evals[-1]) == _eval_values(own["4-rl"][-1])
    assert summary["final_checkpoint"] == str((stages / "4-rl/checkpoints/final").resolve())
    assert summary["warmstart_accuracy"] == own["1-sft"][0]["greedy_accuracy"]
    assert [(s["stage"], s["kind"]) for s in summary["stages"]] == [(1, "sft"), (2, "rl"), (3, "sft"), (4, "rl")]


def test_a_later_sft_stage_continues_training_the_same_model(tmp_path):
    config = load_config(None, [*TINY, "sft.steps=12", "stages=[sft, sft]"])
    run = new_run_dir(config, str(tmp_path / "chain"), "t")
    run_pipeline(config, run)
    losses = {index: [r["loss"] for r in RunDir(run.path).read("metrics.jsonl") if r["stage_index"] == index]
              for index in (1, 2)}
    # a fresh model starts near log(vocab); the second stage starts where the first stopped
    assert losses[2][0] < losses[1][0] - 0.5
    assert abs(losses[2][0] - losses[1][-1]) < 0.25 * (losses[1][0] - losses[1][-1])


def test_crashes_at_a_stage_boundary_and_inside_a_later_stage_resume_exactly(tmp_path, monkeypatch):
    chain = "stages=[sft, {rl: {rl.steps: 2}}, {rl: {rl.steps: 4}}]"
    config = load_config(None, [*TINY, "sft.steps=4", "checkpoint.every=2", chain])
    straight = new_run_dir(config, str(tmp_path / "straight"), "t")
    run_pipeline(config, straight)

    # killed between the second stage's end and the chain's record of it
    original = chain_module.gather

    def killed_after_stage_two(config, run, state, stages_done):
        if stages_done == 2:
            raise KeyboardInterrupt
        original(config, run, state, stages_done)

    monkeypatch.setattr(chain_module, "gather", killed_after_stage_two)
    first = new_run_dir(config, str(tmp_path / "crashed"), "t")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, first)
    monkeypatch.undo()
    assert json.loads((first.path / "state.json").read_text())["completed_stages"] == ["sft"]
    # then, resumed, killed inside step 3 of the third stage, and resumed again to the end
    crashed = crash_in_rl_step_then_resume(config, first.path, monkeypatch, step=3, resume=True)
    assert rl_records(straight.path) == rl_records(crashed)
    assert [r["step"] for r in rl_records(crashed)] == [1, 2, 3, 4, 5, 6]
    assert RunDir(crashed).read("eval.jsonl") == RunDir(straight.path).read("eval.jsonl")
    assert json.loads((crashed / "state.json").read_text())["completed_stages"] == ["sft", "rl", "rl"]


def test_chain_mistakes_are_one_line_before_any_work(tmp_path, capsys):
    for stages, expected in (("stages=[rl, sft]", "stages[0] (rl)"),
                             ("stages=[sft, {rl: {model.hidden_size: 64}}]", "cannot differ between stages"),
                             ("stages=[sft, {rl: {rl.stepz: 3}}]", "unknown field 'stepz'")):
        assert main(["train", "--output-dir", str(tmp_path / "run"), *TINY, stages]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()
