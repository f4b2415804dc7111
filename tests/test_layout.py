"""The layout line `rlvr train` prints at start (rlvr.distributed.layout)."""

from rlvr.config import RunConfig
from rlvr.distributed.layout import describe_layout
from rlvr.distributed.world import World
from rlvr.typed_yaml import apply_overrides, from_dict, to_dict


def _config(*overrides: str) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(to_dict(RunConfig()), list(overrides)))


def test_one_process_with_the_own_engine():
    line = describe_layout(_config(), World(), "cpu")
    assert line == ("layout: 1 trainer process (cpu); rollouts: the 'kv_cache' engine inside the trainer process, "
                    "sampling from the trainer's weights; synchronous (each step samples with the weights it trains)")


def test_ranks_sharing_started_servers():
    config = _config("rollout.engine=vllm", "rollout.vllm.mode=server", "rollout.vllm.engines=2",
                     "distributed.strategy=fsdp", "rl.max_staleness=1")
    line = describe_layout(config, World(rank=0, size=8, local_rank=0, local_size=4), "cuda")
    assert line.startswith("layout: 8 trainer ranks (nccl, cuda, 2 nodes x 4; FSDP2-sharded model and optimizer); "
                           "rollouts: 2 vLLM server process(es) started by rank 0, shared by every rank; weights "
                           "pushed after each update by rank 0")
    assert "each rank generates whole groups" in line and line.endswith("up to 1 weight version(s) behind "
                                                                         "(rl.max_staleness)")


def test_servers_at_urls_and_colocated_engines():
    urls = describe_layout(_config("rollout.engine=vllm", "rollout.vllm.mode=server",
                                   "rollout.vllm.url='http://a:8000, http://b:8000'"), World(), "cpu")
    assert "rollouts: 2 vLLM server(s) at http://a:8000, http://b:8000, shared by the trainer" in urls
    colocated = describe_layout(_config("rollout.engine=vllm"), World(rank=1, size=2, local_size=2), "cpu")
    assert "2 trainer ranks (gloo, cpu; replicated" in colocated and "a vllm.LLM inside each trainer rank" in colocated
