"""`rlvr report RUN_DIR [RUN_DIR ...]`: one self-contained HTML file about one run, or several
runs overlaid.

Sections: summary, configuration, training curves, held-out evaluations (the run's own
warm-start / periodic / final evaluations, and the results of ``rlvr eval`` written to
``RUN_DIR/eval/results.json`` when present) and whole GRPO groups sampled during RL. Plots are
PNGs embedded as base64 data URIs and the page needs no script, so the file can be mailed or
archived and opens offline in any browser. Every string that comes from the run (completions,
prompts, config) is HTML-escaped.

Training curves are one small panel per logged metric, grouped (reward and accuracy,
responses, policy update, throughput), each drawn raw (faint) and smoothed (a debiased EMA,
``plots.ema``) against the RL step or the RL wall-clock time (``x_axis="time"``:
``rl_seconds_total``). A metric whose curve is the same as another's (``reward/correctness``
when it is the only reward component, ``accuracy/<task>`` with one task) is drawn once and
named in that panel's caption. With several runs every panel holds one colour per run, and
the summary, the held-out evaluations and the configuration differences sit side by side.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from rlvr.eval.compare import format_tables  # noqa: E402
from rlvr.eval.plots import curve_panel, passk_figure, scaling_figure, time_unit  # noqa: E402

X_AXES = ("step", "time")

SECTIONS = [("summary", "Summary"), ("config", "Configuration"), ("training", "Training curves"),
            ("evaluation", "Held-out evaluation"), ("transcripts", "Sampled GRPO groups")]

# (title, metric keys or a prefix ending in '/'): the headline curves; those a run did not log are named
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

# Panel groups of the RL metrics, in page order: exact keys, or prefixes ending in '/' or '_'.
# Keys no group claims go to a collapsed "other logged metrics" group.
PANEL_GROUPS = [
    ("Reward and accuracy", ["reward_mean", "reward/", "reward_std", "accuracy", "accuracy/", "zero_variance_groups",
                             "filter_kept_frac", "pass_rate", "curriculum"]),
    ("Responses", ["response_length", "truncated_frac", "prompts_truncated", "verifier_timeout_frac", "turns", "tool_calls", "tool_use_frac",
                   "tool_error_rate", "void_turn_frac", "violation_frac", "observation_token_frac"]),
    ("Policy update", ["entropy", "kl", "kl_rollout", "approx_kl", "clip_frac", "dual_clip_frac", "ratio_mean",
                       "ratio_max", "seq_ratio_mean", "seq_ratio_max", "loss", "grad_norm", "lr", "kl_coef",
                       "entropy_coef", "value_loss", "value_clip_frac", "explained_variance"]),
    ("Throughput", ["tokens_per_s", "step_time", "samples_generated", "rollout_rounds", "gpu_memory_peak_gib",
                    "logprob_gap_mean", "logprob_gap_max"]),
    ("Asynchronous rollouts (rl.max_staleness)", ["staleness_mean", "staleness_max", "staleness/", "stale_dropped",
                                                  "overlap_frac"]),
    ("Learned and verifier-free rewards: proxy against the verifier (hacking shows as a rising gap)",
     ["proxy_gold_gap", "proxy_gold_corr", "reward_model_mean", "judge_mean", "judge_parse_failures",
      "judge_cache_hits", "majority_vote_mean", "majority_label_accuracy", "semantic_entropy_mean", "semantic_entropy",
      "rlpr_mean", "self_certainty_mean"]),
    ("Step time by stage", ["time_"]),
]
# groups drawn inside a closed <details> (open it to see them)
COLLAPSED = {"Step time by stage", "Other logged metrics"}

TITLES = {
    "reward_mean": "reward, mean over samples", "reward_std": "reward std over samples",
    "reward/failed": "samples with a failed reward component", "accuracy": "training accuracy (sampled)",
    "zero_variance_groups": "groups with equal rewards (fraction)", "filter_kept_frac": "groups kept by the filter",
    "response_length": "response length (tokens)", "truncated_frac": "truncated responses (fraction)",
    "prompts_truncated": "prompts cut to data.max_prompt_length (fraction)",
    "verifier_timeout_frac": "verifier timeouts (fraction)", "turns": "turns per episode",
    "tool_calls": "tool calls per sample", "tool_use_frac": "episodes using a tool", "tool_error_rate":
    "tool errors per call", "entropy": "policy entropy (nats/token)", "kl": "KL to reference",
    "kl_rollout": "KL to the rollout policy", "approx_kl": "approximate KL (old -> new)",
    "clip_frac": "PPO clip fraction", "dual_clip_frac": "dual-clip fraction", "ratio_mean": "importance ratio, mean",
    "ratio_max": "importance ratio, max", "loss": "policy loss", "grad_norm": "gradient norm (before clipping)",
    "lr": "learning rate", "tokens_per_s": "generated tokens / s", "step_time": "seconds per step",
    "samples_generated": "samples generated per step", "logprob_gap_mean": "engine vs trainer log-prob gap, mean",
    "logprob_gap_max": "engine vs trainer log-prob gap, max", "gpu_memory_peak_gib": "peak GPU memory (GiB)",
    "staleness_mean": "sample staleness, mean (weight versions)", "staleness_max": "sample staleness, max",
    "stale_dropped": "samples dropped as too stale", "overlap_frac": "background generation overlapped with training",
    "proxy_gold_gap": "learned reward - verifier correctness (mean)", "proxy_gold_corr":
    "correlation of learned reward and verifier", "reward_model_mean": "reward model score, mean",
    "majority_vote_mean": "majority-vote reward, mean", "majority_label_accuracy": "pseudo-labels that are right",
    "judge_mean": "judge verdict, mean", "judge_parse_failures": "judge texts with no verdict",
    "judge_cache_hits": "judge verdicts answered without decoding", "semantic_entropy_mean": "EMPO reward, mean",
    "semantic_entropy": "semantic entropy of a group's answers (nats)", "rlpr_mean": "RLPR reward, mean",
    "self_certainty_mean": "self-certainty, mean (nats)",
}
SFT_TITLES = {"loss": "SFT loss (nats/token)", "grad_norm": "gradient norm (before clipping)",
              "lr": "learning rate", "tokens_per_s": "tokens / s", "step_time": "seconds per step"}

# bookkeeping, not curves (the wall-clock axis itself, running totals)
NOT_CURVES = {"step", "rl_seconds_total", "samples_generated_total", "tokens_generated_total", "policy_version", "stage_index", "stage_step"}

# one colour per run in an overlay (matplotlib's tab10)
RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf"]
SINGLE_COLOR = "#1f77b4"

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1300px;
       padding: 0 24px 48px; color: #1d1d1f; line-height: 1.45; font-size: 15px; }
header { border-bottom: 2px solid #ddd; margin-bottom: 8px; }
h1 { margin: 20px 0 4px; font-size: 1.7em; }
h2 { border-bottom: 1px solid #e3e3e3; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 22px 0 6px; } h4 { margin: 14px 0 4px; font-weight: 600; }
section { max-width: 100%; }
nav a { margin-right: 14px; } .muted { color: #666; font-size: 0.9em; } .note { color: #8a5a00; font-size: 0.9em; }
code { font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 0.92em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; vertical-align: top; }
th { background: #f4f4f6; }
td:first-child, th:first-child { text-align: left; }
td.text { white-space: normal; overflow-wrap: anywhere; text-align: left; min-width: 12em; max-width: 36em; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
pre { background: #f7f7f9; padding: 8px 10px; overflow-x: auto; white-space: pre-wrap; overflow-wrap: anywhere;
      font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 13.5px; line-height: 1.4;
      margin: 4px 0; }
details { border: 1px solid #e2e2e2; border-radius: 4px; margin: 6px 0; padding: 4px 10px; }
summary { cursor: pointer; }
.ok { color: #137333; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.pos { color: #137333; } .neg { color: #b3261e; }
.ci { display: block; color: #777; font-size: 0.8em; line-height: 1.2; }
.seg-observation { background: #eef5ff; border-left: 3px solid #5b8def; }
.seg-policy { background: #f7f7f9; border-left: 3px solid #999; }
.panels { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 10px 14px;
          margin: 6px 0 10px; }
figure.panel { margin: 0; border: 1px solid #e6e6e6; border-radius: 4px; padding: 4px 6px 2px; min-width: 0; }
figure.panel img { width: 100%; height: auto; border: 0; margin: 0; display: block; }
figure.panel figcaption { font-size: 13px; line-height: 1.3; min-height: 2.6em; overflow-wrap: anywhere; }
.legend { position: sticky; top: 0; background: #fff; z-index: 2; padding: 6px 0; border-bottom: 1px solid #eee;
          font-size: 14px; }
.legend span.run { margin-right: 18px; white-space: nowrap; }
.swatch { display: inline-block; width: 26px; height: 4px; vertical-align: middle; margin-right: 6px;
          border-radius: 2px; }
.group { border-left: 3px solid #d0d7e2; padding: 2px 0 4px 12px; margin: 10px 0 18px; }
.group h4 { margin-top: 6px; }
table.samples { width: 100%; } table.samples th:last-child { text-align: left; }
table.samples td.ans { white-space: normal; text-align: left; overflow-wrap: anywhere; max-width: 12em; }
table.samples td.completion { white-space: normal; text-align: left; width: 100%; min-width: 24em; }
table.samples td.completion details { border: 0; margin: 0; padding: 0; }
table.samples td.completion .hide, table.samples td.completion details[open] > summary .preview { display: none; }
table.samples td.completion details[open] > summary .hide { display: inline; color: #666; }
table.samples td.completion summary { font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace;
      font-size: 13px; color: #333; white-space: pre-wrap; overflow-wrap: anywhere; }
"""


