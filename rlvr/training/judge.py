"""The scoring role: the verifier pool, the reward components and the batch-level shapers.

It turns sampled trajectories into rewards in place: decode, verify (in worker processes
when the task needs isolation), compose the reward, then shape it across the batch (length
shaping, research switches; some shapers keep state, saved with the run's checkpoints).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rlvr.config import RunConfig
from rlvr.rewards import RewardError, compose_reward, describe_sample, trl_reward_values
from rlvr.rewards.policy_probability import PolicyView
from rlvr.rewards.process import aggregate_steps, decoded_ends, step_scores, step_token_rewards
from rlvr.rewards.shaping import ShapingInputs, apply_shapers, build_shaper
from rlvr.rollout.trajectory import Trajectory
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Task
from rlvr.verify.pool import InlineVerifier, VerifierPool

Verifier = VerifierPool | InlineVerifier


class Judge:
    """Verifier + rewards + shapers of one run (``config.reward``)."""

    def __init__(self, task: Task, verifier: Verifier, tokenizer: PreTrainedTokenizerBase, config: RunConfig,
                 policy: Any = None) -> None:
        self.task, self.verifier, self.tokenizer, self.config = task, verifier, tokenizer, config
        self.policy = policy  # the sampling policy's module: rewards from its own probabilities (RLPR, self-certainty)
        self.shapers: list[tuple[Any, dict[str, Any]]] = [(build_shaper(step.name), dict(step.params))
                                                          for step in config.reward.shaping]

    def score(self, trajectories: list[Trajectory]) -> None:
        """Decode, verify and reward every trajectory in place (``score_trajectories``)."""
        score_trajectories(trajectories, self.task, self.verifier, self.tokenizer, self.config, self.policy)

    def shape(self, trajectories: list[Trajectory], step: int) -> None:
        """Apply the batch-level reward shapers of RL step ``step`` (0-based) in place."""
        shape_rewards(trajectories, self.shapers, self.config, step)

    def state_dict(self) -> list[Any]:
        return [s.state_dict() if hasattr(s, "state_dict") else None for s, _ in self.shapers]

    def load_state_dict(self, state: list[Any]) -> None:
        for (shaper, _), shaper_state in zip(self.shapers, state):
            if shaper_state is not None:
                shaper.load_state_dict(shaper_state)


def score_trajectories(trajectories: list[Trajectory], task: Task, verifier: Verifier,
                       tokenizer: PreTrainedTokenizerBase, config: RunConfig, policy: Any = None) -> None:
    """Decode, verify (in the verifier pool when the task needs isolation) and reward every
    trajectory in place; a verifier failure is a zero score with its error recorded.

    A multi-turn episode is judged on its ``answer_text`` (the policy's turns, never the
    tool output); one that broke its environment's rules (``violation``) gets reward 0.
    A reward component that fails (raises, NaN, inf) is a ``RewardError``; with
    ``reward.on_error: zero`` it scores 0, and the sample's ``reward_components["failed"]``
    counts its failed components and ``error`` says why. ``policy`` (the sampling policy's
    module) is what a reward that names ``policy`` reads, as a ``PolicyView`` of the batch."""
    texts = tokenizer.batch_decode([t.response_ids for t in trajectories], skip_special_tokens=True)
    for traj, text in zip(trajectories, texts):
        traj.text = text
    answers = [t.judged_text(tokenizer) for t in trajectories]
    problems = [t.problem for t in trajectories]
    scores = verifier.score_many(problems, answers)
    sample_errors: list[list[str]] = [[] for _ in trajectories]
    steps = config.reward.step_rewards
    checks = None  # each response's steps, scored once for the process component and the token rewards
    if "process" in config.reward.components or steps.coef:
        checks = step_scores(steps, task, problems, answers, config.reward.params.get("judge"))
    batch_values = trl_reward_values(config.reward.components, problems, answers,
                                     [t.response_ids for t in trajectories], config.reward.params,
                                     config.reward.on_error, sample_errors, [s.correct for s in scores],
                                     [s.extracted for s in scores], [t.group for t in trajectories], task,
                                     None if policy is None else PolicyView(
                                         policy, tokenizer, [t.prompt_ids for t in trajectories],
                                         [t.response_ids for t in trajectories],
                                         [t.loss_mask or [1] * len(t.response_ids) for t in trajectories],
                                         config.rl.micro_batch_size))
    if checks is not None and "process" in config.reward.components:
        aggregate = config.reward.params.get("process", {}).get("aggregate", "mean")
        for values, steps_of in zip(batch_values, checks):
            values["process"] = aggregate_steps(steps_of, aggregate)
    for traj, answer, score, errors, values in zip(trajectories, answers, scores, sample_errors, batch_values):
        traj.correct, traj.extracted, traj.error = score.correct, score.extracted, score.error
        traj.reward, traj.reward_components = compose_reward(
            config.reward.components, task, traj.problem, answer, score, config.reward.params,
            episode=traj if traj.answer_text is not None else None, on_error=config.reward.on_error, errors=errors,
            batch_values=values)
        if errors:
            traj.reward_components["failed"] = float(len(errors))
            traj.error = "; ".join([traj.error, *errors] if traj.error else errors)
        if traj.violation is not None:
            traj.reward = 0.0
    if steps.coef:
        for traj, steps_of in zip(trajectories, checks):
            traj.step_rewards = step_token_rewards(steps_of, decoded_ends(tokenizer, traj.response_ids), steps.coef,
                                                   steps.delta)
            traj.reward_components["steps"] = sum(traj.step_rewards)


def shape_rewards(trajectories: list[Trajectory], shapers: list[tuple[Any, dict[str, Any]]], config: RunConfig,
                  step: int) -> None:
    """Apply the batch-level reward shapers (length shaping, research switches) in place."""
    if not shapers:
        return
    inputs = ShapingInputs(
        rewards=torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        correct=torch.tensor([t.correct for t in trajectories]),
        lengths=torch.tensor([len(t.response_ids) for t in trajectories]),
        truncated=torch.tensor([t.finish_reason == "length" for t in trajectories]),
        group_ids=torch.tensor([t.group for t in trajectories]),
        max_new_tokens=config.rollout.max_new_tokens,
        generator=torch.Generator().manual_seed(derive_seed(config.seed, "rl-shaping", step)),
        format_ok=torch.tensor([t.extracted is not None for t in trajectories]),
        tool_calls=torch.tensor([t.tool_calls for t in trajectories]),
    )
    try:
        shaped = apply_shapers(inputs, shapers)
    except RewardError as err:
        if err.sample is None:
            raise
        traj = trajectories[err.sample]
        answer = traj.answer_text if traj.answer_text is not None else traj.text
        raise RewardError(f"{err} [{describe_sample(traj.problem, answer)}]", err.sample) from None
    for traj, reward in zip(trajectories, shaped.tolist()):
        traj.reward_components["shaping"] = reward - traj.reward
        traj.reward = reward
