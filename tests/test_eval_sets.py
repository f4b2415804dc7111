"""eval.sets: a run evaluates other tasks alongside its own at every evaluation."""

from __future__ import annotations

import json

from rlvr.cli import main
from rlvr.training.run_dir import RunDir


def test_other_tasks_are_evaluated_at_every_evaluation(tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "run"
    sets = "eval.sets=[{task: countdown, problems: 6}, {task: sort, name: sorting, params: {mode: reverse}, problems: 5}]"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "eval.every=2", sets]) == 0
    evals = RunDir(run_dir).read("eval.jsonl")
    assert [e["phase"] for e in evals] == ["warmstart", "rl-step-2", "final"]
    for record in evals:
        assert set(record["sets"]) == {"countdown", "sorting"}
        assert record["sets"]["countdown"]["problems"] == 6 and record["sets"]["sorting"]["problems"] == 5
        assert 0.0 <= record["sets"]["sorting"]["greedy_accuracy"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_sets"]["sorting"]["final_accuracy"] == evals[-1]["sets"]["sorting"]["greedy_accuracy"]
    out = capsys.readouterr().out
    assert "  evaluation set countdown: " in out and "  evaluation set sorting: " in out
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "Other evaluation sets" in html and "sorting %" in html and "countdown %" in html


def test_a_bad_evaluation_set_is_a_config_error_naming_it(tmp_path, capsys):
    for value, message in (("[{task: nosuch}]", "eval.sets[0].task: unknown task 'nosuch'"),
                           ("[{task: sort, params: {bogus: 1}}]", "eval.sets[0].params"),
                           ("[{task: sort}, {task: sort}]", "two evaluation sets are called 'sort'"),
                           ("[{problems: 5}]", "task is required")):
        assert main(["train", "--output-dir", str(tmp_path / "r"), f"eval.sets={value}"]) == 2
        err = capsys.readouterr().err
        assert message in err and f"eval.sets={value}" in err, err
    assert not (tmp_path / "r").exists()
