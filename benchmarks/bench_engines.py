"""Rollout engines side by side: rlvr's own KV-cache engine, vLLM (colocated, in process) and
HF ``generate``, on the default recipe's tiny model and on a Qwen2-shaped 53.5M-parameter model
with a 32k BPE vocabulary (random weights); then one RL step of each rlvr engine.

    python benchmarks/bench_engines.py            # batches 8/64/256, 3 repetitions
    python benchmarks/bench_engines.py --quick    # batches 8/64, 1 repetition, 2 RL steps

Run it with a Python that has vLLM (``pip install -e ".[cpu,dev,vllm]"``) to include vLLM;
without it the vLLM rows are skipped and said so.

Throughput: every measurement runs in a process of its own (vLLM in process binds threads to
cores and changes torch's settings, which would tilt the others), the engines in alternating
order in each repetition (own, vLLM, HF; then HF, vLLM, own; ...). In a process each batch is
generated once untimed, then ``--repeats`` times; the process reports the median, and the table
the median over repetitions. Every row generates exactly ``--new-tokens`` tokens (EOS never
stops a row), sampling at temperature 1 from distinct random prompts of ``--prompt-len`` tokens.

RL step: ``rlvr train 'stages=[rl]'`` from the same checkpoint with ``rollout.engine`` own
(``kv_cache``) and ``vllm``, ``--rl-prompts`` (32) prompts x 8 samples, at most ``--new-tokens`` new tokens; the
median ``step_time`` of the steps after the first, with its generation share. (HF ``generate``
has no rlvr engine: TRL's step, which generates with it, is ``bench_vs_trl.py``.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "engines"
MODELS = ("tiny", "qwen2-50m")
ENGINES = ("own", "vllm", "hf")


# --- the child: one engine, one model, every batch ---------------------------------------

def checkpoint(model: str) -> Path:
    """The model's checkpoint directory (written once under benchmarks/.cache/engines)."""
    path = CACHE / model
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{model}-"))
    if model == "tiny":  # the default recipe's model (RunConfig().model) and tokenizer
        from rlvr.config import RunConfig
        from rlvr.models import build_char_tokenizer, build_tiny_model

        spec = RunConfig().model
        tokenizer = build_char_tokenizer()
        built = build_tiny_model(tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                                 num_heads=spec.num_heads, intermediate_size=spec.intermediate_size)
        built.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    else:
        from rlvr.models.random_checkpoint import write_random_checkpoint

        write_random_checkpoint(tmp, shape=model)
    tmp.rename(path)
    return path


def child(args: argparse.Namespace) -> None:
    import random

    import rlvr  # noqa: F401  (first: the OpenMP spin count before torch loads)
    import torch

    from rlvr.models.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    path = checkpoint(args.model)
    model, tokenizer = load_model_and_tokenizer(path)
    model.eval()
    vocab = model.config.vocab_size
    low = 10 if vocab < 1000 else 1000  # clear of the special tokens
    high = min(vocab, len(tokenizer)) - 10
    max_len = args.prompt_len + args.new_tokens + 8
    engine = None
    if args.engine == "own":
        from rlvr.rollout.kv_cache import KVCacheEngine

        engine = KVCacheEngine()
    elif args.engine == "vllm":
        from rlvr.rollout.vllm_engine import VLLMEngine

        started = time.perf_counter()
        engine = VLLMEngine(path, dtype="float32", max_model_len=max_len, max_num_seqs=max(args.batches))
        print(f"vLLM started in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    rng = random.Random(args.seed)
    generator = torch.Generator()
    result = {}
    for batch in args.batches:
        prompts = [[rng.randrange(low, high) for _ in range(args.prompt_len)] for _ in range(batch)]
        tokens = batch * args.new_tokens

        if engine is not None:
            def run() -> None:
                out = engine.generate(None if args.engine == "vllm" else model, prompts,
                                      max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0,
                                      eos_token_id=-1, pad_token_id=tokenizer.pad_token_id,
                                      generator=generator.manual_seed(0))
                assert sum(len(o.response_ids) for o in out) == tokens
        else:
            ids = torch.tensor(prompts)

            def run() -> None:
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                         top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=args.new_tokens,
                                         min_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id)
                assert out.shape == (batch, args.prompt_len + args.new_tokens)

        run()  # untimed: allocations, kernel selection, vLLM's first batch
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        result[str(batch)] = tokens / statistics.median(times)
    if args.engine == "vllm":
        engine.close()
    print(json.dumps(result))


