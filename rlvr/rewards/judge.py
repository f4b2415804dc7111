"""Generative judges: a causal LM reads a rubric with the prompt and the response, writes a
verdict, and the verdict parsed from its text is the reward (LLM-as-a-judge, Zheng et al.
2023; generative reward models such as RM-R1, Chen et al. 2025, which reason before their
verdict).

``judge`` is a batch reward component over any causal-LM checkpoint rlvr can load (a
directory, a hub id in the local cache, a run's checkpoint; ``rlvr rm --objective judge``
fine-tunes one on a run's verified samples). For each sample the judge's input is the rubric
with ``{prompt}`` (the question: a string prompt, or the text of the conversation's last user
message), ``{response}`` and, for a reference-guided judge, ``{answer}`` (the reference answer)
filled in, as one user message through the judge's own chat template. The judge decodes
greedily through rlvr's rollout engine (the KV-cache engine, in batches of ``batch_size``, at
most ``max_new_tokens`` tokens), and its verdict is read from the text (``verdict``):

- ``binary`` (default): the last of the words correct/right/yes (1) or incorrect/wrong/no (0);
- ``score``: the last number n in the text, scaled to n / ``max_score``, a number outside
  [0, ``max_score``] being no verdict.

A text with no verdict scores 0 and is counted (``judge_parse_failures``, the share of the
batch): a judge that rambles is seen, never silently rewarded. Verdicts are cached by
(prompt, response) for the run, so a response sampled again is judged once
(``judge_cache_hits``). ``gate`` and ``clip`` guard against hacking as for ``reward_model``,
and since the verifier still runs beside the judge every step logs ``judge_mean``,
``proxy_gold_gap`` and ``proxy_gold_corr``. Judging seconds are ``time_judge`` (inside
``time_scoring``). Local decoding is bounded by ``max_new_tokens``, so a judge cannot hang; a
checkpoint that does not load, or a rubric without ``{response}``, is a one-line config error
before any work.

A checkpoint written by ``rlvr rm --objective judge`` carries ``judge.json`` (its rubric and
verdict form): the component uses them unless the params say otherwise, so the judge is asked
exactly what it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from rlvr.rewards import REWARDS
from rlvr.rewards.learned import SECONDS, _device, check_clip, guarded

DEFAULT_RUBRIC = ("Question: {prompt}\nResponse: {response}\nIs the response's final answer correct? "
                  "Reply with one word, correct or incorrect.")
VERDICT_FILE = "judge.json"
_BINARY = re.compile(r"\b(correct|incorrect|right|wrong|yes|no)\b", re.IGNORECASE)
_POSITIVE = {"correct", "right", "yes"}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
FIELDS = {"prompt", "response", "answer"}

STATS = {"judged": 0, "parse_failures": 0, "cache_hits": 0}  # since the last step's metrics


def parse_verdict(text: str, verdict: Literal["binary", "score"] = "binary", max_score: float = 10.0
                  ) -> float | None:
    """The judge's verdict in ``text`` as a reward in [0, 1]; None when it states none
    (module docstring)."""
    if verdict == "binary":
        words = _BINARY.findall(text)
        return None if not words else float(words[-1].lower() in _POSITIVE)
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = float(numbers[-1])
    return value / max_score if 0.0 <= value <= max_score else None


def rubric_fields(rubric: str) -> set[str]:
    """The ``{names}`` a rubric fills in; ``ValueError`` for a malformed template."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None}
    except ValueError as err:
        raise ValueError(f"judge.rubric is not a valid template: {err}") from None
    return names


def question_text(prompt: Any) -> str:
    """What ``{prompt}`` stands for: a string prompt, or the last user message's text."""
    if isinstance(prompt, str):
        return prompt
    users = [m for m in prompt if m.get("role") == "user"] or list(prompt)
    return str(users[-1].get("content", "")) if users else ""


def judge_input(rubric: str, prompt: Any, response: str, answer: Any = None) -> str:
    """The rubric filled in for one sample."""
    return rubric.format(prompt=question_text(prompt), response=response, answer="" if answer is None else answer)