@dataclass
class Run:
    """What a run directory holds, read once."""

    path: Path
    label: str
    state: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    config_text: str = "(missing)"
    config: dict[str, Any] = field(default_factory=dict)  # flattened: "rl.steps" -> 6
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    color: str = SINGLE_COLOR


def _png(fig: Any, dpi: int = 90) -> str:
    """The figure as an <img> with the PNG inline (base64 data URI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(record, dict):
            out.append(record)
    return out


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys: {"rl": {"steps": 6}} -> {"rl.steps": 6}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _labels(paths: list[Path]) -> list[str]:
    """Each run's name in legends: its directory name, with parents added where two runs share it."""
    resolved = [p.resolve() for p in paths]
    for depth in range(1, 8):
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p.name} #{i + 1}" for i, p in enumerate(resolved)]


def load_run(run_dir: Path, label: str | None = None) -> Run:
    """Read a run directory; FileNotFoundError (one line, naming the path) when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: not an rlvr run directory (no such directory)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not an rlvr run directory (a file, not a directory)")
    if not any(run_dir.iterdir()):
        raise FileNotFoundError(f"{run_dir}: not an rlvr run directory (the directory is empty)")
    if not (run_dir / "state.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not an rlvr run directory (no state.json or config.yaml)")
    run = Run(path=run_dir, label=label or run_dir.resolve().name)
    run.state = _read_json(run_dir / "state.json", {})
    run.summary = _read_json(run_dir / "summary.json", {})
    if not isinstance(run.state, dict):
        run.state = {}
    if not isinstance(run.summary, dict):
        run.summary = {}
    if (run_dir / "config.yaml").is_file():
        run.config_text = (run_dir / "config.yaml").read_text(errors="replace")
        try:
            run.config = flatten(yaml.safe_load(run.config_text) or {})
        except yaml.YAMLError:
            run.config = {}
    run.metrics = _read_jsonl(run_dir / "metrics.jsonl")
    run.evals = _read_jsonl(run_dir / "eval.jsonl")
    run.samples = _read_jsonl(run_dir / "samples.jsonl")
    run.results = _read_json(run_dir / "eval" / "results.json", None)
    return run


# ---------------------------------------------------------------------------------------------
# curves


def stage_records(metrics: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    """The records of one stage, one per step (the last one written wins), by step."""
    by_step: dict[Any, dict[str, Any]] = {}
    for record in metrics:
        if record.get("stage") == stage and _number(record.get("step")):
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def x_values(records: list[dict[str, Any]], x_axis: str) -> list[float] | None:
    """The x coordinate of each record: its step, or (``x_axis="time"``) the wall-clock seconds of
    training at its end: ``rl_seconds_total`` where every record has it, else the running sum of
    ``step_time`` (SFT records, older RL records); None when neither was logged."""
    if x_axis == "step":
        return [float(r["step"]) for r in records]
    if x_axis != "time":
        raise ValueError(f"x_axis must be one of {X_AXES}, not {x_axis!r}")
    if records and all(_number(r.get("rl_seconds_total")) for r in records):
        return [float(r["rl_seconds_total"]) for r in records]
    if records and all(_number(r.get("step_time")) for r in records):
        total, out = 0.0, []
        for r in records:
            total += r["step_time"]
            out.append(total)
        return out
    return None


def metric_series(records: list[dict[str, Any]], key: str, x_axis: str = "step") -> tuple[list[float], list[float]]:
    """(xs, ys) of one metric over a stage's records (``stage_records``), skipping records that lack it."""
    xs = x_values(records, x_axis)
    if xs is None:
        return [], []
    pairs = [(x, float(r[key])) for x, r in zip(xs, records) if _number(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _matches(key: str, spec: list[str]) -> bool:
    return any(key.startswith(item) if item.endswith(("/", "_")) else key == item for item in spec)


def _ordered(keys: set[str], spec: list[str]) -> list[str]:
    out: list[str] = []
    for item in spec:
        if item.endswith(("/", "_")):
            out += sorted(k for k in keys if k.startswith(item) and k not in out)
        elif item in keys and item not in out:
            out.append(item)
    return out


def _same_series(a: tuple[list[float], list[float]], b: tuple[list[float], list[float]]) -> bool:
    return (len(a[0]) > 0 and a[0] == b[0]
            and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a[1], b[1])))


