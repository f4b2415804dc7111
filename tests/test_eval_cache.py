"""The evaluation sample cache: a larger n generates only the missing samples, sample j never
depends on n, an interrupted call loses at most one batch, and the cache key follows the weights."""

from __future__ import annotations

import pytest
import torch

from rlvr.eval.evaluate import evaluate, open_cache
from rlvr.eval.sample_cache import SamplingSettings, collect_samples, model_fingerprint
from rlvr.models import build_char_tokenizer, build_tiny_model, load_model_and_tokenizer
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.tasks import Problem, Score, Task
from rlvr.verify.pool import InlineVerifier


class EvenFirstChar(Task):
    """A task a random model solves about half the time: the answer is the completion's first
    character, right when its code point is even. Gives varied answers and correctness."""

    def generate(self, rng):
        x = rng.randint(0, 999)
        return Problem(id=str(x), prompt=f"{x}=", answer="even")

    def extract_answer(self, completion):
        return completion[:1] or None

    def score(self, problem, completion):
        got = self.extract_answer(completion)
        ok = got is not None and ord(got) % 2 == 0
        return Score(reward=float(ok), correct=ok, extracted=got)


@pytest.fixture(scope="module")
def setup():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position_embeddings=64, seed=3).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # large random weights: varied rather than repetitive samples
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    task = EvenFirstChar()
    problems = [Problem(id=str(i), prompt=f"{i}=", answer="even") for i in range(6)]
    return tok, model, task, problems


SETTINGS = SamplingSettings(temperature=1.0, max_new_tokens=4, batch_size=4, seed=11)


def _collect(setup, n, cache, progress=None):
    tok, model, task, problems = setup
    return collect_samples(model, tok, problems, KVCacheEngine(), InlineVerifier(task), SETTINGS, samples=n,
                           cache=cache, progress=progress)


def _texts(per_problem):
    return [[s["text"] for s in p.sampled] for p in per_problem]


def test_larger_n_generates_only_missing_samples_and_matches_a_fresh_call(setup, tmp_path):
    tok, model, task, _ = setup
    cache = open_cache(tmp_path / "a", model, tok, task, SETTINGS)
    small, generated = _collect(setup, 2, cache)
    assert generated == 6 + 2 * 6  # greedy + rounds [0,1) and [1,2)
    reopened = open_cache(tmp_path / "a", model, tok, task, SETTINGS)  # from disk
    large, generated = _collect(setup, 6, reopened)
    assert generated == 6 * (2 + 4)  # rounds [2,4) and [4,8) only
    assert [t[:2] for t in _texts(large)] == _texts(small)
    assert _collect(setup, 8, reopened)[1] == 0  # round [4,8) is already whole

    fresh, generated = _collect(setup, 6, open_cache(tmp_path / "b", model, tok, task, SETTINGS))
    assert generated == 6 + 8 * 6
    assert _texts(fresh) == _texts(large)  # sample j does not depend on the n it was asked with
    assert [p.greedy for p in fresh] == [p.greedy for p in large]
    assert len({s["text"] for p in fresh for s in p.sampled}) > 5  # real, varied samples
    assert 0 < sum(s["correct"] for p in fresh for s in p.sampled) < 36


def test_interrupted_call_loses_at_most_the_batch_in_flight(setup, tmp_path):
    tok, model, task, _ = setup
    reference, _ = _collect(setup, 4, None)
    calls = []

    def stop_on_fourth_batch(sequences):
        calls.append(sequences)
        if len(calls) == 4:
            raise KeyboardInterrupt

    cache = open_cache(tmp_path, model, tok, task, SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        _collect(setup, 4, cache, progress=stop_on_fourth_batch)
    done = sum(calls[:3])  # three batches were written before the interrupt
    with open(cache.file, "a") as fh:
        fh.write('{"problem_id": "0", "kind": "sa')  # and a line cut short by the kill
    resumed, generated = _collect(setup, 4, open_cache(tmp_path, model, tok, task, SETTINGS))
    assert generated == 6 * 5 - done
    assert _texts(resumed) == _texts(reference)


def test_cache_key_follows_the_weights(setup, tmp_path):
    tok, model, task, _ = setup
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path / "ckpt")
    assert model_fingerprint(loaded, loaded_tok) == model_fingerprint(model, tok)
    with torch.no_grad():
        loaded.model.norm.weight.add_(1e-3)
    assert model_fingerprint(loaded, loaded_tok) != model_fingerprint(model, tok)
    a = open_cache(tmp_path / "c", model, tok, task, SETTINGS)
    b = open_cache(tmp_path / "c", loaded, loaded_tok, task, SETTINGS)
    hotter = open_cache(tmp_path / "c", model, tok, task, SamplingSettings(2.0, 4, 4, 11))
    assert len({a.directory, b.directory, hotter.directory}) == 3


def test_evaluate_keeps_its_keys_and_uses_the_cache(setup, tmp_path):
    tok, model, task, problems = setup
    kwargs = dict(verifier=InlineVerifier(task), samples=4, temperature=1.0, max_new_tokens=4, batch_size=4, seed=11)
    first = evaluate(model, tok, task, problems, KVCacheEngine(), cache_dir=tmp_path, **kwargs)
    for key in ("greedy_accuracy", "greedy_accuracy_ci95", "pass@1", "pass@4", "pass@4_ci95", "greedy_length",
                "sampled_length", "scoring_errors", "maj@4", "mean@n", "tokens_per_correct"):
        assert key in first, key
    assert evaluate(model, tok, task, problems, KVCacheEngine(), cache_dir=tmp_path, **kwargs) == first
    assert evaluate(model, tok, task, problems, KVCacheEngine(), **kwargs) == first  # memory-only, same samples
