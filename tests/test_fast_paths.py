"""Every speed-up keeps the numbers: the direct Llama-layout decoder against the model's own
forward, row dropping against full batches, shared-prefix decoding (one cache row per
distinct prefix, forked when samples differ) against decoding every row, the sampler's
behaviour log-probs against the trainer's recomputation (so the first PPO epoch need not
recompute them), and length-sorted micro-batches against one micro-batch. The packed
training forward has its own file, ``test_packed_forward.py``."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout import kv_cache
from rlvr.rollout.kv_cache import KVCacheEngine, sample_categorical
from rlvr.rollout.steppers import HFStepper, LlamaStepper, make_stepper
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks.base import Problem
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.rl import Learner, policy_update


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, arch="llama", seed=1):
    if arch == "llama-gqa":  # 4 query heads share 2 key/value heads
        base = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                max_position_embeddings=64)
        config = base.config
        config.num_key_value_heads = 2
        model = type(base)(config).eval()
    else:
        model = build_tiny_model(tok, architecture=arch, hidden_size=32, num_layers=2, num_heads=4,
                                 intermediate_size=64, max_position_embeddings=64, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # large random weights: varied, confident outputs
            scale, offset = (0.3, 0.0) if p.dim() == 2 else (0.1, 1.0 if "norm" in name else 0.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale + offset)
        model.model.embed_tokens.weight[tok.eos_token_id] *= 3.0
    return model


PROMPTS = [[10, 11, 12], [13], [14, 15, 16, 17, 18, 19], [20, 21], [22, 23, 24, 25]]


def _left_pad(prompts, pad):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        valid[row, width - len(p):] = True
    return ids, valid, (valid.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "llama-gqa"])  # qwen2: biased q/k/v projections
def test_llama_stepper_logits_match_model_forward(tok, arch):
    model = _model(tok, arch)
    assert LlamaStepper.supports(model)
    ids, valid, positions = _left_pad(PROMPTS, tok.pad_token_id)
    steps = torch.randint(7, 60, (len(PROMPTS), 4), generator=torch.Generator().manual_seed(0))
    fast, plain = LlamaStepper(model, len(PROMPTS), ids.shape[1] + 4), HFStepper(model)
    with torch.inference_mode():
        assert_close(fast.prefill(ids, positions, valid), plain.prefill(ids, positions, valid), rtol=1e-5, atol=1e-5)
        rows = torch.arange(len(PROMPTS))
        pos = positions[:, -1] + 1
        for t in range(steps.shape[1]):
            if t == 2:  # drop rows 1 and 3 from both caches mid-decode
                keep = torch.tensor([0, 2, 4])
                fast.keep(keep)
                plain.keep(keep)
                rows, valid, pos = rows[keep], valid[keep], pos[keep]
            valid = torch.cat([valid, torch.ones(len(rows), 1, dtype=torch.bool)], dim=1)
            a = fast.decode(steps[rows, t], pos, valid)
            b = plain.decode(steps[rows, t], pos, valid)
            assert_close(a, b, rtol=1e-5, atol=1e-5)
            pos = pos + 1
    # the full forward over each whole sequence gives the same last-position logits
    for i, row in enumerate(rows.tolist()):
        seq = torch.tensor([PROMPTS[row] + steps[row].tolist()])
        with torch.no_grad():
            ref = model(input_ids=seq).logits[0, -1]
        assert_close(a[i], ref, rtol=1e-5, atol=1e-5)


def test_unsupported_architecture_falls_back_to_the_model_forward(tok):
    model = _model(tok)
    model.config.hidden_act = "gelu"
    assert isinstance(make_stepper(model, 2, 8), HFStepper)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_fast_path_equals_plain_path(tok, monkeypatch, temperature):
    """Same tokens, finish reasons, log-probs and entropies through the direct decoder with
    row dropping as through the model's own forward (rows finish at different steps; one
    closes a stop sequence)."""
    model = _model(tok)
    kwargs = dict(max_new_tokens=14, temperature=temperature, top_p=1.0, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, stop_sequences=[[30, 31], [40]])
    prompts = PROMPTS * 3
    fast = KVCacheEngine().generate(model, prompts, generator=torch.Generator().manual_seed(5), **kwargs)
    monkeypatch.setattr(kv_cache, "make_stepper", lambda m, b, c, **kw: HFStepper(m))
    plain = KVCacheEngine().generate(model, prompts, generator=torch.Generator().manual_seed(5), **kwargs)
    assert len({len(g.response_ids) for g in fast}) > 2, "rows should finish at different steps"
    for a, b in zip(fast, plain):
        assert a.response_ids == b.response_ids
        assert a.finish_reason == b.finish_reason
        assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)
        assert_close(torch.tensor(a.entropies), torch.tensor(b.entropies), rtol=0, atol=1e-5)


def _gpt2(tok, seed=1):
    """A tiny GPT-2 (served by HFStepper) with large random weights, like ``_model``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale, offset = (0.3, 0.0) if p.dim() == 2 else (0.1, 1.0 if "ln" in name and "weight" in name else 0.0)
            p.copy_(torch.randn(p.shape, generator=g) * scale + offset)
        model.transformer.wte.weight[tok.eos_token_id] *= 10.0  # some rows end on EOS
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_shared_prefixes_decoded_once_equal_decoding_every_row(tok, monkeypatch, arch, temperature, top_p):
    """Rows with equal tokens so far share one cache row and one forward (each distinct
    prompt is prefilled once; samples fork when their tokens differ): the same tokens,
    log-probs and entropies per row as decoding every row on its own. The repeats are
    interleaved (not contiguous groups) and one prompt differs from another only in its
    last token, so a row given another prompt's or sample's cache would sample differently."""
    model = _model(tok) if arch == "llama" else _gpt2(tok)
    assert isinstance(make_stepper(model, 1, 8), LlamaStepper if arch == "llama" else HFStepper)
    prompts = [PROMPTS[i] for i in (0, 2, 0, 1, 3, 2, 0, 4, 2, 0)] + [[10, 11, 13], [10, 11, 13], PROMPTS[3]]
    kwargs = dict(max_new_tokens=14, temperature=temperature, top_p=top_p, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, stop_sequences=[[30, 31], [40], [29, 29], [37]])
    prefilled, decoded = [], []  # rows of every prefill; rows of every decode step, per engine
    real = kv_cache.make_stepper

    def counting_stepper(m, b, c, **kw):
        stepper = real(m, b, c, **kw)
        decode = stepper.decode
        stepper.decode = lambda t, *a: decoded[-1].append(len(t)) or decode(t, *a)
        prefilled.append(b)
        return stepper

    monkeypatch.setattr(kv_cache, "make_stepper", counting_stepper)
    results = []
    for share in (True, False):
        engine = KVCacheEngine()
        engine.share_prefixes = share
        decoded.append([])
        results.append(engine.generate(model, prompts, generator=torch.Generator().manual_seed(5), **kwargs))
    assert prefilled == [6, len(prompts)]
    shared_steps, plain_steps = decoded
    assert sum(shared_steps) <= sum(plain_steps)
    fast, plain = results
    if temperature == 0:  # greedy: copies of a prompt never fork
        assert max(shared_steps) <= prefilled[0]
        assert len({tuple(fast[i].response_ids) for i in (0, 2, 6, 9)}) == 1
    else:
        assert max(shared_steps) > prefilled[0], "samples of a prompt should fork into slots of their own"
        assert len({tuple(fast[i].response_ids) for i in (0, 2, 6, 9)}) > 1, "copies of a prompt should differ"
        assert len({len(g.response_ids) for g in fast}) > 2, "rows should finish at different steps"
    if arch == "llama":  # its samples keep some prefixes in common: fewer rows decoded
        assert sum(shared_steps) < sum(plain_steps)
    if (arch, temperature) == ("llama", 1.0):
        assert {g.finish_reason for g in fast} == {"eos", "stop", "length"}
    for a, b in zip(fast, plain):
        assert a.response_ids == b.response_ids
        assert a.finish_reason == b.finish_reason
        assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-5)
        assert_close(torch.tensor(a.entropies), torch.tensor(b.entropies), rtol=0, atol=1e-5)


