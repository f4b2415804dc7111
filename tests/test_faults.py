"""Kills at every stage boundary, damaged run dirs, two processes on one run dir.

A run is killed right after each file write it makes (a log append, a checkpoint, a state
save, a prune, the summary), resumed, and compared with an uninterrupted run: every log
record, the summary, the evaluations and the final weights must be identical (timing fields
aside). The kill is simulated in-process by raising ``SimulatedCrash`` (a BaseException that
nothing in the run catches) from a wrapper around the write; one test kills a real process
with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from safetensors.torch import load_file

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.training import pipeline
from rlvr.training.pipeline import new_run_dir, run_pipeline
from rlvr.training.run_dir import LOGS, RunDir

OVERRIDES = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
    "sft.steps=6", "sft.batch_size=8", "rl.steps=4", "rl.prompts_per_step=4", "rl.samples_per_prompt=2",
    "rl.mini_batches=2", "rl.micro_batch_size=4", "rollout.max_new_tokens=12", "eval.problems=8",
    "eval.samples=2", "eval.every=2", "checkpoint.every=2", "checkpoint.keep_last=2", "algorithm.kl.coef=0.05",
    # The tiny model earns no reward yet: the entropy bonus and a large step make RL change
    # its outputs, so evaluating the wrong checkpoint would show.
    "algorithm.entropy.coef=0.05", "rl.lr=0.01",
    "logging.progress=false", "threads=1",
]
# Fields that measure time, not what the run computed.
VOLATILE = {"step_time", "time_generation", "time_scoring", "time_prepare", "time_update", "time_sync",
            "time_baseline", "time_logprob", "time_backward",
            "tokens_per_s", "rl_seconds_total", "wall_seconds", "run_dir", "final_checkpoint"}

# Every file write of the run above, in order: the boundaries a kill is tried at.
WRITES = [
    "save_state",  # the run starts (recover)
    "append metrics.jsonl", "append metrics.jsonl",  # SFT steps 1-2
    "save_model sft-step-000002", "prune sft-step", "save_state",
    "append metrics.jsonl", "append metrics.jsonl",
    "save_model sft-step-000004", "prune sft-step", "save_state",
    "append metrics.jsonl", "append metrics.jsonl",
    "save_model sft-final", "save_state", "prune sft-step",  # SFT done
    "append eval_problems.jsonl", "append eval.jsonl", "save_state",  # warm-start evaluation
    "append pass_rates.jsonl", "append samples.jsonl", "append metrics.jsonl",  # RL step 1
    "append pass_rates.jsonl", "append samples.jsonl", "append metrics.jsonl",
    "append eval_problems.jsonl", "append eval.jsonl",  # periodic evaluation, saved with the next checkpoint
    "save_model rl-step-000002", "prune rl-step", "save_state",
    "append pass_rates.jsonl", "append samples.jsonl", "append metrics.jsonl",
    "append pass_rates.jsonl", "append samples.jsonl", "append metrics.jsonl",
    "save_model final", "save_state", "prune rl-step",  # RL done (the bug: a kill from here on)
    "append eval_problems.jsonl", "append eval.jsonl", "save_state",  # final evaluation
    "write_summary",
]


def after(event: str, nth: int = 1) -> int:
    """The 1-based position in WRITES of the ``nth`` ``event``."""
    positions = [i for i, w in enumerate(WRITES, 1) if w == event]
    return positions[nth - 1]


class SimulatedCrash(BaseException):
    """A kill at a chosen moment; BaseException so that nothing in the run catches it."""


def _crash(event: str) -> None:
    raise SimulatedCrash(event)


@contextmanager
def observed_writes(at: int | None = None, action: Callable[[str], None] = _crash) -> Iterator[list[str]]:
    """Record every file write of a run; right after the ``at``-th (1-based), call ``action``."""
    events: list[str] = []
    labels = {"append": lambda self, name, *_: f"append {name}",
              "save_model": lambda self, name, *_: f"save_model {name}",
              "save_state": lambda self, *_: "save_state",
              "prune": lambda self, prefix, *_: f"prune {prefix}"}
    with pytest.MonkeyPatch.context() as mp:
        def observe(owner: Any, attr: str, label: Callable[..., str]) -> None:
            original = getattr(owner, attr)

            def wrapper(*args, **kwargs):
                result = original(*args, **kwargs)
                events.append(label(*args))
                if len(events) == at:
                    action(events[-1])
                return result

            mp.setattr(owner, attr, wrapper)

        for attr, label in labels.items():
            observe(RunDir, attr, label)
        observe(pipeline, "write_summary", lambda *_: "write_summary")
        yield events


def _config():
    return load_config(None, OVERRIDES)


def _crashed_run(path: Path, at: int) -> RunDir:
    """A run killed right after its ``at``-th write."""
    config = _config()
    run = new_run_dir(config, str(path), "t")
    with observed_writes(at), pytest.raises(SimulatedCrash):
        run_pipeline(config, run)
    return run


def _resume(path: Path) -> dict[str, Any]:
    return run_pipeline(_config(), RunDir(path))


@pytest.fixture(scope="module", autouse=True)
def no_plots() -> Iterator[None]:
    """Drawing the PNGs takes 3/4 of a tiny run; the plots are tested elsewhere."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "plot_run", lambda *args: None)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, no_plots) -> Path:
    config = _config()
    run = new_run_dir(config, str(tmp_path_factory.mktemp("reference") / "run"), "t")
    with observed_writes() as events:
        run_pipeline(config, run)
    assert events == WRITES  # the boundaries below are every write the run makes
    evals = run.load_state()["evals"]
    assert _stable(evals["final"]) | {"phase": 0, "step": 0} != _stable(evals["warmstart"]) | {"phase": 0, "step": 0}
    return run.path


