"""Verifier-free rewards from the policy's own probabilities: RLPR (the probability of the
reference answer after the response's reasoning) and INTUITOR's self-certainty, against a
uniform policy's closed forms and a direct computation, and in a run."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.cli import main
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rewards import REWARDS, RewardError, call_trl_reward
from rlvr.rewards.policy_probability import PolicyView, reasoning_and_reference
from rlvr.tasks import Problem
from rlvr.tasks.addition import AdditionTask
from rlvr.training.run_dir import RunDir

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _view(model, tokenizer, prompts, responses, masks=None):
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    return PolicyView(model, tokenizer, prompt_ids, response_ids, masks, micro_batch=2)


def test_a_uniform_policy_has_zero_self_certainty_and_probability_one_over_v(tokenizer):
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # logits all 0: the uniform distribution
    view = _view(model, tokenizer, ["12+30", "5+5"], ["2+0=2 => 42", "=> 10"])
    assert view.self_certainty() == pytest.approx([0.0, 0.0], abs=1e-6)
    probs = view.continuation_probabilities(["2+0=2 => ", None], ["42", "10"])
    assert [len(p) for p in probs] == [2, 2]
    assert all(p == pytest.approx(1 / len(tokenizer)) for row in probs for p in row)


def test_probabilities_and_self_certainty_match_a_direct_computation(tokenizer):
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)
    prompts, responses = ["12+30", "7+8"], ["2+0=2 1+3=4 => 42", "7+8=15 => 15"]
    masks = [[1] * len(responses[0]), [1] * 6 + [0] * (len(responses[1]) - 6)]  # tool output is not the policy's
    view = _view(model, tokenizer, prompts, responses, masks)
    got_sc, got_p = view.self_certainty(), view.continuation_probabilities(["2+0=2 1+3=4 => ", "7+8=15 => "],
                                                                          ["42", "15"])
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([p_ids + r_ids])).logits[0].float().log_softmax(-1)
        vocab = logp.shape[-1]
        kl = [float(-(logp[len(p_ids) - 1 + k] + math.log(vocab)).mean()) for k in range(len(r_ids)) if masks[i][k]]
        assert got_sc[i] == pytest.approx(sum(kl) / len(kl), rel=1e-5)
        answer = r_ids[-2:]  # the two answer characters at the end of the response
        expected = [float(logp[len(p_ids) + len(r_ids) - 3 + k, t].exp()) for k, t in enumerate(answer)]
        assert got_p[i] == pytest.approx(expected, rel=1e-5)
        assert got_sc[i] > 0  # KL from uniform: positive for any non-uniform policy


def test_rlpr_scores_the_reference_after_the_reasoning_and_debias_subtracts_the_bare_guess(tokenizer):
    task = AdditionTask(AdditionTask.Params(min_digits=2, max_digits=2))
    assert reasoning_and_reference(task, "2+0=2 1+3=5 => 52", "52", "42") == ("2+0=2 1+3=5 => ", "42")
    assert reasoning_and_reference(task, "2+0=2 1+3", None, "42") == ("2+0=2 1+3 => ", "42")
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1)
    problems = [Problem("a", "12+30", "42"), Problem("b", "12+30", "42")]
    completions = ["2+0=2 1+3=5 => 52", "2+0=2 1+3=4 => 42"]
    view = _view(model, tokenizer, [p.prompt for p in problems], completions)
    values = call_trl_reward("rlpr", REWARDS.get("rlpr"), problems, completions, None, {}, [False, True],
                             ["52", "42"], [0, 0], task, view)
    # both reasonings are followed by the reference "42": a wrong answer is never read
    direct = view.continuation_probabilities(["2+0=2 1+3=5 => ", "2+0=2 1+3=4 => "], ["42", "42"])
    assert values == pytest.approx([sum(p) / 2 for p in direct])
    debiased = call_trl_reward("rlpr", REWARDS.get("rlpr"), problems, completions, None, {"debias": True},
                               [False, True], ["52", "42"], [0, 0], task, view)
    bare = view.continuation_probabilities(["=> ", "=> "], ["42", "42"])
    assert debiased == pytest.approx([min(max(v - sum(b) / 2, 0.0), 1.0) for v, b in zip(values, bare)])
    with pytest.raises(RewardError, match="policy's probabilities"):
        call_trl_reward("rlpr", REWARDS.get("rlpr"), problems, completions, None, {}, [False, True], ["52", "42"],
                        [0, 0], task, None)


@pytest.mark.parametrize("component", ["rlpr", "self_certainty"])
def test_a_run_rewarded_by_the_policys_own_probabilities_logs_them_beside_the_verifier(tmp_path, component):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), *TINY, "rl.steps=2", f"reward.components={{{component}: 1.0}}"]) == 0
    rl = [r for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]
    assert len(rl) == 2
    for r in rl:
        assert r["proxy_gold_gap"] == pytest.approx(r[f"{component}_mean"] - r["accuracy"], abs=1e-9)
        assert r[f"{component}_mean"] > 0
    samples = list(RunDir(run).read("samples.jsonl"))
    assert all(s["reward"] == pytest.approx(s["reward_components"][component]) for s in samples)