# --- the parent ----------------------------------------------------------------------------

def spawn(args: argparse.Namespace, engine: str, model: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", engine, "--model", model, "--threads", str(args.threads),
           "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len),
           "--repeats", str(args.repeats), "--seed", str(args.seed), "--batches", *map(str, args.batches)]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{engine} on {model} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rl_step(args: argparse.Namespace, engine: str, model: str) -> dict[str, float]:
    """Median step time (and generation seconds) of a short RL run, first step excluded."""
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        overrides = [f"model.path={checkpoint(model)}", "stages=[rl]", f"rl.steps={args.rl_steps + 1}",
                     f"rl.prompts_per_step={args.rl_prompts}", "rl.samples_per_prompt=8", f"rollout.max_new_tokens={args.new_tokens}",
                     "eval.problems=8", "eval.samples=1", "logging.progress=false", f"threads={args.threads}",
                     "rollout.engine=" + ("kv_cache" if engine == "own" else "vllm")]
        cmd = [sys.executable, "-m", "rlvr.cli", "train", "--output-dir", f"{tmp}/run", *overrides]
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, env=env)
        if done.returncode != 0:
            raise SystemExit(f"RL with {engine} on {model} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
                             f"\n{done.stdout[-2000:]}")
        records = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("stage") == "rl" and "step_time" in r][1:]
    return {key: statistics.median(r.get(f"time_{key}", 0.0) if key != "step_time" else r[key] for r in steps)
            for key in ("step_time", "generation", "update", "sync")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batches 8 and 64, 1 repetition, 2 RL steps")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--batches", type=int, nargs="+", help="default 8 64 256 (--quick: 8 64)")
    parser.add_argument("--reps", type=int, help="processes per engine and model, order alternating (default 3; "
                        "--quick: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per batch in a process")
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--rl-steps", type=int, help="timed RL steps per engine after one untimed (default 4; "
                        "--quick: 2; 0: none)")
    parser.add_argument("--rl-prompts", type=int, default=32, help="prompts per RL step (x 8 samples)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per child process")
    parser.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.engine = args.child
        return child(args)
    defaults = ([8, 64], 1, 2) if args.quick else ([8, 64, 256], 3, 4)
    args.batches = args.batches or defaults[0]
    args.reps = args.reps if args.reps is not None else defaults[1]
    args.rl_steps = args.rl_steps if args.rl_steps is not None else defaults[2]
    engines = list(args.engines)
    if "vllm" in engines and importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed in this Python: its rows are skipped (pip install -e \".[cpu,dev,vllm]\")")
        engines.remove("vllm")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {args.threads} threads, load {load}; {args.reps} repetition(s), "
          f"prompts of {args.prompt_len} tokens, {args.new_tokens} new tokens per row, temperature 1\n")
    for model in args.models:
        checkpoint(model)  # written once, outside the timings
        rates: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
        for rep in range(args.reps):
            for engine in (engines if rep % 2 == 0 else engines[::-1]):
                rates[engine].append(spawn(args, engine, model))
        print(f"{model}: generated tokens/s (median over {args.reps} process(es))")
        header = f"{'batch':>6s}" + "".join(f"{e:>12s}" for e in engines)
        ratio_names = [e for e in engines if e != "own"] if "own" in engines else []
        header += "".join(f"{'own/' + e:>11s}" for e in ratio_names)
        print(header)
        for batch in args.batches:
            median = {e: statistics.median(r[str(batch)] for r in rates[e]) for e in engines}
            row = f"{batch:6d}" + "".join(f"{median[e]:12,.0f}" for e in engines)
            row += "".join(f"{median['own'] / median[e]:10.2f}x" for e in ratio_names)
            print(row)
        rl_engines = [e for e in engines if e in ("own", "vllm")]
        if args.rl_steps > 0 and rl_engines:
            steps = {}
            for engine in rl_engines:
                steps[engine] = rl_step(args, engine, model)
            parts = [f"{e} {steps[e]['step_time']:.2f} s/step (generation {steps[e]['generation']:.2f} s, "
                     f"update {steps[e]['update']:.2f} s, weight sync {steps[e]['sync']:.2f} s)" for e in rl_engines]
            line = f"RL step ({args.rl_prompts} prompts x 8 samples, median of {args.rl_steps}): " + ", ".join(parts)
            if len(rl_engines) == 2:
                line += f"; vllm/own {steps['vllm']['step_time'] / steps['own']['step_time']:.2f}x"
            print(line)
        print()


if __name__ == "__main__":
    main()
