"""Prompt selection: filters on hand-made pass-rate tables, the tracker, the curriculum, and
their effect in short training runs."""

from __future__ import annotations

import pytest

from rlvr.cli import main
from rlvr.data.selection import Curriculum, PassRateTracker, group_pass_rates, groups_to_keep
from rlvr.training.run_dir import RunDir

# Four groups of 4 samples: pass rates 0, 1/4, 3/4, 1; group 2's rewards differ by shaping only.
GROUPS = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
CORRECT = [False] * 4 + [True, False, False, False] + [True, True, True, False] + [True] * 4
REWARDS = [0.0] * 4 + [1.0, 0.0, 0.0, 0.0] + [1.0, 1.0, 1.0, 0.0] + [1.0, 1.0, 1.0, 1.0]


def test_group_pass_rates():
    assert group_pass_rates(GROUPS, CORRECT) == {0: 0.0, 1: 0.25, 2: 0.75, 3: 1.0}


def test_dynamic_sampling_drops_groups_with_equal_rewards():
    assert groups_to_keep(GROUPS, REWARDS, CORRECT, "dynamic") == {1, 2}
    shaped = REWARDS[:12] + [1.0, 0.9, 1.0, 1.0]  # a length penalty gives group 3 signal again
    assert groups_to_keep(GROUPS, shaped, CORRECT, "dynamic") == {1, 2, 3}
    # DAPO's accuracy filter: all-right and all-wrong groups go, whatever shaping did to them
    assert groups_to_keep(GROUPS, shaped, CORRECT, "dynamic", metric="correct") == {1, 2}
    with pytest.raises(ValueError, match="filter metric"):
        groups_to_keep(GROUPS, shaped, CORRECT, "dynamic", metric="acc")


def test_pass_rate_band_is_inclusive():
    assert groups_to_keep(GROUPS, REWARDS, CORRECT, "pass_rate", 0.25, 0.75) == {1, 2}
    assert groups_to_keep(GROUPS, REWARDS, CORRECT, "pass_rate", 0.5, 1.0) == {2, 3}
    assert groups_to_keep(GROUPS, REWARDS, CORRECT, "none") == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="unknown group filter"):
        groups_to_keep(GROUPS, REWARDS, CORRECT, "sometimes")


def test_tracker_ema_and_outside():
    tracker = PassRateTracker(decay=0.5)
    tracker.update({"a": 1.0, "b": 0.0})
    tracker.update({"a": 0.5})
    assert tracker.rates == {"a": 0.75, "b": 0.0}  # 0.5 * 1.0 + 0.5 * 0.5
    assert tracker.outside("b", 0.25, 0.75) and not tracker.outside("a", 0.25, 0.75)
    assert not tracker.outside("never-seen", 0.25, 0.75)
    copy = PassRateTracker()
    copy.load_state_dict(tracker.state_dict())
    assert copy.rates == tracker.rates and copy.decay == 0.5


def test_curriculum_moves_one_level_per_full_window():
    cur = Curriculum(value=3, minimum=2, maximum=4, target_low=0.3, target_high=0.8, window=2)
    assert cur.observe(0.9) == 3       # window not full yet
    assert cur.observe(0.95) == 4      # mean 0.925 > 0.8: harder
    assert cur.observe(0.9) == 4       # window restarted
    assert cur.observe(0.9) == 4       # at the maximum already
    assert cur.observe(0.1) == 4 and cur.observe(0.2) == 3  # mean 0.15 < 0.3: easier
    assert cur.observe(0.5) == 3 and cur.observe(0.6) == 3  # inside the band: stays
    with pytest.raises(ValueError):
        Curriculum(value=9, minimum=2, maximum=4, target_low=0.3, target_high=0.8, window=2)


def _rl_records(run_dir):
    return [m for m in RunDir(run_dir).read("metrics.jsonl") if m["stage"] == "rl"]


