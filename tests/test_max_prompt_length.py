"""``data.max_prompt_length`` and what a longer prompt gets (``data.overlong_prompts``):
error (named at start-up and at run time), truncate_left (TRL: the prompt's last tokens, in
rollouts, SFT and evaluation) or drop (verl's filter_overlong_prompts, on a task's data)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import rlvr
from rlvr.config import load_config
from rlvr.eval.evaluate import open_cache
from rlvr.eval.sample_cache import SamplingSettings
from rlvr.models import build_tiny_model
from rlvr.models.prompt_fit import ContextLengthError, check_prompt_lengths
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.rollout.sampling import sample_trajectories
from rlvr.rollout.trajectory import render_prompts, truncate_left
from rlvr.training.pipeline import build_task, check_names, drop_overlong, run_tokenizer
from rlvr.training.run_dir import RunDir
from rlvr.training.sft import sft_batch
from rlvr.typed_yaml import ConfigError


def test_truncate_left_keeps_each_prompts_end():
    rows = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    assert truncate_left(rows, 3) == ([[3, 4, 5], [6, 7], [8, 9, 10]], [2, 0, 0])
    assert truncate_left(rows, None) == (rows, [0, 0, 0])


def _model(tokenizer, path=None):
    model = build_tiny_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16)
    if path is not None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return model


def _setup(overrides=()):
    config = load_config(None, ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
                                "model.intermediate_size=64", *overrides])
    task, (tokenizer, _) = build_task(config), run_tokenizer(config)
    return config, task, tokenizer


def test_rollouts_and_sft_batches_see_the_prompts_last_tokens():
    config, task, tokenizer = _setup(["data.max_prompt_length=8", "data.overlong_prompts=truncate_left"])
    problems = task.sample_problems(40, seed=0)
    full = render_prompts(tokenizer, problems)
    assert {len(row) for row in full} == {7, 8, 9}  # addition's prompts: some longer than 8
    torch.manual_seed(0)
    model = _model(tokenizer)
    trajectories = sample_trajectories(KVCacheEngine(), model, tokenizer, problems, max_new_tokens=3,
                                       temperature=1.0, generator=torch.Generator().manual_seed(0),
                                       max_prompt_tokens=config.data.prompt_keep_last)
    for trajectory, row in zip(trajectories, full):
        assert trajectory.prompt_ids == row[-8:]
        assert trajectory.prompt_tokens_cut == max(0, len(row) - 8)
    assert any(t.prompt_tokens_cut for t in trajectories) and not all(t.prompt_tokens_cut for t in trajectories)
    batch = sft_batch(task, tokenizer, config, 0, frozenset())
    assert int(batch.prompt_lengths.max()) == 8
    untruncated = sft_batch(task, tokenizer, _setup()[0], 0, frozenset())
    assert int(untruncated.prompt_lengths.max()) == 9  # the same batch, uncut


def test_a_run_truncating_prompts_logs_how_many_it_cut(tmp_path, tiny_overrides):
    result = rlvr.train(overrides=[*tiny_overrides, "data.max_prompt_length=8", "data.overlong_prompts=truncate_left"],
                        output_dir=tmp_path / "run")
    rl = [m for m in RunDir(result.run_dir).read("metrics.jsonl") if m["stage"] == "rl"]
    truncated = [m["prompts_truncated"] for m in rl]
    assert len(rl) == 4 and max(truncated) > 0 and min(truncated) < 1
    assert all(4 * t == int(4 * t) for t in truncated)  # 4 prompts a step: a whole group is cut or none of it
    assert result.final_checkpoint.is_dir()


def test_an_overlong_prompt_is_an_error_naming_the_problem_before_any_work():
    config, task, _ = _setup(["data.max_prompt_length=8"])
    with pytest.raises(ConfigError, match=r"longer than data.max_prompt_length=8 tokens: problem '.+' has 9; raise "
                                          r"data.max_prompt_length, or set data.overlong_prompts to truncate_left"):
        check_names(config)
    assert check_names(_setup(["data.max_prompt_length=9"])[0]) is not None
    with pytest.raises(ConfigError, match=r"data.max_prompt_length=100 \+ rollout.max_new_tokens=40 > the model's "
                                          "128 positions"):
        check_names(_setup(["data.max_prompt_length=100"])[0])
    with pytest.raises(ConfigError, match="overlong_prompts: drop needs max_prompt_length"):
        _setup(["data.overlong_prompts=drop"])
    # at run time (a later draw, a curriculum): the same message, as the run's error
    problems = task.sample_problems(3, seed=0)
    with pytest.raises(ContextLengthError, match=f"1 of 3 RL step 5's prompts .* problem '{re.escape(problems[1].id)}' has 12"):
        check_prompt_lengths([8, 12, 3], problems, 8, "RL step 5's prompts")
    check_prompt_lengths([8, 8], problems[:2], 8, "fine")


def _prompt_file(tmp_path):
    rows = [{"id": f"p{i}", "prompt": "1+" * (2 if i % 10 else 12) + "1", "answer": str(3 if i % 10 else 13)}
            for i in range(100)]  # every tenth prompt is long
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_drop_removes_long_prompts_from_a_files_data_before_the_split(tmp_path):
    path = _prompt_file(tmp_path)
    base = ["task.name=prompts", f"task.params={{path: {path}, answer_field: answer, heldout_fraction: 0.2}}",
            "stages=[rl]", "eval.problems=10", "rollout.max_new_tokens=8"]
    _, whole, tokenizer = _setup(base)
    lengths = {p.id: len(row) for p, row in zip(whole.problems, render_prompts(tokenizer, whole.problems))}
    limit = max(n for i, n in lengths.items() if int(i[1:]) % 10)
    assert all(n > limit for i, n in lengths.items() if int(i[1:]) % 10 == 0)
    overrides = [*base, f"data.max_prompt_length={limit}", "data.overlong_prompts=drop"]
    config, task, _ = _setup(overrides)
    note = drop_overlong(task, config, tokenizer)
    assert note == (f"data.overlong_prompts=drop: 10 of 100 problems of task 'prompts' have prompts longer than "
                    f"data.max_prompt_length={limit} tokens and are left out")
    assert sorted(p.id for p in task.problems) == sorted(i for i in lengths if int(i[1:]) % 10)
    # the held-out split of what is left is the same hash split of the whole file, minus the dropped
    assert task.heldout_ids == {i for i in whole.heldout_ids if int(i[1:]) % 10}
    assert drop_overlong(task, config, tokenizer) is None  # nothing left to drop
    # the start-up check drops them from the run's task and says so
    _model(tokenizer, tmp_path / "ckpt")
    warnings = check_names(_setup([*overrides, f"model.path={tmp_path / 'ckpt'}"])[0])
    assert note in warnings
    too_short = _setup([*base, "data.max_prompt_length=2", "data.overlong_prompts=drop"])[0]
    with pytest.raises(ValueError, match="every prompt of task 'prompts' is longer"):
        drop_overlong(build_task(too_short), too_short, tokenizer)


def test_drop_is_said_at_start_up_and_refused_for_a_generated_task(tmp_path):
    config, _, _ = _setup(["data.max_prompt_length=8", "data.overlong_prompts=drop"])
    with pytest.raises(ConfigError, match="data.overlong_prompts: drop removes problems from a task's data file, and "
                                          "task 'addition' generates its problems"):
        check_names(config)


def test_truncation_is_part_of_the_eval_cache_key(tmp_path):
    config, task, tokenizer = _setup()
    model = _model(tokenizer)
    keys = []
    for keep in (None, 8):
        settings = SamplingSettings(temperature=1.0, max_new_tokens=4, batch_size=8, seed=0, max_prompt_tokens=keep)
        keys.append(open_cache(tmp_path, model, tokenizer, task, settings).directory)
    assert keys[0] != keys[1]
