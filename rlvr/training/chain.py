"""A chain of stages: ``stages: [sft, rl, sft, rl]``, RL then SFT (Metis-RISE), each stage with
its own settings (``{rl: {rl.steps: 30}}``).

Each stage runs as a run directory of its own, ``<run>/stages/<n>-<kind>``, through the same
code as a one-stage run: its checkpoints, resume inside the stage, evaluations and records are
those of any run. Stage n starts from stage n-1's result (``model.path``). The chain's own
directory holds its state (the stages done) and the records of every stage, gathered in
order, so that ``rlvr report``, the plots and the summary show the whole chain:

- ``metrics.jsonl``, ``samples.jsonl``, ``pass_rates.jsonl``: each record gets ``stage_index``
  (1-based) and its step is counted across the stages of its kind (the second RL stage of 30
  steps after one of 60 logs steps 61-90; ``stage_step`` keeps the stage's own);
- ``eval.jsonl``: ``warmstart`` is the evaluation before the first RL stage (of the first
  stage's result when there is no RL stage), ``final`` the one after the last stage, and each
  other stage's end is ``stage-<n>-<kind>``; an RL stage's own start evaluation repeats the
  previous stage's end and is left out. Periodic evaluations are ``rl-step-<chain step>``.

The gathered files are rewritten from the stages' own after every stage (and at every start),
so a crash anywhere leaves them a prefix of what an uninterrupted chain writes; while a stage
runs, its records also reach the logging backends and callbacks live, renumbered the same way.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from rlvr.config import RunConfig
from rlvr.distributed import World
from rlvr.training.run_dir import FollowerRunDir, RunDir, atomic_write, model_source

STAGES_DIR = "stages"
STEPPED_LOGS = ("metrics.jsonl", "samples.jsonl", "pass_rates.jsonl")


def stage_path(run_path: Path, index: int, kind: str) -> Path:
    return run_path / STAGES_DIR / f"{index + 1}-{kind}"


def end_phase(kinds: list[str], index: int) -> str:
    """The chain's name for the evaluation at the end of stage ``index`` (module docstring)."""
    if index == len(kinds) - 1:
        return "final"
    first_rl = kinds.index("rl") if "rl" in kinds else 1
    return "warmstart" if index == first_rl - 1 else f"stage-{index + 1}-{kinds[index]}"


class Renumber:
    """A stage's records as the chain logs them: ``stage_index``, steps counted across the
    stages of a kind (``offsets``: the steps of that kind before this stage), and evaluation
    phases renamed (None: a record the chain leaves out)."""

    def __init__(self, kinds: list[str], index: int, offsets: dict[str, int]) -> None:
        self.kinds, self.index, self.offsets = kinds, index, dict(offsets)

    def record(self, stream: str, record: dict[str, Any]) -> dict[str, Any] | None:
        out = {**record, "stage_index": self.index + 1}
        if stream == "eval.jsonl":
            phase = record.get("phase")
            kind = self.kinds[self.index]
            if phase == "warmstart" and kind == "rl":
                if self.index:
                    return None  # the previous stage's end, evaluated again
                out["phase"] = "warmstart"
            elif phase == "warmstart" or phase == "final":
                out["phase"] = end_phase(self.kinds, self.index)
            elif isinstance(phase, str) and phase.startswith("rl-step-"):
                out["phase"] = f"rl-step-{int(phase.rsplit('-', 1)[1]) + self.offsets['rl']}"
            out["step"] = int(record.get("step") or 0) + self.offsets["rl"]
            return out
        if stream in STEPPED_LOGS and isinstance(record.get("step"), int):
            kind = record.get("stage") or "rl"  # samples and pass rates are the RL stage's
            out["stage_step"] = record["step"]
            out["step"] = record["step"] + self.offsets.get(kind, 0)
        return out

    def records(self, stream: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in (self.record(stream, record) for record in records) if r is not None]


def stage_steps(stage_run: RunDir, kind: str, config: RunConfig) -> int:
    """Steps stage ``kind`` took: its configured count, or the RL steps done when
    ``rl.max_seconds`` ended it early."""
    if kind == "sft":
        return config.sft.steps
    return int(stage_run.load_state().get("rl_last_step", config.rl.steps))


