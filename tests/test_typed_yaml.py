"""Tests for rlvr.typed_yaml: strict YAML <-> dataclass conversion with located errors."""

# Postponed annotations on purpose: typed_yaml must resolve string annotations.
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from rlvr.typed_yaml import (
    ConfigError,
    apply_overrides,
    dump_yaml,
    field_help,
    from_dict,
    load_yaml_config,
    missing_help,
    parse_yaml,
    to_dict,
)


@dataclass
class ModelConfig:
    hidden_size: int = field(default=128, metadata={"help": "width of the residual stream (units)"})
    path: str | None = field(default=None, metadata={"help": "checkpoint to load, or none"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})

    def __post_init__(self) -> None:
        if self.hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {self.hidden_size}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "policy model"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    stages: list[str] = field(default_factory=lambda: ["sft", "rl"], metadata={"help": "stages to run"})
    layers: list[int] = field(default_factory=list, metadata={"help": "layer ids to probe"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "run mode\nsecond help line"})
    seed: Optional[int] = field(default=None, metadata={"help": "random seed; none = nondeterministic"})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "reward weights"})
    shape: tuple[int, ...] = field(default=(2, 3), metadata={"help": "mesh shape"})
    extra: Any = field(default=None, metadata={"help": "free-form payload"})
    debug: bool = field(default=False, metadata={"help": "verbose logging"})


@dataclass
class Undocumented:
    inner: ModelConfig = field(default_factory=ModelConfig)
    x: int = field(default=1, metadata={"help": "documented"})
    y: int = 2


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_of(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------ loading and type checks


def test_loads_values_and_defaults(tmp_path):
    path = write(tmp_path, """
        model:
          hidden_size: 256
        lr: 0.01
        stages: [rl]
        mode: b
        weights: {correct: 1, format: 0.5}
        shape: [4, 1]
        extra: {anything: [1, 2]}
    """)
    cfg = load_yaml_config(RunConfig, path)
    assert cfg.model == ModelConfig(hidden_size=256)
    assert cfg.lr == 0.01 and cfg.stages == ["rl"] and cfg.mode == "b"
    assert cfg.weights == {"correct": 1.0, "format": 0.5}
    assert all(type(v) is float for v in cfg.weights.values())
    assert cfg.shape == (4, 1) and cfg.extra == {"anything": [1, 2]}
    assert cfg.seed is None and cfg.debug is False and cfg.layers == []


def test_unknown_key_at_depth_two_names_path_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, """
        lr: 0.1
        model:
          hidden_size: 64
          hiden_size: 32
    """)
    err = error_of(load_yaml_config, RunConfig, path)
    msg = str(err)
    assert msg.startswith(f"{path} line 4: model.hiden_size: unknown field 'hiden_size'")
    assert "did you mean 'hidden_size'?" in msg
    assert "hidden_size, path, dropout" in msg
    assert (err.line, err.path, err.source) == (4, "model.hiden_size", str(path))


def test_ill_typed_int_message(tmp_path):
    path = write(tmp_path, """
        model:
          path: null
          hidden_size: "abc"
    """)
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 3: model.hidden_size: expected int, got str 'abc'")


@pytest.mark.parametrize("text, where", [
    ("model:\n  hidden_size: true\n", "line 2: model.hidden_size: expected int, got bool True"),
    ("lr: false\n", "line 1: lr: expected float, got bool False"),
    ("debug: 1\n", "line 1: debug: expected bool, got int 1"),
    ("model:\n  hidden_size: 3.5\n", "line 2: model.hidden_size: expected int, got float 3.5"),
])
def test_bools_and_numbers_do_not_mix(tmp_path, text, where):
    path = write(tmp_path, text)
    assert str(error_of(load_yaml_config, RunConfig, path)) == f"{path} {where}"


def test_float_accepts_ints_and_scientific_strings(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string; the float field must still accept it.
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}
    path = write(tmp_path, "lr: 1e-3\nmodel:\n  dropout: 1\nweights: {a: 3.0e-4, b: '-2E2'}\n")
    cfg = load_yaml_config(RunConfig, path)
    assert cfg.lr == pytest.approx(1e-3) and type(cfg.lr) is float
    assert cfg.model.dropout == 1.0 and type(cfg.model.dropout) is float
    assert cfg.weights == {"a": pytest.approx(3e-4), "b": -200.0}
    err = error_of(from_dict, RunConfig, {"lr": "fast"}, source="cfg.yaml")
    assert str(err) == "cfg.yaml: lr: expected float, got str 'fast'"


def test_str_field_rejects_unquoted_scalars_with_hint(tmp_path):
    path = write(tmp_path, "stages: [sft, on]\n")
    msg = str(error_of(load_yaml_config, RunConfig, path))
    assert msg.startswith(f"{path} line 1: stages[1]: expected str, got bool True")
    assert "quote" in msg


