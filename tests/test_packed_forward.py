"""The packed training forward (``rlvr.training.packed``) computes what the model's own forward
computes: per-token log-probs, entropies and every parameter gradient, over batches where
rows share prompts (interleaved, not grouped), where one prompt is a prefix of another or
differs only in its last token, with masked-out response tokens, temperature, GQA and
biased projections (Qwen2). It falls back to the model's forward where it cannot match it."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.packed import PackedLayout, packed_supported
from rlvr.training.rl import Learner, policy_update


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, arch="llama", seed=1):
    kv_heads = 2 if arch == "llama-gqa" else None
    model = build_tiny_model(tok, architecture="llama" if arch == "llama-gqa" else arch, hidden_size=32,
                             num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64, seed=seed)
    if kv_heads:
        model.config.num_key_value_heads = kv_heads
        model = type(model)(model.config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # large random weights (incl. norms and biases): every path matters
        for name, p in model.named_parameters():
            scale, offset = (0.3, 0.0) if p.dim() == 2 else (0.2, 1.0 if "norm" in name else 0.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale + offset)
    return model.train()


def _batch(tok):
    g = torch.Generator().manual_seed(0)
    a, b, c = [10, 11, 12], [13], [10, 11, 12, 14]  # c extends a; d differs from a in its last token only
    d = [10, 11, 15]
    prompts = [a, c, a, b, d, a, b, c, d]
    lengths = [5, 1, 9, 4, 7, 3, 2, 6, 8]
    responses = [torch.randint(5, 60, (n,), generator=g).tolist() for n in lengths]
    masks = [[1] * n for n in lengths]
    masks[2][3:6] = [0, 0, 0]  # e.g. tool output inside a response
    masks[6] = [0, 0]  # e.g. a truncated sample masked out entirely
    return make_token_batch(prompts, responses, tok.pad_token_id, response_masks=masks)


def _shared_prefix_batch(tok):
    """GRPO-like rows that share response prefixes: identical samples, a sample that is a
    strict prefix of a later one (its last token is an input the later row needs), the
    same response after different prompts (never shared), and one-token responses."""
    a, b = [10, 11, 12], [13, 14]
    x, y = [20, 21, 22, 23, 24], [20, 21, 30, 31]
    prompts = [a, a, a, a, b, b, a, b]
    responses = [x[:3], x, x, y, x, x, [20], [20]]
    return make_token_batch(prompts, responses, tok.pad_token_id)


def _distinct_needed_prefixes(batch):
    """Brute force: the distinct token prefixes that some row uses as input."""
    needed = set()
    for row, n in enumerate(batch.attention_mask.sum(-1).tolist()):
        ids = batch.input_ids[row].tolist()
        needed |= {tuple(ids[: j + 1]) for j in range(n - 1)}
    return needed


def _run(model, batch, packed, temperature):
    model.zero_grad(set_to_none=True)
    logp, entropy = token_logprobs(model, batch, temperature, with_entropy=True, entropy_grad=True, packed=packed)
    mask = batch.target_mask
    weights = torch.linspace(0.5, 1.5, mask.numel()).view_as(mask)  # each target's gradient counts differently
    ((logp * mask * weights).sum() + 0.3 * (entropy * mask).sum()).backward()
    return logp * mask, entropy * mask, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "llama-gqa"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_forward_equals_model_forward(tok, arch, temperature):
    model = _model(tok, arch)
    assert packed_supported(model)
    batch = _batch(tok)
    logp, entropy, grads = _run(model, batch, True, temperature)
    ref_logp, ref_entropy, ref_grads = _run(model, batch, False, temperature)
    assert (batch.target_mask.sum(-1) > 0).sum() >= 8
    assert_close(logp, ref_logp, rtol=0, atol=1e-5)
    assert_close(entropy, ref_entropy, rtol=0, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert ref_grads[name].abs().max() > 0, name
        # gradients reach ~30 here: compare relative to their size (float32 summation order differs)
        assert float((grads[name] - ref_grads[name]).norm() / ref_grads[name].norm()) < 1e-5, name


@pytest.mark.parametrize("with_prompts", [True, False])
def test_shared_response_prefixes_computed_once_and_exact(tok, with_prompts):
    """Rows agreeing on prompt and response prefix share those slots; the result equals the
    model's forward, and the packed list holds exactly the distinct prefixes rows need."""
    model = _model(tok)
    batch = _shared_prefix_batch(tok)
    if not with_prompts:  # prefixes are then found from the first token on
        batch.prompt_ids = batch.prompt_lengths = None
    layout = PackedLayout(batch.input_ids, batch.attention_mask, batch.prompt_ids, batch.prompt_lengths)
    assert len(layout.slots) == len(_distinct_needed_prefixes(batch))
    assert len(layout.slots) < int(batch.attention_mask.sum()) // 2
    logp, entropy, grads = _run(model, batch, True, 0.9)
    ref_logp, ref_entropy, ref_grads = _run(model, batch, False, 0.9)
    assert_close(logp, ref_logp, rtol=0, atol=1e-5)
    assert_close(entropy, ref_entropy, rtol=0, atol=1e-5)
    for name in grads:
        assert float((grads[name] - ref_grads[name]).norm() / ref_grads[name].norm()) < 1e-5, name


