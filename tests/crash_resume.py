"""What the exact-resume tests of RL features share: a run crashed inside an RL step (after
the step-2 checkpoint, with that step's record half-written), resumed from the shell, and
its RL records with the wall-clock timings left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlvr.cli import main
from rlvr.training import rl as rl_module
from rlvr.training.pipeline import new_run_dir, run_pipeline
from rlvr.training.run_dir import RunDir


def crash_in_rl_step_then_resume(config: Any, path: Path, monkeypatch: pytest.MonkeyPatch, step: int = 3,
                                 resume: bool = False) -> Path:
    """Run ``config`` into ``path`` (``resume``: continue the run already there), interrupted
    in RL step ``step``'s optimizer phase, then ``rlvr train --resume`` it to the end; returns
    the run directory."""
    crashed = RunDir.open(path) if resume else new_run_dir(config, str(path), "t")
    original = rl_module.policy_update

    def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("opt_step", args[-1] if args else 0) == step * config.rl.mini_batches * config.rl.epochs:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rl_module, "policy_update", failing)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, crashed)
    monkeypatch.undo()
    assert main(["train", "--resume", str(crashed.path)]) == 0
    return crashed.path


def rl_records(run: Path) -> list[dict]:
    """The run's RL metrics records without their timings."""
    return [{k: v for k, v in r.items() if not k.startswith("time_")
             and k not in ("step_time", "tokens_per_s", "rl_seconds_total")}
            for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]
