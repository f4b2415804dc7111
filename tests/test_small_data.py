"""Small data works: one check before any work lists every size a task cannot meet, and
training batches larger than the training problems repeat them in shuffled passes (epochs)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.tasks import Problem, Score, Task
from rlvr.tasks.base import TooFewProblems, fill_with_repeats
from rlvr.tasks.mix import MixComponent, MixTask
from rlvr.training.pipeline import check_data_sizes
from rlvr.training.run_dir import RunDir
from rlvr.typed_yaml import ConfigError
from test_custom_plugins import MY_TASKS  # the README's custom task: Double, max_value + 1 problems


class Few(Task):
    """``size`` distinct problems: ``x`` -> ``2x``."""

    name = "few"

    @dataclass
    class Params:
        size: int = 51

    def generate(self, rng):
        x = rng.randrange(self.params.size)
        return Problem(id=str(x), prompt=f"2*{x}=", answer=str(2 * x))

    def extract_answer(self, completion):
        return completion.strip() or None

    def score(self, problem, completion):
        ok = completion.strip() == problem.answer
        return Score(reward=float(ok), correct=ok, extracted=completion.strip())

    def demonstration(self, problem, rng):
        return problem.answer


def test_fill_with_repeats_gives_whole_shuffled_passes():
    pool = [Problem(id=str(i), prompt="", answer="") for i in range(5)]
    filled = fill_with_repeats(pool, 12, random.Random(0))
    counts = Counter(p.id for p in filled)
    assert len(filled) == 12 and set(counts) == {p.id for p in pool}
    assert sorted(counts.values()) == [2, 2, 2, 3, 3]  # two whole passes, then 2 of a third
    assert [p.id for p in filled[:5]] != [p.id for p in pool] or [p.id for p in filled[5:10]] != [p.id for p in pool]
    assert filled == fill_with_repeats(pool, 12, random.Random(0))


def test_generated_task_repeats_only_when_asked():
    task = Few(Few.Params(size=5))
    with pytest.raises(TooFewProblems) as info:
        task.sample_problems(12, seed=0)
    assert (info.value.available, info.value.requested) == (5, 12)
    drawn = task.sample_problems(12, seed=0, replace=True)
    assert sorted(Counter(p.id for p in drawn).values()) == [2, 2, 2, 3, 3]
    assert drawn == task.sample_problems(12, seed=0, replace=True)
    # with enough problems, replace changes nothing: the same draw as without it
    assert task.sample_problems(4, seed=3, replace=True) == task.sample_problems(4, seed=3)
    excluded = task.sample_problems(6, seed=0, exclude={"0", "1"}, replace=True)
    assert {p.id for p in excluded} == {"2", "3", "4"}


def test_file_task_and_mix_repeat_their_own_problems(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+{i}", "answer": str(2 * i)}) + "\n" for i in range(4)))
    from rlvr.tasks import TASKS

    math_task = TASKS.get("math")(TASKS.get("math").Params(path=str(path), heldout_fraction=0.0))
    with pytest.raises(TooFewProblems, match="has only 4"):
        math_task.sample_problems(10, seed=0)
    drawn = math_task.sample_problems(10, seed=0, replace=True)
    assert sorted(Counter(p.id for p in drawn).values()) == [2, 2, 3, 3]
    mix = MixTask(MixTask.Params(tasks=[MixComponent("addition"), MixComponent("math", params={"path": str(path)})]))
    mix.components["math"] = math_task
    drawn = mix.sample_problems(20, seed=0, replace=True)  # 10 from each: the 4 math problems repeat
    math_ids = Counter(p.id for p in drawn if p.id.startswith("math/"))
    assert sum(math_ids.values()) == 10 and sorted(math_ids.values()) == [2, 2, 3, 3]


def test_size_check_lists_the_held_out_limit_and_what_to_set():
    config = load_config(None, [])
    with pytest.raises(ConfigError) as info:
        check_data_sizes(Few(), config, "default recipe")
    message = str(info.value)
    assert "\n" not in message
    assert "task 'few' cannot meet: eval.problems=200" in message
    assert "only 51 problems" in message and "eval.problems=10 or fewer" in message


def test_size_check_lists_every_unmet_limit_at_once(capsys):
    config = load_config(None, ["eval.problems=10", "data.reuse_problems=false", "data.fixed_problems=50",
                                "sft.batch_size=64"])
    with pytest.raises(ConfigError) as info:
        check_data_sizes(Few(), config, "recipe.yaml")
    message = str(info.value)
    assert "data.fixed_problems=50: the task has only 41 training problems" in message
    assert "sft.batch_size=64" in message and "data.reuse_problems=true" in message


def test_size_check_warns_on_repeats_and_on_a_held_out_split_too_small(capsys):
    config = load_config(None, ["eval.problems=10", "rl.prompts_per_step=48"])
    heldout, warnings = check_data_sizes(Few(), config, "default recipe")
    assert len(heldout) == 10
    err = "\n".join(warnings)
    assert "only 41 training problems: sft.batch_size=64, rl.prompts_per_step=48 repeats them" in err
    assert "95% interval of about +-31 points" in err
    # 200 held-out problems (+-7 points), batches that fit: nothing to say
    assert check_data_sizes(Few(Few.Params(size=10_000)), load_config(None, []), "default recipe")[1] == []


def test_no_training_problems_left_is_an_error():
    config = load_config(None, ["eval.problems=5"])
    with pytest.raises(ConfigError, match="no training problems are left beside the held-out split"):
        check_data_sizes(Few(Few.Params(size=5)), config, "default recipe")


def test_a_small_task_trains_with_repeated_batches(tmp_path, monkeypatch, tiny_overrides, capsys):
    """41 training problems (51 less 10 held out), SFT batches of 64 and RL steps of 48
    prompts: the run trains, and each batch holds every training problem at least once."""
    (tmp_path / "my_tasks.py").write_text(MY_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "task.name=my_tasks:Double",
            "task.params={max_value: 50}", "eval.problems=10", "sft.batch_size=64", "rl.prompts_per_step=48",
            "rl.samples_per_prompt=2", "rl.micro_batch_size=16",
            "rl.steps=1", "logging.samples_per_step=96"]
    assert main(args) == 0
    assert "rlvr: warning: the task has only 41 training problems" in capsys.readouterr().out
    prompts = [json.dumps(s["prompt"]) for s in RunDir(run_dir).read("samples.jsonl") if s["stage"] == "rl"]
    assert len(set(prompts)) == 41 and len(prompts) == 96


def test_unknown_module_task_is_named_in_errors(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_tasks.py").write_text(MY_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--output-dir", str(tmp_path / "r"), "task.name=my_tasks:Double",
                 "task.params={max_value: 50}"]) == 2
    err = capsys.readouterr().err
    assert "task 'my_tasks:Double' cannot meet: eval.problems=200" in err
    assert not (tmp_path / "r").exists()
