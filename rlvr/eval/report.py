"""`rlvr report RUN_DIR`: one self-contained HTML file about a run.

Sections: summary, configuration, training curves, held-out evaluations (the run's own
warm-start / periodic / final evaluations, and the results of ``rlvr eval`` written to
``RUN_DIR/eval/results.json`` when present) and transcripts from early, middle and late
training. Plots are PNGs embedded as base64 data URIs and the page needs no script, so the
file can be mailed or archived and opens offline in any browser. Every string that comes
from the run (completions, prompts, config) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlvr.eval.compare import format_tables  # noqa: E402
from rlvr.eval.plots import passk_figure, scaling_figure  # noqa: E402

SECTIONS = [("summary", "Summary"), ("config", "Configuration"), ("training", "Training curves"),
            ("evaluation", "Held-out evaluation"), ("transcripts", "Transcripts")]

# (title, metric keys or a prefix ending in '/'): the curves the report looks for in metrics.jsonl
TRAINING_CURVES = [
    ("reward (mean over samples)", ["reward_mean"]),
    ("reward components", ["reward/"]),
    ("training accuracy (sampled)", ["accuracy"]),
    ("response length (tokens)", ["response_length"]),
    ("policy entropy (nats/token)", ["entropy"]),
    ("KL to reference", ["kl", "kl_rollout"]),
    ("clip fraction", ["clip_frac", "dual_clip_frac"]),
    ("zero-variance groups (fraction)", ["zero_variance_groups"]),
    ("tokens / s", ["tokens_per_s"]),
    ("tool calls per sample", ["tool_calls"]),
]

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 0 24px 48px; color: #1d1d1f; line-height: 1.45; }
header { border-bottom: 2px solid #ddd; margin-bottom: 8px; }
h1 { margin: 20px 0 4px; } h2 { border-bottom: 1px solid #e3e3e3; padding-bottom: 4px; margin-top: 36px; }
nav a { margin-right: 14px; } .muted { color: #666; font-size: 0.9em; } .note { color: #8a5a00; font-size: 0.9em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; } .scroll { overflow-x: auto; } h4 { margin: 14px 0 2px; font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
pre { background: #f7f7f9; padding: 8px 10px; overflow-x: auto; font-size: 0.85em; white-space: pre-wrap;
      word-break: break-word; }
details { border: 1px solid #e2e2e2; border-radius: 4px; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; font-family: ui-monospace, monospace; font-size: 0.9em; }
.ok { color: #137333; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.seg-observation { background: #eef5ff; border-left: 3px solid #5b8def; }
.seg-policy { background: #f7f7f9; border-left: 3px solid #999; }
"""


def _png(fig: Any) -> str:
    """The figure as an <img> with the PNG inline (base64 data URI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _esc(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return _esc(value)


def _read_json(path: Path, default: Any) -> Any:
    """A JSON file's value; ``default`` when it is missing or damaged (a crash mid-write of an
    older version, a full disk): the report shows what is left rather than failing."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _keys_for(spec: list[str], records: list[dict[str, Any]]) -> list[str]:
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = []
    for item in spec:
        if item.endswith("/"):
            keys += sorted(k for k in present if k.startswith(item))
        elif item in present:
            keys.append(item)
    return keys


