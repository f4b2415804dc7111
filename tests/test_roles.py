"""The RL loop's roles: the sampler gets versioned weights after every optimizer phase (and
verifies them when it holds its own copy), the log-prob gap between engine and trainer is
measured every step and stops a run that samples from the wrong weights, the learner
computes entropies an engine did not return, and the stage timer adds up."""

from __future__ import annotations

import math
import time

import pytest
import torch

from rlvr.config import load_config
from rlvr.data.sampler import PromptSampler
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.engine import Generation
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.rollout.sampler import Sampler
from rlvr.tasks.addition import AdditionTask
from rlvr.training.judge import Judge
from rlvr.training.rl import EngineMismatchError, Learner, RLRoles, rl_step
from rlvr.training.timing import StageTimer
from rlvr.verify import InlineVerifier


class RecordingEngine(KVCacheEngine):
    """The own engine posing as one that holds its own weights: it records every push and
    verification, and can shift its log-probs or drop its entropies like a foreign engine."""

    owns_weights = True

    def __init__(self, logprob_shift: float = 0.0, entropies: bool = True) -> None:
        super().__init__()
        self.logprob_shift, self.entropies = logprob_shift, entropies
        self.loaded: list[int] = []
        self.verified: list[int] = []

    def generate(self, model, prompts, **kwargs) -> list[Generation]:
        gens = super().generate(model, prompts, **kwargs)
        for g in gens:
            g.logprobs = [x + self.logprob_shift for x in g.logprobs]
            if not self.entropies:
                g.entropies = []
        return gens

    def load_weights(self, named_tensors, version: int) -> None:
        assert all(isinstance(t, torch.Tensor) for _, t in named_tensors)
        self.loaded.append(version)

    def verify_sync(self, named_tensors, version: int) -> None:
        self.verified.append(version)


def _roles(engine, overrides=(), verify_every=1):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    config = load_config(None, ["rl.prompts_per_step=2", "rl.samples_per_prompt=4", "rollout.max_new_tokens=8",
                                "rl.mini_batches=1", "reward.shaping=[{name: random_reward}]", *overrides])
    task = AdditionTask(AdditionTask.Params())
    judge = Judge(task, InlineVerifier(task), tokenizer, config)
    sampler = Sampler(engine, model, tokenizer, verify_every=verify_every)
    return RLRoles(sampler, judge, Learner.build(model, config, tokenizer.pad_token_id),
                   PromptSampler(task, config, frozenset()))


def test_every_step_pushes_versioned_weights_and_verifies_them():
    engine = RecordingEngine()
    roles = _roles(engine, verify_every=2)
    versions = []
    for step in range(4):
        record, trajectories, _ = rl_step(roles, step)
        versions.append({t.policy_version for t in trajectories})
        assert record["loss"] != 0.0  # random rewards: every step learns something
    assert engine.loaded == [1, 2, 3, 4] and roles.sampler.version == 4
    assert engine.verified == [2, 4]  # every verify_every-th sync
    assert versions == [{0}, {1}, {2}, {3}]  # each step samples from the previous step's weights


def test_the_own_engine_and_the_trainer_agree_to_rounding():
    record, _, _ = rl_step(_roles(KVCacheEngine()), 0)
    assert record["logprob_gap_mean"] < 1e-5 and record["logprob_gap_max"] < 1e-4


def test_an_engine_off_the_trainers_weights_stops_the_run():
    roles = _roles(RecordingEngine(logprob_shift=-0.8))
    with pytest.raises(EngineMismatchError, match=r"RL step 1: .* by 0\.8 nats per token on average .*"
                                                  r"rollout.max_logprob_gap=0.5"):
        rl_step(roles, 0)


def test_a_small_gap_is_logged_and_tolerated_and_the_limit_can_be_lifted():
    record, _, _ = rl_step(_roles(RecordingEngine(logprob_shift=-0.3)), 0)
    assert math.isclose(record["logprob_gap_mean"], 0.3, rel_tol=1e-4)
    record, _, _ = rl_step(_roles(RecordingEngine(logprob_shift=-0.8), ["rollout.max_logprob_gap=null"]), 0)
    assert math.isclose(record["logprob_gap_mean"], 0.8, rel_tol=1e-4)


def test_with_truncated_is_the_gap_is_measured_on_the_whole_batch():
    record, _, _ = rl_step(_roles(RecordingEngine(logprob_shift=-0.2), ["algorithm.tis_cap=2.0"]), 0)
    assert math.isclose(record["logprob_gap_mean"], 0.2, rel_tol=1e-4)
    assert math.isclose(record["tis_weight_mean"], math.exp(0.2), rel_tol=1e-4)


def test_the_learner_computes_entropies_an_engine_did_not_return():
    roles = _roles(KVCacheEngine(), ["algorithm.top_entropy_fraction=0.2"])
    problems = roles.prompts.draw(2, 0, 0)
    trajectories = roles.sampler.generate([p for p in problems for _ in range(4)], groups=[0] * 4 + [1] * 4,
                                          max_new_tokens=8, temperature=1.0,
                                          generator=torch.Generator().manual_seed(0))
    roles.judge.score(trajectories)
    given, _ = roles.learner.prepare(trajectories)
    for t in trajectories:
        t.entropies = []  # as vLLM returns them
    recomputed, stats = roles.learner.prepare(trajectories)
    mask = given.target_mask.bool()
    torch.testing.assert_close(recomputed.extras["entropy"][mask], given.extras["entropy"][mask], atol=1e-5, rtol=1e-5)
    assert torch.equal(recomputed.extras["token_weight"], given.extras["token_weight"])
    assert stats["logprob_gap_mean"] < 1e-5  # measured while recomputing


def test_a_local_sampler_refuses_a_foreign_module():
    roles = _roles(KVCacheEngine())
    other = build_tiny_model(build_char_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match="samples from the trainer's own module"):
        roles.sampler.load_weights(other, version=1)


def test_stage_timer_sums_repeated_stages():
    timer = StageTimer()
    for _ in range(2):
        with timer("generation"):
            time.sleep(0.01)
    with timer("update"):
        pass
    metrics = timer.metrics()
    assert set(metrics) == {"time_generation", "time_update"}
    assert 0.02 <= metrics["time_generation"] < 0.5 and metrics["time_update"] < 0.01
    assert timer.elapsed() >= metrics["time_generation"]
