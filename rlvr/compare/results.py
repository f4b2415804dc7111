"""A finished comparison's numbers: per arm and metric the per-seed values, their mean with
a Student-t 95% interval over seeds, and the difference to the first arm with a paired
interval (over problems and seeds for the held-out metrics, over seeds for the costs);
accuracy-vs-budget curves; tables for the terminal and ``results.json``.

Metrics, all from the runs' final held-out evaluation and their RL records:
``accuracy`` (greedy), ``pass@1`` (mean over the n samples), ``pass@k`` and ``maj@k`` at the
comparison's ks, ``tokens_per_correct``, and what the run spent: ``samples``, ``tokens``,
``seconds`` (RL steps' wall clock) and ``steps``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlvr.compare.stats import paired_difference, seed_interval
from rlvr.eval.passk import pass_at_k

COSTS = ("samples", "tokens", "seconds", "steps")
COST_KEYS = {"samples": "samples_generated_total", "tokens": "tokens_generated_total", "seconds": "rl_seconds_total"}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def run_numbers(run_dir: Path, ks: list[int]) -> dict[str, Any]:
    """One finished run's metrics, per-problem outcomes of its final evaluation and its curve."""
    evals = _jsonl(run_dir / "eval.jsonl")
    # an arm without RL (stages: [sft]) is judged by its warm start's evaluation
    phase = "final" if any(e.get("phase") == "final" for e in evals) else "warmstart"
    final = next((e for e in reversed(evals) if e.get("phase") == phase), None)
    if final is None:
        raise ValueError(f"{run_dir}: no final evaluation (did the run finish?)")
    problems = next((p for p in reversed(_jsonl(run_dir / "eval_problems.jsonl")) if p.get("phase") == phase), None)
    rl = [m for m in _jsonl(run_dir / "metrics.jsonl") if m.get("stage") == "rl"]
    last = rl[-1] if rl else {}
    metrics: dict[str, float | None] = {"accuracy": final.get("greedy_accuracy"), "pass@1": final.get("pass@1")}
    for k in ks:
        metrics[f"pass@{k}"] = final.get(f"pass@{k}")
        metrics[f"maj@{k}"] = final.get(f"maj@{k}")
    metrics["tokens_per_correct"] = final.get("tokens_per_correct")
    for name, other in (final.get("sets") or {}).items():  # eval.sets: other tasks or difficulties
        metrics[f"{name}:accuracy"] = other.get("greedy_accuracy")
        for k in ks:
            metrics[f"{name}:pass@{k}"] = other.get(f"pass@{k}")
    for cost, key in COST_KEYS.items():
        metrics[cost] = float(last.get(key, 0.0))
    metrics["steps"] = float(last.get("step", 0))
    spent = {m["step"]: {c: float(m.get(k, 0.0)) for c, k in COST_KEYS.items()} for m in rl}
    curve = []
    for e in evals:
        step = int(e.get("step", 0))
        at = spent.get(step, {c: 0.0 for c in COST_KEYS})
        curve.append({"step": step, **at, "accuracy": e.get("greedy_accuracy")})
    return {"metrics": metrics, "problems": problems, "curve": curve}


def per_problem(problems: dict[str, Any] | None, metric: str) -> dict[str, float] | None:
    """The metric's value on each held-out problem, by id: accuracy (greedy right), pass@k
    (the unbiased estimator from the n samples and c right); None for other metrics."""
    if problems is None:
        return None
    ids, n = problems["ids"], problems["n"]
    if metric == "accuracy":
        if any(g is None for g in problems["greedy"]):
            return None
        return {i: float(g) for i, g in zip(ids, problems["greedy"])}
    if metric.startswith("pass@"):
        k = int(metric[5:])
        if n < k:
            return None
        return {i: float(pass_at_k(n, c, k)) for i, c in zip(ids, problems["correct"])}
    return None


