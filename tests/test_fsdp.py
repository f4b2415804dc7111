"""``distributed.strategy: fsdp``: 2 gloo ranks with FSDP2-sharded policy, reference and
critic update as one process on the same batch (weights and both Adam moments within the
replicate test's tolerances) for every loss aggregation, KL + entropy, TIS and PPO-GAE's
critic; each rank holds only its shard of the optimizer state; the sampler's whole copy
holds the trained weights after every step (never a stale copy); and the gathered trainer
state loads into a learner with another number of ranks."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.multiprocessing as mp

from rlvr.algorithms import LOSS_AGGREGATIONS
from rlvr.config import load_config
from rlvr.distributed import SINGLE, World
from rlvr.distributed.fsdp import full_module_state, full_optimizer_state, is_sharded
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.rollout.sampler import Sampler
from rlvr.training.rl import Learner
from test_distributed_learner import BASE, _free_port, _trajectories

VARIANTS = {
    **{f"loss_agg={name}": [f"algorithm.loss_agg={name}"] for name in LOSS_AGGREGATIONS.names()},
    "kl+entropy": ["algorithm.kl.coef=0.1", "algorithm.kl.placement=loss", "algorithm.entropy.coef=0.01"],
    "tis": ["algorithm.tis_cap=2.0"],
    "ppo_gae_critic": ["algorithm.advantage=gae", "algorithm.loss_agg=token_mean"],
}
FSDP = ["distributed.strategy=fsdp"]


def _learn(overrides: list[str], world: World, steps: int = 2) -> dict:
    """``steps`` RL updates on fixed batches; the trained weights and Adam moments, whole,
    and (FSDP) what each step's sampler copy held and this rank's optimizer shard size."""
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    config = load_config(None, [*BASE, *FSDP, *overrides])
    learner = Learner.build(model, config, tokenizer.pad_token_id, world=world)
    sampler = Sampler(KVCacheEngine(), model, tokenizer)
    stale = []
    for step in range(steps):
        trajectories = _trajectories(step)
        batch, _ = learner.prepare(trajectories)
        learner.update(batch, step, trajectories)
        sampler.load_weights(learner.policy, version=step + 1)  # rl_step's sync point
        trained = full_module_state(learner.policy)
        stale += [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, trained[name])]
    state = {f"policy.{k}": v.clone() for k, v in full_module_state(learner.policy).items()}
    if learner.critic is not None:
        state.update({f"critic.{k}": v.clone() for k, v in full_module_state(learner.critic).items()})
    for index, moments in full_optimizer_state(learner.optimizer)["state"].items():
        state[f"adam.{index}.exp_avg"] = moments["exp_avg"].clone()
        state[f"adam.{index}.exp_avg_sq"] = moments["exp_avg_sq"].clone()
    local = sum(m["exp_avg"].to_local().numel() if hasattr(m["exp_avg"], "to_local") else m["exp_avg"].numel()
                for m in learner.optimizer.state.values())
    return {"state": state, "stale": stale, "sharded": is_sharded(learner.policy), "adam_local_numel": local,
            "params": sum(p.numel() for p in model.parameters()), "trainer_state": learner.state_dict()}


def _rank(rank: int, size: int, port: int, out: str, names: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size, timeout=datetime.timedelta(seconds=60))
    try:
        world = World(rank=rank, size=size, timeout_s=60)
        results = {name: _learn(VARIANTS[name], world) for name in names}
        if rank == 0:
            results = {name: {**r, "trainer_state": r["trainer_state"] if name == "kl+entropy" else None}
                       for name, r in results.items()}
        torch.save(results, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fsdp") / "ranks")
    mp.start_processes(_rank, args=(2, _free_port(), out, list(VARIANTS)), nprocs=2, start_method="spawn", join=True)
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]


@pytest.fixture
def same_forward(monkeypatch):
    """One process through the model's own forward, as the sharded ranks compute (the packed
    forward reads layer weights FSDP has not gathered): the same update up to rounding. (The
    packed forward's rounding differs from the model's by ~1e-7, which Adam's normalisation
    lifts to ~5e-6 on weights whose gradients are near 0: beyond atol 2e-6; test_packed_forward
    checks the packed forward against the model's.)"""
    monkeypatch.setattr("rlvr.training.batch.packed_unsupported_reason",
                        lambda model: "compared with sharded ranks")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_fsdp_ranks_update_as_one_process(two_ranks, same_forward, variant):
    one = _learn(VARIANTS[variant], SINGLE)["state"]
    two = two_ranks[0][variant]
    assert two["sharded"] and one.keys() == two["state"].keys()
    start = _learn(VARIANTS[variant], SINGLE, steps=0)["state"]
    moved = 0.0
    for key in one:
        torch.testing.assert_close(two["state"][key], one[key], rtol=1e-4, atol=2e-6, msg=f"{variant}: {key}")
        if key.startswith("policy."):
            moved = max(moved, float((one[key] - start[key]).abs().max()))
    assert moved > 1e-3  # the updates did move the weights: equality is not two no-ops
    for rank in range(2):  # the sampler's whole copy held the trained weights after every step, on every rank
        assert two_ranks[rank][variant]["stale"] == [], (rank, two_ranks[rank][variant]["stale"][:3])


def test_each_rank_holds_half_the_optimizer_state(two_ranks):
    for rank in range(2):
        result = two_ranks[rank]["loss_agg=token_mean"]
        assert 0.45 * result["params"] <= result["adam_local_numel"] <= 0.55 * result["params"], result
    one = _learn([], SINGLE, steps=1)
    assert not one["sharded"] and one["adam_local_numel"] == one["params"]


def test_gathered_trainer_state_resumes_one_process(two_ranks):
    """The FSDP ranks' checkpointed learner state (gathered optimizer, reference) is the
    format one process loads: resume with another number of ranks."""
    saved = two_ranks[0]["kl+entropy"]["trainer_state"]
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    config = load_config(None, [*BASE, *VARIANTS["kl+entropy"]])
    learner = Learner.build(model, config, tokenizer.pad_token_id)
    learner.load_state_dict(saved)
    again = learner.state_dict()
    for index, moments in saved["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(again["optimizer"]["state"][index][key], value), (index, key)
    assert all(torch.equal(again["reference"][k], v) for k, v in saved["reference"].items())