def _family(key: str) -> str:
    """Keys that measure one quantity when their curves agree: the reward, its components and the
    accuracy (the reward is the accuracy when correctness is its only component)."""
    return "reward" if key == "reward_mean" or key.startswith(("reward/", "accuracy")) else key


@dataclass
class Panel:
    key: str
    title: str
    aliases: list[str] = field(default_factory=list)  # keys with the very same curve, drawn once here
    log_y: bool = False


def plan_panels(runs_records: list[list[dict[str, Any]]], groups: list[tuple[str, list[str]]],
                titles: dict[str, str], headline: set[str] | None = None,
                log_y: set[str] = frozenset()) -> tuple[list[tuple[str, list[Panel]]], list[tuple[str, Any]]]:
    """Which panels to draw: [(group title, [Panel])] and the constants [(key, value)].

    One panel per metric key. A key whose curve equals an earlier key's in every run (same steps,
    same values; for flat curves, only within the reward / accuracy family) is folded into that
    panel as an alias: one curve, not two panels. A key other
    than a ``headline`` one that holds one value at every step of every run (at least 3 steps)
    is listed as a constant rather than drawn. Keys no group names go to "Other logged metrics"."""
    headline = headline or set()
    present: set[str] = set()
    for records in runs_records:
        present |= {k for r in records for k, v in r.items() if _number(v) and k not in NOT_CURVES}
    claimed = [k for _, spec in groups for k in _ordered(present, spec)]
    order = [*dict.fromkeys(claimed), *sorted(present - set(claimed))]
    step_series = {k: [metric_series(records, k) for records in runs_records] for k in order}
    constants: list[tuple[str, Any]] = []
    panels: dict[str, Panel] = {}
    for key in order:
        series = step_series[key]
        values = {y for _, ys in series for y in ys}
        if key not in headline and len(values) == 1 and all(len(ys) >= 3 for xs, ys in series if xs):
            constants.append((key, next(iter(values))))
            continue
        moving = len(values) > 1  # two flat curves at the same value are a coincidence, not one quantity
        twin = next((p for p in panels.values()
                     if (moving or _family(p.key) == _family(key)) and any(a[0] for a in series)
                     and all(_same_series(a, b) or (not a[0] and not b[0]) for a, b in zip(step_series[p.key], series))),
                    None)
        if twin is not None:
            twin.aliases.append(key)
            continue
        panels[key] = Panel(key, titles.get(key, ""), log_y=key in log_y)
    out: list[tuple[str, list[Panel]]] = []
    placed: set[str] = set()
    for title, spec in groups:
        members = [panels[k] for k in _ordered(set(panels), spec) if k not in placed]
        placed |= {p.key for p in members}
        if members:
            out.append((title, members))
    rest = [panels[k] for k in panels if k not in placed]
    if rest:
        out.append(("Other logged metrics", rest))
    return out, constants


def _figure_html(panel: Panel, runs: list[Run], stage: str, x_axis: str, xlabel: str) -> str:
    series = []
    for run in runs:
        xs, ys = metric_series(stage_records(run.metrics, stage), panel.key, x_axis)
        if xs:
            series.append({"label": run.label, "xs": xs, "ys": ys, "color": run.color})
    fig = curve_panel(series, xlabel, log_y=panel.log_y, seconds=x_axis == "time")
    img = _png(fig, dpi=100).replace('alt="plot"', f'alt="{_esc(panel.key)}"')
    alias = "".join(f" = <code>{_esc(a)}</code>" for a in panel.aliases)
    title = f' <span class="muted">{_esc(panel.title)}</span>' if panel.title else ""
    return (f'<figure class="panel" data-metric="{_esc(panel.key)}"><figcaption><code>{_esc(panel.key)}</code>'
            f"{alias}{title}</figcaption>{img}</figure>")


