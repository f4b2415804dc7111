"""Verification failures never stop training: hangs and crashes become zero scores with the
error recorded, and a math-verify task trains end to end from a local JSONL file."""

from __future__ import annotations

import json
import textwrap

from rlvr.cli import main
from rlvr.training.run_dir import RunDir

HOSTILE_TASKS = textwrap.dedent('''
    import os, time
    from rlvr.tasks.addition import AdditionTask

    class Hostile(AdditionTask):
        """Addition whose verifier crashes when a = 10 and hangs when a = 11."""
        isolate = True

        def generate(self, rng):
            problem = super().generate(rng)
            b = problem.metadata["b"]
            a = 10 + b % 3
            problem.id, problem.answer = f"{a}+{b}", str(a + b)
            problem.metadata["a"] = a
            return problem

        def score(self, problem, completion):
            a = problem.metadata["a"]
            if a % 5 == 0:
                os._exit(3)
            if a % 2:
                time.sleep(60)
            return super().score(problem, completion)
''')


def test_hanging_and_crashing_verifier_does_not_stop_training(tmp_path, monkeypatch, tiny_overrides):
    (tmp_path / "hostile_tasks.py").write_text(HOSTILE_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "task.name=hostile_tasks:Hostile",
            "task.params={min_digits: 2, max_digits: 3, teacher_carry_error: 0.6}", "verifier.timeout_s=0.5", "verifier.workers=2", "rl.steps=1", "eval.problems=2", "eval.samples=0",
            "rl.prompts_per_step=6", "rl.samples_per_prompt=2", "rl.mini_batches=1", "logging.samples_per_step=12"]
    assert main(args) == 0
    samples = [s for s in RunDir(run_dir).read("samples.jsonl") if s["stage"] == "rl"]
    assert len(samples) == 12
    seen = set()
    for s in samples:
        a = int(s["problem_id"].split("+")[0])
        expected = {10: "crashed", 11: "timeout", 12: None}[a]
        seen.add(expected)
        if expected is None:
            assert s["error"] is None, s
        else:
            assert expected in s["error"] and s["reward"] == 0.0, s
    assert seen == {"crashed", "timeout", None}  # the seed's problems exercise every case


def test_math_task_trains_from_local_jsonl(tmp_path, tiny_overrides):
    data = tmp_path / "math.jsonl"
    with open(data, "w") as fh:
        for i in range(60):
            a, b = i % 7 + 1, i % 5 + 2
            fh.write(json.dumps({"id": f"q{i}", "question": f"{a}*{b}", "answer": str(a * b),
                                 "solution": f"{a}*{b}={a * b} \\\\boxed{{{a * b}}}"}) + "\n")
    run_dir = tmp_path / "run"
    params = f"{{path: '{data}', solution_field: solution, heldout_fraction: 0.2, prompt_template: '{{question}}'}}"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "task.name=math", f"task.params={params}",
            "eval.problems=6", "rollout.max_new_tokens=16"]
    assert main(args) == 0
    state = RunDir(run_dir).load_state()
    assert state["completed_stages"] == ["sft", "rl"]
    assert state["evals"]["final"]["scoring_errors"] == 0
    heldout_evals = state["evals"]["warmstart"]["problems"]
    assert heldout_evals == 6
