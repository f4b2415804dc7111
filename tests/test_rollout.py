"""Tests for the KV-cache rollout engine: greedy parity with HF generate, exact behaviour
log-probs, seeded sampling, EOS/length handling, nucleus filtering."""

import pytest
import torch
from torch.testing import assert_close

from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout import ROLLOUT_ENGINES
from rlvr.rollout.kv_cache import KVCacheEngine, top_p_filter
from rlvr.rollout.trajectory import render_prompt
from rlvr.tasks import Problem
from rlvr.training.batch import make_token_batch, token_logprobs

TEXTS = ["12+3", "4567+89", "1+1=", "x", "99+1", "hello world", "7"]  # lengths 1..11


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops are latency-bound: on a loaded 2-core machine a second intra-op thread makes
    each decode step ~40x slower (spin-waiting), so this module runs single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _random_model(tok, seed=1, eos_scale=3.0, arch="llama"):
    """A tiny model with large random weights, so greedy output is varied rather than the
    'repeat the last token' a fresh tied-embedding model produces. Scaling the (tied) EOS
    embedding makes EOS the argmax in some contexts and not others."""
    model = build_tiny_model(tok, architecture=arch, hidden_size=32, num_layers=2, num_heads=2,
                             intermediate_size=64, max_position_embeddings=64, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.model.embed_tokens.weight[tok.eos_token_id] *= eos_scale
    return model


@pytest.fixture(scope="module")
def model(tok):
    return _random_model(tok)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def _gen(model, tok, prompts, **kw):
    kw.setdefault("max_new_tokens", 12)
    kw.setdefault("temperature", 0.0)
    kw.setdefault("top_p", 1.0)
    return KVCacheEngine().generate(model, prompts, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id, **kw)


def _hf_greedy(model, tok, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    new = out[0, len(prompt):].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id) + 1]
    return new


def test_registered():
    assert ROLLOUT_ENGINES.get("kv_cache") is KVCacheEngine


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_matches_hf_generate_and_is_padding_invariant(tok, prompts, arch):
    model = _random_model(tok, arch=arch)
    batched = _gen(model, tok, prompts)
    reasons = {g.finish_reason for g in batched}
    assert reasons == {"eos", "length"}, "fixture should mix finished and truncated rows"
    assert len({len(p) for p in prompts}) > 3  # prompts of different lengths share the batch
    for prompt, gen in zip(prompts, batched):
        alone = _gen(model, tok, [prompt])[0]
        assert alone.response_ids == gen.response_ids
        assert alone.finish_reason == gen.finish_reason
        # a batch of 1 and of 7 take differently blocked fp32 matmuls (oneDNN): ~1e-5 apart at most
        assert_close(torch.tensor(alone.logprobs), torch.tensor(gen.logprobs), rtol=0, atol=3e-5)
        assert gen.response_ids == _hf_greedy(model, tok, prompt, 12)
        ended = gen.response_ids[-1] == tok.eos_token_id
        assert gen.finish_reason == ("eos" if ended else "length")
        assert tok.eos_token_id not in gen.response_ids[:-1]
        if not ended:
            assert len(gen.response_ids) == 12
        # greedy picks the argmax, whose log-prob is the largest of the row: <= 0 and finite
        assert all(-20 < lp <= 0 for lp in gen.logprobs)


def _forward_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits, -1)
    cols = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
    return logp[cols, torch.tensor(response)]


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampled_logprobs_match_full_forward_and_trainer(tok, model, prompts, top_p):
    temperature = 0.7
    gen = torch.Generator().manual_seed(0)
    gens = _gen(model, tok, prompts, temperature=temperature, top_p=top_p, generator=gen)
    responses = [g.response_ids for g in gens]
    assert all(len(g.logprobs) == len(g.response_ids) for g in gens)
    for prompt, g in zip(prompts, gens):
        ref = _forward_logprobs(model, prompt, g.response_ids, temperature)
        assert_close(torch.tensor(g.logprobs), ref, rtol=0, atol=1e-5)

    # the trainer's recomputation on right-padded prompt+response: PPO ratio == 1 at step 0
    batch = make_token_batch(prompts, responses, tok.pad_token_id,
                             response_logprobs=[g.logprobs for g in gens])
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, temperature)
    mask = batch.target_mask.bool()
    assert int(mask.sum()) == sum(len(r) for r in responses)
    assert_close(logp[mask], batch.old_logprobs[mask], rtol=0, atol=1e-5)
    assert_close(torch.exp(logp[mask] - batch.old_logprobs[mask]), torch.ones(int(mask.sum())),
                 rtol=0, atol=1e-5)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        start = len(prompt) - 1
        assert_close(logp[row, start:start + len(response)],
                     torch.tensor(gens[row].logprobs), rtol=0, atol=1e-5)


