"""Outcome reward models: the ``reward_model`` component scores with the checkpoint's head
(sigmoid of its logit), clipped and gated as configured; ``rlvr rm`` trains one that ranks
held-out right answers over wrong ones; RL logs the proxy-gold gap; mistakes are one line."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlvr.cli import main
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rewards.learned import learned_metrics, load_reward_model, render, reward_model_reward
from rlvr.training.run_dir import RunDir

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1"]
PROMPTS = [[{"role": "user", "content": "12+30"}], [{"role": "user", "content": "7+8"}], "plain prompt "]
COMPLETIONS = ["42", "1+2=3 => 15", "x"]


def test_the_component_is_the_heads_probability_clipped_and_gated(random_rm):
    loaded = load_reward_model(str(random_rm), "cpu")
    texts = [render(loaded.tokenizer, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    assert texts[2] == "plain prompt x" and texts[0].endswith("42") and "12+30" in texts[0]
    by_hand = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding, the head reads the last token
            ids = torch.tensor([loaded.tokenizer(text, add_special_tokens=False)["input_ids"]])
            by_hand.append(float(loaded.model(input_ids=ids).logits[0, 0]))
    probs = reward_model_reward(PROMPTS, COMPLETIONS, path=str(random_rm), verified=[True, False, True], device="cpu")
    assert probs == pytest.approx([1 / (1 + torch.exp(torch.tensor(-x)).item()) for x in by_hand], abs=1e-5)
    logits = reward_model_reward(PROMPTS, COMPLETIONS, path=str(random_rm), verified=[True] * 3, output="logit",
                                 device="cpu")
    assert logits == pytest.approx(by_hand, abs=1e-4)
    low, high = sorted(by_hand)[0] + 1e-3, sorted(by_hand)[-1] - 1e-3
    clipped = reward_model_reward(PROMPTS, COMPLETIONS, path=str(random_rm), verified=[True] * 3, output="logit",
                                  clip=[low, high], device="cpu")
    assert clipped == pytest.approx([min(max(x, low), high) for x in by_hand], abs=1e-4)
    gated = reward_model_reward(PROMPTS, COMPLETIONS, path=str(random_rm), verified=[True, False, True], gate=True,
                                device="cpu")
    assert gated == pytest.approx([probs[0], 0.0, probs[2]])


def test_proxy_gold_metrics_by_hand():
    metrics = learned_metrics([0.9, 0.8, 0.1, 0.6], [True, True, False, False])
    assert metrics["reward_model_mean"] == pytest.approx(0.6)
    assert metrics["proxy_gold_gap"] == pytest.approx(0.6 - 0.5)
    proxy, gold = torch.tensor([0.9, 0.8, 0.1, 0.6]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    expected = float(((proxy - proxy.mean()) * (gold - gold.mean())).sum()
                     / ((proxy - proxy.mean()).norm() * (gold - gold.mean()).norm()))
    assert metrics["proxy_gold_corr"] == pytest.approx(expected)
    assert learned_metrics([0.5, 0.5], [True, False])["proxy_gold_corr"] == 0.0


def _fake_run(root, seed=0):
    """A run directory with a tiny causal checkpoint and logged samples whose verdict is
    written on them: right answers end in ' ok' and are long (the feature a reward model can
    learn, and the one a policy could exploit)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    (root / "checkpoints").mkdir(parents=True)
    model.save_pretrained(root / "checkpoints" / "final")
    tokenizer.save_pretrained(root / "checkpoints" / "final")
    rng = random.Random(seed)
    with open(root / "samples.jsonl", "w") as fh:
        for step in range(1, 31):
            for group in range(4):
                a, b = rng.randrange(100), rng.randrange(100)
                for _ in range(4):
                    right = rng.random() < 0.5
                    fh.write(json.dumps({"stage": "rl", "step": step, "problem_id": f"{a}+{b}", "group": group,
                                         "prompt": [{"role": "user", "content": f"{a}+{b}"}],
                                         "completion": f"{a}+{b}={a + b} ok" if right else f"{a + b + 1}",
                                         "correct": right}) + "\n")
    (root / "state.json").write_text(json.dumps({"completed_stages": ["sft", "rl"], "checkpoint": None, "evals": {},
                                                 "final_checkpoint": "checkpoints/final"}))
    (root / "config.yaml").write_text("seed: 0\n")
    return root


