"""FSDP2 sharding of the trainer ranks (``distributed.strategy: fsdp``).

With several trainer ranks and ``fsdp``, the modules the learner trains or reads (policy,
KL reference, critic) are sharded with ``torch.distributed.fsdp.fully_shard``: one FSDP unit
per decoder layer, then the root (embeddings, final norm, LM head). Each rank holds 1/N of
every parameter, of its gradient and of AdamW's moments (the optimizer is built over the
sharded ``DTensor`` parameters); a layer's parameters are all-gathered for its forward and
backward and freed after, and gradients are reduce-scattered. The reduction is a plain sum
(``set_gradient_divide_factor(1)``, sum-only collectives): every rank's loss already carries
the mini-batch's global token/sequence counts, so the summed gradient is one process's, as
with ``replicate``. The mixed-precision policy follows ``model.dtype``: float32 master
weights, forward/backward in ``model.dtype`` (bf16 params on GPU), gradients reduced in
float32.

Rollouts, evaluation and the HF-format checkpoints read a whole, unsharded model (the own
engine reads layer weights directly, so FSDP's unshard hooks would never run there): the
pipeline's ``model`` stays whole on every rank, the trainer shards a copy of it, and after
every update each rank gathers the new weights into its whole copy (``copy_full_weights``,
called where the sampler takes the learner's weights). The trainer state that exists only in
shards (AdamW's moments, the sharded KL reference and critic) is checkpointed sharded with
``torch.distributed.checkpoint`` (``save_sharded_state``: each rank writes its own shards,
no rank ever holds the whole optimizer state) and read back with resharding
(``load_sharded_state``), so a run resumes exactly with the same ranks and also with any other
number of ranks or with one process. The policy's weights go to the usual whole HF-format
checkpoint, which evaluation and ``from_pretrained`` read.

Every function here that gathers is a collective: every rank calls it, in the same order.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from rlvr.distributed.world import World


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` (or a submodule) was sharded by ``fully_shard``."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False  # one process: nothing is sharded
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def uses_fsdp(config: Any, world: World) -> bool:
    """``distributed.strategy: fsdp`` with more than one trainer rank (one process ignores it)."""
    return world.distributed and config.distributed.strategy == "fsdp"


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF causal LM, its base model or a ``ValueModel`` trunk
    (``model.layers`` in Llama/Qwen/Mistral layouts, ``transformer.h`` in GPT-2's)."""
    for owner in (module, getattr(module, "model", None), getattr(module, "trunk", None),
                  getattr(module, "base_model", None), getattr(module, "transformer", None)):
        if owner is None:
            continue
        for name in ("layers", "h"):
            layers = getattr(owner, name, None)
            if isinstance(layers, nn.ModuleList) and len(layers):
                return list(layers)
        inner = getattr(owner, "model", None)
        if inner is not None and inner is not owner and isinstance(getattr(inner, "layers", None), nn.ModuleList):
            return list(inner.layers)
    return []


_MESHES: dict[tuple[str, int], Any] = {}


def _mesh(device: torch.device, size: int):
    from torch.distributed.device_mesh import init_device_mesh

    key = (device.type, size)
    if key not in _MESHES:
        _MESHES[key] = init_device_mesh(device.type, (size,))
    return _MESHES[key]


def shard(module: nn.Module, world: World, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``fully_shard`` ``module`` in place (each decoder layer, then the root) over the trainer
    ranks, with gradients summed (not averaged) across them and a mixed-precision policy for
    ``dtype`` (float32: none). Its parameters become ``DTensor`` shards; build the optimizer
    after this."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if dtype == torch.float16:
        raise ValueError("distributed.strategy=fsdp: model.dtype=float16 (dynamic loss scaling over sharded "
                         "gradients) is not supported; use bfloat16 or float32")
    device = next(module.parameters()).device
    mesh = _mesh(device, world.size)
    low = dtype if dtype != torch.float32 else None
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low is not None else None)
    for layer in decoder_layers(module):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)  # sum: the losses carry the global normalisers
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM; NCCL sums exactly too
    return module


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, _dtensor()) else tensor


