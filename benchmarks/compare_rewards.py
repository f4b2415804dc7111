"""Rewards side by side on the default task (issue 18): the exact verifier against a learned
reward model (plain and gated by the verifier), a verifier-free majority vote, and process
rewards against outcome-only credit.

    python benchmarks/compare_rewards.py                     # 2 seeds, every arm, 2 runs at a time
    python benchmarks/compare_rewards.py --seeds 0 --arms verifier majority_vote --rl-steps 30

First a source run (the default recipe with 64 logged samples per step) gives the samples on
which `rlvr rm` trains the reward model (classify: the verifier's verdicts). On this task the
right answers carry more "+1" columns than the wrong ones (a forgotten carry is what makes a
sample wrong), so the reward model can learn a feature a policy can exploit: the table shows
whether it is, through `proxy_gold_gap` (mean learned reward - mean verifier correctness over
the last 10 steps) and held-out accuracy. Every arm starts from the default warm start (cached,
one per seed) and takes the same RL steps, prompts and samples:

- ``verifier``: correctness (GRPO), the baseline;
- ``reward_model``: the reward model's P(right) alone; ``reward_model_gated``: the same, gated
  by the verifier (0 for answers it rejects);
- ``majority_vote``: TTRL's pseudo-labels, no reference answer read;
- ``outcome_rpp`` and ``process_rpp``: REINFORCE++ with the outcome reward alone, and with
  the scratchpad's step checks as token-level rewards (0.2, Delta form) beside it.

Prints per arm: held-out greedy accuracy before and after RL (mean over seeds and each seed),
pass@8, the last 10 steps' reward and proxy-gold gap, and RL seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_pipelines import records, rlvr, train  # noqa: E402  (the same run helpers)

COMMON = ["eval.problems=200", "eval.samples=8", "eval.every=0", "threads=1", "logging.progress=false"]


def arms(reward_model: str) -> dict[str, list[str]]:
    learned = f"reward.params={{reward_model: {{path: {reward_model}}}}}"
    gated = f"reward.params={{reward_model: {{path: {reward_model}, gate: true}}}}"
    return {
        "verifier": [],
        "reward_model": ["reward.components={correctness: 0.0, reward_model: 1.0}", learned],
        "reward_model_gated": ["reward.components={correctness: 0.0, reward_model: 1.0}", gated],
        "majority_vote": ["reward.components={majority_vote: 1.0}"],
        "outcome_rpp": ["algorithm.advantage=reinforce_pp"],
        "process_rpp": ["algorithm.advantage=reinforce_pp", "reward.step_rewards.coef=0.2",
                        "reward.step_rewards.delta=true"],
    }


def measure(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rl = [m for m in records(run_dir, "metrics.jsonl") if m.get("stage") == "rl"]
    last = rl[-10:]
    final = next(e for e in records(run_dir, "eval.jsonl") if e["phase"] == "final")
    gap = [m["proxy_gold_gap"] for m in last if "proxy_gold_gap" in m]
    return {"warm": summary["warmstart_accuracy"], "accuracy": summary["final_accuracy"],
            "pass@8": final.get("pass@8"), "reward": statistics.fmean(m["reward_mean"] for m in last),
            "gap": statistics.fmean(gap) if gap else None, "seconds": sum(m["step_time"] for m in rl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/rewards", help="parent directory of the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rl-steps", type=int, default=60)
    parser.add_argument("--arms", nargs="+", help="a subset of the arms (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    source = train(out / "source", [*COMMON, "seed=1000", "logging.samples_per_step=64"])
    rm_dir = out / "reward_model"
    if not (rm_dir / "rm_metrics.json").is_file():
        rlvr(["rm", "--from-run", str(source), "--output", str(rm_dir), "--steps", "300", "--lr", "1e-3"],
             out / "reward_model.log")
    rm_metrics = json.loads((rm_dir / "rm_metrics.json").read_text())
    table = arms(str(rm_dir.resolve()))
    names = args.arms or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(unknown)}; the arms are {', '.join(table)}")
    runs = {(name, seed): out / f"{name}-seed{seed}" for name in names for seed in args.seeds}
    base = [*COMMON, f"rl.steps={args.rl_steps}"]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda seed: train(runs[(names[0], seed)], [*base, f"seed={seed}", *table[names[0]]]),
                      args.seeds))
        list(pool.map(lambda key: train(runs[key], [*base, f"seed={key[1]}", *table[key[0]]]), list(runs)))
    after = rm_metrics["heldout_after"]
    print(f"reward model: {rm_metrics['train_examples']} training samples from {source}; held-out accuracy "
          f"{100 * rm_metrics['heldout_before']['accuracy']:.1f}% -> {100 * after['accuracy']:.1f}% "
          f"({after['examples']} samples)")
    print(f"default task; {args.rl_steps} RL steps of 32 prompts x 8 samples; seeds {args.seeds}; held-out greedy "
          "accuracy on 200 problems")
    header = ("arm", "before RL %", "after RL %", "per seed", "pass@8 %", "reward (last 10)", "proxy-gold gap",
              "RL s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        results = [measure(runs[(name, seed)]) for seed in args.seeds]
        mean = lambda key: statistics.fmean(r[key] for r in results if r[key] is not None)
        gap = f"{mean('gap'):+.3f}" if any(r["gap"] is not None for r in results) else "-"
        print(f"| {name} | {100 * mean('warm'):.1f} | {100 * mean('accuracy'):.1f} | "
              + " / ".join(f"{100 * r['accuracy']:.1f}" for r in results)
              + f" | {100 * mean('pass@8'):.1f} | {mean('reward'):.3f} | {gap} | {mean('seconds'):.0f} |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