def _stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: _stable(v) if isinstance(v, dict) else v for k, v in record.items() if k not in VOLATILE}


def assert_same_run(path: Path, reference: Path) -> None:
    """Identical records in every log, summary, evaluations, checkpoints left and weights."""
    run, ref = RunDir(path), RunDir(reference)
    for name in LOGS:
        assert [_stable(r) for r in run.read(name)] == [_stable(r) for r in ref.read(name)], name
    summary, ref_summary = (json.loads((p / "summary.json").read_text()) for p in (path, reference))
    assert _stable(summary) == _stable(ref_summary)
    assert _stable(run.load_state()["evals"]) == _stable(ref.load_state()["evals"])
    assert sorted(os.listdir(run.checkpoints)) == sorted(os.listdir(ref.checkpoints))
    for checkpoint in ("sft-final", "final"):
        a = load_file(run.checkpoints / checkpoint / "model.safetensors")
        b = load_file(ref.checkpoints / checkpoint / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{checkpoint}: {name}")


@pytest.mark.parametrize("at", range(1, len(WRITES) + 1),
                         ids=[f"{i:02d}-{w.replace(' ', '-')}" for i, w in enumerate(WRITES, 1)])
def test_kill_after_every_write_then_resume_equals_uninterrupted_run(tmp_path, reference, at):
    run = _crashed_run(tmp_path / "run", at)
    _resume(run.path)
    assert_same_run(run.path, reference)


def test_kill_after_final_checkpoint_resumes_from_it_through_the_cli(tmp_path, reference, capsys):
    """The issue's reproduction: killed during the final evaluation, the resumed run must
    evaluate checkpoints/final, not the SFT model."""
    run = _crashed_run(tmp_path / "run", after("save_model final") + 1)
    capsys.readouterr()
    assert main(["train", "--resume", str(run.path)]) == 0
    out = capsys.readouterr().out
    ref = json.loads((reference / "summary.json").read_text())
    assert f"{100 * ref['final_accuracy']:.1f}% (after RL)" in out
    assert_same_run(run.path, reference)


def test_real_sigkill_then_resume(tmp_path, reference):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "rlvr.cli", "train", "--output-dir", str(run_dir), *OVERRIDES],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metrics = run_dir / "metrics.jsonl"
    try:
        # Kill in RL step 2 or 3: after SFT's 6 records and RL step 1's.
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 7):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert_same_run(run_dir, reference)


def test_torn_last_line_is_skipped(tmp_path, reference):
    run = _crashed_run(tmp_path / "run", after("append metrics.jsonl", 7))  # RL step 1
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "rl", "step": 2, "los')  # the kill tore the next record
    assert run.read("metrics.jsonl")[-1]["step"] == 1  # readers (plots, report, limr) skip it
    _resume(run.path)
    assert_same_run(run.path, reference)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("crash_after, damage, expected", [
    # the newest SFT checkpoint truncated or deleted: back to the one before
    (after("append metrics.jsonl", 5), lambda c: _truncate(c / "sft-step-000004" / "model.safetensors"),
     "checkpoints/sft-step-000004 is damaged (model.safetensors has"),
    (after("append metrics.jsonl", 5), lambda c: shutil.rmtree(c / "sft-step-000004"),
     "checkpoints/sft-step-000004 is missing; continuing from checkpoints/sft-step-000002"),
    # the only RL checkpoint's trainer state empty: RL restarts from sft-final
    (after("append metrics.jsonl", 9), lambda c: (c / "rl-step-000002" / "trainer_state.pt").write_bytes(b""),
     "checkpoints/rl-step-000002 is damaged (trainer_state.pt has 0 bytes"),
    # RL's final model emptied after RL ended: RL redoes its last steps
    (after("save_model final") + 1, lambda c: (c / "final" / "model.safetensors").write_bytes(b""),
     "checkpoints/final is damaged"),
], ids=["truncated-model", "deleted-latest", "empty-trainer-state", "empty-final-model"])
def test_damaged_checkpoint_falls_back_to_newest_intact(tmp_path, reference, capsys, crash_after, damage, expected):
    run = _crashed_run(tmp_path / "run", crash_after)
    damage(run.checkpoints)
    capsys.readouterr()
    _resume(run.path)
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert_same_run(run.path, reference)


