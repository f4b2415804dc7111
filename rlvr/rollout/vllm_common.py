"""What rlvr's two vLLM engines share: the colocated ``VLLMEngine`` (``vllm_engine.py``) and
the server client ``VLLMServerEngine`` (``vllm_server.py``) sample with the same request
rounds (seeds drawn from the caller's generator, multi-token stop sequences resumed, the
same finish reasons), send weights in the same buckets and check a sync with the same
per-tensor digests, computed in vLLM's worker by ``worker_checksums``. Nothing here
imports vLLM at module level: the trainer side needs only torch."""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from rlvr.rollout.engine import Generation, eos_ids

MAX_SEED = 2**31 - 1  # vLLM's CPU sampler draws its per-step seeds below 2**31


class WeightSyncError(RuntimeError):
    """The engine's weights are not the trainer's: a skipped, partial or corrupted sync."""


class EngineHangError(TimeoutError):
    """A call into vLLM did not return within its timeout (the engine is unusable after it)."""


def tensor_digest(tensor: torch.Tensor, dtype: torch.dtype) -> str:
    """SHA-256 of ``tensor``'s values in ``dtype`` (the engine's weight dtype), row-major.
    ``+ 0`` folds -0.0 into +0.0: a weight read back through a matmul loses the sign of zero."""
    canonical = (tensor.detach().to("cpu", dtype) + 0).contiguous()
    return hashlib.sha256(canonical.view(-1).view(torch.uint8).numpy()).hexdigest()


