"""The Python API (``rlvr.train``), TRL-style data and reward functions, and the ``prompts`` task."""

from __future__ import annotations

import json
import random

import pytest

import rlvr
from rlvr.api import Callback, TrainResult
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.rewards import RewardError, call_trl_reward, is_trl_reward
from rlvr.tasks import Problem
from rlvr.tasks.addition import AdditionTask
from rlvr.tasks.prompts import PromptsTask
from rlvr.training.pipeline import build_task, check_names
from rlvr.training.run_dir import RunDir
from rlvr.typed_yaml import ConfigError


class Recorder(Callback):
    def __init__(self) -> None:
        self.logs, self.evals, self.samples = [], [], []

    def on_log(self, record):
        self.logs.append(record)

    def on_evaluate(self, record):
        self.evals.append(record)

    def on_samples(self, records):
        self.samples += records


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """A tiny model after a short SFT on addition, trained through the API."""
    out = tmp_path_factory.mktemp("api") / "sft"
    overrides = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
                 "sft.steps=30", "sft.batch_size=16", "eval.problems=8", "eval.samples=2",
                 "logging.progress=false", "threads=1"]
    result = rlvr.train(overrides=overrides, stages=["sft"], output_dir=out)
    return result


def test_train_returns_the_run_and_calls_back(tmp_path, tiny_overrides):
    recorder, seen = Recorder(), []
    result = rlvr.train(overrides=tiny_overrides, output_dir=tmp_path / "run", callbacks=[recorder, seen.append])
    assert isinstance(result, TrainResult) and result.run_dir == tmp_path / "run"
    run = RunDir(result.run_dir)
    assert json.loads(json.dumps(result.summary)) == json.loads((result.run_dir / "summary.json").read_text())
    assert result.final_accuracy == result.summary["final_accuracy"] and result.final_checkpoint.is_dir()
    metrics = run.read("metrics.jsonl")
    assert recorder.logs == metrics == seen and {m["stage"] for m in metrics} == {"sft", "rl"}
    assert [e["phase"] for e in recorder.evals] == [e["phase"] for e in run.read("eval.jsonl")] == ["warmstart",
                                                                                                       "final"]
    assert recorder.samples == run.read("samples.jsonl") and recorder.samples
    assert result.config.rl.steps == 4  # the overrides, resolved


