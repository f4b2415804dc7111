"""prepare_batch: the tensors the RL update sees, checked against hand-built expectations."""

from __future__ import annotations

import math

import torch

from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks.base import Problem
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.rl import Learner


def _setup(overrides):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)
    config = load_config(None, ["rl.samples_per_prompt=2", "rl.prompts_per_step=2", *overrides])
    problem = Problem(id="p", prompt="1+2", answer="3")
    prompts = [[8, 79, 9], [8, 79, 9], [9, 79, 9], [9, 79, 9]]
    responses = [[10, 2], [11, 12, 2], [13], [10, 11, 12, 13]]
    batch = make_token_batch(prompts, responses, tokenizer.pad_token_id)
    true_logp, _ = token_logprobs(model, batch)
    trajectories = []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        start = len(prompt) - 1
        logp = true_logp[row, start:start + len(response)].tolist()
        trajectories.append(Trajectory(problem=problem, group=row // 2, prompt_ids=prompt, response_ids=response,
                                       logprobs=[x - 0.5 for x in logp],  # a behaviour policy 0.5 nats below
                                       loss_mask=[1] * len(response), finish_reason="eos",
                                       entropies=[0.1 * (i + 1) * (row + 1) for i in range(len(response))],
                                       reward=float(row in (0, 3))))
    return model, tokenizer, config, trajectories, true_logp


def test_truncated_importance_weights():
    model, tokenizer, config, trajectories, true_logp = _setup(["algorithm.tis_cap=1.5"])
    batch, stats = Learner.build(model, config, tokenizer.pad_token_id).prepare(trajectories)
    mask = batch.target_mask
    # The trainer's own log-probs become the ratio's denominator ...
    torch.testing.assert_close(batch.old_logprobs * mask, true_logp.detach() * mask)
    # ... and every token is weighted by min(exp(0.5), 1.5) = 1.5 (exp(0.5) = 1.6487).
    torch.testing.assert_close(batch.extras["token_weight"], 1.5 * mask)
    assert math.isclose(stats["tis_weight_mean"], 1.5, rel_tol=1e-6)


def test_grpo_advantages_broadcast_on_response_tokens_only():
    model, tokenizer, config, trajectories, _ = _setup([])
    batch, _ = Learner.build(model, config, tokenizer.pad_token_id).prepare(trajectories)
    adv = batch.extras["advantages"]
    # Group 0 rewards (1, 0) and group 1 rewards (0, 1): mean 0.5, sample std 0.7071 -> +-0.7071.
    expected_rows = [0.70710, -0.70710, -0.70710, 0.70710]
    for row, value in enumerate(expected_rows):
        tokens = batch.target_mask[row].bool()
        torch.testing.assert_close(adv[row, tokens], torch.full((int(tokens.sum()),), value), atol=1e-4, rtol=0)
        assert bool((adv[row, ~tokens] == 0).all())


def test_high_entropy_selection_keeps_normaliser_and_picks_top_tokens():
    model, tokenizer, config, trajectories, _ = _setup(["algorithm.top_entropy_fraction=0.2"])
    batch, stats = Learner.build(model, config, tokenizer.pad_token_id).prepare(trajectories)
    # Entropies are 0.1 * (i + 1) * (row + 1): row 0 [.1 .2], row 1 [.2 .4 .6], row 2 [.3],
    # row 3 [.4 .8 1.2 1.6]. 10 tokens -> ceil(0.2 * 10) = 2 selected: row 3's 1.2 and 1.6.
    weight = batch.extras["token_weight"]
    assert int(weight.sum()) == 2
    row3 = weight[3][batch.target_mask[3].bool()]
    assert row3.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert math.isclose(stats["selected_token_frac"], 0.2, rel_tol=1e-6)
    assert int(batch.target_mask.sum()) == 10  # the loss normaliser still counts every token