def test_literal_violation_lists_allowed_values(tmp_path):
    path = write(tmp_path, "lr: 0.5\nmode: c\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 2: mode: expected one of 'a', 'b', got str 'c'")


def test_optional_accepts_none_and_checks_value(tmp_path):
    cfg = load_yaml_config(RunConfig, write(tmp_path, "seed: null\nmodel: {path: null}\n"))
    assert cfg.seed is None and cfg.model.path is None
    assert load_yaml_config(RunConfig, write(tmp_path, "seed: 7\n")).seed == 7
    path = write(tmp_path, "seed: seven\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 1: seed: expected int, got str 'seven'")


def test_list_element_error_names_index_and_line(tmp_path):
    path = write(tmp_path, """
        stages:
          - sft
          - 3
    """)
    assert str(error_of(load_yaml_config, RunConfig, path)).startswith(
        f"{path} line 3: stages[1]: expected str, got int 3")
    path = write(tmp_path, "layers: [1, x, 3]\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 1: layers[1]: expected int, got str 'x'")
    path = write(tmp_path, "layers: 5\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 1: layers: expected list[int], got int 5")


def test_dict_value_error_names_key(tmp_path):
    path = write(tmp_path, "weights:\n  correct: 1\n  format: lots\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 3: weights.format: expected float, got str 'lots'")


def test_nested_dataclass_must_be_mapping(tmp_path):
    path = write(tmp_path, "model: 3\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 1: model: expected a mapping of ModelConfig fields, got int 3")


def test_post_init_value_error_is_wrapped_with_file_and_path(tmp_path):
    path = write(tmp_path, "lr: 0.1\nmodel:\n  hidden_size: -4\n")
    err = error_of(load_yaml_config, RunConfig, path)
    # the message names hidden_size, given at line 3: the error points there, not at `model:`
    assert str(err) == (f"{path} line 3: model.hidden_size: invalid ModelConfig: "
                        "hidden_size must be positive, got -4")
    assert (err.path, err.line) == ("model.hidden_size", 3)
    assert isinstance(err.__cause__, ValueError)


def test_missing_required_field():
    @dataclass
    class NeedsName:
        name: str
        n: int = 1

    err = error_of(from_dict, NeedsName, {"n": 2}, source="r.yaml")
    assert str(err) == "r.yaml: missing required field(s) of NeedsName: name"
    assert from_dict(NeedsName, {"name": "x"}) == NeedsName("x")


# ------------------------------------------------------------------ YAML-level errors


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "lr: 0.1\nmodel:\n  hidden_size: [1, 2\nmode: a\n")
    err = error_of(load_yaml_config, RunConfig, path)
    assert str(err).startswith(f"{path} line ") and "invalid YAML" in str(err)
    assert err.line is not None and err.line >= 3


def test_top_level_must_be_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    msg = str(error_of(load_yaml_config, RunConfig, path))
    assert msg.startswith(f"{path} line 1: the top level must be a mapping")


def test_empty_file_means_defaults(tmp_path):
    assert load_yaml_config(RunConfig, write(tmp_path, "# nothing\n")) == RunConfig()


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert str(error_of(load_yaml_config, RunConfig, missing)) == f"{missing}: config file not found"


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "lr: 0.1\nlr: 0.2\n")
    assert str(error_of(load_yaml_config, RunConfig, path)) == (
        f"{path} line 2: lr: duplicate key (first given at line 1)")


def test_parse_yaml_line_map():
    data, lines = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n")
    assert data == {"a": {"b": 1, "c": ["x", "y"]}}
    assert lines == {"a": 1, "a.b": 2, "a.c": 3, "a.c[0]": 4, "a.c[1]": 5}


# ------------------------------------------------------------------ overrides


def test_apply_overrides_parses_yaml_and_creates_nested_keys():
    base = {"lr": 0.1}
    out = apply_overrides(base, ["model.hidden_size=256", "stages=[a, b]", "seed=null", "x.y.z=3"])
    assert out == {"lr": 0.1, "model": {"hidden_size": 256}, "stages": ["a", "b"],
                   "seed": None, "x": {"y": {"z": 3}}}
    assert base == {"lr": 0.1}  # input not mutated


def test_override_without_equals_fails():
    msg = str(error_of(apply_overrides, {}, ["model.hidden_size"]))
    assert msg.startswith("command line override 'model.hidden_size': expected 'dotted.path=value'")


def test_override_through_scalar_fails():
    msg = str(error_of(apply_overrides, {"lr": 0.1}, ["lr.x=1"]))
    assert "cannot set 'lr.x'" in msg and "float 0.1" in msg


