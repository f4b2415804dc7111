"""`rlvr compare`: interval arithmetic against hand-computed values, comparison files read
(and their mistakes refused in one line), equal budgets in samples and tokens, a shared warm
start built once, an interrupted comparison resumed to the same numbers, and the page."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlvr.cli import main
from rlvr.compare.results import tables
from rlvr.compare.spec import budget_overrides, load_comparison, parse_budget
from rlvr.compare.stats import paired_difference, seed_interval, t_quantile_975
from rlvr.typed_yaml import ConfigError

SETTINGS = """set:
  model: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}
  sft: {steps: 4, batch_size: 8}
  rl: {prompts_per_step: 4, samples_per_prompt: 4, mini_batches: 2, micro_batch_size: 8}
  rollout.max_new_tokens: 12
  eval: {problems: 8, samples: 2, every: 1}
  checkpoint.every: 2
  logging.progress: false
"""


# ------------------------------------------------------------------------------- statistics
def test_seed_intervals_are_student_t_by_hand():
    assert t_quantile_975(1) == pytest.approx(12.706205) and t_quantile_975(2) == pytest.approx(4.302653)
    assert t_quantile_975(45) == pytest.approx(2.021075) and t_quantile_975(5000) == pytest.approx(1.959964)
    mean, low, high = seed_interval([0.5, 0.6, 0.7])  # s = 0.1, n = 3: half-width 4.302653 * 0.1 / sqrt(3)
    assert mean == pytest.approx(0.6) and high - mean == pytest.approx(0.2484138, abs=1e-6)
    assert mean - low == pytest.approx(high - mean)
    one = seed_interval([0.42])
    assert one[0] == 0.42 and np.isnan(one[1]) and np.isnan(one[2])
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_paired_differences_by_hand():
    # one seed, two problems, d = (1, 0): the resampled means are 0, 0.5 or 1, so the 95% interval is [0, 1]
    assert paired_difference(np.array([[1.0, 0.0]]), np.zeros((1, 2))) == (0.5, 0.0, 1.0)
    # a constant difference has no spread, whatever is resampled
    assert paired_difference(np.full((3, 5), 0.7), np.full((3, 5), 0.4)) == pytest.approx((0.3, 0.3, 0.3))
    # seeds disagree (d = 0 on seed 0, 1 on seed 1): drawing both seeds the same is likely enough
    # that both ends are reached; the mean is the midpoint
    assert paired_difference(np.array([[0.0, 0.0], [1.0, 1.0]]), np.zeros((2, 2))) == (0.5, 0.0, 1.0)
    # pairing: problems both arms find easy or hard cancel out
    easy_hard = np.array([[1.0, 0.0, 1.0, 0.0]])
    assert paired_difference(easy_hard, easy_hard) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="equal"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 2)))


# ------------------------------------------------------------------------------- the file
def test_a_comparison_file_names_arms_as_overrides_of_a_base(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("base: dapo\nseeds: [3, 5]\nbudget: samples=2000\nks: [8, 1]\nset: {eval: {problems: 50}}\n"
                     "arms:\n  a: {}\n  b: {algorithm: {clip_high: 0.3}, reward.components: {correctness: 1.0}}\n"
                     "  c: {recipe: grpo}\n")
    comparison = load_comparison([str(study)], sets=["threads=1"])
    assert [a.name for a in comparison.arms] == ["a", "b", "c"] and comparison.seeds == [3, 5]
    assert comparison.ks == [1, 8] and comparison.budget == ("samples", 2000.0)
    assert comparison.overrides == ["eval.problems=50", "threads=1"]
    b = comparison.arms[1]
    assert b.overrides == ["algorithm.clip_high=0.3", 'reward.components={"correctness": 1.0}']
    assert comparison.train_args(b, 5) == ["--config", "dapo", "eval.problems=50", "threads=1",
                                           "algorithm.clip_high=0.3", 'reward.components={"correctness": 1.0}',
                                           "seed=5", "rl.steps=1000000", "rl.max_samples=2000"]
    assert comparison.train_args(comparison.arms[2], 3)[:2] == ["--config", "grpo"]
    again = load_comparison([str(study)], seeds=2, budget="steps=30")
    assert again.seeds == [0, 1] and again.budget == ("steps", 30.0)
    assert budget_overrides(("tokens", 5e4)) == ["rl.steps=1000000", "rl.max_tokens=50000"]
    assert budget_overrides(("seconds", 90.5)) == ["rl.steps=1000000", "rl.max_seconds=90.5"]


@pytest.mark.parametrize("text, said", [
    ("arms: {a: {}}\n", "two or more"),
    ("arms: {a: {}, b: {}}\nbudegt: steps=3\n", "unknown key 'budegt'"),
    ("arms: {a: {}, b: {}}\nbudget: minutes=3\n", "not UNIT=N"),
    ("arms: {a: {}, b: {}}\nbudget: steps=2.5\n", "whole number"),
    ("arms: {a: {}, b: {}}\nseeds: 0\n", "seeds must be >= 1"),
    ("arms: {a: {}, b: 3}\n", "arms.b: an arm is a mapping"),
    ("arms: {a: {}, b: {}}\nks: [0]\n", "ks must be a list of positive integers"),
    ("arms: [a, b\n", "line"),
])
def test_comparison_file_mistakes_are_one_line(tmp_path, text, said):
    study = tmp_path / "study.yaml"
    study.write_text(text)
    with pytest.raises(ConfigError, match=said) as caught:
        load_comparison([str(study)])
    assert str(study) in str(caught.value) and "\n" not in str(caught.value)


def test_recipe_files_are_one_arm_each_and_a_bad_arm_is_refused_before_any_run(tmp_path, capsys):
    for name, text in (("grpo_a.yaml", "rl: {lr: 1.0e-4}\n"), ("grpo_b.yaml", "rl: {lr: -1}\n")):
        (tmp_path / name).write_text(text)
    comparison = load_comparison([str(tmp_path / "grpo_a.yaml"), str(tmp_path / "grpo_b.yaml")])
    assert [a.name for a in comparison.arms] == ["grpo_a", "grpo_b"] and comparison.seeds == [0, 1, 2]
    assert parse_budget("seconds=30") == ("seconds", 30.0)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "grpo_a.yaml"), str(tmp_path / "grpo_b.yaml"), "--output-dir",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "arm 'grpo_b'" in err and "rl.lr" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# ------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """The warm-start cache on (the suite turns it off), in a directory of this module's own."""
    saved = {k: os.environ.get(k) for k in ("RLVR_NO_WARMSTART_CACHE", "RLVR_CACHE_DIR")}
    os.environ.pop("RLVR_NO_WARMSTART_CACHE", None)
    os.environ["RLVR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _study(path: Path, budget: str, arms: str = "  plain: {}\n  filtered: {data.filter: dynamic}\n") -> Path:
    path.write_text(f"seeds: 2\nbudget: {budget}\nks: [1, 2]\n{SETTINGS}arms:\n{arms}")
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, cache_env):
    root = tmp_path_factory.mktemp("compare")
    study = _study(root / "study.yaml", "samples=48")
    assert main(["compare", str(study), "--output-dir", str(root / "out"), "--parallel", "2"]) == 0
    return root / "out"


