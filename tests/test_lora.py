"""LoRA RL (model.lora): only the adapters train; the KL reference is the base with the
adapters off, bit for bit the starting policy; checkpoints are plain Hugging Face
checkpoints of the merged weights with the peft adapter beside them; a crash and resume is
exact; what LoRA does not combine with yet is one line before any work."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402

from rlvr.cli import main  # noqa: E402
from rlvr.config import load_config  # noqa: E402
from rlvr.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from rlvr.models.lora import AdapterDisabled  # noqa: E402
from rlvr.rollout import steppers  # noqa: E402
from rlvr.rollout.trajectory import Trajectory  # noqa: E402
from rlvr.tasks import Problem  # noqa: E402
from rlvr.training.batch import make_token_batch, token_logprobs  # noqa: E402
from rlvr.training.rl import Learner  # noqa: E402
from rlvr.training.run_dir import RunDir  # noqa: E402

from crash_resume import crash_in_rl_step_then_resume, rl_records  # noqa: E402

TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1", "reward.shaping=[{name: random_reward}]"]


def _trajectories() -> list[Trajectory]:
    return [Trajectory(problem=Problem(id=f"p{i // 4}", prompt="x", answer="1"), group=i // 4, prompt_ids=[5, 6 + i],
                       response_ids=[7, 8 + i % 3, 9], logprobs=[-3.0] * 3, loss_mask=[1] * 3, finish_reason="stop",
                       reward=float(i % 2)) for i in range(8)]


def test_only_the_adapters_train_and_the_reference_is_the_base_bit_for_bit():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    base = copy.deepcopy(model)
    config = load_config(None, ["model.lora.r=4", "algorithm.kl.coef=0.1", "rl.lr=1e-2", "rl.mini_batches=1",
                                "rl.micro_batch_size=16", "threads=1"])
    learner = Learner.build(model, config, tokenizer.pad_token_id)
    assert isinstance(learner.reference, AdapterDisabled)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for step in range(2):
        trajectories = _trajectories()
        batch, _ = learner.prepare(trajectories)
        learner.update(batch, step, trajectories)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    batch = make_token_batch([[5, 6, 7], [8, 9]], [[10, 11, 2], [12, 2]], tokenizer.pad_token_id)
    with torch.no_grad():
        reference = token_logprobs(learner.reference, batch)[0]  # the packed forward, as the learner uses it
        original = token_logprobs(base, batch)[0]
        adapted = token_logprobs(model, batch)[0]
        reference_own = token_logprobs(learner.reference, batch, packed=False)[0]  # the model's own forward
        original_own = token_logprobs(base, batch, packed=False)[0]
    # the adapters off: the starting policy, bit for bit, through either forward
    assert torch.equal(reference, original) and torch.equal(reference_own, original_own)
    assert not torch.allclose(adapted, original, atol=1e-4)  # and the adapters have moved the policy


def _moved_adapters(model, dropout: float = 0.0):
    """``model`` with rank-4 adapters whose B is no longer zero (as after some training)."""
    Learner.build(model, load_config(None, ["model.lora.r=4", f"model.lora.dropout={dropout}", "threads=1"]), 0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    return model


def test_the_packed_forward_computes_the_adapted_model_and_its_adapter_gradients():
    tokenizer = build_char_tokenizer()
    model = _moved_adapters(build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2,
                                             intermediate_size=64, seed=0))
    batch = make_token_batch([[5, 6, 7], [5, 6, 7], [8, 9]], [[10, 11, 2], [10, 12, 2], [12, 2]],
                             tokenizer.pad_token_id)
    steppers._FALLBACKS_SAID.clear()

    def run(packed: bool):
        model.zero_grad()
        logp, _ = token_logprobs(model, batch, packed=packed)
        (-(logp * batch.target_mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logp.detach() * batch.target_mask, grads

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed, packed_grads = run(True)
    assert not [w for w in caught if "packed forward" in str(w.message)]  # no fallback: adapters are supported
    own, own_grads = run(False)
    torch.testing.assert_close(packed, own, atol=1e-5, rtol=1e-5)
    assert own_grads.keys() == packed_grads.keys() and all(".lora_" in n for n in own_grads)
    for name in own_grads:
        torch.testing.assert_close(packed_grads[name], own_grads[name], atol=1e-5, rtol=1e-4)


def test_the_kv_cache_decoder_samples_the_adapted_model():
    from rlvr.rollout.steppers import HFStepper, LlamaStepper, make_stepper

    tokenizer = build_char_tokenizer()
    model = _moved_adapters(build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2,
                                             intermediate_size=64, seed=0)).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    positions = torch.arange(4).expand(2, 4)
    with torch.no_grad():
        stepper = make_stepper(model, 2, 8)
        assert isinstance(stepper, LlamaStepper)
        fast = stepper.prefill(ids, positions, torch.ones_like(ids, dtype=torch.bool))
        reference = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)
    # with lora dropout in training mode the adapters are random: the packed forward gives way, once
    model = _moved_adapters(build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2,
                                             intermediate_size=64, seed=0), dropout=0.1).train()
    steppers._FALLBACKS_SAID.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = make_token_batch([[5, 6, 7]], [[10, 11, 2]], tokenizer.pad_token_id)
        token_logprobs(model, batch)
        token_logprobs(model, batch, with_entropy=True)
    said = [str(w.message) for w in caught if "packed forward" in str(w.message)]
    assert len(said) == 1 and "LoRA dropout in training mode" in said[0]
    assert not isinstance(make_stepper(model.eval(), 1, 8), HFStepper)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    assert main(["train", "--output-dir", str(root / "run"), *TINY, "rl.steps=4", "checkpoint.every=2",
                 "model.lora.r=4", "algorithm.kl.coef=0.05", "rl.lr=3e-3"]) == 0
    return root / "run"


def test_checkpoints_are_merged_hf_weights_with_the_adapter_beside(lora_run):
    final = lora_run / "checkpoints" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    assert not any("lora" in key or "base_layer" in key for key in merged.state_dict())
    start = AutoModelForCausalLM.from_pretrained(lora_run / "checkpoints" / "sft-final", local_files_only=True)
    adapted = PeftModel.from_pretrained(start, final / "adapter")
    tokenizer = build_char_tokenizer()
    batch = make_token_batch([[5, 6, 7], [8, 9]], [[10, 11, 2], [12, 2]], tokenizer.pad_token_id)
    with torch.no_grad():
        a = token_logprobs(merged, batch, packed=False)[0]
        b = token_logprobs(adapted, batch, packed=False)[0]
        c = token_logprobs(start, batch, packed=False)[0]
    assert torch.allclose(a, b, atol=1e-5)  # merged == base + adapter
    assert not torch.equal(a, c)  # and RL moved it
    rl = [r for r in RunDir(lora_run).read("metrics.jsonl") if r["stage"] == "rl"]
    assert rl[0]["kl_rollout"] == 0.0 and rl[-1]["kl_rollout"] > 0  # the base is the reference


def test_lora_resumes_exactly_after_a_crash(lora_run, tmp_path, monkeypatch):
    config = load_config(lora_run / "config.yaml")
    crashed = crash_in_rl_step_then_resume(config, tmp_path / "crashed", monkeypatch)
    assert rl_records(lora_run) == rl_records(crashed)
    a = AutoModelForCausalLM.from_pretrained(lora_run / "checkpoints" / "final", local_files_only=True).state_dict()
    b = AutoModelForCausalLM.from_pretrained(crashed / "checkpoints" / "final",
                                             local_files_only=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((lora_run / "summary.json").read_text())["final_accuracy"] == \
        json.loads((crashed / "summary.json").read_text())["final_accuracy"]


@pytest.mark.parametrize("extra, said", [
    (["distributed.strategy=fsdp"], "distributed.strategy=fsdp"),
    (["algorithm.kl.coef=0.1", "algorithm.kl.reset_every=2"], "algorithm.kl.reset_"),
])
def test_what_lora_does_not_combine_with_is_one_line(tmp_path, capsys, extra, said):
    assert main(["train", "--output-dir", str(tmp_path / "run"), *TINY, "model.lora.r=4", *extra]) == 2
    err = capsys.readouterr().err
    assert "model.lora.r=4" in err and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