def test_sample_categorical_matches_the_distribution():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 2.0, 2.0]])  # unnormalised rows are fine
    draws = sample_categorical(probs.repeat(20000, 1), torch.Generator().manual_seed(0)).view(20000, 2)
    first = torch.bincount(draws[:, 0], minlength=4) / 20000
    second = torch.bincount(draws[:, 1], minlength=4) / 20000
    assert_close(first, torch.tensor([0.1, 0.0, 0.6, 0.3]), rtol=0, atol=0.015)
    assert_close(second, torch.tensor([0.0, 0.0, 0.5, 0.5]), rtol=0, atol=0.015)
    assert int(first[1] * 20000) == 0 and int(second[:2].sum() * 20000) == 0  # zero mass is never drawn


def _rollout(tok, model, n=12, temperature=1.0):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    gens = KVCacheEngine().generate(model, prompts, max_new_tokens=10, temperature=temperature, top_p=1.0,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                    generator=torch.Generator().manual_seed(3))
    problem = Problem(id="p", prompt="x", answer="y")
    return [Trajectory(problem=problem, group=i // 4, prompt_ids=p, response_ids=g.response_ids, logprobs=g.logprobs,
                       loss_mask=[1] * len(g.response_ids), finish_reason=g.finish_reason, entropies=g.entropies,
                       reward=float(i % 3 == 0))
            for i, (p, g) in enumerate(zip(prompts, gens))]