def test_fixed_problems_repeat_every_step(tmp_path, tiny_overrides):
    run_dir = tmp_path / "few"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "data.fixed_problems=2",
                 "logging.samples_per_step=16", "rl.steps=3"]) == 0
    samples = [s for s in RunDir(run_dir).read("samples.jsonl") if s["stage"] == "rl"]
    ids_per_step = {}
    for s in samples:
        ids_per_step.setdefault(s["step"], set()).add(s["problem_id"])
    assert len(ids_per_step) == 3
    assert all(ids == ids_per_step[1] for ids in ids_per_step.values()) and len(ids_per_step[1]) == 2


def test_filter_rounds_and_empty_steps_are_logged(tmp_path, tiny_overrides):
    # A tiny untrained model is never right: every group has equal rewards, so the dynamic
    # filter keeps nothing, spends all its rounds, and the step trains on nothing.
    run_dir = tmp_path / "dyn"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "data.filter=dynamic",
                 "data.max_rounds=2", "rl.steps=2"]) == 0
    rl = _rl_records(run_dir)
    assert [m["rollout_rounds"] for m in rl] == [2.0, 2.0]
    assert [m["filter_kept_frac"] for m in rl] == [0.0, 0.0]
    # Round 1 asks for the 4 missing groups again: 2 rounds x 4 prompts x 4 samples.
    assert [m["samples_generated_total"] for m in rl] == [32, 64]


def test_curriculum_lowers_difficulty_when_too_hard(tmp_path, tiny_overrides):
    # The tiny model never passes (pass rate 0 < target_low), so each 1-step window lowers
    # max_digits by one until the minimum.
    run_dir = tmp_path / "cur"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "task.params={min_digits: 1, max_digits: 3}",
                 "data.curriculum={param: max_digits, minimum: 1, maximum: 4, target_low: 0.5, target_high: 0.9, window: 1}",
                 "rl.steps=3"]) == 0
    assert [m["curriculum/max_digits"] for m in _rl_records(run_dir)] == [2.0, 1.0, 1.0]


def test_curriculum_bounds_must_be_valid_task_settings(tmp_path, tiny_overrides, capsys):
    # addition needs min_digits <= max_digits: max_digits may not go below the default min_digits=2.
    assert main(["train", "--output-dir", str(tmp_path / "r"), *tiny_overrides,
                 "data.curriculum={param: max_digits, minimum: 1, maximum: 3}"]) == 2
    assert "data.curriculum: max_digits=1" in capsys.readouterr().err


def test_mix_task_weights_splits_and_per_task_metrics(tmp_path, tiny_overrides):
    from rlvr.tasks import TASKS
    from rlvr.typed_yaml import from_dict

    mix_cls = TASKS.get("mix")
    params = from_dict(mix_cls.Params, {"tasks": [{"name": "addition", "weight": 3},
                                                  {"name": "sort", "weight": 1, "params": {"max_length": 3}}]})
    mix = mix_cls(params)
    drawn = mix.sample_problems(8, seed=0)
    assert sorted(p.metadata["task"] for p in drawn).count("addition") == 6  # 8 * 3/4
    problem = next(p for p in drawn if p.metadata["task"] == "sort")
    demo = mix.demonstration(problem, __import__("random").Random(0))
    assert mix.score(problem, demo).correct and problem.id.startswith("sort/")
    excluded = mix.sample_problems(8, seed=1, exclude=frozenset(p.id for p in drawn))
    assert not {p.id for p in excluded} & {p.id for p in drawn}

    run_dir = tmp_path / "mix"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "task.name=mix",
                 "task.params={tasks: [{name: addition, weight: 1}, {name: sort, weight: 1}]}", "rl.steps=1"]) == 0
    rl = _rl_records(run_dir)
    assert {"accuracy/addition", "accuracy/sort"} <= rl[0].keys()
    final = RunDir(run_dir).load_state()["evals"]["final"]
    assert {"greedy_accuracy/addition", "greedy_accuracy/sort"} <= final.keys()


