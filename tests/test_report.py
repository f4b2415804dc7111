"""`rlvr report`: a self-contained HTML file with the expected sections, escaped transcripts,
and a page that headless Chromium renders."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from rlvr.cli import main
from rlvr.config import RunConfig, save_config

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


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    save_config(RunConfig(), run / "config.yaml")
    (run / "state.json").write_text(json.dumps({"completed_stages": ["sft", "rl"], "evals": {}}))
    (run / "summary.json").write_text(json.dumps({"warmstart_accuracy": 0.35, "final_accuracy": 0.9}))
    metrics = [{"stage": "sft", "step": s, "loss": 2.0 / s} for s in range(1, 4)]
    metrics += [{"stage": "rl", "step": s, "reward_mean": 0.1 * s, "reward/correctness": 0.1 * s, "accuracy": 0.1 * s,
                 "response_length": 30 - s, "entropy": 0.5, "kl": 0.01 * s, "clip_frac": 0.02,
                 "zero_variance_groups": 0.5, "tokens_per_s": 900.0} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    evals = [_eval_record("warmstart", 0, 0.35, {1: 0.4, 2: 0.55, 4: 0.7}),
             _eval_record("final", 6, 0.9, {1: 0.8, 2: 0.85, 4: 0.88})]
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