def training_section(metrics: list[dict[str, Any]]) -> str:
    rl = [m for m in metrics if m.get("stage") == "rl"]
    sft = [m for m in metrics if m.get("stage") == "sft"]
    panels, missing = [], []
    for title, spec in TRAINING_CURVES:
        keys = _keys_for(spec, rl)
        if keys:
            panels.append((title, keys))
        else:
            missing.append(title)
    parts = []
    if panels:
        cols = 3
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
        for ax, (title, keys) in zip(axes.flat, panels):
            for key in keys:
                points = [(m["step"], m[key]) for m in rl if isinstance(m.get(key), (int, float))]
                ax.plot(*zip(*points), lw=1.4, label=key)
            if len(keys) > 1:
                ax.legend(fontsize=7)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("RL step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        parts.append(_png(fig))
    else:
        parts.append('<p class="note">No RL steps in metrics.jsonl.</p>')
    if missing and rl:
        parts.append(f'<p class="note">Not logged by this run: {_esc(", ".join(missing))}.</p>')
    if sft and any("loss" in m for m in sft):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([m["step"] for m in sft if "loss" in m], [m["loss"] for m in sft if "loss" in m], lw=1.4)
        ax.set_yscale("log")
        ax.set_title("SFT loss (nats/token)", fontsize=10)
        ax.set_xlabel("SFT step", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        parts.append(_png(fig))
    if rl:
        last = rl[-1]
        keys = [k for k in sorted(last) if isinstance(last[k], (int, float)) and k not in ("step",)]
        parts.append("<details><summary>last RL step, every logged value</summary>"
                     + _table(["metric", "value"], [[_esc(k), _fmt(last[k])] for k in keys]) + "</details>")
    return "\n".join(parts)


def _pass_keys(record: dict[str, Any], prefix: str) -> list[int]:
    return sorted(int(k[len(prefix):]) for k in record if re.fullmatch(re.escape(prefix) + r"\d+", k))


def _heldout_figure(evals: list[dict[str, Any]]) -> Any:
    """Greedy accuracy, pass@1 and the largest pass@k against the RL step, with 95% bands."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [e.get("step", 0) for e in evals]
    ks = sorted({k for e in evals for k in _pass_keys(e, "pass@")})
    styles = {"greedy_accuracy": "o-", "pass@1": "s--"}
    if ks and ks[-1] > 1:
        styles[f"pass@{ks[-1]}"] = "^:"
    for key, style in styles.items():
        if not all(key in e for e in evals):
            continue
        line, = ax.plot(steps, [100 * e[key] for e in evals], style, label=key.replace("_accuracy", ""), ms=4)
        if all(f"{key}_ci95" in e for e in evals):
            ax.fill_between(steps, [100 * e[f"{key}_ci95"][0] for e in evals],
                            [100 * e[f"{key}_ci95"][1] for e in evals], alpha=0.15, color=line.get_color())
    ax.set_xlabel("RL step (0 = warm start)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def evaluation_section(evals: list[dict[str, Any]], results: dict[str, Any] | None) -> str:
    parts = []
    if evals:
        columns = ["greedy_accuracy", *[f"{prefix}{k}" for prefix in ("pass@", "maj@")
                                        for k in sorted({k for e in evals for k in _pass_keys(e, prefix)})]]
        header = ["phase", "RL step", *[c.replace("_accuracy", "") + " %" for c in columns], "length (tok)"]
        rows = []
        for e in evals:
            def cell(key: str) -> str:
                if key not in e:
                    return "-"
                ci = e.get(f"{key}_ci95")
                return f"{100 * e[key]:.1f}" + (f' <span class="muted">[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>'
                                                 if ci else "")
            rows.append([_esc(e.get("phase", "")), _esc(e.get("step", "")), *[cell(c) for c in columns],
                         _fmt(e.get("sampled_length", e.get("greedy_length")))])
        parts.append("<h3>During training (<code>eval.jsonl</code>)</h3>"
                     '<p class="muted">Held-out problems; brackets: bootstrap 95% interval over problems.</p>'
                     + _table(header, rows))
        if len(evals) > 1:
            parts.append(_png(_heldout_figure(evals)))
        ends = [e for e in evals if e.get("phase") in ("warmstart", "final")] or [evals[0], evals[-1]]
        if any("pass@1" in e for e in ends):
            models = [{"label": str(e.get("phase")), "metrics": e} for e in ends]
            parts.append(_png(passk_figure(models)))
    else:
        parts.append('<p class="note">No evaluations in eval.jsonl.</p>')
    if results:
        models = results["models"]
        parts.append(f"<h3><code>rlvr eval</code>: {len(models)} model(s), {results['problems']} problems, "
                     f"n = {results['samples']} samples each</h3>")
        parts.append(_markdown_tables(format_tables(results)))
        if any("pass@1" in m["metrics"] for m in models):
            parts.append(_png(passk_figure(models)))
        if all("scaling" in m["metrics"] for m in models):
            parts.append(_png(scaling_figure(models)))
    else:
        parts.append('<p class="muted">No <code>eval/results.json</code>: run <code>rlvr eval RUN_DIR/checkpoints/'
                     'sft-final RUN_DIR --n 64</code> to add a large-n comparison here.</p>')
    return "\n".join(parts)


def _transcript(sample: dict[str, Any], opened: bool = False) -> str:
    ok = sample.get("correct")
    mark = '<span class="ok">correct</span>' if ok else '<span class="bad">wrong</span>'
    title = (f"step {sample.get('step', '?')} &middot; problem {_esc(sample.get('problem_id', '?'))} &middot; "
             f"reward {_fmt(sample.get('reward'))} &middot; {mark}")
    body = []
    if sample.get("prompt") is not None:
        prompt = sample["prompt"]
        if isinstance(prompt, list):
            prompt = "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" for m in prompt)
        body.append(f"<b>prompt</b><pre>{_esc(prompt)}</pre>")
    segments = sample.get("segments") or []
    if segments:
        body.append("<b>episode</b> (policy turns grey, tool / environment output blue)")
        body += [f'<pre class="seg-{_esc(s.get("role", "policy"))}">{_esc(s.get("text", ""))}</pre>' for s in segments]
    else:
        body.append(f"<b>completion</b><pre>{_esc(sample.get('completion', ''))}</pre>")
    facts = [["reference answer", _esc(sample.get("answer"))], ["extracted answer", _esc(sample.get("extracted"))],
             ["finish reason", _esc(sample.get("finish_reason"))], ["response tokens", _esc(sample.get("response_tokens"))]]
    for key in ("turns", "tool_calls", "tool_errors", "violation", "error"):
        if sample.get(key) not in (None, 0, ""):
            facts.append([key.replace("_", " "), _esc(sample[key])])
    facts += [[f"reward/{_esc(k)}", _fmt(v)] for k, v in (sample.get("reward_components") or {}).items()]
    body.append(_table(["", ""], facts))
    return f"<details{' open' if opened else ''}><summary>{title}</summary>{''.join(body)}</details>"


def transcripts_section(samples: list[dict[str, Any]], per_phase: int) -> str:
    steps = sorted({s.get("step", 0) for s in samples})
    if not steps:
        return '<p class="note">No transcripts in samples.jsonl.</p>'
    thirds = [steps[: max(1, len(steps) // 3)], steps[len(steps) // 3: 2 * len(steps) // 3],
              steps[2 * len(steps) // 3:]]
    parts = ['<p class="muted">Completions logged during RL (<code>samples.jsonl</code>), with the verifier\'s '
             "verdict and the reward breakdown; click one to open it.</p>"]
    for name, window in zip(("early", "middle", "late"), thirds):
        if not window:
            continue
        chosen = [s for s in samples if s.get("step", 0) in set(window)]
        # spread the picks over the window rather than taking its first step only
        picks = chosen[:: max(1, len(chosen) // per_phase)][:per_phase] if per_phase > 0 else []
        correct = sum(bool(s.get("correct")) for s in chosen) / len(chosen)
        parts.append(f'<h3 id="transcripts-{name}">{name.capitalize()} training (steps {window[0]}-{window[-1]}, '
                     f"{100 * correct:.0f}% of logged samples correct)</h3>")
        parts += [_transcript(s, opened=i == 0) for i, s in enumerate(picks)]
    return "\n".join(parts)


def summary_section(run_dir: Path, summary: dict[str, Any], state: dict[str, Any]) -> str:
    """Headline numbers: warm start vs final side by side, then the rest of summary.json."""
    stages = ", ".join(state.get("completed_stages", [])) or "none"
    parts = [f'<p>Run directory <code>{_esc(run_dir.resolve())}</code>; completed stages: {_esc(stages)}.</p>']
    if not summary:
        return parts[0] + '<p class="note">No summary.json yet (the run has not finished).</p>'
    pairs = [("greedy accuracy", "warmstart_accuracy", "final_accuracy")]
    pairs += [(key[len("final_"):], f"warmstart_{key[len('final_'):]}", key)
              for key in summary if re.fullmatch(r"final_pass@\d+", key)]
    rows = [[_esc(name), _pct_cell(summary.get(warm)), _pct_cell(summary.get(final))] for name, warm, final in pairs
            if summary.get(final) is not None]
    parts.append(_table(["held-out (%)", "warm start", "final"], rows))
    used = {k for _, w, f in pairs for k in (w, f)}
    rest = [[_esc(k), _fmt(v)] for k, v in summary.items() if k not in used and not k.endswith("_ci95") and v is not None]
    parts.append(_table(["quantity", "value"], rest))
    return "\n".join(parts)


def _pct_cell(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _markdown_tables(text: str) -> str:
    """``format_tables`` output (titles and Markdown tables) as HTML tables."""
    parts = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if lines and not lines[0].startswith("|"):
            parts.append(f"<h4>{_esc(lines[0])}</h4>")
            lines = lines[1:]
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("|-")]
        if cells:
            parts.append(_table(cells[0], [[_esc(c) for c in row] for row in cells[1:]]))
    return "\n".join(parts)


def build_report(run_dir: Path, transcripts_per_phase: int = 6) -> str:
    """The report of ``run_dir`` as one HTML string."""
    if not (run_dir / "state.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not an rlvr run directory (no state.json or config.yaml)")
    state = _read_json(run_dir / "state.json", {})
    summary = _read_json(run_dir / "summary.json", {})
    config_text = (run_dir / "config.yaml").read_text(errors="replace") if (run_dir / "config.yaml").is_file() else "(missing)"
    results = _read_json(run_dir / "eval" / "results.json", None)
    bodies = {
        "summary": summary_section(run_dir, summary, state),
        "config": f"<details><summary>config.yaml (resolved, with every field's help)</summary>"
                  f"<pre>{_esc(config_text)}</pre></details>",
        "training": training_section(_read_jsonl(run_dir / "metrics.jsonl")),
        "evaluation": evaluation_section(_read_jsonl(run_dir / "eval.jsonl"), results),
        "transcripts": transcripts_section(_read_jsonl(run_dir / "samples.jsonl"), transcripts_per_phase),
    }
    nav = " ".join(f'<a href="#{key}">{_esc(title)}</a>' for key, title in SECTIONS)
    sections = "\n".join(f'<section id="{key}"><h2>{_esc(title)}</h2>\n{bodies[key]}\n</section>'
                         for key, title in SECTIONS)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>rlvr report: {_esc(run_dir.name)}</title><style>{CSS}</style></head><body>\n"
            f"<header><h1>rlvr run report: {_esc(run_dir.name)}</h1>"
            f'<p class="muted">generated {time.strftime("%Y-%m-%d %H:%M:%S")} by <code>rlvr report</code></p>'
            f"<nav>{nav}</nav></header>\n{sections}\n</body></html>\n")


def write_report(run_dir: Path, output: Path | None = None, transcripts_per_phase: int = 6) -> Path:
    """Write the report (default ``RUN_DIR/report.html``) and return its path."""
    output = output or run_dir / "report.html"
    output.write_text(build_report(run_dir, transcripts_per_phase))
    return output
