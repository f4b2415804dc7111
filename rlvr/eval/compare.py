"""`rlvr eval` with one or more models: the same held-out problems and sampling settings for
each, a table side by side (with the paired difference to the first model), pass@k / maj@k
curves and, with a strategy, the test-time scaling curve; everything in ``results.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlvr.eval.bootstrap import bootstrap_mean_ci
from rlvr.eval.passk import pass_at_k_array
from rlvr.eval.sample_cache import ProblemSamples
from rlvr.models.hub import is_hub_id, resolve_model_path
from rlvr.typed_yaml import ConfigError


@dataclass
class Target:
    """A model to evaluate: its checkpoint, a label for tables, and the run it belongs to."""

    label: str
    checkpoint: Path
    run_dir: Path | None


def resolve_target(spec: str) -> Target:
    """A run directory (its final checkpoint, else its warm start) or a checkpoint directory."""
    path = Path(spec)
    if (path / "state.json").is_file():
        try:
            state = json.loads((path / "state.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            state = None
        if not isinstance(state, dict):
            raise ConfigError(f"{path / 'state.json'} is damaged; `rlvr train --resume {path}` recovers it from "
                              "the newest intact checkpoint, or name a checkpoint directory instead")
        checkpoint = state.get("final_checkpoint") or state.get("sft_final")
        if checkpoint is None:
            raise ConfigError(f"{path}: the run has no finished checkpoint yet")
        return Target(Path(checkpoint).name, path / checkpoint, path)
    if is_hub_id(spec):
        try:
            return Target(spec.split("/")[-1], resolve_model_path(spec), None)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: neither a run directory (state.json) nor a checkpoint (config.json)")
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    if run is not None and not (run / "state.json").is_file():
        run = None
    return Target(path.name, path, run)


def unique_labels(targets: list[Target], labels: Sequence[str] | None) -> list[Target]:
    if labels:
        if len(labels) != len(targets):
            raise ConfigError(f"--labels gives {len(labels)} labels for {len(targets)} models")
        for target, label in zip(targets, labels):
            target.label = label
    names = [t.label for t in targets]
    for target in targets:
        if names.count(target.label) > 1:
            target.label = f"{target.run_dir.name if target.run_dir else target.checkpoint.parent.name}/{target.label}"
    return targets


def per_problem_record(p: ProblemSamples) -> dict[str, Any]:
    return {"id": p.problem.id, "greedy_correct": None if p.greedy is None else bool(p.greedy["correct"]),
            "correct": int(sum(s["correct"] for s in p.sampled)), "n": len(p.sampled),
            "answers": [s["extracted"] for s in p.sampled][:16]}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _with_ci(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return "-"
    ci = metrics.get(f"{key}_ci95")
    return _pct(metrics[key]) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def paired_deltas(models: list[dict[str, Any]], ks: list[int], seed: int) -> dict[str, dict[str, Any]]:
    """pass@k of each later model minus the first, per problem, with a paired bootstrap 95% interval
    (the same resampled problems for both models); only when both evaluated the same problems."""
    base = models[0]
    out: dict[str, dict[str, Any]] = {}
    for model in models[1:]:
        if [p["id"] for p in model["per_problem"]] != [p["id"] for p in base["per_problem"]]:
            continue
        deltas = {}
        for k in ks:
            if k > min(p["n"] for p in model["per_problem"] + base["per_problem"]):
                continue
            diff = (pass_at_k_array([p["n"] for p in model["per_problem"]], [p["correct"] for p in model["per_problem"]], k)
                    - pass_at_k_array([p["n"] for p in base["per_problem"]], [p["correct"] for p in base["per_problem"]], k))
            deltas[f"pass@{k}"] = float(np.mean(diff))
            deltas[f"pass@{k}_ci95"] = bootstrap_mean_ci(diff, seed=seed)
        out[model["label"]] = deltas
    return out


def format_tables(results: dict[str, Any]) -> str:
    """Plain-text (Markdown) tables: overview, pass@k, maj@k, deltas and scaling."""
    models, ks = results["models"], results["ks"]
    parts = []
    rows = []
    for m in models:
        x = m["metrics"]
        rows.append([m["label"], _with_ci(x, "greedy_accuracy"), _with_ci(x, "mean@n"), str(x.get("samples", 0)),
                     f"{x.get('sampled_length', x.get('greedy_length', 0)):.1f}",
                     f"{x['tokens_per_correct']:.1f}" if "tokens_per_correct" in x else "-",
                     f"{x['tool_calls']:.2f}" if "tool_calls" in x else "-"])
    parts.append(_table(["model", "greedy %", "mean@n %", "n", "length (tok)", "tokens/correct", "tool calls"], rows))
    for prefix, title in (("pass@", "pass@k % (unbiased) [95% CI]"), ("maj@", "maj@k % (majority vote) [95% CI]")):
        rows = [[str(k), *[_with_ci(m["metrics"], f"{prefix}{k}") for m in models]] for k in ks]
        parts.append(f"{title}\n" + _table(["k", *[m["label"] for m in models]], rows))
    if results.get("deltas"):
        labels = list(results["deltas"])
        rows = []
        for k in ks:
            cells = []
            for label in labels:
                d = results["deltas"][label]
                key = f"pass@{k}"
                cells.append("-" if key not in d else
                             f"{100 * d[key]:+.1f} [{100 * d[key + '_ci95'][0]:+.1f}, {100 * d[key + '_ci95'][1]:+.1f}]")
            rows.append([str(k), *cells])
        parts.append(f"pass@k difference to {models[0]['label']} (points, paired bootstrap 95% CI)\n"
                     + _table(["k", *labels], rows))
    if all("scaling" in m["metrics"] for m in models):
        s0 = models[0]["metrics"]["scaling"]
        name = s0["strategy"] + (f", selector {s0['selector']}" if s0["selector"] else "")
        rows = []
        for i, k in enumerate(s0["k"]):
            rows.append([str(k), *[f"{_pct(m['metrics']['scaling']['accuracy'][i])} "
                                   f"[{_pct(m['metrics']['scaling']['ci95'][i][0])}, "
                                   f"{_pct(m['metrics']['scaling']['ci95'][i][1])}]" for m in models]])
        parts.append(f"test-time scaling ({name}): accuracy % with k samples\n"
                     + _table(["k", *[m["label"] for m in models]], rows))
    return "\n\n".join(parts)


def write_outputs(results: dict[str, Any], output_dir: Path) -> list[Path]:
    """results.json, table.md, passk_curve.png and (with a strategy) scaling.png."""
    from rlvr.eval.plots import plot_passk_curves, plot_scaling

    output_dir.mkdir(parents=True, exist_ok=True)
    written = [output_dir / "results.json", output_dir / "table.md"]
    written[0].write_text(json.dumps(results, indent=1))
    written[1].write_text(format_tables(results) + "\n")
    if any("pass@1" in m["metrics"] for m in results["models"]):
        written.append(plot_passk_curves(results["models"], output_dir / "passk_curve.png"))
    if all("scaling" in m["metrics"] for m in results["models"]):
        written.append(plot_scaling(results["models"], output_dir / "scaling.png"))
    return written


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
