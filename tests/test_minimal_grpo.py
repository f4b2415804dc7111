"""examples/minimal_grpo.py is the RL loop of `rlvr train`, not a second implementation:
two steps of each from the same warm-started model give the same rewards, losses, gradient
norms and weights."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlvr.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_grpo.py"
_spec = importlib.util.spec_from_file_location("minimal_grpo", EXAMPLE)
minimal_grpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(minimal_grpo)

# The full run: a 250-step SFT warm start on one-digit addition (so some answers are right
# and advantages are not all 0 in either step, on Intel and AMD CPUs alike: after 150 steps an
# Intel Xeon's rounding left step 2 without a right answer), then 2 RL steps with the default recipe's algorithm.
# rl.micro_batch_size (default 64) exceeds a mini-batch's 8 rows: one forward per
# mini-batch, as in the example.
FULL = ["seed=0", "device=cpu", "threads=1",
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "task.params={min_digits: 1, max_digits: 1}", "sft.steps=250", "sft.batch_size=16", "sft.lr=0.01",
        "sft.warmup_steps=0", "rl.steps=2", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
        "rl.mini_batches=2", "rollout.max_new_tokens=16", "eval.problems=8", "eval.samples=0",
        "logging.progress=false", "logging.samples_per_step=16"]
MINIMAL = ["--steps", "2", "--seed", "0", "--min-digits", "1", "--max-digits", "1", "--heldout", "8",
           "--prompts", "4", "--group", "4", "--mini-batches", "2", "--max-new-tokens", "16"]


def test_minimal_loop_equals_full_loop(tmp_path):
    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--output-dir", str(run), *FULL]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    full = [r for r in records if r["stage"] == "rl"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]

    lines: list[str] = []
    args = minimal_grpo.parse_args([*MINIMAL, "--init", str(run / "checkpoints" / "sft-final")])
    model, mini = minimal_grpo.train(args, log=lines.append)

    assert len(lines) == 2 and lines[0].startswith("step    1 | reward")
    assert [r["step"] for r in full] == [m["step"] for m in mini] == [1, 2]
    for f, m in zip(full, mini):
        # A test that compares zeros proves little: the warm start makes both steps learn.
        assert 0 < f["reward_mean"] < 1 and f["grad_norm"] > 0
        # every sampled response's reward, in order (samples.jsonl holds all 16 of a step)
        assert m["rewards"] == [s["reward"] for s in samples if s["step"] == f["step"]]
        assert m["reward_mean"] == f["reward_mean"]
        assert m["response_length"] == f["response_length"]
        torch.testing.assert_close(m["loss"], f["loss"], rtol=1e-6, atol=0)
        torch.testing.assert_close(m["grad_norm"], f["grad_norm"], rtol=1e-6, atol=0)

    final = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "final", local_files_only=True).state_dict()
    weights = model.state_dict()
    assert final.keys() == weights.keys()
    start = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "sft-final", local_files_only=True)
    assert not torch.equal(start.state_dict()["lm_head.weight"], final["lm_head.weight"])  # RL moved them
    for name, tensor in final.items():
        assert torch.equal(weights[name], tensor), name


def test_minimal_defaults_are_the_default_recipe():
    # The example says its defaults are `rlvr train`'s: keep them so.
    from rlvr.config import RunConfig

    args, config = minimal_grpo.parse_args([]), RunConfig()
    assert (args.seed, args.heldout, args.heldout_seed) == (config.seed, config.eval.problems, config.eval.seed)
    assert (args.min_digits, args.max_digits) == (config.task.params["min_digits"], config.task.params["max_digits"])
    assert (args.prompts, args.group, args.mini_batches, args.lr, args.grad_clip, args.steps) == (
        config.rl.prompts_per_step, config.rl.samples_per_prompt, config.rl.mini_batches, config.rl.lr,
        config.rl.grad_clip, config.rl.steps)
    assert (args.max_new_tokens, args.temperature) == (config.rollout.max_new_tokens, config.rollout.temperature)
    assert args.clip == config.algorithm.clip_low == config.algorithm.clip_high
    assert (config.task.name, config.algorithm.advantage, config.algorithm.loss, config.algorithm.loss_agg,
            config.algorithm.kl.coef, config.reward.components) == (
        "addition", "grpo", "ppo", "token_mean", 0.0, {"correctness": 1.0})
