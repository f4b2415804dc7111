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


@pytest.fixture(scope="session")
def random_rm(tmp_path_factory):
    """A sequence-classification checkpoint with a random (but saved) one-logit head: a reward
    model whose values are arbitrary but fixed, to check the plumbing against by hand."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlvr.models import build_char_tokenizer

    path = tmp_path_factory.mktemp("rm") / "rm"
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
