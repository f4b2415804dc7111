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

from rlvr.rollout.kv_cache import KVCacheEngine  # noqa: E402
from rlvr.rollout.vllm_engine import (  # noqa: E402
    EngineHangError,
    EngineThread,
    VLLMEngine,
    WeightSyncError,
    expected_checksum,
)
from vllm_contract import (  # noqa: E402  (tests/vllm_contract.py: the checks both vLLM engines pass)
    LOGPROB_TOL,
    check_a_partial_stop_sequence_resumes_the_row,
    check_finish_reasons_eos_stop_and_length,
    check_greedy_tokens_equal_kv_cache_engine,
    check_seeded_prompts_over_one_steps_token_budget,
    prompts_of,
    sample,
    save_tiny_model,
    trainer_logprobs,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("vllm_ckpt"))


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


def test_greedy_tokens_equal_kv_cache_engine(base, engine, trainer):
    _, model, tokenizer = base
    check_greedy_tokens_equal_kv_cache_engine(engine, model, tokenizer)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_the_trainers_recomputation(base, engine, trainer, temperature):
    _, model, tokenizer = base
    gens = sample(engine, None, tokenizer, temperature=temperature, max_new_tokens=32,
                   generator=torch.Generator().manual_seed(1))
    assert sum(len(g.response_ids) for g in gens) > 100
    recomputed, behaviour = trainer_logprobs(model, prompts_of(tokenizer), gens, temperature)
    assert (recomputed - behaviour).abs().max() < LOGPROB_TOL


def test_seeds_come_from_the_generator(base, engine, trainer):
    _, _, tokenizer = base

    def draw(seed):
        return [g.response_ids for g in sample(engine, None, tokenizer, temperature=1.0,
                                                generator=torch.Generator().manual_seed(seed))]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_seeded_prompts_over_one_steps_token_budget(base, engine, trainer):
    _, model, tokenizer = base
    check_seeded_prompts_over_one_steps_token_budget(engine, model, tokenizer)


def test_top_p_below_one_is_refused_unless_allowed(base, engine, trainer):
    _, _, tokenizer = base
    with pytest.raises(ValueError, match="renormalised nucleus"):
        sample(engine, None, tokenizer, temperature=1.0, top_p=0.9)


def test_weight_sync_changes_outputs_and_verifies(base, engine, trainer):
    _, model, tokenizer = base
    engine.verify_sync(model.state_dict().items(), version=0)  # the checkpoint as loaded
    before = [g.response_ids for g in sample(engine, None, tokenizer)]
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # one "optimizer step"
        for param in trainer.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    engine.load_weights(trainer.state_dict().items(), version=1)
    engine.verify_sync(trainer.state_dict().items(), version=1)
    engine.verify_sync(trainer.named_parameters(), version=1)  # the tied LM head listed once
    after = sample(engine, None, tokenizer)
    assert [g.response_ids for g in after] != before
    ours = sample(KVCacheEngine(), trainer, tokenizer)
    assert [g.response_ids for g in after] == [g.response_ids for g in ours]
    sampled = sample(engine, None, tokenizer, temperature=1.0, generator=torch.Generator().manual_seed(2))
    recomputed, behaviour = trainer_logprobs(trainer, prompts_of(tokenizer), sampled, 1.0)
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
    check_finish_reasons_eos_stop_and_length(engine, model, tokenizer)


def test_a_partial_stop_sequence_resumes_the_row(base, engine, trainer):
    _, model, tokenizer = base
    check_a_partial_stop_sequence_resumes_the_row(engine, model, tokenizer)


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
        gens = sample(again, None, tokenizer)
        sample(again, None, tokenizer, temperature=1.0, generator=torch.Generator().manual_seed(0))
        assert torch.equal(torch.get_rng_state(), rng)  # its sampler's draws leave the global stream alone
    assert [g.response_ids for g in gens] == [g.response_ids for g in sample(KVCacheEngine(), model, tokenizer)]
