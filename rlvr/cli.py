"""`rlvr` command line: train, sft, eval, list."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlvr.typed_yaml import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL with verifiable rewards for reasoning LMs",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run the recipe's stages (default: SFT warm start, then GRPO)"),
                            ("sft", "run only the supervised warm start")):
        p = sub.add_parser(name, allow_abbrev=False, help=help_text)
        p.add_argument("--config", help="YAML recipe (default: the built-in default recipe)")
        p.add_argument("--output-dir", help="run directory to create (default: <output_dir>/<recipe>-<time>)")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.clip_high=0.28 rl.steps=10")
    p = sub.add_parser("eval", allow_abbrev=False, help="evaluate a checkpoint or run directory on the held-out split")
    p.add_argument("model", help="HF checkpoint directory, or a run directory (its final checkpoint)")
    p.add_argument("--config", help="YAML recipe naming the task (default: the run's config or the default recipe)")
    p.add_argument("--n", type=int, help="samples per problem for pass@k (default: eval.samples)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.problems=500")
    sub.add_parser("list", allow_abbrev=False, help="print every registered task, reward, estimator, loss and engine")
    p = sub.add_parser("limr", allow_abbrev=False, help="LIMR: select the problems whose learning curves align with the run's average")
    p.add_argument("run_dir", help="a run over a fixed problem set for several epochs")
    p.add_argument("--threshold", type=float, default=0.6, help="minimum LIM score kept (LIMR: 0.6)")
    p.add_argument("--output", required=True, help="JSON file for the selected ids (use as data.include_ids)")

    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "sft"):
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "limr":
            return _limr(args)
        return _list()
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with `rlvr train --resume RUN_DIR` from the last checkpoint",
              file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from rlvr.config import load_config
    from rlvr.train.pipeline import check_names, new_run_dir, run_pipeline, sft_only
    from rlvr.train.run_dir import RunDir

    if args.resume:
        if args.config or args.overrides or args.output_dir:
            raise ConfigError("--resume takes the run's own config.yaml; drop --config, --output-dir and overrides")
        run = RunDir(args.resume)
        run.load_state()
        source = str(run.path / "config.yaml")
        config = load_config(source)
    else:
        source = args.config or "default recipe"
        config = load_config(args.config, args.overrides)
        if args.command == "sft":
            config = sft_only(config)
    check_names(config, source)
    if not args.resume:
        run = new_run_dir(config, args.output_dir, Path(args.config).stem if args.config else "default")
    print(f"run dir: {run.path}")
    summary = run_pipeline(config, run)
    _print_summary(summary, "rl" in config.stages)
    return 0


def _print_summary(summary: dict, after_rl: bool) -> None:
    warm, final = summary["warmstart_accuracy"], summary["final_accuracy"]
    if after_rl:
        line = f"held-out accuracy: {100 * warm:.1f}% (after SFT) -> {100 * final:.1f}% (after RL)"
    else:
        line = f"held-out accuracy: {100 * warm:.1f}% (after SFT)"
    print(f"{line}, {summary['wall_seconds']:.0f} s, run dir: {summary['run_dir']}")


def _eval(args: argparse.Namespace) -> int:
    from rlvr.config import load_config
    from rlvr.eval.evaluate import evaluate
    from rlvr.models import load_model_and_tokenizer
    from rlvr.rollout import ROLLOUT_ENGINES
    from rlvr.train.pipeline import build_task, make_task_verifier
    from rlvr.train.run_dir import RunDir

    target = Path(args.model)
    config_path = args.config
    if (target / "state.json").is_file():
        state = RunDir(target).load_state()
        checkpoint = state.get("final_checkpoint") or state.get("sft_final")
        if checkpoint is None:
            raise ConfigError(f"{target}: the run has no finished checkpoint yet")
        config_path = config_path or str(target / "config.yaml")
        target = target / checkpoint
    config = load_config(config_path, args.overrides)
    model, tokenizer = load_model_and_tokenizer(target)
    task = build_task(config, config_path or "default recipe")
    heldout = task.sample_problems(config.eval.problems, config.eval.seed, split="heldout")
    with make_task_verifier(task, config) as verifier:
        result = evaluate(model, tokenizer, task, heldout, ROLLOUT_ENGINES.get(config.rollout.engine)(),
                          verifier=verifier, samples=config.eval.samples if args.n is None else args.n,
                          temperature=config.eval.temperature, max_new_tokens=config.rollout.max_new_tokens,
                          batch_size=config.eval.batch_size, seed=config.eval.seed)
    print(json.dumps({"model": str(target), **result}, indent=2))
    return 0


def _limr(args: argparse.Namespace) -> int:
    from rlvr.data.limr import lim_scores, select
    from rlvr.train.run_dir import RunDir

    curves: dict[str, list[float]] = {}
    for record in RunDir(args.run_dir).read("pass_rates.jsonl"):
        for problem_id, rate in record["rates"].items():
            curves.setdefault(problem_id, []).append(rate)
    scores = lim_scores(curves)
    if not scores:
        raise ConfigError(f"{args.run_dir}: no per-prompt pass rates to score (pass_rates.jsonl is empty)")
    chosen = select(scores, args.threshold)
    Path(args.output).write_text(json.dumps(chosen, indent=1))
    epochs = min(len(c) for c in curves.values())
    print(f"LIMR: {len(chosen)} of {len(scores)} problems have LIM score >= {args.threshold} "
          f"over {epochs} epochs; ids written to {args.output}")
    return 0


def _list() -> int:
    from rlvr.algorithms import ADVANTAGES, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
    from rlvr.rewards import REWARDS
    from rlvr.rewards.shaping import REWARD_SHAPERS
    from rlvr.rollout import ROLLOUT_ENGINES
    from rlvr.tasks import TASKS

    for title, registry in (("tasks", TASKS), ("rewards", REWARDS), ("reward shaping", REWARD_SHAPERS),
                            ("advantage estimators", ADVANTAGES),
                            ("policy losses", POLICY_LOSSES), ("loss aggregations", LOSS_AGGREGATIONS),
                            ("kl estimators", KL_ESTIMATORS), ("rollout engines", ROLLOUT_ENGINES)):
        print(f"{title}:")
        for name in registry.names():
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
