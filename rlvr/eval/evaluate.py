"""Held-out evaluation: greedy accuracy, unbiased pass@k, maj@k, mean@n, lengths, tool calls,
each with a bootstrap 95% interval over problems.

The same functions serve the warm-start, periodic and final evaluations of a training run
and `rlvr eval`: ``evaluate`` = ``collect_samples`` (generation and scoring, in
``sample_cache``) + ``summarize`` (the numbers), so every number in a run directory and in
an eval report comes from one code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.eval.bootstrap import bootstrap_mean_ci, bootstrap_ratio_ci
from rlvr.eval.calibration import brier_score, expected_calibration_error
from rlvr.eval.majority import maj_at_k
from rlvr.eval.passk import pass_at_k_array
from rlvr.eval.sample_cache import (ProblemSamples, SampleCache, SamplingSettings, collect_samples,
                                    environment_description, model_fingerprint, task_description)
from rlvr.eval.selectors import SELECTORS, best_of_k
from rlvr.rollout.engine import RolloutEngine
from rlvr.tasks.base import Problem, Task
from rlvr.tasks.formats import stated_confidence
from rlvr.verify.pool import InlineVerifier, VerifierPool


def accuracy_by_task(problems: list[Problem], correct: list[bool]) -> dict[str, float]:
    """Accuracy per component task, for problems of a mix (``metadata["task"]``); {} otherwise."""
    by_task: dict[str, list[bool]] = {}
    for problem, ok in zip(problems, correct):
        if "task" in problem.metadata:
            by_task.setdefault(problem.metadata["task"], []).append(ok)
    return {name: sum(oks) / len(oks) for name, oks in sorted(by_task.items())}


def powers_of_two_up_to(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks


def check_ks(ks: Sequence[int], samples: int) -> list[int]:
    """Sorted distinct ks, each in [1, samples]; ValueError naming the bad one otherwise."""
    for k in ks:
        if not 1 <= k <= samples:
            raise ValueError(f"k={k} needs 1 <= k <= n = {samples} samples per problem; raise n or drop k={k}")
    return sorted(set(int(k) for k in ks))


def open_cache(cache_dir: str | Path | None, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
               task: Task, settings: SamplingSettings, environment: Any = None) -> SampleCache:
    """The on-disk sample cache of this model, task and sampling setup (memory-only without a dir)."""
    if cache_dir is None:
        return SampleCache()
    key = {"model": model_fingerprint(model, tokenizer), "task": task_description(task),
           "temperature": settings.temperature, "top_p": settings.top_p,
           "max_new_tokens": settings.max_new_tokens, "seed": settings.seed,
           "environment": environment_description(environment)}
    # only when they differ from the defaults, so caches written before they existed stay valid
    key.update({name: value for name, value, default in (("engine", settings.engine, "kv_cache"),
                                                          ("dtype", settings.dtype, "float32"),
                                                          ("max_prompt_tokens", settings.max_prompt_tokens, None))
                if value != default})
    return SampleCache(cache_dir, key)


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems: list[Problem],
    engine: RolloutEngine,
    *,
    verifier: VerifierPool | InlineVerifier,
    samples: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    ks: Sequence[int] | None = None,
    top_p: float = 1.0,
    cache_dir: str | Path | None = None,
    environment: Any = None,
    max_prompt_tokens: int | None = None,
    per_problem_out: list[ProblemSamples] | None = None,
) -> dict[str, Any]:
    """Evaluate on ``problems``; returns flat metrics (fractions in [0, 1]), see ``summarize``.
    ``per_problem_out``, when given, receives each problem's scored samples.

    ``samples`` = n answers are sampled per problem at ``temperature`` (0 evaluates greedy
    only); ``ks`` defaults to 1, 2, 4, ... <= n. With ``cache_dir`` the scored samples are
    kept on disk and reused by the next call with the same model and settings. A prompt
    longer than ``max_prompt_tokens`` keeps its last that many tokens.
    """
    settings = SamplingSettings(temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                seed=seed, top_p=top_p, max_prompt_tokens=max_prompt_tokens)
    cache = open_cache(cache_dir, model, tokenizer, task, settings, environment)
    per_problem, _ = collect_samples(model, tokenizer, problems, engine, verifier, settings, samples=samples,
                                     cache=cache, environment=environment)
    if per_problem_out is not None:
        per_problem_out.extend(per_problem)
    return summarize(per_problem, ks=ks, seed=seed)


def problem_outcomes(per_problem: Sequence[ProblemSamples]) -> dict[str, Any]:
    """The per-problem record of an evaluation (``eval_problems.jsonl``): problem ids, greedy
    correctness, how many of the n sampled answers are right, and the sampled tokens, so that
    paired comparisons over problems (``rlvr compare``) need no new generation."""
    n = min((len(p.sampled) for p in per_problem), default=0)
    return {"ids": [p.problem.id for p in per_problem],
            "greedy": [None if p.greedy is None else bool(p.greedy["correct"]) for p in per_problem],
            "n": n, "correct": [sum(bool(s["correct"]) for s in p.sampled[:n]) for p in per_problem],
            "tokens": [sum(s["tokens"] for s in p.sampled[:n]) for p in per_problem]}


def _with_ci(result: dict[str, Any], key: str, values: Sequence[float] | np.ndarray, seed: int) -> None:
    values = np.asarray(values, dtype=np.float64)
    result[key] = float(values.mean())
    result[f"{key}_ci95"] = bootstrap_mean_ci(values, seed=seed)


def summarize(per_problem: list[ProblemSamples], *, ks: Sequence[int] | None = None, seed: int = 0,
              strategy: str | None = None, selector: str | None = None) -> dict[str, Any]:
    """The numbers of an evaluation; intervals are percentile-bootstrap 95% over problems
    (resampled with ``seed``, the same resamples for every metric).

    Keys (each accuracy also has ``<key>_ci95`` = (low, high)):
      ``problems``, ``greedy_accuracy``, ``greedy_length`` (tokens), ``scoring_errors``,
      ``greedy_accuracy/<task>`` for mixes; with n > 0 sampled answers per problem:
      ``samples`` (n), ``pass@k`` (unbiased, Chen et al. 2021) and ``maj@k`` (majority vote,
      ``rlvr.eval.majority``) for each k, ``mean@n`` (mean accuracy of the n samples, equal to
      pass@1), ``mean_reward``, ``sampled_length`` (tokens), ``tokens_per_correct`` (sampled
      policy tokens per correct sample, a ratio of sums), ``truncated_frac`` and ``tool_calls``
      (per sample) when any sample called a tool. When answers state a confidence (RLCR):
      ``confidence_stated``, ``confidence``, ``brier``, ``ece`` over the greedy answers and the
      same with ``sampled_`` over the sampled ones (``calibration``).
      With ``strategy`` (test-time scaling): ``scaling`` = {"strategy", "selector", "k",
      "accuracy", "ci95"}, the accuracy of picking one of k samples for each k.
    """
    if not per_problem:
        raise ValueError("evaluation needs at least one problem")
    result: dict[str, Any] = {"problems": len(per_problem)}
    greedy = [p.greedy for p in per_problem if p.greedy is not None]
    if greedy:
        if len(greedy) != len(per_problem):
            raise ValueError("greedy answers missing for some problems")
        _with_ci(result, "greedy_accuracy", [float(g["correct"]) for g in greedy], seed)
        result["scoring_errors"] = sum(g["error"] is not None for g in greedy)
        result["greedy_length"] = float(np.mean([g["tokens"] for g in greedy]))
        for name, accuracy in accuracy_by_task([p.problem for p in per_problem],
                                               [bool(g["correct"]) for g in greedy]).items():
            result[f"greedy_accuracy/{name}"] = accuracy
        calibration(result, "", greedy)
    n = min(len(p.sampled) for p in per_problem)
    if n == 0:
        return result
    ks = powers_of_two_up_to(n) if ks is None else check_ks(ks, n)
    correct = np.array([[s["correct"] for s in p.sampled[:n]] for p in per_problem], dtype=bool)
    counts = correct.sum(axis=1)
    result["samples"] = n
    for k in ks:
        _with_ci(result, f"pass@{k}", pass_at_k_array(n, counts, k), seed)
    for k in ks:
        _with_ci(result, f"maj@{k}", [maj_at_k([s["extracted"] for s in p.sampled[:n]], row, k)
                                      for p, row in zip(per_problem, correct)], seed)
    _with_ci(result, "mean@n", counts / n, seed)
    _with_ci(result, "mean_reward", [np.mean([s["reward"] for s in p.sampled[:n]]) for p in per_problem], seed)
    tokens = np.array([[s["tokens"] for s in p.sampled[:n]] for p in per_problem], dtype=np.float64)
    _with_ci(result, "sampled_length", tokens.mean(axis=1), seed)
    if counts.sum() > 0:
        result["tokens_per_correct"] = float(tokens.sum() / counts.sum())
        result["tokens_per_correct_ci95"] = bootstrap_ratio_ci(tokens.sum(axis=1), counts, seed=seed)
    result["truncated_frac"] = float(np.mean([[s["finish_reason"] == "length" for s in p.sampled[:n]]
                                              for p in per_problem]))
    result["scoring_errors"] = result.get("scoring_errors", 0) + sum(
        s["error"] is not None for p in per_problem for s in p.sampled[:n])
    tool_calls = np.array([[s.get("tool_calls", 0) for s in p.sampled[:n]] for p in per_problem], dtype=np.float64)
    if tool_calls.any():
        _with_ci(result, "tool_calls", tool_calls.mean(axis=1), seed)
    calibration(result, "sampled_", [s for p in per_problem for s in p.sampled[:n]])
    if strategy is not None:
        result["scaling"] = scaling_curve(per_problem, n, ks, strategy, selector, result, seed)
    return result


def calibration(result: dict[str, Any], prefix: str, samples: Sequence[dict[str, Any]]) -> None:
    """RLCR's numbers when any answer states a confidence (``<confidence>q</confidence>``):
    ``<prefix>confidence_stated`` (the share that state a readable one), and over those,
    ``<prefix>confidence`` (mean q), ``<prefix>brier`` and ``<prefix>ece`` (``rlvr.eval.calibration``)."""
    stated = [(q, bool(s["correct"])) for s in samples if (q := stated_confidence(s["text"])) is not None]
    if not any("<confidence>" in s["text"] for s in samples):
        return
    result[f"{prefix}confidence_stated"] = len(stated) / len(samples)
    if stated:
        confidences, correct = zip(*stated)
        result[f"{prefix}confidence"] = float(np.mean(confidences))
        result[f"{prefix}brier"] = brier_score(confidences, correct)
        result[f"{prefix}ece"] = expected_calibration_error(confidences, correct)


def scaling_curve(per_problem: list[ProblemSamples], n: int, ks: Sequence[int], strategy: str,
                  selector: str | None, result: dict[str, Any], seed: int) -> dict[str, Any]:
    """Accuracy of test-time scaling with k samples, for each k (see ``rlvr.eval.selectors``)."""
    if strategy == "majority":
        accuracy = [result[f"maj@{k}"] for k in ks]
        ci95 = [result[f"maj@{k}_ci95"] for k in ks]
        selector = None
    elif strategy == "best_of_n":
        selector = selector or "verifier"
        if selector == "verifier":  # oracle selection = pass@k; the unbiased estimator has less variance
            accuracy = [result[f"pass@{k}"] for k in ks]
            ci95 = [result[f"pass@{k}_ci95"] for k in ks]
        else:
            score = SELECTORS.get(selector)
            accuracy, ci95 = [], []
            scores = [[float(score(p.problem, s)) for s in p.sampled[:n]] for p in per_problem]
            for k in ks:
                per = [best_of_k(sc, [s["correct"] for s in p.sampled[:n]], k) for sc, p in zip(scores, per_problem)]
                accuracy.append(float(np.mean(per)))
                ci95.append(bootstrap_mean_ci(per, seed=seed))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose majority or best_of_n")
    return {"strategy": strategy, "selector": selector, "k": list(ks), "accuracy": accuracy, "ci95": ci95}
