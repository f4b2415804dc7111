"""Several vLLM servers behind one rollout engine, shared by every trainer rank.

``rollout.vllm.mode: server`` builds a ``ServerPool``: ``rollout.vllm.engines`` servers that
rlvr starts (each a ``VLLMServerEngine``, ``rlvr/rollout/vllm_server.py``), or the servers at
the comma-separated ``rollout.vllm.url``. One process, the *owner* (the only process, or
trainer rank 0), starts, restarts, syncs and checks the servers; every other trainer rank
holds a *client* pool on the same URLs that only sends requests and waits for versions.

* Dispatch: a GRPO group (the requests that share a prompt) goes whole to the server with the
  fewest prompts in flight from this process (its prefix is then cached once); unseeded
  batches (greedy evaluation) are split evenly. Every request carries its own seed, drawn
  by ``generate_in_rounds`` before dispatch, so where it runs does not change what it samples
  (up to the server's batch-dependent rounding).
* Weight sync (owner): the tensors are written once as safetensors buckets
  (``write_weight_files``) and every live server loads the same files concurrently through
  vLLM's weight-update protocol; the files of the latest version are kept until the next
  sync, to bring a restarted server up to date. ``verify_sync`` checks every server's
  version and per-tensor SHA-256 against the trainer's. A client's ``load_weights`` pushes
  nothing: it waits (``call_timeout_s``) until every live server reports the version the
  owner pushes, so no rank ever samples from stale weights.
* A lost server: a request that finds its server gone (connection refused or reset, process
  exited; a server that answers ``/health`` is not lost, its error is raised) is re-issued,
  with the same seed, to a live server, or waits for one; it is counted once in
  ``requests_reissued`` and answered once. The owner restarts a server it started on its
  old port (clients keep their URLs) from the pool's base checkpoint and loads the latest
  weight files before it takes requests again (``engine_restarts``); a client sees it back
  when it answers with the pool's version. A server the pool did not start is waited for.
  No server alive within the generate deadline ends the call with ``EngineHangError``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Sequence

import torch
from transformers import PreTrainedModel

from rlvr.distributed.ray_engines import hosts_from_env, proxy_command
from rlvr.rollout.engine import Generation, RolloutEngine
from rlvr.rollout.vllm_common import (
    EngineHangError,
    WeightSyncError,
    all_stacks,
    compare_checksums,
    engine_settings,
    expected_checksum,
)
from rlvr.rollout.vllm_server import (
    VLLMServerEngine,
    VLLMServerError,
    VLLMServerGoneError,
    _remove_tree,
    complete_in_rounds,
    write_weight_files,
)

StartServer = Callable[[int, int | None], VLLMServerEngine]  # (index, port or None) -> a started server


def server_urls(url: str | None) -> list[str]:
    """The base URLs in ``rollout.vllm.url`` (comma-separated; empty for null)."""
    return [part.strip().rstrip("/") for part in (url or "").split(",") if part.strip()]


class ServerPool(RolloutEngine):
    """``members``: connected or started ``VLLMServerEngine`` s (see the module doc).
    ``owner``: this process syncs, checks and restarts them; else it is a client.
    ``start``: how the owner starts a replacement server on a port (None: it cannot restart
    them, e.g. servers it connected to); ``connect``: how it reconnects to a server at a URL. ``base_dir``: a directory the pool deletes on
    ``close`` (its base checkpoint)."""

    owns_weights = True
    sleep_level = None  # servers keep their own memory

    def __init__(self, members: Sequence[VLLMServerEngine], *, owner: bool = True, start: StartServer | None = None,
                 connect: Callable[[str], VLLMServerEngine] | None = None, base_dir: str | None = None, version: int | None = 0, generate_timeout_s: float = 3600.0,
                 call_timeout_s: float = 600.0, bucket_bytes: int = 256 << 20, weights_dir: str | None = None,
                 max_concurrency: int = 256, allow_truncated_logprobs: bool = False) -> None:
        if not members:
            raise ValueError("a server pool needs at least one server")
        self.members = list(members)
        self.owner, self._start, self._base_dir = owner, start, base_dir
        self._connect = connect or (lambda url: VLLMServerEngine(url=url))
        self.urls = [member.url for member in self.members]
        self.ports = [int(url.rsplit(":", 1)[1]) if url.rsplit(":", 1)[-1].isdigit() else None for url in self.urls]
        self.alive = [True] * len(self.members)
        self.load = [0] * len(self.members)  # prompts this process has in flight per server
        self.version = version
        self.generate_timeout_s, self.call_timeout_s = generate_timeout_s, call_timeout_s
        self.bucket_bytes, self.weights_dir = bucket_bytes, weights_dir
        self.allow_truncated_logprobs = allow_truncated_logprobs
        first = self.members[0]
        self.dtype, self.vocab_size, self.max_model_len = first.dtype, first.vocab_size, first.max_model_len
        self.restarts = 0
        self.reissued = 0
        self._latest: tuple[str, list[tuple[str, list[str]]], int] | None = None  # (folder, files, version)
        self._cond = threading.Condition()
        self._sync_lock = threading.RLock()
        self._restarting: set[int] = set()
        self._restart_errors: dict[int, BaseException] = {}
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency * len(self.members),
                                            thread_name_prefix="vllm-pool-request")

    # --- building ---

    @classmethod
    def build(cls, config: Any, model: PreTrainedModel, tokenizer: Any) -> "ServerPool":
        """The owner's pool of a run: ``rollout.vllm.engines`` servers started from ``model``'s
        current weights (a base checkpoint kept for restarts), or the servers at
        ``rollout.vllm.url``, which are then sent ``model``'s weights as version 0."""
        v = config.rollout.vllm
        settings = cls._settings(config)
        urls = server_urls(v.url)
        if urls:
            def connect(url: str) -> VLLMServerEngine:
                return VLLMServerEngine(url=url, **settings)

            members = _in_parallel([lambda u=u: connect(u) for u in urls], VLLMServerEngine.close)
            pool = cls(members, owner=True, connect=connect, version=None, **cls._pool_settings(config))
            try:
                pool.load_weights(model.state_dict().items(), version=0)
            except BaseException:
                pool.close()
                raise
            return pool
        hosts = hosts_from_env()  # servers hosted by Ray actors (distributed.launcher: ray), else local
        if hosts is not None and len(hosts["hosts"]) != v.engines:
            raise ValueError(f"the Ray launcher placed {len(hosts['hosts'])} engine hosts for "
                             f"rollout.vllm.engines={v.engines}")
        base_dir = tempfile.mkdtemp(prefix="rlvr-vllm-pool-", dir=v.weights_dir)  # (servers read it by path)
        try:
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
            server_settings = {**engine_settings(config, model), **settings}

            def start(index: int, port: int | None) -> VLLMServerEngine:
                if hosts is None:
                    return VLLMServerEngine(base_dir, port=port, **server_settings)
                return VLLMServerEngine(base_dir, port=port, host=hosts["hosts"][index]["ip"],
                                        launcher=proxy_command(index), **server_settings)

            members = _in_parallel([lambda i=i: start(i, None) for i in range(v.engines)], VLLMServerEngine.close)
        except BaseException:
            _remove_tree(base_dir)
            raise
        return cls(members, owner=True, start=start, base_dir=base_dir, version=0, **cls._pool_settings(config))

    @classmethod
    def connect(cls, config: Any, urls: Sequence[str]) -> "ServerPool":
        """A client pool on the servers at ``urls`` (another rank's pool's ``urls``)."""
        members = _in_parallel([lambda u=u: VLLMServerEngine(url=u, **cls._settings(config)) for u in urls],
                               VLLMServerEngine.close)
        return cls(members, owner=False, version=None, **cls._pool_settings(config))

    @staticmethod
    def _settings(config: Any) -> dict[str, Any]:
        v = config.rollout.vllm
        return dict(startup_timeout_s=v.startup_timeout_s, generate_timeout_s=v.generate_timeout_s,
                    call_timeout_s=v.call_timeout_s, max_concurrency=v.max_num_seqs)

    @staticmethod
    def _pool_settings(config: Any) -> dict[str, Any]:
        v = config.rollout.vllm
        return dict(generate_timeout_s=v.generate_timeout_s, call_timeout_s=v.call_timeout_s,
                    max_concurrency=v.max_num_seqs, weights_dir=v.weights_dir)

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
        """One response per prompt, spread over the live servers (``VLLMServerEngine.generate``'s
        contract; ``model`` is ignored)."""
        del model, pad_token_id
        deadline = time.perf_counter() + self.generate_timeout_s

        return complete_in_rounds(lambda bodies: self._complete(bodies, deadline), "", prompts,
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  eos_token_id=eos_token_id, generator=generator, stop_sequences=stop_sequences,
                                  vocab_size=self.vocab_size, allow_truncated_logprobs=self.allow_truncated_logprobs,
                                  engine_name="vLLM server pool")

    def _complete(self, bodies: list[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """Every body's completion choice, in order (see the module doc for the dispatch)."""
        what = f"generate ({len(bodies)} prompts)"
        units: list[list[int]] = []  # body indices that go to one server
        if any(body["seed"] is not None for body in bodies):
            by_prompt: dict[tuple[int, ...], list[int]] = {}
            for i, body in enumerate(bodies):
                by_prompt.setdefault(tuple(body["prompt"]), []).append(i)
            units = list(by_prompt.values())
            one_per_request = True
        else:
            by_length: dict[int, list[int]] = {}
            for i, body in enumerate(bodies):
                by_length.setdefault(body["max_tokens"], []).append(i)
            parts = max(1, sum(self.alive))
            for rows in by_length.values():
                step = -(-len(rows) // parts)
                units += [rows[start:start + step] for start in range(0, len(rows), step)]
            one_per_request = False
        futures: list[tuple[list[int], Future]] = []
        with self._cond:
            planned = list(self.load)
            targets = []
            for unit in units:
                index = self._least_loaded(planned)
                planned[index] += len(unit)
                targets.append(index)
        for unit, index in zip(units, targets):
            if one_per_request:
                futures += [([i], self._executor.submit(self._send, index, [bodies[i]], deadline, what)) for i in unit]
            else:
                futures.append((unit, self._executor.submit(self._send, index, [bodies[i] for i in unit], deadline,
                                                            what)))
        try:
            waiting = {future for _, future in futures}
            while waiting:
                done, waiting = wait(waiting, timeout=min(0.5, max(0.0, deadline - time.perf_counter())),
                                     return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                if waiting and time.perf_counter() >= deadline:
                    raise EngineHangError(f"vLLM server pool {what} did not complete within {self.generate_timeout_s:g} "
                                          f"s (servers {self.urls}, alive {self.alive}); stacks of this process's "
                                          f"threads follow (also written to stderr):\n{all_stacks()}")
            choices: list[dict[str, Any]] = [{} for _ in bodies]
            for rows, future in futures:
                for i, choice in zip(rows, future.result()):
                    choices[i] = choice
            return choices
        finally:
            for _, future in futures:
                future.cancel()

    def _least_loaded(self, load: Sequence[int]) -> int:
        live = [i for i, up in enumerate(self.alive) if up] or list(range(len(self.members)))
        return min(live, key=lambda i: (load[i], i))

    def _send(self, index: int, bodies: list[dict[str, Any]], deadline: float, what: str) -> list[dict[str, Any]]:
        """The choices of ``bodies`` (one request) from server ``index``, or from another live
        server when that one is lost (the re-issue)."""
        n = len(bodies)
        with self._cond:
            self.load[index] += n
        try:
            while True:
                member = self.members[index]
                body = {**bodies[0], "model": member.model_name}
                if n > 1:
                    body["prompt"] = [b["prompt"] for b in bodies]
                try:
                    answer = member._request("POST", "/v1/completions", body, what=what, stacks=False,
                                             timeout_s=max(1.0, deadline - time.perf_counter()) + 5.0)
                except VLLMServerError as err:
                    if not self._lost(index, member, err):
                        raise
                    replacement = self._live_server(deadline, what)
                    with self._cond:
                        self.load[index] -= n
                        self.load[replacement] += n
                        self.reissued += n
                    index = replacement
                    continue
                got = sorted(answer["choices"], key=lambda choice: choice["index"])
                if len(got) != n:
                    raise VLLMServerError(f"the vLLM server at {member.url} answered {len(got)} choices for {n} prompts")
                return got
        finally:
            with self._cond:
                self.load[index] -= n

    def _lost(self, index: int, member: VLLMServerEngine, error: BaseException) -> bool:
        """Whether ``error`` means server ``index`` is gone (then it is marked lost and, when
        this pool can, restarted); False for a server that still answers ``/health``."""
        if self._closed:
            return False
        if not isinstance(error, VLLMServerGoneError) and _healthy(member):
            return False
        with self._cond:
            if self.members[index] is not member or not self.alive[index]:
                return True  # another request saw it first
            self.alive[index] = False
            self._cond.notify_all()
        if self.owner and self._start is not None:
            self._restart(index, member)
        return True

    def _live_server(self, deadline: float, what: str) -> int:
        """The least-loaded live server, waiting (until ``deadline``) while none is."""
        while True:
            with self._cond:
                if any(self.alive):
                    return self._least_loaded(self.load)
                restarts_failed = self._start is not None and not self._restarting and \
                    len(self._restart_errors) == len(self.members)
                if self.owner and restarts_failed:
                    raise VLLMServerError(f"every vLLM server of the pool is lost and could not be restarted during "
                                          f"{what}: {next(iter(self._restart_errors.values()))}")
                if time.perf_counter() >= deadline:
                    raise EngineHangError(f"no vLLM server of the pool ({self.urls}) came back during {what} within "
                                          f"{self.generate_timeout_s:g} s")
                if self.owner and self._start is not None:
                    self._cond.wait(timeout=1.0)  # a restart notifies
                    continue
            self._revive_returned()
            time.sleep(0.5)

    def _revive_returned(self) -> None:
        """Lost servers this pool does not restart, back again: a client takes one once it
        reports the pool's weight version (the owner restarted it); an owner connected to a
        server someone else restarted reconnects and sends it the latest weight files."""
        for index, member in enumerate(list(self.members)):
            if self.alive[index] or index in self._restarting or (self.owner and self._start is not None):
                continue
            if not _healthy(member):
                continue
            try:
                if self.owner:
                    with self._sync_lock:
                        server = self._connect(member.url)
                        if self._latest is not None:
                            server.load_weight_files(self._latest[1], self._latest[2])
                        with self._cond:
                            self.members[index] = server
                            self.alive[index] = True
                            self._cond.notify_all()
                elif self.version is not None and member.server_weight_version() == str(self.version):
                    member.weight_version = self.version
                    with self._cond:
                        self.alive[index] = True
                        self._cond.notify_all()
            except (VLLMServerError, EngineHangError):
                continue

    def _restart(self, index: int, old: VLLMServerEngine) -> None:
        """Start a replacement for server ``index`` in the background: on its old port, from the
        base checkpoint, then the latest weight files; it takes requests once it holds them."""
        with self._cond:
            if index in self._restarting:
                return
            self._restarting.add(index)
            self._restart_errors.pop(index, None)

        def run() -> None:
            try:
                old.close()  # the rest of its process group
                server = self._start(index, self.ports[index])  # type: ignore[misc]
                with self._sync_lock:  # no sync between loading the latest files and taking requests
                    if self._closed:
                        server.close()
                        return
                    if self._latest is not None:
                        server.load_weight_files(self._latest[1], self._latest[2])
                    with self._cond:
                        self.members[index] = server
                        self.urls[index] = server.url
                        self.alive[index] = True
                        self.restarts += 1
            except BaseException as err:  # noqa: BLE001 (reported to whoever waits for a server)
                with self._cond:
                    self._restart_errors[index] = err
            finally:
                with self._cond:
                    self._restarting.discard(index)
                    self._cond.notify_all()

        threading.Thread(target=run, name=f"vllm-pool-restart-{index}", daemon=True).start()

    # --- weights ---

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Owner: every live server gets ``named_tensors`` as ``version`` (the files are written
        once; a server lost meanwhile is restarted with them). Client: wait until every live
        server reports ``version``."""
        if not self.owner:
            self._await_version(version)
            return
        with self._sync_lock:
            self.version = None
            self._revive_returned()
            self._probe()
            folder = tempfile.mkdtemp(prefix="rlvr-vllm-weights-", dir=self.weights_dir)
            try:
                files = write_weight_files(named_tensors, folder, self.bucket_bytes)
                live = [i for i, up in enumerate(self.alive) if up]
                results = _in_parallel([lambda i=i: self.members[i].load_weight_files(files, version) for i in live],
                                       return_errors=True)
                for i, result in zip(live, results):
                    if isinstance(result, BaseException) and not self._lost(i, self.members[i], result):
                        raise result
            except BaseException:
                _remove_tree(folder)
                raise
            previous, self._latest = self._latest, (folder, files, int(version))
            if previous is not None:
                _remove_tree(previous[0])
            self.version = int(version)

    def _probe(self) -> None:
        """The liveness probe before a sync: a server whose process exited or that does not
        answer ``/health`` is lost (restarted when this pool can)."""
        for index, member in enumerate(self.members):
            if self.alive[index] and not _healthy(member):
                self._lost(index, member, VLLMServerGoneError(f"{member.url} does not answer /health"))

    def _await_version(self, version: int) -> None:
        deadline = time.perf_counter() + self.call_timeout_s
        self.version = int(version)
        reported: dict[str, str] = {}
        while True:
            self._revive_returned()
            reported = {}
            for index, member in enumerate(self.members):
                if not self.alive[index]:
                    continue
                try:
                    reported[member.url] = member.server_weight_version()
                except VLLMServerError as err:
                    self._lost(index, member, err)
            if reported and all(value == str(version) for value in reported.values()):
                for index, member in enumerate(self.members):
                    if self.alive[index]:
                        member.weight_version = int(version)
                return
            if time.perf_counter() >= deadline:
                raise WeightSyncError(f"waited {self.call_timeout_s:g} s (rollout.vllm.call_timeout_s) for the vLLM "
                                      f"servers to hold weight version {version}, which trainer rank 0 pushes; they "
                                      f"report {reported or 'nothing (none alive)'}")
            time.sleep(0.05)

    def verify_sync(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Raise ``WeightSyncError`` unless every live server holds ``version`` and (owner)
        exactly the trainer's tensors; the message names the server and the first mismatch."""
        expected = expected_checksum(named_tensors, self.dtype) if self.owner else None
        for index, member in enumerate(self.members):
            if not self.alive[index]:
                continue
            reported = member.server_weight_version()
            if member.weight_version != version or reported != str(version):
                raise WeightSyncError(f"weight sync check at version {version}: the vLLM server at {member.url} holds "
                                      f"version {member.weight_version} (it reports {reported!r}); was load_weights "
                                      "skipped or did it fail?")
            if expected is not None:
                try:
                    compare_checksums(expected, member.weights_checksum(), version)
                except WeightSyncError as err:
                    raise WeightSyncError(f"the vLLM server at {member.url}: {err}") from None

    # --- the rest of the engine interface ---

    def stats(self) -> dict[str, float]:
        """Counts for the step records: servers alive, restarts and re-issued prompts so far."""
        with self._cond:
            return {"engines_alive": float(sum(self.alive)), "engine_restarts": float(self.restarts),
                    "requests_reissued": float(self.reissued)}

    def address(self) -> list[str]:
        """What another rank's ``connect`` needs."""
        return list(self.urls)

    def ping(self, timeout_s: float = 30.0) -> float:
        """The slowest round trip to a live server's worker, in seconds."""
        return max(member.ping(timeout_s) for member, up in zip(self.members, self.alive) if up)

    def sleep(self) -> None:
        """A no-op: servers keep their memory."""

    def wake_up(self) -> None:
        """A no-op (see ``sleep``)."""

    def close(self) -> None:
        """Stop the servers this pool started (connected ones keep running), delete its files.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._sync_lock:
            for member in self.members:
                member.close()
            if self._latest is not None:
                _remove_tree(self._latest[0])
            if self._base_dir is not None:
                _remove_tree(self._base_dir)

    def __enter__(self) -> "ServerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _healthy(member: VLLMServerEngine) -> bool:
    if member.proc is not None and member.proc.poll() is not None:
        return False
    try:
        member._request("GET", "/health", what="health", timeout_s=5.0, stacks=False)
        return True
    except VLLMServerError:
        return False
    except EngineHangError:
        return False


def _in_parallel(calls: list[Callable[[], Any]], cleanup: Callable[[Any], None] | None = None,
                 return_errors: bool = False) -> list[Any]:
    """Run ``calls`` in threads; their results in order. On a failure: ``cleanup`` for every
    result that did come, then the first error is raised (or, with ``return_errors``, the
    errors are returned in place of results)."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as err:  # noqa: BLE001
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if return_errors:
        return results
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        if cleanup is not None:
            for result in results:
                if not isinstance(result, BaseException):
                    cleanup(result)
        raise errors[0]
    return results

