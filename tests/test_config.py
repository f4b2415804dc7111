"""Tests for rlvr.config (typed run config), check_names/build_task and the CLI's error paths."""

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.config import ConfigError, RunConfig, load_config, save_config
from rlvr.tasks.addition import AdditionTask
from rlvr.training.pipeline import build_task, check_names
from rlvr.typed_yaml import dump_yaml, missing_help

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_every_field_documented():
    assert missing_help(RunConfig) == []


def test_defaults_without_file():
    config = load_config()
    assert config == RunConfig()
    assert config.algorithm.advantage == "grpo" and config.algorithm.loss == "ppo"
    assert config.algorithm.kl.estimator == "k3"
    assert config.rollout.engine == "kv_cache"
    assert config.task.name == "addition"
    assert config.stages == ["sft", "rl"]
    check_names(config)  # the defaults name only registered components


def test_defaults_do_not_share_mutable_state():
    a, b = RunConfig(), RunConfig()
    a.task.params["max_digits"] = 9
    a.stages.append("rl")
    assert b.task.params["max_digits"] == 3
    assert b.stages == ["sft", "rl"]


def test_unknown_nested_key_names_field_file_and_line(tmp_path):
    path = _write(tmp_path, """
        seed: 1
        algorithm:
          clip_low: 0.2
          clip_hihg: 0.3
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    message = str(err)
    assert "algorithm.clip_hihg" in message
    assert str(path) in message
    assert "line 4" in message
    assert "clip_high" in message  # the did-you-mean hint
    assert (err.path, err.line, err.source) == ("algorithm.clip_hihg", 4, str(path))


def test_ill_typed_value_names_field_file_and_line(tmp_path):
    path = _write(tmp_path, """
        rl:
          prompts_per_step: 4
          steps: ten
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "rl.steps" in message and str(path) in message and "line 3" in message
    assert "expected int" in message and "'ten'" in message


def test_file_then_overrides(tmp_path):
    path = _write(tmp_path, """
        rl:
          steps: 10
        algorithm:
          clip_high: 0.25
    """)
    config = load_config(path, ["algorithm.clip_high=0.28", "rollout.temperature=0.7"])
    assert config.algorithm.clip_high == 0.28
    assert config.rl.steps == 10
    assert config.rollout.temperature == 0.7
    expected = RunConfig()
    expected.rl.steps, expected.algorithm.clip_high, expected.rollout.temperature = 10, 0.28, 0.7
    assert config == expected
    assert load_config(None, ["algorithm.clip_high=0.28"]).algorithm.clip_high == 0.28


def test_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="samples_per_prompt") as info:
        load_config(None, ["rl.samples_per_prompt=1"])
    assert "rl.samples_per_prompt=1" in str(info.value)  # where the bad value came from
    path = _write(tmp_path, "rollout:\n  top_p: 1.5\n")
    with pytest.raises(ConfigError, match="top_p") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="mini_batches"):
        load_config(None, ["rl.prompts_per_step=3", "rl.samples_per_prompt=3", "rl.mini_batches=2"])
    with pytest.raises(ConfigError, match=r"stages\[1\] \(rl\): 'seed' cannot differ between stages"):
        load_config(None, ["stages=[sft, {rl: {seed: 3}}]"])
    assert load_config(None, ["stages=[rl, sft]"]).stage_kinds() == ["rl", "sft"]  # Metis-RISE's order
    with pytest.raises(ConfigError, match="model.architecture"):
        load_config(None, ["model.architecture=gpt2"])