def run_chain(config: RunConfig, run: RunDir, task: Any, world: World,
              run_stage: Callable[[RunConfig, RunDir, Any, World], dict[str, Any]]) -> dict[str, Any]:
    """Run the chain's stages not yet done (each through ``run_stage``, the one-directory
    pipeline), then write the chain's summary; returns it."""
    from rlvr.training.pipeline import write_summary

    kinds = config.stage_kinds()
    state = world.broadcast_object(run.recover() if world.is_main else None, "the chain's state")
    done = len(state["completed_stages"])
    if done and world.is_main:
        print(f"resume: stages 1-{done} of {len(kinds)} are done", flush=True)
    offsets = {"sft": 0, "rl": 0}
    previous: Path | None = None
    for index, kind in enumerate(kinds):
        path = stage_path(run.path, index, kind)
        stage_config = config.stage_config(index)
        stage_config = replace(stage_config, logging=replace(stage_config.logging, backends=[]))
        if previous is not None:  # a later stage starts from the one before (and caches nothing)
            stage_config = replace(stage_config, model=replace(stage_config.model, path=str(previous.resolve())),
                                   sft=replace(stage_config.sft, cache=False))
        if index >= done:
            if world.is_main:
                print(f"stage {index + 1} of {len(kinds)}: {kind.upper()}, in {path}", flush=True)
                sub = RunDir.open(path) if (path / "config.yaml").is_file() else RunDir.create(stage_config, path)
            else:
                sub = FollowerRunDir(path)
            renumber = Renumber(kinds, index, offsets)
            if run.on_append is not None:
                forward = run.on_append
                sub.on_append = lambda stream, records: forward(stream, renumber.records(stream, records))
            sub.lock()
            try:
                run_stage(stage_config, sub, task, world)
            finally:
                sub.unlock()
                sub.on_append = None
            if world.is_main:
                state["completed_stages"].append(kind)
                gather(config, run, state, index + 1)
        sub_done = RunDir(path)
        steps = world.broadcast_object(stage_steps(sub_done, kind, stage_config) if world.is_main else None,
                                       "the stage's steps")
        offsets[kind] += steps
        source = world.broadcast_object(model_source(sub_done.load_state()) if world.is_main else None,
                                        "the stage's result")
        previous = path / source
    if world.is_main:
        gather(config, run, state, len(kinds))
    if not world.is_main:
        return world.broadcast_object(None, "the chain's summary")
    summary = write_summary(run, state)
    summary["stages"] = [{"stage": index + 1, "kind": kind,
                          "accuracy": state["evals"].get(end_phase(kinds, index), {}).get("greedy_accuracy"),
                          "run_dir": str(stage_path(run.path, index, kind))}
                         for index, kind in enumerate(kinds)]
    atomic_write(run.path / "summary.json", json.dumps(summary, indent=2))
    from rlvr.eval.plots import plot_run

    plot_run(run.read("metrics.jsonl"), run.read("eval.jsonl"), run.plots)
    return world.broadcast_object(summary, "the run's summary")


def gather(config: RunConfig, run: RunDir, state: dict[str, Any], stages_done: int) -> None:
    """Rewrite the chain's logs from its first ``stages_done`` stages' own, renumbered, and
    save the chain's state (its evaluations and final checkpoint) after them."""
    kinds = config.stage_kinds()
    offsets = {"sft": 0, "rl": 0}
    logs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*STEPPED_LOGS, "eval.jsonl")}
    evals: dict[str, Any] = {}
    final = None
    for index in range(stages_done):
        kind = kinds[index]
        sub = RunDir(stage_path(run.path, index, kind))
        renumber = Renumber(kinds, index, offsets)
        for name in logs:
            logs[name] += renumber.records(name, sub.read(name))
        offsets[kind] += stage_steps(sub, kind, config.stage_config(index))
        source = model_source(sub.load_state())
        final = str(Path(STAGES_DIR) / sub.path.name / source) if source else final
    for record in logs["eval.jsonl"]:
        evals[record["phase"]] = record
    for name, records in logs.items():
        atomic_write(run.path / name, "".join(json.dumps(record) + "\n" for record in records))
    state.update(evals=evals, final_checkpoint=final if stages_done == len(kinds) else None,
                 stage=None, checkpoint=None)
    run.save_state(state)
