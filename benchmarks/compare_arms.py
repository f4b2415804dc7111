"""Run several recipes from one shared SFT warm start with the same seed and compare them.

    python benchmarks/compare_arms.py recipes/grpo_plain.yaml recipes/difficulty_filter.yaml

Each arm is an RL-only run (`stages=[rl]`) from the same warm-start checkpoint, so the arms
differ only in what their recipes change. Prints, per arm: final held-out greedy accuracy
and pass@1, wall-clock seconds of RL, samples generated, mean response length, and the
held-out accuracy at every evaluation against RL step, wall-clock and generated samples.
`--set key=value` (repeatable) applies a dotted override to every arm (e.g. `--set rl.steps=30`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rlvr.cli import main as rlvr_main
from rlvr.training.run_dir import RunDir


def run(args: list[str]) -> None:
    code = rlvr_main(args)
    if code:
        sys.exit(f"rlvr {' '.join(args)} exited with {code}")


def arm_table(run_dir: Path) -> dict:
    rd = RunDir(run_dir)
    rl = [m for m in rd.read("metrics.jsonl") if m["stage"] == "rl" and "reward_mean" in m]
    state = rd.load_state()
    evals = sorted(state["evals"].values(), key=lambda e: e["step"])
    clock, samples, by_step = 0.0, 0, {}
    for m in rd.read("metrics.jsonl"):
        if m["stage"] == "rl":
            clock += m.get("step_time", 0.0)
            samples = m.get("samples_generated_total", samples)
            by_step[m["step"]] = (clock, samples)
    curve = [(e["step"], *by_step.get(e["step"], (0.0, 0)), e["greedy_accuracy"]) for e in evals]
    return {
        "final_accuracy": state["evals"]["final"]["greedy_accuracy"],
        "final_pass@1": state["evals"]["final"].get("pass@1"),
        "rl_seconds": clock,
        "samples": samples,
        "response_length": sum(m["response_length"] for m in rl[-10:]) / max(1, len(rl[-10:])),
        "reward_last10": sum(m["reward_mean"] for m in rl[-10:]) / max(1, len(rl[-10:])),
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help="recipe YAML files, one per arm")
    parser.add_argument("--out", default="runs/compare", help="parent directory of the runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override applied to every arm (repeatable)")
    args = parser.parse_args()
    extra = args.set
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    common = [f"seed={args.seed}", "logging.progress=false", *extra]

    run(["sft", "--output-dir", str(out / "warmstart"), *common])
    warm = RunDir(out / "warmstart").load_state()
    checkpoint = (out / "warmstart" / warm["sft_final"]).resolve()
    rows = {}
    for recipe in args.recipes:
        name = Path(recipe).stem
        run(["train", "--config", recipe, "--output-dir", str(out / name), f"model.path={checkpoint}",
             "stages=[rl]", *common])
        rows[name] = arm_table(out / name)

    print(f"\nwarm start: held-out accuracy {warm['evals']['warmstart']['greedy_accuracy']:.3f}")
    print(f"{'arm':<22}{'final acc':>10}{'pass@1':>8}{'RL s':>8}{'samples':>9}{'len':>7}{'reward':>8}")
    for name, r in rows.items():
        print(f"{name:<22}{r['final_accuracy']:>10.3f}{r['final_pass@1'] or 0:>8.3f}{r['rl_seconds']:>8.0f}"
              f"{r['samples']:>9d}{r['response_length']:>7.1f}{r['reward_last10']:>8.3f}")
    print("\nheld-out greedy accuracy during RL (step, RL seconds, generated samples, accuracy):")
    for name, r in rows.items():
        print(f"  {name}: " + "  ".join(f"({s}, {t:.0f}s, {n}, {a:.3f})" for s, t, n, a in r["curve"]))
    base = next(iter(rows))
    for name, r in list(rows.items())[1:]:
        print(f"ratio {name}/{base}: accuracy {r['final_accuracy'] / max(rows[base]['final_accuracy'], 1e-9):.2f}, "
              f"samples {r['samples'] / max(rows[base]['samples'], 1):.2f}, "
              f"RL time {r['rl_seconds'] / max(rows[base]['rl_seconds'], 1e-9):.2f}, "
              f"length {r['response_length'] / max(rows[base]['response_length'], 1e-9):.2f}")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
