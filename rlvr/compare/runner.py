"""Running a comparison: every arm x seed is a run directory under the output directory,
trained by ``rlvr train`` in a process of its own, one after another or N at a time.

- Before anything runs, every arm x seed config is loaded and checked (``check_names``): a
  mistake in any arm is one line naming it, and nothing starts.
- Arms that share a warm start (equal ``warmstart_key``: the SFT stage's whole input) build it
  once: the first run of each such group goes first, its siblings then copy it from the
  warm-start cache (and say so in their logs), and the plan says which run builds which.
- An interrupted comparison resumes when the same command runs again: finished runs
  (``summary.json``) are kept, started ones continue from their last checkpoint
  (``rlvr train --resume``), the rest start. The output directory remembers the comparison
  (``comparison.json``); another comparison in the same directory is refused.
- A run that fails stops the comparison (the runs in flight finish) with one line naming its
  log; Ctrl-C interrupts the runs in flight at their next safe point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlvr.compare.spec import Arm, Comparison
from rlvr.typed_yaml import ConfigError


@dataclass
class PlannedRun:
    arm: Arm
    seed: int
    path: Path
    args: list[str]
    warmstart: str | None  # the warm-start cache key, when the run trains a cacheable SFT stage

    @property
    def name(self) -> str:
        return self.path.name

    def status(self) -> str:
        if (self.path / "summary.json").is_file():
            return "done"
        if (self.path / "state.json").is_file():
            return "started"
        return "new"


class CompareError(RuntimeError):
    """A run of the comparison failed; the message names it and its log."""


def plan(comparison: Comparison, output_dir: Path, parallel: int = 1) -> list[PlannedRun]:
    """Every arm x seed run with its config checked (a ``ConfigError`` naming the arm otherwise)."""
    from rlvr.config import load_config
    from rlvr.recipes import resolve_config
    from rlvr.training import warmstart_cache
    from rlvr.training.pipeline import check_names

    runs = []
    for arm in comparison.arms:
        for seed in comparison.seeds:
            args = comparison.train_args(arm, seed) + (["threads=1"] if parallel > 1 else [])
            recipe, overrides = (args[1], args[2:]) if args[:1] == ["--config"] else (None, args)
            where = f"arm {arm.name!r}" + (f" ({comparison.source})" if comparison.source != "command line" else "")
            try:
                path = resolve_config(recipe)[0] if recipe else None
                config = load_config(path, overrides)
                check_names(config, path or "config")
            except FileNotFoundError as err:
                raise ConfigError(f"{where}: {err}") from None
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            shared = "sft" in config.stages and warmstart_cache.enabled(config)
            key = warmstart_cache.warmstart_key(config) if shared else None
            runs.append(PlannedRun(arm, seed, output_dir / comparison.run_name(arm, seed), args, key))
    return runs


def check_output_dir(comparison: Comparison, output_dir: Path) -> None:
    """The output directory is new, or holds this same comparison (then it resumes)."""
    saved = output_dir / "comparison.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != comparison.describe():
            changed = sorted(k for k in before if before.get(k) != comparison.describe().get(k))
            raise ConfigError(f"--output-dir {output_dir} holds another comparison (its {', '.join(changed)} differ); "
                              "rerun it as it was to resume it, or choose another directory")
    elif output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"--output-dir {output_dir} exists and holds something else; choose another directory")


def build_order(runs: list[PlannedRun]) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(first, rest): the first unfinished run of each warm-start group whose warm start is not
    cached yet goes before the others, so each warm start is built once."""
    from rlvr.training import warmstart_cache

    first: list[PlannedRun] = []
    seen: set[str] = set()
    for run in runs:
        if run.warmstart is None or run.warmstart in seen:
            continue
        seen.add(run.warmstart)
        group = [r for r in runs if r.warmstart == run.warmstart]
        unbuilt = warmstart_cache.cached_entry(run.warmstart) is None
        if len(group) > 1 and unbuilt and all(r.status() != "done" for r in group):
            first.append(group[0])
    rest = [r for r in runs if r not in first]
    return first, rest


def describe_plan(runs: list[PlannedRun], first: list[PlannedRun]) -> list[str]:
    """What will run: counts by status, and which run builds each shared warm start."""
    counts = {status: sum(r.status() == status for r in runs) for status in ("done", "started", "new")}
    lines = [f"compare: {len(runs)} runs ({counts['done']} finished and kept, {counts['started']} to resume, "
             f"{counts['new']} to start)"]
    for builder in first:
        sharing = [r.name for r in runs if r.warmstart == builder.warmstart and r is not builder]
        lines.append(f"compare: warm start {builder.warmstart[:8]} built once by {builder.name}, reused by "
                     f"{len(sharing)} run(s): {', '.join(sharing)}")
    return lines


class Launcher:
    """Runs ``rlvr train`` processes with their output in a log each; stops them on Ctrl-C."""

    def __init__(self, output_dir: Path, timeout_s: float, env: dict[str, str] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.logs = output_dir / "logs"
        self.timeout_s, self.env, self.log = timeout_s, env, log
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.failed: str | None = None

    def run(self, run: PlannedRun) -> None:
        if run.status() == "done" or self.failed is not None:
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        log_file = self.logs / f"{run.name}.log"
        resume = run.status() == "started"
        args = ["train", "--resume", str(run.path)] if resume else ["train", "--output-dir", str(run.path), *run.args]
        self.log(f"compare: {'resuming' if resume else 'starting'} {run.name}")
        started = time.perf_counter()
        with open(log_file, "a") as out:
            child = subprocess.Popen([sys.executable, "-m", "rlvr", *args], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
            with self.lock:
                self.children.add(child)
            try:
                code = child.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGINT)
                try:
                    child.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    child.kill()
                code = None
            finally:
                with self.lock:
                    self.children.discard(child)
        if code == 0:
            self.log(f"compare: finished {run.name} ({time.perf_counter() - started:.0f} s)")
            return
        why = (f"ran past --timeout-s {self.timeout_s:g} and was stopped" if code is None
               else f"exited with {code}")
        with self.lock:
            if self.failed is None:
                self.failed = f"run {run.name} {why}; see {log_file}"

    def interrupt(self) -> None:
        with self.lock:
            children = list(self.children)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)  # rlvr train stops at its next safe point
        deadline = time.time() + 120
        for child in children:
            try:
                child.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()


def run_all(comparison: Comparison, output_dir: Path, parallel: int = 1, timeout_s: float = 24 * 3600.0,
            log: Callable[[str], None] = print) -> list[PlannedRun]:
    """Plan, check and run the comparison (module docstring); returns its runs, all finished."""
    runs = plan(comparison, output_dir, parallel)
    check_output_dir(comparison, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "comparison.json").write_text(json.dumps(comparison.describe(), indent=1))
    first, rest = build_order(runs)
    for line in describe_plan(runs, first):
        log(line)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    launcher = Launcher(output_dir, timeout_s, env, log)
    pool = ThreadPoolExecutor(max(1, parallel))
    try:
        list(pool.map(launcher.run, first))
        list(pool.map(launcher.run, rest))
    except KeyboardInterrupt:  # (SIGTERM arrives as one too): stop the runs in flight, queue nothing more
        launcher.failed = launcher.failed or "interrupted"
        launcher.interrupt()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if launcher.failed is not None:
        raise CompareError(launcher.failed)
    return runs