def _rl(run: Path) -> list[dict]:
    return [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()) if r["stage"] == "rl"]


def test_every_run_spends_the_same_samples_budget(compared):
    for run in sorted(p for p in compared.iterdir() if p.name.endswith(("seed0", "seed1"))):
        totals = [r["samples_generated_total"] for r in _rl(run)]
        # each run stops at the first step that reaches the budget: equal spending, whatever a step costs
        assert totals[-1] >= 48 and (len(totals) == 1 or totals[-2] < 48), (run.name, totals)
    plain, filtered = _rl(compared / "plain-seed0"), _rl(compared / "filtered-seed0")
    assert [r["samples_generated_total"] for r in plain] == [16, 32, 48]
    assert sum(r["rollout_rounds"] for r in filtered) * 16 == filtered[-1]["samples_generated_total"]
    assert all(r["tokens_generated_total"] > 0 for r in plain)


def test_the_shared_warm_start_is_built_once_per_seed(compared):
    logs = {p.stem: p.read_text() for p in (compared / "logs").glob("*.log")}
    reused = sorted(name for name, text in logs.items() if "reused the warm start" in text)
    assert reused == ["filtered-seed0", "filtered-seed1"]  # the plain runs built them, one per seed


def test_results_tables_and_page(compared):
    results = json.loads((compared / "results.json").read_text())
    plain, filtered = results["arms"]["plain"], results["arms"]["filtered"]
    for metric in ("accuracy", "pass@1", "pass@2", "samples", "tokens", "seconds", "steps"):
        assert metric in plain["metrics"], metric
    accuracy = [json.loads(x) for x in (compared / "filtered-seed1" / "eval.jsonl").read_text().splitlines()][-1]
    assert filtered["metrics"]["accuracy"]["per_seed"][1] == accuracy["greedy_accuracy"]
    assert filtered["metrics"]["accuracy"]["diff"]["paired"] == "problems x seeds"
    assert filtered["metrics"]["seconds"]["diff"]["paired"] == "seeds"
    steps = filtered["metrics"]["steps"]
    assert steps["diff"]["mean"] == pytest.approx(steps["mean"] - plain["metrics"]["steps"]["mean"])
    text = tables(results)
    assert "accuracy (%)" in text and "| filtered |" in text and "vs plain" in text
    page = (compared / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Accuracy against budget" in page
    assert "<td>---</td>" not in page  # the tables' separator lines are no rows


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless rendering needs Chromium on PATH (Debian: apt-get install "
                                             "chromium); the HTML itself is tested above")
def test_the_page_renders_in_headless_chromium(compared, tmp_path):
    shot = tmp_path / "page.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1200,2400", (compared / "compare.html").resolve().as_uri()],
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 20_000


