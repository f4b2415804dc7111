"""``distributed.launcher: ray``: the trainer ranks of ``rlvr train --nproc N`` as Ray actors.

For users whose machines are a Ray cluster (``ray start --head`` / ``--address``; the cluster
at ``RAY_ADDRESS``, else a local one started here and stopped at the end). The ranks are the
same processes torchrun would start (``python -m rlvr train ...`` with torchrun's
environment: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so
everything else (gloo/NCCL, collectives, checkpoints) is unchanged; Ray only places them:

* one placement group of N bundles, ``distributed.ray_cpus_per_rank`` CPUs (and one GPU on a
  GPU run) each, packed; Ray gives a task no CPU it has not reserved, so on a 2-CPU machine
  two 1-CPU ranks take every CPU and nothing else may ask for one. The group must be placed
  within ``distributed.timeout_s`` or the launch fails naming what the cluster has.
* one actor per bundle starts its rank as a child process (its own process group) and hands
  its output to this driver, which prints rank 0's as its own and the others' errors with a
  ``[rank i]`` prefix.
* the vLLM servers a run starts (``rollout.vllm.mode: server`` without a ``url``) get bundles
  of their own after the ranks' (``distributed.ray_cpus_per_engine`` CPUs, and
  ``rollout.vllm.tensor_parallel_size`` GPUs on a GPU run), an ``EngineHost`` actor in each
  (``rlvr.distributed.ray_engines``): rank 0's pool runs its servers there.
* teardown: when a rank exits non-zero, an actor dies (a lost node), or this process gets
  Ctrl-C or SIGTERM, every rank gets SIGTERM (they stop like torchrun's: the last checkpoint
  kept), then SIGKILL after a grace period; the actors and the placement group are removed
  and a local cluster is shut down. Every call to an actor has a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import json
import uuid
from typing import Any, NamedTuple, Sequence

GRACE_S = 60.0  # between SIGTERM and SIGKILL of the ranks (they save nothing on SIGTERM: they stop)
CALL_TIMEOUT_S = 60.0  # one actor call (start, drain, signal)


class EngineBundles(NamedTuple):
    """The vLLM servers' share of the placement group: ``count`` bundles of ``cpus`` CPUs and
    ``gpus`` GPUs each (count 0: the run starts no servers, or rank 0 would start them)."""

    count: int = 0
    cpus: float = 1.0
    gpus: int = 0
    shared_dir: bool = False  # rollout.vllm.weights_dir is set: servers on other nodes can read the weights


class RankProcess:
    """A Ray actor (threaded) that runs one trainer rank as a child process and buffers its output."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.out: list[str] = []
        self.err: list[str] = []

    def node(self) -> tuple[str, int]:
        """This actor's node address and a free port on it (used when it hosts rank 0)."""
        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = int(sock.getsockname()[1])
        return ray.util.get_node_ip_address(), port

    def start(self, argv: list[str], env: dict[str, str], cwd: str | None) -> int:
        import subprocess
        import threading

        child_env = {**env}
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPU Ray gave this actor
            child_env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        child_env.setdefault("PYTHONUNBUFFERED", "1")  # lines reach the driver as they are printed
        self.proc = subprocess.Popen([sys.executable, "-m", "rlvr", *argv], env=child_env,
                                     cwd=cwd if cwd and os.path.isdir(cwd) else None, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: [k.append(line) for line in s], daemon=True).start()
        return int(self.proc.pid)

    def drain(self) -> tuple[list[str], list[str], int | None]:
        """Output lines since the last call, and the exit code once the rank has ended."""
        code = self.proc.poll() if self.proc is not None else None
        if code is not None:
            time.sleep(0.1)  # the reader threads take the last lines
        out, err = self.out[:], self.err[:]  # the reader threads keep appending to these lists
        del self.out[:len(out)], self.err[:len(err)]
        return out, err, code

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def launch(argv: Sequence[str], nproc: int, cpus_per_rank: float, gpus_per_rank: int, timeout_s: float,
           threads: int, engines: EngineBundles = EngineBundles()) -> int:
    """Run ``python -m rlvr ARGV`` as ``nproc`` trainer ranks placed by Ray, with ``engines``
    bundles for the run's vLLM servers; the ranks' exit code."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    address = os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized() and not address
    if not ray.is_initialized():
        import logging

        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=False)
    from rlvr.distributed.ray_engines import ENV as ENGINES_ENV
    from rlvr.distributed.ray_engines import EngineHost

    bundle = {"CPU": float(cpus_per_rank), **({"GPU": float(gpus_per_rank)} if gpus_per_rank else {})}
    engine_bundle = {"CPU": float(engines.cpus), **({"GPU": float(engines.gpus)} if engines.gpus else {})}
    group = placement_group([dict(bundle) for _ in range(nproc)] + [dict(engine_bundle) for _ in range(engines.count)],
                            strategy="PACK")
    actors: list[Any] = []
    hosts: list[Any] = []
    stopping: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum: int, frame: Any) -> None:
        stopping.append(signum)

    try:
        ready, _ = ray.wait([group.ready()], timeout=timeout_s)
        if not ready:
            servers = f" and {engines.count} vLLM server(s) of {engine_bundle} each" if engines.count else ""
            raise LaunchError(f"Ray could not place {nproc} trainer ranks of {bundle} each{servers} within distributed."
                              f"timeout_s={timeout_s:g} s; the cluster has {ray.available_resources()} available "
                              "(lower distributed.ray_cpus_per_rank" + (", ray_cpus_per_engine" if servers else "")
                              + " or --nproc, or add nodes)")
        actor_cls = ray.remote(RankProcess)
        actors = [actor_cls.options(num_cpus=0, max_concurrency=4, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=i)).remote() for i in range(nproc)]
        nodes = ray.get([a.node.remote() for a in actors], timeout=CALL_TIMEOUT_S)
        master_addr, master_port = nodes[0]
        ips = [ip for ip, _ in nodes]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        if engines.count:  # named actors in a namespace of this launch, found by rank 0's server proxies
            namespace = f"rlvr-{uuid.uuid4().hex[:12]}"
            host_cls = ray.remote(EngineHost)
            hosts = [host_cls.options(name=f"engine-{i}", namespace=namespace, num_cpus=0, max_concurrency=4,
                                      scheduling_strategy=PlacementGroupSchedulingStrategy(
                                          placement_group=group, placement_group_bundle_index=nproc + i)).remote()
                     for i in range(engines.count)]
            host_ips = ray.get([h.node.remote() for h in hosts], timeout=CALL_TIMEOUT_S)
            elsewhere = sorted({ip for ip in host_ips if ip != master_addr})
            if elsewhere and not engines.shared_dir:  # they would not find the checkpoint rank 0 writes
                raise LaunchError(f"Ray placed vLLM servers on {', '.join(elsewhere)}, not on rank 0's node "
                                  f"{master_addr}: set rollout.vllm.weights_dir to a directory every node mounts")
            base_env[ENGINES_ENV] = json.dumps({
                "address": ray.get_runtime_context().gcs_address, "namespace": namespace,
                "hosts": [{"name": f"engine-{i}", "ip": ip} for i, ip in enumerate(host_ips)],
                # the ranks get no RAY_* variables, but the proxies connect as this driver does
                "env": {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH_")}})
        starts = []
        for rank, actor in enumerate(actors):
            env = {**base_env, "RANK": str(rank), "WORLD_SIZE": str(nproc), "MASTER_ADDR": master_addr,
                   "MASTER_PORT": str(master_port), "LOCAL_RANK": str(ips[:rank].count(ips[rank])),
                   "LOCAL_WORLD_SIZE": str(ips.count(ips[rank])), "OMP_NUM_THREADS": str(threads),
                   "TORCHELASTIC_RUN_ID": "rlvr-ray"}
            starts.append(actor.start.remote(list(argv), env, os.getcwd()))
        ray.get(starts, timeout=CALL_TIMEOUT_S)
        for sig in previous:
            signal.signal(sig, stop)
        return _supervise(ray, actors, stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for actor in [*actors, *hosts]:  # (a host's server watches its actor and ends with it)
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        remove_placement_group(group)
        if started_here:
            ray.shutdown()


def _supervise(ray: Any, actors: list[Any], stopping: list[int]) -> int:
    """Relay the ranks' output until every rank has ended; on a failure, a lost actor or a
    signal, stop them all. The exit code: the first failure's, 128+signal, or 0."""
    codes: list[int | None] = [None] * len(actors)
    failure: int | None = None
    deadline: float | None = None
    while any(code is None for code in codes):
        for rank, actor in enumerate(actors):
            if codes[rank] is not None:
                continue
            try:
                out, err, code = ray.get(actor.drain.remote(), timeout=CALL_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 (an actor or its node is gone)
                print(f"[rank {rank}] lost: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                      file=sys.stderr, flush=True)
                out, err, code = [], [], 1
            for line in out:
                sys.stdout.write(line if rank == 0 else f"[rank {rank}] {line}")
            for line in err:
                sys.stderr.write(line if rank == 0 else f"[rank {rank}] {line}")
            sys.stdout.flush()
            sys.stderr.flush()
            if code is not None:
                codes[rank] = 128 - code if code < 0 else code
                if codes[rank] and failure is None:
                    failure = codes[rank]
        if (failure is not None or stopping) and deadline is None:
            for actor in actors:
                _call(ray, actor.signal, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for actor in actors:
                _call(ray, actor.signal, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.2)
    if stopping:
        return 128 + stopping[0]
    return failure or 0


def _call(ray: Any, method: Any, *args: Any) -> None:
    try:
        ray.get(method.remote(*args), timeout=CALL_TIMEOUT_S)
    except Exception:  # noqa: BLE001 (a gone actor has no rank to stop)
        pass


class LaunchError(RuntimeError):
    """The ranks could not be placed or started."""