def test_overrides_win_and_are_type_checked(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 64\nlr: 0.1\n")
    cfg = load_yaml_config(RunConfig, path, ["model.hidden_size=256", "lr=3e-4", "mode=b"])
    assert cfg.model.hidden_size == 256 and cfg.lr == pytest.approx(3e-4) and cfg.mode == "b"
    cfg = load_yaml_config(RunConfig, None, ["model.path=/ckpt", "seed=3"])
    assert cfg.model == ModelConfig(path="/ckpt") and cfg.seed == 3 and cfg.lr == 1e-3
    err = error_of(load_yaml_config, RunConfig, path, ["model.hidden_size=abc"])
    assert str(err) == ("command line override 'model.hidden_size=abc': "
                        "model.hidden_size: expected int, got str 'abc'")
    assert err.line is None


def test_unknown_override_is_reported_as_command_line(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 64\n")
    msg = str(error_of(load_yaml_config, RunConfig, path, ["model.hiddn_size=3"]))
    assert msg.startswith("command line override 'model.hiddn_size=3': model.hiddn_size: "
                          "unknown field 'hiddn_size' in ModelConfig; did you mean 'hidden_size'?")
    assert str(path) not in msg
    # a new top-level section created only by the override is blamed on it too
    msg = str(error_of(load_yaml_config, RunConfig, path, ["optim.lr=3"]))
    assert msg.startswith("command line override 'optim.lr=3': optim: unknown field 'optim'")


def test_file_errors_keep_file_lines_when_overrides_present(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 64\n  dropuot: 0.1\n")
    msg = str(error_of(load_yaml_config, RunConfig, path, ["model.hidden_size=8"]))
    assert msg.startswith(f"{path} line 3: model.dropuot: unknown field")


# ------------------------------------------------------------------ output and docs


def test_dump_then_load_round_trip_with_help_comments(tmp_path):
    cfg = RunConfig(model=ModelConfig(hidden_size=96, path="ckpt/on", dropout=0.25), lr=3e-4,
                    stages=["rl", "on", "1e-3"], layers=[1, 2], mode="b", seed=11,
                    weights={"correct": 1.0, "fmt": 1e-20}, shape=(8,), extra={"k": [1, "v"]},
                    debug=True)
    out = tmp_path / "resolved.yaml"
    text = dump_yaml(cfg, out)
    assert out.read_text() == text
    assert "# width of the residual stream (units)\n  hidden_size: 96" in text
    assert "# peak learning rate\nlr: 0.0003" in text
    assert "# run mode\n# second help line\nmode: b" in text
    assert "# policy model\nmodel:" in text
    loaded = from_dict(RunConfig, yaml.safe_load(out.read_text()), source=str(out))
    assert loaded == cfg
    assert load_yaml_config(RunConfig, out) == cfg
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_to_dict_is_plain():
    d = to_dict(RunConfig())
    assert d["model"] == {"hidden_size": 128, "path": None, "dropout": 0.0}
    assert d["shape"] == [2, 3] and d["stages"] == ["sft", "rl"]
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_field_help_lists_leaves():
    rows = {row[0]: row[1:] for row in field_help(RunConfig)}
    assert rows["model.hidden_size"] == ("int", "128", "width of the residual stream (units)")
    assert rows["model.path"] == ("str | None", "None", "checkpoint to load, or none")
    assert rows["stages"] == ("list[str]", "['sft', 'rl']", "stages to run")
    assert rows["mode"][0] == "Literal['a', 'b']"
    assert rows["shape"][0] == "tuple[int, ...]"
    assert rows["seed"][0] == "int | None"
    assert "model" not in rows


def test_missing_help():
    assert missing_help(RunConfig) == []
    assert missing_help(Undocumented) == ["inner", "y"]


@dataclass
class Stage:
    name: str = field(default="sft", metadata={"help": "stage name"})
    steps: int = field(default=10, metadata={"help": "optimizer steps"})


@dataclass
class Outer:
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "the run"})
    teacher: Optional[ModelConfig] = field(default=None, metadata={"help": "optional teacher"})
    plan: list[Stage] = field(default_factory=lambda: [Stage()], metadata={"help": "stage plan"})


def test_deeper_nesting_optional_and_list_of_dataclasses(tmp_path):
    path = write(tmp_path, """
        run:
          model:
            hidden_size: 8
        teacher:
          hidden_size: 16
        plan:
          - {name: rl, steps: 5}
          - name: eval
            stepz: 1
    """)
    msg = str(error_of(load_yaml_config, Outer, path))
    assert msg.startswith(f"{path} line 9: plan[1].stepz: unknown field 'stepz' in Stage")
    cfg = load_yaml_config(Outer, path, ["plan=[{name: rl, steps: 5}]", "run.model.dropout=0.5"])
    assert cfg.teacher == ModelConfig(hidden_size=16)
    assert cfg.plan == [Stage("rl", 5)] and cfg.run.model == ModelConfig(hidden_size=8, dropout=0.5)
    out = tmp_path / "outer.yaml"
    dump_yaml(cfg, out)
    assert load_yaml_config(Outer, out) == cfg
    assert load_yaml_config(Outer, None) == Outer()
    assert "run.model.hidden_size" in {row[0] for row in field_help(Outer)}
    assert missing_help(Outer) == []


# ------------------------------------------------------------------ ranges, finiteness, hostile files


@dataclass
class Ranged:
    steps: int = field(default=1, metadata={"help": "steps", "ge": 0})
    rate: float = field(default=0.5, metadata={"help": "a fraction", "gt": 0, "le": 1})
    ks: list[int] = field(default_factory=list, metadata={"help": "k values", "ge": 1})
    cap: Optional[float] = field(default=None, metadata={"help": "optional cap", "ge": 1})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "weights, any sign"})


