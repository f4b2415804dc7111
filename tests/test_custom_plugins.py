"""A user's own task and reward, named in the config as module:attribute, train end to end."""

from __future__ import annotations

import textwrap

from rlvr.cli import main
from rlvr.training.run_dir import RunDir

# The README's custom-task example, verbatim.
MY_TASKS = textwrap.dedent('''
    from dataclasses import dataclass
    from rlvr.tasks import Problem, Score, Task

    class Double(Task):
        @dataclass
        class Params:
            max_value: int = 99

        def generate(self, rng):
            x = rng.randint(0, self.params.max_value)
            return Problem(id=str(x), prompt=[{"role": "user", "content": f"2*{x}"}], answer=str(2 * x))

        def extract_answer(self, completion):
            return completion.rpartition("=>")[2].strip() or None

        def score(self, problem, completion):
            got = self.extract_answer(completion)
            return Score(reward=float(got == problem.answer), correct=got == problem.answer, extracted=got)

        def demonstration(self, problem, rng):
            return f"=> {problem.answer}"

    def brevity(task, problem, completion, score, max_chars=10):
        return float(len(completion) <= max_chars)
''')


def test_custom_task_and_reward_from_module_paths(tmp_path, monkeypatch, tiny_overrides):
    (tmp_path / "my_tasks.py").write_text(MY_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "task.name=my_tasks:Double",
            "task.params={max_value: 50}", "reward.components={correctness: 1.0, 'my_tasks:brevity': 0.5}",
            "reward.params={'my_tasks:brevity': {max_chars: 4}}", "eval.problems=20"]
    assert main(args) == 0
    rl = [m for m in RunDir(run_dir).read("metrics.jsonl") if m["stage"] == "rl"]
    samples = [s for s in RunDir(run_dir).read("samples.jsonl") if s["stage"] == "rl"]
    assert rl and "reward/my_tasks:brevity" in rl[0]
    for s in samples:
        expected = float(s["correct"]) + 0.5 * float(len(s["completion"]) <= 4)
        assert s["reward"] == expected, s


def test_unknown_module_path_fails_before_any_work(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "r"), "task.name=no_such_module:Task"]) == 2
    err = capsys.readouterr().err
    assert "task.name" in err and "no_such_module" in err
    assert not (tmp_path / "r").exists()


def test_bad_custom_task_params_name_the_field(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_tasks.py").write_text(MY_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--output-dir", str(tmp_path / "r"), "task.name=my_tasks:Double",
                 "task.params={max_valu: 3}"]) == 2
    err = capsys.readouterr().err
    assert "max_valu" in err and "max_value" in err