def full_module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every shard gathered into the whole tensor, on every rank
    (a plain module: its own state dict)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, torch.Tensor] = {}  # tied weights: gathered once
    for name, tensor in module.state_dict().items():
        key = id(tensor)
        if key not in seen:
            seen[key] = _full(tensor.detach())
        out[name] = seen[key]
    return out


@torch.no_grad()
def copy_full_weights(target: nn.Module, sharded: nn.Module) -> None:
    """Gather ``sharded``'s weights into the whole module ``target`` of the same
    architecture, in place (its tensors keep their identity: an engine holding them sees
    the new values)."""
    destination = target.state_dict()
    for name, tensor in full_module_state(sharded).items():
        destination[name].copy_(tensor)


@torch.no_grad()
def load_full_module_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)`` from whole tensors, also when ``module`` is sharded
    (each rank keeps its shard of each tensor)."""
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    from torch.distributed.tensor import distribute_tensor

    DTensor = _dtensor()
    own = module.state_dict()
    missing = own.keys() - state.keys()
    if missing:
        raise KeyError(f"state dict lacks {sorted(missing)[:3]}")
    for name, target in own.items():
        value = state[name]
        if isinstance(target, DTensor):
            local = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements,
                                      src_data_rank=None).to_local()
            target.to_local().copy_(local)
        else:
            target.copy_(value)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with sharded moments gathered into whole tensors: the
    format a one-process or ``replicate`` run writes (parameter indices, whole moments)."""
    state = optimizer.state_dict()
    DTensor = _dtensor()
    if not any(isinstance(v, DTensor) for moments in state["state"].values() for v in moments.values()):
        return state
    return {**state, "state": {index: {key: _full(value) for key, value in moments.items()}
                               for index, moments in state["state"].items()}}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` from whole moments (any strategy's, any number of
    ranks'), each rank keeping its shard of a sharded parameter's moments."""
    from torch.distributed.tensor import distribute_tensor

    DTensor = _dtensor()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        optimizer.load_state_dict(state)
        return
    moments_by_index: dict[Any, dict[str, Any]] = {}
    for index, moments in state["state"].items():
        param = params[int(index)]
        if isinstance(param, DTensor):
            moments = {key: distribute_tensor(value.to(param.device), param.device_mesh, param.placements,
                                              src_data_rank=None)
                       if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == param.shape
                       and value.dim() > 0 else value
                       for key, value in moments.items()}
        moments_by_index[index] = moments
    optimizer.load_state_dict({**state, "state": moments_by_index})


SHARDS = "trainer_shards"  # a checkpoint's folder of sharded trainer state

# A sharded checkpoint's part: a module (its state dict) or a module with its optimizer (the
# optimizer's state, keyed by parameter names so that it maps onto any sharding of the module).
ShardedPart = Union[nn.Module, "tuple[nn.Module, torch.optim.Optimizer]"]


def _distributed_state(parts: dict[str, ShardedPart]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {name: get_optimizer_state_dict(*part) if isinstance(part, tuple) else get_model_state_dict(part)
            for name, part in parts.items()}


@contextlib.contextmanager
def _one_process_is_meant():
    """Without a process group DCP warns that it assumes one process: that is what is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_sharded_state(directory: Path, parts: dict[str, ShardedPart]) -> None:
    """Write ``parts`` (modules and optimizers, sharded or not) to ``directory`` with
    ``torch.distributed.checkpoint``: every rank writes the shards it holds (one file per
    rank) and rank 0 the metadata, after all ranks' writes are done. A collective: every rank
    calls it with the same ``directory``, in the same order."""
    import torch.distributed.checkpoint as dcp

    with _one_process_is_meant():
        dcp.save(_distributed_state(parts), checkpoint_id=str(directory))


def load_sharded_state(directory: Path, parts: dict[str, ShardedPart]) -> None:
    """Load what ``save_sharded_state`` wrote into ``parts``, resharded to how they are held
    now (another number of ranks, or whole tensors in one process). Every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _distributed_state(parts)  # (an optimizer without state yet gets it, to be overwritten)
    with _one_process_is_meant():
        dcp.load(state, checkpoint_id=str(directory))
    for name, part in parts.items():
        if isinstance(part, tuple):
            set_optimizer_state_dict(part[0], part[1], state[name])
        else:
            set_model_state_dict(part, state[name])
