"""The run's process layout in one line, printed by ``rlvr train`` at start: where the
trainer ranks run and how they hold the model, which processes generate rollouts, how the
weights reach them, and how far rollouts may lag the trainer."""

from __future__ import annotations

from typing import Any

from rlvr.distributed.ray_engines import hosts_from_env
from rlvr.distributed.world import World


def describe_layout(config: Any, world: World, device: str) -> str:
    """``layout: trainer ...; rollouts ...; ...`` for ``config`` on ``world`` (``device``: the
    trainer's device type, cpu or cuda)."""
    nodes = max(1, world.size // max(1, world.local_size))
    backend = "nccl" if device == "cuda" else "gloo"
    strategy = getattr(config.distributed, "strategy", "replicate")
    if world.distributed:
        placed = "placed by Ray, " if getattr(config.distributed, "launcher", "torchrun") == "ray" else ""
        trainer = (f"{world.size} trainer ranks ({placed}{backend}, {device}"
                   + (f", {nodes} nodes x {world.local_size}" if nodes > 1 else "")
                   + f"; {'FSDP2-sharded' if strategy == 'fsdp' else 'replicated'} model and optimizer)")
    else:
        trainer = f"1 trainer process ({device})"
    engine = config.rollout.engine
    if engine == "vllm":
        v = config.rollout.vllm
        if v.mode == "server":
            urls = [u for u in (v.url or "").split(",") if u.strip()]
            starter = "rank 0" if world.distributed else "the trainer"
            if hosts_from_env() is not None:
                starter += ", each in a Ray actor of its own placement-group bundle"
            where = (f"{len(urls)} vLLM server(s) at {', '.join(u.strip() for u in urls)}" if urls else
                     f"{v.engines} vLLM server process(es) started by {starter}")
            rollouts = (f"{where}, shared by {'every rank' if world.distributed else 'the trainer'}; weights pushed "
                        f"after each update{' by rank 0' if world.distributed else ''} as safetensors buckets, "
                        f"version + checksum checked every {v.verify_every} sync(s)")
        else:
            rollouts = (f"a vllm.LLM inside {'each trainer rank' if world.distributed else 'the trainer process'}, "
                        f"weights pushed after each update")
    else:
        rollouts = (f"the '{engine}' engine inside {'each trainer rank' if world.distributed else 'the trainer process'}"
                    ", sampling from the trainer's weights")
    if world.distributed:
        rollouts += "; each rank generates whole groups, gathered in order"
    staleness = getattr(config.rl, "max_staleness", 0)
    pace = "synchronous (each step samples with the weights it trains)" if staleness == 0 else \
        f"asynchronous, rollouts up to {staleness} weight version(s) behind (rl.max_staleness)"
    return f"layout: {trainer}; rollouts: {rollouts}; {pace}"
