"""N trainer ranks give the same update as one process on the same batch: 2 gloo ranks, each
computing its share of every forward and backward with the mini-batch's global counts, then
summing gradients, must leave the weights (and the optimizer state) one process leaves,
within float tolerance, for every loss aggregation and for the learner's other forwards
(reference, entropies, critic). And a rank that stalls ends the other's wait with an error
naming the collective, never a hang."""

from __future__ import annotations

import datetime
import os
import random
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from rlvr.algorithms import LOSS_AGGREGATIONS
from rlvr.config import load_config
from rlvr.distributed import SINGLE, CollectiveTimeout, World
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks import Problem
from rlvr.training.rl import Learner

BASE = ["rl.mini_batches=2", "rl.micro_batch_size=3", "rl.epochs=2", "rl.lr=3e-3", "rollout.max_new_tokens=12",
        "threads=1"]
VARIANTS = {
    **{f"loss_agg={name}": [f"algorithm.loss_agg={name}"] for name in LOSS_AGGREGATIONS.names()},
    "kl+entropy": ["algorithm.kl.coef=0.1", "algorithm.kl.placement=loss", "algorithm.entropy.coef=0.01"],
    # apart: a token whose entropy sits at the top-20% threshold can flip with the last bit of
    # a forward computed on fewer rows, and a flipped token moves the update by more than rounding
    "top_entropy": ["algorithm.top_entropy_fraction=0.5"],
    "tis": ["algorithm.tis_cap=2.0"],
    "ppo_gae_critic": ["algorithm.advantage=gae", "algorithm.loss_agg=token_mean"],
}


def _trajectories(seed: int = 0) -> list[Trajectory]:
    """13 samples in 4 groups (an odd count: ranks get unequal shares), random tokens and
    rewards, behaviour log-probs near a tiny model's, some responses masked in part."""
    rng = random.Random(seed)
    out = []
    for row in range(13):
        group = row // 4
        prompt = [rng.randrange(4, 40) for _ in range(3 + group)]
        response = [rng.randrange(4, 40) for _ in range(rng.randrange(2, 12))]
        mask = [int(rng.random() > 0.1) for _ in response]
        out.append(Trajectory(problem=Problem(id=f"p{group}", prompt="x", answer="1"), group=group, prompt_ids=prompt,
                              response_ids=response, logprobs=[-3.7 + rng.uniform(-0.3, 0.3) for _ in response],
                              loss_mask=mask, finish_reason="stop", reward=float(rng.random() > 0.5) + rng.random() / 4))
    return out


def _learn(overrides: list[str], world: World, steps: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    config = load_config(None, [*BASE, *overrides])
    learner = Learner.build(model, config, tokenizer.pad_token_id, world=world)
    metrics = []
    for step in range(steps):
        trajectories = _trajectories(step)
        batch, stats = learner.prepare(trajectories)
        metrics.append({**stats, **learner.update(batch, step, trajectories)})
    state = {f"policy.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    if learner.critic is not None:
        state.update({f"critic.{k}": v.detach().clone() for k, v in learner.critic.state_dict().items()})
    for index, moments in learner.optimizer.state_dict()["state"].items():
        state[f"adam.{index}"] = moments["exp_avg_sq"].clone()
    state["metrics"] = metrics
    return state


def _rank(rank: int, size: int, port: int, overrides: list[str], out: str, stall: float) -> None:
    timeout = 5 if stall else 60
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=size,
                                         timeout=datetime.timedelta(seconds=timeout))
    world = World(rank=rank, size=size, timeout_s=timeout)
    try:
        if stall and rank == 1:
            time.sleep(stall)  # rank 1 never joins in time
            os._exit(0)
        try:
            state = _learn(overrides, world)
        except CollectiveTimeout as err:
            torch.save({"error": str(err)}, out)
            os._exit(0)  # a process group with a collective in flight aborts in its destructor
        if rank == 0:
            torch.save(state, out)
    finally:
        if not stall:
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_ranks(tmp_path, overrides, size=2, stall=0.0):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_rank, args=(size, _free_port(), overrides, out, stall), nprocs=size, start_method="spawn",
                       join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_ranks_update_as_one_process(tmp_path, variant):
    overrides = VARIANTS[variant]
    one = _learn(overrides, SINGLE)
    two = _with_ranks(tmp_path, overrides)
    assert one.keys() == two.keys()
    start = _learn(overrides, SINGLE, steps=0)
    moved = 0.0
    for key in one:
        if key == "metrics":
            continue
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=f"{variant}: {key}")
        if key.startswith("policy."):
            moved = max(moved, float((one[key] - start[key]).abs().max()))
    assert moved > 1e-3  # the updates did move the weights: equality is not two no-ops
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        for key in ("loss", "grad_norm", "entropy", "clip_frac", "kl", "value_loss", "kl_rollout"):
            if key in m1:
                assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-6), (variant, key)


def test_a_stalled_rank_ends_the_others_wait_with_the_collective_named(tmp_path):
    t0 = time.time()
    result = _with_ranks(tmp_path, [], stall=12.0)
    assert "did not complete within distributed.timeout_s=5 s: another rank stalled" in result["error"]
    assert "rank 0/2: RL step 1: summing gradients" in result["error"] and time.time() - t0 < 40
