"""Warm starts reused across runs: an SFT stage whose inputs equal a cached one's is not
trained again.

Trying five recipes from the default warm start trains the same SFT stage five times; this
cache keeps each finished SFT stage (the ``sft-final`` weights and tokenizer, and its metrics
records) under a key that covers everything the stage's result depends on:

- the config fields SFT reads: ``seed``, ``model`` (and a local ``model.path``'s files by
  name, size and modification time), ``task``, ``sft``, ``eval.problems`` and
  ``eval.seed`` (the held-out ids it never trains on), ``data.reuse_problems``,
  ``data.max_prompt_length`` and ``data.overlong_prompts`` (the prompts it trains on),
  ``rollout.environment`` (multi-turn demonstrations), ``device``, ``threads`` and the
  number of trainer ranks (each sums its share: equal up to rounding, not to the bit);
- the task's data: the bytes of a ``task.params.path`` file (a directory: every file's
  name, size and bytes);
- the code: rlvr's own source files and the torch and transformers versions.

A run that finds its key copies the cached stage into its run directory (a normal
``checkpoints/sft-final`` written by this run, the SFT records in its metrics.jsonl) and says
so in one line; any other run trains SFT and stores the result. ``sft.cache: false`` turns it
off for a run; ``RLVR_NO_WARMSTART_CACHE=1`` for a process (the test suite); the cache lives in
``RLVR_CACHE_DIR`` (default ``~/.cache/rlvr``) under ``warmstarts/``. A task given as a Python
object has no config to key on and is never cached. A store killed mid-copy leaves a
``.tmp-*`` directory that no lookup reads; the next store removes those over an hour old.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

CACHE_FILES = ("model", "metrics.jsonl", "meta.json")


def cache_root() -> Path:
    return Path(os.environ.get("RLVR_CACHE_DIR") or Path.home() / ".cache" / "rlvr") / "warmstarts"


def enabled(config: Any) -> bool:
    return bool(config.sft.cache) and os.environ.get("RLVR_NO_WARMSTART_CACHE", "") in ("", "0")


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    import torch
    import transformers

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _data_fingerprint(params: dict[str, Any]) -> str | None:
    path = params.get("path") if isinstance(params, dict) else None
    if not path:
        return None
    location = Path(str(path)).expanduser()
    digest = hashlib.sha256()
    files = sorted(p for p in location.rglob("*") if p.is_file()) if location.is_dir() else [location]
    for file in files:
        if not file.is_file():
            return f"unreadable:{path}"  # a dataset name in the HF cache: keyed by name only
        digest.update(f"{file.relative_to(location) if location.is_dir() else file.name}:"
                      f"{file.stat().st_size}".encode())
        with open(file, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def _model_files(path: str | None) -> list[tuple[str, int, int]] | None:
    """A local starting checkpoint's files by name, size and modification time: a checkpoint
    written again at the same path (another run into the same directory) is another key. A
    hub id is keyed by its name (the cache's snapshot of a revision does not change)."""
    location = Path(path).expanduser() if path else None
    if location is None or not location.is_dir():
        return None
    return [(str(p.relative_to(location)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(location.rglob("*")) if p.is_file()]


def warmstart_key(config: Any) -> str:
    """The cache key of ``config``'s SFT stage (module docstring)."""
    inputs = {
        "seed": config.seed, "model": asdict(config.model), "task": asdict(config.task), "sft": asdict(config.sft),
        "eval": {"problems": config.eval.problems, "seed": config.eval.seed},
        "data": {"reuse_problems": config.data.reuse_problems, "max_prompt_length": config.data.max_prompt_length,
                 "overlong_prompts": config.data.overlong_prompts},
        "environment": asdict(config.rollout.environment), "device": config.device, "threads": config.threads,
        "ranks": os.environ.get("WORLD_SIZE", "1"),
        "data_fingerprint": _data_fingerprint(config.task.params), "code": _code_fingerprint(),
        "model_files": _model_files(config.model.path),
    }
    inputs["sft"].pop("cache", None)
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def lookup(config: Any) -> Path | None:
    """The cached warm start of ``config``'s SFT stage, or None."""
    return cached_entry(warmstart_key(config))


def cached_entry(key: str) -> Path | None:
    """The complete cache entry stored under ``key``, or None."""
    entry = cache_root() / key
    if all((entry / name).exists() for name in CACHE_FILES):
        return entry
    return None


ABANDONED_AFTER_S = 3600.0  # a store copies one checkpoint: seconds, not an hour


def remove_abandoned(root: Path, older_than_s: float = ABANDONED_AFTER_S) -> list[Path]:
    """Delete the temporary directories of stores that never finished (the process was
    killed mid-copy), once they are ``older_than_s`` old; returns what was removed."""
    removed = []
    for tmp in root.glob(".tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > older_than_s:
                shutil.rmtree(tmp)
                removed.append(tmp)
        except OSError:  # another store removed it first, or it is not ours to remove
            continue
    return removed


def store(config: Any, checkpoint: Path, records: list[dict[str, Any]], run_dir: Path) -> Path | None:
    """Keep a finished SFT stage (its ``sft-final`` checkpoint and metrics records); written
    to a temporary directory and renamed into place, so a reader never sees half of one. A
    cache that cannot be written (no room, read-only) costs the run nothing: None."""
    root = cache_root()
    entry = root / warmstart_key(config)
    if entry.exists():
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_abandoned(root)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            shutil.copytree(checkpoint, tmp / "model",
                            ignore=shutil.ignore_patterns("run_state.json", "manifest.json", "trainer_state.pt"))
            (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            (tmp / "meta.json").write_text(json.dumps({"from_run": str(run_dir), "created": time.time(),
                                                       "sft_steps": config.sft.steps}, indent=2))
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError:
        return None
    return entry