def _legend(runs: list[Run]) -> str:
    spans = "".join(f'<span class="run"><span class="swatch" style="background:{run.color}"></span>{_esc(run.label)}'
                    "</span>" for run in runs)
    return f'<div class="legend">{spans}<span class="muted">solid: smoothed (EMA), faint: raw</span></div>'


def _time_axis_ok(runs: list[Run], stage: str) -> list[str]:
    """The runs whose records of ``stage`` give no wall-clock time."""
    return [run.label for run in runs if stage_records(run.metrics, stage)
            and x_values(stage_records(run.metrics, stage), "time") is None]


def training_section(runs: list[Run], x_axis: str = "step") -> str:
    """One panel per metric, grouped; one colour per run."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, not {x_axis!r}")
    parts = []
    if len(runs) > 1:
        parts.append(_legend(runs))
    rl_axis = x_axis
    if x_axis == "time" and _time_axis_ok(runs, "rl"):
        parts.append(f'<p class="note">No wall-clock time (rl_seconds_total, step_time) in the RL records of '
                     f'{_esc(", ".join(_time_axis_ok(runs, "rl")))}: RL curves are drawn against the step.</p>')
        rl_axis = "step"
    rl_records = [stage_records(run.metrics, "rl") for run in runs]
    headline = {k for _, spec in TRAINING_CURVES for k in spec}
    headline |= {k for records in rl_records for r in records for k in r if k.startswith(("reward/", "accuracy/"))}
    if any(rl_records):
        groups, constants = plan_panels(rl_records, PANEL_GROUPS, TITLES, headline)
        xlabel = "RL step" if rl_axis == "step" else "RL time, training steps only"
        axis = ("RL step" if rl_axis == "step" else
                "RL wall-clock time (rl_seconds_total: the seconds of the RL steps, evaluations excluded)")
        parts.append(f'<p class="muted">{"One colour per run. " if len(runs) > 1 else ""}Faint: the logged value of '
                     "each step; solid: its exponential moving average (debiased, weight "
                     f"0.6-0.9 growing with the number of steps). x axis: {axis}.</p>")
        for title, panels in groups:
            figures = "".join(_figure_html(p, runs, "rl", rl_axis, xlabel) for p in panels)
            if title in COLLAPSED:
                parts.append(f"<details><summary>{_esc(title)} ({len(panels)} panels)</summary>"
                             f'<div class="panels">{figures}</div></details>')
            else:
                parts.append(f'<h3>{_esc(title)}</h3><div class="panels">{figures}</div>')
        if constants:
            parts.append('<p class="muted">The same at every step: '
                         + ", ".join(f"<code>{_esc(k)}</code> = {_fmt(v)}" for k, v in constants) + ".</p>")
    else:
        parts.append('<p class="note">No RL steps in metrics.jsonl.</p>')
    missing = [title for title, spec in TRAINING_CURVES
               if not any(_matches(k, spec) for records in rl_records for r in records for k in r)]
    if missing and any(rl_records):
        whose = "this run" if len(runs) == 1 else "any of these runs"
        parts.append(f'<p class="note">Not logged by {whose}: {_esc(", ".join(missing))}.</p>')
    sft_records = [stage_records(run.metrics, "sft") for run in runs]
    if any(sft_records):
        sft_axis = x_axis
        if x_axis == "time" and _time_axis_ok(runs, "sft"):
            sft_axis = "step"
        groups, constants = plan_panels(sft_records, [("SFT", ["loss", "grad_norm", "lr", "tokens_per_s",
                                                               "step_time"])], SFT_TITLES, {"loss"}, {"loss"})
        xlabel = "SFT step" if sft_axis == "step" else "SFT time"
        figures = "".join(_figure_html(p, runs, "sft", sft_axis, xlabel) for _, panels in groups for p in panels)
        parts.append(f'<h3>Supervised warm start (SFT)</h3><div class="panels">{figures}</div>')
    last = [records[-1] if records else {} for records in rl_records]
    if any(last):
        keys = sorted({k for record in last for k, v in record.items() if _number(v) and k != "step"})
        header = ["metric", *(["value"] if len(runs) == 1 else [run.label for run in runs])]
        rows = [[_esc(k), *[_fmt(record.get(k, "-")) for record in last]] for k in keys]
        parts.append("<details><summary>last RL step, every logged value</summary>" + _table(header, rows)
                     + "</details>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# held-out evaluation


def _pass_keys(record: dict[str, Any], prefix: str) -> list[int]:
    return sorted(int(k[len(prefix):]) for k in record if re.fullmatch(re.escape(prefix) + r"\d+", k))


def _eval_x(run: Run, evals: list[dict[str, Any]], x_axis: str) -> list[float | None]:
    """Each evaluation's x: its RL step, or the RL seconds at that step (0 at the warm start)."""
    if x_axis == "step":
        return [float(e.get("step", 0)) for e in evals]
    records = stage_records(run.metrics, "rl")
    xs = x_values(records, "time") or []
    at = {r["step"]: x for r, x in zip(records, xs)}
    at.setdefault(0, 0.0)
    return [at.get(e.get("step", 0)) for e in evals]


