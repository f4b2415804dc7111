"""Batch-level reward shaping: length penalties, difficulty-aware length rewards and the
research switches (label noise, format-only, random rewards), as pure tensor functions.

Per-trajectory reward components (``rlvr.rewards.REWARDS``) score one completion at a time.
Shaping runs after they are summed, on the whole RL step's batch, because it needs what a
single trajectory cannot see: its group (samples of the same prompt), its length and
whether it was truncated. Every shaper in ``REWARD_SHAPERS`` has the same signature::

    fn(inputs: ShapingInputs, **params) -> Tensor[N]      # the NEW total reward

It returns the new total reward (not a delta), so a config lists shapers in the order they
apply and each one sees the previous one's output as ``inputs.rewards``
(``apply_shapers``). Params are keyword-only and documented with their unit; an unknown
param is a TypeError (a typo in a config must not be silently ignored). ``inputs.correct``
is never changed by a shaper: every shaper reads the verifier's verdict.

Convention for shapers that replace or flip "the correctness part" of the reward
(``cosine``, ``label_noise``): the total reward is assumed to contain the verifier's
``correctness`` component as c = 1.0 if correct else 0.0, at weight 1.0 (the default
``reward.components``); ``reward - c`` is then "everything else" (format reward, earlier
shaping penalties), which they keep.

Randomness comes only from ``inputs.generator`` (seeded per step by the trainer); each
random shaper documents exactly what it draws, so a test or a replay can reproduce it.

Stateful shapers (``laser_d``) are registered as classes with ``__call__(inputs, **params)``,
``state_dict()`` and ``load_state_dict()``; ``build_shaper`` instantiates them, and the
trainer checkpoints their state.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from rlvr.registry import Registry
from rlvr.rewards import RewardError

Shaper = Callable[..., Tensor]  # (inputs: ShapingInputs, **params) -> Tensor[N]
REWARD_SHAPERS: Registry = Registry("reward shaping")

__all__ = [
    "REWARD_SHAPERS",
    "ShapingInputs",
    "build_shaper",
    "apply_shapers",
    "overlong_filter_mask",
    "overlong_shaping",
    "laser_shaping",
    "LaserD",
    "cosine_shaping",
    "kimi_length_shaping",
    "label_noise_shaping",
    "format_only_shaping",
    "random_reward_shaping",
]


@dataclass
class ShapingInputs:
    """One RL step's batch of scored trajectories, as seen by the reward shapers.

    Fields (N trajectories, all on one device):
        rewards: Tensor[N] float, the current total reward.
        correct: Tensor[N] bool, the verifier's verdict.
        lengths: Tensor[N] integer, response length in tokens.
        truncated: Tensor[N] bool, the response hit ``max_new_tokens`` without finishing.
        group_ids: Tensor[N] integer; samples of one prompt share an id (any order).
        max_new_tokens: generation budget in tokens (DAPO's L_max).
        generator: seeded per step by the trainer; the only source of randomness.
        format_ok: Tensor[N] bool or None; the task found a well-formed final answer
            (needed by ``format_only`` only).
        tool_calls: Tensor[N] integer or None; tool calls of each multi-turn episode
            (needed by ``otc`` only).
    """

    rewards: Tensor
    correct: Tensor
    lengths: Tensor
    truncated: Tensor
    group_ids: Tensor
    max_new_tokens: int
    generator: torch.Generator
    format_ok: Optional[Tensor] = None
    tool_calls: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if not isinstance(self.rewards, Tensor) or self.rewards.dim() != 1:
            raise ValueError(f"ShapingInputs.rewards must be a 1-D tensor [N], got {_describe(self.rewards)}")
        if not self.rewards.dtype.is_floating_point:
            raise TypeError(f"ShapingInputs.rewards must be a float tensor, got {self.rewards.dtype}")
        n = self.rewards.shape[0]
        fields = [("correct", self.correct, "bool"), ("lengths", self.lengths, "int"),
                  ("truncated", self.truncated, "bool"), ("group_ids", self.group_ids, "int")]
        if self.format_ok is not None:
            fields.append(("format_ok", self.format_ok, "bool"))
        if self.tool_calls is not None:
            fields.append(("tool_calls", self.tool_calls, "int"))
        for name, t, kind in fields:
            if not isinstance(t, Tensor) or t.shape != (n,):
                raise ValueError(f"ShapingInputs.{name} must be a tensor of shape [{n}] (like rewards), "
                                 f"got {_describe(t)}")
            if kind == "bool" and t.dtype != torch.bool:
                raise TypeError(f"ShapingInputs.{name} must be a bool tensor, got {t.dtype}")
            if kind == "int" and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
                raise TypeError(f"ShapingInputs.{name} must be an integer tensor (long), got {t.dtype}")
        if n and int(self.lengths.min()) < 0:
            raise ValueError("ShapingInputs.lengths must be >= 0 (tokens)")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"ShapingInputs.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.generator, torch.Generator):
            raise TypeError("ShapingInputs.generator must be a torch.Generator, "
                            f"got {type(self.generator).__name__}")


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _as_reward(x: Tensor, inputs: ShapingInputs) -> Tensor:
    """x in the rewards' dtype and device."""
    return x.to(dtype=inputs.rewards.dtype, device=inputs.rewards.device)


def _correctness(inputs: ShapingInputs) -> Tensor:
    """c_i = 1.0 if the verifier accepted trajectory i else 0.0 (rewards' dtype)."""
    return _as_reward(inputs.correct, inputs)


def _uniform(inputs: ShapingInputs) -> Tensor:
    """The one draw of every random shaper: u ~ U[0, 1)^N, float64, from ``inputs.generator``
    on the generator's device (one ``torch.rand(N, dtype=torch.float64)`` call)."""
    g = inputs.generator
    u = torch.rand(inputs.rewards.shape[0], generator=g, dtype=torch.float64, device=g.device)
    return u.to(inputs.rewards.device)


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must be a probability in [0, 1], got {p}")


def build_shaper(name: str) -> Shaper:
    """The shaper registered (or importable as ``module:attribute``) under ``name``;
    a class (a stateful shaper) is instantiated, so each call returns fresh state."""
    entry = REWARD_SHAPERS.get(name)
    return entry() if isinstance(entry, type) else entry


def apply_shapers(inputs: ShapingInputs, shapers: Sequence[tuple[Shaper, Mapping[str, Any]]]) -> Tensor:
    """Apply ``(shaper, params)`` pairs in order; each sees the previous output as ``rewards``.

    Returns the final total reward Tensor[N] (``inputs.rewards`` if ``shapers`` is empty).
    A shaper that returns NaN or inf for a sample is a ``RewardError`` naming the shaper
    and the sample's batch index (``err.sample``).
    """
    for shaper, params in shapers:
        rewards = shaper(inputs, **params)
        bad = ~torch.isfinite(rewards)  # [N]
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            name = getattr(shaper, "__name__", type(shaper).__name__)
            raise RewardError(f"reward shaper {name} returned {float(rewards[i])} for sample {i} of the batch "
                              f"(its reward before shaping: {float(inputs.rewards[i])}); check its params "
                              "in reward.shaping", sample=i)
        inputs = replace(inputs, rewards=rewards)
    return inputs.rewards


def check_shaper_params(steps: Sequence[tuple[str, Mapping[str, Any]]], max_new_tokens: int) -> None:
    """Raise ``ValueError`` for the first ``(name, params)``
    step whose params its shaper refuses: a NaN/inf value, a keyword it does not take or
    lacks, or a value it rejects when run on a small made-up batch (two groups of four, mixed
    correctness, lengths, truncation and tool calls). A config mistake, found before any
    work; the message starts with the step's index in ``reward.shaping``."""
    n = 8
    lengths = torch.tensor([1, 3, max_new_tokens // 2, max_new_tokens, 2, max_new_tokens // 3, 5, max_new_tokens])
    correct = torch.tensor([True, False, True, False, False, True, True, False])
    inputs = ShapingInputs(rewards=correct.float(), correct=correct, lengths=lengths.clamp(max=max_new_tokens),
                           truncated=lengths >= max_new_tokens, group_ids=torch.arange(n) // 4,
                           max_new_tokens=max_new_tokens, generator=torch.Generator().manual_seed(0),
                           format_ok=torch.ones(n, dtype=torch.bool), tool_calls=torch.arange(n) % 3)
    for i, (name, params) in enumerate(steps):
        shaper = build_shaper(name)
        try:
            for key, value in params.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{key} must be a finite number, got {value}")
            inspect.signature(shaper).bind(inputs, **params)
            apply_shapers(inputs, [(shaper, params)])
        except Exception as err:  # whatever a shaper raises on bad params (OverflowError too)
            kind = "" if isinstance(err, (TypeError, ValueError, RewardError)) else f"{type(err).__name__}: "
            raise ValueError(f"[{i}] ({name}): {kind}{err}") from None


def overlong_filter_mask(truncated: Tensor) -> Tensor:
    """DAPO overlong filtering (Yu et al. 2025, "DAPO", overlong reward shaping): truncated
    samples are masked out of the loss.

        w_i = 0 if truncated_i else 1

    Args:
        truncated: Tensor[N] bool, the response hit max_new_tokens.

    Returns:
        Tensor[N] float (default dtype) per-trajectory loss weights; multiply them into the
        token mask (``mask * w[:, None]``). This is not a shaper: rewards are unchanged.
    """
    if truncated.dtype != torch.bool:
        raise TypeError(f"truncated must be a bool tensor, got {truncated.dtype}")
    return (~truncated).to(torch.get_default_dtype())


def void_turn_filter_mask(void_turns: Tensor) -> Tensor:
    """SimpleTIR void-turn filtering (Xue et al. 2025, "SimpleTIR: End-to-End Reinforcement
    Learning for Multi-Turn Tool-Integrated Reasoning"): a trajectory with any turn that
    produced neither a complete code block nor a final answer is masked out of the loss
    (it still counts in its group's advantage baseline).

        w_i = 0 if void_turns_i > 0 else 1

    Returns float Tensor[N] of weights (multiply into the token mask).
    """
    return (void_turns == 0).float()


# --------------------------------------------------------------------------- length penalties


@REWARD_SHAPERS.register("overlong")
def overlong_shaping(inputs: ShapingInputs, *, buffer: int, penalty_factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM
    Reinforcement Learning System at Scale", Eq. 13). With L_max = max_new_tokens and the
    punishment interval L_cache = ``buffer``:

        R_length(y) = 0                                  if |y| <= L_max - L_cache
                    = ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
                    = -1                                 if |y| >  L_max
        new reward  = reward + penalty_factor * R_length(y)

    The penalty ramps linearly from 0 to -1 over the last L_cache tokens, so a response that
    uses the whole budget (|y| = L_max, i.e. a truncated one) already gets -1. It is added
    whether or not the answer is correct. ``penalty_factor`` is verl's
    ``overlong_buffer.penalty_factor`` (the paper uses 1.0).

    Params:
        buffer: L_cache, tokens, 1 <= buffer <= max_new_tokens (DAPO: 4096 of 20480).
        penalty_factor: reward units per unit of R_length (>= 0), default 1.0.
    """
    l_max = inputs.max_new_tokens
    if not 1 <= buffer <= l_max:
        raise ValueError(f"overlong: buffer (L_cache, tokens) must be in [1, max_new_tokens={l_max}], "
                         f"got {buffer}")
    if penalty_factor < 0:
        raise ValueError(f"overlong: penalty_factor must be >= 0, got {penalty_factor}")
    length = _as_reward(inputs.lengths, inputs)
    # ((L_max - L_cache) - |y|) / L_cache is >= 0 before the interval, in [-1, 0) inside it and
    # < -1 past L_max, so clamping it to [-1, 0] gives the three cases of Eq. 13 at once.
    r_length = (((l_max - buffer) - length) / buffer).clamp(min=-1.0, max=0.0)
    return inputs.rewards + penalty_factor * r_length


@REWARD_SHAPERS.register("laser")
def laser_shaping(inputs: ShapingInputs, *, target_length: int, alpha: float = 0.5) -> Tensor:
    """LASER, the length-based step reward (Liu et al. 2025, "Learn to Reason Efficiently with
    Adaptive Length-based Reward Shaping", Table 2 in the unified form
    R_hat = C(y) + lambda(y) * S(y)) with C(y) = R(x, y), lambda(y) = 1[R(x, y) = 1],
    S(y) = alpha * 1[L(y) <= L_T]:

        new reward = reward + alpha * 1[correct and |y| <= target_length]

    The correctness reward is kept; incorrect responses get no length term at all (neither
    bonus nor penalty), exactly as in the paper's table and the authors' released code
    (``compute_length_reward_larse``, "reward" mode). A response of exactly
    ``target_length`` tokens gets the bonus.

    Params:
        target_length: L_T, tokens (>= 0).
        alpha: bonus in reward units, default 0.5 (the released scripts' length_reward_scalar).
    """
    if target_length < 0:
        raise ValueError(f"laser: target_length (tokens) must be >= 0, got {target_length}")
    bonus = inputs.correct & (inputs.lengths <= target_length)
    return inputs.rewards + alpha * _as_reward(bonus, inputs)


# --------------------------------------------------------------------------- LASER-D

#: Difficulty buckets of LASER-D, by the group's accuracy acc = (#correct) / (group size).
LASER_D_BUCKETS = ("easy", "medium", "hard")


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """(index of each element's group in 0..G-1 [N] long, G)."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    return inv, uniq.numel()


def _group_sum(values: Tensor, inv: Tensor, num_groups: int) -> Tensor:
    return values.new_zeros(num_groups).index_add(0, inv, values)


@REWARD_SHAPERS.register("laser_d")
class LaserD:
    """LASER-D, the dynamic and difficulty-aware LASER (Liu et al. 2025, "Learn to Reason
    Efficiently with Adaptive Length-based Reward Shaping"; code: hkust-nlp/Laser,
    ``compute_length_reward_larse_d`` and ``_choose_target_length``).

    Reward (as LASER, with a per-bucket target length L_A^d):

        new reward = reward + alpha * 1[correct and |y| <= L_A^{d(group)}]

    Difficulty bucket of a group with k correct out of n samples (thresholds of the paper's
    code, compared in integers): easy if k/n >= 2/3, medium if 1/3 <= k/n < 2/3, hard if
    k/n < 1/3.

    Adaptive target (the paper's "expected correct responses", ECR). For bucket d, let
    P_d(l) be the coverage ratio: the fraction of the model's correct responses in bucket d
    that are at most l tokens long, and N_d the number of correct responses a prompt of
    bucket d is guaranteed to have out of n (floor(2n/3) easy, floor(n/3) medium, 1 hard).
    Then ECR_d(l) = P_d(l) * N_d is the expected number of correct responses within budget l,
    and the target is the shortest grid length that still leaves one (``expected_correct``)
    of them:

        L_A^d = min { l in grid : P_d(l) * N_d >= expected_correct },   else max_new_tokens
        grid  = lower_bound, lower_bound + interval, ... (< max_new_tokens), max_new_tokens

    So easy prompts get a tight budget (a low quantile of their correct lengths) and hard
    prompts a loose one (all their correct lengths must fit).

    What this implementation does, step by step (deterministic, no randomness):
      1. The rewards of this call use the targets from previous steps (``initial_target``
         for every bucket before any statistics exist, as the released code uses its fixed
         ``target_length`` before the first monitoring pass).
      2. Then the statistics are updated with this batch's correct responses, bucketed by
         their group's accuracy in this batch, as exponentially decayed counts on the grid:
             covered[d, l] <- decay * covered[d, l] + #{correct in d with |y| <= l}
             total[d]      <- decay * total[d]      + #{correct in d}
         with P_d(l) = covered[d, l] / total[d] (the test P * N >= E is evaluated as
         covered * N >= E * total), n = the largest group in the batch, and the targets are
         recomputed for every bucket with total > 0 (others keep their target).

    Deviations from the paper / released code, on purpose:
      - Statistics come from the training batches themselves, updated every step with
        exponential forgetting (``decay``), instead of re-generating on a separate
        monitoring set (500 training prompts) every 20 steps: the loop has no monitoring
        rollouts, and a shaper must not generate.
      - P_d(l) counts the correct responses of the bucket, which is what "expected correct
        responses" multiplies by N_d; the released code's coverage statistic counts every
        response (correct or not) of the bucket's prompts.
      - The grid stops at max_new_tokens, and the released code's two slightly different
        bucket boundaries (monitoring: acc <= 1/3 hard, acc > 2/3 easy; reward: acc < 1/3
        hard, acc >= 2/3 easy) are unified to the reward's.
      - LASER-DE's extra bonus for long, non-repetitive incorrect responses is not included.

    Params (passed on every call; the grid must not change while state exists):
        interval: grid spacing, tokens (>= 1); the paper's scripts use 1024 with a 16384 budget.
        lower_bound: smallest target, tokens, default ``interval``; the scripts use 1024-4096.
        alpha: bonus in reward units, default 0.5.
        initial_target: target before any statistics, tokens, default max_new_tokens.
        expected_correct: E, correct responses that must fit within the target, default 1.
        decay: forgetting factor per step in [0, 1], default 0.9 (0: this batch only,
            1: everything seen since the start).
    """

    def __init__(self) -> None:
        self.steps = 0
        self._grid: Optional[Tensor] = None      # [G] long, tokens
        self._covered: Optional[Tensor] = None   # [3, G] float64 decayed counts
        self._total: Optional[Tensor] = None     # [3] float64 decayed counts
        self._targets: Optional[Tensor] = None   # [3] long, tokens

    def __call__(self, inputs: ShapingInputs, *, interval: int, lower_bound: Optional[int] = None,
                 alpha: float = 0.5, initial_target: Optional[int] = None,
                 expected_correct: float = 1.0, decay: float = 0.9) -> Tensor:
        l_max = inputs.max_new_tokens
        lower_bound = interval if lower_bound is None else lower_bound
        initial_target = l_max if initial_target is None else initial_target
        if interval < 1:
            raise ValueError(f"laser_d: interval (tokens) must be >= 1, got {interval}")
        if not 1 <= lower_bound <= l_max:
            raise ValueError(f"laser_d: lower_bound (tokens) must be in [1, max_new_tokens={l_max}], "
                             f"got {lower_bound}")
        if initial_target < 0:
            raise ValueError(f"laser_d: initial_target (tokens) must be >= 0, got {initial_target}")
        if expected_correct <= 0:
            raise ValueError(f"laser_d: expected_correct must be > 0, got {expected_correct}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"laser_d: decay must be in [0, 1], got {decay}")

        grid = torch.arange(lower_bound, l_max + 1, interval, dtype=torch.long)
        if grid[-1] != l_max:
            grid = torch.cat([grid, torch.tensor([l_max])])
        if self._grid is None:
            self._grid = grid
            self._covered = torch.zeros(len(LASER_D_BUCKETS), grid.numel(), dtype=torch.float64)
            self._total = torch.zeros(len(LASER_D_BUCKETS), dtype=torch.float64)
            self._targets = torch.full((len(LASER_D_BUCKETS),), initial_target, dtype=torch.long)
        elif not torch.equal(self._grid, grid):
            raise ValueError(
                f"laser_d: the length grid changed from {self._grid.tolist()} to {grid.tolist()}; "
                "interval, lower_bound and max_new_tokens must stay fixed while the shaper has "
                "state (e.g. when resuming from a checkpoint)")

        correct = inputs.correct.cpu()
        lengths = inputs.lengths.cpu()
        bucket, group_size = self._buckets(correct, inputs.group_ids.cpu())

        target = self._targets[bucket]
        bonus = correct & (lengths <= target)
        out = inputs.rewards + alpha * _as_reward(bonus, inputs)

        self._update(correct, lengths, bucket, group_size, expected_correct, decay)
        self.steps += 1
        return out

    @staticmethod
    def _buckets(correct: Tensor, group_ids: Tensor) -> tuple[Tensor, int]:
        """(bucket of each element [N] long: 0 easy, 1 medium, 2 hard; largest group size)."""
        inv, num_groups = _group_index(group_ids)
        k = _group_sum(correct.long(), inv, num_groups)[inv]
        n = _group_sum(torch.ones_like(inv), inv, num_groups)[inv]
        # acc >= 2/3  <=>  3k >= 2n;  acc >= 1/3  <=>  3k >= n (exact in integers).
        bucket = torch.where(3 * k >= 2 * n, 0, torch.where(3 * k >= n, 1, 2))
        return bucket, int(n.max()) if n.numel() else 0

    def _update(self, correct: Tensor, lengths: Tensor, bucket: Tensor, n: int,
                expected_correct: float, decay: float) -> None:
        assert self._grid is not None and self._covered is not None
        assert self._total is not None and self._targets is not None
        one_hot = torch.nn.functional.one_hot(bucket, len(LASER_D_BUCKETS)).to(torch.float64)
        one_hot = one_hot * correct[:, None].to(torch.float64)             # [N, 3] correct ones only
        within = (lengths[:, None] <= self._grid[None, :]).to(torch.float64)  # [N, G]
        self._covered = decay * self._covered + one_hot.T @ within
        self._total = decay * self._total + one_hot.sum(dim=0)

        n_d = torch.tensor([(2 * n) // 3, n // 3, 1], dtype=torch.float64)  # floor(2n/3), floor(n/3), 1
        ok = self._covered * n_d[:, None] >= expected_correct * self._total[:, None]  # [3, G]
        first = torch.where(ok.any(dim=1), ok.to(torch.uint8).argmax(dim=1), -1)
        new_target = torch.where(first >= 0, self._grid[first.clamp(min=0)], self._grid[-1])
        self._targets = torch.where(self._total > 0, new_target, self._targets)

    def targets(self) -> dict[str, int]:
        """Current target length per bucket in tokens (empty before the first call), for logging."""
        if self._targets is None:
            return {}
        return dict(zip(LASER_D_BUCKETS, (int(t) for t in self._targets)))

    def state_dict(self) -> dict[str, Any]:
        """Everything the next call depends on (copies; safe to ``torch.save``)."""
        state: dict[str, Any] = {"steps": self.steps}
        if self._grid is not None:
            assert self._covered is not None and self._total is not None and self._targets is not None
            state.update(grid=self._grid.clone(), covered=self._covered.clone(),
                         total=self._total.clone(), targets=self._targets.clone())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; a fresh instance then continues exactly as the saved one."""
        tensors = ("grid", "covered", "total", "targets")
        present = [key for key in tensors if key in state]
        if "steps" not in state or present not in ([], list(tensors)):
            raise ValueError(f"laser_d state must have 'steps' and either all or none of {list(tensors)}; "
                             f"got keys {sorted(state)}")
        self.steps = int(state["steps"])
        if not present:
            self._grid = self._covered = self._total = self._targets = None
            return
        grid, covered = state["grid"].to(torch.long), state["covered"].to(torch.float64)
        total, targets = state["total"].to(torch.float64), state["targets"].to(torch.long)
        b = len(LASER_D_BUCKETS)
        if grid.dim() != 1 or covered.shape != (b, grid.numel()) or total.shape != (b,) \
                or targets.shape != (b,):
            raise ValueError(f"laser_d state has inconsistent shapes: grid {tuple(grid.shape)}, covered "
                             f"{tuple(covered.shape)}, total {tuple(total.shape)}, "
                             f"targets {tuple(targets.shape)}")
        self._grid, self._covered = grid.cpu().clone(), covered.cpu().clone()
        self._total, self._targets = total.cpu().clone(), targets.cpu().clone()


# --------------------------------------------------------------------------- length-aware rewards


@REWARD_SHAPERS.register("cosine")
def cosine_shaping(inputs: ShapingInputs, *, r_c_0: float = 2.0, r_c_L: float = 1.0,
                   r_w_0: float = -10.0, r_w_L: float = 0.0, r_exceed: float = -10.0) -> Tensor:
    """Cosine length-scaling reward (Yeo et al. 2025, "Demystifying Long Chain-of-Thought
    Reasoning in LLMs", reward-design study). With t = |y| and L = max_new_tokens:

        CosFn(t) = r_L + 0.5 * (r_0 - r_L) * (1 + cos(pi * t / L))
        R_cos    = CosFn with (r_0, r_L) = (r_c_0, r_c_L)   if correct
                 = CosFn with (r_0, r_L) = (r_w_0, r_w_L)   if wrong
                 = r_exceed                                 if truncated (or t > L)

    r_0 is the reward at length 0 and r_L at length L: with the defaults a correct answer
    earns 2 when short down to 1 at the budget, and a wrong one -10 when short up to 0 at
    the budget (for wrong answers longer is better: keep thinking).

    It replaces the correctness part of the reward and keeps the rest:

        new reward = reward - c + R_cos,    c = 1.0 if correct else 0.0

    (see the module docstring: the total is assumed to hold the 0/1 correctness component
    at weight 1; format rewards and earlier shaping terms stay).

    Params (reward units; defaults are the paper's settings, from its released scripts:
    min/max_value_correct 1/2, min/max_value_wrong -10/0, exceed_length -10):
        r_c_0, r_c_L: reward of a correct answer at length 0 / at length L.
        r_w_0, r_w_L: reward of a wrong answer at length 0 / at length L.
        r_exceed: reward of a response that ran out of budget.
    """
    length = _as_reward(inputs.lengths, inputs)
    cos = torch.cos(math.pi * length / inputs.max_new_tokens)
    r_0 = torch.where(inputs.correct, r_c_0, r_w_0).to(cos)
    r_L = torch.where(inputs.correct, r_c_L, r_w_L).to(cos)
    r_cos = r_L + 0.5 * (r_0 - r_L) * (1.0 + cos)
    exceeded = (inputs.truncated | (inputs.lengths > inputs.max_new_tokens)).to(inputs.rewards.device)
    r_cos = torch.where(exceeded, torch.full_like(r_cos, r_exceed), r_cos)
    return inputs.rewards - _correctness(inputs) + r_cos


@REWARD_SHAPERS.register("kimi_length")
def kimi_length_shaping(inputs: ShapingInputs, *, weight: float = 1.0) -> Tensor:
    """Kimi k1.5 length penalty (Kimi Team 2025, "Kimi k1.5: Scaling Reinforcement Learning
    with LLMs", Sec. 2.3.3). For response i of a group (the k samples of one prompt), with
    min_len / max_len over all of that group's responses (correct or not):

        lambda_i   = 0.5 - (len_i - min_len) / (max_len - min_len)    (0 if max_len == min_len)
        len_reward = lambda_i            if correct
                   = min(0, lambda_i)    if wrong
        new reward = reward + weight * len_reward

    Shorter-than-average correct answers gain up to +0.5, longer ones lose up to -0.5, and
    long wrong answers are penalised (short wrong ones are not rewarded). A group of one
    sample has max_len == min_len and gets 0.

    Params:
        weight: reward units per unit of len_reward, default 1.0. The paper only says the
            length reward "is added to the original reward with a weighting parameter" and
            warmed up (off at first, then constant); it does not give the value. Schedule
            the warm-up by passing weight=0 for the first steps.
    """
    inv, num_groups = _group_index(inputs.group_ids.to(inputs.rewards.device))
    length = _as_reward(inputs.lengths, inputs)
    g_max = length.new_zeros(num_groups).scatter_reduce(0, inv, length, reduce="amax", include_self=False)[inv]
    g_min = length.new_zeros(num_groups).scatter_reduce(0, inv, length, reduce="amin", include_self=False)[inv]
    span = g_max - g_min
    lam = torch.where(span > 0, 0.5 - (length - g_min) / torch.where(span > 0, span, 1.0), 0.0)
    len_reward = torch.where(inputs.correct, lam, lam.clamp(max=0.0))
    return inputs.rewards + weight * len_reward


# --------------------------------------------------------------------------- research switches


@REWARD_SHAPERS.register("label_noise")
def label_noise_shaping(inputs: ShapingInputs, *, p: float) -> Tensor:
    """Label noise: flip the verifier's verdict of each trajectory independently with
    probability p, i.e. flip the correctness component of its reward:

        u ~ U[0, 1)^N  (one torch.rand(N, dtype=float64) draw from inputs.generator)
        flip_i = u_i < p
        new reward_i = reward_i - c_i + (1 - c_i)   if flip_i      (c = 1.0 if correct else 0.0)
                     = reward_i                    otherwise

    A research switch for studying reward noise (cf. the "incorrect label" reward of Shao et
    al. 2025, "Spurious Rewards", which is p = 1). p = 0 changes nothing, p = 1 flips every
    trajectory. ``inputs.correct`` is not changed: shapers listed after this one still see
    the true verdict, so put it last to make the whole signal noisy.

    Params:
        p: flip probability per trajectory, in [0, 1].
    """
    _check_probability("label_noise", p)
    flip = _uniform(inputs) < p
    c = _correctness(inputs)
    return torch.where(flip, inputs.rewards - c + (1.0 - c), inputs.rewards)


@REWARD_SHAPERS.register("format_only")
def format_only_shaping(inputs: ShapingInputs) -> Tensor:
    """Format-only reward (Shao et al. 2025, "Spurious Rewards: Rethinking Training Signals in
    RLVR": reward 1 when the response contains a non-empty final answer, regardless
    of correctness):

        new reward = 1.0 if format_ok else 0.0

    Replaces the total reward (correctness and every earlier term are dropped). Needs
    ``inputs.format_ok``; raises ValueError without it.
    """
    if inputs.format_ok is None:
        raise ValueError("format_only needs ShapingInputs.format_ok (a bool tensor [N]: the task "
                         "found a well-formed final answer); the trainer did not provide it")
    return _as_reward(inputs.format_ok, inputs)


@REWARD_SHAPERS.register("random_reward")
def random_reward_shaping(inputs: ShapingInputs, *, p: float = 0.5) -> Tensor:
    """Random reward (Shao et al. 2025, "Spurious Rewards: Rethinking Training Signals in
    RLVR": r ~ Bernoulli(gamma), independent of the response; gamma = 0.5 in the
    main experiments):

        u ~ U[0, 1)^N  (one torch.rand(N, dtype=float64) draw from inputs.generator)
        new reward_i = 1.0 if u_i < p else 0.0

    Replaces the total reward.

    Params:
        p: probability of reward 1, in [0, 1], default 0.5.
    """
    _check_probability("random_reward", p)
    return _as_reward(_uniform(inputs) < p, inputs)
