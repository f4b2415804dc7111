"""device / model.dtype / attn_implementation / gradient_checkpointing: bf16 and fp16 compute
against float32 on the CPU (the same code runs on CUDA: ``-m gpu`` below), one-line errors for
a device or kernel this machine lacks, and the fallbacks from the fast paths."""

import json
import warnings

import pytest
import torch

from rlvr.cli import main
from rlvr.models import build_tiny_model
from rlvr.models.tokenizer import build_char_tokenizer
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.rollout import steppers
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.precision import DeviceError, Precision, enable_gradient_checkpointing, resolve_device

CUDA = torch.cuda.is_available()


def _model(arch="llama", seed=0):
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, architecture=arch, hidden_size=64, num_layers=2, num_heads=4,
                             intermediate_size=128, max_position_embeddings=64, seed=seed)
    return model, tok


def _batch(tok, rows=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(7, len(tok), (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (rows,), generator=g)]
    responses = [torch.randint(7, len(tok), (int(n),), generator=g).tolist() for n in torch.randint(2, 12, (rows,), generator=g)]
    return make_token_batch(prompts, responses, tok.pad_token_id)


# bf16 keeps 8 mantissa bits: each matmul is exact to ~2^-9 relative, and a 2-layer model's
# log-probs (|log p| ~ 4 here) drift by a few hundredths at most; measured max 0.02-0.04.
BF16_ATOL = 0.08


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("packed", [True, False])
def test_bf16_logprobs_match_float32_within_tolerance(arch, packed):
    model, tok = _model(arch)
    batch = _batch(tok)
    mask = batch.target_mask.bool()
    with torch.no_grad():
        ref, _ = token_logprobs(model, batch, packed=packed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = token_logprobs(model, batch, packed=packed)
    assert low.dtype == torch.float32  # log-softmax and losses stay float32 under autocast
    diff = (low - ref)[mask].abs()
    assert 0 < float(diff.max()) < BF16_ATOL  # not bit-equal (bf16 did run), but close
    assert float(diff.mean()) < BF16_ATOL / 4


def test_bf16_engine_logprobs_match_the_trainer_under_bf16():
    """The KV-cache engine under autocast samples with log-probs the trainer (also under
    autocast) reproduces: sampler and learner see the same bf16 policy."""
    model, tok = _model()
    prompts = [[9, 10, 11, 12], [13, 14, 15], [9, 10, 11, 12]]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        gens = KVCacheEngine().generate(model, prompts, max_new_tokens=10, temperature=1.0, top_p=1.0,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                        generator=torch.Generator().manual_seed(0))
        batch = make_token_batch(prompts, [g.response_ids for g in gens], tok.pad_token_id,
                                 response_logprobs=[g.logprobs for g in gens])
        trainer, _ = token_logprobs(model, batch)
    mask = batch.target_mask.bool()
    assert float((trainer - batch.old_logprobs)[mask].abs().max()) < BF16_ATOL


def test_bf16_kv_cache_is_stored_in_bf16():
    model, tok = _model()
    engine = KVCacheEngine()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        engine.generate(model, [[9, 10, 11]], max_new_tokens=3, temperature=0.0, top_p=1.0,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert engine._kv_storage[0].dtype == torch.bfloat16


def test_gradient_checkpointing_gives_the_same_gradients_and_says_why_it_is_slower():
    model, tok = _model()
    batch = _batch(tok)

    def grads(m):
        m.zero_grad()
        logp, _ = token_logprobs(m, batch)
        (-(logp * batch.target_mask).sum()).backward()
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    model.train()
    plain = grads(model)
    enable_gradient_checkpointing(model)
    steppers._FALLBACKS_SAID.clear()  # said once per process: another test may have said it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpointed = grads(model)
    assert any("packed forward uses the model's own forward: gradient checkpointing" in str(w.message)
               for w in caught)
    torch.testing.assert_close(checkpointed, plain, atol=1e-5, rtol=1e-4)


def test_eager_attention_equals_sdpa():
    tok = build_char_tokenizer()
    kwargs = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=64)
    sdpa = build_tiny_model(tok, **kwargs)
    eager = build_tiny_model(tok, attn_implementation="eager", **kwargs)
    assert eager.config._attn_implementation == "eager"
    batch = _batch(tok)
    with torch.no_grad():
        a, _ = token_logprobs(sdpa, batch, packed=False)
        b, _ = token_logprobs(eager, batch, packed=False)
    torch.testing.assert_close(a * batch.target_mask, b * batch.target_mask, atol=1e-5, rtol=1e-5)


def test_float16_loss_scale_backs_off_on_overflow_without_counting_a_divergence():
    model, tok = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = Precision(torch.device("cpu"), torch.float16, torch.amp.GradScaler("cpu", init_scale=2.0 ** 120))
    batch = _batch(tok)
    before = [p.detach().clone() for p in model.parameters()]
    with precision.autocast():
        logp, _ = token_logprobs(model, batch)
        loss = -(logp * batch.target_mask).sum()
    precision.backward(loss)
    precision.unscale(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    assert precision.overflowed(float(loss.detach()), [norm])  # 2^120 x the gradient is inf in any float
    precision.update()
    assert precision.loss_scale_backoffs == 1 and precision.scaler.get_scale() == 2.0 ** 119
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_resolve_device_auto_and_errors():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    if not CUDA:
        with pytest.raises(DeviceError, match="torch sees no GPU"):
            resolve_device("cuda:1")


@pytest.mark.skipif(CUDA, reason="needs a machine without a GPU")
@pytest.mark.parametrize("override, message", [
    ("device=cuda", "device: cuda asked for, but torch sees no GPU"),
    ("model.attn_implementation=flash_attention_2", "flash_attention_2"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
])
def test_unusable_device_or_kernel_is_one_line_before_the_run_dir(tmp_path, capsys, tiny_overrides, override,
                                                                   message):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not run_dir.exists()


def _rl_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["stage"] == "sft"], [r for r in records if r["stage"] == "rl"]


def test_bf16_run_trains_like_float32(tmp_path, tiny_overrides):
    """The whole pipeline in bf16 compute: SFT losses track the float32 run's step for step,
    and the checkpoints stay float32 master weights."""
    overrides = [*tiny_overrides, "sft.steps=12"]
    assert main(["train", "--output-dir", str(tmp_path / "fp32"), *overrides]) == 0
    assert main(["train", "--output-dir", str(tmp_path / "bf16"), *overrides, "model.dtype=bfloat16"]) == 0
    sft32, rl32 = _rl_losses(tmp_path / "fp32")
    sft16, rl16 = _rl_losses(tmp_path / "bf16")
    assert len(sft16) == len(sft32) == 12 and len(rl16) == len(rl32) == 4
    for a, b in zip(sft32, sft16):
        assert abs(a["loss"] - b["loss"]) < 0.02 * a["loss"], (a["loss"], b["loss"])
    assert sft32[-1]["loss"] != sft16[-1]["loss"]  # bf16 did run
    config = json.loads((tmp_path / "bf16" / "checkpoints" / "final" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("packed", [True, False])
def test_cuda_bf16_logprobs_match_float32(packed):
    model, tok = _model("qwen2")
    model = model.cuda()
    batch = _batch(tok).to("cuda")
    mask = batch.target_mask.bool()
    with torch.no_grad():
        ref, _ = token_logprobs(model, batch, packed=packed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low, _ = token_logprobs(model, batch, packed=packed)
    assert float((low - ref)[mask].abs().max()) < BF16_ATOL


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_run(tmp_path, tiny_overrides, dtype):
    """The pipeline on CUDA in low precision tracks the CPU float32 run's SFT losses."""
    overrides = [*tiny_overrides, "sft.steps=12"]
    assert main(["train", "--output-dir", str(tmp_path / "cpu"), *overrides, "device=cpu"]) == 0
    assert main(["train", "--output-dir", str(tmp_path / "cuda"), *overrides, "device=cuda",
                 f"model.dtype={dtype}"]) == 0
    sft_cpu, _ = _rl_losses(tmp_path / "cpu")
    sft, rl = _rl_losses(tmp_path / "cuda")
    assert len(sft) == 12 and len(rl) == 4 and not any(r["skipped_updates"] for r in sft)
    for a, b in zip(sft_cpu, sft):
        assert abs(a["loss"] - b["loss"]) < 0.02 * a["loss"], (a["loss"], b["loss"])