def test_declared_range_is_checked_with_file_and_line(tmp_path):
    path = write(tmp_path, "steps: 3\nrate: 0.0\n")
    err = error_of(load_yaml_config, Ranged, path)
    assert str(err) == f"{path} line 2: rate: must be > 0 and <= 1, got 0.0"
    assert (err.path, err.line) == ("rate", 2)
    assert str(error_of(from_dict, Ranged, {"ks": [2, 0]})) == "<dict>: ks[1]: must be >= 1, got 0"
    assert str(error_of(from_dict, Ranged, {"cap": 0.5})) == "<dict>: cap: must be >= 1, got 0.5"
    assert from_dict(Ranged, {"cap": None, "steps": 0, "rate": 1, "ks": [1, 5]}) == Ranged(0, 1.0, [1, 5], None)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN", "1e999", "-1e400"])
def test_non_finite_floats_are_rejected_everywhere(text):
    for override in (f"rate={text}", f"cap={text}", f"weights.a={text}"):
        err = error_of(load_yaml_config, Ranged, None, [override])
        assert "expected a finite float" in str(err) and "\n" not in str(err)


def test_check_ranges_for_objects_built_in_code():
    from rlvr.typed_yaml import check_ranges

    check_ranges(Ranged())
    with pytest.raises(ValueError, match=r"^rate must be > 0 and <= 1, got 2\.0$"):
        check_ranges(Ranged(rate=2.0))
    with pytest.raises(ValueError, match=r"^ks\[0\] must be >= 1, got 0$"):
        check_ranges(Ranged(ks=[0]))
    with pytest.raises(ValueError, match="cap must be a finite number, got inf"):
        check_ranges(Ranged(cap=float("inf")))


def test_dump_states_the_range_after_the_help():
    text = dump_yaml(Ranged())
    assert "# steps (>= 0)\nsteps: 1" in text
    assert "# a fraction (> 0 and <= 1)\nrate: 0.5" in text
    assert "# weights, any sign\nweights: {}" in text
    assert dict((r[0], r[3]) for r in field_help(Ranged))["ks"] == "k values (>= 1)"


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00l\x00r", "line 1: not a UTF-8 text file (byte 0xff at offset 0)"),
    (b"lr: 1\nmode: a\x00\x00", "line 2: a NUL byte: this is a binary file"),
    (b"lr: 1\nstages: &s [a, *s]\n", "line 2: stages[1]: an alias (*name) refers to a node that contains it"),
    (b"extra: &m {x: *m}\n", "refers to a node that contains it"),
    (b"- lr\n", "line 1: the top level must be a mapping"),
    (b"just text\n", "the top level must be a mapping of field names to values, got a scalar"),
    (b"extra:" + b" [" * 3000 + b" ]" * 3000 + b"\n", "invalid YAML: nested too deeply"),
    (b"lr: 1\n---\nlr: 2\n", "invalid YAML: expected a single document"),
])
def test_hostile_files_are_one_line_config_errors(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    err = error_of(load_yaml_config, RunConfig, path)
    assert str(err).startswith(str(path)) and words in str(err) and "\n" not in str(err), str(err)


def test_alias_bomb_is_refused_quickly(tmp_path):
    # "billion laughs": 9 levels of 10 aliases each expand to 10**9 values
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("extra:\n" + "\n".join("  " + line for line in lines) + "\n")
    err = error_of(load_yaml_config, RunConfig, path)
    assert "expands to more than 100000 values" in str(err)


def test_huge_file_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# padding\n" * (500_000))
    assert "config file is larger than 4 MiB" in str(error_of(load_yaml_config, RunConfig, path))


def test_self_referencing_override_value():
    for override in ("extra=&a [*a]", "stages=&a [x, *a]"):
        err = error_of(load_yaml_config, RunConfig, None, [override])
        assert str(err) == f"command line override {override!r}: the value refers to itself through an alias (*name)"
