"""The GPU check: rlvr on one CUDA device with whatever torch (>= 2.11) and transformers
(>= 5.17) the machine has, no vLLM, no network. Sized to finish in under 8 minutes.

1. the ``gpu``-marked tests (tests/test_precision.py: bf16 log-probs on CUDA, a CUDA run);
2. a Qwen2.5-0.5B-shaped random model (hidden 896, 24 layers, 14/2 heads, BPE ChatML
   tokenizer) written as a checkpoint directory, loaded as float32 master weights on CUDA;
3. bf16-autocast log-probs against float32 on the same tokens (max and mean |diff|);
4. own KV-cache engine tokens/s in bf16 at batch 8/64/256 against HF ``generate`` in bf16;
5. a few RL steps through ``rlvr train`` (device=cuda, model.dtype=bfloat16, own engine),
   printing step time and its parts.

Run: ``bash benchmarks/gpu_check.sh`` (it sets PYTHONPATH and writes the log to $OUT if set).
Each section reports and carries on when another fails, so one run shows everything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEVICE, BATCHES = "cuda", (8, 64, 256)
LOGPROB_TOLERANCE = 0.15  # bf16 vs fp32 over 24 layers; the test suite's 2-layer bound is 0.08


def section(title: str):
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n== {title}", flush=True)
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                print(f"-- {title}: ok ({time.perf_counter() - t0:.1f} s)", flush=True)
                return result
            except Exception:  # report and go on: one device run should show every section
                traceback.print_exc()
                print(f"-- {title}: FAILED ({time.perf_counter() - t0:.1f} s)", flush=True)
                return None
        return run
    return wrap


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@section("environment")
def environment() -> None:
    import transformers

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
          f"python {sys.version.split()[0]}")
    if DEVICE != "cuda":
        return
    print(f"device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")


@section("gpu-marked tests")
def gpu_tests() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                             "-o", "addopts=", "tests/"], cwd=ROOT, timeout=300)
    if result.returncode:
        raise RuntimeError(f"pytest -m gpu exited {result.returncode}")


@section("Qwen2.5-0.5B-shaped random checkpoint")
def checkpoint(out: Path, shape: str) -> Path:
    from rlvr.models.random_checkpoint import write_random_checkpoint

    path = write_random_checkpoint(out / shape, shape=shape, template="chatml", seed=0)
    config = json.loads((path / "config.json").read_text())
    print({k: config.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                      "num_key_value_heads", "intermediate_size", "vocab_size")})
    return path


def _load(path: Path):
    from rlvr.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path)
    return model.to(DEVICE), tokenizer


def _batch(tokenizer, rows: int, prompt_len: int, response_len: int, seed: int = 0):
    from rlvr.training.batch import make_token_batch

    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    prompts = [torch.randint(0, vocab - 32, (prompt_len,), generator=g).tolist() for _ in range(rows)]
    responses = [torch.randint(0, vocab - 32, (response_len,), generator=g).tolist() for _ in range(rows)]
    return make_token_batch(prompts, responses, tokenizer.pad_token_id)


@section("bf16 log-probs against float32 (CUDA)")
def logprob_parity(path: Path) -> None:
    from rlvr.training.batch import token_logprobs

    model, tokenizer = _load(path)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.0f}M parameters, float32 master weights on {next(model.parameters()).device}")
    batch = _batch(tokenizer, rows=16, prompt_len=64, response_len=192).to(DEVICE)
    mask = batch.target_mask.bool()
    for packed in (True, False):
        with torch.no_grad():
            ref, _ = token_logprobs(model, batch, packed=packed)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                low, _ = token_logprobs(model, batch, packed=packed)
        diff = (low - ref)[mask].abs()
        print(f"packed={packed}: |logp_bf16 - logp_fp32| max {float(diff.max()):.4f} mean {float(diff.mean()):.5f} "
              f"(logp mean {float(ref[mask].mean()):.2f}) over {int(mask.sum())} tokens")
        if float(diff.max()) > LOGPROB_TOLERANCE:
            raise AssertionError(f"bf16 log-probs differ from fp32 by {float(diff.max()):.4f} > {LOGPROB_TOLERANCE}")
    # timing of one training forward+backward in bf16 over the batch
    model.train()
    sync()
    for label, packed in (("packed", True), ("HF forward", False)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                logp, _ = token_logprobs(model, batch, packed=packed)
            (-(logp * batch.target_mask).sum()).backward()
            sync()
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        print(f"{label}: forward+backward over {batch.input_ids.numel()} padded tokens {min(times) * 1e3:.0f} ms")
    del model


@section("generation tokens/s: own KV-cache engine vs HF generate (bf16, CUDA)")
def generation(path: Path) -> None:
    from rlvr.rollout.kv_cache import KVCacheEngine

    model, tokenizer = _load(path)
    model.eval()
    new_tokens = 128
    eos = tokenizer.eos_token_id  # a random model rarely stops: every row runs max_new_tokens
    for batch in BATCHES:
        g = torch.Generator().manual_seed(batch)
        prompts = [torch.randint(0, len(tokenizer) - 32, (48,), generator=g).tolist() for _ in range(batch // 8)]
        prompts = [p for p in prompts for _ in range(8)]  # GRPO groups of 8
        engine = KVCacheEngine()
        results = {}
        for name in ("rlvr", "hf"):
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
                for attempt in range(2):  # the first call warms up kernels and the allocator
                    sync()
                    t0 = time.perf_counter()
                    if name == "rlvr":
                        gens = engine.generate(model, prompts, max_new_tokens=new_tokens, temperature=1.0, top_p=1.0,
                                               eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               generator=torch.Generator().manual_seed(attempt))
                        tokens = sum(len(x.response_ids) for x in gens)
                    else:
                        ids = torch.tensor(prompts, device=DEVICE)
                        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                             pad_token_id=tokenizer.pad_token_id, output_scores=False)
                        tokens = (out.shape[1] - ids.shape[1]) * batch
                    sync()
                    elapsed = time.perf_counter() - t0
            results[name] = tokens / elapsed
        print(f"batch {batch:4d}: rlvr {results['rlvr']:9.0f} tok/s, HF generate {results['hf']:9.0f} tok/s, "
              f"ratio {results['rlvr'] / results['hf']:.2f}x")
    del model


@section("RL steps through `rlvr train` (device=cuda, bf16, own engine)")
def rl_steps(path: Path, out: Path, steps: int) -> None:
    run_dir = out / "rl-run"
    cmd = [sys.executable, "-m", "rlvr.cli", "train", "--output-dir", str(run_dir), f"model.path={path}",
           "stages=[rl]", f"device={DEVICE}", "model.dtype=bfloat16", f"rl.steps={steps}", "rl.prompts_per_step=16",
           "rl.samples_per_prompt=8", "rl.mini_batches=2", "rl.micro_batch_size=32", "rollout.max_new_tokens=96",
           "eval.problems=16", "eval.samples=1", "eval.batch_size=16", "rl.lr=1e-6", "logging.progress=false",
           "checkpoint.every=1000",
           # a random model earns no reward: random rewards give every step a real gradient to compute
           "reward.shaping=[{name: random_reward}]"]
    print(" ".join(cmd[2:]))
    subprocess.run(cmd, cwd=ROOT, timeout=420, check=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        print(f"step {r['step']}: step {r['step_time']:.2f} s = generation {r['time_generation']:.2f} + scoring "
              f"{r['time_scoring']:.2f} + update {r['time_update']:.2f}; {r['tokens_per_s']:.0f} tok/s; "
              f"loss {r.get('loss')}, grad_norm {r.get('grad_norm')}, response length {r['response_length']:.1f}, "
              f"peak GPU memory {r.get('gpu_memory_peak_gib', float('nan')):.1f} GiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rl-steps", type=int, default=3)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="rehearse every section on the CPU with a tiny shape (before spending GPU time)")
    args = parser.parse_args()
    global DEVICE, BATCHES
    if args.cpu_dry_run:
        DEVICE, BATCHES, shape = "cpu", (8, 16), "qwen2-tiny"
    elif not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing to check", file=sys.stderr)
        return 2
    else:
        shape = "qwen2.5-0.5b"
    t0 = time.perf_counter()
    environment()
    if not args.skip_tests:
        gpu_tests()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        path = checkpoint(out, shape)
        if path is not None:
            logprob_parity(path)
            generation(path)
            rl_steps(path, out, args.rl_steps)
    print(f"\ngpu_check done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
