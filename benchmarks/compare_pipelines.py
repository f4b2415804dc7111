"""Training pipelines side by side on a difficulty band that RL alone cannot climb (issue 17).

    python benchmarks/compare_pipelines.py                       # 2 seeds x 8 arms, 2 runs at a time
    python benchmarks/compare_pipelines.py --seeds 0 --arms rl_alone relift --rl-steps 20
    python benchmarks/compare_pipelines.py --digits 3 4 --out runs/pipelines-3-4   # another band

The band: the default task family (addition with a scratchpad) at 4-5 digit operands, with
correct demonstrations (``teacher_carry_error: 0``), and a short warm start (400 SFT steps):
measured, it solves 1.5% of the held-out problems greedily (6% pass@8), and 40 steps of GRPO
from it fall to 0%, since almost every group's samples are all wrong. Every arm starts from
that warm start (cached: trained once per seed) and takes the same number of RL steps, with
the same prompts and samples per step:

- ``rl_alone``: GRPO.
- ``sft_all_then_rl``: a second SFT stage on one demonstration for each problem the RL stage
  will see (rl.steps x rl.prompts_per_step), then GRPO (a chain of stages).
- ``relift``: GRPO + ReLIFT (demonstrations of the problems a whole group fails).
- ``lora_r8``, ``lora_r32``: GRPO on LoRA adapters (rl.lr 1e-3, as benchmarks/bench_lora.py).
- ``expert_iteration``: fine-tuning on the verified samples (rft + reinforce, 2 epochs), at
  GRPO's samples per step.
- ``kdrl``: GRPO + reverse KL to the teacher (k2, 0.05 -> 0.01, on the wrong responses).
- ``on_policy_distillation``: the teacher's reverse KL alone, no task reward.

The teacher is the same model trained by SFT alone on 2000 steps of correct demonstrations
(another seed), once, in ``<out>/teacher`` (``--teacher PATH`` reuses a run or checkpoint).
Prints, per arm, the mean over seeds (and each seed) of held-out greedy accuracy and pass@8
after RL, the RL samples and response tokens generated, the demonstrations used, the wall
time of the run (warm start reuse excluded: the RL stage and its evaluations), and the
teacher's accuracy. Runs that finished are read, not run again (``--out`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TEACHER_SEED = 1000


def band(digits: tuple[int, int]) -> str:
    return f"task.params={{min_digits: {digits[0]}, max_digits: {digits[1]}, teacher_carry_error: 0.0}}"


def base_overrides(rl_steps: int, digits: tuple[int, int], warm_start_steps: int) -> list[str]:
    return [band(digits), f"sft.steps={warm_start_steps}", f"rl.steps={rl_steps}", "rollout.max_new_tokens=64",
            "eval.problems=200", "eval.samples=8", "eval.every=0", "threads=1", "logging.progress=false"]


def arms(rl_steps: int, teacher: str) -> dict[str, list[str]]:
    demo_steps = rl_steps * 32 // 64  # one demonstration per RL problem, 64 per SFT step
    with_teacher = [f"teacher.path={teacher}"]
    return {
        "rl_alone": [],
        "sft_all_then_rl": [f"stages=[sft, {{sft: {{sft.steps: {demo_steps}, sft.lr: 1.0e-3, "
                            "sft.warmup_steps: 0}}, rl]"],
        "relift": ["rl.relift.buffer=16"],
        "lora_r8": ["model.lora.r=8", "rl.lr=1e-3"],
        "lora_r32": ["model.lora.r=32", "rl.lr=1e-3"],
        "expert_iteration": ["algorithm.advantage=rft", "algorithm.loss=reinforce", "algorithm.accept_reward=1.0",
                             "rl.epochs=2"],
        "kdrl": [*with_teacher, "teacher.coef=0.05", "teacher.coef_final=0.01", "teacher.mask=incorrect"],
        "on_policy_distillation": [*with_teacher, "teacher.coef=1.0", "teacher.outcome=false"],
    }


def rlvr(args: list[str], log: Path) -> None:
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, "-m", "rlvr", *args], stdout=fh, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    if code:
        sys.exit(f"rlvr {' '.join(args)} exited with {code}; see {log}")


def train(run_dir: Path, overrides: list[str]) -> Path:
    """``run_dir`` trained (or resumed) to its end."""
    if (run_dir / "summary.json").is_file():
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    if (run_dir / "config.yaml").is_file():
        rlvr(["train", "--resume", str(run_dir)], log)
    else:
        rlvr(["train", "--output-dir", str(run_dir), *overrides], log)
    return run_dir


def records(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def measure(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = records(run_dir, "metrics.jsonl")
    rl = [m for m in metrics if m.get("stage") == "rl"]
    sft = [m for m in metrics if m.get("stage") == "sft"]
    samples, tokens, before = 0, 0.0, 0
    for m in rl:
        step_samples = m["samples_generated_total"] - before
        before = m["samples_generated_total"]
        samples += step_samples
        tokens += m["response_length"] * step_samples
    extra_sft = [m for m in sft if m.get("stage_index", 1) > 1]  # a chain's second SFT stage
    demos = 64 * len(extra_sft) + int(rl[-1].get("relift_demonstrations", 0) if rl else 0)
    final = next(e for e in records(run_dir, "eval.jsonl") if e["phase"] == "final")
    return {"accuracy": summary["final_accuracy"], "pass@8": final.get("pass@8"),
            "warm": summary["warmstart_accuracy"], "samples": samples, "tokens": tokens, "demos": demos,
            "demo_frac": rl[-1].get("relift_demo_frac") if rl else None,
            "seconds": sum(m["step_time"] for m in rl) + sum(m["step_time"] for m in extra_sft)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/pipelines", help="parent directory of the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rl-steps", type=int, default=40)
    parser.add_argument("--arms", nargs="+", help="a subset of the arms (default: all)")
    parser.add_argument("--teacher", help="a trained teacher (run dir or checkpoint) instead of training one")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--digits", type=int, nargs=2, default=[4, 5], metavar=("MIN", "MAX"),
                        help="the band: operand digits (default 4 5)")
    parser.add_argument("--warm-start-steps", type=int, default=400, help="SFT steps of the shared warm start")
    parser.add_argument("--teacher-steps", type=int, default=2000, help="SFT steps of the teacher")
    args = parser.parse_args()
    out = Path(args.out)
    digits = tuple(args.digits)
    start = time.perf_counter()
    teacher = Path(args.teacher) if args.teacher else train(
        out / "teacher", [band(digits), "stages=[sft]", f"sft.steps={args.teacher_steps}", f"seed={TEACHER_SEED}",
                          "rollout.max_new_tokens=64", "eval.samples=8", "threads=1", "logging.progress=false"])
    table = arms(args.rl_steps, str(teacher.resolve()))
    names = args.arms or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(unknown)}; the arms are {', '.join(table)}")
    runs = {(name, seed): out / f"{name}-seed{seed}" for name in names for seed in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        # the first arm of each seed trains that seed's warm start (cached for the others)
        base = base_overrides(args.rl_steps, digits, args.warm_start_steps)
        list(pool.map(lambda seed: train(runs[(names[0], seed)], [*base, f"seed={seed}", *table[names[0]]]),
                      args.seeds))
        list(pool.map(lambda key: train(runs[key], [*base, f"seed={key[1]}", *table[key[0]]]), list(runs)))
    teacher_summary = teacher / "summary.json"
    if teacher_summary.is_file():
        print(f"teacher ({teacher}): held-out greedy accuracy "
              f"{100 * json.loads(teacher_summary.read_text())['final_accuracy']:.1f}%")
    print(f"band: {band(digits)}; warm start {args.warm_start_steps} SFT steps; {args.rl_steps} RL steps of 32 prompts x 8 "
          f"samples; seeds {args.seeds}; held-out greedy accuracy on 200 problems (+-7 points at 95% near 50%)")
    header = ("arm", "before RL %", "after RL %", "per seed", "pass@8 %", "samples", "tokens", "demos", "train s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        results = [measure(runs[(name, seed)]) for seed in args.seeds]
        mean = lambda key: statistics.fmean(r[key] for r in results if r[key] is not None)
        spread = statistics.stdev(r["accuracy"] for r in results) if len(results) > 1 else 0.0
        demos = f"{mean('demos'):.0f}" + (f" ({100 * mean('demo_frac'):.0f}%)"
                                          if any(r["demo_frac"] is not None for r in results) else "")
        print(f"| {name} | {100 * mean('warm'):.1f} | {100 * mean('accuracy'):.1f} +- {100 * spread:.1f} | "
              + " / ".join(f"{100 * r['accuracy']:.1f}" for r in results)
              + f" | {100 * mean('pass@8'):.1f} | {mean('samples'):.0f} | {mean('tokens'):.0f} | {demos} | "
              f"{mean('seconds'):.0f} |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
