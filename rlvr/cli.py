"""`rlvr` command line: train, sft, eval, report, list, describe, limr."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any
from pathlib import Path

from rlvr.typed_yaml import ConfigError


def _import_from_working_directory() -> None:
    """Let ``task.name=my_tasks:Double`` (and reward ``module:function``) find ``my_tasks.py``
    in the directory the command runs in, as ``python -m`` would: a console script's
    ``sys.path`` starts at its own bin directory. Appended, so a file there never shadows an
    installed package. Spawned verifier workers inherit the parent's ``sys.path``."""
    cwd = os.getcwd()
    if not any(entry in ("", ".", cwd) for entry in sys.path):
        sys.path.append(cwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL with verifiable rewards for reasoning LMs",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run the recipe's stages (default: SFT warm start, then GRPO)"),
                            ("sft", "run only the supervised warm start")):
        p = sub.add_parser(name, allow_abbrev=False, help=help_text)
        p.add_argument("--config", help="YAML recipe file, or a built-in recipe's name (`rlvr list recipes`; "
                                        "default: the default recipe)")
        p.add_argument("--output-dir", help="run directory to create (default: <output_dir>/<recipe>-<time>)")
        p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algorithm.clip_high=0.28 rl.steps=10")
        ranks = p.add_argument_group("trainer ranks (torchrun's options; or run `torchrun ... -m rlvr train`)")
        ranks.add_argument("--nproc", type=int, default=1, metavar="N",
                           help="trainer processes on this machine (data parallel; gloo on CPU, NCCL on GPU)")
        ranks.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs the same command)")
        ranks.add_argument("--node-rank", type=int, default=0, help="this machine's index among --nnodes")
        ranks.add_argument("--master-addr", default="127.0.0.1", help="address of the machine with --node-rank 0")
        ranks.add_argument("--master-port", type=int, default=29500, help="a free port on that machine")
    p = sub.add_parser("eval", allow_abbrev=False,
                       help="evaluate one or more checkpoints / run directories on the held-out split, side by side")
    p.add_argument("targets", nargs="+", metavar="MODEL_OR_RUN",
                   help="HF checkpoint directories or run directories (their final checkpoint); "
                        "arguments with '=' are dotted config overrides, e.g. eval.problems=500")
    p.add_argument("--config", help="YAML recipe naming the task (default: the first run's config, else the default recipe)")
    p.add_argument("--task", help="registered task name (or module:Class) to evaluate on, with its default params")
    p.add_argument("--n", type=int, help="samples per problem for pass@k and maj@k (default: eval.samples)")
    p.add_argument("--k", help="comma-separated k values, each <= n (default: eval.ks, else 1,2,4,... <= n)")
    p.add_argument("--strategy", choices=["majority", "best_of_n"],
                   help="test-time scaling: also report accuracy vs samples when picking one answer by this strategy")
    p.add_argument("--selector", default=None,
                   help="best_of_n selector: verifier (oracle = pass@k), mean_logprob, shortest, or module:function")
    p.add_argument("--labels", help="comma-separated names for the models in tables and plots")
    p.add_argument("--output-dir", help="where results.json, table.md and the plots go "
                                        "(default: <run>/eval for a run's model, else ./rlvr-eval)")
    p.add_argument("--cache-dir", help="sample cache (default: <output-dir>/cache); a later call with larger n "
                                       "generates only the missing samples")
    p.add_argument("--no-cache", action="store_true", help="keep samples in memory only")
    p.add_argument("--json", action="store_true", help="print results as JSON instead of tables")
    p = sub.add_parser("report", allow_abbrev=False,
                       help="write RUN_DIR/report.html: config, training curves, evaluations, sampled groups; "
                            "with several run directories, one report that overlays them")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run directory, or several to compare")
    p.add_argument("--output", help="HTML file to write (default: RUN_DIR/report.html for one run, "
                                    "./rlvr-report.html for several)")
    p.add_argument("--x-axis", choices=["step", "time"], default="step",
                   help="x axis of the training curves: RL step, or RL wall-clock time (rl_seconds_total)")
    p.add_argument("--transcripts", type=int, default=3, metavar="N",
                   help="logged RL steps shown from each of early, middle and late training, one whole GRPO group each")
    p = sub.add_parser("list", allow_abbrev=False,
                       help="print every registered task, reward, shaper, estimator, loss, engine and recipe")
    p.add_argument("category", nargs="?", help="only one of: tasks, rewards, shapers, advantages, losses, "
                                               "aggregations, kl, engines, environments, recipes")
    p = sub.add_parser("describe", allow_abbrev=False,
                       help="print a task's, reward's, shaper's, estimator's or recipe's parameters and description")
    p.add_argument("name", help="a name that `rlvr list` prints")
    p = sub.add_parser("compare", allow_abbrev=False,
                       help="several arms x several seeds at an equal budget: tables with intervals, paired "
                            "differences, curves, an HTML page; resumable")
    p.add_argument("files", nargs="+", help="one comparison file (YAML with arms:), or two or more recipe files "
                                            "(one arm each)")
    p.add_argument("--seeds", help="how many seeds (0..N-1) or a comma list (default: the file's, else 3)")
    p.add_argument("--budget", help="steps|samples|tokens|seconds=N, the same for every run (default: the "
                                    "file's, else steps=60)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted override for every arm (repeatable)")
    p.add_argument("--ks", help="comma list of k for the pass@k and maj@k tables (eval.samples must reach them)")
    p.add_argument("--output-dir", help="where the runs go (default: runs/compare-<file stem>); rerun the same "
                                        "command to resume an interrupted comparison")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each with threads=1)")
    p.add_argument("--timeout-s", type=float, default=24 * 3600.0, help="stop a run that takes longer, and the "
                                                                        "comparison with it")

    p = sub.add_parser("limr", allow_abbrev=False, help="LIMR: select the problems whose learning curves align with the run's average")
    p.add_argument("run_dir", help="a run over a fixed problem set for several epochs")
    p.add_argument("--threshold", type=float, default=0.6, help="minimum LIM score kept (LIMR: 0.6)")
    p.add_argument("--output", required=True, help="JSON file for the selected ids (use as data.include_ids)")

    p = sub.add_parser("rm", allow_abbrev=False,
                       help="train an outcome reward model (sequence classification) or a generative judge (causal "
                            "LM) on a run's verified samples or on preference pairs; score with "
                            "reward.components: {reward_model: 1.0} or {judge: 1.0}")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-run", metavar="RUN_DIR", help="a run's samples.jsonl: responses with the verifier's verdict")
    source.add_argument("--data", metavar="FILE", help="JSONL: {prompt, chosen, rejected} pairs or {prompt, completion, label}")
    p.add_argument("--output", required=True, help="directory for the reward model (a Hugging Face checkpoint)")
    p.add_argument("--base", help="checkpoint to start from (default: the run's final checkpoint; required with --data)")
    p.add_argument("--objective", choices=["classify", "bradley_terry", "judge"], default="classify",
                   help="with --from-run: classify the verdicts, or rank the right over the wrong samples of a group; "
                        "judge: fine-tune the causal LM itself to write the verdict (correct / incorrect)")
    p.add_argument("--rubric", help="judge: the template the judge reads, with {response} and optionally {prompt} "
                                    "(default: rlvr.rewards.judge.DEFAULT_RUBRIC); saved in the checkpoint's judge.json")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="examples (or pairs) per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")

    # `rlvr eval A B --n 64 eval.problems=500`: positionals may follow options (targets and overrides)
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "eval" or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.targets += extra
    args.active_run = None  # the run directory being written, set by _train once it exists
    _import_from_working_directory()
    try:
        with _sigterm_interrupts():
            if args.command in ("train", "sft"):
                return _train(args)
            if args.command == "eval":
                return _eval(args)
            if args.command == "report":
                return _report(args)
            if args.command == "limr":
                return _limr(args)
            if args.command == "compare":
                return _compare(args)
            if args.command == "rm":
                return _rm(args)
            if args.command == "describe":
                return _describe(args)
            return _list(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what, code = ("terminated", 143) if isinstance(err, Terminated) else ("interrupted", 130)
        resume = (f"; continue with `rlvr train --resume {args.active_run}` from the last checkpoint"
                  if args.active_run else "")
        print(f"\n{what}{resume}", file=sys.stderr)
        return code
    except Exception as err:
        kinds = {cls.__name__ for cls in type(err).__mro__}
        if "CollectiveTimeout" in kinds:  # stacks are dumped; a process group mid-collective aborts on exit
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        if "RunDirError" in kinds:  # --resume of something else, a locked run dir, no disk room
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.active_run is None:
            raise
        # After start-up: one line, and the traceback in the run dir for a bug report.
        message = str(err) if kinds & USER_ERRORS else f"{type(err).__name__}: {err}"
        print(f"error: {message} (traceback: {_write_traceback(args.active_run)})", file=sys.stderr)
        return 1


# Errors whose message is written for the user; other exceptions also print their type.
USER_ERRORS = {"RewardError", "NonFiniteError", "VerifierTimeoutError", "ContextLengthError"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the run stops and resumes from its last checkpoint."""


@contextlib.contextmanager
def _sigterm_interrupts():
    if threading.current_thread() is not threading.main_thread():  # (signal handlers live in the main thread)
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_traceback(run_dir: Path) -> str:
    """Append the current exception's traceback to ``run_dir``/error.log, or to the temp
    directory's rlvr-error.log when the run dir cannot take it (a full disk); its path."""
    import tempfile

    for path in (Path(run_dir) / "error.log", Path(tempfile.gettempdir()) / "rlvr-error.log"):
        try:
            with open(path, "a") as fh:
                fh.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} rlvr {' '.join(sys.argv[1:])}\n")
                traceback.print_exc(file=fh)
            return str(path)
        except OSError:
            continue
    return "not saved: no writable place for error.log"


def _train(args: argparse.Namespace) -> int:
    """`rlvr train` / `rlvr sft`: ``rlvr.api.train`` with the command line's arguments."""
    from rlvr.api import train

    if args.resume and (args.config or args.overrides or args.output_dir):
        raise ConfigError("--resume takes the run's own config.yaml; drop --config, --output-dir and overrides")
    for name, value, low in (("--nproc", args.nproc, 1), ("--nnodes", args.nnodes, 1), ("--node-rank", args.node_rank, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if args.node_rank >= args.nnodes:
        raise ConfigError(f"--node-rank {args.node_rank} must be < --nnodes {args.nnodes}")
    if (args.nproc > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        return _launch_ranks(args)

    def started(path: Path) -> None:
        args.active_run = path  # main() names it in interrupt and error messages

    result = train(args.config, overrides=args.overrides, output_dir=args.output_dir, resume=args.resume,
                   stages=["sft"] if args.command == "sft" and not args.resume else None, _on_run_dir=started)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_summary(result.summary, result.config.stage_kinds())
    return 0


def _launch_ranks(args: argparse.Namespace) -> int:
    """``--nproc N``: check the config here (a mistake is one line, before any process
    starts), then run N trainer ranks per machine under torchrun (or placed by Ray,
    ``distributed.launcher: ray``), which tears every rank down when one fails, on Ctrl-C and
    on SIGTERM."""
    from rlvr.api import _resolve_config
    from rlvr.config import load_config
    from rlvr.training.pipeline import check_names

    if args.resume:
        from rlvr.training.run_dir import RunDir

        source = str(RunDir.open(args.resume).path / "config.yaml")  # one line for what is not a run dir
        config = load_config(source)
    else:
        config, source, _ = _resolve_config(args.config, args.overrides)
    check_names(config, source)
    ranks = args.nproc * args.nnodes
    for index, kind in enumerate(config.stage_kinds()):
        batch_size = config.stage_config(index).sft.batch_size if config.is_chain() else config.sft.batch_size
        if kind == "sft" and batch_size < ranks:
            raise ConfigError(f"sft.batch_size={batch_size} is smaller than the {ranks} trainer ranks: "
                              "every rank needs rows of each batch")
    if ranks > 1 and config.distributed.strategy == "fsdp" and config.model.dtype == "float16":
        raise ConfigError(f"{source}: distributed.strategy=fsdp: model.dtype=float16 (dynamic loss scaling over "
                          "sharded gradients) is not supported; use bfloat16 or float32")
    rank_args = [args.command]
    for flag, value in (("--config", args.config), ("--output-dir", args.output_dir), ("--resume", args.resume)):
        if value:
            rank_args += [flag, str(value)]
    rank_args += list(args.overrides)
    if config.distributed.launcher == "ray":
        code = _launch_on_ray(args, config, rank_args)
    else:
        code = _launch_torchrun(args, config, rank_args)
    if code:
        where = args.resume or args.output_dir or "RUN_DIR"
        print(f"the trainer ranks stopped (exit {code}); continue from the last checkpoint with "
              f"`rlvr train --nproc {args.nproc} --resume {where}`", file=sys.stderr)
    return code


def _launch_on_ray(args: argparse.Namespace, config: Any, rank_args: list[str]) -> int:
    """``distributed.launcher: ray`` (``rlvr.distributed.ray_launch``): Ray places the ranks."""
    if args.nnodes > 1:
        raise ConfigError("--nnodes/--node-rank are torchrun's: with distributed.launcher=ray, Ray places the "
                          "--nproc ranks on its cluster's nodes (run the command once, anywhere in the cluster)")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("distributed.launcher: ray needs Ray, which is not installed: pip install -e \".[ray]\"") \
            from None
    from rlvr.distributed.ray_launch import EngineBundles, LaunchError, launch

    gpu = config.device.startswith("cuda")
    threads = config.threads or max(1, int(config.distributed.ray_cpus_per_rank))
    v = config.rollout.vllm
    hosted = config.rollout.engine == "vllm" and v.mode == "server" and not v.url  # servers rlvr starts: actors
    engines = EngineBundles(v.engines if hosted else 0, config.distributed.ray_cpus_per_engine,
                            v.tensor_parallel_size if gpu else 0, bool(v.weights_dir))
    try:
        return launch(rank_args, args.nproc, config.distributed.ray_cpus_per_rank, 1 if gpu else 0,
                      config.distributed.timeout_s, threads, engines)
    except LaunchError as err:
        raise ConfigError(str(err)) from None


def _launch_torchrun(args: argparse.Namespace, config: Any, rank_args: list[str]) -> int:
    """torchrun (``torch.distributed.run``) starts ``--nproc`` ranks on this machine."""
    import subprocess

    where = (["--standalone"] if args.nnodes == 1 else
             ["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank), "--master-addr", args.master_addr,
              "--master-port", str(args.master_port)])
    command = [sys.executable, "-m", "torch.distributed.run", *where, "--nproc-per-node", str(args.nproc),
               "--max-restarts", "0", "--monitor-interval", "1", "-m", "rlvr", *rank_args]
    threads = str(config.threads or max(1, (os.cpu_count() or 1) // args.nproc))
    child = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": threads})
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # torchrun got the Ctrl-C too (same process group): let it stop the ranks
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code < 0:  # torchrun itself was killed by a signal: the shell's convention
        code = 128 - code
    return code


def _print_summary(summary: dict, stages: list[str]) -> None:
    warm, final = summary["warmstart_accuracy"], summary["final_accuracy"]
    if "stages" in summary:  # a chain: every stage's result
        shown = " -> ".join(f"{100 * s['accuracy']:.1f}% (after {s['stage']}: {s['kind'].upper()})"
                            for s in summary["stages"] if s.get("accuracy") is not None)
        print(f"held-out accuracy: {shown}, {summary['wall_seconds']:.0f} s, run dir: {summary['run_dir']}")
        return
    start = "after SFT" if "sft" in stages else "before RL"
    if "rl" in stages:
        line = f"held-out accuracy: {100 * warm:.1f}% ({start}) -> {100 * final:.1f}% (after RL)"
    else:
        line = f"held-out accuracy: {100 * warm:.1f}% ({start})"
    print(f"{line}, {summary['wall_seconds']:.0f} s, run dir: {summary['run_dir']}")
    for name, result in summary.get("eval_sets", {}).items():  # eval.sets: the other tasks
        before, after = result.get("warmstart_accuracy"), result.get("final_accuracy")
        shown = f"{100 * before:.1f}% ({start})" + (f" -> {100 * after:.1f}% (after RL)" if "rl" in stages else "")
        print(f"  evaluation set {name}: {shown}")


def _eval(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from rlvr.config import load_config
    from rlvr.eval.compare import (log, paired_deltas, per_problem_record, resolve_target, unique_labels,
                                   write_outputs, format_tables)
    from rlvr.eval.evaluate import check_ks, open_cache, powers_of_two_up_to, summarize
    from rlvr.eval.sample_cache import SamplingSettings, collect_samples
    from rlvr.eval.selectors import SELECTORS
    from rlvr.models import load_model_and_tokenizer
    from rlvr.models.prompting import apply_prompt_settings
    from rlvr.recipes import recipe_config
    from rlvr.models.prompt_fit import check_prompts_fit, checkpoint_head_dim, checkpoint_tokenizer
    from rlvr.rollout import ROLLOUT_ENGINES, build_environment
    from rlvr.training.pipeline import build_task, drop_overlong, make_task_verifier
    from rlvr.training.precision import DeviceError, check_precision, forward_autocast, resolve_device

    overrides = [a for a in args.targets if "=" in a and not Path(a).exists()]
    targets = unique_labels([resolve_target(a) for a in args.targets if a not in overrides],
                            args.labels.split(",") if args.labels else None)
    if not targets:
        raise ConfigError("name at least one checkpoint or run directory to evaluate")
    runs = [t.run_dir for t in targets if t.run_dir is not None]
    config_path = recipe_config(args.config)[0] if args.config else (str(runs[0] / "config.yaml") if runs else None)
    if args.task:
        overrides = [f"task.name={args.task}", "task.params={}", *overrides]
    config = load_config(config_path, overrides)
    source = config_path or "default recipe"
    n = config.eval.samples if args.n is None else args.n
    if n < 0:
        raise ConfigError(f"--n must be >= 0, got {n}")
    try:
        ks = [int(k) for k in args.k.split(",")] if args.k else (list(config.eval.ks) or powers_of_two_up_to(n))
        ks = check_ks(ks, n) if n else []
    except ValueError as err:
        raise ConfigError(f"--k: {err}") from None
    if args.strategy and n == 0:
        raise ConfigError("--strategy needs sampled answers: set --n >= 1")
    if args.selector and args.strategy != "best_of_n":
        raise ConfigError("--selector applies to --strategy best_of_n")
    if args.selector:
        try:
            SELECTORS.get(args.selector)
        except KeyError as err:
            raise ConfigError(f"--selector: {err.args[0]}") from None
    output_dir = Path(args.output_dir) if args.output_dir else (runs[0] / "eval" if runs else Path("rlvr-eval"))
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else output_dir / "cache"

    try:
        engine_cls = ROLLOUT_ENGINES.get(config.rollout.engine)
        for target in targets:
            engine_cls.check(config, checkpoint_head_dim(target.checkpoint))
        device = resolve_device(config.device)
        check_precision(device, config.model.dtype, config.model.attn_implementation)
    except KeyError as err:
        raise ConfigError(f"{source}: rollout.engine: {err.args[0]}") from None
    except (ValueError, DeviceError) as err:
        raise ConfigError(f"{source}: {err}") from None
    task = build_task(config, source)
    try:  # the data and each model's tokenizer and context, checked before any model loads
        tokenizers = []
        for target in targets:
            tokenizer, positions = checkpoint_tokenizer(target.checkpoint)
            apply_prompt_settings(tokenizer, config)
            tokenizers.append((target, tokenizer, positions))
            note = drop_overlong(task, config, tokenizer)  # with every model's tokenizer: one problem set
            if note:
                log(f"{target.label}: {note}")
        heldout = task.sample_problems(config.eval.problems, config.eval.seed, split="heldout")
        for target, tokenizer, positions in tokenizers:
            check_prompts_fit(tokenizer, positions, config.rollout.max_new_tokens, heldout,
                              f"held-out problems, model {target.label}", data=config.data)
    except ConfigError:
        raise
    except (ValueError, OSError) as err:
        raise ConfigError(f"{source}: {err}") from None
    settings = SamplingSettings(temperature=config.eval.temperature, max_new_tokens=config.rollout.max_new_tokens,
                                batch_size=config.eval.batch_size, seed=config.eval.seed, top_p=config.rollout.top_p,
                                engine=config.rollout.engine, dtype=config.model.dtype,
                                max_prompt_tokens=config.data.prompt_keep_last)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    hf_logging.disable_progress_bar()  # per-checkpoint 'Loading weights' bars drown the eval's own lines
    models = []
    try:
        with make_task_verifier(task, config) as verifier:
            environment = build_environment(config.rollout.environment, task, verifier.score_many, source)
            for target in targets:
                model, tokenizer = load_model_and_tokenizer(target.checkpoint,
                                                            attn_implementation=config.model.attn_implementation)
                apply_prompt_settings(tokenizer, config)
                model = model.to(device)
                cache = open_cache(cache_dir, model, tokenizer, task, settings, environment)
                log(f"{target.label}: {len(heldout)} problems x (1 greedy + {n} sampled) from {target.checkpoint}"
                    + (f", cache {cache.directory}" if cache.directory else ""))
                engine = engine_cls.build(config, model, tokenizer)
                try:
                    with forward_autocast(config):
                        per_problem, generated = collect_samples(
                            model, tokenizer, heldout, engine, verifier, settings, samples=n, cache=cache,
                            environment=environment, progress=_progress_line(target.label))
                finally:
                    engine.close()
                log(f"{target.label}: generated {generated} sequences, "
                    f"{len(heldout) * (1 + n) - generated} reused from the cache")
                metrics = summarize(per_problem, ks=ks or None, seed=config.eval.seed, strategy=args.strategy,
                                    selector=args.selector)
                models.append({"label": target.label, "model": str(target.checkpoint), "metrics": metrics,
                               "per_problem": [per_problem_record(p) for p in per_problem]})
    finally:
        torch.set_num_threads(threads_before)
    results = {"task": {"name": config.task.name, "params": config.task.params}, "problems": len(heldout),
               "samples": n, "ks": ks, "temperature": config.eval.temperature,
               "max_new_tokens": config.rollout.max_new_tokens, "seed": config.eval.seed,
               "strategy": args.strategy, "selector": args.selector, "models": models,
               "deltas": paired_deltas(models, ks, config.eval.seed) if len(models) > 1 and ks else {}}
    written = write_outputs(results, output_dir)
    if args.json:
        print(json.dumps([{"label": m["label"], "model": m["model"], **m["metrics"]} for m in models], indent=2))
    else:
        print(format_tables(results))
        print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


def _progress_line(label: str, every_s: float = 15.0):
    """A collect_samples progress callback: one stderr line at most every ``every_s`` seconds."""
    import time

    from rlvr.eval.compare import log

    state = {"done": 0, "last": time.monotonic()}

    def progress(sequences: int) -> None:
        state["done"] += sequences
        if time.monotonic() - state["last"] >= every_s:
            state["last"] = time.monotonic()
            log(f"{label}: {state['done']} sequences generated so far")

    return progress


def _report(args: argparse.Namespace) -> int:
    from rlvr.eval.report import write_report

    try:
        path = write_report([Path(p) for p in args.run_dirs], Path(args.output) if args.output else None,
                            transcripts_per_phase=args.transcripts, x_axis=args.x_axis)
    except FileNotFoundError as err:  # not a run directory (missing, empty, something else)
        raise ConfigError(str(err)) from None
    print(f"report: {path} (open it in a browser)")
    return 0


def _int_list(flag: str, text: str | None) -> list[int] | None:
    """A comma list of integers from the command line (None when the flag is absent)."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not an integer or a comma list of integers") from None


def _compare(args: argparse.Namespace) -> int:
    from rlvr.compare.page import build_page
    from rlvr.compare.results import gather, tables
    from rlvr.compare.runner import CompareError, run_all
    from rlvr.compare.spec import load_comparison

    seeds = _int_list("--seeds", args.seeds)
    seeds = seeds[0] if seeds is not None and len(seeds) == 1 else seeds  # one number is a count
    ks = _int_list("--ks", args.ks)
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    if not args.timeout_s > 0:
        raise ConfigError(f"--timeout-s must be positive, got {args.timeout_s}")
    comparison = load_comparison(args.files, seeds=seeds, budget=args.budget, sets=args.set, ks=ks)
    output_dir = Path(args.output_dir or f"runs/compare-{Path(args.files[0]).stem}")
    try:
        run_all(comparison, output_dir, args.parallel, args.timeout_s)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to continue (finished runs are kept, interrupted ones "
              f"resume from their checkpoints): {output_dir}", file=sys.stderr)
        return 130
    results = gather(comparison, output_dir)
    text = tables(results)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    title = f"rlvr compare: {Path(comparison.source).stem if comparison.source != 'command line' else ' vs '.join(a.name for a in comparison.arms)}"
    (output_dir / "compare.html").write_text(build_page(results, text, title))
    print(text)
    print(f"\nresults: {output_dir / 'results.json'}; page: {output_dir / 'compare.html'}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from rlvr.training.reward_model import examples_from_file, examples_from_run, train_judge, train_reward_model

    hf_logging.disable_progress_bar()
    from rlvr.training.run_dir import RunDir, RunDirError, model_source

    for name, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if not (args.lr > 0 and args.lr < float("inf")):
        raise ConfigError(f"--lr must be a positive number, got {args.lr}")
    if Path(args.output).exists() and any(Path(args.output).iterdir()):
        raise ConfigError(f"--output {args.output} exists and is not empty; choose another directory")
    try:
        if args.from_run:
            run = RunDir(args.from_run)
            try:
                state = run.load_state()
            except RunDirError as err:
                raise ConfigError(f"--from-run: {err}") from None
            base = args.base or (str(run.path / model_source(state)) if model_source(state) else None)
            if base is None:
                raise ConfigError(f"--from-run {args.from_run}: the run has no checkpoint yet; give --base")
            examples = examples_from_run(run.path, "classify" if args.objective == "judge" else args.objective)
            objective = args.objective
        else:
            if not args.base:
                raise ConfigError("--data needs --base: the checkpoint the reward model starts from")
            if not Path(args.data).is_file():
                raise ConfigError(f"--data {args.data}: no such file")
            base = args.base
            examples, objective = examples_from_file(Path(args.data))
            objective = "judge" if args.objective == "judge" else objective
        if not Path(base).is_dir() and "/" not in str(base):
            raise ConfigError(f"--base {base}: not a checkpoint directory")
        if args.rubric is not None and objective != "judge":
            raise ConfigError("--rubric is for --objective judge")
        if objective == "judge":
            from rlvr.rewards.judge import DEFAULT_RUBRIC

            metrics = train_judge(examples, base, Path(args.output), args.rubric or DEFAULT_RUBRIC, steps=args.steps,
                                  lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device)
        else:
            metrics = train_reward_model(examples, objective, base, Path(args.output), steps=args.steps, lr=args.lr,
                                         batch_size=args.batch_size, seed=args.seed, device=args.device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    after = metrics["heldout_after"]
    held = (f"; held-out accuracy {100 * metrics['heldout_before']['accuracy']:.1f}% -> "
            f"{100 * after['accuracy']:.1f}% on {after['examples']} examples" if after else "")
    what = "generative judge" if objective == "judge" else "reward model"
    print(f"{what} ({objective}, {metrics['train_examples']} training examples) written to {args.output}{held}")
    return 0


def _limr(args: argparse.Namespace) -> int:
    from rlvr.data.limr import lim_scores, select
    from rlvr.training.run_dir import RunDir

    run = RunDir(args.run_dir)
    if not (run.path / "config.yaml").is_file():
        raise ConfigError(f"{run.path}: not an rlvr run directory (no config.yaml)")
    curves: dict[str, list[float]] = {}
    try:
        records = run.read("pass_rates.jsonl")
        for record in records:
            for problem_id, rate in record["rates"].items():
                curves.setdefault(problem_id, []).append(rate)
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise ConfigError(f"{run.path / 'pass_rates.jsonl'}: damaged ({err})") from None
    scores = lim_scores(curves)
    if not scores:
        raise ConfigError(f"{args.run_dir}: no per-prompt pass rates to score (pass_rates.jsonl is empty)")
    chosen = select(scores, args.threshold)
    Path(args.output).write_text(json.dumps(chosen, indent=1))
    epochs = min(len(c) for c in curves.values())
    print(f"LIMR: {len(chosen)} of {len(scores)} problems have LIM score >= {args.threshold} "
          f"over {epochs} epochs; ids written to {args.output}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from rlvr.catalog import list_lines

    try:
        print("\n".join(list_lines(args.category)))
    except ValueError as err:
        raise ConfigError(f"rlvr list: {err}") from None
    return 0


def _describe(args: argparse.Namespace) -> int:
    from rlvr.catalog import describe_lines

    try:
        print("\n".join(describe_lines(args.name)))
    except ValueError as err:
        raise ConfigError(f"rlvr describe: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