@pytest.mark.parametrize("objective", ["classify", "bradley_terry"])
def test_rlvr_rm_learns_to_tell_right_from_wrong(tmp_path, capsys, objective):
    run = _fake_run(tmp_path / "run")
    out = tmp_path / "rm"
    assert main(["rm", "--from-run", str(run), "--output", str(out), "--objective", objective, "--steps", "60",
                 "--lr", "1e-3"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "rm_metrics.json").read_text())
    assert metrics["heldout_examples"] > 0 and metrics["heldout_after"]["accuracy"] >= 0.9
    assert metrics["heldout_after"]["loss"] < metrics["heldout_before"]["loss"]
    model = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)  # plain transformers
    assert model.config.num_labels == 1
    right, wrong = reward_model_reward([[{"role": "user", "content": "3+4"}]] * 2, ["3+4=7 ok", "8"], path=str(out),
                                       verified=[True, False], device="cpu")
    assert right > 0.5 > wrong


def test_rl_with_a_reward_model_logs_the_proxy_gold_gap(tmp_path, random_rm):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *TINY, "rl.steps=2",
                 "reward.components={correctness: 0.0, reward_model: 1.0}",
                 f"reward.params={{reward_model: {{path: {random_rm}}}}}"]) == 0
    records = [r for r in RunDir(run_dir).read("metrics.jsonl") if r["stage"] == "rl"]
    for r in records:
        assert r["reward_mean"] == pytest.approx(r["reward/reward_model"], abs=1e-6)
        assert r["proxy_gold_gap"] == pytest.approx(r["reward_model_mean"] - r["accuracy"], abs=1e-9)
        assert 0 < r["time_reward_model"] <= r["time_scoring"]


@pytest.mark.parametrize("params, said", [
    ("{path: /no/such/dir}", "no config.json"),
    ("{}", "reward_model.path is required"),
    ("{path: CAUSAL}", "has no trained reward head"),
    ("{path: RM, clip: [1, 0]}", "reward_model.clip must be [low, high]"),
])
def test_reward_model_mistakes_are_one_line_before_any_work(tmp_path, capsys, random_rm, params, said):
    causal = _fake_run(tmp_path / "causal") / "checkpoints" / "final"
    params = params.replace("CAUSAL", str(causal)).replace("RM", str(random_rm))
    capsys.readouterr()  # what writing the fixtures printed
    assert main(["train", "--output-dir", str(tmp_path / "run"), *TINY,
                 "reward.components={reward_model: 1.0}", f"reward.params={{reward_model: {params}}}"]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_rlvr_rm_mistakes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "1+1", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2"}\n')
    base = _fake_run(tmp_path / "run") / "checkpoints" / "final"
    capsys.readouterr()
    for args, said in ((["--data", str(bad), "--base", str(base)], "pairs.jsonl line 2"),
                       (["--data", str(bad)], "--data needs --base"),
                       (["--from-run", str(tmp_path / "nothing")], "--from-run"),
                       (["--from-run", str(tmp_path / "run"), "--steps", "0"], "--steps must be >= 1")):
        assert main(["rm", *args, "--output", str(tmp_path / "out")]) == 2, args
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err


def test_a_run_with_learned_and_process_rewards_resumes_exactly(tmp_path, monkeypatch, random_rm):
    from rlvr.config import load_config
    from rlvr.training.pipeline import new_run_dir, run_pipeline

    from crash_resume import crash_in_rl_step_then_resume, rl_records

    config = load_config(None, [*TINY, "rl.steps=4", "checkpoint.every=2", "reward.step_rewards.coef=0.2",
                                "reward.step_rewards.delta=true", "algorithm.advantage=reinforce_pp",
                                "reward.components={correctness: 1.0, reward_model: 0.5, process: 0.5}",
                                f"reward.params={{reward_model: {{path: {random_rm}, gate: true}}}}"])
    straight = new_run_dir(config, str(tmp_path / "straight"), "t")
    run_pipeline(config, straight)
    crashed = crash_in_rl_step_then_resume(config, tmp_path / "crashed", monkeypatch)
    strip = lambda records: [{k: v for k, v in r.items() if k != "time_reward_model"} for r in records]
    assert strip(rl_records(straight.path)) == strip(rl_records(crashed))
    assert all("proxy_gold_gap" in r and "reward/steps" in r for r in rl_records(crashed))