def heldout_figure(runs: list[Run], x_axis: str = "step") -> Any:
    """Greedy accuracy, pass@1 (and, for one run, the largest pass@k) against the RL step or the
    RL seconds, with 95% bands; one colour per run when there are several."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6) if len(runs) == 1 else (8.6, 3.8))
    seconds = x_axis == "time"
    longest = max((x or 0.0 for run in runs for x in _eval_x(run, run.evals, x_axis)), default=0.0)
    scale, unit = time_unit(longest) if seconds else (1.0, "")
    for run in runs:
        evals = run.evals
        xs = _eval_x(run, evals, x_axis)
        keep = [i for i, x in enumerate(xs) if x is not None]
        evals, xs = [evals[i] for i in keep], [xs[i] / scale for i in keep]
        ks = sorted({k for e in evals for k in _pass_keys(e, "pass@")})
        styles = {"greedy_accuracy": "o-", "pass@1": "s--"}
        if len(runs) == 1 and ks and ks[-1] > 1:
            styles[f"pass@{ks[-1]}"] = "^:"
        for key, style in styles.items():
            if not evals or not all(_number(e.get(key)) for e in evals):
                continue
            name = key.replace("_accuracy", "")
            label = name if len(runs) == 1 else f"{run.label}: {name}"
            color = run.color if len(runs) > 1 else None
            line, = ax.plot(xs, [100 * e[key] for e in evals], style, label=label, ms=4, color=color)
            if all(isinstance(e.get(f"{key}_ci95"), list) for e in evals):
                ax.fill_between(xs, [100 * e[f"{key}_ci95"][0] for e in evals],
                                [100 * e[f"{key}_ci95"][1] for e in evals], alpha=0.12, color=line.get_color())
    ax.set_xlabel(f"RL time ({unit}, evaluations excluded; 0 = warm start)" if seconds else "RL step (0 = warm start)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    if len(runs) == 1:
        ax.legend(loc="best", fontsize=8)
    else:  # one entry per run and metric: beside the axes, not over the curves
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _eval_columns(evals: list[dict[str, Any]]) -> list[str]:
    return ["greedy_accuracy", *[f"{prefix}{k}" for prefix in ("pass@", "maj@")
                                 for k in sorted({k for e in evals for k in _pass_keys(e, prefix)})]]


def _pct_ci(e: dict[str, Any], key: str) -> str:
    if not _number(e.get(key)):
        return "-"
    ci = e.get(f"{key}_ci95")
    band = (f' <span class="ci">[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>'
            if isinstance(ci, list) and len(ci) == 2 and all(_number(c) for c in ci) else "")
    return f"{100 * e[key]:.1f}{band}"


def evaluation_section(evals: list[dict[str, Any]], results: dict[str, Any] | None, run: Run | None = None,
                       x_axis: str = "step") -> str:
    parts = []
    if evals:
        columns = _eval_columns(evals)
        header = ["phase", "RL step", *[c.replace("_accuracy", "") + " %" for c in columns], "length (tok)"]
        rows = [[_esc(e.get("phase", "")), _esc(e.get("step", "")), *[_pct_ci(e, c) for c in columns],
                 _fmt(e.get("sampled_length", e.get("greedy_length")))] for e in evals]
        parts.append("<h3>During training (<code>eval.jsonl</code>)</h3>"
                     '<p class="muted">Held-out problems; brackets: bootstrap 95% interval over problems.</p>'
                     + _table(header, rows))
        names = list(dict.fromkeys(name for e in evals for name in e.get("sets", {})))
        if names:  # eval.sets: the other tasks, greedy accuracy per evaluation
            set_rows = [[_esc(e.get("phase", "")), _esc(e.get("step", "")),
                         *[_pct_ci(e["sets"][n], "greedy_accuracy") if n in e.get("sets", {}) else "" for n in names]]
                        for e in evals]
            parts.append("<h3>Other evaluation sets (<code>eval.sets</code>)</h3>"
                         '<p class="muted">Greedy accuracy on each set\'s held-out problems.</p>'
                         + _table(["phase", "RL step", *[_esc(n) + " %" for n in names]], set_rows))
        if len(evals) > 1:
            parts.append(_png(heldout_figure([run or Run(Path("."), "run", evals=evals)], x_axis)))
        ends = [e for e in evals if e.get("phase") in ("warmstart", "final")] or [evals[0], evals[-1]]
        if any("pass@1" in e for e in ends):
            models = [{"label": str(e.get("phase")), "metrics": e} for e in ends]
            parts.append(_png(passk_figure(models)))
    else:
        parts.append('<p class="note">No evaluations in eval.jsonl.</p>')
    parts.append(_results_html(results))
    return "\n".join(parts)


def _results_html(results: dict[str, Any] | None, hint: bool = True) -> str:
    if not results or not isinstance(results.get("models"), list):
        return ('<p class="muted">No <code>eval/results.json</code>: run <code>rlvr eval RUN_DIR/checkpoints/'
                'sft-final RUN_DIR --n 64</code> to add a large-n comparison here.</p>' if hint else "")
    models = results["models"]
    parts = [f"<h3><code>rlvr eval</code>: {len(models)} model(s), {results.get('problems')} problems, "
             f"n = {results.get('samples')} samples each</h3>", _markdown_tables(format_tables(results))]
    if any("pass@1" in m["metrics"] for m in models):
        parts.append(_png(passk_figure(models)))
    if all("scaling" in m["metrics"] for m in models):
        parts.append(_png(scaling_figure(models)))
    return "\n".join(parts)


def _final_eval(run: Run) -> dict[str, Any] | None:
    finals = [e for e in run.evals if e.get("phase") == "final"]
    return finals[-1] if finals else (run.evals[-1] if run.evals else None)


def compare_evaluation_section(runs: list[Run], x_axis: str = "step") -> str:
    """Final (and warm-start) held-out numbers of every run side by side, the held-out curves
    overlaid, the final pass@k curves of all runs, and each run's ``rlvr eval`` results."""
    parts = []
    for title, pick in (("Final evaluation", _final_eval),
                        ("Warm start (before RL)",
                         lambda run: next((e for e in run.evals if e.get("phase") == "warmstart"), None))):
        chosen = [pick(run) for run in runs]
        if not any(chosen):
            continue
        present = [e for e in chosen if e]
        columns = _eval_columns(present)
        rows = [["RL step", *[_esc(e.get("step", "-")) if e else "-" for e in chosen]],
                ["problems", *[_esc(e.get("problems", "-")) if e else "-" for e in chosen]]]
        rows += [[_esc(c.replace("_accuracy", "") + " %"), *[_pct_ci(e, c) if e else "-" for e in chosen]]
                 for c in columns]
        rows.append(["sampled length (tok)", *[_fmt(e.get("sampled_length", e.get("greedy_length"))) if e else "-"
                                               for e in chosen]])
        parts.append(f"<h3>{_esc(title)}</h3>" + _table(["held-out", *[run.label for run in runs]], rows))
    if not parts:
        return '<p class="note">No evaluations in any eval.jsonl.</p>'
    parts.insert(1, '<p class="muted">Brackets: bootstrap 95% interval over problems. Runs evaluated on '
                    "different problem sets or numbers of samples are not directly comparable.</p>")
    with_evals = [run for run in runs if len(run.evals) > 1]
    if with_evals:
        parts.append("<h3>During training</h3>" + _png(heldout_figure(with_evals, x_axis)))
    finals = [(run, _final_eval(run)) for run in runs]
    models = [{"label": run.label, "metrics": e} for run, e in finals if e and "pass@1" in e]
    if models:
        parts.append(_png(passk_figure(models)))
    for run in runs:
        if run.results and isinstance(run.results.get("models"), list):
            parts.append(f"<details><summary>{_esc(run.label)}: <code>rlvr eval</code> results</summary>"
                         f"{_results_html(run.results)}</details>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# sampled GRPO groups


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in prompt)
    return str(prompt)


