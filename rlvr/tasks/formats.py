"""Pure format checks on completions, for format reward components.

``think_answer_format`` is the DeepSeek-R1 layout (Guo et al., 2025, "DeepSeek-R1:
Incentivizing Reasoning Capability in LLMs via Reinforcement Learning"):
``<think>...</think><answer>...</answer>``. ``matches_format`` checks a completion against
any regular expression. Neither knows about tasks or problems.
"""

from __future__ import annotations

import re

_THINK_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def think_answer_format(completion: str) -> bool:
    """True when ``completion`` is exactly ``<think>T</think><answer>A</answer>``.

    Whitespace is allowed before, between and after the two blocks; each of the four tags
    appears exactly once, in that order, and nothing else lies outside the blocks. The
    contents may be empty (whether the answer is right is the verifier's job).
    """
    if any(completion.count(tag) != 1 for tag in _TAGS):
        return False
    return _THINK_ANSWER.fullmatch(completion) is not None


def matches_format(completion: str, regex: str | re.Pattern[str]) -> bool:
    """True when the whole of ``completion`` matches ``regex`` (``re.fullmatch``).

    A string pattern is compiled with ``re.DOTALL`` so ``.`` spans lines; a compiled
    pattern is used with its own flags. An invalid pattern raises ``ValueError`` naming it.
    """
    if isinstance(regex, str):
        try:
            regex = re.compile(regex, re.DOTALL)
        except re.error as exc:
            raise ValueError(f"invalid format regex {regex!r}: {exc}") from None
    return regex.fullmatch(completion) is not None


# RLCR's verbalized confidence (Damani et al. 2025, "Beyond Binary Rewards: Training LMs to
# Reason about Their Uncertainty"): after its answer the model writes <confidence>q</confidence>.
_CONFIDENCE = re.compile(r"<confidence>\s*([^<]*?)\s*</confidence>", re.DOTALL)
_CONFIDENCE_BLOCK = re.compile(r"\s*<confidence>.*?</confidence>\s*", re.DOTALL)
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)%?")


def stated_confidence(completion: str) -> float | None:
    """The confidence ``q`` in [0, 1] of the completion's last ``<confidence>q</confidence>``
    block (``0.7``, ``.7``, ``70%``); None when there is no block or its content is not a
    number in [0, 1] (a percentage in [0, 100])."""
    blocks = _CONFIDENCE.findall(completion)
    if not blocks or _NUMBER.fullmatch(blocks[-1]) is None:
        return None
    text = blocks[-1]
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return value if 0.0 <= value <= 1.0 else None


def without_confidence(completion: str) -> str:
    """The completion with its ``<confidence>...</confidence>`` blocks removed (the answer a
    verifier reads: the stated confidence is never part of it)."""
    return _CONFIDENCE_BLOCK.sub(" ", completion).strip() if "<confidence>" in completion else completion
