"""Held-out evaluation: greedy accuracy, sampled pass@1 and unbiased pass@k.

The same function serves the warm-start, periodic and final evaluations of a training run
and `rlvr eval`, so every number in a run directory comes from one code path.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.eval.bootstrap import bootstrap_mean_ci
from rlvr.eval.passk import pass_at_k_array
from rlvr.rollout.engine import RolloutEngine
from rlvr.rollout.sampling import sample_trajectories
from rlvr.tasks.base import Problem, Task
from rlvr.verify.pool import InlineVerifier, VerifierPool


def _complete(
    engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem], *, temperature: float, max_new_tokens: int, batch_size: int,
    generator: torch.Generator | None,
) -> list[tuple[str, int]]:
    """(completion text, response length in tokens) for each problem, in order."""
    trajectories = sample_trajectories(engine, model, tokenizer, problems, max_new_tokens=max_new_tokens,
                                       temperature=temperature, generator=generator, batch_size=batch_size)
    return [(tokenizer.decode(t.response_ids, skip_special_tokens=True), len(t.response_ids)) for t in trajectories]


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
) -> dict[str, Any]:
    """Evaluate on ``problems``; returns flat metrics (fractions in [0, 1]).

    Keys: ``greedy_accuracy``, ``greedy_length``; with ``samples`` = n > 0 also
    ``pass@1`` (mean fraction correct over n samples) and ``pass@k`` for k = 2, 4, ... <= n,
    using the unbiased estimator, plus ``sampled_length``. Each accuracy has a ``<key>_ci95``
    (low, high) bootstrap interval over problems, reproducible for a fixed ``seed``.
    """
    was_training = model.training
    model.eval()
    greedy = _complete(engine, model, tokenizer, problems, temperature=0.0,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, generator=None)
    scores = verifier.score_many(problems, [text for text, _ in greedy])
    result: dict[str, Any] = {
        "problems": len(problems),
        "greedy_accuracy": sum(s.correct for s in scores) / len(problems),
        "greedy_accuracy_ci95": bootstrap_mean_ci([float(s.correct) for s in scores], seed=seed),
        "scoring_errors": sum(s.error is not None for s in scores),
        "greedy_length": sum(n for _, n in greedy) / len(problems),
    }
    for name, accuracy in accuracy_by_task(problems, [s.correct for s in scores]).items():
        result[f"greedy_accuracy/{name}"] = accuracy
    if samples > 0:
        generator = torch.Generator().manual_seed(seed)
        repeated_problems = [p for p in problems for _ in range(samples)]
        sampled = _complete(engine, model, tokenizer, repeated_problems, temperature=temperature,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, generator=generator)
        correct = [0] * len(problems)
        for i, score in enumerate(verifier.score_many(repeated_problems, [text for text, _ in sampled])):
            correct[i // samples] += score.correct
        for k in powers_of_two_up_to(samples):
            per_problem = pass_at_k_array(samples, correct, k)
            result[f"pass@{k}"] = float(per_problem.mean())
            result[f"pass@{k}_ci95"] = bootstrap_mean_ci(per_problem, seed=seed)
        result["samples"] = samples
        result["sampled_length"] = sum(n for _, n in sampled) / len(sampled)
    model.train(was_training)
    return result
