"""The vLLM rollout engine (``rlvr.rollout.vllm_engine``) against our own engine and the
trainer: greedy tokens equal ``KVCacheEngine``'s, sampled log-probs equal the trainer's
recomputation, a weight sync changes the outputs and passes ``verify_sync``, a skipped sync
or a corrupted tensor is caught, finish reasons (EOS, several EOS ids, multi-token stop
sequences, length) follow the engine contract. Runs where vLLM is installed (the vllm extra);
one engine serves the module (starting one takes a few seconds)."""

import copy
import sys
import time

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from rlvr.models.loading import build_tiny_model, default_tokenizer  # noqa: E402
from rlvr.rollout.kv_cache import KVCacheEngine  # noqa: E402
from rlvr.rollout.vllm_engine import (  # noqa: E402
    EngineHangError,
    EngineThread,
    VLLMEngine,
    WeightSyncError,
    expected_checksum,
)
from rlvr.train.batch import make_token_batch, token_logprobs  # noqa: E402

TEXTS = ["12+34=", "hello", "What is 7*8?", "abc", "Sort: 3 1 2", "x", "0000", "The answer is"]
LOGPROB_TOL = 1e-4  # fp32 engine vs fp32 trainer: observed ~1e-6


def _tiny_model():
    """A 2-layer Llama whose weights are large enough (std 0.15) that greedy decoding does not
    repeat one token: outputs vary with the prompt, and some rows end at EOS. Head size 32: the
    smallest vLLM's CPU attention supports."""
    tokenizer = default_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.15, generator=generator)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    model, tokenizer = _tiny_model()
    path = tmp_path_factory.mktemp("vllm_ckpt")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def engine(base):
    path, _, _ = base
    started = time.perf_counter()
    eng = VLLMEngine(path, dtype="float32", max_model_len=256, max_num_seqs=32, kv_cache_memory_bytes=64 << 20)
    print(f"\nvLLM engine started in {time.perf_counter() - started:.1f} s")
    yield eng
    eng.close()


@pytest.fixture
def trainer(base, engine):
    """A trainer-side copy of the checkpoint model; the engine gets the checkpoint's weights
    back after the test (version 0)."""
    _, model, _ = base
    yield copy.deepcopy(model)
    if engine.llm is not None and engine.weight_version != 0:
        engine.load_weights(model.state_dict().items(), version=0)


def _prompts(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


def _sample(eng, model, tokenizer, **kw):
    args = dict(max_new_tokens=24, temperature=0.0, top_p=1.0, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    args.update(kw)
    return eng.generate(model, _prompts(tokenizer), **args)


def _trainer_logprobs(model, prompts, gens, temperature):
    batch = make_token_batch(prompts, [g.response_ids for g in gens], 0,
                             response_logprobs=[g.logprobs for g in gens])
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, temperature)
    mask = batch.target_mask.bool()
    return logp[mask], batch.old_logprobs[mask]


def test_greedy_tokens_equal_kv_cache_engine(base, engine, trainer):
    _, model, tokenizer = base
    ours = _sample(KVCacheEngine(), model, tokenizer)
    theirs = _sample(engine, None, tokenizer)
    assert [g.response_ids for g in theirs] == [g.response_ids for g in ours]
    assert [g.finish_reason for g in theirs] == [g.finish_reason for g in ours]
    assert {g.finish_reason for g in ours} == {"eos", "length"}  # both endings are exercised
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=LOGPROB_TOL, rtol=0)
    assert all(g.entropies == [] for g in theirs)  # vLLM returns none; the learner recomputes them


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_the_trainers_recomputation(base, engine, trainer, temperature):
    _, model, tokenizer = base
    gens = _sample(engine, None, tokenizer, temperature=temperature, max_new_tokens=32,
                   generator=torch.Generator().manual_seed(1))
    assert sum(len(g.response_ids) for g in gens) > 100
    recomputed, behaviour = _trainer_logprobs(model, _prompts(tokenizer), gens, temperature)
    assert (recomputed - behaviour).abs().max() < LOGPROB_TOL


def test_seeds_come_from_the_generator(base, engine, trainer):
    _, _, tokenizer = base

    def draw(seed):
        return [g.response_ids for g in _sample(engine, None, tokenizer, temperature=1.0,
                                                generator=torch.Generator().manual_seed(seed))]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_top_p_below_one_is_refused_unless_allowed(base, engine, trainer):
    _, _, tokenizer = base
    with pytest.raises(ValueError, match="renormalised nucleus"):
        _sample(engine, None, tokenizer, temperature=1.0, top_p=0.9)


