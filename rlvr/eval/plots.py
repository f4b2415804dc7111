"""PNG plots of a run's curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PASS_AT_K = re.compile(r"pass@\d+")

RL_CURVES = [
    ("reward_mean", "reward (mean over samples)"),
    ("accuracy", "training accuracy (sampled)"),
    ("response_length", "response length (tokens)"),
    ("entropy", "policy entropy (nats/token)"),
    ("clip_frac", "PPO clip fraction"),
    ("kl", "KL to reference"),
    ("grad_norm", "gradient norm"),
    ("tokens_per_s", "generated tokens / s"),
]


def plot_run(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write training-curve and held-out-accuracy plots; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rl = [m for m in metrics if m.get("stage") == "rl"]
    curves = [(key, title) for key, title in RL_CURVES if any(key in m for m in rl)]
    if curves:
        cols = 4
        rows = (len(curves) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, (key, title) in zip(axes.flat, curves):
            points = [(m["step"], m[key]) for m in rl if key in m]
            ax.plot(*zip(*points), lw=1.5)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(curves):]:
            ax.axis("off")
        fig.tight_layout()
        written.append(out_dir / "rl_curves.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    sft = [m for m in metrics if m.get("stage") == "sft"]
    if sft:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([m["step"] for m in sft], [m["loss"] for m in sft], lw=1.5)
        ax.set_yscale("log")
        ax.set_title("SFT loss (nats/token)")
        ax.set_xlabel("SFT step")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out_dir / "sft_loss.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    if evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [e["step"] for e in evals]
        for key, style in (("greedy_accuracy", "o-"), ("pass@1", "s--")):
            if all(key in e for e in evals):
                ax.plot(steps, [100 * e[key] for e in evals], style, label=key)
                if all(f"{key}_ci95" in e for e in evals):  # bootstrap interval over problems
                    ax.fill_between(steps, [100 * e[f"{key}_ci95"][0] for e in evals],
                                    [100 * e[f"{key}_ci95"][1] for e in evals], alpha=0.15)
        ks = sorted({k for e in evals for k in e if PASS_AT_K.fullmatch(k) and k != "pass@1"},
                    key=lambda k: int(k[5:]))
        if ks:
            ax.plot(steps, [100 * e.get(ks[-1], float("nan")) for e in evals], "^:", label=ks[-1])
        ax.set_xlabel("RL step (0 = warm start)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title("held-out accuracy during RL")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out_dir / "heldout_accuracy.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def smoothing_weight(points: int) -> float:
    """The EMA weight for a curve of ``points`` values: 0.6 at 10 points rising with log10 to 0.9 at
    1000 (clamped to [0.6, 0.9]); 0 (no smoothing) below 5 points, where every value is worth seeing."""
    if points < 5:
        return 0.0
    return min(0.9, max(0.6, 0.6 + 0.15 * math.log10(points / 10)))


def ema(values: list[float | None], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): s_i = n_i / d_i with
    n_i = w n_{i-1} + (1 - w) v_i and d_i = w d_{i-1} + (1 - w), so s_0 = v_0 and an early value
    is not pulled towards 0. A missing or non-finite value gives NaN there and leaves the average
    as it was."""
    out, num, den = [], 0.0, 0.0
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(float("nan"))
            continue
        num = weight * num + (1 - weight) * value
        den = weight * den + (1 - weight)
        out.append(num / den)
    return out


def time_unit(max_seconds: float) -> tuple[float, str]:
    """(divisor, unit) that shows wall-clock seconds up to ``max_seconds`` in readable numbers."""
    if max_seconds >= 3 * 3600:
        return 3600.0, "h"
    if max_seconds >= 180:
        return 60.0, "min"
    return 1.0, "s"


