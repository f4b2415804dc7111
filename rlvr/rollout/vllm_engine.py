"""A rollout engine backed by vLLM, colocated: a ``vllm.LLM`` in this process (the ``vllm`` extra).

The engine holds its own copy of the weights, loaded from a Hugging Face checkpoint
directory (the trainer ``save_pretrained``s its model and tokenizer to a temporary directory
to start it) and replaced in place by ``load_weights`` after each optimizer step. Token ids go
in and come out; nothing is re-tokenized. Every call into vLLM runs on one engine thread
under a timeout: a hang becomes an ``EngineHangError`` carrying the stacks of all threads.

What the engine returns, against the ``Generation`` contract (``rlvr.rollout.engine``):

* ``logprobs`` come from vLLM's ``processed_logprobs`` mode: the log-softmax of the logits
  after temperature *and after top-p masking*. At ``top_p == 1`` that is exactly
  log pi_T(token) (the contract's convention); at ``top_p < 1`` it is the log-prob under the
  renormalised nucleus, log pi_T(token) - log(nucleus mass), which no vLLM mode turns back
  into the contract's value (``processed_logits`` masks the tokens outside the nucleus, so
  their normaliser is lost), hence ``generate`` refuses ``top_p < 1`` unless the engine was
  built with ``allow_truncated_logprobs=True``. Greedy (``temperature == 0``) log-probs are
  log-softmax of the raw logits, as ``KVCacheEngine`` returns.
* ``entropies`` stay empty: vLLM does not return them (the learner recomputes them).
* EOS: vLLM stops at exactly the caller's ``eos_token_id`` ids (given as ``stop_token_ids``,
  with ``ignore_eos=True`` so the checkpoint's own EOS list adds nothing); the EOS token is
  kept in ``response_ids``.
* Stop sequences are token ids, possibly several tokens long. vLLM stops on single token
  ids only, so the last token of every stop sequence is a stop id; a row that stopped there
  without the whole sequence is resumed with its tokens so far as the prompt (the prefix
  cache makes that a short prefill), so a row ends exactly where ``KVCacheEngine``'s token
  match would end it.

Weight sync follows vLLM's own protocol for checkpoint-format updates (what its NCCL
weight-transfer engine does per update): ``initialize_layerwise_reload`` on the worker,
``model.load_weights`` once per bucket of HF-named tensors (fused q/k/v and gate/up, tied
embeddings and padded vocabularies handled by vLLM's loaders; a bucket may split a layer),
then ``finalize_layerwise_reload``, which re-runs the kernels' weight processing (on CPU the
linear layers keep their weights only inside prepacked oneDNN/SGL kernels). The check is
``weights_checksum``: a SHA-256 per Hugging Face tensor, computed in the worker from the
weights the kernels actually multiply with (on CPU recovered by passing an identity matrix
through each packed linear layer), fused tensors split back into their HF parts, padded
vocabulary rows dropped. ``expected_checksum`` computes the same digests from the
trainer's tensors, and ``verify_sync`` names the first mismatching parameter. (vLLM's own
``compute_weight_checksums`` / ``/weight_checker`` hash the parameters, which on CPU are
empty for every linear layer: they cannot see a stale layer there.)

In process: the engine sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (no ``__main__`` guard
needed, tensors pass by reference, the worker functions below run as plain calls; a separate
engine-core process would need a guard and ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` for them).
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch
from transformers import PreTrainedModel

from rlvr.rollout.engine import ROLLOUT_ENGINES, Generation, RolloutEngine
from rlvr.rollout.vllm_common import (
    EngineHangError,
    RoundRequest,
    WeightSyncError,
    all_stacks,
    buckets,
    check_top_p,
    compare_checksums,
    engine_settings,
    expected_checksum,
    generate_in_rounds,
    tensor_digest,
    temporary_checkpoint,
    worker_checksums,
)

__all__ = ["EngineHangError", "EngineThread", "VLLMEngine", "WeightSyncError", "expected_checksum", "tensor_digest"]

_R = TypeVar("_R")

INSTALL_HINT = 'the vllm rollout engine needs vLLM: pip install -e ".[vllm]"'


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return vllm


# --- functions run inside vLLM's worker (collective_rpc passes the worker as ``self``) ---

def _worker_ping(self: Any) -> int:
    return int(getattr(self, "rank", 0))


def _worker_start_update(self: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    with set_current_vllm_config(self.vllm_config):
        initialize_layerwise_reload(self.model_runner.get_model())


def _worker_load_bucket(self: Any, bucket: list[tuple[str, torch.Tensor]]) -> list[str]:
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(self.vllm_config):
        loaded = self.model_runner.get_model().load_weights(bucket)
    return sorted(loaded or ())


def _worker_finish_update(self: Any) -> None:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    with set_current_vllm_config(self.vllm_config):
        finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
    # what GPUModelRunner.reload_weights clears after an in-place reload
    for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
        if hasattr(self.model_runner, reset):
            getattr(self.model_runner, reset)()


# --- the engine ---

@ROLLOUT_ENGINES.register("vllm")
class VLLMEngine(RolloutEngine):
    """A ``vllm.LLM`` in this process, loaded from the HF checkpoint directory ``checkpoint``.

    ``generate``'s ``model`` argument is ignored: the engine samples from its own weights,
    which ``load_weights`` replaces. ``dtype`` is the engine's weight dtype ("float32" makes
    log-probs comparable with the trainer's to ~1e-6). ``kv_cache_memory_bytes`` sizes the KV
    cache (CPU default: 1 GiB, or ``VLLM_CPU_KVCACHE_SPACE`` GiB when that is set, which vLLM
    0.32 still honours over this argument); on a GPU it defaults to ``gpu_memory_utilization``
    of the device. ``sleep_level`` (1: offload weights, 2: drop them) enables vLLM's sleep mode
    for ``sleep``/``wake_up`` on a GPU; vLLM 0.32 has no sleep mode on CPU, where both are
    no-ops. ``enforce_eager`` skips torch.compile (minutes on a CPU; on a GPU, False buys CUDA
    graphs). The timeouts bound each call into vLLM (startup, one ``generate``, any other
    call). ``engine_kwargs`` go to ``vllm.LLM`` as they are.
    """

    owns_weights = True  # samples from its own copy: load_weights pushes the trainer's weights

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = True,
        kv_cache_memory_bytes: int | None = None,
        sleep_level: int | None = None,
        allow_truncated_logprobs: bool = False,
        bucket_bytes: int = 256 << 20,
        startup_timeout_s: float = 900.0,
        generate_timeout_s: float = 3600.0,
        call_timeout_s: float = 600.0,
        **engine_kwargs: Any,
    ) -> None:
        vllm = _import_vllm()
        if sleep_level not in (None, 1, 2):
            raise ValueError(f"sleep_level must be None, 1 or 2, got {sleep_level!r}")
        self.checkpoint = str(checkpoint)
        self.sleep_level = sleep_level
        self.allow_truncated_logprobs = allow_truncated_logprobs
        self.bucket_bytes = bucket_bytes
        self.generate_timeout_s = generate_timeout_s
        self.call_timeout_s = call_timeout_s
        self.weight_version: int | None = 0  # the checkpoint's weights; None after a failed load
        self._thread = EngineThread()
        # In-process engine core and worker: weights pass by reference, no __main__ guard
        # needed. vLLM caches its environment at the first engine start of a process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would drown the run's own
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        if self.on_cpu and kv_cache_memory_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_memory_bytes = 1 << 30  # else vLLM reserves 92% of the machine's memory
        kwargs = dict(
            dtype=dtype, seed=seed, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
            kv_cache_memory_bytes=kv_cache_memory_bytes, logprobs_mode="processed_logprobs",
            enable_sleep_mode=sleep_level is not None and not self.on_cpu, disable_log_stats=True,
        )
        if self.on_cpu:
            # vLLM 0.32 cannot chunk a seeded request's prefill on a CPU (its generator has no
            # offset to rewind): whole prompts per step, the step's budget >= max_model_len
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(engine_kwargs)
        self.llm = self._thread.call("startup", startup_timeout_s, self._start, vllm, kwargs)
        from vllm.inputs import TokensPrompt

        self._SamplingParams, self._TokensPrompt = vllm.SamplingParams, TokensPrompt
        self.dtype: torch.dtype = self.llm.llm_engine.model_config.dtype  # the weights' dtype in the engine
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._llm("update_weight_version", "0")

    def _start(self, vllm: Any, kwargs: dict[str, Any]) -> Any:
        """Create the ``vllm.LLM`` without letting it change this process's state: an
        in-process vLLM seeds the global RNGs (random, numpy, torch), sets torch's thread
        count, replaces ``torch.set_num_threads`` with a no-op on CPU and ``gc.freeze()``s
        every object alive (the trainer's too); all are undone."""
        import gc

        import numpy as np

        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            return vllm.LLM(self.checkpoint, **kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
            random.setstate(rng[0])
            np.random.set_state(rng[1])
            torch.set_rng_state(rng[2])
            gc.unfreeze()

    def _generate(self, requests: list[Any], params: list[Any]) -> list[Any]:
        # vLLM's CPU sampler draws each step's seeds from torch's global RNG, even for
        # requests with their own seed: keep the trainer's global stream untouched
        with torch.random.fork_rng(devices=[]):
            return self.llm.generate(requests, params, use_tqdm=False)

    # --- every call into vLLM goes through here ---

    def _llm(self, method: str | Callable[..., Any], *args: Any, what: str | None = None,
             timeout_s: float | None = None, **kwargs: Any) -> Any:
        """``self.llm.<method>(*args, **kwargs)`` (or ``method(*args, **kwargs)`` when it is a
        function) on the engine thread under a timeout."""
        if self.llm is None:
            raise RuntimeError("the vLLM engine is closed")
        fn = getattr(self.llm, method) if isinstance(method, str) else method
        return self._thread.call(what or str(method), timeout_s or self.call_timeout_s, fn, *args, **kwargs)

    def _rpc(self, what: str, fn: Callable[..., _R], *args: Any, timeout_s: float | None = None) -> list[_R]:
        """``fn(worker, *args)`` in every vLLM worker (one here) under a timeout."""
        return self._llm("collective_rpc", fn, what=what, timeout_s=timeout_s, args=args)

    # --- sampling ---

    def generate(
        self,
        model: PreTrainedModel | None,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        generator: torch.Generator | None = None,
        stop_sequences: Sequence[Sequence[int]] = (),
    ) -> list[Generation]:
        """One response per prompt from the engine's weights (``model`` is ignored): the
        rounds of ``generate_in_rounds`` (seeds from ``generator``, stop sequences resumed)."""
        del model, pad_token_id  # the engine's own weights; vLLM needs no padding

        def sample(requests: list[RoundRequest], stop_ids: list[int]) -> list[tuple[list[int], list[float], str]]:
            params = [self._SamplingParams(
                max_tokens=r.max_tokens, temperature=temperature, top_p=top_p, seed=r.seed, stop_token_ids=stop_ids,
                ignore_eos=True, logprobs=0, flat_logprobs=True, detokenize=False, skip_special_tokens=False)
                for r in requests]
            prompts_now = [self._TokensPrompt(prompt_token_ids=r.token_ids) for r in requests]
            outputs = self._llm(self._generate, prompts_now, params, what="generate", timeout_s=self.generate_timeout_s)
            answers = []
            for output in outputs:
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                answers.append((ids, _sampled_logprobs(completion.logprobs, ids), completion.finish_reason))
            return answers

        return generate_in_rounds(prompts, sample, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, eos_token_id=eos_token_id, generator=generator,
                                  stop_sequences=stop_sequences, vocab_size=self.vocab_size,
                                  allow_truncated_logprobs=self.allow_truncated_logprobs, engine_name="VLLMEngine")

    # --- weights ---

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the engine's weights with the trainer's HF-named tensors (all of them:
        a tensor not sent keeps its old value, which ``verify_sync`` reports) and record
        ``version``. Tensors travel in buckets of about ``bucket_bytes`` (one call each);
        the prefix cache is cleared after. On any failure the engine's version becomes
        None, so a later ``verify_sync`` fails whatever the digests say."""
        self.weight_version = None
        self._rpc("load_weights(start)", _worker_start_update)
        try:
            for bucket in buckets(named_tensors, self.bucket_bytes):
                self._rpc("load_weights", _worker_load_bucket, bucket)
        except BaseException:
            if self._thread.hung is None:  # put back the old tensors of layers that got none
                try:
                    self._rpc("load_weights(finish)", _worker_finish_update)
                except Exception:  # noqa: BLE001 (the first error is the one to report)
                    pass
            raise
        self._rpc("load_weights(finish)", _worker_finish_update)
        self._llm("reset_prefix_cache")
        self._llm("update_weight_version", str(version))
        self.weight_version = int(version)

    def weights_checksum(self) -> dict[str, str]:
        """``{HF tensor name: SHA-256}`` of the weights the engine computes with, read in its
        worker (the LM head appears under ``lm_head.weight`` even when tied)."""
        return self._rpc("weights_checksum", worker_checksums)[0]["digests"]

    def expected_checksum(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
        """``expected_checksum`` at this engine's weight dtype."""
        return expected_checksum(named_tensors, self.dtype)

    def verify_sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Raise ``WeightSyncError`` unless the engine holds ``version`` and exactly the
        trainer's tensors ``named_tensors`` (the same set ``load_weights`` was given). The
        message names the version and the first mismatching parameter."""
        engine_version = self._llm("get_weight_version")
        if self.weight_version != version or engine_version != str(version):
            raise WeightSyncError(f"weight sync check at version {version}: the engine holds version "
                                  f"{self.weight_version} (vLLM reports {engine_version!r}); was load_weights "
                                  "skipped or did it fail?")
        compare_checksums(self.expected_checksum(named_tensors), self.weights_checksum(), version)

    # --- liveness, sleep, shutdown ---

    def ping(self, timeout_s: float = 30.0) -> float:
        """A no-op call through vLLM to its worker; its round trip in seconds, or
        ``EngineHangError`` when it has not come back after ``timeout_s``."""
        start = time.perf_counter()
        self._rpc("ping", _worker_ping, timeout_s=timeout_s)
        return time.perf_counter() - start

    # vLLM 0.32's CPU attention (v1/attention/backends/cpu_attn.py: get_supported_head_sizes)
    CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

    @classmethod
    def check(cls, config: Any, head_dim: int | None) -> None:
        v = config.rollout.vllm
        if v.engines > 1 and v.mode != "server":
            raise ValueError(f"rollout.vllm.engines={v.engines} needs rollout.vllm.mode=server (a colocated engine "
                             "is one vllm.LLM in each trainer process)")
        if v.weights_dir is not None and not os.path.isdir(v.weights_dir):
            raise ValueError(f"rollout.vllm.weights_dir: {v.weights_dir} is not a directory")
        if v.url is not None:
            from rlvr.rollout.vllm_pool import server_urls

            urls = server_urls(v.url)
            if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
                raise ValueError(f"rollout.vllm.url: {v.url!r} is not a comma-separated list of http(s):// URLs")
            if v.engines not in (1, len(urls)):
                raise ValueError(f"rollout.vllm.engines={v.engines} but rollout.vllm.url names {len(urls)} server(s): "
                                 "with url, the servers are the URLs given")
        if config.rollout.vllm.mode == "server" and config.rollout.vllm.url is not None:
            from rlvr.rollout.vllm_server import VLLMServerEngine

            return VLLMServerEngine.check(config, head_dim)  # a remote server: not this machine's vLLM
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ValueError('rollout.engine: vllm needs vLLM, which is not installed: pip install -e ".[vllm]" '
                             '(on CPU, then: pip uninstall -y torchvision torchaudio torchcodec)') from None
        check_top_p(config)
        on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        if on_cpu and head_dim is not None and head_dim not in cls.CPU_HEAD_SIZES:
            raise ValueError(f"rollout.engine: vllm on CPU supports attention head sizes "
                             f"{', '.join(map(str, cls.CPU_HEAD_SIZES))}; this model's is {head_dim} "
                             "(tiny models: model.hidden_size / model.num_heads)")

    @classmethod
    def build(cls, config: Any, model: PreTrainedModel, tokenizer: Any) -> "VLLMEngine":
        """The engine of a run (``config.rollout.vllm``), loaded from ``model``'s current weights
        (written to a temporary checkpoint directory that is deleted once vLLM has read it)."""
        v = config.rollout.vllm
        if v.mode == "server":  # `vllm serve` processes over HTTP (rlvr/rollout/vllm_pool.py)
            from rlvr.rollout.vllm_pool import ServerPool

            return ServerPool.build(config, model, tokenizer)
        with temporary_checkpoint(model, tokenizer) as checkpoint:
            return cls(checkpoint, **engine_settings(config, model), sleep_level=v.sleep_level or None)

    @classmethod
    def shared_by_ranks(cls, config: Any) -> bool:
        """Whether trainer ranks share one set of engines (server mode: rank 0 builds the
        pool, the other ranks ``connect`` to its ``address()``) rather than each building its own."""
        return config.rollout.vllm.mode == "server"

    @classmethod
    def connect(cls, config: Any, address: Any) -> RolloutEngine:
        """Another rank's view of the engines rank 0 built (``address()`` of its pool)."""
        from rlvr.rollout.vllm_pool import ServerPool

        return ServerPool.connect(config, address)

    def sleep(self) -> None:
        """Free the accelerator memory between rollouts (``sleep_level`` 1: weights offloaded
        to host memory, 2: weights dropped: ``load_weights`` must follow ``wake_up``). A no-op
        on CPU (vLLM 0.32 has no sleep mode there) or without ``sleep_level``."""
        if self.sleep_level is not None and not self.on_cpu:
            self._llm("sleep", level=self.sleep_level)

    def wake_up(self) -> None:
        if self.sleep_level is not None and not self.on_cpu:
            self._llm("wake_up")

    def close(self) -> None:
        """Shut the engine down and free its memory; another engine can start in this process."""
        llm, self.llm = self.llm, None
        if llm is not None and self._thread.hung is None:
            self._thread.call("shutdown", self.call_timeout_s, llm.llm_engine.engine_core.shutdown)
        self._thread.close()
        del llm
        import gc

        gc.collect()

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EngineThread:
    """One thread that runs every call into an engine, each under a timeout: vLLM's in-process
    calls have none (``collective_rpc``'s ``timeout`` is ignored by its single-process
    executor). A call that overruns raises ``EngineHangError`` with the stacks of all
    threads, and every later call fails at once (the stuck call cannot be cancelled)."""

    def __init__(self, name: str = "vllm-engine") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.hung: str | None = None  # the call that never returned

    def call(self, what: str, timeout_s: float, fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        if self.hung is not None:
            raise EngineHangError(f"vLLM engine unusable: an earlier {self.hung} never returned; close it and "
                                  "start a new engine")
        future = self._pool.submit(fn, *args, **kwargs)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeoutError:
            self.hung = what
            raise EngineHangError(f"vLLM engine {what} did not return within {timeout_s:g} s (stacks of all "
                                  f"threads follow; also written to stderr)\n{all_stacks()}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=self.hung is None)


def _sampled_logprobs(flat: Any, ids: list[int]) -> list[float]:
    """The sampled tokens' log-probs from a completion's ``FlatLogprobs`` (``logprobs=0``
    puts exactly the sampled token at each position)."""
    if flat is None:
        raise RuntimeError("vLLM returned no log-probs (SamplingParams.logprobs was not set)")
    if len(flat.start_indices) != len(ids) or any(
            flat.token_ids[start] != token for start, token in zip(flat.start_indices, ids)):
        raise RuntimeError("vLLM's log-probs do not line up with its sampled tokens")
    return [float(flat.logprobs[start]) for start in flat.start_indices]