def groups_by_step(samples: list[dict[str, Any]]) -> dict[Any, dict[Any, list[dict[str, Any]]]]:
    """RL samples as {step: {group: [samples in logged order]}}. A group is (step, ``group``);
    records without ``group`` (older runs) group by problem id."""
    out: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
    for sample in samples:
        if sample.get("stage", "rl") != "rl":
            continue
        step = sample.get("step", 0)
        if not _number(step):
            continue
        key = sample.get("group", sample.get("problem_id"))
        out.setdefault(step, {}).setdefault(key, []).append(sample)
    return out


def _spread(members: list[dict[str, Any]]) -> float:
    rewards = [s["reward"] for s in members if _number(s.get("reward"))]
    return statistics.pstdev(rewards) if len(rewards) > 1 else 0.0


def choose_group(groups: dict[Any, list[dict[str, Any]]]) -> Any:
    """The group shown for a step: the one with the widest reward spread (the most learning
    signal), the first logged on a tie."""
    keys = list(groups)
    return max(keys, key=lambda k: (_spread(groups[k]), -keys.index(k)))


def pick_steps(steps: list[Any], per_phase: int) -> list[tuple[str, list[Any]]]:
    """Up to ``per_phase`` steps from each third of training (early, middle, late), evenly
    spaced, the first and last logged steps always among them; [(phase, steps)]."""
    steps = sorted(steps)
    n = len(steps)
    early_end = max(1, n // 3) if n else 0
    middle_end = max(early_end, 2 * n // 3)
    windows = [("early", steps[:early_end]), ("middle", steps[early_end:middle_end]), ("late", steps[middle_end:])]
    out = []
    for name, window in windows:
        if not window or per_phase <= 0:
            continue
        count = min(per_phase, len(window))
        if count == 1:
            index = {"early": 0, "middle": len(window) // 2, "late": len(window) - 1}[name]
            chosen = [window[index]]
        else:
            chosen = [window[round(i * (len(window) - 1) / (count - 1))] for i in range(count)]
        out.append((name, list(dict.fromkeys(chosen))))
    return out


def _preview(text: str, limit: int = 110) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def _completion_cell(sample: dict[str, Any]) -> str:
    segments = sample.get("segments") or []
    text = sample.get("completion", "")
    if segments:
        body = ('<div class="muted">episode: policy turns grey, tool / environment output blue</div>'
                + "".join(f'<pre class="seg-{_esc(s.get("role", "policy"))}">{_esc(s.get("text", ""))}</pre>'
                          for s in segments))
        preview = " ".join(str(s.get("text", "")) for s in segments)
    else:
        body = f"<pre>{_esc(text)}</pre>"
        preview = text
    extra = []
    for key in ("turns", "tool_calls", "tool_errors", "violation", "error"):
        if sample.get(key) not in (None, 0, ""):
            extra.append(f"{key.replace('_', ' ')}: {_esc(sample[key])}")
    components = sample.get("reward_components") or {}
    if isinstance(components, dict) and components:
        extra.append("reward components: " + ", ".join(f"{_esc(k)} = {_fmt(v)}" for k, v in components.items()))
    facts = f'<div class="muted">{"; ".join(extra)}</div>' if extra else ""
    return (f'<td class="completion"><details><summary><span class="preview">{_esc(_preview(preview)) or "(empty)"}'
            '</span><span class="hide">hide</span></summary>'
            f"{body}{facts}</details></td>")


def _answer_cell(extracted: Any) -> str:
    """The extracted answer, cut to 40 characters (the whole one in the tooltip), wrapping."""
    if extracted is None:
        return "-"
    text = str(extracted)
    return f'<td class="ans" title="{_esc(text)}">{_esc(_preview(text, 40))}</td>'


def group_table(members: list[dict[str, Any]], step: Any = None, group: Any = None) -> str:
    """The samples of one group, one row each: reward, advantage, correct, extracted answer,
    length, finish reason, per-component rewards (with several components) and the completion
    (click to expand)."""
    components = list(dict.fromkeys(k for s in members for k in (s.get("reward_components") or {})
                                    if isinstance(s.get("reward_components"), dict)))
    components = components if len(components) > 1 else []
    tools = any(s.get("tool_calls") for s in members)
    header = ["#", "reward", "advantage", "correct", "extracted", "tokens", "finish", *components,
              *(["tool calls"] if tools else []), "completion (click to expand)"]
    rows = []
    for index, s in enumerate(members):
        adv = s.get("advantage")
        if _number(adv):
            cls = "pos" if adv > 0 else "neg" if adv < 0 else ""
            adv_cell = f'<td class="adv {cls}">{adv:+.3f}</td>' if adv else '<td class="adv">0</td>'
        else:
            adv_cell = '<td class="adv">-</td>'
        ok = s.get("correct")
        mark = ('<span class="ok">&#10003;</span>' if ok else '<span class="bad">&#10007;</span>' if ok is not None
                else "-")
        reward = s.get("reward")
        rows.append([f'<td data-sample="{index}">{index + 1}</td>',
                     f'<td class="reward">{reward:.3g}</td>' if _number(reward) else "<td>-</td>",
                     adv_cell, mark, _answer_cell(s.get("extracted")),
                     _esc(s.get("response_tokens", "-")),
                     _esc(s.get("finish_reason", "-")),
                     *[_fmt((s.get("reward_components") or {}).get(c, "-")) for c in components],
                     *([_esc(s.get("tool_calls", 0))] if tools else []), _completion_cell(s)])
    table = _table(header, rows, cls="samples")
    return table.replace('<table class="samples">',
                         f'<table class="samples" data-step="{_esc(step)}" data-group="{_esc(group)}">', 1)


def _group_block(step: Any, groups: dict[Any, list[dict[str, Any]]], expected: int | None,
                 record: dict[str, Any] | None) -> str:
    key = choose_group(groups)
    members = groups[key]
    first = members[0]
    rewards = [s["reward"] for s in members if _number(s.get("reward"))]
    correct = sum(bool(s.get("correct")) for s in members)
    facts = [f"{len(members)} samples", f"{correct}/{len(members)} correct"]
    if rewards:
        facts.append(f"mean reward {statistics.fmean(rewards):.3g}")
    if len(groups) > 1:
        facts.append(f"1 of {len(groups)} groups logged at this step (the widest reward spread)")
    if record:
        batch = [f"reward {record['reward_mean']:.3g}" if _number(record.get("reward_mean")) else "",
                 f"accuracy {100 * record['accuracy']:.0f}%" if _number(record.get("accuracy")) else ""]
        if any(batch):
            facts.append("whole batch: " + ", ".join(b for b in batch if b))
    notes = []
    if expected and len(members) < expected:
        notes.append(f"partial group: {len(members)} of {expected} samples logged (runs before whole-group "
                     "logging wrote a strided subset of the batch)")
    if not any("advantage" in s for s in members):
        notes.append("no advantages logged (older run)")
    note = "".join(f'<p class="note">{_esc(n)}</p>' for n in notes)
    group_name = f" &middot; group {_esc(key)}" if "group" in first else ""
    return (f'<div class="group"><h4>Step {_esc(step)} &middot; problem {_esc(first.get("problem_id", "?"))}'
            f"{group_name}</h4>"
            f'<p class="muted">{_esc("; ".join(facts))}</p>{note}'
            + (f"<b>prompt</b><pre>{_esc(_prompt_text(first['prompt']))}</pre>" if first.get("prompt") is not None
               else "")
            + f"<p>reference answer: <code>{_esc(first.get('answer'))}</code></p>"
            + f"{group_table(members, step, key)}</div>")


def transcripts_section(samples: list[dict[str, Any]], per_phase: int, expected_group_size: int | None = None,
                        rl_records: list[dict[str, Any]] | None = None, id_prefix: str = "transcripts") -> str:
    """One whole GRPO group for each of up to ``per_phase`` logged steps of early, middle and
    late training: the prompt once, then its samples with reward and advantage."""
    by_step = groups_by_step(samples)
    if not by_step:
        return '<p class="note">No RL samples in samples.jsonl.</p>'
    records = {r.get("step"): r for r in rl_records or []}
    picked = pick_steps(list(by_step), per_phase)
    shown = sum(len(steps) for _, steps in picked)
    parts = [f'<p class="muted">Completions logged during RL (<code>samples.jsonl</code>): for {shown} of the '
             f"{len(by_step)} logged steps, one prompt's whole group of samples with the verifier's verdict, the "
             "reward and the advantage the learner trained each sample with (positive: pushed up, green; negative: "
             "pushed down, red). Click a completion to read it whole.</p>"]
    for name, steps in picked:
        window = sorted(s for s in by_step if steps[0] <= s <= steps[-1]) or steps
        logged = [s for step in window for g in by_step[step].values() for s in g]
        correct = sum(bool(s.get("correct")) for s in logged) / max(1, len(logged))
        span = f"step {_esc(steps[0])}" if len(window) == 1 else f"steps {_esc(window[0])}-{_esc(window[-1])}"
        parts.append(f'<h3 id="{id_prefix}-{name}">{name.capitalize()} training ({span}, {100 * correct:.0f}% of '
                     "the samples logged there correct)</h3>")
        parts += [_group_block(step, by_step[step], expected_group_size, records.get(step)) for step in steps]
    return "\n".join(parts)


def _group_size(run: Run) -> int | None:
    size = run.config.get("rl.samples_per_prompt")
    return size if isinstance(size, int) and size > 0 else None


# ---------------------------------------------------------------------------------------------
# summary and configuration


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


def compare_summary_section(runs: list[Run]) -> str:
    """Every run's headline numbers in one table, one column per run."""
    header = ["", *[run.label for run in runs]]
    rows = [["run directory", *[f'<td class="text"><code>{_esc(run.path.resolve())}</code></td>' for run in runs]],
            ["completed stages", *[_esc(", ".join(run.state.get("completed_stages", [])) or "none") for run in runs]]]
    keys = list(dict.fromkeys(k for run in runs for k in run.summary
                              if not k.endswith("_ci95") and k not in ("run_dir", "final_checkpoint")))
    for key in keys:
        pct = re.fullmatch(r"(warmstart|final)_(accuracy|pass@\d+|maj@\d+)", key) is not None
        rows.append([_esc(key + (" %" if pct else "")),
                     *[_pct_cell(run.summary.get(key)) if pct else _fmt(run.summary.get(key, "-")) for run in runs]])
    return _table(header, rows)


def _pct_cell(value: Any) -> str:
    return "-" if not _number(value) else f"{100 * value:.1f}"


def _value_text(value: Any) -> str:
    """A config value as YAML writes it: true, null, [a, b] (JSON-style for lists and mappings)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


MISSING = object()


def config_differences(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The flattened keys whose values are not the same in every config: [(key, [value or MISSING])]."""
    keys = list(dict.fromkeys(k for config in configs for k in config))
    out = []
    for key in keys:
        values = [config.get(key, MISSING) for config in configs]
        if len({json.dumps(v, sort_keys=True, default=str) if v is not MISSING else "\0missing" for v in values}) > 1:
            out.append((key, values))
    return out


def _default_config() -> dict[str, Any] | None:
    try:
        from rlvr.config import RunConfig

        return flatten(json.loads(json.dumps(dataclasses.asdict(RunConfig()), default=str)))
    except Exception:  # the report must not fail over a nicety
        return None


def _diff_table(header: list[str], diffs: list[tuple[str, list[Any]]]) -> str:
    rows = [[f"<code>{_esc(k)}</code>",
             *[f'<td class="text">{"<span class=muted>(absent)</span>" if v is MISSING else _esc(_value_text(v))}</td>'
               for v in values]] for k, values in diffs]
    return _table(header, rows)


def config_section(run: Run) -> str:
    parts = []
    defaults = _default_config()
    if defaults is not None and run.config:
        diffs = [(k, [values[1], values[0]]) for k, values in config_differences([defaults, run.config])
                 if values[1] is not MISSING and k not in ("output_dir", "run_name")]
        if diffs:
            parts.append("<p>Where this run differs from the built-in default recipe:</p>"
                         + _diff_table(["key", "this run", "default"], diffs))
    parts.append("<details><summary>config.yaml (resolved, with every field's help)</summary>"
                 f"<pre>{_esc(run.config_text)}</pre></details>")
    return "\n".join(parts)


def compare_config_section(runs: list[Run]) -> str:
    diffs = [(k, v) for k, v in config_differences([run.config for run in runs]) if k not in ("output_dir",)]
    if diffs:
        parts = [f"<p>The {len(diffs)} resolved config keys that are not the same in every run "
                 "(every other key is):</p>", _diff_table(["key", *[run.label for run in runs]], diffs)]
    else:
        parts = ["<p>The runs' resolved configurations are identical.</p>"]
    parts += [f"<details><summary>{_esc(run.label)}: config.yaml</summary><pre>{_esc(run.config_text)}</pre></details>"
              for run in runs]
    return "\n".join(parts)


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


# ---------------------------------------------------------------------------------------------
# the page


def _page(title: str, bodies: dict[str, str], sections: list[tuple[str, str]]) -> str:
    nav = " ".join(f'<a href="#{key}">{_esc(name)}</a>' for key, name in sections)
    body = "\n".join(f'<section id="{key}"><h2>{_esc(name)}</h2>\n{bodies[key]}\n</section>' for key, name in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<header><h1>{_esc(title)}</h1>"
            f'<p class="muted">generated {time.strftime("%Y-%m-%d %H:%M:%S")} by <code>rlvr report</code></p>'
            f"<nav>{nav}</nav></header>\n{body}\n</body></html>\n")


def build_report(run_dir: Path, transcripts_per_phase: int = 3, x_axis: str = "step") -> str:
    """The report of one run directory as one HTML string."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, not {x_axis!r}")
    run = load_run(Path(run_dir))
    bodies = {
        "summary": summary_section(run.path, run.summary, run.state),
        "config": config_section(run),
        "training": training_section([run], x_axis),
        "evaluation": evaluation_section(run.evals, run.results, run, x_axis),
        "transcripts": transcripts_section(run.samples, transcripts_per_phase, _group_size(run),
                                           stage_records(run.metrics, "rl")),
    }
    return _page(f"rlvr run report: {run.label}", bodies, SECTIONS)


def build_comparison(run_dirs: list[Path], transcripts_per_phase: int = 3, x_axis: str = "step") -> str:
    """Several runs overlaid as one HTML string: curves on shared axes (one colour per run),
    summaries, evaluations and configuration differences side by side, each run's groups."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis must be one of {X_AXES}, not {x_axis!r}")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    for index, run in enumerate(runs):
        run.color = RUN_COLORS[index % len(RUN_COLORS)]
    groups = []
    for index, run in enumerate(runs):
        body = transcripts_section(run.samples, transcripts_per_phase, _group_size(run),
                                   stage_records(run.metrics, "rl"), id_prefix=f"transcripts-{index + 1}")
        groups.append(f'<details class="run-groups"><summary><span class="swatch" style="background:{run.color}">'
                      f"</span><b>{_esc(run.label)}</b></summary>{body}</details>")
    bodies = {
        "summary": compare_summary_section(runs),
        "config": compare_config_section(runs),
        "training": training_section(runs, x_axis),
        "evaluation": compare_evaluation_section(runs, x_axis),
        "transcripts": '<p class="muted">Each run\'s logged groups; click a run to open them.</p>' + "\n".join(groups),
    }
    sections = [(key, "Configuration differences" if key == "config" else name) for key, name in SECTIONS]
    return _page(f"rlvr comparison: {', '.join(run.label for run in runs)}", bodies, sections)


def write_report(run_dirs: Path | str | list[Path | str], output: Path | None = None, transcripts_per_phase: int = 3,
                 x_axis: str = "step") -> Path:
    """Write the report and return its path: one run directory (default ``RUN_DIR/report.html``)
    or several overlaid (default ``./rlvr-report.html``)."""
    paths = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("write_report needs at least one run directory")
    if len(paths) == 1:
        page = build_report(paths[0], transcripts_per_phase, x_axis)
        output = Path(output) if output else paths[0] / "report.html"
    else:
        page = build_comparison(paths, transcripts_per_phase, x_axis)
        output = Path(output) if output else Path.cwd() / "rlvr-report.html"
    output.write_text(page)
    return output
