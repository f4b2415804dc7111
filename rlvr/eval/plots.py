"""PNG plots of a run's curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
