"""One RL step of rlvr against TRL's GRPOTrainer on the same CPU, interleaved A/B.

Both sides get the same work: the same saved tiny model (the default recipe's model after
its SFT warm start, built once and cached), the same tokenizer and chat template, the same
prompts in the same order (the ones rlvr's sampler draws for each step), 8 samples per
prompt, the same max new tokens, temperature and top-p, the same verifier (the task's
score), GRPO advantages scaled by the group std, PPO-clip 0.2 with a token-mean loss over
each mini-batch (TRL's ``dapo`` loss), no KL term, AdamW(0.9, 0.99) at the same constant
learning rate, gradient clipping at 1.0, fp32 and the same number of torch threads.

An *RL step* is one rollout batch (prompts x samples) and its ``mini_batches`` optimizer
steps. TRL counts each optimizer step as a step; it generates the batch at the first of them
(``generation_batch_size`` = prompts x samples, ``per_device_train_batch_size`` x
``gradient_accumulation_steps`` = one mini-batch), so one RL step here is ``mini_batches``
TRL steps, timed with a TrainerCallback from the first step's begin to the last one's end.

Each side runs in its own process (own peak RSS); repetitions alternate the order
(rlvr, TRL, TRL, rlvr, ...). The first ``--warmup`` steps of every run are not timed.

    pip install -e ".[cpu,bench]"
    python benchmarks/bench_vs_trl.py                # 3 repetitions x 8 steps (2 warm-up)
    python benchmarks/bench_vs_trl.py --reward-steps 30 --reward-seeds 3   # also the reward check
    python benchmarks/bench_vs_trl.py --model qwen2-50m   # a 53.5M Qwen2 shape, 32k BPE vocabulary

With ``--model`` both sides start from that checkpoint (random weights for a shape name: the
reward stays near 0, every row runs to the length limit on both sides, which is what a speed
comparison at that size needs) and train without the SFT stage.

The last line is machine-readable: ``speedup_vs_trl: X.XX`` (TRL median step time / rlvr's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"


def base_config(args: argparse.Namespace, model_path: str | None = None):
    from rlvr.config import load_config

    overrides = [f"threads={args.threads}", "logging.progress=false"]
    if model_path:
        overrides += [f"model.path={model_path}", "stages=[rl]"]
    return load_config(None, overrides + list(args.set))


def warm_start(args: argparse.Namespace) -> Path:
    """The default recipe's model after its SFT stage, saved once (HF format) and reused."""
    path = CACHE / f"warmstart-seed{args.seed}"
    if (path / "config.json").is_file():
        return path
    import torch

    from rlvr.training.pipeline import _starting_model, build_task
    from rlvr.training.run_dir import RunDir
    from rlvr.training.sft import train_sft

    config = base_config(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    task = build_task(config)
    heldout = task.sample_problems(config.eval.problems, config.eval.seed, split="heldout")
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(config, Path(tmp) / "run")
        state = run.load_state()
        model, tokenizer = _starting_model(config, run, state)
        print(f"building the warm start ({config.sft.steps} SFT steps) -> {path}", file=sys.stderr)
        train_sft(model, tokenizer, task, config, run, state, frozenset(p.id for p in heldout))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def benchmark_model(args: argparse.Namespace) -> Path:
    """``--model``: the default recipe's warm start (none given), a named random-weight shape
    (``rlvr.models.random_checkpoint.SHAPES``, written once under benchmarks/.cache/), or a
    checkpoint directory / cached hub id."""
    if args.model is None:
        return warm_start(args)
    from rlvr.models.random_checkpoint import SHAPES, write_random_checkpoint

    if args.model in SHAPES:
        path = CACHE / f"{args.model}-seed{args.seed}"
        if not (path / "config.json").is_file():
            print(f"writing a random {args.model} checkpoint -> {path}", file=sys.stderr)
            CACHE.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:  # renamed whole: no half-written cache
                write_random_checkpoint(Path(tmp) / "model", shape=args.model, seed=args.seed)
                (Path(tmp) / "model").rename(path)
        return path
    from rlvr.models.hub import resolve_model_path

    return Path(resolve_model_path(args.model))


def step_problems(config, task, steps: int):
    """The prompts rlvr's sampler draws at each step (no data filter: one round per step)."""
    from rlvr.data.sampler import PromptSampler

    sampler = PromptSampler(task, config, frozenset())
    return [sampler.draw(config.rl.prompts_per_step, step, 0) for step in range(steps)]


# ----------------------------------------------------------------------------- one side per process


def run_rlvr(args: argparse.Namespace, model_dir: Path) -> dict:
    import torch

    from rlvr.models import load_model_and_tokenizer
    from rlvr.rollout import ROLLOUT_ENGINES
    from rlvr.training.pipeline import build_task
    from rlvr.rollout.sampler import Sampler
    from rlvr.training.judge import Judge
    from rlvr.training.rl import Learner, RLRoles, rl_step
    from rlvr.verify import make_verifier

    config = base_config(args, str(model_dir))
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    task = build_task(config)
    model, tokenizer = load_model_and_tokenizer(model_dir)
    model.train()
    engine = ROLLOUT_ENGINES.get(config.rollout.engine)()

    class FixedPrompts:  # the same prompts TRL gets, in the same order
        problems = step_problems(config, task, args.steps)

        def draw(self, count, step, round_):
            return self.problems[step][:count]

        def observe(self, *a):
            return {}

    records = []
    with make_verifier(task, isolate=False) as verifier:
        roles = RLRoles(Sampler(engine, model, tokenizer), Judge(task, verifier, tokenizer, config),
                        Learner.build(model, config, tokenizer.pad_token_id), FixedPrompts())
        for step in range(args.steps):
            record, trajectories, _ = rl_step(roles, step)
            record["completion_tokens"] = sum(len(t.response_ids) for t in trajectories)
            records.append(record)
    keys = ["step_time", "reward_mean", "completion_tokens", "time_generation", "time_scoring", "time_prepare",
            "time_update", "time_logprob", "time_backward"]
    return {"steps": [{k: r[k] for k in keys if k in r} for r in records]}


def run_trl(args: argparse.Namespace, model_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.training.pipeline import build_task

    config = base_config(args, str(model_dir))
    torch.set_num_threads(args.threads)
    torch.manual_seed(config.seed)
    task = build_task(config)
    rl, rollout, alg = config.rl, config.rollout, config.algorithm
    problems = [p for step in step_problems(config, task, args.steps) for p in step]
    by_id = {p.id: p for p in problems}
    dataset = Dataset.from_list([{"prompt": p.prompt, "problem_id": p.id} for p in problems])

    def correctness(completions, problem_id, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [task.score(by_id[pid], text).reward for pid, text in zip(problem_id, texts)]

    batch = rl.prompts_per_step * rl.samples_per_prompt
    mini = batch // rl.mini_batches
    micro = min(rl.micro_batch_size, mini)
    trl_config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=config.seed, data_seed=config.seed, shuffle_dataset=False,
        max_steps=args.steps * rl.mini_batches, num_train_epochs=1,
        per_device_train_batch_size=micro, gradient_accumulation_steps=mini // micro,
        generation_batch_size=batch, num_generations=rl.samples_per_prompt, num_iterations=rl.epochs,
        max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
        top_k=0, beta=0.0, epsilon=alg.clip_low, epsilon_high=alg.clip_high, loss_type="dapo",
        scale_rewards="group" if alg.scale_by_std else "none",
        learning_rate=rl.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=rl.weight_decay,
        adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=rl.grad_clip, bf16=False, fp16=False,
        dataloader_num_workers=0, log_completions=False,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"

    records: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step % rl.mini_batches == 0:
                self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step % rl.mini_batches == 0:
                records.append({"step_time": time.perf_counter() - self.t0})

    trainer = GRPOTrainer(model=model, reward_funcs=[correctness], args=trl_config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    rewards: list[float] = []
    tokens: list[float] = []
    original_generate = trainer._generate_and_score_completions

    gen_times: list[float] = []

    def generate_and_record(inputs):
        t0 = time.perf_counter()
        out = original_generate(inputs)
        gen_times.append(time.perf_counter() - t0)
        rewards.append(trainer._metrics["train"]["reward"][-1])
        tokens.append(float(out["completion_mask"].sum()))
        return out

    trainer._generate_and_score_completions = generate_and_record
    trainer.train()
    for record, reward, n, t_gen in zip(records, rewards, tokens, gen_times):
        record.update(reward_mean=reward, completion_tokens=n, time_generation=t_gen)
    return {"steps": records}


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = Path(args.model_dir)
    result = run_rlvr(args, model_dir) if args.side == "rlvr" else run_trl(args, model_dir)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------- the driver


def spawn(args: argparse.Namespace, side: str, model_dir: Path, steps: int, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", str(model_dir), "--steps", str(steps),
           "--threads", str(args.threads), "--seed", str(args.seed),
           *sum((["--set", s] for s in [*args.set, *extra]), [])]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{side} run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per side, order alternating")
    parser.add_argument("--steps", type=int, default=8, help="RL steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each run")
    parser.add_argument("--reward-steps", type=int, default=0,
                        help="if > 0: one more run per side of this many steps for the reward comparison")
    parser.add_argument("--reward-seeds", type=int, default=1,
                        help="reward comparison over this many run seeds (other prompts and draws, same model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="rlvr config override (both sides), repeatable")
    parser.add_argument("--model", help="a random-weight shape (e.g. qwen2-50m), a checkpoint directory or a cached "
                        "hub id; default: the default recipe's model after its SFT warm start")
    parser.add_argument("--side", choices=["rlvr", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    model_dir = benchmark_model(args)
    config = base_config(args, str(model_dir))
    rl = config.rl
    print(f"model {model_dir} | {rl.prompts_per_step} prompts x {rl.samples_per_prompt} samples, "
          f"max_new_tokens {config.rollout.max_new_tokens}, {rl.mini_batches} optimizer steps per batch, fp32, "
          f"{args.threads} threads, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')} (both sides) | "
          f"{args.reps} reps x {args.steps} steps ({args.warmup} warm-up)")
    results: dict[str, list[dict]] = {"rlvr": [], "trl": []}
    loads = [load()]
    for rep in range(args.reps):
        for side in (["rlvr", "trl"] if rep % 2 == 0 else ["trl", "rlvr"]):
            t0 = time.perf_counter()
            res = spawn(args, side, model_dir, args.steps)
            results[side].append(res)
            times = [s["step_time"] for s in res["steps"][args.warmup:]]
            loads.append(load())
            print(f"  rep {rep} {side:4s}: median {statistics.median(times):.3f} s/step "
                  f"({time.perf_counter() - t0:.0f} s wall, load {loads[-1]})", flush=True)

    def summary(side: str) -> dict:
        steps = [s for res in results[side] for s in res["steps"][args.warmup:]]
        med = statistics.median(s["step_time"] for s in steps)
        tok_s = sum(s["completion_tokens"] for s in steps) / sum(s["step_time"] for s in steps)
        rss = max(res["peak_rss_mb"] for res in results[side])
        return {"median": med, "tok_s": tok_s, "rss": rss, "steps": steps}

    a, b = summary("rlvr"), summary("trl")
    print(f"\n{'':6s} {'median s/step':>14s} {'gen tok/s':>10s} {'peak RSS MB':>12s}")
    for name, s in (("TRL", b), ("rlvr", a)):
        print(f"{name:6s} {s['median']:14.3f} {s['tok_s']:10.0f} {s['rss']:12.0f}")
    split = {k: statistics.median(s.get(k, 0.0) for s in a["steps"])
             for k in ("time_generation", "time_logprob", "time_backward")}
    other = a["median"] - sum(split.values())
    print("rlvr step split (medians): generation+scoring {:.3f} s ({:.0f}%), log-prob forward {:.3f} s ({:.0f}%), "
          "backward+optimizer {:.3f} s ({:.0f}%), other {:.3f} s ({:.0f}%)".format(
              *[x for v in [*split.values(), other] for x in (v, 100 * v / a["median"])]))
    trl_gen = statistics.median(s["time_generation"] for s in b["steps"])
    print(f"TRL step split (medians): generation+scoring+old log-probs {trl_gen:.3f} s "
          f"({100 * trl_gen / b['median']:.0f}%), update {b['median'] - trl_gen:.3f} s")
    print(f"load average during the runs: {' -> '.join(loads)}")

    if args.reward_steps:
        tail = max(1, args.reward_steps // 4)
        finals: dict[str, list[float]] = {"rlvr": [], "trl": []}
        for run_seed in range(config.seed, config.seed + args.reward_seeds):
            for side in ("rlvr", "trl"):
                res = spawn(args, side, model_dir, args.reward_steps, (f"seed={run_seed}",))
                rewards = [s["reward_mean"] for s in res["steps"]]
                finals[side].append(statistics.mean(rewards[-tail:]))
                print(f"reward {side:4s} (seed {run_seed}): first step {rewards[0]:.3f}, mean of last {tail} of "
                      f"{args.reward_steps} steps {finals[side][-1]:.3f}")
        if args.reward_seeds > 1:
            print(f"reward over {args.reward_seeds} seeds (mean of last {tail} steps): "
                  f"rlvr {statistics.mean(finals['rlvr']):.3f}, trl {statistics.mean(finals['trl']):.3f}")
    print(f"speedup_vs_trl: {b['median'] / a['median']:.2f}")


if __name__ == "__main__":
    main()