def test_sampling_reproducible_by_generator_seed(tok, model, prompts):
    def sample(seed):
        gens = _gen(model, tok, prompts, temperature=1.0, generator=torch.Generator().manual_seed(seed))
        return [g.response_ids for g in gens]

    a, b, c = sample(11), sample(11), sample(12)
    assert a == b
    assert a != c


def test_sampling_differs_from_greedy_at_high_temperature(tok, model, prompts):
    greedy = [g.response_ids for g in _gen(model, tok, prompts)]
    sampled = [g.response_ids for g in _gen(model, tok, prompts, temperature=2.0,
                                             generator=torch.Generator().manual_seed(0))]
    assert greedy != sampled


def _biased_head(model, token_id, bias=30.0):
    """Replace the head by zero weights plus a bias: every step prefers ``token_id``."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = bias
    model.lm_head = head
    return model


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_eos_finish(tok, prompts, temperature):
    model = _biased_head(_random_model(tok), tok.eos_token_id)
    gens = _gen(model, tok, prompts, temperature=temperature, generator=torch.Generator().manual_seed(0))
    for g in gens:
        assert g.finish_reason == "eos"
        assert g.response_ids == [tok.eos_token_id]
        assert g.logprobs[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_length_finish(tok, prompts, max_new_tokens):
    seven = tok.convert_tokens_to_ids("7")
    model = _biased_head(_random_model(tok), seven)
    gens = _gen(model, tok, prompts, max_new_tokens=max_new_tokens, temperature=1.0,
                generator=torch.Generator().manual_seed(0))
    for g in gens:
        assert g.finish_reason == "length"
        assert g.response_ids == [seven] * max_new_tokens
        assert len(g.logprobs) == max_new_tokens


def test_eos_at_last_allowed_step_counts_as_eos(tok, model, prompts):
    # a row whose EOS is exactly the max_new_tokens-th token finished by EOS, not by length
    full = _gen(model, tok, prompts)
    eos_rows = [i for i, g in enumerate(full) if g.finish_reason == "eos"]
    assert eos_rows
    i = eos_rows[0]
    n = len(full[i].response_ids)
    g = _gen(model, tok, [prompts[i]], max_new_tokens=n)[0]
    assert (g.response_ids, g.finish_reason) == (full[i].response_ids, "eos")
    if n > 1:
        g = _gen(model, tok, [prompts[i]], max_new_tokens=n - 1)[0]
        assert (g.response_ids, g.finish_reason) == (full[i].response_ids[:-1], "length")


def test_empty_inputs(tok, model):
    assert _gen(model, tok, []) == []
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        _gen(model, tok, [[10], []])


def test_top_p_filter_hand_made():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()  # noqa: E731
    assert kept(0.8) == [True, True, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.1) == [True, False, False, False]  # the top token always survives
    assert kept(0.96) == [True, True, True, True]
    assert top_p_filter(logits, 1.0) is logits
    # kept logits are unchanged, and order in the vocabulary does not matter
    shuffled = logits[[2, 0, 3, 1]]
    out = top_p_filter(shuffled, 0.8)
    assert torch.isfinite(out).tolist() == [False, True, False, True]
    assert_close(out[[1, 3]], shuffled[[1, 3]], rtol=0, atol=0)
    # batched rows are filtered independently
    rows = torch.stack([logits, logits.flip(0)])
    assert torch.isfinite(top_p_filter(rows, 0.8)).tolist() == [[True, True, False, False],
                                                                 [False, False, True, True]]


def test_top_p_sampling_never_leaves_the_nucleus(tok, model, prompts):
    # with top_p tiny only the argmax survives, so sampling equals greedy
    greedy = [g.response_ids for g in _gen(model, tok, prompts)]
    nucleus = [g.response_ids for g in _gen(model, tok, prompts, temperature=1.0, top_p=1e-6,
                                            generator=torch.Generator().manual_seed(3))]
    assert nucleus == greedy


def test_render_prompt(tok):
    chat = Problem(id="1+2", prompt=[{"role": "user", "content": "1+2"}], answer="3")
    assert tok.decode(render_prompt(tok, chat)) == "<|user|>1+2<|assistant|>"
    plain = Problem(id="p", prompt="1+2=", answer="3")
    assert render_prompt(tok, plain) == tok("1+2=", add_special_tokens=False)["input_ids"]