def expected_checksum(named_tensors: Iterable[tuple[str, torch.Tensor]],
                      dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """The digests ``weights_checksum`` must return once the trainer's HF-named tensors (a
    model's ``named_parameters()`` or ``state_dict().items()``) are loaded into an engine
    whose weights are ``dtype``: ``{name: tensor_digest(tensor, dtype)}``."""
    return {name: tensor_digest(tensor, dtype) for name, tensor in named_tensors}


def effective_weight(module: torch.nn.Module, param: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The [out, in] matrix ``module``'s kernel multiplies with. On CPU vLLM prepacks linear
    weights into oneDNN/SGL kernels (the parameter left empty) and the LM head keeps a packed
    copy beside its parameter; the identity rows through ``cpu_linear`` read it back exactly
    (one product per element, the rest zeros)."""
    in_features = param.shape[1] if param.numel() else int(module.input_size_per_partition)
    dtype = param.dtype
    columns = []
    with torch.inference_mode():
        for start in range(0, in_features, chunk):
            rows = min(chunk, in_features - start)
            eye = torch.zeros((rows, in_features), dtype=dtype)
            eye[:, start:start + rows] = torch.eye(rows, dtype=dtype)
            columns.append(module.cpu_linear(eye, param, None))  # [rows, out]
    return torch.cat(columns).t()


def worker_checksums(self: Any) -> dict[str, Any]:
    """Per-HF-tensor digests of the weights this worker computes with (see the module doc)."""
    from vllm.distributed import get_tensor_model_parallel_world_size
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    if get_tensor_model_parallel_world_size() != 1:
        raise NotImplementedError("weights_checksum reads whole tensors: tensor_parallel_size must be 1")
    model = self.model_runner.get_model()
    packed = dict(getattr(model, "packed_modules_mapping", None) or {})
    # every digest at the dtype weights are loaded in (a kernel may keep a bias in float32)
    dtype = self.vllm_config.model_config.dtype
    digests: dict[str, str] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            value = param.detach()
            kernel_holds_it = hasattr(module, "cpu_linear") and param_name == "weight" and (
                value.numel() == 0 or isinstance(module, ParallelLMHead))
            if kernel_holds_it:
                value = effective_weight(module, value)
            if isinstance(module, VocabParallelEmbedding):
                value = value[: module.org_vocab_size]  # padded rows are not the model's
            parts = packed.get(module_name.rsplit(".", 1)[-1])
            if parts and param_name in ("weight", "bias"):
                sizes = list(getattr(module, "output_sizes", None) or ())
                if len(sizes) != len(parts) or sum(sizes) != value.shape[0]:
                    raise NotImplementedError(f"cannot split fused parameter {name} into {parts}")
                prefix = module_name.rsplit(".", 1)[0]
                for part, piece in zip(parts, torch.split(value, sizes)):
                    digests[f"{prefix}.{part}.{param_name}"] = tensor_digest(piece, dtype)
            else:
                digests[name] = tensor_digest(value, dtype)
    return {"digests": digests, "dtype": str(dtype).removeprefix("torch.")}


def buckets(named_tensors: Iterable[tuple[str, torch.Tensor]],
             bucket_bytes: int) -> Iterable[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of (name, tensor) of about ``bucket_bytes`` each (a larger tensor
    goes alone); the tensors are passed by reference, detached."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor.detach()))
        size += nbytes
    if bucket:
        yield bucket


def all_stacks() -> str:
    """Every thread's Python stack, from faulthandler (written to stderr as well)."""
    with tempfile.TemporaryFile(mode="w+") as dump:
        faulthandler.dump_traceback(file=dump, all_threads=True)
        dump.seek(0)
        text = dump.read()
    sys.stderr.write(text)
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    legend = ", ".join(f"{ident:#x}={name}" for ident, name in names.items() if ident is not None)
    return f"{text}threads: {legend}"


def compare_checksums(expected: dict[str, str], actual: dict[str, str], version: int) -> None:
    """``VLLMEngine.verify_sync``'s comparison: the first parameter that differs, is missing
    on the engine, or was not sent by the trainer, named in a ``WeightSyncError``."""
    if "lm_head.weight" in actual and "lm_head.weight" not in expected:
        # a tied LM head: the trainer lists it once, as the embedding
        expected = {**expected, "lm_head.weight": expected.get("model.embed_tokens.weight", "")}
    for name, digest in expected.items():
        if name not in actual:
            raise WeightSyncError(f"weight sync check at version {version}: the engine has no parameter {name} "
                                  f"(its names: {', '.join(sorted(actual)[:8])}, ...)")
        if actual[name] != digest:
            raise WeightSyncError(f"weight sync check at version {version}: parameter {name} differs between "
                                  "the engine and the trainer (a stale, skipped or corrupted sync)")
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise WeightSyncError(f"weight sync check at version {version}: the engine has parameters the trainer "
                              f"did not send: {', '.join(extra[:8])}")


# --- sampling ------------------------------------------------------------------------------

@dataclass
class RoundRequest:
    """One row's request in a sampling round: the prompt with the row's tokens so far, the
    tokens it may still add, and its seed (None: greedy, or no generator)."""

    token_ids: list[int]
    max_tokens: int
    seed: int | None


# (sampled token ids, their log-probs, vLLM's finish reason "stop" | "length") per request
RoundSampler = Callable[[list[RoundRequest], list[int]], list[tuple[list[int], list[float], str]]]


def generate_in_rounds(prompts: list[list[int]], sample: RoundSampler, *, max_new_tokens: int, temperature: float,
                       top_p: float, eos_token_id: int | Sequence[int], generator: torch.Generator | None,
                       stop_sequences: Sequence[Sequence[int]], vocab_size: int, allow_truncated_logprobs: bool,
                       engine_name: str) -> list[Generation]:
    """One ``Generation`` per prompt, by ``sample(requests, stop_ids)`` rounds on a vLLM engine.

    vLLM stops on single token ids, so the stop ids are the EOS ids and the last token of every
    stop sequence; a row that stopped on such a token without the whole sequence is sent again
    with its tokens so far as the prompt (the prefix cache makes that a short prefill), so a
    row ends exactly where ``KVCacheEngine``'s token match would end it. With a ``generator``
    each request of a sampled round gets a seed drawn from it: equal generator states give
    equal samples; greedy decoding draws nothing. ``top_p < 1`` is refused unless
    ``allow_truncated_logprobs``: vLLM's log-probs would then be of the renormalised nucleus.
    """
    if not prompts:
        return []
    lengths = [len(p) for p in prompts]
    if 0 in lengths:
        raise ValueError(f"prompt {lengths.index(0)} is empty")
    if temperature > 0 and top_p < 1.0 and not allow_truncated_logprobs:
        raise ValueError(
            f"top_p={top_p} < 1: vLLM's log-probs would be of the renormalised nucleus (log pi_T - log "
            "nucleus mass), not log pi_T as the Generation contract and the trainer have it; use top_p=1.0 "
            f"or {engine_name}(..., allow_truncated_logprobs=True)")
    eos = eos_ids(eos_token_id)
    stops = [[int(t) for t in seq] for seq in stop_sequences if len(seq)]
    # ids outside the vocabulary can never be sampled (and vLLM rejects them as stop ids)
    stop_ids = [t for t in dict.fromkeys(eos + [seq[-1] for seq in stops]) if 0 <= t < vocab_size]
    responses: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    reasons = ["length"] * len(prompts)
    pending = list(range(len(prompts)))
    while pending:  # more than one round only for rows stopped on a partial stop sequence
        if temperature > 0 and generator is not None:
            seeds: list[int | None] = torch.randint(0, MAX_SEED, (len(pending),), generator=generator,
                                                    device=generator.device).tolist()
        else:
            seeds = [None] * len(pending)
        requests = [RoundRequest([int(t) for t in prompts[i]] + responses[i], max_new_tokens - len(responses[i]),
                                 seed) for i, seed in zip(pending, seeds)]
        still = []
        for i, (ids, lps, finish) in zip(pending, sample(requests, stop_ids)):
            responses[i] += ids
            logprobs[i] += lps
            response = responses[i]
            if response and response[-1] in eos:
                reasons[i] = "eos"
            elif any(len(seq) <= len(response) and response[-len(seq):] == seq for seq in stops):
                reasons[i] = "stop"
            elif finish == "stop" and len(response) < max_new_tokens:
                still.append(i)  # a stop sequence's last token without the rest of it: go on
        pending = still
    return [Generation(response_ids=r, logprobs=lp, finish_reason=reason)
            for r, lp, reason in zip(responses, logprobs, reasons)]


# --- a run's engine ------------------------------------------------------------------------

def check_top_p(config: Any) -> None:
    """``rollout.top_p < 1`` is refused with either vLLM engine (see ``generate_in_rounds``)."""
    if config.rollout.top_p < 1.0:
        raise ValueError(f"rollout.top_p: {config.rollout.top_p} with rollout.engine vllm: vLLM's log-probs are "
                         "then renormalised over the nucleus, not the sampling distribution the trainer "
                         "recomputes; use top_p: 1.0")


def engine_settings(config: Any, model: Any) -> dict[str, Any]:
    """The keyword arguments both engines take from a run's config (``rollout.vllm``)."""
    v = config.rollout.vllm
    return dict(dtype=config.model.dtype if v.dtype == "auto" else v.dtype, seed=config.seed,
                max_model_len=getattr(model.config, "max_position_embeddings", None),
                max_num_seqs=v.max_num_seqs, gpu_memory_utilization=v.gpu_memory_utilization,
                tensor_parallel_size=v.tensor_parallel_size, enable_prefix_caching=v.enable_prefix_caching,
                enforce_eager=v.enforce_eager, kv_cache_memory_bytes=int(v.kv_cache_gib * 2**30),
                startup_timeout_s=v.startup_timeout_s, generate_timeout_s=v.generate_timeout_s,
                call_timeout_s=v.call_timeout_s)


@contextlib.contextmanager
def temporary_checkpoint(model: Any, tokenizer: Any) -> Iterator[str]:
    """``model`` and ``tokenizer`` saved to a directory that is deleted on exit (an engine
    reads its starting weights from it)."""
    with tempfile.TemporaryDirectory(prefix="rlvr-vllm-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        yield tmp
