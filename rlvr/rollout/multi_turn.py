"""The multi-turn rollout loop: policy turns and environment observations, token in, token out.

Every trajectory of a batch advances together: one engine call generates the next policy
turn of every unfinished episode (a turn ends at EOS, at one of the environment's stop
strings — e.g. ``</code>`` — or at the response budget), the environments answer, and
finished episodes leave the batch. The response is built from

* the token ids the policy sampled, exactly as sampled (loss mask 1, behaviour log-probs
  kept), and
* each observation tokenized on its own and appended (loss mask 0, log-prob 0),

so no policy token is ever re-tokenized: decoding and re-encoding the whole transcript can
split text differently from how the model produced it (a BPE merge across the boundary
of a tool output, a turn separator), which silently trains on tokens the policy never
chose. The loss mask keeps observations out of the gradient.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.models.loading import eos_token_ids
from rlvr.rollout.engine import RolloutEngine, eos_argument
from rlvr.rollout.environment import Environment, EnvironmentFactory, StepResult
from rlvr.rollout.trajectory import Trajectory, render_prompts, truncate_left
from rlvr.tasks.base import Problem

_STEP_THREADS = 8  # environments wait on interpreters (sockets), so threads overlap them


@dataclass
class _Episode:
    problem: Problem
    group: int
    prompt_ids: list[int]
    env: Environment
    prompt_tokens_cut: int = 0
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    void_turns: int = 0
    env_reward: float = 0.0
    finish_reason: str = "length"
    done: bool = False

    def add(self, ids: list[int], logprobs: list[float], entropies: list[float], policy: bool, text: str) -> None:
        self.response_ids += ids
        self.logprobs += logprobs
        self.entropies += entropies
        self.loss_mask += [int(policy)] * len(ids)
        self.segments.append({"role": "policy" if policy else "observation", "text": text, "tokens": len(ids)})


def chat_turn_text(tokenizer: PreTrainedTokenizerBase, content: str) -> str:
    """The text a chat template puts between the end of an assistant turn and the start of
    the next one for a user message ``content`` (with the generation prompt): the template
    rendered with and without the new message, minus the common prefix."""
    if tokenizer.chat_template is None:
        return content
    before = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    short = tokenizer.apply_chat_template(before, tokenize=False)
    long = tokenizer.apply_chat_template(before + [{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)
    if not long.startswith(short):
        raise ValueError("the tokenizer's chat template renders an earlier turn differently once a new "
                         "message follows; feedback turns cannot be appended token-in-token-out")
    # The policy's EOS ended its turn; what the template writes after that token (a newline,
    # say) belongs to the observation.
    eos = tokenizer.eos_token or ""
    cut = short.rfind(eos) if eos else -1
    tail = short[cut + len(eos):] if cut >= 0 else ""
    return tail + long[len(short):]


def _observation_text(tokenizer: PreTrainedTokenizerBase, result: StepResult) -> str:
    if result.user_message is not None:
        return chat_turn_text(tokenizer, result.user_message)
    return result.observation


def run_episodes(engine: RolloutEngine, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 problems: list[Problem], groups: list[int], factory: EnvironmentFactory, *,
                 max_new_tokens: int, temperature: float, top_p: float,
                 generator: torch.Generator | None, max_prompt_tokens: int | None = None) -> list[Trajectory]:
    """One episode per problem; ``max_new_tokens`` bounds each whole response (policy and
    observation tokens), ``factory.max_turns`` the policy turns, ``max_prompt_tokens`` the
    first prompt (its last that many tokens are kept)."""
    episodes = []
    prompts, cuts = truncate_left(render_prompts(tokenizer, problems), max_prompt_tokens)
    for problem, group, prompt, cut in zip(problems, groups, prompts, cuts):
        env = factory()
        env.reset(problem)
        episodes.append(_Episode(problem, group, prompt, env, cut))
    stop_strings = factory.cls.stop_strings(factory.params)
    stops = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in stop_strings]
    eos = eos_argument(eos_token_ids(model, tokenizer))  # a chat checkpoint may list several
    try:
        with ThreadPoolExecutor(_STEP_THREADS) as pool:
            while active := [e for e in episodes if not e.done]:
                budget = [max_new_tokens - len(e.response_ids) for e in active]
                gens = engine.generate(
                    model, [e.prompt_ids + e.response_ids for e in active], max_new_tokens=max(budget),
                    temperature=temperature, top_p=top_p, eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id, generator=generator, stop_sequences=stops)
                turns = []
                for episode, gen, room in zip(active, gens, budget):
                    ids, reason = gen.response_ids, gen.finish_reason
                    if len(ids) >= room:  # this episode's own budget is shorter than the call's
                        ids = ids[:room]
                        reason = reason if len(gen.response_ids) == room else "length"
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    if reason != "stop" and any(stop in text for stop in stop_strings):
                        ids, text, reason = _cut_at_stop(ids, stop_strings, tokenizer)
                    episode.add(ids, gen.logprobs[:len(ids)], gen.entropies[:len(ids)], True, text)
                    episode.env.turn_texts.append(text)
                    episode.turns += 1
                    turns.append((episode, text, reason))
                results = list(pool.map(lambda turn: turn[0].env.step(turn[1], turn[2]), turns))
                for (episode, _, reason), result in zip(turns, results):
                    _advance(episode, result, reason, tokenizer, factory, max_new_tokens)
    finally:
        for episode in episodes:
            episode.env.close()
    return [_trajectory(e) for e in episodes]


def _cut_at_stop(ids: list[int], stop_strings: tuple[str, ...],
                 tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], str, str]:
    """A stop string the engine's token match missed (the policy spelled it with other
    tokens than the tokenizer's own encoding): keep the tokens up to the one that completes
    it; the later ones were never seen by the environment, so dropping them is exact."""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=True)
        if any(stop in text for stop in stop_strings):
            return ids[:end], text, "stop"
    return ids, tokenizer.decode(ids, skip_special_tokens=True), "length"


def _advance(episode: _Episode, result: StepResult, reason: str, tokenizer: PreTrainedTokenizerBase,
             factory: EnvironmentFactory, max_new_tokens: int) -> None:
    """Book the environment's answer to a turn and decide whether the episode goes on."""
    episode.tool_calls += result.tool_call
    episode.tool_errors += result.tool_error
    episode.void_turns += result.void
    episode.env_reward += result.reward
    episode.finish_reason = reason
    if result.done or reason == "length" or episode.turns >= factory.max_turns:
        episode.done = True
        return
    text = _observation_text(tokenizer, result)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:factory.observation_tokens]
    room = max_new_tokens - len(episode.response_ids)
    if len(ids) >= room:  # no room left to answer after the observation
        episode.done, episode.finish_reason = True, "length"
        return
    episode.add(ids, [0.0] * len(ids), [0.0] * len(ids), False, tokenizer.decode(ids))


def _trajectory(episode: _Episode) -> Trajectory:
    return Trajectory(
        problem=episode.problem, group=episode.group, prompt_ids=episode.prompt_ids,
        response_ids=episode.response_ids, logprobs=episode.logprobs, loss_mask=episode.loss_mask,
        finish_reason=episode.finish_reason, entropies=episode.entropies,
        answer_text=episode.env.answer_text(), segments=episode.segments, turns=episode.turns,
        tool_calls=episode.tool_calls, tool_errors=episode.tool_errors, void_turns=episode.void_turns,
        env_reward=episode.env_reward, violation=episode.env.episode_violation(),
        prompt_tokens_cut=episode.prompt_tokens_cut)
