"""The run directory: the unit a user resumes, compares and shares.

Layout::

    config.yaml        resolved config (with help comments)
    state.json         where the run is: finished stages, latest checkpoint, evaluations
    metrics.jsonl      one record per SFT/RL step
    samples.jsonl      some completions with rewards per RL step
    pass_rates.jsonl   every RL step's per-prompt pass rates (LIMR selection reads them)
    eval.jsonl         held-out evaluations (warm start, periodic, final)
    checkpoints/       HF-format model + tokenizer dirs; resumable ones add trainer_state.pt
    plots/             PNG curves
    summary.json       headline numbers

Checkpoints are written to a temporary directory and renamed into place, and state.json is
replaced atomically after that, so a crash at any moment leaves the last checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.config import RunConfig, save_config

STATE_FILE = "state.json"
TRAINER_STATE = "trainer_state.pt"


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        # called with (file name, records) after every append: the logging.backends mirror
        self.on_append: Callable[[str, list[dict[str, Any]]], None] | None = None

    @classmethod
    def create(cls, config: RunConfig, path: str | Path) -> "RunDir":
        run = cls(path)
        if (run.path / STATE_FILE).exists():
            raise FileExistsError(
                f"{run.path} already holds a run; resume it with `rlvr train --resume {run.path}` "
                "or choose another --output-dir / run_name"
            )
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.plots.mkdir(parents=True, exist_ok=True)
        save_config(config, run.path / "config.yaml")
        run.save_state({"completed_stages": [], "checkpoint": None, "evals": {}})
        return run

    # ---- state -------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        state_path = self.path / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"{self.path} is not an rlvr run directory (no {STATE_FILE})")
        return json.loads(state_path.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        _atomic_write(self.path / STATE_FILE, json.dumps(state, indent=2))

    # ---- logs --------------------------------------------------------------------------
    def append(self, name: str, records: list[dict[str, Any]] | dict[str, Any]) -> None:
        if isinstance(records, dict):
            records = [records]
        with open(self.path / name, "a") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
        if self.on_append is not None:
            self.on_append(name, records)

    def read(self, name: str) -> list[dict[str, Any]]:
        path = self.path / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def drop_records_after(self, stage: str, step: int) -> None:
        """Forget log records a crashed run wrote past its last checkpoint, so the resumed
        run's records replace them instead of duplicating them."""
        for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl", "pass_rates.jsonl"):
            records = self.read(name)
            kept = [r for r in records if not (r.get("stage") == stage and r.get("step", 0) > step)]
            if len(kept) != len(records):
                _atomic_write(self.path / name, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- checkpoints -------------------------------------------------------------------
    def save_model(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   trainer_state: dict[str, Any] | None = None) -> Path:
        """Write an HF-format checkpoint (loadable with from_pretrained) under checkpoints/."""
        final = self.checkpoints / name
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def prune(self, prefix: str, keep_last: int) -> None:
        """Delete all but the newest ``keep_last`` checkpoints named ``prefix``-NNNNNN."""
        found = sorted(p for p in self.checkpoints.glob(f"{prefix}-*") if p.is_dir())
        for old in found[: max(0, len(found) - keep_last)]:
            shutil.rmtree(old, ignore_errors=True)


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    # Our own file, written by save_model; it holds optimizer tensors and RNG tuples.
    return torch.load(checkpoint / TRAINER_STATE, weights_only=False)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
