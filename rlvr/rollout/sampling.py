"""One entry point from problems to scored-ready trajectories, single- or multi-turn.

Training, periodic evaluation and `rlvr eval` all sample through `sample_trajectories`, so a
number in a run directory never comes from a second code path. Without an environment a
trajectory is one generation; with one, the multi-turn loop in `rlvr.rollout.multi_turn`
alternates policy turns and environment observations (tool output, feedback messages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.models.loading import eos_token_ids
from rlvr.rollout.engine import RolloutEngine, eos_argument
from rlvr.rollout.trajectory import Trajectory, render_prompts, truncate_left
from rlvr.tasks.base import Problem

if TYPE_CHECKING:
    from rlvr.rollout.environment import EnvironmentFactory


def sample_trajectories(
    engine: RolloutEngine,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    groups: list[int] | None = None,
    batch_size: int | None = None,
    environment: EnvironmentFactory | None = None,
    max_prompt_tokens: int | None = None,
) -> list[Trajectory]:
    """One trajectory per entry of ``problems`` (repeat a problem for a group of samples).

    ``groups[i]`` is trajectory i's group id (default: i). Generation runs ``batch_size``
    sequences at a time (default: all at once). With an ``environment`` each trajectory is
    an episode whose response interleaves policy tokens (loss mask 1) and observation tokens
    (loss mask 0); ``max_new_tokens`` then bounds the whole response. The model is put in
    eval mode while sampling and restored afterwards. A prompt longer than
    ``max_prompt_tokens`` keeps its last that many tokens (``data.overlong_prompts:
    truncate_left``). Texts, rewards and scores are filled in later by the verifier.
    """
    groups = list(range(len(problems))) if groups is None else groups
    if len(groups) != len(problems):
        raise ValueError(f"{len(groups)} group ids for {len(problems)} problems")
    step = batch_size or max(1, len(problems))
    was_training = model.training
    model.eval()
    try:
        out: list[Trajectory] = []
        for start in range(0, len(problems), step):
            chunk, chunk_groups = problems[start:start + step], groups[start:start + step]
            if environment is None:
                out += _single_turn(engine, model, tokenizer, chunk, chunk_groups, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, generator=generator,
                                    max_prompt_tokens=max_prompt_tokens)
            else:
                from rlvr.rollout.multi_turn import run_episodes

                out += run_episodes(engine, model, tokenizer, chunk, chunk_groups, environment,
                                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    generator=generator, max_prompt_tokens=max_prompt_tokens)
        return out
    finally:
        model.train(was_training)


def _single_turn(engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 problems: list[Problem], groups: list[int], *, max_new_tokens: int, temperature: float,
                 top_p: float, generator: torch.Generator | None,
                 max_prompt_tokens: int | None = None) -> list[Trajectory]:
    prompts, cuts = truncate_left(render_prompts(tokenizer, problems), max_prompt_tokens)
    gens = engine.generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           eos_token_id=eos_argument(eos_token_ids(model, tokenizer)),
                           pad_token_id=tokenizer.pad_token_id,
                           generator=generator)
    return [Trajectory(problem=problem, group=group, prompt_ids=prompt, response_ids=g.response_ids,
                       logprobs=g.logprobs, loss_mask=[1] * len(g.response_ids), finish_reason=g.finish_reason,
                       entropies=g.entropies, prompt_tokens_cut=cut)
            for problem, group, prompt, g, cut in zip(problems, groups, prompts, gens, cuts)]
