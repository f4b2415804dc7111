"""Trainer ranks: the process group and the few collectives the training loop uses.

``rlvr train --nproc N`` (or ``torchrun --nproc-per-node N -m rlvr train``) runs N trainer
processes over ``torch.distributed``: gloo on CPU, NCCL on GPU. Each rank holds the whole
model (data parallel); a step's groups are generated and scored where they fall (a group is
never split), gathered so every rank holds the same batch, and each rank computes the loss
on its share of every mini-batch with the mini-batch's *global* token and sequence counts,
so the summed gradients equal one process's on the same batch (``rlvr.algorithms.losses.
aggregate_loss``). Gradients are summed across ranks before clipping; every rank then takes
the same optimizer step.

Every collective runs under the process group's timeout (``distributed.timeout_s``): a rank
that stalls or dies ends the others' wait with ``CollectiveTimeout`` naming the collective,
after each rank has dumped its threads' stacks to stderr; never a silent hang. A single
process is a ``World`` of size 1 whose collectives do nothing.
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


class CollectiveTimeout(RuntimeError):
    """A collective did not complete: another rank stalled, crashed or was killed."""


@dataclass(frozen=True)
class World:
    """This process's place among the trainer ranks (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    timeout_s: float = 1800.0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory and prints."""
        return self.rank == 0

    # ---------------------------------------------------------------- sharding
    def block(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [start, end) of ``n`` rows (ranks hold ceil(n/size)
        rows each; the last ones may hold fewer or none)."""
        per = -(-n // self.size)
        start = min(n, self.rank * per)
        return start, min(n, start + per)

    def strided(self, items: Sequence[Any]) -> list[Any]:
        """Every ``size``-th item from this rank's index: a share balanced in position (used
        for length-sorted rows, so each rank's micro-batches have similar lengths)."""
        return list(items[self.rank::self.size])

    # ------------------------------------------------------------ collectives
    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as err:  # gloo/NCCL: a timeout, or a peer that closed its connection
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            raise CollectiveTimeout(
                f"rank {self.rank}/{self.size}: {what} did not complete within distributed.timeout_s="
                f"{self.timeout_s:g} s: another rank stalled, crashed or was killed ({' '.join(str(err).split())[:300]})"
            ) from None

    def close(self) -> None:
        """Leave the process group once every rank has finished: a barrier, then
        ``destroy_process_group``. A gloo group left for the interpreter's exit to tear down
        can abort the process (``terminate called without an active exception``) after a run
        that succeeded."""
        if self.distributed and torch.distributed.is_initialized():
            self._run("the closing barrier", torch.distributed.barrier)
            torch.distributed.destroy_process_group()

    def all_gather_objects(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        self._run(what, lambda: torch.distributed.all_gather_object(out, obj))
        return out

    def broadcast_object(self, obj: Any, what: str, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        self._run(what, lambda: torch.distributed.broadcast_object_list(box, src=src))
        return box[0]

    def sum_floats(self, values: Sequence[float], what: str) -> list[float]:
        """Elementwise sums over ranks of equal-length float lists."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        self._run(what, lambda: torch.distributed.all_reduce(tensor))
        return tensor.tolist()

    def sum_grads_(self, modules: Sequence[torch.nn.Module], what: str) -> None:
        """Sum every parameter's gradient over ranks, in place. A parameter that got a
        gradient on no rank keeps ``grad = None`` (as in one process, where the optimizer then
        skips it); one that got it on some ranks only counts zeros for the others."""
        if not self.distributed:
            return
        params = [p for module in modules for p in module.parameters() if p.requires_grad]
        if not params:
            return
        device = params[0].device
        flags = torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float32, device=device)
        self._run(what, lambda: torch.distributed.all_reduce(flags))
        present = [p for p, flag in zip(params, flags.tolist()) if flag > 0]
        for p in present:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in present:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            for bucket in _buckets(group, BUCKET_BYTES):
                flat = torch.cat([p.grad.reshape(-1) for p in bucket])
                self._run(what, lambda: torch.distributed.all_reduce(flat))
                offset = 0
                for p in bucket:
                    count = p.grad.numel()
                    p.grad.copy_(flat[offset:offset + count].view_as(p.grad))
                    offset += count

    def gather_rows(self, block: torch.Tensor, n: int, what: str) -> torch.Tensor:
        """The whole [n, ...] tensor from each rank's ``block`` of rows (``block(n)``)."""
        if not self.distributed:
            return block
        per = -(-n // self.size)
        padded = torch.zeros((per, *block.shape[1:]), dtype=block.dtype, device=block.device)
        padded[:block.shape[0]] = block
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._run(what, lambda: torch.distributed.all_gather(parts, padded.contiguous()))
        return torch.cat(parts)[:n]

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) \
            if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


BUCKET_BYTES = 64 * 2**20  # gradients are summed in flat buckets of about this size


def _buckets(params: list[torch.nn.Parameter], limit: int) -> list[list[torch.nn.Parameter]]:
    buckets: list[list[torch.nn.Parameter]] = [[]]
    size = 0
    for p in params:
        nbytes = p.grad.numel() * p.grad.element_size()
        if buckets[-1] and size + nbytes > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


SINGLE = World()


def launched_ranks() -> int:
    """WORLD_SIZE as torchrun (or ``rlvr train --nproc``) set it; 1 otherwise."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_world(timeout_s: float, device: str = "cpu") -> World:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT); a single process gets ``SINGLE``. gloo on CPU, NCCL on a GPU."""
    size = launched_ranks()
    if size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not torch.distributed.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size, timeout_s=timeout_s)
