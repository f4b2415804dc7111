"""Generation throughput of the rollout engine against the machine's matmul bound.

The bound: a generated token costs about 2 x (parameters outside the embedding lookup,
the output head included) FLOPs in matmuls plus 4 x layers x hidden x context in attention;
the machine does at most P FLOP/s in fp32 matmuls (measured here on a large square matmul,
and on the model's own projection shapes at each batch size). tokens/s divided by
P / FLOPs-per-token is the fraction of the bound reached. HF ``generate`` on the same model,
prompts and lengths is the baseline in the same run.

    python benchmarks/bench_generation.py                 # the default recipe's tiny model
    python benchmarks/bench_generation.py --hidden 512 --layers 4 --intermediate 2048

Every row generates exactly ``--new-tokens`` tokens per sample (EOS is never a stop), from
random weights, sampling at temperature 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import rlvr  # noqa: F401  (first: sets the OpenMP spin count before torch loads)
import torch

from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.kv_cache import KVCacheEngine


def best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(m: int, k: int, n: int, repeats: int = 20) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / best_seconds(lambda: a @ b, repeats) / 1e9


def model_shape_gflops(model, batch: int) -> float:
    """Throughput of the model's own projection matmuls at ``batch`` rows (one decode step's
    worth, in the proportions they occur)."""
    cfg = model.config
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    x, xi = torch.randn(batch, h), torch.randn(batch, i)
    ws = [torch.randn(3 * h, h), torch.randn(h, h), torch.randn(2 * i, h)]
    wd, wv = torch.randn(h, i), torch.randn(v, h)
    layers = cfg.num_hidden_layers

    def step():
        for _ in range(layers):
            for w in ws:
                torch.nn.functional.linear(x, w)
            torch.nn.functional.linear(xi, wd)
        torch.nn.functional.linear(x, wv)

    flops = 2 * batch * (layers * (3 * h * h + h * h + 2 * i * h + h * i) + v * h)
    return flops / best_seconds(step, 20) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--prompt-len", type=int, default=9)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-hf", action="store_true", help="skip the HF generate baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                             intermediate_size=args.intermediate,
                             max_position_embeddings=args.prompt_len + args.new_tokens + 8).eval()
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    matmul_params = params - cfg.vocab_size * cfg.hidden_size * (0 if cfg.tie_word_embeddings else 1) \
        - sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    context = args.prompt_len + args.new_tokens / 2  # mean attended length over the decode
    flops_per_token = 2 * matmul_params + 4 * cfg.num_hidden_layers * cfg.hidden_size * context
    peak = matmul_gflops(2048, 2048, 2048, 5)
    print(f"model: {params / 1e6:.2f}M parameters (hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers), "
          f"{flops_per_token / 1e6:.2f} MFLOP per generated token; {args.threads} threads "
          f"(GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}); "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"fp32 matmul 2048^3: {peak:.0f} GFLOP/s -> bound {peak * 1e9 / flops_per_token:,.0f} tokens/s\n")
    print(f"{'batch':>5s} {'rlvr tok/s':>11s} {'HF generate':>12s} {'speedup':>8s} {'model-shape':>12s} "
          f"{'% of peak':>10s} {'% of shape bound':>17s}")
    g = torch.Generator()
    engine = KVCacheEngine()
    for batch in args.batches:
        prompts = [[7 + (r + j) % 60 for j in range(args.prompt_len)] for r in range(batch)]
        tokens = batch * args.new_tokens

        def ours():
            out = engine.generate(model, prompts, max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0,
                                  eos_token_id=-1, pad_token_id=tok.pad_token_id, generator=g.manual_seed(0))
            assert sum(len(o.response_ids) for o in out) == tokens

        ids = torch.tensor(prompts)

        def hf():
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

        rate = tokens / best_seconds(ours, args.repeats)
        hf_rate = tokens / best_seconds(hf, args.repeats) if not args.no_hf else float("nan")
        shape = model_shape_gflops(model, batch)
        print(f"{batch:5d} {rate:11,.0f} {hf_rate:12,.0f} {rate / hf_rate:7.1f}x {shape:9.0f} GF "
              f"{100 * rate * flops_per_token / (peak * 1e9):9.1f}% "
              f"{100 * rate * flops_per_token / (shape * 1e9):16.1f}%")


if __name__ == "__main__":
    main()