def test_an_interrupted_comparison_resumes_to_the_same_numbers(tmp_path, cache_env):
    study = _study(tmp_path / "study.yaml", "steps=6", "  plain: {}\n  clipped: {algorithm.clip_high: 0.28}\n")
    straight = tmp_path / "straight"
    assert main(["compare", str(study), "--output-dir", str(straight), "--seeds", "1"]) == 0
    cut = tmp_path / "cut"
    child = subprocess.Popen([sys.executable, "-m", "rlvr", "compare", str(study), "--output-dir", str(cut),
                              "--seeds", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (cut / "plain-seed0" / "checkpoints" / "rl-step-000002").is_dir():
        assert child.poll() is None and time.time() < deadline, "the comparison ended before its first checkpoint"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=180)
    assert child.returncode == 130 and "run the same command again" in err, err
    assert not (cut / "plain-seed0" / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "rlvr", "compare", str(study), "--output-dir", str(cut),
                              "--seeds", "1"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 to resume" in resumed.stdout
    a, b = (json.loads((d / "results.json").read_text()) for d in (straight, cut))
    for arm in ("plain", "clipped"):
        for metric in ("accuracy", "pass@1", "pass@2", "samples", "tokens", "steps"):
            assert a["arms"][arm]["metrics"][metric]["per_seed"] == b["arms"][arm]["metrics"][metric]["per_seed"]
    # another comparison in the same directory is refused
    other = _study(tmp_path / "other.yaml", "steps=5", "  plain: {}\n  clipped: {algorithm.clip_high: 0.28}\n")
    assert main(["compare", str(other), "--output-dir", str(cut), "--seeds", "1"]) == 2


@pytest.mark.parametrize("study", sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_study_file_plans_and_validates(study, tmp_path):
    from rlvr.compare.runner import plan

    comparison = load_comparison([str(study)])
    assert len(comparison.seeds) >= 3 and study.read_text().startswith("#")
    runs = plan(comparison, tmp_path / "out")
    assert len(runs) == len(comparison.arms) * len(comparison.seeds)


def test_a_rates_interval_stays_within_zero_and_one():
    from rlvr.compare.results import _interval

    wide = _interval([0.85, 0.94, 0.93])
    assert wide["high"] > 1.0  # the t-interval itself does not know the mean is a rate
    cut = _interval([0.85, 0.94, 0.93], (0.0, 1.0))
    assert cut["high"] == 1.0 and cut["low"] == pytest.approx(wide["low"]) and cut["mean"] == pytest.approx(0.9066667)
