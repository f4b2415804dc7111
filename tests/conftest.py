import os

import pytest

import rlvr  # noqa: F401  (before torch: its OpenMP spin setting keeps 2-thread runs fast on a busy CPU)
import torch

# Test models are tiny: one intra-op thread is fastest and immune to a busy second core.
torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides() -> list[str]:
    """A run small enough for a few seconds on CPU that still exercises every stage."""
    return [
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.steps=4", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
        "rl.mini_batches=2", "rl.micro_batch_size=4", "rollout.max_new_tokens=12", "eval.problems=8",
        "eval.samples=4", "checkpoint.every=2", "logging.progress=false", "threads=1",
    ]

# Every test trains its own warm start unless it turns the cache on for itself
# (tests/test_warmstart_cache.py): a reused one would change what a test measures.
os.environ["RLVR_NO_WARMSTART_CACHE"] = "1"
