"""Generative judges: verdicts parsed from text (a text with none scores 0 and is counted),
rubrics filled in and checked, `rlvr rm --objective judge` fine-tuning a causal LM into a judge
that beats its base on held-out verdicts, and a run rewarded by that judge, with the verifier
beside it (proxy_gold_gap), parse failures and cache hits logged."""

from __future__ import annotations

import json

import pytest

from rlvr.cli import main
from rlvr.rewards import REWARDS
from rlvr.rewards.judge import (_LOADED, check_judge, judge_input, judge_metrics, parse_verdict, question_text,
                                reset_judge_stats)
from rlvr.training.run_dir import RunDir

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1"]
SHORT_RUBRIC = "{prompt} {response} verdict:"


@pytest.mark.parametrize("text, verdict, expected", [
    ("correct", "binary", 1.0),
    (" Incorrect.", "binary", 0.0),
    ("The steps look right... but the carry is wrong. Verdict: wrong", "binary", 0.0),  # the last word decides
    ("at first wrong, on reflection: YES", "binary", 1.0),
    ("incorrectly formatted", "binary", None),  # not a verdict word
    ("", "binary", None),
    ("Score: 7", "score", 0.7),
    ("3 errors; overall 10/10", "score", 1.0),
    ("score 11", "score", None),  # outside [0, max_score]
    ("no number", "score", None),
])
def test_verdicts_are_parsed_from_the_judges_text(text, verdict, expected):
    got = parse_verdict(text, verdict)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_the_rubric_is_filled_in_with_the_question_response_and_answer():
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "12+30"}]
    assert question_text(conversation) == "12+30" and question_text("7*6") == "7*6"
    assert judge_input("Q {prompt} R {response} A {answer}", conversation, "=> 42", "42") == "Q 12+30 R => 42 A 42"


