"""Warm starts reused across runs: the same SFT config, data, seed and code train once."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.training import warmstart_cache
from rlvr.training.run_dir import RunDir


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RLVR_NO_WARMSTART_CACHE", raising=False)
    return tmp_path / "cache" / "warmstarts"


def _sft(run_dir):
    return [m for m in RunDir(run_dir).read("metrics.jsonl") if m["stage"] == "sft"]


def _weights(run_dir):
    return load_file(run_dir / "checkpoints" / "sft-final" / "model.safetensors")


def test_a_second_recipe_reuses_the_first_ones_warm_start(tmp_path, cache, tiny_overrides, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "a"), *tiny_overrides]) == 0
    assert "SFT: reused" not in capsys.readouterr().out and len(list(cache.iterdir())) == 1
    assert main(["train", "--output-dir", str(tmp_path / "b"), *tiny_overrides, "algorithm.clip_high=0.28"]) == 0
    out = capsys.readouterr().out
    assert f"SFT: reused the warm start cached at {cache}" in out
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("step_time", "tokens_per_s")} for r in records]
    assert strip(_sft(tmp_path / "b")) == strip(_sft(tmp_path / "a")) and len(_sft(tmp_path / "a")) == 4
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    evals = [json.loads(line) for line in (tmp_path / "b" / "eval.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (tmp_path / "a" / "eval.jsonl").read_text().splitlines()]
    assert evals[0]["greedy_accuracy"] == first[0]["greedy_accuracy"]  # the same warm start, evaluated
    assert RunDir(tmp_path / "b").load_state()["sft_cache"] == str(next(cache.iterdir()))


def test_what_changes_the_warm_start_trains_it_again(tmp_path, cache, tiny_overrides, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "a"), *tiny_overrides]) == 0
    for run, extra in (("steps", ["sft.steps=5"]), ("seed", ["seed=1"]), ("task", ["task.params.max_digits=4"]),
                       ("off", ["sft.cache=false"])):
        capsys.readouterr()
        assert main(["train", "--output-dir", str(tmp_path / run), *tiny_overrides, *extra]) == 0
        assert "SFT: reused" not in capsys.readouterr().out, run
    assert len(list(cache.iterdir())) == 4  # a, steps, seed, task (sft.cache=false stores nothing)


def test_the_key_covers_the_data_files_bytes(tmp_path, cache):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    config = load_config(None, ["task.name=math", f"task.params={{path: {data}}}"])
    key = warmstart_cache.warmstart_key(config)
    assert warmstart_cache.warmstart_key(config) == key
    data.write_text('{"question": "1+1", "answer": "3"}\n')
    assert warmstart_cache.warmstart_key(config) != key
    assert warmstart_cache.warmstart_key(load_config(None, ["task.name=math", f"task.params={{path: {data}}}",
                                                            "rl.steps=3", "sft.cache=false"])) == \
        warmstart_cache.warmstart_key(load_config(None, ["task.name=math", f"task.params={{path: {data}}}"]))


def test_a_store_killed_mid_copy_is_cleaned_up_by_the_next(tmp_path, cache, tiny_overrides):
    import os
    import time

    cache.mkdir(parents=True)
    abandoned, fresh = cache / ".tmp-killed", cache / ".tmp-in-progress"
    (abandoned / "model").mkdir(parents=True)
    fresh.mkdir()
    hours_ago = time.time() - 2 * 3600
    os.utime(abandoned, (hours_ago, hours_ago))
    assert main(["train", "--output-dir", str(tmp_path / "a"), *tiny_overrides, "rl.steps=1"]) == 0
    assert not abandoned.exists() and fresh.exists()  # another process's store may still be copying
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".tmp-")] == [
        warmstart_cache.warmstart_key(load_config(None, [*tiny_overrides, "rl.steps=1"]))]


def test_the_prompt_length_settings_are_in_the_key():
    base = load_config(None, [])
    keys = {warmstart_cache.warmstart_key(load_config(None, extra)) for extra in
            ([], ["data.max_prompt_length=8"], ["data.max_prompt_length=8", "data.overlong_prompts=truncate_left"])}
    assert len(keys) == 3 and warmstart_cache.warmstart_key(base) in keys


def test_a_starting_checkpoint_written_again_at_the_same_path_is_another_key(tmp_path):
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"first weights")
    config = load_config(None, [f"model.path={checkpoint}"])
    key = warmstart_cache.warmstart_key(config)
    assert warmstart_cache.warmstart_key(config) == key
    (checkpoint / "model.safetensors").write_bytes(b"other weights, longer")
    assert warmstart_cache.warmstart_key(config) != key
