"""One screen of GRPO: rlvr's RL loop top to bottom, on rlvr's own building blocks.

    sample G responses per prompt -> score them with the task's verifier -> advantages
    against the group -> PPO-clip loss over shuffled mini-batches -> AdamW step -> log

GRPO (Shao et al. 2024, "DeepSeekMath", Sec. 4.1.2), for a prompt with responses o_1..o_G
and rewards r_1..r_G:

    A_i     = (r_i - mean(r)) / (std(r) + eps)           the group is the baseline: no critic
    ratio_t = pi(o_t | prefix) / pi_old(o_t | prefix)    pi_old: the policy that sampled o
    loss    = -sum_{i,t} min(ratio_t * A_i, clip(ratio_t, 1 - eps, 1 + eps) * A_i) / sum_i |o_i|

Run it (a fresh tiny model rarely answers right, so warm it up with `rlvr sft` first):

    python examples/minimal_grpo.py --steps 5
    rlvr sft --output-dir runs/warm
    python examples/minimal_grpo.py --init runs/warm/checkpoints/sft-final --steps 60

`rlvr train` (rlvr/training/rl.py) is this loop plus what real runs need: checkpoints and
resume, evaluation, estimators, losses and KL chosen by name, multi-turn tools, data
filters, reward shaping, micro-batches, mixed precision, non-finite guards.

tests/test_minimal_grpo.py proves two steps of this file equal to two steps of `rlvr train`
with the same settings: the same rewards, losses and gradient norms, and bit-identical
weights. They match because every random number comes from the same named seed streams,
``derive_seed(seed, stream, step)`` ("rl-prompts" picks the prompts, skipping the held-out
split; "rl-samples" draws the tokens; "rl-shuffle" orders the mini-batches), and the rows
enter the loss in the same order. Bit-equality needs one forward per mini-batch
(`rl.micro_batch_size` >= its rows); with more rows `rlvr train` accumulates gradients over
micro-batches, the same gradient up to float rounding.
"""

from __future__ import annotations

import argparse
import time

import rlvr  # noqa: F401  (before torch, as `rlvr` does: it tunes OpenMP for a busy CPU)
import torch
from transformers import PreTrainedModel