def test_bad_judge_params_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="judge.path is required"):
        check_judge({})
    with pytest.raises(ValueError, match="judge.verdict must be binary or score"):
        check_judge({"path": "x", "verdict": "stars"})
    with pytest.raises(ValueError, match="judge.path: .*does not load as a causal-LM judge"):
        check_judge({"path": str(tmp_path / "nowhere")})


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A short default run that logs its samples, a judge trained on them, and a run rewarded by it."""
    root = tmp_path_factory.mktemp("judge")
    source = root / "source"
    assert main(["train", "--output-dir", str(source), "model.hidden_size=64", "model.num_layers=2",
                 "model.intermediate_size=128", "sft.steps=250", "sft.batch_size=16", "rl.steps=6",
                 "rl.prompts_per_step=8", "rl.samples_per_prompt=8", "logging.samples_per_step=64",
                 "eval.problems=8", "eval.samples=2", "eval.every=0", "logging.progress=false", "threads=1"]) == 0
    judge_dir = root / "judge"
    assert main(["rm", "--from-run", str(source), "--output", str(judge_dir), "--objective", "judge",
                 "--rubric", SHORT_RUBRIC, "--steps", "150", "--lr", "1e-3"]) == 0
    return root, source, judge_dir


def test_rlvr_rm_trains_a_judge_that_beats_its_base(judged, capsys):
    _, _, judge_dir = judged
    metrics = json.loads((judge_dir / "rm_metrics.json").read_text())
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert metrics["objective"] == "judge" and after["examples"] >= 20
    # the policy checkpoint never writes a verdict; the judge always does, and mostly the right one
    assert before["parse_failures"] > 0.9 and after["parse_failures"] == 0.0
    assert after["accuracy"] > 0.75 > before["accuracy"]
    assert json.loads((judge_dir / "judge.json").read_text()) == {"rubric": SHORT_RUBRIC, "verdict": "binary"}
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(judge_dir).config.vocab_size > 0  # loads in transformers as it is


def test_the_judge_reward_counts_parse_failures_and_caches_verdicts(judged):
    root, source, judge_dir = judged
    samples = [json.loads(line) for line in (source / "samples.jsonl").read_text().splitlines()][:24]
    prompts, completions = [s["prompt"] for s in samples], [[{"role": "assistant", "content": s["completion"]}]
                                                            for s in samples]
    judge = REWARDS.get("judge")
    reset_judge_stats()
    values = judge(prompts, completions, path=str(judge_dir), verified=[s["correct"] for s in samples])
    assert set(values) <= {0.0, 1.0}
    agreement = sum(v == float(s["correct"]) for v, s in zip(values, samples)) / len(samples)
    assert agreement > 0.6
    again = judge(prompts, completions, path=str(judge_dir), verified=[s["correct"] for s in samples])
    assert again == values
    stats = judge_metrics()
    assert stats["judge_cache_hits"] == pytest.approx(0.5)  # the second call was answered from the cache
    assert stats["judge_parse_failures"] == 0.0 and stats["time_judge"] > 0
    # gated by the verifier, it never pays a wrong answer
    gated = judge(prompts, completions, path=str(judge_dir), verified=[s["correct"] for s in samples], gate=True)
    assert all(g == 0.0 for g, s in zip(gated, samples) if not s["correct"])
    # the policy checkpoint as a judge: it writes no verdict, every sample scores 0 and is counted
    base = str(source / "checkpoints" / "final")
    reset_judge_stats()
    assert judge(prompts, completions, path=base, verified=[True] * len(samples), rubric=SHORT_RUBRIC) == [0.0] * 24
    assert judge_metrics()["judge_parse_failures"] == pytest.approx(1.0)
    _LOADED.clear()


def test_a_run_rewarded_by_the_judge_logs_it_beside_the_verifier(judged, tmp_path):
    _, _, judge_dir = judged
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TINY, "rl.steps=2", "reward.components={judge: 1.0}",
                 f"reward.params={{judge: {{path: {judge_dir}, max_new_tokens: 12}}}}"]) == 0
    rl = [r for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]
    assert len(rl) == 2
    for r in rl:
        assert {"judge_mean", "proxy_gold_gap", "proxy_gold_corr", "judge_parse_failures", "judge_cache_hits"} <= r.keys()
        assert 0 < r["time_judge"] <= r["time_scoring"]
        assert r["proxy_gold_gap"] == pytest.approx(r["judge_mean"] - r["accuracy"])


def test_a_judge_that_does_not_load_is_refused_before_any_work(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "bad"), *TINY, "reward.components={judge: 1.0}",
                 f"reward.params={{judge: {{path: {tmp_path / 'missing'}}}}}"]) == 2
    err = capsys.readouterr().err
    assert "judge.path" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_a_run_with_a_judge_and_policy_probability_rewards_resumes_exactly(judged, tmp_path, monkeypatch):
    """The judge's verdict cache travels with the checkpoints: the resumed run answers the same
    samples from it (judge_cache_hits equal), and RLPR / self-certainty read the restored weights."""
    from rlvr.config import load_config
    from rlvr.training.pipeline import new_run_dir, run_pipeline

    from crash_resume import crash_in_rl_step_then_resume, rl_records

    _, source, judge_dir = judged
    # eight training prompts, four a step, near-greedy one-token responses: steps 3 and 4 meet
    # the (prompt, response) pairs that steps 1 and 2 judged, from the cache the resume restores
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+{a}", "answer": str(2 * a)}) + "\n" for a in range(10)))
    base = [o for o in TINY if not o.startswith(("model.", "sft."))]
    config = load_config(None, [*base, "stages=[rl]", f"model.path={source / 'checkpoints' / 'final'}",
                                "task.name=prompts", "eval.problems=2",
                                f"task.params={{path: {data}, answer_field: answer, heldout_fraction: 0.2}}", "rl.steps=4",
                                "checkpoint.every=2", "rollout.max_new_tokens=1", "rollout.temperature=0.05",
                                "reward.components={judge: 1.0, rlpr: 0.5, self_certainty: 0.1}",
                                f"reward.params={{judge: {{path: {judge_dir}}}, rlpr: {{debias: true}}}}"])
    straight = new_run_dir(config, str(tmp_path / "straight"), "t")
    run_pipeline(config, straight)
    crashed = crash_in_rl_step_then_resume(config, tmp_path / "crashed", monkeypatch)
    records = rl_records(straight.path)
    assert records == rl_records(crashed)
    assert min(r["judge_cache_hits"] for r in records[2:]) > records[0]["judge_cache_hits"]  # the cache at work