def test_lim_scores_by_hand():
    from rlvr.data.limr import lim_scores, select

    curves = {"a": [0.0, 0.5, 1.0], "b": [0.0, 0.0, 0.0], "c": [0.5, 0.5, 0.5]}
    # r_avg = [1/6, 1/3, 1/2]; denominator = (5/6)^2 + (2/3)^2 + (1/2)^2 = 25/36 + 16/36 + 9/36 = 50/36
    # a: (1/6)^2 + (1/6)^2 + (1/2)^2 = 11/36 -> 1 - 11/50 = 0.78
    # b: (1/6)^2 + (1/3)^2 + (1/2)^2 = 14/36 -> 1 - 14/50 = 0.72
    # c: (1/3)^2 + (1/6)^2 + 0        =  5/36 -> 1 -  5/50 = 0.90
    scores = lim_scores(curves)
    assert scores == pytest.approx({"a": 0.78, "b": 0.72, "c": 0.90})
    assert select(scores, 0.75) == ["c", "a"]
    assert lim_scores({"a": [1.0, 1.0], "b": [1.0]}) == {"a": 0.0, "b": 0.0}  # K = 1, all solved


def test_limr_selection_from_a_run_then_training_on_it(tmp_path, tiny_overrides, capsys):
    import json

    data = tmp_path / "math.jsonl"
    with open(data, "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"id": f"q{i}", "question": f"{i}+1", "answer": str(i + 1),
                                 "solution": f"\\\\boxed{{{i + 1}}}"}) + "\n")
    params = f"{{path: '{data}', solution_field: solution, heldout_fraction: 0.2, prompt_template: '{{question}}'}}"
    common = [*tiny_overrides, "task.name=math", f"task.params={params}", "eval.problems=2", "eval.samples=0"]
    first = tmp_path / "epochs"
    assert main(["train", "--output-dir", str(first), *common, "data.fixed_problems=4", "rl.steps=3"]) == 0
    rates = RunDir(first).read("pass_rates.jsonl")
    assert [r["step"] for r in rates] == [1, 2, 3] and all(len(r["rates"]) == 4 for r in rates)

    ids_file = tmp_path / "limr.json"
    assert main(["limr", str(first), "--threshold", "-10", "--output", str(ids_file)]) == 0
    chosen = json.loads(ids_file.read_text())
    assert sorted(chosen) == sorted(rates[0]["rates"]) and "4 of 4 problems" in capsys.readouterr().out

    second = tmp_path / "limr"
    assert main(["train", "--output-dir", str(second), *common, f"data.include_ids={ids_file}",
                 "rl.steps=2", "logging.samples_per_step=16"]) == 0
    trained = {s["problem_id"] for s in RunDir(second).read("samples.jsonl") if s["stage"] == "rl"}
    assert trained <= set(chosen)


def test_curriculum_over_a_reasoning_gym_attribute(tmp_path, tiny_overrides):
    pytest.importorskip("reasoning_gym")
    from rlvr.config import load_config
    from rlvr.data.sampler import PromptSampler
    from rlvr.training.pipeline import build_task

    config = load_config(None, ["task.name=reasoning_gym",
                                "task.params={dataset: chain_sum, size: 50, difficulty: {num_terms: 0}}",
                                "data.curriculum={param: difficulty.num_terms, minimum: 0, maximum: 2, "
                                "target_low: 0.3, target_high: 0.8, window: 1}"])
    sampler = PromptSampler(build_task(config), config, frozenset())
    terms = lambda: {p.metadata["entry"]["metadata"]["num_terms"] for p in sampler.draw(10, 0, 0)}  # noqa: E731
    easy = terms()
    groups, correct = [0, 0], [True, True]  # pass rate 1.0 > target_high: one level harder
    stats = sampler.observe({0: sampler.draw(1, 0, 0)[0]}, groups, correct)
    assert stats == {"curriculum/difficulty.num_terms": 1.0}
    assert sampler.task.params.difficulty == {"num_terms": 1}
    assert max(terms()) > max(easy)  # level 1 allows more terms than level 0
