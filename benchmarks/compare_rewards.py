"""Rewards side by side on the default task (issue 18): the exact verifier against a learned
reward model (plain and gated by the verifier), a verifier-free majority vote, process
rewards against outcome-only credit, and RLCR's calibration reward against correctness alone.

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
- ``judge`` and ``judge_gated``: a generative judge (the source run's policy fine-tuned by
  ``rlvr rm --objective judge`` to write correct / incorrect), alone and gated by the verifier;
- ``majority_vote``: TTRL's pseudo-labels, no reference answer read; ``semantic_entropy``: EMPO's
  soft version, each answer rewarded by its share of the group;
- ``rlpr``: RLPR's reward, the policy's probability of the reference answer after its
  reasoning (debiased, with dynamic sampling, as the ``rlpr`` recipe), no verifier;
- ``self_certainty``: INTUITOR's self-certainty, neither verifier nor reference;
- ``outcome_rpp`` and ``process_rpp``: REINFORCE++ with the outcome reward alone, and with
  the scratchpad's step checks as token-level rewards (0.2, Delta form) beside it;
- ``confidence_correctness`` and ``rlcr``: answers that end with a stated confidence (their own
  warm start, whose demonstrations carry confidences spread over 0.1..0.9), rewarded by
  correctness alone or by RLCR's correctness - Brier.

Prints per arm: held-out greedy accuracy before and after RL (mean over seeds and each seed),
pass@8, the last 10 steps' reward and proxy-gold gap, and RL seconds; for the arms that state a
confidence, a second table: mean stated confidence, Brier score and ECE of the greedy answers
before and after RL, and of the sampled answers after RL.
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


def arms(reward_model: str, judge: str = "") -> dict[str, list[str]]:
    learned = f"reward.params={{reward_model: {{path: {reward_model}}}}}"
    gated = f"reward.params={{reward_model: {{path: {reward_model}, gate: true}}}}"
    return {
        "verifier": [],
        "reward_model": ["reward.components={correctness: 0.0, reward_model: 1.0}", learned],
        "reward_model_gated": ["reward.components={correctness: 0.0, reward_model: 1.0}", gated],
        "judge": ["reward.components={judge: 1.0}", f"reward.params={{judge: {{path: {judge}}}}}"],
        "judge_gated": ["reward.components={judge: 1.0}", f"reward.params={{judge: {{path: {judge}, gate: true}}}}"],
        "majority_vote": ["reward.components={majority_vote: 1.0}"],
        "semantic_entropy": ["reward.components={semantic_entropy: 1.0}"],
        "rlpr": ["reward.components={rlpr: 1.0}", "reward.params={rlpr: {debias: true}}", "data.filter=dynamic"],
        "self_certainty": ["reward.components={self_certainty: 1.0}"],
        "outcome_rpp": ["algorithm.advantage=reinforce_pp"],
        "process_rpp": ["algorithm.advantage=reinforce_pp", "reward.step_rewards.coef=0.2",
                        "reward.step_rewards.delta=true"],
        "confidence_correctness": CONFIDENCE,
        "rlcr": [*CONFIDENCE, "reward.components={rlcr: 1.0}"],
    }


CONFIDENCE = ["task.stated_confidence=true", "rollout.max_new_tokens=72"]  # as the rlcr recipe
NEEDS_REWARD_MODEL = ("reward_model", "reward_model_gated")
NEEDS_JUDGE = ("judge", "judge_gated")
JUDGE_RUBRIC = "{prompt} {response} verdict:"  # the tiny model's context is 128 characters


def measure(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rl = [m for m in records(run_dir, "metrics.jsonl") if m.get("stage") == "rl"]
    last = rl[-10:]
    evals = records(run_dir, "eval.jsonl")
    final = next(e for e in evals if e["phase"] == "final")
    warm = next(e for e in evals if e["phase"] == "warmstart")
    gap = [m["proxy_gold_gap"] for m in last if "proxy_gold_gap" in m]
    calibration = {f"{when}_{key}": e.get(key) for when, e in (("warm", warm), ("final", final))
                   for key in ("confidence", "brier", "ece", "sampled_confidence", "sampled_brier", "sampled_ece")}
    return {"warm": summary["warmstart_accuracy"], "accuracy": summary["final_accuracy"],
            "pass@8": final.get("pass@8"), "reward": statistics.fmean(m["reward_mean"] for m in last),
            "gap": statistics.fmean(gap) if gap else None, "seconds": sum(m["step_time"] for m in rl),
            **calibration}


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
    rm_dir = out / "reward_model"
    names = args.arms or list(arms(""))
    unknown = sorted(set(names) - set(arms("")))
    if unknown:
        sys.exit(f"--arms: unknown {', '.join(unknown)}; the arms are {', '.join(arms(''))}")
    judge_dir = out / "judge"
    if set(names) & {*NEEDS_REWARD_MODEL, *NEEDS_JUDGE}:
        source = train(out / "source", [*COMMON, "seed=1000", "logging.samples_per_step=64"])
    if set(names) & set(NEEDS_JUDGE):
        if not (judge_dir / "rm_metrics.json").is_file():
            rlvr(["rm", "--from-run", str(source), "--output", str(judge_dir), "--objective", "judge", "--rubric",
                  JUDGE_RUBRIC, "--steps", "300", "--lr", "1e-3"], out / "judge.log")
        judge_metrics = json.loads((judge_dir / "rm_metrics.json").read_text())
        before, after = judge_metrics["heldout_before"], judge_metrics["heldout_after"]
        print(f"generative judge: {judge_metrics['train_examples']} training samples from {source}; held-out verdict "
              f"accuracy {100 * before['accuracy']:.1f}% -> {100 * after['accuracy']:.1f}% ({after['examples']} "
              f"samples; no verdict {100 * before['parse_failures']:.0f}% -> {100 * after['parse_failures']:.0f}%)")
    if set(names) & set(NEEDS_REWARD_MODEL):
        if not (rm_dir / "rm_metrics.json").is_file():
            rlvr(["rm", "--from-run", str(source), "--output", str(rm_dir), "--steps", "300", "--lr", "1e-3"],
                 out / "reward_model.log")
        rm_metrics = json.loads((rm_dir / "rm_metrics.json").read_text())
        after = rm_metrics["heldout_after"]
        print(f"reward model: {rm_metrics['train_examples']} training samples from {source}; held-out accuracy "
              f"{100 * rm_metrics['heldout_before']['accuracy']:.1f}% -> {100 * after['accuracy']:.1f}% "
              f"({after['examples']} samples)")
    table = arms(str(rm_dir.resolve()), str(judge_dir.resolve()))
    runs = {(name, seed): out / f"{name}-seed{seed}" for name in names for seed in args.seeds}
    base = [*COMMON, f"rl.steps={args.rl_steps}"]
    # one arm of each warm start first (stated confidences change the demonstrations), so the
    # arms after it reuse the cached warm start instead of training it side by side
    firsts = list({"confidence" if "task.stated_confidence=true" in table[n] else "plain": n for n in names}.values())
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda key: train(runs[key], [*base, f"seed={key[1]}", *table[key[0]]]),
                      [(name, seed) for name in firsts for seed in args.seeds]))
        list(pool.map(lambda key: train(runs[key], [*base, f"seed={key[1]}", *table[key[0]]]), list(runs)))
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
    stating = [name for name in names if "task.stated_confidence=true" in table[name]]
    if stating:
        print("\ncalibration of the stated confidences (greedy answers; sampled after RL), mean over seeds")
        header = ("arm", "confidence before", "after", "Brier before", "after", "ECE before", "after",
                  "sampled confidence", "sampled Brier", "sampled ECE")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for name in stating:
            results = [measure(runs[(name, seed)]) for seed in args.seeds]
            cells = [statistics.fmean(v) if (v := [r[key] for r in results if r[key] is not None]) else None for key in (
                "warm_confidence", "final_confidence", "warm_brier", "final_brier", "warm_ece", "final_ece",
                "final_sampled_confidence", "final_sampled_brier", "final_sampled_ece")]
            print(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
