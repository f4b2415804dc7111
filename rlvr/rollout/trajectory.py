"""`Trajectory`: one prompt's sampled response with everything the trainer and the logs need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from rlvr.tasks.base import Problem


@dataclass
class Trajectory:
    """A sampled response to one problem.

    ``loss_mask[i]`` is 1 when ``response_ids[i]`` was produced by the policy and should be
    trained on (0 for tool output or padding in multi-turn rollouts); ``logprobs`` are the
    behaviour policy's per-token log-probs; ``group`` ties the samples of one prompt.

    Multi-turn episodes also carry ``answer_text`` (what the verifier scores: the policy's
    turns, never the observations), ``segments`` (the transcript as policy / observation
    pieces), the counts of ``turns``, ``tool_calls``, ``tool_errors`` and ``void_turns``
    (turns with neither a tool call nor an answer), ``env_reward`` (the environment's
    per-turn rewards, summed) and ``violation`` (why the episode broke the environment's
    rules, e.g. a tool call where tools are forbidden). ``policy_version`` is the weight
    version of the sampler that generated it (the RL step whose update it saw last).
    """

    problem: Problem
    group: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    loss_mask: list[int]
    finish_reason: str
    entropies: list[float] = field(default_factory=list)
    text: str = ""
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    correct: bool = False
    extracted: str | None = None
    error: str | None = None
    answer_text: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 1
    tool_calls: int = 0
    tool_errors: int = 0
    void_turns: int = 0
    env_reward: float = 0.0
    violation: str | None = None
    policy_version: int = 0
    advantage: float | None = None  # the learner's, mean over the response's loss tokens (for the logs)
    step_rewards: list[float] = field(default_factory=list)  # process rewards per response token (reward.step_rewards)
    prompt_tokens_cut: int = 0  # tokens cut off the prompt's start (data.overlong_prompts: truncate_left)

    def judged_text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The text the verifier judges: a multi-turn episode's ``answer_text`` (the policy's
        turns, never tool output), else the decoded response (kept in ``text``)."""
        if self.answer_text is not None:
            return self.answer_text
        if not self.text:
            self.text = tokenizer.decode(self.response_ids, skip_special_tokens=True)
        return self.text

    def record(self) -> dict[str, Any]:
        """A JSON-able summary for samples.jsonl."""
        return {
            "problem_id": self.problem.id,
            "prompt": self.problem.prompt,
            "group": self.group,
            "completion": self.text,
            "answer": self.problem.answer,
            "extracted": self.extracted,
            "correct": self.correct,
            "reward": self.reward,
            "reward_components": self.reward_components,
            "finish_reason": self.finish_reason,
            "response_tokens": len(self.response_ids),
            "error": self.error,
            "policy_version": self.policy_version,
            **({"advantage": self.advantage} if self.advantage is not None else {}),
            **({"turns": self.turns, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors,
                "segments": self.segments, "violation": self.violation} if self.segments else {}),
        }


def _prompt_text(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> str:
    if isinstance(problem.prompt, str):
        return problem.prompt
    if tokenizer.chat_template is None:
        raise ValueError(
            f"problem {problem.id!r} has a chat prompt but the tokenizer has no chat template; "
            "use a tokenizer with one or a task that renders plain-text prompts"
        )
    return tokenizer.apply_chat_template(problem.prompt, add_generation_prompt=True, tokenize=False)


def plain_text_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts in front of a text (Llama 3's
    ``<|begin_of_text|>``; none for Qwen or the character tokenizer).

    A plain-text prompt gets them, as ``tokenizer(text)``, HF ``generate`` users and vLLM's
    text prompts do: a base Llama prompted without its BOS is out of distribution. A chat
    prompt does not: the template writes them itself. Trailing specials (an EOS some
    tokenizers append) are never taken: a prompt must not end the sequence."""
    cached = getattr(tokenizer, "_rlvr_plain_text_prefix", None)
    if cached is None:
        probe = "a"
        plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe)["input_ids"]
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        cached = list(full[:start])
        try:
            tokenizer._rlvr_plain_text_prefix = cached
        except AttributeError:  # a tokenizer that refuses attributes is probed per call
            pass
    return list(cached)


def render_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> list[int]:
    """Token ids of the problem's prompt: chat messages go through the tokenizer's chat
    template with the assistant turn opened; plain text is tokenised after the tokenizer's
    leading special tokens (`plain_text_prefix`)."""
    return render_prompts(tokenizer, [problem])[0]


def render_prompts(tokenizer: PreTrainedTokenizerBase, problems: list[Problem]) -> list[list[int]]:
    """`render_prompt` for each entry; a problem repeated for a group (the same object) is
    rendered once, and the texts are tokenised in one batch call (a call per prompt cost
    ~5 ms per RL step)."""
    if not problems:
        return []
    distinct = list({id(problem): problem for problem in problems}.values())
    texts = [_prompt_text(tokenizer, problem) for problem in distinct]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prefix = plain_text_prefix(tokenizer)
    rendered = {id(problem): (prefix if isinstance(problem.prompt, str) else []) + list(row)
                for problem, row in zip(distinct, ids)}
    return [rendered[id(problem)] for problem in problems]


def truncate_left(rows: list[list[int]], max_length: int | None) -> tuple[list[list[int]], list[int]]:
    """Each prompt's last ``max_length`` tokens (all when ``None``) and how many were cut from
    its start: TRL's prompt truncation (``max_prompt_length``), which keeps the end of a
    prompt, where the question and the generation prompt are."""
    if max_length is None:
        return rows, [0] * len(rows)
    return [row[-max_length:] for row in rows], [max(0, len(row) - max_length) for row in rows]
