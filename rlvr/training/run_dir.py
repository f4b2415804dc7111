"""The run directory: the unit a user resumes, compares and shares.

Layout::

    config.yaml        resolved config (with help comments)
    state.json         where the run is: finished stages, latest checkpoint, evaluations, and
                       how many bytes of each log belong to that point
    metrics.jsonl      one record per SFT/RL step
    samples.jsonl      some completions with rewards per RL step
    pass_rates.jsonl   every RL step's per-prompt pass rates (LIMR selection reads them)
    eval.jsonl         held-out evaluations (warm start, periodic, final)
    eval_problems.jsonl  each evaluation's per-problem outcomes (paired comparisons)
    checkpoints/       HF-format model + tokenizer dirs; resumable ones add trainer_state.pt;
                       each adds run_state.json (the state as of that checkpoint) and
                       manifest.json (size and sha256 of every file, written last)
    plots/             PNG curves
    summary.json       headline numbers
    lock               pid of the process writing the run (flock-ed while it runs)
    error.log          tracebacks of runs that stopped on an error

What a crash can and cannot do: a checkpoint is written to a temporary directory, its
manifest last, and renamed into place; state.json is replaced atomically after that. Every
saved state (state.json, and the copy inside each checkpoint) records the length of each
log file at that moment, and a resume (``recover``) cuts the logs back to the lengths of the
state it continues from, so records written after it (and a line torn by the crash) are
dropped and written again, never duplicated. A resume verifies the checkpoint it continues
from against its manifest and falls back to the newest intact one, which carries its own
state, so the logs, step and model it restores always belong together.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.models.lora import save_pretrained
from rlvr.config import RunConfig, save_config
from rlvr.distributed.fsdp import SHARDS
from rlvr.finite import check_finite_state, check_finite_weights

STATE_FILE = "state.json"
TRAINER_STATE = "trainer_state.pt"
MANIFEST = "manifest.json"
CHECKPOINT_STATE = "run_state.json"
LOCK_FILE = "lock"
LOGS = ("metrics.jsonl", "samples.jsonl", "pass_rates.jsonl", "eval.jsonl", "eval_problems.jsonl")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (missing, not a run, in use by another
    process, no disk room for a checkpoint); the message says what to do."""


class RunDirExistsError(RunDirError, FileExistsError):
    """A new run was asked for in a directory that already holds one."""


def fresh_state() -> dict[str, Any]:
    return {"completed_stages": [], "checkpoint": None, "evals": {}}


def model_source(state: dict[str, Any]) -> str | None:
    """The checkpoint (relative to the run dir) a run in ``state`` continues from: the RL
    result once RL is done, else the interrupted stage's latest checkpoint, else the SFT
    result; None means the configured ``model.path`` or a freshly built tiny model."""
    return state.get("final_checkpoint") or state.get("checkpoint") or state.get("sft_final")