def test_a_fallback_deletes_the_damaged_checkpoint(tmp_path, capsys):
    # Left in place, a damaged later step outlived the checkpoints the resume wrote: with
    # keep_last=1, pruning by name kept the wreck and deleted each fresh checkpoint.
    run = _crashed_run(tmp_path / "run", after("append metrics.jsonl", 5))  # SFT step 5
    _truncate(run.checkpoints / "sft-step-000004" / "model.safetensors")
    capsys.readouterr()
    state = RunDir(run.path).recover()
    assert state["checkpoint"] == "checkpoints/sft-step-000002"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["sft-step-000002"]
    err = capsys.readouterr().err
    assert err.endswith("continuing from checkpoints/sft-step-000002 (deleted checkpoints/sft-step-000004)\n"), err


def test_a_new_run_never_takes_over_what_an_old_run_left(tmp_path, capsys):
    # state.json lost, checkpoints and logs still there: a new run in that directory used to
    # resume the old run's checkpoints (their saved states outranked its fresh one)
    run = _crashed_run(tmp_path / "run", after("append metrics.jsonl", 9))
    (run.path / "state.json").unlink()
    capsys.readouterr()
    assert main(["train", "--output-dir", str(run.path), *OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run.path} already holds a run; resume it with") and err.count("\n") == 1, err


@pytest.mark.parametrize("content", [b"", b'{"completed_stages": ["sft"], "chec', b"\x00" * 64],
                         ids=["empty", "truncated", "garbage"])
def test_damaged_state_json_recovers_from_newest_checkpoint(tmp_path, reference, capsys, content):
    run = _crashed_run(tmp_path / "run", after("append metrics.jsonl", 9))  # RL step 3
    (run.path / "state.json").write_bytes(content)
    capsys.readouterr()
    _resume(run.path)
    err = capsys.readouterr().err
    assert "state.json is damaged" in err and "continuing from checkpoints/rl-step-000002" in err, err
    assert_same_run(run.path, reference)


def test_nothing_intact_restarts_from_the_start(tmp_path, reference, capsys):
    run = _crashed_run(tmp_path / "run", after("append metrics.jsonl", 5))
    (run.path / "state.json").write_bytes(b"")
    shutil.rmtree(run.checkpoints)
    capsys.readouterr()
    _resume(run.path)
    assert "restarting the run from its start" in capsys.readouterr().err
    assert_same_run(run.path, reference)


def test_second_process_on_a_run_dir_gets_a_lock_error(tmp_path, capsys):
    run = _crashed_run(tmp_path / "run", after("save_model sft-step-000002"))
    holder = RunDir(run.path)
    holder.lock()  # the first `--resume`, still running
    try:
        before = (run.path / "metrics.jsonl").read_bytes()
        capsys.readouterr()
        assert main(["train", "--resume", str(run.path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run.path} is in use by another rlvr process (pid {os.getpid()})"), err
        assert err.count("\n") == 1
        assert (run.path / "metrics.jsonl").read_bytes() == before
    finally:
        holder.unlock()


def test_two_new_runs_in_one_dir_one_gets_the_lock_error(tmp_path, capsys):
    # the lock is taken before RunDir.create looks for state.json: the second creator used to
    # pass that check too and overwrite the first run's config.yaml and state.json
    path = tmp_path / "run"
    holder = RunDir(path)
    holder.lock()  # the first `rlvr train --output-dir run`, between its check and its writes
    try:
        capsys.readouterr()
        assert main(["train", "--output-dir", str(path), *OVERRIDES]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path} is in use by another rlvr process (pid {os.getpid()})"), err
        assert sorted(p.name for p in path.iterdir()) == ["lock"]
    finally:
        holder.unlock()
    new_run_dir(_config(), str(path), "t")  # the lock is gone with its holder


@pytest.mark.parametrize("kind", ["missing", "empty", "foreign"])
def test_resume_of_something_that_is_not_a_run_is_one_line(tmp_path, capsys, kind):
    path = tmp_path / "dir"
    if kind != "missing":
        path.mkdir()
    if kind == "foreign":
        (path / "notes.txt").write_text("hello")
    assert main(["train", "--resume", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume {path}: ") and err.count("\n") == 1, err


def test_no_disk_room_stops_before_a_checkpoint_and_resumes(tmp_path, reference, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real = shutil.disk_usage
    calls = []

    def second_checkpoint_does_not_fit(path):
        calls.append(path)
        usage = real(path)
        return usage._replace(free=usage.free if len(calls) == 1 else 1000)

    monkeypatch.setattr(shutil, "disk_usage", second_checkpoint_does_not_fit)
    assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no disk room for checkpoint sft-step-000004: 0.0 MiB free") and err.count("\n") == 1
    assert f"--resume {run_dir}" in err
    assert not (run_dir / "checkpoints" / ".sft-step-000004.tmp").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert_same_run(run_dir, reference)


def test_wall_seconds_add_up_over_invocations(tmp_path):
    run = _crashed_run(tmp_path / "run", after("append metrics.jsonl", 9))
    first = run.load_state()["wall_seconds"]  # saved with the last checkpoint
    assert first > 0
    t0 = time.perf_counter()
    summary = _resume(run.path)
    second = time.perf_counter() - t0
    assert round(first, 1) <= summary["wall_seconds"] <= first + second + 0.1


def _raise(exc: BaseException) -> Callable[[str], None]:
    def action(event: str) -> None:
        raise exc
    return action


def test_ctrl_c_names_the_run_dir(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with observed_writes(after("save_model sft-step-000002"), _raise(KeyboardInterrupt())):
        assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; continue with `rlvr train --resume {run_dir}`" in err and "RUN_DIR" not in err


def test_resume_says_which_checkpoint_and_step_it_continues_from(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # (the 3rd state save: main's RunDir.create saves the first one)
    with observed_writes(after("save_state", 2) + 1, _raise(KeyboardInterrupt())):
        assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 130
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    sft_steps = _config().sft.steps
    assert f"resume: continuing from checkpoints/sft-step-000002 (SFT step 2 of {sft_steps})\n" in \
        capsys.readouterr().out
    assert main(["train", "--resume", str(run_dir)]) == 0  # finished: says what is done
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("resume: "))
    assert line.startswith("resume: continuing from checkpoints/final; done: sft, rl, warmstart evaluation, ")
    assert line.endswith(", final evaluation")


def test_a_run_that_failed_before_its_first_step_does_not_block_the_next(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory while loading")

    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "_starting_model", broken)
        assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 1
    assert "out of memory while loading" in capsys.readouterr().err and (run_dir / "config.yaml").exists()
    assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 0  # the same command, again
    assert "out of memory while loading" in (run_dir / "error.log").read_text()  # the first attempt's report stays
    # a run that got as far as a step is never taken over
    assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 2
    assert "already holds a run" in capsys.readouterr().err


class _SigtermNotHandled(BaseException):
    pass


def test_sigterm_stops_like_ctrl_c(tmp_path, capsys):
    def unhandled(signum, frame):  # what SIGTERM does if rlvr installs no handler (instead of killing pytest)
        raise _SigtermNotHandled()

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        run_dir = tmp_path / "run"
        # (the 3rd state save: main's RunDir.create saves the first one)
        with observed_writes(after("save_state", 2) + 1, lambda event: os.kill(os.getpid(), signal.SIGTERM)):
            assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert f"terminated; continue with `rlvr train --resume {run_dir}`" in err
    assert RunDir(run_dir).load_state()["checkpoint"] == "checkpoints/sft-step-000002"


def test_error_after_start_up_is_one_line_and_a_log(tmp_path, capsys):
    run_dir = tmp_path / "run"
    with observed_writes(after("append pass_rates.jsonl"), _raise(RuntimeError("verifier pool died"))):
        assert main(["train", "--output-dir", str(run_dir), *OVERRIDES]) == 1
    err = capsys.readouterr().err
    assert err == f"error: RuntimeError: verifier pool died (traceback: {run_dir / 'error.log'})\n"
    log = (run_dir / "error.log").read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: verifier pool died" in log


@pytest.mark.parametrize("where", ["a-file", "a-file/sub"])
def test_an_output_dir_that_cannot_be_a_directory_is_one_line(tmp_path, capsys, where):
    (tmp_path / "a-file").write_text("not a directory")
    assert main(["train", "--output-dir", str(tmp_path / where), *OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot use {tmp_path / where} as a run directory: ") and err.count("\n") == 1, err