def test_config_by_object_name_or_file_and_errors_before_the_run_dir(tmp_path, tiny_overrides):
    config = load_config(None, tiny_overrides)
    result = rlvr.train(config, overrides=["rl.steps=1"], output_dir=tmp_path / "obj")
    assert result.config.rl.steps == 1 and len([m for m in RunDir(result.run_dir).read("metrics.jsonl")
                                                if m["stage"] == "rl"]) == 1
    with pytest.raises(ConfigError, match="command line override 'rl.stepz=1'"):
        rlvr.train("dapo", overrides=["rl.stepz=1"], output_dir=tmp_path / "bad")
    with pytest.raises(ConfigError, match="config 'nosuch': no such file and no built-in recipe"):
        rlvr.train("nosuch", output_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_is_trl_reward_tells_the_conventions_apart():
    def trl(completions, **kwargs):
        return [1.0] * len(completions)

    def ours(task, problem, completion, score):
        return 1.0

    assert is_trl_reward(trl) and not is_trl_reward(ours)


def test_a_trl_reward_is_called_as_trl_calls_it():
    calls = []

    def reward(prompts, completions, completion_ids, target, **kwargs):
        calls.append((prompts, completions, completion_ids, target, sorted(kwargs)))
        return [float(len(c[0]["content"]) if isinstance(c, list) else len(c)) for c in completions]

    chat = Problem(id="a", prompt=[{"role": "user", "content": "hi"}], answer="1", metadata={"columns": {"target": 3}})
    text = Problem(id="b", prompt="plain", answer="2", metadata={"columns": {"target": 4, "extra": "x"}})
    values = call_trl_reward("reward", reward, [chat, text], ["abc", "de"], [[1, 2], [3]], {})
    assert values == [3.0, 2.0]
    prompts, completions, ids, target, rest = calls[0]
    assert prompts == [chat.prompt, "plain"]
    assert completions == [[{"role": "assistant", "content": "abc"}], "de"]  # conversational prompt: messages
    assert ids == [[1, 2], [3]] and target == [3, 4]
    assert rest == ["answer", "extra", "problem_id"]  # every column; a record without one gets None

    def named_only(completions, answer):  # no **kwargs: only what it names
        return [float(a == "1") for a in answer]

    assert call_trl_reward("named_only", named_only, [chat, text], ["x", "y"], None, {}) == [1.0, 0.0]

    def none_for_some(completions, **kwargs):
        return [None, 0.5]

    assert call_trl_reward("n", none_for_some, [chat, text], ["x", "y"], None, {}) == [0.0, 0.5]
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        call_trl_reward("short", lambda completions, **kw: [1.0], [chat, text], ["x", "y"], None, {})
    with pytest.raises(RewardError, match="returned nan"):
        call_trl_reward("nan", lambda completions, **kw: [float("nan"), 1.0], [chat, text], ["x", "y"], None, {})


def _addition_records(count: int) -> list[dict]:
    task, rng = AdditionTask(), random.Random(0)
    records = []
    for _ in range(count):
        problem = task.generate(rng)
        records.append({"prompt": problem.prompt[0]["content"], "target": str(problem.answer), "id": problem.id})
    return records


CALLS: list[int] = []


def right_answer(completions, target, **kwargs):
    """TRL convention: 1.0 when the text after the last '=>' is the target."""
    CALLS.append(len(completions))
    return [float(c[0]["content"].rpartition("=>")[2].strip() == t) for c, t in zip(completions, target)]


def brevity(completions, **kwargs):
    return [-len(c[0]["content"]) / 100 for c in completions]


def test_trl_data_and_reward_functions_train_and_resume_from_the_shell(tmp_path, warm_start):
    CALLS.clear()
    overrides = [f"model.path={warm_start.final_checkpoint}", "rl.steps=2", "rl.prompts_per_step=4",
                 "rl.samples_per_prompt=4", "rl.mini_batches=1", "rl.micro_batch_size=16", "eval.problems=10",
                 "eval.samples=0", "logging.samples_per_step=16", "logging.progress=false", "threads=1",
                 "checkpoint.every=1"]
    result = rlvr.train(overrides=overrides, stages=["rl"], output_dir=tmp_path / "run",
                        train_dataset=_addition_records(200), rewards=[right_answer, brevity],
                        reward_weights=[1.0, 0.5])
    # one call per batch: RL's 4 prompts x 4 samples (for correctness, then for the reward), the
    # held-out split's 10 (correctness); never one call per sample
    assert CALLS.count(16) == 2 * 2 and set(CALLS) == {16, 10}
    config = load_config(result.run_dir / "config.yaml")
    assert config.task.name == "prompts"
    assert config.task.params["correct_reward"] == "test_api:right_answer"  # the first reward: what is right
    assert config.reward.components == {"test_api:right_answer": 1.0, "test_api:brevity": 0.5}
    data = result.run_dir / "data" / "train.jsonl"
    assert config.task.params["path"] == str(data.resolve()) and len(data.read_text().splitlines()) == 200
    samples = [s for s in RunDir(result.run_dir).read("samples.jsonl") if s["stage"] == "rl"]
    assert len(samples) == 32
    targets = {r["id"]: r["target"] for r in _addition_records(200)}
    for s in samples:
        parts = s["reward_components"]
        right = float(s["completion"].rpartition("=>")[2].strip() == targets[s["problem_id"]])
        assert parts["test_api:right_answer"] == right
        assert parts["test_api:brevity"] == pytest.approx(-len(s["completion"]) / 100)
        assert s["reward"] == pytest.approx(right + 0.5 * parts["test_api:brevity"])
        assert s["correct"] == bool(right)
    # the run's config alone rebuilds the task: `rlvr train --resume` needs nothing from Python
    task = build_task(config)
    assert isinstance(task, PromptsTask) and len(task.problems) == 200
    assert main(["train", "--resume", str(result.run_dir)]) == 0  # finished: a no-op resume


def test_the_prompts_task_from_a_file_with_an_answer_column(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"What is {i}+{i}?"}], "solution": f"\\boxed{{{2 * i}}}"}
            for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(None, ["task.name=prompts", f"task.params={{path: {path}, answer_field: solution, "
                                                    "system_prompt: Think step by step.}",
                                "model.path=none", "stages=[rl]"])
    task = build_task(config)
    problem = task.problems[3]
    assert problem.prompt == [{"role": "system", "content": "Think step by step."},
                              {"role": "user", "content": "What is 3+3?"}]
    assert problem.answer == "6"
    assert task.score(problem, "so it is \\boxed{6}").correct
    assert not task.score(problem, "\\boxed{7}").correct and task.isolate
    with pytest.raises(ConfigError, match="answer_field or correct_reward is required"):
        build_task(load_config(None, ["task.name=prompts", f"task.params={{path: {path}}}"]))
    with pytest.raises(ConfigError, match="needs demonstrations"):  # no SFT stage on prompt data
        check_names(load_config(None, ["task.name=prompts", f"task.params={{path: {path}, answer_field: solution}}",
                                       "eval.problems=2"]))
