"""Scored samples per problem: generated in fixed rounds, optionally cached on disk.

Evaluation needs, per problem, one greedy answer and n sampled ones. They are produced here
and nowhere else (through ``sample_trajectories``, the training loop's own sampler), so the
periodic evaluation of a training run and ``rlvr eval`` share every step.

Determinism. Sampled answers are drawn in *rounds*: round r covers sample indices
[1, 2, 4, ..., 64, 128, 192, ...) boundaries (doubling up to 64, then 64 at a time). A round
lays the problems out in order, as many per batch as fit in ``batch_size`` sequences, and
each batch samples from its own generator seeded by (seed, round, batch). So sample j of a
problem depends on the model, the seed, the problem list and the batch size, never on n:
asking for more samples later only adds rounds, and n = 8 followed by n = 64 gives exactly
the samples that n = 64 gives at once.

Cache. With a directory, every finished batch is appended to
``<dir>/<key digest>/samples.jsonl`` (the key, in ``key.json`` next to it, holds the model's
weight fingerprint, the task and its parameters, temperature, top-p, max_new_tokens, seed
and environment). A second call reuses what is there and generates only missing rounds;
Ctrl-C loses at most the batch in flight. Cached samples of a problem are reused even when
the problem list or batch size changed: they are valid draws, just laid out differently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.sampling import sample_trajectories
from rlvr.rollout.trajectory import Trajectory
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem, Score, Task
from rlvr.verify.pool import InlineVerifier, VerifierPool

CACHE_VERSION = 1
ROUND_CAP = 64


def round_bounds(n: int) -> list[tuple[int, int]]:
    """Sample-index ranges [start, end) of the rounds that hold the first n samples:
    (0, 1), (1, 2), (2, 4), ..., (32, 64), (64, 128), (128, 192), ..."""
    bounds, start = [], 0
    while start < n:
        size = 1 if start == 0 else min(start, ROUND_CAP)
        bounds.append((start, start + size))
        start += size
    return bounds


def model_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the model's class, parameter names and bytes, and the tokenizer's vocabulary
    and chat template: equal for the same weights wherever they were loaded from."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(tokenizer.chat_template).encode())
    return h.hexdigest()


def task_description(task: Task) -> dict[str, Any]:
    params = task.params
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(params)
    out = {"name": type(task).__module__ + "." + type(task).__qualname__, "params": params}
    # The layout decides what is scored; named only when not the default, so older caches still match.
    if task.answer_layout != "plain":
        out["answer_layout"] = task.answer_layout
    if task.stated_confidence:
        out["stated_confidence"] = True
    return out


def environment_description(environment: Any) -> dict[str, Any] | None:
    """A stable description of a multi-turn environment factory for the cache key."""
    if environment is None:
        return None
    out: dict[str, Any] = {"type": type(environment).__qualname__}
    for name in ("cls", "params", "max_turns", "observation_tokens"):
        value = getattr(environment, name, None)
        if isinstance(value, type):
            value = value.__module__ + "." + value.__qualname__
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        out[name] = value
    return out


@dataclass
class ProblemSamples:
    """One problem's greedy answer (None when not evaluated) and its sampled answers, in order."""

    problem: Problem
    greedy: dict[str, Any] | None
    sampled: list[dict[str, Any]]


class SampleCache:
    """Scored samples by problem id; in memory only, or also appended to a JSONL file."""

    def __init__(self, root: str | Path | None = None, key: dict[str, Any] | None = None) -> None:
        self.greedy: dict[str, dict[str, Any]] = {}
        self.sampled: dict[str, dict[int, dict[str, Any]]] = {}
        self.file: Path | None = None
        if root is not None:
            key = {"version": CACHE_VERSION, **(key or {})}
            text = json.dumps(key, sort_keys=True, default=str)
            directory = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
            self.file = directory / "samples.jsonl"
            if self.file.exists():
                self._load()

    def _load(self) -> None:
        assert self.file is not None
        for line in self.file.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by Ctrl-C: that batch is redone
                continue
            self._remember(entry)

    def _remember(self, entry: dict[str, Any]) -> None:
        if entry["kind"] == "greedy":
            self.greedy[entry["problem_id"]] = entry["samples"][0]
        else:
            mine = self.sampled.setdefault(entry["problem_id"], {})
            for offset, sample in enumerate(entry["samples"]):
                mine.setdefault(entry["start"] + offset, sample)

    def has(self, problem_id: str, start: int, end: int) -> bool:
        mine = self.sampled.get(problem_id, {})
        return all(j in mine for j in range(start, end))

    def put(self, entries: list[dict[str, Any]]) -> None:
        """Remember ``entries`` ({problem_id, kind, start, samples}) and append them to the file."""
        for entry in entries:
            self._remember(entry)
        if self.file is not None and entries:
            with open(self.file, "a") as fh:
                fh.write("".join(json.dumps(e) + "\n" for e in entries))

    @property
    def directory(self) -> Path | None:
        return None if self.file is None else self.file.parent