def _interval(values: list[float], bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean and t-interval over seeds; a rate's interval is cut to ``bounds`` ([0, 1]: the
    t-interval of a mean near 1 over three seeds can pass 1, which no mean can)."""
    mean, low, high = seed_interval(values)
    if math.isnan(low):
        return {"mean": mean, "low": None, "high": None}
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "low": low, "high": high}


def gather(comparison: Any, output_dir: Path) -> dict[str, Any]:
    """Every arm's metrics over its seeds, and each arm against the first (module docstring)."""
    runs = {arm.name: {seed: run_numbers(output_dir / comparison.run_name(arm, seed), comparison.ks)
                       for seed in comparison.seeds} for arm in comparison.arms}
    names = [arm.name for arm in comparison.arms]
    metric_names = [m for m in runs[names[0]][comparison.seeds[0]]["metrics"]]
    out: dict[str, Any] = {"comparison": comparison.describe(), "arms": {}}
    first = names[0]
    for name in names:
        arm: dict[str, Any] = {"runs": {str(s): str(output_dir / comparison.run_name(
            next(a for a in comparison.arms if a.name == name), s)) for s in comparison.seeds}, "metrics": {},
            "curves": {str(s): runs[name][s]["curve"] for s in comparison.seeds}}
        for metric in metric_names:
            values = [runs[name][s]["metrics"].get(metric) for s in comparison.seeds]
            if any(v is None for v in values):
                continue
            entry = {"per_seed": values, **_interval(values, (0.0, 1.0) if _is_percent(metric) else None)}
            if name != first:
                entry["diff"] = difference(runs, name, first, metric, comparison.seeds)
            arm["metrics"][metric] = entry
        out["arms"][name] = arm
    return out


def difference(runs: dict[str, Any], arm: str, first: str, metric: str, seeds: list[int]) -> dict[str, Any] | None:
    """arm - first: paired over problems and seeds for a held-out metric whose per-problem
    values both arms have on the same problems, else paired over seeds (a t-interval of the
    per-seed differences)."""
    tables = [(per_problem(runs[arm][s]["problems"], metric), per_problem(runs[first][s]["problems"], metric))
              for s in seeds]
    if all(a is not None and b is not None and a.keys() == b.keys() for a, b in tables):
        ids = sorted(tables[0][0])
        if all(sorted(a) == ids for a, _ in tables):
            a = np.array([[t[0][i] for i in ids] for t in tables])
            b = np.array([[t[1][i] for i in ids] for t in tables])
            mean, low, high = paired_difference(a, b)
            return {"mean": mean, "low": low, "high": high, "paired": "problems x seeds"}
    diffs = [runs[arm][s]["metrics"][metric] - runs[first][s]["metrics"][metric] for s in seeds]
    return {**_interval(diffs), "paired": "seeds"}


PERCENT = ("accuracy", "pass@", "maj@")


def _is_percent(metric: str) -> bool:
    return metric.split(":")[-1].startswith(PERCENT)


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if _is_percent(metric):
        return f"{100 * value:.1f}"
    if metric in ("samples", "tokens", "steps"):
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _span(metric: str, entry: dict[str, Any]) -> str:
    if entry.get("low") is None:
        return _fmt(metric, entry["mean"])
    return f"{_fmt(metric, entry['mean'])} [{_fmt(metric, entry['low'])}, {_fmt(metric, entry['high'])}]"


def tables(results: dict[str, Any]) -> str:
    """One markdown table per metric: arm, mean [95% CI over seeds], per-seed values, and the
    difference to the first arm [paired 95% CI]. Held-out metrics are in percent."""
    arms = results["arms"]
    names = list(arms)
    metrics = [m for m in arms[names[0]]["metrics"]]
    blocks = []
    for metric in metrics:
        unit = " (%)" if _is_percent(metric) else ""
        lines = [f"{metric}{unit}", f"| arm | mean [95% CI] | per seed | vs {names[0]} [95% CI] |",
                 "|---|---|---|---|"]
        for name in names:
            entry = arms[name]["metrics"].get(metric)
            if entry is None:
                continue
            diff = entry.get("diff")
            versus = "-" if diff is None else (_span(metric, diff).replace(_fmt(metric, diff["mean"]),
                                                                          _signed(metric, diff["mean"]), 1))
            lines.append(f"| {name} | {_span(metric, entry)} | "
                         f"{' / '.join(_fmt(metric, v) for v in entry['per_seed'])} | {versus} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _signed(metric: str, value: float) -> str:
    text = _fmt(metric, abs(value))
    return ("-" if value < 0 else "+") + text
