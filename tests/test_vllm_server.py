"""The vLLM server engine (``rlvr.rollout.vllm_server``, ``rollout.vllm.mode: server``)
against our own engine and the trainer, over vLLM's HTTP API on loopback: greedy tokens
equal ``KVCacheEngine``'s, sampled log-probs equal the trainer's recomputation, a weight
sync (vLLM's weight-update protocol with the safetensors backend) changes the outputs and
passes ``verify_sync`` with the version the server reports, a skipped sync, a corrupted
tensor and a failed update are caught, finish reasons and stop sequences follow the engine
contract, connect-to-URL mode works, and a server that never starts, stalls or dies gives a
clear error instead of a hang. One server serves the module (it starts in ~13 s on 2 CPU
cores); the test that kills it runs last."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from rlvr.rollout.kv_cache import KVCacheEngine  # noqa: E402
from rlvr.rollout.sampler import Sampler  # noqa: E402
from rlvr.rollout.vllm_engine import EngineHangError, WeightSyncError, expected_checksum  # noqa: E402
from rlvr.config import RunConfig  # noqa: E402
from rlvr.rollout.vllm_launch import platform_args  # noqa: E402
from rlvr.rollout.vllm_server import (  # noqa: E402
    VLLMServerEngine,
    VLLMServerError,
    _group_alive,
    server_command,
)
from vllm_contract import (  # noqa: E402  (tests/vllm_contract.py: the checks both vLLM engines pass)
    LOGPROB_TOL,
    check_a_partial_stop_sequence_resumes_the_row,
    check_finish_reasons_eos_stop_and_length,
    check_greedy_tokens_equal_kv_cache_engine,
    check_seeded_prompts_over_one_steps_token_budget,
    prompts_of,
    sample,
    save_tiny_model,
    trainer_logprobs,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("vllm_server_ckpt"))


# vLLM's worker in its engine-core process: a server starts in ~13 s instead of ~19 s on 2
# cores. RLVR_TEST_VLLM_SERVER_LAYOUT=default runs vLLM's own three-process layout instead.
SERVER_ENV = {} if os.environ.get("RLVR_TEST_VLLM_SERVER_LAYOUT") == "default" else \
    {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@pytest.fixture(scope="module")
def engine(base):
    path, _, _ = base
    eng = VLLMServerEngine(path, dtype="float32", max_model_len=256, max_num_seqs=32, kv_cache_memory_bytes=64 << 20,
                           startup_timeout_s=300, generate_timeout_s=60, call_timeout_s=60, env=SERVER_ENV)
    print(f"\nvLLM server started in {eng.startup_s:.1f} s")
    yield eng
    eng.close()


@pytest.fixture
def trainer(base, engine):
    """A trainer-side copy of the checkpoint model; the server gets the checkpoint's
    weights back after the test (version 0)."""
    _, model, _ = base
    yield copy.deepcopy(model)
    if not engine._closed and engine.weight_version != 0:
        engine.load_weights(model.state_dict().items(), version=0)


def test_greedy_tokens_equal_kv_cache_engine(base, engine, trainer):
    _, model, tokenizer = base
    check_greedy_tokens_equal_kv_cache_engine(engine, model, tokenizer)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_the_trainers_recomputation(base, engine, trainer, temperature):
    _, model, tokenizer = base
    gens = sample(engine, None, tokenizer, temperature=temperature, max_new_tokens=32,
                   generator=torch.Generator().manual_seed(1))
    assert sum(len(g.response_ids) for g in gens) > 100
    recomputed, behaviour = trainer_logprobs(model, prompts_of(tokenizer), gens, temperature)
    assert (recomputed - behaviour).abs().max() < LOGPROB_TOL


def test_seeds_come_from_the_generator(base, engine, trainer):
    _, _, tokenizer = base

    def draw(seed):
        return [g.response_ids for g in sample(engine, None, tokenizer, temperature=1.0,
                                                generator=torch.Generator().manual_seed(seed))]

    first = draw(3)
    assert first == draw(3)
    assert first != draw(4)
    group = [prompts_of(tokenizer)[0]] * 4  # a GRPO group: every request has a seed of its own
    for generator in (torch.Generator().manual_seed(5), None):  # unseeded: one request, the server's RNG
        gens = engine.generate(None, group, max_new_tokens=16, temperature=1.0, top_p=1.0, eos_token_id=[999],
                               pad_token_id=0, generator=generator)
        assert len({tuple(g.response_ids) for g in gens}) == 4


def test_seeded_prompts_over_one_steps_token_budget(base, engine, trainer):
    _, model, tokenizer = base
    check_seeded_prompts_over_one_steps_token_budget(engine, model, tokenizer)


def test_top_p_below_one_is_refused_unless_allowed(base, engine, trainer):
    _, _, tokenizer = base
    with pytest.raises(ValueError, match="renormalised nucleus"):
        sample(engine, None, tokenizer, temperature=1.0, top_p=0.9)


def test_weight_sync_changes_outputs_and_verifies(base, engine, trainer):
    _, model, tokenizer = base
    engine.verify_sync(model.state_dict().items(), version=0)  # the checkpoint as started
    before = [g.response_ids for g in sample(engine, None, tokenizer)]
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # one "optimizer step"
        for param in trainer.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    started = time.perf_counter()
    engine.load_weights(trainer.state_dict().items(), version=1)
    synced = time.perf_counter() - started
    started = time.perf_counter()
    engine.verify_sync(trainer.state_dict().items(), version=1)
    print(f"\nsync {synced * 1e3:.0f} ms, verify {(time.perf_counter() - started) * 1e3:.0f} ms")
    assert engine.server_weight_version() == "1"  # read back from the server
    engine.verify_sync(trainer.named_parameters(), version=1)  # the tied LM head listed once
    after = sample(engine, None, tokenizer)
    assert [g.response_ids for g in after] != before
    ours = sample(KVCacheEngine(), trainer, tokenizer)
    assert [g.response_ids for g in after] == [g.response_ids for g in ours]
    sampled = sample(engine, None, tokenizer, temperature=1.0, generator=torch.Generator().manual_seed(2))
    recomputed, behaviour = trainer_logprobs(trainer, prompts_of(tokenizer), sampled, 1.0)
    assert (recomputed - behaviour).abs().max() < LOGPROB_TOL


def test_weights_travel_in_buckets_that_may_split_a_fused_layer(base, engine, trainer):
    with torch.no_grad():
        trainer.model.layers[0].self_attn.k_proj.weight.mul_(-1.0)
    engine.bucket_bytes = 1  # one tensor per file and request: q, k, v of a layer arrive apart
    try:
        engine.load_weights(trainer.state_dict().items(), version=7)
    finally:
        engine.bucket_bytes = 256 << 20
    engine.verify_sync(trainer.state_dict().items(), version=7)


def test_a_skipped_sync_is_caught(base, engine, trainer):
    engine.load_weights(trainer.state_dict().items(), version=1)
    with torch.no_grad():  # the next step's update, never pushed
        trainer.model.norm.weight.add_(0.01)
    with pytest.raises(WeightSyncError, match=r"version 2: the engine holds version 1 \(the vLLM server reports '1'\)"):
        engine.verify_sync(trainer.state_dict().items(), version=2)
    with pytest.raises(WeightSyncError, match=r"version 1: parameter model\.norm\.weight differs"):
        engine.verify_sync(trainer.state_dict().items(), version=1)  # a version bumped without the weights


def test_a_single_corrupted_tensor_is_caught(base, engine, trainer):
    name = "model.layers.1.mlp.up_proj.weight"  # fused into gate_up_proj inside vLLM
    sent = {k: v.clone() for k, v in trainer.state_dict().items()}
    sent[name][3, 5] += 1e-3  # corrupted in transit
    engine.load_weights(sent.items(), version=3)
    with pytest.raises(WeightSyncError, match=rf"version 3: parameter {name} differs"):
        engine.verify_sync(trainer.state_dict().items(), version=3)
    with torch.no_grad():  # tampered on the trainer side after the push
        trainer.model.layers[0].self_attn.v_proj.weight[0, 0] += 1e-3
    engine.load_weights(trainer.state_dict().items(), version=4)
    engine.verify_sync(trainer.state_dict().items(), version=4)
    assert engine.weights_checksum() == expected_checksum(trainer.state_dict().items(), torch.float32)


def test_a_failed_update_is_reported_and_the_server_stays_usable(base, engine, trainer):
    _, model, tokenizer = base
    bad = list(trainer.state_dict().items()) + [("model.layers.9.no_such.weight", torch.zeros(2, 2))]
    with pytest.raises(VLLMServerError, match="load_weights .*HTTP 500"):
        engine.load_weights(bad, version=5)
    assert engine.weight_version is None
    with pytest.raises(WeightSyncError, match="version 5: the engine holds version None"):
        engine.verify_sync(trainer.state_dict().items(), version=5)
    assert engine.ping() < 30  # resumed: the session was closed and generation goes on
    engine.load_weights(model.state_dict().items(), version=0)
    engine.verify_sync(model.state_dict().items(), version=0)
    assert [g.response_ids for g in sample(engine, None, tokenizer)] == \
        [g.response_ids for g in sample(KVCacheEngine(), model, tokenizer)]


def test_the_sampler_pushes_and_verifies(base, engine, trainer):
    _, _, tokenizer = base
    sampler = Sampler(engine, trainer, tokenizer)
    with torch.no_grad():
        trainer.lm_head.weight.mul_(1.5)  # tied: the embedding too
    sampler.load_weights(trainer, version=8)
    assert sampler.version == 8 and engine.server_weight_version() == "8"


def test_finish_reasons_eos_stop_and_length(base, engine, trainer):
    _, model, tokenizer = base
    check_finish_reasons_eos_stop_and_length(engine, model, tokenizer)


def test_a_partial_stop_sequence_resumes_the_row(base, engine, trainer):
    _, model, tokenizer = base
    check_a_partial_stop_sequence_resumes_the_row(engine, model, tokenizer)


def test_connect_to_a_running_server(base, engine, trainer):
    _, model, tokenizer = base
    with VLLMServerEngine(url=engine.url, call_timeout_s=30, generate_timeout_s=30) as connected:
        assert connected.proc is None and connected.weight_version == 0  # read from the server
        assert [g.response_ids for g in sample(connected, None, tokenizer)] == \
            [g.response_ids for g in sample(engine, None, tokenizer)]
        connected.verify_sync(model.state_dict().items(), version=0)
        with torch.no_grad():
            trainer.model.layers[1].mlp.down_proj.weight.mul_(0.5)
        connected.load_weights(trainer.state_dict().items(), version=11)
        connected.verify_sync(trainer.state_dict().items(), version=11)
    assert engine.ping() < 30  # closing a connected engine leaves the server running
    engine.weight_version = 11  # the trainer fixture puts version 0 back
    with pytest.raises(VLLMServerError, match="unreachable"):
        VLLMServerEngine(url="http://127.0.0.1:9", call_timeout_s=5)  # nothing listens on the discard port


def test_build_in_connect_mode_sends_the_trainers_weights(base, engine, trainer):
    _, _, tokenizer = base
    config = RunConfig()
    config.rollout.vllm.mode, config.rollout.vllm.url = "server", engine.url
    with torch.no_grad():
        trainer.model.layers[0].mlp.gate_proj.weight.mul_(0.5)
    with VLLMServerEngine.build(config, trainer, tokenizer) as built:
        assert built.weight_version == 0
        built.verify_sync(trainer.state_dict().items(), version=0)
    engine.weight_version = None  # the trainer fixture puts the checkpoint back


def test_ping(engine):
    assert 0 <= engine.ping(timeout_s=30) < 30


def test_server_command_names_what_the_engine_needs(tmp_path):
    cmd = " ".join(server_command(tmp_path, port=8123))
    for flag in ("--logprobs-mode processed_logprobs", "--worker-extension-cls rlvr.rollout.vllm_server.",
                 '--weight-transfer-config {"backend": "rlvr_safetensors"}', "--port 8123", "--generation-config vllm"):
        assert flag in cmd
    assert "-m rlvr.rollout.vllm_launch" in cmd  # vLLM's API server with the platform's flags


def test_a_cpu_server_turns_chunked_prefill_off_unless_told():
    assert platform_args(["--model", "m"], on_cpu=True) == ["--no-enable-chunked-prefill"]
    assert platform_args(["--model", "m"], on_cpu=False) == []
    assert platform_args(["--enable-chunked-prefill"], on_cpu=True) == []  # the user's choice stands
    assert platform_args(["--enable-chunked-prefill=true"], on_cpu=True) == []


def test_a_server_that_exits_at_startup_reports_its_log(tmp_path):
    launcher = [sys.executable, "-c", "import sys; print('no such model, giving up'); sys.exit(3)"]
    started = time.perf_counter()
    with pytest.raises(VLLMServerError, match="(?s)exited with code 3 during startup.*no such model, giving up"):
        VLLMServerEngine(tmp_path, launcher=launcher, startup_timeout_s=60)
    assert time.perf_counter() - started < 10


def test_a_server_that_never_becomes_healthy_times_out(tmp_path):
    launcher = [sys.executable, "-c", "import sys, time; print('loading forever', flush=True); time.sleep(120)"]
    engine_box = []

    class Probe(VLLMServerEngine):
        def _wait_healthy(self, deadline, timeout_s):
            engine_box.append(self.proc)
            return super()._wait_healthy(deadline, timeout_s)

    with pytest.raises(EngineHangError, match="(?s)did not become healthy within 1 s.*loading forever"):
        Probe(tmp_path, launcher=launcher, startup_timeout_s=1.0, shutdown_grace_s=2.0)
    assert engine_box and engine_box[0].poll() is not None  # the process was ended


# a process that starts a (fake, never healthy) server and then crashes: by an exception
# (the engine's finalizer runs at exit), or killed outright (the server gets SIGTERM from
# the kernel: PR_SET_PDEATHSIG, set when the server was started from the main thread)
CRASHING = """
import os, signal, sys, threading
from rlvr.rollout.vllm_server import VLLMServerEngine
started = threading.Event()
class Probe(VLLMServerEngine):
    def _wait_healthy(self, deadline, timeout_s):
        print(self.proc.pid, self._log_dir, flush=True)
        started.set()
        if sys.argv[2] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._wait_healthy(deadline, timeout_s)