def test_save_load_round_trip(tmp_path):
    config = load_config(None, ["algorithm.clip_high=0.28", "task.params.max_digits=5", "run_name=x"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_check_names_rejects_unknown_advantage():
    config = load_config(None, ["algorithm.advantage=gpro"])
    with pytest.raises(ConfigError) as info:
        check_names(config, "my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml")
    assert "algorithm.advantage" in message and "'gpro'" in message
    assert "grpo" in message and "rloo" in message  # lists what is registered


@pytest.mark.parametrize("override, field", [
    ("reward.components={correctness: 1.0, lenght: 0.1}", "reward.components"),
    ("rollout.engine=vllm", "rollout.engine"),
    ("algorithm.loss=grpo", "algorithm.loss"),
    ("algorithm.loss_agg=mean", "algorithm.loss_agg"),
    ("algorithm.kl.estimator=k4", "algorithm.kl.estimator"),
    ("task.name=sudoku", "task.name"),
])
def test_check_names_rejects_every_unknown_component(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        check_names(load_config(None, [override]))


def test_check_names_rejects_unknown_task_param():
    config = load_config(None, ["task.params.max_digit=5"])
    with pytest.raises(ConfigError) as info:
        check_names(config, "my.yaml")
    message = str(info.value)
    assert "task.params" in message and "max_digit" in message and "max_digits" in message
    bad_value = load_config(None, ["task.params.teacher_carry_error=1.5"])
    with pytest.raises(ConfigError, match="teacher_carry_error"):
        check_names(bad_value)


def _tiny_checkpoint(path: Path, max_positions: int = 64) -> Path:
    from rlvr.models import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16,
                     max_position_embeddings=max_positions).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_check_names_needs_sft_for_a_fresh_model(tmp_path):
    with pytest.raises(ConfigError, match="sft"):
        check_names(load_config(None, ["stages=[rl]"]))
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    check_names(load_config(None, ["stages=[rl]", f"model.path={checkpoint}"]))
    # a model.path that is not a checkpoint used to pass here and fail after the run dir existed
    with pytest.raises(ConfigError, match=r"model\.path: '/some/checkpoint' is not a Hugging Face checkpoint"):
        check_names(load_config(None, ["stages=[rl]", "model.path=/some/checkpoint"]))
    # the checkpoint's own context (64 positions) is what prompts are measured against
    with pytest.raises(ConfigError, match="> 64 positions"):
        check_names(load_config(None, ["stages=[rl]", f"model.path={checkpoint}", "rollout.max_new_tokens=60"]))


def test_build_task_uses_params():
    task = build_task(load_config(None, ["task.params={min_digits: 3, max_digits: 5}"]))
    assert isinstance(task, AdditionTask)
    assert task.params == AdditionTask.Params(min_digits=3, max_digits=5, teacher_carry_error=0.0)
    default = build_task(RunConfig())
    assert dataclasses.asdict(default.params) == RunConfig().task.params


def test_default_recipe_is_the_defaults():
    # recipes/default.yaml is the dump of RunConfig(): the defaults ARE the default recipe
    assert load_config(REPO / "recipes" / "default.yaml") == RunConfig()
    # and it lists every field with its help, as dump_yaml writes them (a new field is not left out)
    text = (REPO / "recipes" / "default.yaml").read_text()
    assert text.split("\nseed:", 1)[1] == dump_yaml(RunConfig()).split("\nseed:", 1)[1]


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("text, field", [
    ("algorithm:\n  clip_hihg: 0.3\n", "algorithm.clip_hihg"),
    ("rl:\n  steps: ten\n", "rl.steps"),
    ("algorithm:\n  advantage: gpro\n", "algorithm.advantage"),
    ("task:\n  params:\n    max_digit: 5\n", "max_digit"),
])
def test_cli_train_config_error(tmp_path, monkeypatch, capsys, text, field):
    monkeypatch.chdir(tmp_path)
    bad = _write(tmp_path, text, "bad.yaml")
    assert main(["train", "--config", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "config error" in captured.err
    assert field in captured.err
    assert "run dir" not in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no run directory


def test_cli_bad_override_and_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "rl.samples_per_prompt=1"]) == 2
    assert "samples_per_prompt" in capsys.readouterr().err
    assert main(["sft", "--config", "nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "nope.yaml" in err and "no such file" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    # a keyword the function does not take, one it needs, a NaN: each used to fail (or be
    # taken) only when the first batch was scored, after the run directory existed
    (["reward.params={correctness: {x: 1}}"], r"reward\.params: reward component 'correctness': .*'x'"),
    (["reward.components={regex_format: 1}"], r"reward\.params: reward component 'regex_format': .*'pattern'"),
    (["reward.components={tool_calls: -0.1}", "reward.params={tool_calls: {cap: .nan}}"],
     r"reward component 'tool_calls': cap must be a finite number, got nan"),
    (["reward.shaping=[{name: overlong, params: {bogus: 1}}]"], r"reward\.shaping\[0\] \(overlong\): .*'buffer'"),
    (["reward.shaping=[{name: overlong, params: {buffer: -5}}]"], r"reward\.shaping\[0\] \(overlong\): .*got -5"),
    (["reward.shaping=[{name: laser, params: {target_length: 8}}, {name: label_noise, params: {p: 2}}]"],
     r"reward\.shaping\[1\] \(label_noise\): .*probability"),
    (["reward.shaping=[{name: laser, params: {target_length: .nan}}]"],
     r"reward\.shaping\[0\] \(laser\): target_length must be a finite number, got nan"),
    (["reward.shaping=[{name: otc, params: {c: 0}}]"], r"reward\.shaping\[0\] \(otc\): otc: c must be > 0"),
])
def test_check_names_checks_reward_and_shaper_params(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_names(load_config(None, overrides))


def test_check_names_accepts_good_reward_and_shaper_params():
    check_names(load_config(None, ["reward.components={correctness: 1, regex_format: 0.1}",
                                   "reward.params={regex_format: {pattern: '.*'}}",
                                   "reward.shaping=[{name: overlong, params: {buffer: 8}}, {name: laser_d, params: {interval: 4}}]"]))
    check_names(load_config(None, ["rollout.environment.name=python", "reward.shaping=[{name: otc}]"]))
    check_names(load_config(None, ["reward.shaping=[{name: otc}]"]))  # single-turn: every episode has 0 calls


def test_environment_params_without_an_environment_are_an_error():
    with pytest.raises(ConfigError, match=r"rollout\.environment\.params: .*no environment is named"):
        load_config(None, ["rollout.environment.params={max_output_chars: 100}"])


def test_a_draw_larger_than_the_task_can_make_fails_in_seconds():
    # 1-digit addition has 100 distinct problems (0-9 + 0-9); asking for 200 used to draw 21,000 times
    # (fine), asking for 10**8 drew for hours: a long run of repeats now ends the draw
    task = build_task(load_config(None, ["task.params={min_digits: 1, max_digits: 1}"]))
    with pytest.raises(ValueError, match=r"could only produce 100 distinct problems of the 100000000"):
        task.sample_problems(10**8, seed=0)


@pytest.mark.parametrize("damage, says", [
    ("truncate-header", "model.safetensors' is damaged"),
    ("truncate-data", "model.safetensors' is damaged (Error while deserializing header: incomplete metadata"),
    ("no-weights", "has no weights"),
    ("no-tokenizer", "cannot load its tokenizer"),
])
def test_a_damaged_model_path_is_a_config_error_before_the_run_dir(tmp_path, capsys, damage, says):
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt")
    weights = checkpoint / "model.safetensors"
    if damage == "truncate-header":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "truncate-data":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "no-weights":
        weights.unlink()
    else:
        for file in checkpoint.glob("tokenizer*"):
            file.unlink()
    run = tmp_path / "run"
    capsys.readouterr()  # (the checkpoint writer's progress bar)
    assert main(["train", "--output-dir", str(run), f"model.path={checkpoint}", "stages=[rl]"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("config error: ") and says in err[0], err
    assert not run.exists()


def test_a_tiny_model_too_large_for_memory_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model: the tiny model would have .*B parameters and need about .* GiB"):
        check_names(load_config(None, ["model.hidden_size=65536", "model.num_layers=64", "model.num_heads=64"]))


def test_a_shaper_that_fails_in_another_way_on_its_params_is_a_config_error(tmp_path):
    recipe = tmp_path / "r.yaml"  # an int too large for a tensor: OverflowError, not a ValueError
    recipe.write_text("reward: {shaping: [{name: laser, params: {target_length: 100000000000000000000000}}]}\n")
    with pytest.raises(ConfigError, match=r"reward\.shaping\[0\] \(laser\): OverflowError: "):
        check_names(load_config(recipe))


def test_a_later_batch_longer_than_the_context_stops_the_run_with_one_line(tmp_path, capsys, tiny_overrides):
    # the start-up check renders step 0's batch (longest: 126 tokens, which fits); SFT step 5
    # draws a 127-token demonstration: it used to be trained on silently past the positions
    run = tmp_path / "run"
    args = ["train", "--output-dir", str(run), *tiny_overrides, "sft.steps=6", "sft.batch_size=8",
            "task.params={min_digits: 1, max_digits: 12, teacher_carry_error: 0.6}", "model.max_position_embeddings=126",
            "logging.progress=false"]
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: SFT step 5: a prompt + its demonstration is 127 tokens, longer than the model's "
                          "126 positions (1 of 8 sequences)") and err.endswith(f"(traceback: {run / 'error.log'})"), err


def test_check_fits_context_names_the_longest_and_counts():
    from rlvr.models.prompt_fit import ContextLengthError, check_fits_context

    check_fits_context([10, 64, 3], 64, "RL step 2: a prompt + rollout.max_new_tokens")
    check_fits_context([10_000], None, "a model without a position limit")
    with pytest.raises(ContextLengthError, match=r"^RL step 2: a prompt \+ rollout.max_new_tokens is 70 tokens, "
                                                 r"longer than the model's 64 positions \(2 of 3 sequences\)"):
        check_fits_context([65, 70, 3], 64, "RL step 2: a prompt + rollout.max_new_tokens")


def test_an_error_in_an_override_names_the_override(tmp_path, capsys):
    for override, field in (("task.name=nosuch", "task.name"), ("rollout.engine=nosuch", "rollout.engine"),
                            ("algorithm.loss=nosuch", "algorithm.loss"), ("stages=[rl]", "stages")):
        assert main(["train", "--output-dir", str(tmp_path / "r"), override]) == 2
        err = capsys.readouterr().err
        assert f"command line override {override!r}: {field}" in err, err
        assert "default recipe" not in err
    assert not (tmp_path / "r").exists()
    # the recipe is named when the field came from it
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("algorithm:\n  loss: nosuch\n")
    assert main(["train", "--config", str(recipe), "--output-dir", str(tmp_path / "r"), "rl.steps=3"]) == 2
    assert f"{recipe}: algorithm.loss: unknown" in capsys.readouterr().err


def test_naming_another_task_drops_the_recipes_task_params(tmp_path):
    assert load_config(None, ["task.name=countdown"]).task.params == {}  # not addition's min_digits
    assert load_config(None, ["task.name=addition"]).task.params == RunConfig().task.params
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task:\n  name: countdown\n  params: {num_numbers: 3}\n")
    assert load_config(recipe, ["task.name=sort"]).task.params == {}
    assert load_config(recipe, ["task.name=countdown"]).task.params == {"num_numbers": 3}
    assert load_config(recipe, ["task.name=sort", "task.params={max_len: 4}"]).task.params == {"max_len": 4}
    (tmp_path / "s.yaml").write_text("task:\n  name: sort\n")  # a recipe naming a task without params
    assert load_config(tmp_path / "s.yaml").task.params == {}
    check_names(load_config(None, ["task.name=countdown"]))  # builds: no unknown 'min_digits'


def test_a_config_typo_is_reported_before_torch_is_imported(tmp_path):
    code = ("import sys; from rlvr.cli import main; code = main(['train', 'rl.stepz=3']); "
            "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
    assert "did you mean" in done.stderr or "rl.steps" in done.stderr
