"""task.answer_layout: think_answer lays demonstrations out as DeepSeek-R1 does and scores only
the last <answer> block, in process and in the verifier pool's workers."""

from __future__ import annotations

import random

from rlvr.config import load_config
from rlvr.recipes import recipe_path
from rlvr.tasks.base import Problem
from rlvr.training.pipeline import build_task
from rlvr.training.sft import sft_demonstrations
from rlvr.verify import VerifierPool, score_inline


def _addition(layout: str):
    return build_task(load_config(None, [f"task.answer_layout={layout}"]))


def test_demonstrations_are_laid_out_and_the_answer_block_alone_is_scored():
    task = _addition("think_answer")
    problem = task.generate(random.Random(0))
    demo = task.laid_out(task.demonstration(problem, random.Random(0)))
    assert demo == f"<think>6+1=7 7+4=11 8+1+1=10 => {problem.answer}</think><answer>{problem.answer}</answer>"
    assert score_inline(task, problem, demo).correct
    wrong = demo.replace(f"<answer>{problem.answer}</answer>", "<answer>1</answer>")
    assert not score_inline(task, problem, wrong).correct  # the right number while thinking does not count
    assert not score_inline(task, problem, f"=> {problem.answer}").correct  # the plain layout is not read
    assert score_inline(_addition("plain"), problem, f"=> {problem.answer}").correct  # as before
    config = load_config(None, ["task.answer_layout=think_answer"])
    _, demos = sft_demonstrations(task, config, 0, frozenset())
    assert all(d.startswith("<think>") and d.endswith("</answer>") for d in demos)


def test_the_layout_travels_to_the_verifier_workers(tmp_path):
    data = tmp_path / "m.jsonl"
    data.write_text('{"id": "a", "question": "1+1", "answer": "2"}\n')
    config = load_config(None, ["task.name=math", f"task.params={{path: {data}, heldout_fraction: 0}}",
                                "task.answer_layout=think_answer"])
    task = build_task(config)
    problem = Problem(id="a", prompt="1+1", answer="2")
    with VerifierPool(task, workers=1, timeout_s=30) as pool:
        right, thinking, plain = pool.score_many([problem] * 3, ["<think>hmm</think><answer>2</answer>",
                                                                 "<think>\\boxed{2}</think><answer>3</answer>",
                                                                 "\\boxed{2}"])
    assert right.correct and not thinking.correct and not plain.correct


def test_the_r1_recipe_uses_the_layout_and_the_format_reward():
    config = load_config(recipe_path("r1_format"))
    assert config.task.answer_layout == "think_answer" and config.task.name == "addition"
    assert config.reward.components == {"correctness": 1.0, "think_answer_format": 0.2}