@dataclass
class LoadedJudge:
    model: Any
    tokenizer: Any
    device: torch.device
    eos: list[int]
    saved: dict[str, Any]  # judge.json of a checkpoint from `rlvr rm --objective judge`, else {}
    cache: dict[str, float | None] = field(default_factory=dict)


_LOADED: dict[tuple[str, str], LoadedJudge] = {}


def load_judge(path: str, device: str = "auto") -> LoadedJudge:
    """The judge at ``path`` (loaded once per process and device, float32, eval mode);
    ``ValueError`` saying why when it does not load as a causal LM."""
    key = (str(path), device)
    if key in _LOADED:
        return _LOADED[key]
    from rlvr.models.hub import resolve_model_path
    from rlvr.models.loading import eos_token_ids, load_model_and_tokenizer

    try:
        location = resolve_model_path(path)
        model, tokenizer = load_model_and_tokenizer(location)
    except Exception as err:  # a missing directory, another kind of checkpoint, bad weights
        raise ValueError(f"{str(path)!r} does not load as a causal-LM judge: {' '.join(str(err).split())[:300]}"
                         ) from None
    saved_file = Path(location) / VERDICT_FILE
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else {}
    target = _device(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = LoadedJudge(model.to(target).eval(), tokenizer, target, eos_token_ids(model, tokenizer), saved)
    _LOADED[key] = loaded
    return loaded


def render_judge_input(tokenizer: Any, text: str) -> list[int]:
    """The judge's input ids: ``text`` as one user message through its chat template with the
    generation prompt (the plain text when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def generate_verdict_texts(loaded: LoadedJudge, texts: Sequence[str], max_new_tokens: int, batch_size: int
                           ) -> list[str]:
    """The judge's greedy continuations of ``texts`` (rendered with ``render_judge_input``), in
    batches through the KV-cache rollout engine."""
    from rlvr.rollout.kv_cache import KVCacheEngine

    engine, tokenizer = KVCacheEngine(), loaded.tokenizer
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        ids = [render_judge_input(tokenizer, t) for t in texts[start:start + batch_size]]
        if limit is not None:  # keep the rubric's end (where the verdict is asked for) within the context
            ids = [row[-(limit - max_new_tokens):] if len(row) + max_new_tokens > limit else row for row in ids]
        with torch.no_grad():
            generations = engine.generate(loaded.model, ids, max_new_tokens=max_new_tokens, temperature=0.0,
                                          top_p=1.0, eos_token_id=loaded.eos, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode([g.response_ids for g in generations], skip_special_tokens=True)
    return out


def judge_values(path: str, prompts: list[Any], responses: list[str], answers: list[Any] | None = None,
                 rubric: str | None = None, verdict: Literal["binary", "score"] | None = None,
                 max_score: float = 10.0, max_new_tokens: int = 16, batch_size: int = 32,
                 device: str = "auto") -> list[float]:
    """The judge's verdict on each (prompt, response), in [0, 1]; no readable verdict is 0 and
    counted; each distinct judge input is decoded once (the cache). Seconds go to ``time_judge``."""
    started = time.perf_counter()
    loaded = load_judge(path, device)
    rubric = rubric if rubric is not None else loaded.saved.get("rubric", DEFAULT_RUBRIC)
    verdict = verdict if verdict is not None else loaded.saved.get("verdict", "binary")
    answers = answers if answers is not None else [None] * len(prompts)
    texts = [judge_input(rubric, p, r, a) for p, r, a in zip(prompts, responses, answers)]
    keys = [hashlib.sha256(json.dumps([t, max_new_tokens, verdict, max_score]).encode()).hexdigest() for t in texts]
    todo = list(dict.fromkeys(k for k in keys if k not in loaded.cache))
    STATS["cache_hits"] += len(keys) - len(todo)  # answered without decoding: cached, or a repeat in the batch
    if todo:
        first = {k: t for t, k in zip(reversed(texts), reversed(keys))}
        for key, text in zip(todo, generate_verdict_texts(loaded, [first[k] for k in todo], max_new_tokens,
                                                          batch_size)):
            loaded.cache[key] = parse_verdict(text, verdict, max_score)
    parsed = [loaded.cache[k] for k in keys]
    STATS["judged"] += len(parsed)
    STATS["parse_failures"] += sum(v is None for v in parsed)
    SECONDS["judge"] += time.perf_counter() - started
    return [0.0 if v is None else v for v in parsed]


@REWARDS.register("judge")
def judge_reward(prompts: list[Any], completions: list[Any], *, path: str, verified: list[bool],
                 answer: list[Any] | None = None, rubric: str | None = None,
                 verdict: Literal["binary", "score"] | None = None, max_score: float = 10.0,
                 max_new_tokens: int = 16, batch_size: int = 32, clip: list[float] | None = None,
                 gate: bool = False, device: str = "auto") -> list[float]:
    """A generative judge's verdict on each response (module docstring): 1/0 (``binary``) or
    score / ``max_score`` (``score``); no readable verdict scores 0 and is counted; ``clip``
    bounds it, ``gate`` multiplies it by the verifier's verdict."""
    responses = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    values = judge_values(path, prompts, responses, answer, rubric, verdict, max_score, max_new_tokens, batch_size,
                          device)
    return guarded(values, clip, gate, verified)


def check_judge(params: dict[str, Any]) -> None:
    """The start-up check of a ``judge`` component's params: the checkpoint loads as a causal
    LM, the rubric fills in, the options are known; ``ValueError`` saying what is wrong."""
    if "path" not in params:
        raise ValueError("judge.path is required: a causal-LM checkpoint (a directory, e.g. from "
                         "`rlvr rm --objective judge`, a run's checkpoint or a hub id)")
    verdict = params.get("verdict")
    if verdict not in (None, "binary", "score"):
        raise ValueError(f"judge.verdict must be binary or score, got {verdict!r}")
    for name in ("max_new_tokens", "batch_size"):
        value = params.get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"judge.{name} must be a positive integer, got {value!r}")
    max_score = params.get("max_score", 10.0)
    if not isinstance(max_score, (int, float)) or max_score <= 0:
        raise ValueError(f"judge.max_score must be a positive number, got {max_score!r}")
    check_clip("judge", params.get("clip"))
    try:
        loaded = load_judge(str(params["path"]), str(params.get("device", "auto")))
    except ValueError as err:
        raise ValueError(f"judge.path: {err}") from None
    rubric = params.get("rubric", loaded.saved.get("rubric", DEFAULT_RUBRIC))
    if not isinstance(rubric, str):
        raise ValueError(f"judge.rubric must be a string, got {rubric!r}")
    names = rubric_fields(rubric)
    if "response" not in names:
        raise ValueError("judge.rubric must contain {response} (and may contain {prompt}, {answer})")
    unknown = sorted(names - FIELDS)
    if unknown:
        raise ValueError(f"judge.rubric: unknown field {{{unknown[0]}}}; it may use {{prompt}}, {{response}}, "
                         "{answer}")