def test_layout_computes_each_shared_prompt_once(tok):
    """Rows 0, 2 and 5 share prompt a: only row 0 computes it; rows 1 (prompt c, which extends
    a) and 4 (prompt d) are not shared with a; the last token of every row is not computed."""
    batch = _batch(tok)
    layout = PackedLayout(batch.input_ids, batch.attention_mask, batch.prompt_ids, batch.prompt_lengths)
    lengths = batch.attention_mask.sum(-1)
    prompt = batch.prompt_lengths
    computed = layout.own.sum(-1)
    assert computed[0] == lengths[0] - 1
    assert computed[2] == lengths[2] - prompt[2] - 1 and computed[5] == lengths[5] - prompt[5] - 1
    assert computed[1] == lengths[1] - 1 and computed[4] == lengths[4] - 1
    assert computed[6] == lengths[6] - prompt[6] - 1  # shares prompt b with row 3
    # a shared prompt slot reads the owner's packed token, the row's own tokens read themselves
    flat = layout.slots
    owner_slot_of_row2 = flat[layout.source[2, :3]]
    assert owner_slot_of_row2.tolist() == [0 * batch.input_ids.shape[1] + j for j in range(3)]
    assert layout.source[2, 3:lengths[2] - 1].tolist() == [
        int((flat == 2 * batch.input_ids.shape[1] + j).nonzero()) for j in range(3, int(lengths[2]) - 1)]
    # the packed list holds the real tokens, minus shared prompt copies and final tokens
    assert len(flat) == int(computed.sum()) < int(lengths.sum())


def test_policy_update_packed_equals_plain(tok, monkeypatch):
    """A whole PPO update (length-sorted micro-batches, token-mean loss, clipping, two
    optimizer steps) gives the same metrics and weights through either forward."""
    import functools

    import rlvr.training.rl as rl_module

    results = []
    for packed in (True, False):
        model = _model(tok)
        config = load_config(None, ["rl.mini_batches=2", "rl.micro_batch_size=3", "rl.lr=0.001"])
        learners = Learner.build(model, config, tok.pad_token_id)
        batch = _batch(tok)
        with torch.no_grad():
            batch.old_logprobs = token_logprobs(model, batch, packed=False)[0].detach() * batch.target_mask
            batch.old_logprobs -= 0.1 * batch.target_mask  # ratios away from 1: clipping engages
        batch.extras["advantages"] = torch.linspace(-1, 1, batch.input_ids.shape[0])[:, None] * batch.target_mask
        monkeypatch.setattr(rl_module, "token_logprobs", functools.partial(token_logprobs, packed=packed))
        metrics = policy_update(learners, batch, torch.Generator().manual_seed(0), 0)
        results.append((metrics, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (m_packed, w_packed), (m_plain, w_plain) = results
    for key in ("loss", "grad_norm", "entropy", "clip_frac"):
        assert m_packed[key] == pytest.approx(m_plain[key], rel=1e-4, abs=1e-6), key
    assert_close(w_packed, w_plain, rtol=0, atol=1e-6)


def test_unsupported_models_fall_back(tok):
    model = _model(tok)
    model.config.attention_dropout = 0.1  # dropout in training mode: the packed path has none
    assert not packed_supported(model)
    model.eval()
    assert packed_supported(model)
    model.config.attention_dropout = 0.0
    model.gradient_checkpointing_enable()
    model.train()
    assert not packed_supported(model)
    other = _model(tok)
    other.config.hidden_act = "gelu"
    assert not packed_supported(other)
    batch = _batch(tok)
    plain, _ = token_logprobs(other, batch, packed=False)
    assert_close(token_logprobs(other, batch)[0], plain, rtol=0, atol=0)
