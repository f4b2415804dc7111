"""LoRA RL against full fine-tuning on the default recipe: step time, peak memory, trainable
parameters and held-out accuracy after the same RL steps.

    python benchmarks/bench_lora.py                      # full, r=8, r=32; 20 RL steps each
    python benchmarks/bench_lora.py --ranks 8 --steps 60 --seeds 0 1

The SFT warm start is trained once (``rlvr sft``) and shared; each arm is then an RL-only
run (``stages=[rl]``) from it in a fresh process, whose peak resident memory is read from
the kernel's accounting of that process (``os.wait4``). Median ``step_time`` over the steps
after the first; the trainable parameters are the policy's (the adapters with LoRA).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> int:
    """``python -m rlvr ARGS``; its peak RSS in MiB."""
    child = subprocess.Popen([sys.executable, "-m", "rlvr", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    err = child.stderr.read() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"rlvr {' '.join(args)} failed:\n{err[-3000:]}")
    return usage.ru_maxrss // 1024


def trainable_parameters(rank: int, checkpoint: Path) -> int:
    from transformers import AutoModelForCausalLM

    from rlvr.config import load_config
    from rlvr.models.lora import attach_lora

    model = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True)
    if rank:
        attach_lora(model, load_config(None, [f"model.lora.r={rank}"]).model.lora)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / ".cache" / "lora"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32], help="LoRA ranks (full FT always runs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="rl.lr of the LoRA arms (adapters want more)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = out / "warmstart"
    if not (warm / "summary.json").is_file():
        run("sft", "--output-dir", str(warm), "logging.progress=false")
    checkpoint = warm / json.loads((warm / "state.json").read_text())["sft_final"]
    rows = []
    for seed in args.seeds:
        for rank in [0, *args.ranks]:
            name = f"seed{seed}-r{rank}"
            extra = [f"model.lora.r={rank}", f"rl.lr={args.lora_lr}"] if rank else []
            rss = run("train", "--output-dir", str(out / name), f"model.path={checkpoint}", "stages=[rl]",
                      f"rl.steps={args.steps}", f"seed={seed}", "eval.every=0", f"checkpoint.every={args.steps}",
                      "logging.progress=false", *extra)
            steps = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
            steps = [r for r in steps if r.get("stage") == "rl"]
            summary = json.loads((out / name / "summary.json").read_text())
            rows.append((seed, rank, statistics.median(r["step_time"] for r in steps[1:]), rss,
                         trainable_parameters(rank, checkpoint), summary["warmstart_accuracy"],
                         summary["final_accuracy"]))
            print(f"  {name}: done", flush=True)
    print(f"\n{args.steps} RL steps from a shared warm start; median s/step of steps 2-{args.steps}")
    print(f"{'seed':>4} {'arm':>8} {'s/step':>7} {'peak RSS MiB':>12} {'trainable':>10} {'acc before':>10} "
          f"{'acc after':>9}")
    for seed, rank, step_s, rss, params, before, after in rows:
        arm = f"r={rank}" if rank else "full"
        print(f"{seed:>4} {arm:>8} {step_s:>7.3f} {rss:>12} {params:>10} {before:>10.3f} {after:>9.3f}")


if __name__ == "__main__":
    main()
