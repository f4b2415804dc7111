"""The comparison's page: one self-contained HTML file (the style of ``rlvr report``) with
the tables, the accuracy-vs-budget curves (mean over seeds, the band their range) and a
Pareto plot of held-out accuracy against what each arm spent."""

from __future__ import annotations

import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlvr.eval.report import CSS, _esc, _markdown_tables, _png  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
X_LABELS = {"samples": "responses generated", "tokens": "response tokens generated", "seconds": "RL seconds",
            "step": "RL step"}


def curve_figure(results: dict[str, Any], x: str) -> Any:
    """Held-out greedy accuracy at each evaluation against ``x`` spent: per arm the mean over
    seeds (at the evaluations every seed reached) with the seeds' range as a band."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for color, (name, arm) in zip(COLORS * 4, results["arms"].items()):
        curves = list(arm["curves"].values())
        points = min(len(c) for c in curves)
        if points == 0:
            continue
        xs = [sum(c[i][x] for c in curves) / len(curves) for i in range(points)]
        ys = [[c[i]["accuracy"] for c in curves] for i in range(points)]
        ax.plot(xs, [100 * sum(v) / len(v) for v in ys], marker="o", ms=3, color=color, label=name)
        ax.fill_between(xs, [100 * min(v) for v in ys], [100 * max(v) for v in ys], color=color, alpha=0.18, lw=0)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_figure(results: dict[str, Any], cost: str) -> Any:
    """Each arm's mean final accuracy (with its 95% interval over seeds) against its mean
    ``cost``; the arms no other arm beats on both are joined by the frontier line."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    points = []
    for color, (name, arm) in zip(COLORS * 4, results["arms"].items()):
        acc, spent = arm["metrics"].get("accuracy"), arm["metrics"].get(cost)
        if acc is None or spent is None:
            continue
        low = acc["low"] if acc["low"] is not None else acc["mean"]
        high = acc["high"] if acc["high"] is not None else acc["mean"]
        ax.errorbar([spent["mean"]], [100 * acc["mean"]], yerr=[[100 * (acc["mean"] - low)], [100 * (high - acc["mean"])]],
                    fmt="o", color=color, capsize=3, label=name)
        points.append((spent["mean"], acc["mean"]))
    frontier = sorted(p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points))
    if len(frontier) > 1:
        ax.plot([p[0] for p in frontier], [100 * p[1] for p in frontier], color="0.5", lw=1, ls="--", zorder=0)
    ax.set_xlabel(X_LABELS.get(cost, cost) + " (mean per run)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def build_page(results: dict[str, Any], table_text: str, title: str) -> str:
    comparison = results["comparison"]
    unit, amount = comparison["budget"]
    arms = "".join(f"<li><code>{_esc(a['name'])}</code>: {_esc(a['recipe'] or comparison['base'] or 'defaults')}"
                   f"{' + ' + _esc(' '.join(a['overrides'])) if a['overrides'] else ''}</li>" for a in comparison["arms"])
    setup = (f"<p>{len(comparison['arms'])} arms x {len(comparison['seeds'])} seeds ({_esc(comparison['seeds'])}), "
             f"budget {_esc(unit)} = {amount:g} per run"
             + (f"; every arm: <code>{_esc(' '.join(comparison['overrides']))}</code>" if comparison["overrides"] else "")
             + f"</p><ul>{arms}</ul><p class=\"muted\">Means with a Student-t 95% interval over seeds; differences "
               "to the first arm with a paired 95% interval (two-level bootstrap over seeds and held-out problems "
               "for accuracy and pass@k, over seeds for the rest).</p>")
    figures = "".join(f"<figure class=\"panel\">{_png(fig)}</figure>" for fig in (
        curve_figure(results, "samples"), curve_figure(results, "seconds")))
    pareto = "".join(f"<figure class=\"panel\">{_png(fig)}</figure>" for fig in (
        pareto_figure(results, "tokens"), pareto_figure(results, "seconds")))
    sections = [("setup", "Setup", setup), ("tables", "Results", _markdown_tables(table_text)),
                ("curves", "Accuracy against budget", f'<div class="panels">{figures}</div>'),
                ("pareto", "Accuracy against cost", f'<div class="panels">{pareto}</div>')]
    nav = " ".join(f'<a href="#{key}">{_esc(name)}</a>' for key, name, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{_esc(name)}</h2>\n{html}\n</section>' for key, name, html in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<header><h1>{_esc(title)}</h1>"
            f'<p class="muted">generated {time.strftime("%Y-%m-%d %H:%M:%S")} by <code>rlvr compare</code></p>'
            f"<nav>{nav}</nav></header>\n{body}\n</body></html>\n")
