"""`rlvr report`: a self-contained HTML file with the expected sections, escaped transcripts,
and a page that headless Chromium renders."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from rlvr.cli import main
from rlvr.config import RunConfig, save_config
from rlvr.eval.report import build_comparison, build_report, write_report

SECTION_IDS = ["summary", "config", "training", "evaluation", "transcripts"]
HOSTILE = "<script>alert('pwned')</script>"


class Outline(HTMLParser):
    """Collects ids, image sources, script tags and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def _eval_record(phase, step, greedy, passes):
    record = {"stage": "eval", "phase": phase, "step": step, "greedy_accuracy": greedy,
              "greedy_accuracy_ci95": [greedy - 0.05, greedy + 0.05], "samples": 4, "sampled_length": 20.0}
    for k, value in passes.items():
        record[f"pass@{k}"] = value
        record[f"pass@{k}_ci95"] = [value - 0.05, min(1.0, value + 0.05)]
    return record


def make_run(run, seed=0, gain=0.1, final=0.9):
    """A small finished run directory written by hand: 3 SFT steps, 6 RL steps, two evaluations,
    one logged sample per RL step (the last a tool-use episode)."""
    (run / "plots").mkdir(parents=True)
    save_config(RunConfig(seed=seed), run / "config.yaml")
    (run / "state.json").write_text(json.dumps({"completed_stages": ["sft", "rl"], "evals": {}}))
    (run / "summary.json").write_text(json.dumps({"warmstart_accuracy": 0.35, "final_accuracy": final}))
    metrics = [{"stage": "sft", "step": s, "loss": 2.0 / s, "step_time": 0.5} for s in range(1, 4)]
    metrics += [{"stage": "rl", "step": s, "reward_mean": gain * s, "reward/correctness": gain * s,
                 "accuracy": gain * s, "response_length": 30 - s, "entropy": 0.5 + 0.01 * s, "kl": 0.01 * s,
                 "clip_frac": 0.02 * s, "zero_variance_groups": 0.5 / s, "tokens_per_s": 900.0 + s,
                 "step_time": 2.0, "rl_seconds_total": 2.0 * s} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    evals = [_eval_record("warmstart", 0, 0.35, {1: 0.4, 2: 0.55, 4: 0.7}),
             _eval_record("final", 6, final, {1: 0.8, 2: 0.85, 4: 0.88})]
    (run / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    samples = []
    for step in range(1, 7):
        samples.append({"stage": "rl", "step": step, "problem_id": f"{step}+1", "prompt": f"{step}+1",
                        "completion": f"{HOSTILE} => {step + 1}", "answer": str(step + 1), "extracted": str(step + 1),
                        "correct": True, "reward": 1.0, "reward_components": {"correctness": 1.0},
                        "finish_reason": "eos", "response_tokens": 9, "error": None})
    samples[-1].update(tool_calls=1, turns=2, segments=[{"role": "policy", "text": "<code>print(7)</code>"},
                                                        {"role": "observation", "text": "<output>7</output>"}])
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "run")


def test_report_has_every_section_and_escapes_transcripts(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (run_dir / "report.html").read_text()
    outline = Outline()
    outline.feed(page)
    for section in SECTION_IDS:
        assert section in outline.ids, section
    assert {"transcripts-early", "transcripts-middle", "transcripts-late"} <= set(outline.ids)
    assert outline.scripts == 0  # the transcript's <script> is text, not markup
    assert HOSTILE not in page and "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert HOSTILE in "".join(outline.text)  # ...and reads as written
    assert "&lt;output&gt;7&lt;/output&gt;" in page and "seg-observation" in page  # tool output shown
    # self-contained: every image is an embedded PNG (training curves, SFT loss, pass@k curve)
    assert len(outline.images) >= 3 and all(src.startswith("data:image/png;base64,") for src in outline.images)
    assert "http://" not in page and "https://" not in page
    text = "".join(outline.text)
    assert "Not logged by this run: tool calls per sample." in text  # absent curves are named
    assert "samples_per_step" in text  # the config
    assert "warmstart" in text and "88.0" in text  # the evaluation table (final pass@4 = 88.0%)


def test_report_includes_rlvr_eval_results(run_dir):
    models = [{"label": label, "model": label, "per_problem": [],
               "metrics": {"greedy_accuracy": acc, "mean@n": acc, "samples": 2, "pass@1": acc, "pass@2": acc + 0.1,
                           "maj@1": acc, "maj@2": acc}} for label, acc in (("sft-final", 0.3), ("final", 0.8))]
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(json.dumps(
        {"problems": 10, "samples": 2, "ks": [1, 2], "models": models, "deltas": {}}))
    main(["report", str(run_dir), "--output", str(run_dir / "r.html")])
    page = (run_dir / "r.html").read_text()
    assert "<code>rlvr eval</code>: 2 model(s), 10 problems, n = 2 samples each" in page
    assert "<td>sft-final</td>" in page and "<h4>pass@k % (unbiased) [95% CI]</h4>" in page
    assert page.count("data:image/png;base64,") >= 4


@pytest.mark.parametrize("command", [["report"], ["limr", "--output", "ids.json"]])
def test_reading_commands_on_something_that_is_not_a_run_are_one_line(tmp_path, capsys, command):
    # (`rlvr report` used to end in a FileNotFoundError traceback)
    for target in (tmp_path / "missing", tmp_path):
        assert main([command[0], str(target), *command[1:]]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("config error: ") and "not an rlvr run directory" in err[0], err


def test_report_of_a_run_with_damaged_json_files_still_renders(run_dir, capsys):
    (run_dir / "state.json").write_text('{"completed_st')
    (run_dir / "summary.json").write_text("")
    assert main(["report", str(run_dir)]) == 0
    outline = Outline()
    outline.feed((run_dir / "report.html").read_text())
    text = "".join(outline.text)
    assert "warmstart" in text and "88.0" in text  # the evaluation table still comes from eval.jsonl


def test_limr_of_a_damaged_pass_rates_file_is_one_line(run_dir, capsys):
    with open(run_dir / "pass_rates.jsonl", "a") as fh:
        fh.write('not json\n{"stage": "rl", "step": 9, "rates": {}}\n')
    assert main(["limr", str(run_dir), "--output", str(run_dir / "ids.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pass_rates.jsonl: damaged" in err[0] and "not a JSON record" in err[0], err


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless rendering needs Chromium on PATH "
                                             "(Debian: apt-get install chromium); the HTML itself is tested above")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    main(["report", str(run_dir)])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (run_dir / "report.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    outline = Outline()
    outline.feed(dom.stdout)
    for section in SECTION_IDS:
        assert section in outline.ids, section
    assert outline.scripts == 0
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,900", url],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000  # a rendered page, not a blank one


# ---------------------------------------------------------------------------------------------
# curves: smoothing, one panel per metric, wall-clock axis


def test_ema_against_hand_computed_values():
    from rlvr.eval.plots import ema, smoothing_weight

    # debiased: s0 = v0; s1 = (0.5*0.5*1 + 0.5*0) / (0.25 + 0.5) = 1/3; s2 = 0.125 / 0.875 = 1/7
    assert ema([1.0, 0.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3, 1 / 7])
    assert ema([3.0, 1.0, 4.0], 0.0) == [3.0, 1.0, 4.0]  # weight 0: the raw values
    smoothed = ema([2.0, None, float("nan"), 4.0], 0.5)  # gaps leave the average as it was
    assert smoothed[0] == 2.0 and math.isnan(smoothed[1]) and math.isnan(smoothed[2])
    assert smoothed[3] == pytest.approx((0.25 * 2.0 + 0.5 * 4.0) / 0.75)
    assert ema([5.0] * 50, 0.9) == pytest.approx([5.0] * 50)  # no pull towards 0 at the start
    assert [smoothing_weight(n) for n in (3, 5, 10, 100, 1000, 10**6)] == pytest.approx([0, 0.6, 0.6, 0.75, 0.9, 0.9])


def _figures(page):
    """data-metric of every panel, in page order, and each panel's caption text."""
    return (re.findall(r'<figure class="panel" data-metric="([^"]+)"', page),
            dict(re.findall(r'data-metric="([^"]+)"><figcaption>(.*?)</figcaption>', page)))


def test_one_panel_per_reward_component_and_no_duplicate_curves(tmp_path):
    run = make_run(tmp_path / "run")
    metrics = [{"stage": "rl", "step": s, "reward_mean": 0.5 * (0.1 * s) + 0.5 * (1 - 0.05 * s),
                "reward/correctness": 0.1 * s, "reward/format": 1 - 0.05 * s, "accuracy": 0.1 * s,
                "accuracy/addition": 0.1 * s, "reward_std": 0.3, "kl_coef": 0.0, "entropy": 1.0 / s}
               for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    page = build_report(run)
    rl = page[page.index('id="training"'):page.index('id="evaluation"')]
    panels, captions = _figures(rl)
    assert len(panels) == len(set(panels))  # no metric drawn twice
    # each component its own panel; accuracy = reward/correctness = accuracy/addition: one curve
    assert [p for p in panels if p == "reward_mean" or p.startswith(("reward/", "accuracy"))] == [
        "reward_mean", "reward/correctness", "reward/format"]
    assert "<code>accuracy</code>" in captions["reward/correctness"]
    assert "<code>accuracy/addition</code>" in captions["reward/correctness"]
    # metrics with one value throughout are listed, not drawn
    assert "kl_coef" not in panels and "<code>kl_coef</code> = 0" in rl and "entropy" in panels
    assert "reward_std" not in panels and "<code>reward_std</code> = 0.3" in rl


def test_the_same_curve_in_only_one_run_is_not_folded():
    from rlvr.eval.report import PANEL_GROUPS, TITLES, plan_panels

    a = [{"stage": "rl", "step": s, "reward_mean": 0.1 * s, "accuracy": 0.1 * s} for s in range(1, 5)]
    b = [{"stage": "rl", "step": s, "reward_mean": 0.1 * s, "accuracy": 0.2 * s} for s in range(1, 5)]
    groups, _ = plan_panels([a], PANEL_GROUPS, TITLES)
    assert [(p.key, p.aliases) for _, panels in groups for p in panels] == [("reward_mean", ["accuracy"])]
    groups, _ = plan_panels([a, b], PANEL_GROUPS, TITLES)
    assert [(p.key, p.aliases) for _, panels in groups for p in panels] == [("reward_mean", []), ("accuracy", [])]
    # flat curves at the same value: one quantity within the reward family, a coincidence across families
    flat = [{"stage": "rl", "step": s, "reward_mean": 0.0, "reward/correctness": 0.0, "clip_frac": 0.0}
            for s in range(1, 5)]
    groups, constants = plan_panels([flat], PANEL_GROUPS, TITLES, {"reward_mean", "reward/correctness", "clip_frac"})
    assert [(p.key, p.aliases) for _, panels in groups for p in panels] == [
        ("reward_mean", ["reward/correctness"]), ("clip_frac", [])]
    assert constants == []


def test_wall_clock_axis_uses_the_logged_seconds(run_dir, monkeypatch):
    from rlvr.eval import report

    records = report.stage_records(report._read_jsonl(run_dir / "metrics.jsonl"), "rl")
    assert report.metric_series(records, "reward_mean", "time") == (
        [2.0, 4.0, 6.0, 8.0, 10.0, 12.0], pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    assert report.metric_series(records, "reward_mean", "step")[0] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # rl_seconds_total wins over step_time; without it, the running sum of step_time
    older = [{"stage": "rl", "step": s, "step_time": t, "reward_mean": 0.0} for s, t in ((1, 1.5), (2, 0.5), (3, 2.0))]
    assert report.x_values(older, "time") == [1.5, 2.0, 4.0]
    assert report.x_values([{"step": 1, "reward_mean": 0.0}], "time") is None
    with pytest.raises(ValueError):
        report.x_values(records, "epoch")

    drawn = []
    original = report.curve_panel

    def spy(series, xlabel, **kwargs):
        drawn.append((xlabel, kwargs.get("seconds"), [(s["label"], list(s["xs"])) for s in series]))
        return original(series, xlabel, **kwargs)

    monkeypatch.setattr(report, "curve_panel", spy)
    assert main(["report", str(run_dir), "--x-axis", "time"]) == 0
    rl = [d for d in drawn if d[0].startswith("RL")]
    assert rl and all(d[1] is True and d[2][0][1] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0] for d in rl)
    sft = [d for d in drawn if d[0].startswith("SFT")]
    assert sft and all(d[2][0][1] == [0.5, 1.0, 1.5] for d in sft)  # SFT: running sum of step_time
    assert "RL wall-clock time" in (run_dir / "report.html").read_text()


def test_time_axis_falls_back_to_steps_when_a_run_logged_no_time(run_dir):
    metrics = [{"stage": "rl", "step": s, "reward_mean": 0.1 * s} for s in range(1, 4)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    page = build_report(run_dir, x_axis="time")
    assert "No wall-clock time (rl_seconds_total, step_time) in the RL records of run" in page


# ---------------------------------------------------------------------------------------------
# whole GRPO groups


class SampleTables(HTMLParser):
    """Every <table class="samples">: its data-step / data-group and the text of its rows' cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.cell: list[str] | None = None
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("class") == "samples":
            self.tables.append({"step": attrs["data-step"], "group": attrs["data-group"], "rows": []})
            self.depth = 1
        elif self.depth and tag == "table":
            self.depth += 1
        elif self.depth == 1 and tag == "tr":
            self.tables[-1]["rows"].append([])
        elif self.depth == 1 and tag == "td":
            self.cell = []

    def handle_endtag(self, tag):
        if self.depth and tag == "table":
            self.depth -= 1
        elif self.depth == 1 and tag == "td" and self.cell is not None:
            self.tables[-1]["rows"][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _sample(step, group, reward, advantage=None, problem="7+5", text="12", **extra):
    record = {"stage": "rl", "step": step, "group": group, "problem_id": f"{problem}@{group}",
              "prompt": [{"role": "user", "content": f"PROMPT-{step}-{group}"}], "completion": text,
              "answer": "12", "extracted": text, "correct": reward == 1.0, "reward": reward,
              "reward_components": {"correctness": reward}, "finish_reason": "eos", "response_tokens": len(text)}
    if advantage is not None:
        record["advantage"] = advantage
    return {**record, **extra}


def test_group_table_lists_exactly_the_groups_samples_with_their_advantages(run_dir):
    rewards = [1.0, 0.0, 0.0, 1.0]
    samples = []
    for step in range(1, 4):
        samples += [_sample(step, 0, 0.0, 0.0, text=f"s{step}g0#{i}") for i in range(4)]  # no signal
        samples += [_sample(step, 1, r, a, text=f"s{step}g1#{i}", finish_reason="length" if i == 1 else "eos")
                    for i, (r, a) in enumerate(zip(rewards, [0.866, -0.866, -0.866, 0.866]))]
    samples.append({"stage": "sft", "step": 1, "completion": "not an RL sample"})
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    page = build_report(run_dir)
    parser = SampleTables()
    parser.feed(page)
    assert [(t["step"], t["group"]) for t in parser.tables] == [("1", "1"), ("2", "1"), ("3", "1")]  # widest spread
    for table in parser.tables:
        rows = table["rows"][1:] if not table["rows"][0] else table["rows"]
        assert [row[0] for row in rows] == ["1", "2", "3", "4"]
        assert [row[1] for row in rows] == ["1", "0", "0", "1"]  # reward
        assert [row[2] for row in rows] == ["+0.866", "-0.866", "-0.866", "+0.866"]  # advantage
        assert [row[3] for row in rows] == ["\u2713", "\u2717", "\u2717", "\u2713"]
        assert [row[6] for row in rows] == ["eos", "length", "eos", "eos"]
        for i, row in enumerate(rows):  # the completion: its preview, then (expanded) the whole text
            assert row[-1].startswith(f"s{table['step']}g1#{i}hide") and f"s{table['step']}g1#{i}" in row[-1][10:]
    for step in range(1, 4):  # the prompt once per group, the other group's not at all
        assert page.count(f"PROMPT-{step}-1") == 1 and f"PROMPT-{step}-0" not in page
    assert "1 of 2 groups logged at this step" in page
    assert "not an RL sample" not in page


def test_old_runs_without_advantages_or_whole_groups_still_render(run_dir):
    # before whole-group logging: 2 of a group's 8 samples, no advantage; and records without "group"
    samples = [_sample(1, 3, 1.0, text="a"), _sample(1, 3, 0.0, text="b")]
    samples += [{k: v for k, v in _sample(2, 0, 1.0, text="c").items() if k != "group"}]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    parser = SampleTables()
    parser.feed(page)
    rows = [row for row in parser.tables[0]["rows"] if row]
    assert [row[2] for row in rows] == ["-", "-"]  # no advantage logged
    assert "partial group: 2 of 8 samples logged" in page and "no advantages logged (older run)" in page
    assert len(parser.tables) == 2 and [row[0] for row in parser.tables[1]["rows"] if row] == ["1"]


def test_steps_shown_spread_over_training_with_first_and_last():
    from rlvr.eval.report import pick_steps

    picked = pick_steps(list(range(1, 101)), 3)
    assert [name for name, _ in picked] == ["early", "middle", "late"]
    steps = [s for _, window in picked for s in window]
    assert steps[0] == 1 and steps[-1] == 100 and len(steps) == 9 and steps == sorted(steps)
    assert pick_steps([4, 8], 3) == [("early", [4]), ("late", [8])]
    assert [s for _, w in pick_steps(list(range(1, 7)), 3) for s in w] == [1, 2, 3, 4, 5, 6]
    assert pick_steps(list(range(1, 10)), 1) == [("early", [1]), ("middle", [5]), ("late", [9])]


# ---------------------------------------------------------------------------------------------
# several runs overlaid


def test_overlay_of_two_runs(tmp_path, monkeypatch, capsys):
    from rlvr.eval import report

    a = make_run(tmp_path / "a" / "run", seed=0, gain=0.1, final=0.9)
    b = make_run(tmp_path / "b" / "run", seed=1, gain=0.05, final=0.7)  # same directory name: parents added
    drawn = {}
    original = report.curve_panel

    def spy(series, xlabel, **kwargs):
        drawn.setdefault(xlabel, []).append({s["label"]: (s["color"], list(s["ys"])) for s in series})
        return original(series, xlabel, **kwargs)

    monkeypatch.setattr(report, "curve_panel", spy)
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(a), str(b)]) == 0
    out = tmp_path / "rlvr-report.html"
    assert f"report: {out}" in capsys.readouterr().out
    page = out.read_text()
    assert not (a / "report.html").exists()
    # every RL panel holds both runs' curves, one colour each
    assert drawn["RL step"] and all(set(panel) == {"a/run", "b/run"} for panel in drawn["RL step"])
    reward = next(p for p in drawn["RL step"] if p["a/run"][1][:2] == pytest.approx([0.1, 0.2]))
    assert reward["b/run"][1] == pytest.approx([0.05 * s for s in range(1, 7)])
    assert reward["a/run"][0] != reward["b/run"][0]
    outline = Outline()
    outline.feed(page)
    text = "".join(outline.text)
    assert "rlvr comparison: a/run, b/run" in text and 'class="legend"' in page
    for section in SECTION_IDS:
        assert section in outline.ids
    # final evaluations side by side: greedy 90.0 for a, 70.0 for b, in one row
    final = page[page.index("<h3>Final evaluation</h3>"):page.index("<h3>Warm start (before RL)</h3>")]
    assert re.search(r"<td>greedy %</td><td>90\.0.*?</td><td>70\.0", final)
    # config: only the keys that differ
    config = page[page.index('id="config"'):page.index('id="training"')]
    assert re.search(r"<code>seed</code></td><td class=\"text\">0</td><td class=\"text\">1</td>", config)
    assert "<code>rl.steps</code>" not in config
    assert {"transcripts-1-early", "transcripts-2-late"} <= set(outline.ids)
    assert outline.scripts == 0 and HOSTILE not in page
    # --output and the wall-clock axis work for several runs too
    assert main(["report", str(a), str(b), "--output", str(tmp_path / "cmp.html"), "--x-axis", "time"]) == 0
    assert "RL wall-clock time" in (tmp_path / "cmp.html").read_text()


def test_overlay_of_identical_configs_says_so(tmp_path, monkeypatch):
    a, b = make_run(tmp_path / "x"), make_run(tmp_path / "y")
    page = build_comparison([a, b])
    assert "The runs' resolved configurations are identical." in page


@pytest.mark.parametrize("bad", ["missing", "empty", "file", "foreign"])
def test_overlay_with_a_path_that_is_not_a_run_is_one_line(tmp_path, capsys, run_dir, bad):
    target = tmp_path / bad
    if bad == "empty":
        target.mkdir()
    elif bad == "file":
        target.write_text("x")
    elif bad == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("x")
    assert main(["report", str(run_dir), str(target)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(target) in err[0] and "not an rlvr run directory" in err[0], err
    if bad == "empty":
        assert "empty" in err[0]


@pytest.mark.skipif(CHROMIUM is None, reason="headless rendering needs Chromium on PATH "
                                             "(Debian: apt-get install chromium)")
def test_reports_fit_a_1300_px_window(tmp_path):
    # long unbreakable completions, prompts and config values must wrap or scroll inside their box
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", seed=7)
    wide = "x" * 3000
    for run in (a, b):
        samples = [_sample(s, 0, r, 0.5 - r, text=wide + str(i)) for s in (1, 2) for i, r in enumerate((1.0, 0.0))]
        samples[0]["prompt"] = wide
        (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    with open(b / "config.yaml", "a") as fh:  # a long differing value in the config table
        fh.write(f"\n# {wide}\n")
    config = (b / "config.yaml").read_text().replace("run_name: null", f"run_name: {wide}")
    (b / "config.yaml").write_text(config)
    pages = [write_report(a), write_report([a, b], tmp_path / "both.html")]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,900"]
    for page in pages:
        probe = page.with_name(page.stem + "-probe.html")  # the report itself has no script; the probe adds one
        probe.write_text(page.read_text().replace(
            "</body>", "<script>document.title = 'width=' + document.documentElement.scrollWidth;</script></body>"))
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.resolve().as_uri()], capture_output=True,
                             text=True, timeout=120)
        width = int(re.search(r"<title>width=(\d+)</title>", dom.stdout).group(1))
        assert width <= 1300, (page, width)