from rlvr.algorithms import aggregate_loss, grpo_advantages, ppo_clip_loss
from rlvr.models import build_char_tokenizer, build_tiny_model, load_model_and_tokenizer
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.rollout.sampling import sample_trajectories
from rlvr.seeding import derive_seed
from rlvr.tasks import TASKS
from rlvr.training.batch import make_token_batch, token_logprobs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GRPO on the addition task, in one loop (defaults: `rlvr train`'s)")
    p.add_argument("--steps", type=int, default=60, help="RL steps")
    p.add_argument("--init", help="checkpoint to start from (default: a freshly built tiny model)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random stream")
    p.add_argument("--min-digits", type=int, default=2, help="fewest digits of an addition operand")
    p.add_argument("--max-digits", type=int, default=3, help="most digits of an addition operand")
    p.add_argument("--heldout", type=int, default=200, help="held-out problems never trained on")
    p.add_argument("--heldout-seed", type=int, default=1_000_003, help="seed of the held-out split")
    p.add_argument("--prompts", type=int, default=32, help="prompts per step (P)")
    p.add_argument("--group", type=int, default=8, help="responses per prompt (G)")
    p.add_argument("--mini-batches", type=int, default=2, help="optimizer steps per RL step")
    p.add_argument("--max-new-tokens", type=int, default=40, help="longest response, in tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (and of the log-probs)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--clip", type=float, default=0.2, help="PPO clip epsilon")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    return p.parse_args(argv)


def train(args: argparse.Namespace, log=print) -> tuple[PreTrainedModel, list[dict[str, float]]]:
    """Run ``args.steps`` GRPO steps; the trained model and one record per step."""
    task_cls = TASKS.get("addition")
    task = task_cls(task_cls.Params(min_digits=args.min_digits, max_digits=args.max_digits))
    # Problems of the held-out split (rlvr train evaluates on them) are never trained on.
    heldout = task.sample_problems(args.heldout, args.heldout_seed, split="heldout")
    exclude = frozenset(problem.id for problem in heldout)
    if args.init:
        model, tokenizer = load_model_and_tokenizer(args.init)
    else:
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, seed=args.seed)
    model.train()
    # rlvr's optimizer (rlvr.training.optim): fused AdamW, betas for small-batch LM training
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    engine = KVCacheEngine()  # batched sampling; a group's shared prompt is computed once
    P, G = args.prompts, args.group
    history = []
    for step in range(args.steps):
        t0 = time.perf_counter()

        # 1. sample: G responses to each of P fresh prompts, in one batch of N = P * G
        problems = task.sample_problems(P, derive_seed(args.seed, "rl-prompts", step), exclude)
        sampling_rng = torch.Generator().manual_seed(derive_seed(args.seed, "rl-samples", step))
        trajectories = sample_trajectories(
            engine, model, tokenizer, [p for p in problems for _ in range(G)],
            groups=[i for i in range(P) for _ in range(G)],
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, generator=sampling_rng)

        # 2. score: the task's verifier, 1.0 for a right final answer
        texts = tokenizer.batch_decode([t.response_ids for t in trajectories], skip_special_tokens=True)
        rewards = torch.tensor([task.score(t.problem, text).reward
                                for t, text in zip(trajectories, texts)])  # [N]

        # 3. advantages: each reward against its group, broadcast over the response's tokens
        batch = make_token_batch([t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories],
                                 tokenizer.pad_token_id, response_logprobs=[t.logprobs for t in trajectories])
        # batch.input_ids: [N, L] prompt + response, right-padded; targets, target_mask (1 on
        # response tokens) and old_logprobs (the sampler's): [N, L-1], column j predicts token j+1
        group_ids = torch.tensor([t.group for t in trajectories])  # [N]
        batch.extras["advantages"], _ = grpo_advantages(rewards, group_ids, batch.target_mask)  # [N, L-1]

        # 4. learn: one optimizer step per shuffled mini-batch, each a PPO-clip step
        shuffle_rng = torch.Generator().manual_seed(derive_seed(args.seed, "rl-shuffle", step))
        order = torch.randperm(len(trajectories), generator=shuffle_rng)  # [N]
        lengths = batch.attention_mask.sum(-1)  # [N]
        losses, grad_norms = [], []
        for mini in order.chunk(args.mini_batches):
            # Longest rows first, as rl.py orders them to trim padding per micro-batch: the
            # same rows in the same order keep the two loops equal to the last bit.
            mini = mini[lengths[mini].argsort(descending=True, stable=True)]  # [N / mini_batches]
            rows = batch.rows(mini)  # the mini-batch, trimmed to its longest row: [n, l]
            logp, _ = token_logprobs(model, rows, args.temperature)  # [n, l-1], differentiable
            per_token, _ = ppo_clip_loss(logp, rows.old_logprobs, rows.extras["advantages"], rows.target_mask,
                                             clip_low=args.clip, clip_high=args.clip)  # [n, l-1]
            loss = aggregate_loss(per_token, rows.target_mask, "token_mean")  # sum over tokens / tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)))
            optimizer.step()
            losses.append(float(loss.detach()))

        # 5. log
        record = {"step": step + 1, "rewards": rewards.tolist(), "reward_mean": float(rewards.mean()),
                  "loss": sum(losses) / len(losses), "grad_norm": sum(grad_norms) / len(grad_norms),
                  "response_length": sum(len(t.response_ids) for t in trajectories) / len(trajectories),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        log(f"step {record['step']:4d} | reward {record['reward_mean']:.3f} | loss {record['loss']:+.4f} | "
            f"grad norm {record['grad_norm']:.3f} | "
            f"length {record['response_length']:.1f} | {record['seconds']:.2f} s")
    return model, history


if __name__ == "__main__":
    train(parse_args())