def resume_point(state: dict[str, Any], config: Any) -> str | None:
    """Where a run continues from, in words (None for a run at its start): the checkpoint and
    the step it holds, and what is already done."""
    done = list(state.get("completed_stages", []))
    done += [f"{phase} evaluation" for phase in state.get("evals", {})]
    checkpoint = state.get("checkpoint")
    if not checkpoint and not done:
        return None
    parts = []
    if checkpoint:
        name = Path(checkpoint).name
        stage, _, number = name.rpartition("-step-")
        if number.isdigit() and stage in ("sft", "rl"):
            total = config.sft.steps if stage == "sft" else config.rl.steps
            parts.append(f"from {checkpoint} ({stage.upper()} step {int(number)} of {total})")
        else:
            parts.append(f"from {checkpoint}")
    elif model_source(state):
        parts.append(f"from {model_source(state)}")
    if done:
        parts.append("done: " + ", ".join(done))
    return "; ".join(parts)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        # called with (file name, records) after every append: the logging.backends mirror
        self.on_append: Callable[[str, list[dict[str, Any]]], None] | None = None
        self._lock: weakref.finalize | None = None  # closes the lock's fd (releasing it) when called or collected
        self._clock: tuple[float, float] | None = None  # (perf_counter at start, wall seconds before it)
        self._checkpoint_bytes: dict[bool, int] = {}  # last checkpoint's size, by "resumable"

    @classmethod
    def create(cls, config: RunConfig, path: str | Path) -> "RunDir":
        run = cls(path)
        run.lock()  # before the check: of two processes creating one run dir, one gets an error
        # Any trace of a run counts, not only state.json: a new run must never pick up an old
        # run's checkpoints (their saved states would outrank its own on the first resume).
        traces = [STATE_FILE, "config.yaml", *LOGS]
        has_run = any((run.path / name).exists() for name in traces) or \
            (run.checkpoints.is_dir() and any(run.checkpoints.iterdir()))
        if has_run and run.never_started():
            run.clear_attempt()  # an attempt that failed before its first step blocks nothing
        elif has_run:
            run.unlock()
            raise RunDirExistsError(
                f"{run.path} already holds a run; resume it with `rlvr train --resume {run.path}` "
                "or choose another --output-dir / run_name"
            )
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        run.plots.mkdir(parents=True, exist_ok=True)
        save_config(config, run.path / "config.yaml")
        run.save_state(fresh_state())
        return run

    def never_started(self) -> bool:
        """Whether this directory holds only an attempt that failed before its first step: a
        fresh state, no checkpoint and empty logs (then a new run may take the directory)."""
        try:
            state = json.loads((self.path / STATE_FILE).read_text())
        except (OSError, ValueError):
            return False
        fresh = {key: state.get(key) for key in fresh_state()} == fresh_state()
        logs_empty = all(not (self.path / name).exists() or (self.path / name).stat().st_size == 0 for name in LOGS)
        no_checkpoints = not (self.checkpoints.is_dir() and any(self.checkpoints.iterdir()))
        return fresh and logs_empty and no_checkpoints

    def clear_attempt(self) -> None:
        """Remove what a failed first attempt left (its error.log stays, for the bug report)."""
        for name in (STATE_FILE, "config.yaml", *LOGS):
            (self.path / name).unlink(missing_ok=True)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory to resume; a one-line ``RunDirError`` if it is not one."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"--resume {run.path}: no such directory")
        if not (run.path / "config.yaml").is_file():
            what = "it is empty" if not any(run.path.iterdir()) else "it has no config.yaml"
            raise RunDirError(f"--resume {run.path}: not an rlvr run directory ({what}); "
                              f"start a run there with `rlvr train --output-dir {run.path}`")
        return run

    # ---- lock --------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the run dir for this process: a second process (a second ``--resume``) gets a
        ``RunDirError`` naming the holder. The kernel drops the lock when the process dies.
        Taking it again through the RunDir that holds it is a no-op; the lock goes when the
        RunDir is unlocked or collected."""
        if self._lock is not None and self._lock.alive:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # a file in the way, no permission, a read-only disk
            raise RunDirError(f"cannot use {self.path} as a run directory: {err.strerror} "
                              f"({err.filename})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another rlvr process (pid {holder}); "
                              "wait for it to finish or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = weakref.finalize(self, os.close, fd)

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock()  # closing the only fd of the open file releases the flock
            self._lock = None

    # ---- state -------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        """state.json as written; a ``RunDirError`` if it is missing or not a JSON object."""
        state_path = self.path / STATE_FILE
        if not state_path.is_file():
            raise RunDirError(f"{self.path} is not an rlvr run directory (no {STATE_FILE})")
        try:
            state = json.loads(state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(f"{state_path} is damaged ({err})") from None
        if not isinstance(state, dict) or "completed_stages" not in state:
            raise RunDirError(f"{state_path} is damaged (not a run state)")
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / STATE_FILE, json.dumps(self.stamp(state), indent=2))

    def stamp(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` stamped (in place) with what a resume from this moment needs: a sequence
        number ordering saved states, the run's wall time so far, and the length of each log
        (flushed to disk first)."""
        state["seq"] = state.get("seq", 0) + 1
        if self._clock is not None:
            started, before = self._clock
            state["wall_seconds"] = before + time.perf_counter() - started
        state["logs"] = {name: _durable_size(self.path / name) for name in LOGS}
        return state

    def recover(self) -> dict[str, Any]:
        """The state this invocation continues from, made state.json, with every log cut back
        to that state's lengths and the wall clock started.

        That is state.json's state unless a checkpoint holds a newer one (a crash between
        writing it and state.json), or the checkpoint it continues from is missing or fails
        its manifest: then the newest saved state whose checkpoint is intact, and the run's
        start when there is none. A fallback is reported in one line on stderr."""
        candidates: list[dict[str, Any]] = []  # saved states: state.json's and each checkpoint's
        problems: list[str] = []
        try:
            candidates.append(self.load_state())
        except RunDirError as err:
            problems.append(f"{STATE_FILE} is missing" if not (self.path / STATE_FILE).exists()
                            else str(err).replace(f"{self.path}/", ""))
        verified: dict[str, str | None] = {}  # checkpoint -> what is wrong with it (None: intact)
        for checkpoint in sorted(self.checkpoints.glob("[!.]*")):
            try:
                candidates.append(json.loads((checkpoint / CHECKPOINT_STATE).read_text()))
            except (OSError, ValueError):
                name = f"checkpoints/{checkpoint.name}"
                verified[name] = verify_checkpoint(checkpoint)
                if verified[name] is not None:
                    problems.append(f"{name} is damaged ({verified[name]})")
        chosen: dict[str, Any] | None = None
        for state in sorted(candidates, key=lambda s: s.get("seq", 0), reverse=True):
            source = model_source(state)
            if source is not None and source not in verified:
                verified[source] = verify_checkpoint(self.path / source)
                if verified[source] == "missing":
                    problems.append(f"{source} is missing")
                elif verified[source] is not None:
                    problems.append(f"{source} is damaged ({verified[source]})")
            if source is None or verified[source] is None:
                chosen = state
                break
        if chosen is None:
            chosen = {**fresh_state(), "logs": dict.fromkeys(LOGS, 0)}  # nothing kept: every log starts over
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.plots.mkdir(parents=True, exist_ok=True)
        # A damaged checkpoint is deleted: left in place, a later (named) step's wreck would
        # outlive the checkpoints this invocation writes when keep_last prunes by name.
        damaged = [name for name, wrong in verified.items() if wrong not in (None, "missing")]
        for name in damaged:
            shutil.rmtree(self.path / name, ignore_errors=True)
        if problems:
            source = model_source(chosen)
            where = (f"continuing from {source}" if source
                     else "continuing from the configured model.path" if chosen["evals"]
                     else "restarting the run from its start")
            removed = f" (deleted {', '.join(damaged)})" if damaged else ""
            print(f"resume: {'; '.join(problems)}; {where}{removed}", file=sys.stderr)
        chosen["seq"] = max((s.get("seq", 0) for s in candidates), default=0)  # later saves sort after all
        if "logs" in chosen:  # (a state written before log lengths were kept cuts nothing)
            self._cut_logs(chosen["logs"])
        self._clock = (time.perf_counter(), chosen.get("wall_seconds", 0.0))
        self.save_state(chosen)
        return chosen

    def _cut_logs(self, marks: dict[str, int]) -> None:
        for name in LOGS:
            if name not in marks:  # a log this state predates: nothing known to cut
                continue
            path, mark = self.path / name, marks[name]
            size = path.stat().st_size if path.exists() else 0
            if size > mark:
                os.truncate(path, mark)
            elif size < mark:
                print(f"resume: {name} holds {size} bytes, fewer than the {mark} saved with the state it "
                      "resumes from; the disk lost some of its records", file=sys.stderr)

    # ---- logs --------------------------------------------------------------------------
    def append(self, name: str, records: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Append records as JSON lines; a NaN or inf (the loss of a skipped update) is written
        as null, so every line is strict JSON that any reader accepts."""
        if isinstance(records, dict):
            records = [records]
        with open(self.path / name, "a") as fh:
            fh.write("".join(_json_line(record) for record in records))
        if self.on_append is not None:
            self.on_append(name, records)

    def read(self, name: str) -> list[dict[str, Any]]:
        """The records of a log; a torn last line (a writer killed mid-line) is skipped."""
        path = self.path / name
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines):
                    break
                raise ValueError(f"{path}:{number}: not a JSON record ({err.msg})") from None
        return records

    # ---- checkpoints -------------------------------------------------------------------
    def shard_dir(self, name: str) -> Path:
        """Where every trainer rank writes its shards of checkpoint ``name``'s trainer state
        (emptied first; ``save_model(shards=...)`` moves it into the checkpoint)."""
        shards = self.checkpoints / f".{name}.shards"
        shutil.rmtree(shards, ignore_errors=True)  # an attempt killed mid-write, maybe with other ranks
        return shards

    def save_model(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   trainer_state: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                   shards: Path | None = None) -> Path:
        """Write an HF-format checkpoint (loadable with from_pretrained) under checkpoints/,
        with ``state`` (stamped) as its run_state.json, the folder ``shards`` (the trainer
        ranks' sharded state, already written) moved in as trainer_shards/, and a manifest of
        every file written last."""
        check_finite_weights(model, f"refusing to write checkpoint {name!r}")  # never a NaN checkpoint
        final = self.checkpoints / name
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        resumable = trainer_state is not None
        self._check_disk_room(name, model, resumable)
        try:
            save_pretrained(model, tmp)  # with LoRA adapters: the merged weights, and adapter/
            tokenizer.save_pretrained(tmp)
            if trainer_state is not None:
                torch.save(trainer_state, tmp / TRAINER_STATE)
            if state is not None:
                (tmp / CHECKPOINT_STATE).write_text(json.dumps(self.stamp(state), indent=2))
            if shards is not None:
                os.replace(shards, tmp / SHARDS)
            write_manifest(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint only takes disk room
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.checkpoints)
        self._checkpoint_bytes[resumable] = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
        return final

    def _check_disk_room(self, name: str, model: PreTrainedModel, resumable: bool) -> None:
        """Stop before writing a checkpoint that would not fit (the last one stays intact).
        The need is the previous checkpoint of the same kind, else an estimate: the weights,
        times 4 for a resumable one (optimizer moments, reference model)."""
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        need = self._checkpoint_bytes.get(resumable) or weights * (4 if resumable else 1) + 2**20
        free = shutil.disk_usage(self.checkpoints).free
        if free < need:
            raise RunDirError(f"no disk room for checkpoint {name}: {free / 2**20:.1f} MiB free under "
                              f"{self.checkpoints}, about {need / 2**20:.1f} MiB needed; free some space "
                              f"and continue with `rlvr train --resume {self.path}`")

    def prune(self, prefix: str, keep_last: int) -> None:
        """Delete all but the newest ``keep_last`` checkpoints named ``prefix``-NNNNNN."""
        found = sorted(p for p in self.checkpoints.glob(f"{prefix}-*") if p.is_dir())
        for old in found[: max(0, len(found) - keep_last)]:
            shutil.rmtree(old, ignore_errors=True)


class FollowerRunDir(RunDir):
    """The run directory as a trainer rank other than 0 sees it: it reads what rank 0 wrote
    (checkpoints to resume from) and writes nothing; rank 0 holds the lock and keeps the
    records, checkpoints and state for every rank (the ranks' weights are the same)."""

    def lock(self) -> None:
        pass

    def unlock(self) -> None:
        pass

    def save_state(self, state: dict[str, Any]) -> None:
        pass

    def append(self, name: str, records: list[dict[str, Any]] | dict[str, Any]) -> None:
        pass

    def shard_dir(self, name: str) -> Path:
        return self.checkpoints / f".{name}.shards"  # rank 0 empties it before the ranks write

    def save_model(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   trainer_state: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
                   shards: Path | None = None) -> Path:
        return self.checkpoints / name

    def prune(self, prefix: str, keep_last: int) -> None:
        pass

    def recover(self) -> dict[str, Any]:
        raise RunDirError("a follower rank takes the run's state from rank 0, which recovers it")


def write_manifest(directory: Path) -> None:
    """Flush every file of a checkpoint to disk, then record each one's size and sha256 in
    manifest.json (written last: a checkpoint without it was not completely written)."""
    manifest = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            manifest[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(fh, "sha256").hexdigest()}
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1))


def verify_checkpoint(directory: Path) -> str | None:
    """None if every file in the checkpoint's manifest is there with its size and sha256,
    else what is wrong ('missing' for a checkpoint that is not there at all). A checkpoint
    without any manifest was written before manifests existed and is taken as it is (a
    checkpoint is renamed into place only after its manifest is written)."""
    if not directory.is_dir():
        return "missing"
    if not (directory / MANIFEST).exists():
        return None
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, {expected['bytes']} expected"
        with open(path, "rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != expected["sha256"]:
                return f"{name} does not match its sha256"
    return None


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    # Our own file, written by save_model; it holds optimizer tensors and RNG tuples.
    # map_location: a GPU run resumes on a CPU-only machine too (load_state_dict moves the
    # optimizer's tensors to its parameters' device).
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=False, map_location="cpu")
    check_finite_state(state, f"checkpoint {checkpoint}: {TRAINER_STATE}")
    return state


def _json_line(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, allow_nan=False) + "\n"
    except ValueError:  # a non-finite float somewhere in the record
        return json.dumps(_finite_or_none(record), allow_nan=False) + "\n"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _durable_size(path: Path) -> int:
    """The length of a log file after flushing it to disk (0 if there is none)."""
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
            return os.fstat(fh.fileno()).st_size
    except FileNotFoundError:
        return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