def test_weight_sync_changes_outputs_and_verifies(base, engine, trainer):
    _, model, tokenizer = base
    engine.verify_sync(model.state_dict().items(), version=0)  # the checkpoint as loaded
    before = [g.response_ids for g in _sample(engine, None, tokenizer)]
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # one "optimizer step"
        for param in trainer.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    engine.load_weights(trainer.state_dict().items(), version=1)
    engine.verify_sync(trainer.state_dict().items(), version=1)
    engine.verify_sync(trainer.named_parameters(), version=1)  # the tied LM head listed once
    after = _sample(engine, None, tokenizer)
    assert [g.response_ids for g in after] != before
    ours = _sample(KVCacheEngine(), trainer, tokenizer)
    assert [g.response_ids for g in after] == [g.response_ids for g in ours]
    sampled = _sample(engine, None, tokenizer, temperature=1.0, generator=torch.Generator().manual_seed(2))
    recomputed, behaviour = _trainer_logprobs(trainer, _prompts(tokenizer), sampled, 1.0)
    assert (recomputed - behaviour).abs().max() < LOGPROB_TOL


def test_weights_travel_in_buckets_that_may_split_a_fused_layer(base, engine, trainer):
    with torch.no_grad():
        trainer.model.layers[0].self_attn.k_proj.weight.mul_(-1.0)
    engine.bucket_bytes = 1  # one tensor per bucket: q, k, v of a layer arrive in separate calls
    try:
        engine.load_weights(trainer.state_dict().items(), version=7)
    finally:
        engine.bucket_bytes = 256 << 20
    engine.verify_sync(trainer.state_dict().items(), version=7)


def test_a_skipped_sync_is_caught(base, engine, trainer):
    engine.load_weights(trainer.state_dict().items(), version=1)
    with torch.no_grad():  # the next step's update, never pushed
        trainer.model.norm.weight.add_(0.01)
    with pytest.raises(WeightSyncError, match="version 2: the engine holds version 1"):
        engine.verify_sync(trainer.state_dict().items(), version=2)
    with pytest.raises(WeightSyncError, match=r"version 1: parameter model\.norm\.weight differs"):
        engine.verify_sync(trainer.state_dict().items(), version=1)  # a version bumped without the weights


def test_a_single_corrupted_tensor_is_caught(base, engine, trainer):
    name = "model.layers.1.mlp.up_proj.weight"  # fused into gate_up_proj inside vLLM
    sent = {k: v.clone() for k, v in trainer.state_dict().items()}
    sent[name][3, 5] += 1e-3  # corrupted in transit
    engine.load_weights(sent.items(), version=3)
    with pytest.raises(WeightSyncError, match=rf"version 3: parameter {name} differs"):
        engine.verify_sync(trainer.state_dict().items(), version=3)
    engine.load_weights(trainer.state_dict().items(), version=4)
    engine.verify_sync(trainer.state_dict().items(), version=4)
    with torch.no_grad():  # tampered on the trainer side after the push
        trainer.model.layers[0].self_attn.v_proj.weight[0, 0] += 1e-3
    with pytest.raises(WeightSyncError, match=r"version 4: parameter model\.layers\.0\.self_attn\.v_proj\.weight"):
        engine.verify_sync(trainer.state_dict().items(), version=4)


def test_checksums_are_per_hf_tensor_at_the_engine_dtype(base, engine, trainer):
    digests = engine.weights_checksum()
    expected = expected_checksum(trainer.state_dict().items(), torch.float32)
    assert digests == expected  # q/k/v and gate/up split back, padded vocabulary rows dropped
    assert expected_checksum(trainer.state_dict().items(), torch.bfloat16) != expected


