"""Tool-integrated RL against text-only RL on the same task, at the same wall-clock budget.

    python benchmarks/compare_tool_rl.py                   # recipes/tool_integrated.yaml, 120 s of RL per arm
    python benchmarks/compare_tool_rl.py --budget-s 300 --set rl.prompts_per_step=16

Arms (same seed, same task, same model size, same SFT steps, same generation budget):
* tool: the recipe as written — a warm start on demonstrations of which 30% call the Python
  tool, then RL with the tool available;
* text: the same recipe without the environment and with text-only demonstrations (the
  teacher writes the product directly), then RL without a tool.
Each arm's RL runs until its steps have taken ``--budget-s`` seconds (``rl.max_seconds``).
Prints, per arm: held-out greedy accuracy after SFT and after RL, RL steps and samples
done, tool-call rate (fraction of the last RL steps' episodes that called the tool, and
tool calls per held-out sample), response tokens, and tool/text ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compare_arms import run  # this script's directory is on sys.path when it runs

from rlvr.training.run_dir import RunDir

ARMS = {
    "tool": [],
    "text": ["rollout.environment.name=null", "rollout.environment.filter_void_turns=false",
             "task.params.tool_demo_rate=0.0"],
}


def summarize(run_dir: Path) -> dict:
    rd = RunDir(run_dir)
    rl = [m for m in rd.read("metrics.jsonl") if m["stage"] == "rl" and "reward_mean" in m]
    last = rl[-5:]
    evals = rd.load_state()["evals"]
    warm, final = evals["warmstart"], evals["final"]

    def mean(key: str) -> float:
        return sum(m.get(key, 0.0) for m in last) / max(1, len(last))

    return {
        "warmstart_accuracy": warm["greedy_accuracy"],
        "final_accuracy": final["greedy_accuracy"],
        "final_accuracy_ci95": final.get("greedy_accuracy_ci95"),
        "final_pass@1": final.get("pass@1"),
        "rl_steps": len(rl),
        "rl_seconds": rl[-1]["rl_seconds_total"] if rl else 0.0,
        "samples": rl[-1]["samples_generated_total"] if rl else 0,
        "first_tool_use_frac": rl[0].get("tool_use_frac", 0.0) if rl else 0.0,
        "tool_use_frac": mean("tool_use_frac"),
        "eval_tool_calls": final.get("tool_calls", 0.0),
        "response_tokens": mean("response_length"),
        "eval_greedy_tokens": final.get("greedy_length"),
        "reward_last5": mean("reward_mean"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(Path(__file__).resolve().parent.parent / "recipes" / "tool_integrated.yaml"))
    parser.add_argument("--budget-s", type=float, default=120.0, help="wall-clock seconds of RL steps per arm")
    parser.add_argument("--out", default="runs/compare_tool", help="parent directory of the runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override applied to both arms (repeatable)")
    args = parser.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    common = [f"seed={args.seed}", "logging.progress=false", "rl.steps=100000", f"rl.max_seconds={args.budget_s}",
              "eval.every=0", *args.set]
    rows = {}
    for name, overrides in ARMS.items():
        run(["train", "--config", args.recipe, "--output-dir", str(out / name), *common, *overrides])
        rows[name] = summarize(out / name)

    print(f"\nRL budget {args.budget_s:.0f} s per arm, recipe {args.recipe}")
    header = (f"{'arm':<6}{'SFT acc':>9}{'RL acc':>8}{'95% CI':>15}{'pass@1':>8}{'steps':>7}{'samples':>9}{'RL s':>7}"
              f"{'tool use':>10}{'(start)':>9}{'calls/eval':>11}{'tokens':>8}{'reward':>8}")
    print(header)
    for name, r in rows.items():
        low, high = r["final_accuracy_ci95"] or (float("nan"), float("nan"))
        print(f"{name:<6}{r['warmstart_accuracy']:>9.3f}{r['final_accuracy']:>8.3f}{f'[{low:.3f},{high:.3f}]':>15}"
              f"{r['final_pass@1'] or 0.0:>8.3f}"
              f"{r['rl_steps']:>7d}{r['samples']:>9d}{r['rl_seconds']:>7.0f}{r['tool_use_frac']:>10.3f}"
              f"{r['first_tool_use_frac']:>9.3f}{r['eval_tool_calls']:>11.3f}{r['response_tokens']:>8.1f}"
              f"{r['reward_last5']:>8.3f}")
    tool, text = rows["tool"], rows["text"]
    print(f"tool - text: {100 * (tool['final_accuracy'] - text['final_accuracy']):+.1f} accuracy points; tool/text: "
          f"samples {tool['samples'] / max(text['samples'], 1):.2f}x, "
          f"tokens per response {tool['response_tokens'] / max(text['response_tokens'], 1e-9):.2f}x")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    print(f"runs and comparison.json in {out}")


if __name__ == "__main__":
    main()