def sample_record(trajectory: Trajectory, text: str, score: Score) -> dict[str, Any]:
    """What evaluation keeps of one sample (JSON-able). ``tokens`` counts policy tokens only
    (not tool output); an episode that broke its environment's rules gets reward 0, as in training."""
    policy = [lp for lp, m in zip(trajectory.logprobs, trajectory.loss_mask) if m]
    return {"text": text, "extracted": score.extracted, "correct": bool(score.correct),
            "reward": 0.0 if trajectory.violation is not None else float(score.reward),
            "tokens": len(policy), "finish_reason": trajectory.finish_reason,
            "mean_logprob": sum(policy) / len(policy) if policy else 0.0,
            "tool_calls": trajectory.tool_calls, "error": score.error}


@dataclass
class SamplingSettings:
    """How answers are generated; everything here except batch_size is part of the cache key."""

    temperature: float
    max_new_tokens: int
    batch_size: int
    seed: int
    top_p: float = 1.0
    engine: str = "kv_cache"  # another engine draws other samples from the same seed
    dtype: str = "float32"  # the forward precision (model.dtype)
    max_prompt_tokens: int | None = None  # a longer prompt keeps its last that many tokens


def collect_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    engine: RolloutEngine,
    verifier: VerifierPool | InlineVerifier,
    settings: SamplingSettings,
    *,
    samples: int,
    greedy: bool = True,
    cache: SampleCache | None = None,
    environment: Any = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[ProblemSamples], int]:
    """Greedy answer and the first ``samples`` sampled answers of every problem, scored.

    Returns the per-problem samples and how many sequences this call generated (cached ones
    are not regenerated). ``progress`` is called with the number of sequences after each batch.
    """
    cache = cache if cache is not None else SampleCache()
    generated = 0

    def run(chunk: list[Problem], temperature: float, generator: torch.Generator | None) -> list[dict[str, Any]]:
        nonlocal generated
        trajectories = sample_trajectories(engine, model, tokenizer, chunk, max_new_tokens=settings.max_new_tokens,
                                           temperature=temperature, top_p=settings.top_p, generator=generator,
                                           batch_size=settings.batch_size, environment=environment,
                                           max_prompt_tokens=settings.max_prompt_tokens)
        texts = [t.judged_text(tokenizer) for t in trajectories]  # as in training
        scores = verifier.score_many(chunk, texts)
        generated += len(chunk)
        if progress is not None:
            progress(len(chunk))
        return [sample_record(t, text, s) for t, text, s in zip(trajectories, texts, scores)]

    if greedy:
        missing = [p for p in problems if p.id not in cache.greedy]
        for start in range(0, len(missing), settings.batch_size):
            chunk = missing[start:start + settings.batch_size]
            records = run(chunk, 0.0, None)
            cache.put([{"problem_id": p.id, "kind": "greedy", "start": 0, "samples": [r]}
                       for p, r in zip(chunk, records)])

    for round_index, (low, high) in enumerate(round_bounds(samples)):
        size = high - low
        per_batch = max(1, settings.batch_size // size)
        for batch_index, start in enumerate(range(0, len(problems), per_batch)):
            chunk = problems[start:start + per_batch]
            if all(cache.has(p.id, low, high) for p in chunk):
                continue
            generator = torch.Generator().manual_seed(derive_seed(settings.seed, "eval-samples", round_index,
                                                                  batch_index))
            records = run([p for p in chunk for _ in range(size)], settings.temperature, generator)
            cache.put([{"problem_id": p.id, "kind": "sampled", "start": low,
                        "samples": records[i * size:(i + 1) * size]}
                       for i, p in enumerate(chunk) if not cache.has(p.id, low, high)])

    out = []
    for p in problems:
        mine = cache.sampled.get(p.id, {})
        out.append(ProblemSamples(p, cache.greedy.get(p.id) if greedy else None,
                                  [mine[j] for j in range(samples)]))
    return out, generated