launcher = [sys.executable, "-c", "import time; time.sleep(120)"]
start = lambda: Probe(sys.argv[1], launcher=launcher, startup_timeout_s=300)
if sys.argv[2] == "sigkill":
    start()
threading.Thread(target=start, daemon=True).start()
started.wait(60)
raise RuntimeError("the trainer crashed")
"""


@pytest.mark.parametrize("how", ["exception", "sigkill"])
def test_a_crashed_trainer_leaves_no_server_behind(tmp_path, how):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASHING), str(tmp_path), how],
                          capture_output=True, text=True, timeout=120)
    server, log_dir = done.stdout.split()[:2]
    server = int(server)
    if how == "exception":
        assert "the trainer crashed" in done.stderr
        assert not os.path.exists(log_dir)  # removed at exit too
    else:
        assert done.returncode == -signal.SIGKILL
        shutil.rmtree(log_dir)  # nothing in the killed process could remove it
    deadline = time.monotonic() + 10
    while _group_alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(server)


def test_a_stalled_server_raises_with_the_thread_stacks(base, engine):
    _, _, tokenizer = base
    engine.generate_timeout_s = 2.0
    os.kill(engine.proc.pid, signal.SIGSTOP)  # the API server stops answering
    try:
        started = time.perf_counter()
        with pytest.raises(EngineHangError, match=r"(?s)generate \(8 prompts\) did not answer within 2 s.*Thread 0x"):
            sample(engine, None, tokenizer)
        assert time.perf_counter() - started < 10
        with pytest.raises(EngineHangError, match="ping did not answer within 0.5 s"):
            engine.ping(timeout_s=0.5)
    finally:
        os.kill(engine.proc.pid, signal.SIGCONT)
        engine.generate_timeout_s = 60.0
    assert engine.ping(timeout_s=30) < 30


def test_a_server_that_dies_mid_run_gives_a_clear_error(base, engine):
    """Runs last: it kills the module's server."""
    _, _, tokenizer = base
    group = engine.proc.pid
    os.kill(engine.proc.pid, signal.SIGKILL)
    started = time.perf_counter()
    with pytest.raises(VLLMServerError, match=r"exited with code -9 during generate"):
        sample(engine, None, tokenizer)
    assert time.perf_counter() - started < 10
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(VLLMServerError, match="closed"):
        engine.ping()
    assert not _group_alive(group)  # vLLM's other processes went with the API server
