"""The engine contract both vLLM engines must keep (``VLLMEngine`` in
tests/test_vllm_engine.py, ``VLLMServerEngine`` in tests/test_vllm_server.py): one model, one
set of prompts, and the checks each test file runs against its own engine."""

import random

import torch

from rlvr.models.loading import build_tiny_model, default_tokenizer
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.training.batch import make_token_batch, token_logprobs

TEXTS = ["12+34=", "hello", "What is 7*8?", "abc", "Sort: 3 1 2", "x", "0000", "The answer is"]
LOGPROB_TOL = 1e-4  # fp32 engine vs fp32 trainer: observed ~1e-6 in process, ~4e-6 over HTTP


def tiny_model():
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


def save_tiny_model(path):
    """``(path, model, tokenizer)`` with the model and tokenizer saved at ``path``."""
    model, tokenizer = tiny_model()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def prompts_of(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


def sample(eng, model, tokenizer, **kw):
    args = dict(max_new_tokens=24, temperature=0.0, top_p=1.0, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    args.update(kw)
    return eng.generate(model, prompts_of(tokenizer), **args)


def trainer_logprobs(model, prompts, gens, temperature):
    """(the trainer's recomputed log-probs, the engine's) of every generated token."""
    batch = make_token_batch(prompts, [g.response_ids for g in gens], 0,
                             response_logprobs=[g.logprobs for g in gens])
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, temperature)
    mask = batch.target_mask.bool()
    return logp[mask], batch.old_logprobs[mask]


def check_greedy_tokens_equal_kv_cache_engine(engine, model, tokenizer):
    ours = sample(KVCacheEngine(), model, tokenizer)
    theirs = sample(engine, None, tokenizer)
    assert [g.response_ids for g in theirs] == [g.response_ids for g in ours]
    assert [g.finish_reason for g in theirs] == [g.finish_reason for g in ours]
    assert {g.finish_reason for g in ours} == {"eos", "length"}  # both endings are exercised
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=LOGPROB_TOL, rtol=0)
    assert all(g.entropies == [] for g in theirs)  # vLLM returns none; the learner recomputes them


def check_finish_reasons_eos_stop_and_length(engine, model, tokenizer):
    free = sample(engine, None, tokenizer, eos_token_id=[999], max_new_tokens=24)  # no EOS can occur
    assert {g.finish_reason for g in free} == {"length"} and all(len(g.response_ids) == 24 for g in free)
    row = free[0].response_ids
    # several EOS ids: stops at the first of either, the EOS kept; the checkpoint's own EOS
    # (tokenizer.eos_token_id) is not one of them and so does not stop a row
    eos_ids = [row[4], 998]
    stop_seq = row[9:12]  # three tokens
    partial = [(row[10] + 1) % 100 + 7, row[11]]  # ends like stop_seq, starts otherwise
    kw = dict(eos_token_id=eos_ids, stop_sequences=[stop_seq, partial], max_new_tokens=24)
    ours = sample(KVCacheEngine(), model, tokenizer, **kw)
    theirs = sample(engine, None, tokenizer, **kw)
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
    stop_only = sample(engine, None, tokenizer, eos_token_id=[999], stop_sequences=[stop_seq], max_new_tokens=24)
    assert stop_only[0].finish_reason == "stop" and stop_only[0].response_ids[-3:] == stop_seq
    assert stop_only[0].response_ids == row[:len(stop_only[0].response_ids)]


def check_a_partial_stop_sequence_resumes_the_row(engine, model, tokenizer):
    row = sample(engine, None, tokenizer, eos_token_id=[999])[0].response_ids
    # a two-token sequence whose last token occurs in the row without its first token
    last = row[6]
    first = next(t for t in range(7, 100) if t not in row)
    kw = dict(eos_token_id=[999], stop_sequences=[[first, last]], max_new_tokens=24)
    gen = sample(engine, None, tokenizer, **kw)[0]
    assert gen.response_ids == row and gen.finish_reason == "length"  # vLLM stopped at `last`, we went on
    assert len(gen.logprobs) == len(row)
    ours = sample(KVCacheEngine(), model, tokenizer, **kw)[0]
    torch.testing.assert_close(torch.tensor(gen.logprobs), torch.tensor(ours.logprobs), atol=LOGPROB_TOL, rtol=0)


def check_seeded_prompts_over_one_steps_token_budget(engine, model, tokenizer):
    """More prompt tokens than one engine step takes (vLLM's default budget on CPU: 4096): on a CPU,
    vLLM 0.32 crashes when it chunks a seeded request's prompt ("CPU Generator does not use
    offset"), so the engine turns chunked prefill off there."""
    rng = random.Random(0)  # distinct prompts: a shared prefix would be cached, not prefilled
    prompts = [tokenizer(" ".join(str(rng.randrange(10**6)) for _ in range(30)))["input_ids"][:190]
               for _ in range(32)]
    assert sum(map(len, prompts)) > 4096
    args = dict(max_new_tokens=4, temperature=1.0, top_p=1.0, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    gens = engine.generate(None, prompts, generator=torch.Generator().manual_seed(5), **args)
    again = engine.generate(None, prompts, generator=torch.Generator().manual_seed(5), **args)
    assert [g.response_ids for g in gens] == [g.response_ids for g in again]
    recomputed, behaviour = trainer_logprobs(model, prompts, gens, 1.0)
    assert (recomputed - behaviour).abs().max() < LOGPROB_TOL
