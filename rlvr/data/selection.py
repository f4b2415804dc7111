"""Prompt selection: pure decisions over pass rates, plus the small state they keep.

- Dynamic sampling (Yu et al. 2025, DAPO, Sec. 3.2): a group whose rewards are all equal has
  zero advantage under group baselines and teaches nothing; drop it and sample more prompts.
- Balanced online difficulty filtering (Bae et al. 2025, "Online Difficulty Filtering for
  Reasoning Oriented Reinforcement Learning"): keep only prompts whose pass rate in the
  current rollout lies in [low, high], where the learning signal (p(1-p)) is largest.
- Pass-rate tracking across steps: an exponential moving average per prompt id, so a prompt
  already known to be solved (or hopeless) is skipped before any generation is spent on it.
- Adaptive curriculum: move an integer difficulty knob of a generated task up or down so the
  measured pass rate stays in a target band.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any, Iterable


def group_pass_rates(groups: Iterable[int], correct: Iterable[bool]) -> dict[int, float]:
    """Fraction of correct samples per group id."""
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for g, c in zip(groups, correct):
        totals[g][0] += int(c)
        totals[g][1] += 1
    return {g: right / n for g, (right, n) in totals.items()}


def groups_to_keep(groups: list[int], rewards: list[float], correct: list[bool], mode: str,
                   low: float = 0.0, high: float = 1.0, metric: str = "reward") -> set[int]:
    """Group ids that carry learning signal under ``mode``.

    - ``none``: every group;
    - ``dynamic``: groups whose ``metric`` is not the same for every sample (DAPO): the
      ``reward`` (after shaping), or ``correct`` (the paper's accuracy: drop groups that are
      all right or all wrong, whatever their length shaping says; verl's ``metric: acc``);
    - ``pass_rate``: groups whose pass rate p satisfies low <= p <= high (balanced filtering).
    """
    if mode == "none":
        return set(groups)
    if mode == "dynamic":
        if metric not in ("reward", "correct"):
            raise ValueError(f"unknown filter metric {metric!r}; use reward or correct")
        values: dict[int, set[float]] = defaultdict(set)
        for g, r, c in zip(groups, rewards, correct):
            values[g].add(r if metric == "reward" else float(c))
        return {g for g, seen in values.items() if len(seen) > 1}
    if mode == "pass_rate":
        return {g for g, p in group_pass_rates(groups, correct).items() if low <= p <= high}
    raise ValueError(f"unknown group filter {mode!r}; use none, dynamic or pass_rate")


class PassRateTracker:
    """Exponential moving average of each prompt's pass rate:
    p <- decay * p + (1 - decay) * p_step (the first observation sets p directly)."""

    def __init__(self, decay: float = 0.5) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must lie in [0, 1)")
        self.decay = decay
        self.rates: dict[str, float] = {}

    def update(self, rates: dict[str, float]) -> None:
        for problem_id, rate in rates.items():
            old = self.rates.get(problem_id)
            self.rates[problem_id] = rate if old is None else self.decay * old + (1 - self.decay) * rate

    def outside(self, problem_id: str, low: float, high: float) -> bool:
        """True when the prompt was seen and its tracked pass rate lies outside [low, high]."""
        rate = self.rates.get(problem_id)
        return rate is not None and not low <= rate <= high

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "rates": dict(self.rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.rates = state["decay"], dict(state["rates"])


class Curriculum:
    """Keeps the measured pass rate of a generated task in [target_low, target_high] by
    stepping an integer difficulty parameter, judged on the mean pass rate of the last
    ``window`` steps; after a move the window restarts so each level is judged on its own."""

    def __init__(self, value: int, minimum: int, maximum: int, target_low: float, target_high: float,
                 window: int) -> None:
        if not minimum <= value <= maximum:
            raise ValueError(f"curriculum start {value} must lie in [{minimum}, {maximum}]")
        if not 0.0 <= target_low < target_high <= 1.0:
            raise ValueError("need 0 <= target_low < target_high <= 1")
        self.value, self.minimum, self.maximum = value, minimum, maximum
        self.target_low, self.target_high, self.window = target_low, target_high, window
        self.history: deque[float] = deque(maxlen=window)

    def observe(self, pass_rate: float) -> int:
        """Record one step's pass rate; returns the (possibly changed) difficulty value."""
        self.history.append(pass_rate)
        if len(self.history) == self.window:
            mean = sum(self.history) / self.window
            if mean > self.target_high and self.value < self.maximum:
                self.value += 1
                self.history.clear()
            elif mean < self.target_low and self.value > self.minimum:
                self.value -= 1
                self.history.clear()
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
        self.history = deque(state["history"], maxlen=self.window)
