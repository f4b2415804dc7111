"""Generated config fuzz: every field of RunConfig, fed bad values through the real CLI.

The cases are generated from the dataclass tree, so a field added later is covered without
touching this file, and a numeric field added without a declared range fails
``test_every_numeric_field_declares_a_range``. Each bad value must end in exactly one
stderr line ``config error: ...`` naming the field, exit status 2, and nothing created.
"""

from __future__ import annotations

import dataclasses
import math
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest

from rlvr.cli import main
from rlvr.config import RunConfig, load_config
from rlvr.typed_yaml import BOUNDS, ConfigError, dump_yaml


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """(dotted path, annotation, field) of every leaf field under ``cls``."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, tp = f"{prefix}{f.name}", hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _leaves(tp, path + ".")
        else:
            out.append((path, tp, f))
    return out


def _numeric(tp: Any) -> tuple[type | None, bool]:
    """(int or float, is a list) for a numeric annotation (``X``, ``X | None``, ``list[X]``), else (None, False)."""
    if get_origin(tp) in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        tp = options[0] if len(options) == 1 else None
    if get_origin(tp) in (list, tuple):
        element = get_args(tp)[0]
        return (element, True) if element in (int, float) else (None, False)
    return (tp, False) if tp in (int, float) else (None, False)


LEAVES = _leaves(RunConfig)
NUMERIC = [(path, *_numeric(tp), f) for path, tp, f in LEAVES if _numeric(tp)[0] is not None]


def _text(value: float) -> str:
    """``value`` as YAML override text."""
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    return repr(value)


def _step(bound: float, kind: type) -> float:
    return 1 if kind is int else max(1e-6, abs(bound) * 1e-6)


def _outside(key: str, bound: float, kind: type) -> float:
    """A value just outside the bound ``key`` (ge, gt, le, lt)."""
    step = _step(bound, kind)
    return {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[key]


def _inside(key: str, bound: float, kind: type) -> float:
    step = _step(bound, kind)
    return {"ge": bound, "gt": bound + step, "le": bound, "lt": bound - step}[key]


def _bad_cases() -> list[tuple[str, str, str]]:
    """(dotted path named in the error, override, why) for every field."""
    cases = []
    numeric_paths = {path for path, *_ in NUMERIC}
    for path, kind, is_list, f in NUMERIC:
        wrap = (lambda text: f"[{text}]") if is_list else (lambda text: text)
        named = f"{path}[0]" if is_list else path
        for key in BOUNDS:
            if f.metadata.get(key) is not None:
                value = _outside(key, f.metadata[key], kind)
                cases.append((named, f"{path}={wrap(_text(value))}", f"{key} {f.metadata[key]}"))
        cases.append((named, f"{path}={wrap('abc')}", "wrong type"))
        if kind is int:
            cases.append((named, f"{path}={wrap('1.5')}", "float for int"))
        else:
            for text in (".nan", ".inf", "-.inf", "1e999"):
                cases.append((named, f"{path}={wrap(text)}", "non-finite"))
    for path, tp, _ in LEAVES:
        if path in numeric_paths:
            continue
        base = get_origin(tp)
        if tp is bool:
            cases.append((path, f"{path}=abc", "wrong type"))
        elif base in (list, dict) or get_origin(tp) is Literal:
            cases.append((path, f"{path}=5", "wrong type"))
        else:  # str and str | None
            cases.append((path, f"{path}=[1, 2]", "wrong type"))
    return cases


BAD = _bad_cases()


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """A value the CLI wrongly accepts fails fast here instead of training for minutes."""
    def refuse(*args, **kwargs):
        raise AssertionError("the config was accepted: the CLI went on to create the run dir")

    monkeypatch.setattr("rlvr.training.pipeline.new_run_dir", refuse)


def test_every_numeric_field_declares_a_range():
    undeclared = [path for path, _, _, f in NUMERIC if not any(f.metadata.get(k) is not None for k in BOUNDS)]
    assert undeclared == []
    assert len(NUMERIC) >= 60  # the walk really reaches the nested sections


def test_the_resolved_config_documents_each_range():
    text = dump_yaml(RunConfig())
    assert "# optimizer steps per epoch; the batch is split into this many mini-batches (>= 1)\n  mini_batches: 2" in text
    assert "(> 0 and <= 1)\n  top_p: 1.0" in text
    assert "(>= 0 and < 2**63)\nseed: 0" in text


@pytest.mark.parametrize("named, override, why", BAD, ids=[f"{o} ({w})" for _, o, w in BAD])
def test_bad_value_is_one_config_error_line_and_creates_nothing(tmp_path, monkeypatch, capsys, named, override, why):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--output-dir", str(tmp_path / "run"), override]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), captured.err
    assert f" {named}: " in lines[0], lines[0]
    assert f"override {override!r}" in lines[0]  # where the value came from
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # no run dir, no default runs/ dir


# Cross-field checks that a value at the edge of its own range needs from another field.
COMPANIONS = {
    "model.hidden_size": ["model.num_heads=1"],
    "model.num_heads": ["model.hidden_size=2048"],
    "data.curriculum.maximum": ["data.curriculum.minimum=0"],
    "data.curriculum.target_low": ["data.curriculum.target_high=1.0"],
    "data.curriculum.target_high": ["data.curriculum.target_low=0.0"],
    "data.pass_rate_low": ["data.pass_rate_high=1.0"],
    "data.pass_rate_high": ["data.pass_rate_low=0.0"],
    "algorithm.kl.target": ["algorithm.kl.coef=0.1"],
    # a teacher needs a coefficient and a coefficient a teacher: which one depends on the value
    "teacher.coef": lambda value: ["teacher.path=teacher-dir"] if value > 0 else [],
    "teacher.sft_steps": lambda value: ["teacher.coef=0.1"] if value > 0 else [],
    "teacher.rl_steps": lambda value: ["teacher.sft_steps=1", "teacher.coef=0.1"] if value > 0 else [],
}


@pytest.mark.parametrize("path, kind, is_list, f", NUMERIC, ids=[n[0] for n in NUMERIC])
def test_values_at_the_edge_of_the_range_load(path, kind, is_list, f):
    for key in BOUNDS:
        if f.metadata.get(key) is None:
            continue
        value = _inside(key, f.metadata[key], kind)
        text = f"[{_text(value)}]" if is_list else _text(value)
        companions = COMPANIONS.get(path, [])
        config = load_config(None, [f"{path}={text}", *(companions(value) if callable(companions) else companions)])
        loaded = config
        for part in path.split("."):
            loaded = getattr(loaded, part)
        assert loaded == ([value] if is_list else value)


# ----------------------------------------------------------------------------- cross-field checks


@pytest.mark.parametrize("overrides, blamed, words", [
    (["rl.prompts_per_step=3", "rl.samples_per_prompt=3", "rl.mini_batches=2"], "rl.prompts_per_step",
     "(9) must be divisible by mini_batches (2)"),
    (["model.hidden_size=12", "model.num_heads=4"], "model.hidden_size", "must be even"),
    (["model.hidden_size=130", "model.num_heads=4"], "model.hidden_size", "divisible by num_heads"),
    (["data.curriculum.minimum=5", "data.curriculum.maximum=4"], "data.curriculum.minimum", "must be <= maximum"),
    (["data.curriculum.target_low=0.8", "data.curriculum.target_high=0.5"], "data.curriculum.target_low",
     "must be < target_high"),
    (["data.pass_rate_low=0.9"], "data.pass_rate_low", "must be <= pass_rate_high (0.75)"),
    (["data.fixed_problems=3", "data.include_ids=ids.json"], "data.fixed_problems", "set one of them"),
    (["algorithm.kl.target=0.01"], "algorithm.kl.target", "needs coef > 0"),
    (["algorithm.pass_k=9"], "algorithm.pass_k", "must be <= rl.samples_per_prompt"),
    (["eval.ks=[1, 16]"], "eval.ks", "[16] outside [1, samples = 8]"),
])
def test_cross_field_checks_name_the_field_given(overrides, blamed, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert info.value.path == blamed and f": {blamed}: " in message and words in message, message
    assert "\n" not in message


def test_cross_field_error_points_at_the_file_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("rl:\n  steps: 3\n  mini_batches: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} line 3: rl.mini_batches: invalid RLConfig: ")


def test_task_params_ranges_apply_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for override, words in [("task.params.max_digits=0", "task.params: max_digits: must be >= 1, got 0"),
                            ("task.params.teacher_carry_error=.nan", "teacher_carry_error: expected a finite float"),
                            ("task.params.min_digits=5", "min_digits (5) must be <= max_digits (4)")]:
        assert main(["train", "--output-dir", str(tmp_path / "run"), override]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("config error: ") and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_reward_weights_must_be_finite():
    with pytest.raises(ConfigError, match=r"reward\.components\.correctness: expected a finite float, got float nan"):
        load_config(None, ["reward.components={correctness: .nan}"])


# ----------------------------------------------------------------------------- files and data


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a UTF-8 text file"),
    (b"seed: 1\x00\x00\x01", "a NUL byte: this is a binary file"),
    (b"a: &x [*x]\n", "refers to a node that contains it"),
    (b"- 1\n- 2\n", "the top level must be a mapping"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
])
def test_unreadable_config_file_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys, content, words):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    assert main(["train", "--config", str(bad), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"config error: {bad}") and words in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def _math_file(tmp_path: Path, questions: list[str]) -> Path:
    import json

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "1", "solution": "\\boxed{1}"}) + "\n"
                            for i, q in enumerate(questions)))
    return data


def test_unencodable_character_is_a_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = _math_file(tmp_path, [f"{i}+0" for i in range(20)] + ["What is 2\u00b2 - 3?"])
    params = f"{{path: '{data}', solution_field: solution, heldout_fraction: 0.0, prompt_template: '{{question}}'}}"
    overrides = ["task.name=math", f"task.params={params}", "eval.problems=1", "rl.prompts_per_step=20",
                 "rl.samples_per_prompt=2", "rl.mini_batches=1", "sft.batch_size=4"]
    assert main(["train", "--output-dir", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("config error: "), err
    assert "problem 'q20' contains '\u00b2' (U+00B2), which the tokenizer cannot encode" in err
    assert [p.name for p in tmp_path.iterdir()] == ["math.jsonl"]


def test_prompt_longer_than_the_context_is_a_config_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--output-dir", str(tmp_path / "run"), "model.max_position_embeddings=48"]) == 2
    err = capsys.readouterr().err
    # the default prompt '<|user|>123+456<|assistant|>' is 9 tokens; 9 + 40 > 48
    assert err.count("\n") == 1 and "prompt tokens + rollout.max_new_tokens 40 > 48 positions" in err, err
    assert list(tmp_path.iterdir()) == []
    # 9 + 20 fits the prompts, but a worked-sum SFT demonstration ('2+2=4 8+4=12 => 124', up to
    # 30 characters) with its prompt and EOS does not fit 36 positions
    from rlvr.training.pipeline import check_names

    with pytest.raises(ConfigError, match=r"SFT demonstration of problem '.*' with its prompt is \d+ tokens > 36"):
        check_names(load_config(None, ["model.max_position_embeddings=36", "rollout.max_new_tokens=20"]))


def test_missing_data_file_fails_before_the_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--output-dir", str(tmp_path / "run"), "task.name=math",
                 f"task.params={{path: '{tmp_path / 'nope.jsonl'}'}}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.jsonl" in err and "no such file" in err, err
    assert list(tmp_path.iterdir()) == []


def test_sft_without_demonstrations_fails_before_the_run_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = _math_file(tmp_path, [f"{i}+0" for i in range(10)])
    assert main(["train", "--output-dir", str(tmp_path / "run"), "task.name=math",
                 f"task.params={{path: '{data}', heldout_fraction: 0.2}}", "eval.problems=1",
                 "rl.prompts_per_step=2", "sft.batch_size=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stages: the 'sft' stage needs demonstrations" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["math.jsonl"]


def test_eval_checks_each_models_context_before_loading_it(tmp_path, capsys):
    from rlvr.models import build_char_tokenizer, build_tiny_model

    checkpoint = tmp_path / "short"
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16,
                     max_position_embeddings=32).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    capsys.readouterr()  # the 'Writing model shards' bar
    out = tmp_path / "eval-out"
    assert main(["eval", str(checkpoint), "--output-dir", str(out), "eval.problems=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("config error: "), err
    assert "held-out problems, model short" in err and "+ rollout.max_new_tokens 40 > 32 positions" in err
    assert not out.exists()
    assert main(["eval", str(checkpoint), "--output-dir", str(out), "eval.problems=4", "rollout.temperature=.nan"]) == 2
    assert "rollout.temperature: expected a finite float" in capsys.readouterr().err