def test_finish_reasons_eos_stop_and_length(base, engine, trainer):
    _, model, tokenizer = base
    free = _sample(engine, None, tokenizer, eos_token_id=[999], max_new_tokens=24)  # no EOS can occur
    assert {g.finish_reason for g in free} == {"length"} and all(len(g.response_ids) == 24 for g in free)
    row = free[0].response_ids
    # several EOS ids: stops at the first of either, the EOS kept; the checkpoint's own EOS
    # (tokenizer.eos_token_id) is not one of them and so does not stop a row
    eos_ids = [row[4], 998]
    stop_seq = row[9:12]  # three tokens
    partial = [(row[10] + 1) % 100 + 7, row[11]]  # ends like stop_seq, starts otherwise
    kw = dict(eos_token_id=eos_ids, stop_sequences=[stop_seq, partial], max_new_tokens=24)
    ours = _sample(KVCacheEngine(), model, tokenizer, **kw)
    theirs = _sample(engine, None, tokenizer, **kw)
    assert [(g.response_ids, g.finish_reason) for g in theirs] == [(g.response_ids, g.finish_reason) for g in ours]
    for g in theirs:
        ids = g.response_ids
        assert not set(ids[:-1]) & set(eos_ids)  # no row ran past an EOS
        if g.finish_reason == "eos":
            assert ids[-1] in eos_ids
        elif g.finish_reason == "stop":
            assert ids[-3:] == stop_seq or ids[-2:] == partial
        else:
            assert len(ids) == 24
    # the row the sequences were cut from ends at the first EOS
    first_eos = row.index(row[4])
    assert theirs[0].response_ids == row[:first_eos + 1] and theirs[0].finish_reason == "eos"
    # stop sequences alone, no EOS reachable: row 0 ends with the 3-token sequence
    stop_only = _sample(engine, None, tokenizer, eos_token_id=[999], stop_sequences=[stop_seq], max_new_tokens=24)
    assert stop_only[0].finish_reason == "stop" and stop_only[0].response_ids[-3:] == stop_seq
    assert stop_only[0].response_ids == row[:len(stop_only[0].response_ids)]


def test_a_partial_stop_sequence_resumes_the_row(base, engine, trainer):
    _, model, tokenizer = base
    row = _sample(engine, None, tokenizer, eos_token_id=[999])[0].response_ids
    # a two-token sequence whose last token occurs in the row without its first token
    last = row[6]
    first = next(t for t in range(7, 100) if t not in row)
    kw = dict(eos_token_id=[999], stop_sequences=[[first, last]], max_new_tokens=24)
    gen = _sample(engine, None, tokenizer, **kw)[0]
    assert gen.response_ids == row and gen.finish_reason == "length"  # vLLM stopped at `last`, we went on
    assert len(gen.logprobs) == len(row)
    ours = _sample(KVCacheEngine(), model, tokenizer, **kw)[0]
    torch.testing.assert_close(torch.tensor(gen.logprobs), torch.tensor(ours.logprobs), atol=LOGPROB_TOL, rtol=0)


def test_ping(engine):
    assert 0 <= engine.ping(timeout_s=30) < 30


def test_a_hang_becomes_an_error_with_every_threads_stack():
    thread = EngineThread(name="hang-test")
    assert thread.call("quick", 5, sum, [1, 2]) == 3
    with pytest.raises(EngineHangError, match=r"(?s)slow call did not return within 0\.2 s.*Thread 0x"):
        thread.call("slow call", 0.2, time.sleep, 1.5)
    with pytest.raises(EngineHangError, match="an earlier slow call never returned"):
        thread.call("next", 5, sum, [1])
    thread.close()


def test_without_vllm_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[vllm\]"'):
        VLLMEngine(tmp_path)


def test_close_then_a_second_engine_starts_leaving_the_process_alone(base, engine):
    path, model, tokenizer = base
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.ping()
    torch.manual_seed(123)
    rng, threads, set_num_threads = torch.get_rng_state(), torch.get_num_threads(), torch.set_num_threads
    with VLLMEngine(path, dtype="float32", max_model_len=256, max_num_seqs=8, kv_cache_memory_bytes=32 << 20) as again:
        # vLLM in-process seeds the global RNGs, sets torch's threads and disables
        # torch.set_num_threads on CPU; the engine undoes all three
        assert torch.equal(torch.get_rng_state(), rng)
        assert torch.get_num_threads() == threads and torch.set_num_threads is set_num_threads
        gens = _sample(again, None, tokenizer)
        _sample(again, None, tokenizer, temperature=1.0, generator=torch.Generator().manual_seed(0))
        assert torch.equal(torch.get_rng_state(), rng)  # its sampler's draws leave the global stream alone
    assert [g.response_ids for g in gens] == [g.response_ids for g in _sample(KVCacheEngine(), model, tokenizer)]
