"""Scaling out: trainer ranks over torch.distributed (``world``)."""

from rlvr.distributed.world import SINGLE, CollectiveTimeout, World, init_world, launched_ranks

__all__ = ["SINGLE", "CollectiveTimeout", "World", "init_world", "launched_ranks"]
