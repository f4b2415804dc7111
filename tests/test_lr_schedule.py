"""Learning-rate schedules: hand-computed values, and an RL run that follows one."""

from __future__ import annotations

import math

import pytest

from rlvr.cli import main
from rlvr.training.optim import lr_at
from rlvr.training.run_dir import RunDir


def test_warmup_then_constant():
    assert [lr_at(s, 1.0, 4, 100, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decay_to_the_floor():
    # warm-up 2, total 12: decay over steps 2..12, p = (step - 2) / 10
    assert lr_at(2, 2.0, 2, 12, "linear", 0.0) == 2.0
    assert lr_at(7, 2.0, 2, 12, "linear", 0.0) == pytest.approx(1.0)  # p = 0.5
    assert lr_at(7, 2.0, 2, 12, "linear", 0.2) == pytest.approx(2.0 * (0.2 + 0.8 * 0.5))  # 1.2
    assert lr_at(12, 2.0, 2, 12, "linear", 0.2) == pytest.approx(0.4)
    assert lr_at(50, 2.0, 2, 12, "linear", 0.2) == pytest.approx(0.4)  # held after the end


def test_cosine_decay_to_the_floor():
    assert lr_at(0, 1.0, 0, 8, "cosine", 0.0) == 1.0
    assert lr_at(2, 1.0, 0, 8, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.8536
    assert lr_at(4, 1.0, 0, 8, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_at(8, 1.0, 0, 8, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_at(4, 1.0, 0, 8, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)  # SFT's default floor


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_at(5, 1.0, 0, 8, "step")


def test_rl_run_follows_the_schedule_and_bad_values_are_config_errors(tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "run"
    # 4 RL steps x 2 mini-batches = 8 optimizer steps; warm-up 2; cosine to 0.25 x 1e-3
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "rl.lr=1e-3", "rl.warmup_steps=2",
                 "rl.lr_schedule=cosine", "rl.min_lr_ratio=0.25"]) == 0
    logged = [m["lr"] for m in RunDir(run_dir).read("metrics.jsonl") if m["stage"] == "rl"]
    # each step logs the learning rate of its last optimizer step: optimizer steps 1, 3, 5, 7
    expected = [lr_at(s, 1e-3, 2, 8, "cosine", 0.25) for s in (1, 3, 5, 7)]
    assert logged == pytest.approx(expected)
    assert logged[0] == pytest.approx(1e-3) and logged[-1] < logged[1] < logged[0]
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "rl.lr_schedule=exponential"]) == 2
    assert "rl.lr_schedule" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "rl.min_lr_ratio=1.5"]) == 2
    assert "rl.min_lr_ratio" in capsys.readouterr().err