def curve_panel(series: list[dict[str, Any]], xlabel: str, *, weight: float | None = None, log_y: bool = False,
                seconds: bool = False, size: tuple[float, float] = (4.2, 2.6)) -> Any:
    """One metric, one small figure: per entry of ``series`` ({"label", "xs", "ys", "color"}) the
    raw values drawn faint and their EMA (``weight``; default from the longest series) solid on
    top. ``log_y``: a log y axis when the values are positive and span a factor of 20 or more.
    ``seconds``: the xs are wall-clock seconds, shown in s, min or h."""
    fig, ax = plt.subplots(figsize=size)
    longest = max((len(s["ys"]) for s in series), default=0)
    weight = smoothing_weight(longest) if weight is None else weight
    scale, unit = time_unit(max((max(s["xs"], default=0.0) for s in series), default=0.0)) if seconds else (1.0, "")
    for s in series:
        xs = [x / scale for x in s["xs"]]
        if weight > 0:
            ax.plot(xs, s["ys"], color=s.get("color"), lw=1.0, alpha=0.28)
            ax.plot(xs, ema(s["ys"], weight), color=s.get("color"), lw=1.8, label=s.get("label"))
        else:
            ax.plot(xs, s["ys"], "o-" if len(xs) <= 30 else "-", color=s.get("color"), lw=1.6, ms=3,
                    label=s.get("label"))
    values = [y for s in series for y in s["ys"] if y is not None and math.isfinite(y)]
    if log_y and values and min(values) > 0 and max(values) >= 20 * min(values):  # a log axis only over decades
        ax.set_yscale("log")
    if not seconds:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel(f"{xlabel} ({unit})" if seconds else xlabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.yaxis.get_offset_text().set_fontsize(7)
    ax.grid(alpha=0.3)
    fig.tight_layout(pad=0.4)
    return fig


def _curve(ax, ks: list[int], values: list[float], cis: list[tuple[float, float]] | None, label: str,
           style: str = "o-", color: str | None = None) -> None:
    line, = ax.plot(ks, [100 * v for v in values], style, label=label, color=color, lw=1.5, ms=4)
    if cis:
        ax.fill_between(ks, [100 * lo for lo, _ in cis], [100 * hi for _, hi in cis], alpha=0.15,
                        color=line.get_color())


def _k_axis(ax, ks: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (samples per problem, log scale)")
    ax.grid(alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_passk_curves(models: list[dict[str, Any]], path: Path) -> Path:
    """Write ``passk_figure(models)`` to ``path``."""
    return _save(passk_figure(models), path)


def plot_scaling(models: list[dict[str, Any]], path: Path) -> Path:
    """Write ``scaling_figure(models)`` to ``path``."""
    return _save(scaling_figure(models), path)


def passk_figure(models: list[dict[str, Any]]) -> Any:
    """pass@k (left) and maj@k (right, when evaluated) against k on a log2 axis, one line per model, with
    shaded bootstrap 95% intervals. ``models``: [{"label", "metrics"}] as from ``summarize``."""
    panels = [(prefix, title) for prefix, title in (("pass@", "pass@k (unbiased)"), ("maj@", "maj@k (majority vote)"))
              if any(f"{prefix}1" in model["metrics"] for model in models)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for (prefix, title), ax in zip(panels, axes[0]):
        all_ks: set[int] = set()
        for model in models:
            m = model["metrics"]
            ks = sorted(int(key[len(prefix):]) for key in m if re.fullmatch(re.escape(prefix) + r"\d+", key))
            if not ks:
                continue
            all_ks.update(ks)
            _curve(ax, ks, [m[f"{prefix}{k}"] for k in ks], [m.get(f"{prefix}{k}_ci95") for k in ks]
                   if all(f"{prefix}{k}_ci95" in m for k in ks) else None, model["label"])
        if all_ks:
            _k_axis(ax, sorted(all_ks))
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def scaling_figure(models: list[dict[str, Any]]) -> Any:
    """Test-time scaling: accuracy of the chosen strategy against the number of samples."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    title = ""
    for model in models:
        scaling = model["metrics"]["scaling"]
        title = scaling["strategy"] + (f" (selector: {scaling['selector']})" if scaling["selector"] else "")
        _curve(ax, scaling["k"], scaling["accuracy"], [tuple(c) for c in scaling["ci95"]], model["label"])
        _k_axis(ax, scaling["k"])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"test-time scaling: {title}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
