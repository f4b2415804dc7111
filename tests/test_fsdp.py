"""``distributed.strategy: fsdp``: 2 gloo ranks with FSDP2-sharded policy, reference and
critic update as one process on the same batch (weights and both Adam moments within the
replicate test's tolerances) for every loss aggregation, KL + entropy, TIS and PPO-GAE's
critic; each rank holds only its shard of the optimizer state; the sampler's whole copy
holds the trained weights after every step (never a stale copy); and the trainer state the
ranks write sharded loads into a learner with another number of ranks."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rlvr.algorithms import LOSS_AGGREGATIONS
from rlvr.config import load_config
from rlvr.distributed import SINGLE, World
from rlvr.distributed.fsdp import SHARDS, full_module_state, full_optimizer_state, is_sharded
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


def _learn(overrides: list[str], world: World, steps: int = 2, shards: str | None = None) -> dict:
    """``steps`` RL updates on fixed batches; the trained weights and Adam moments, whole,
    and (FSDP) what each step's sampler copy held and this rank's optimizer shard size;
    with ``shards``, the learner's sharded trainer state written there (every rank)."""
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
        state[f"adam.{index}.step"] = moments["step"].clone()
    local = sum(m["exp_avg"].to_local().numel() if hasattr(m["exp_avg"], "to_local") else m["exp_avg"].numel()
                for m in learner.optimizer.state.values())
    if shards is not None:
        learner.save_shards(Path(shards) / SHARDS)
    return {"state": state, "stale": stale, "sharded": is_sharded(learner.policy), "adam_local_numel": local,
            "params": sum(p.numel() for p in model.parameters()), "trainer_state": learner.state_dict()}


def _rank(rank: int, size: int, port: int, out: str, names: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size, timeout=datetime.timedelta(seconds=60))
    try:
        world = World(rank=rank, size=size, timeout_s=60)
        results = {name: _learn(VARIANTS[name], world, shards=f"{out}.{name}" if name == "kl+entropy" else None)
                   for name in names}
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
    results = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    results[0]["kl+entropy"]["checkpoint"] = Path(f"{out}.kl+entropy")
    return results


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


def test_sharded_trainer_state_resumes_in_one_process(two_ranks):
    """The FSDP ranks' checkpointed learner state: the tensors left out of the pickled state
    and written by torch.distributed.checkpoint, one file per rank; one process reads them
    back whole (resume with another number of ranks): the 2-rank run's Adam moments exactly,
    and the KL reference (the initial model)."""
    result = two_ranks[0]["kl+entropy"]
    saved, checkpoint = result["trainer_state"], result["checkpoint"]
    assert saved["shards"] == SHARDS and not {"optimizer", "reference"} & saved.keys()
    assert sorted(p.name for p in (checkpoint / SHARDS).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    config = load_config(None, [*BASE, *VARIANTS["kl+entropy"]])
    learner = Learner.build(model, config, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="read from its checkpoint directory"):
        learner.load_state_dict(saved)
    learner.load_state_dict(saved, checkpoint)
    again = learner.state_dict()
    assert "shards" not in again and again["kl_coef"] == saved["kl_coef"]
    moments = again["optimizer"]["state"]
    assert len(moments) == len([k for k in result["state"] if k.endswith(".exp_avg")])
    for index, values in moments.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):  # (not the zero-gradient step that initialised the state)
            assert torch.equal(values[key], result["state"][f"adam.{index}.{key}"]), (index, key)
    assert any(float(v["exp_avg"].abs().max()) > 0 for v in moments.values())
    assert all(torch.equal(again["reference"][k], v) for k, v in initial.items())