def test_behaviour_logprobs_give_the_recomputed_loss(tok):
    """The first PPO epoch uses the sampler's log-probs as old log-probs instead of a second
    forward pass: the trainer's recomputation and the PPO loss agree."""
    model = _model(tok)
    trajectories = _rollout(tok, model, temperature=0.8)
    config = load_config(None, ["rollout.temperature=0.8"])
    batch, _ = Learner.build(model, config, tok.pad_token_id).prepare(trajectories)
    mask = batch.target_mask
    with torch.no_grad():
        recomputed, _ = token_logprobs(model, batch, 0.8)
    assert_close(batch.old_logprobs * mask, recomputed * mask, rtol=0, atol=1e-5)
    from rlvr.algorithms import POLICY_LOSSES, aggregate_loss

    loss = POLICY_LOSSES.get("ppo")
    adv = batch.extras["advantages"]
    a, _ = loss(recomputed, batch.old_logprobs, adv, mask, clip_low=0.2, clip_high=0.2, clip_c=None)
    b, _ = loss(recomputed, recomputed, adv, mask, clip_low=0.2, clip_high=0.2, clip_c=None)
    assert_close(aggregate_loss(a, mask, "token_mean", num_tokens=mask.sum()),
                 aggregate_loss(b, mask, "token_mean", num_tokens=mask.sum()), rtol=0, atol=1e-6)


def test_length_sorted_micro_batches_equal_one_micro_batch(tok):
    """Splitting each mini-batch into length-sorted, trimmed micro-batches gives the same
    loss, statistics and (clipped) gradient as one untrimmed micro-batch."""
    results = []
    for micro in (3, 12):
        trajectories = _rollout(tok, _model(tok))  # varied lengths
        assert len({len(t.response_ids) for t in trajectories}) > 2
        # a normally initialised policy is trained on them (the large-weight sampler is ill-conditioned)
        model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, seed=1)
        config = load_config(None, ["rl.mini_batches=1", f"rl.micro_batch_size={micro}", "rl.lr=0.01"])
        learners = Learner.build(model, config, tok.pad_token_id)
        batch, _ = learners.prepare(trajectories)
        with torch.no_grad():
            batch.old_logprobs = token_logprobs(model, batch)[0] * batch.target_mask
        metrics = policy_update(learners, batch, torch.Generator().manual_seed(0), 0)
        results.append((metrics, [p.detach().clone() for p in model.parameters()]))
    (m_small, g_small), (m_one, g_one) = results
    for key in ("loss", "grad_norm", "entropy", "clip_frac"):
        if key in m_one:
            assert m_small[key] == pytest.approx(m_one[key], rel=1e-5, abs=1e-6), key
    a, b = torch.cat([g.flatten() for g in g_small]), torch.cat([g.flatten() for g in g_one])
    assert float((a - b).norm() / b.norm()) < 1e-5  # summation order is all that differs


def test_prepacked_projections_equal_the_plain_matmul(monkeypatch):
    """The stepper's oneDNN-prepacked projections compute F.linear in float32 (another
    summation order: within 1e-5 relative), for any number of rows; they are off under
    autocast, for other dtypes and with RLVR_PACKED_LINEAR=0."""
    from rlvr.rollout.steppers import Projection, packing_pays

    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=generator), torch.randn(96, generator=generator)
    projection = Projection(weight, bias, pack=packing_pays(weight), rows=8)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    assert projection.packed is not None
    for shape in [(8, 64), (3, 64), (2, 5, 64), (1, 64)]:
        x = torch.randn(*shape, generator=generator)
        expected = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
        assert_close(projection(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert not packing_pays(weight.to(torch.float64)) and not packing_pays(weight.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not packing_pays(weight)
    monkeypatch.setenv("RLVR_PACKED_LINEAR", "0")
    assert not packing_pays(weight) and Projection(weight, bias, pack=False, rows=8).packed is None