judge_reward.check = check_judge  # type: ignore[attr-defined]


def cache_state(params: dict[str, Any]) -> dict[str, float | None]:
    """The verdicts cached so far by the judge ``params`` name (saved with a run's checkpoints,
    so a resumed run answers the same samples from the cache as the uninterrupted one did)."""
    key = (str(params["path"]), str(params.get("device", "auto")))
    return dict(_LOADED[key].cache) if key in _LOADED else {}


def load_cache_state(params: dict[str, Any], cache: dict[str, float | None]) -> None:
    """Restore ``cache_state``'s verdicts into the judge ``params`` name."""
    loaded = load_judge(str(params["path"]), str(params.get("device", "auto")))
    loaded.cache.clear()
    loaded.cache.update(cache)


def reset_judge_stats() -> None:
    STATS.update(judged=0, parse_failures=0, cache_hits=0)


def judge_metrics() -> dict[str, float]:
    """``judge_parse_failures`` (share of the judged samples with no verdict), ``judge_cache_hits``
    (share answered without decoding: from the cache, or a repeat within the batch) and
    ``time_judge`` since the last call."""
    judged = max(STATS["judged"], 1)
    out = {"judge_parse_failures": STATS["parse_failures"] / judged, "judge_cache_hits": STATS["cache_hits"] / judged,
           "time_judge": SECONDS.get("judge", 0.0)}
    reset_judge_stats()
    SECONDS["judge"] = 0.0
    return out
