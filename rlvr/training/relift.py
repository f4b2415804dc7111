"""ReLIFT (Ma et al. 2025, "Learning What Reinforcement Learning Can't: Interleaved Online
Fine-Tuning for Hardest Questions"): the policy trains mainly with RL; the problems it
cannot solve at all (every sample of the group wrong, accuracy 0 — the paper's "hardest"
questions) are buffered with a demonstration each, and once ``rl.relift.buffer`` of them are
buffered one fine-tuning update (the negative log-likelihood of the demonstrations' tokens,
as in the SFT stage) runs on them, and the buffer empties. Demonstrations come from the
task's own solver (``Task.demonstration``), the source the SFT warm start uses; only the
failed problems get one, so a run reports the fraction of its problems it needed a
demonstration for (``relift_demo_frac``)."""

from __future__ import annotations

import random
from typing import Any

from transformers import PreTrainedTokenizerBase

from rlvr.rollout.trajectory import Trajectory
from rlvr.seeding import derive_seed
from rlvr.tasks.base import Problem, Task
from rlvr.training.batch import TokenBatch
from rlvr.training.sft import demonstration_batch

__all__ = ["ReliftBuffer", "hardest_problems"]


def hardest_problems(trajectories: list[Trajectory]) -> list[Problem]:
    """The problems of the groups in which no sample is correct (accuracy 0), once each, in
    the order their groups appear."""
    groups: dict[int, list[Trajectory]] = {}
    for trajectory in trajectories:
        groups.setdefault(trajectory.group, []).append(trajectory)
    out, seen = [], set()
    for members in groups.values():
        problem = members[0].problem
        if not any(t.correct for t in members) and problem.id not in seen:
            seen.add(problem.id)
            out.append(problem)
    return out


class ReliftBuffer:
    """The buffered hardest problems and the counts ReLIFT reports; saved in RL checkpoints."""

    def __init__(self, size: int, task: Task, config: Any) -> None:
        self.size, self.task, self.config = size, task, config
        self.problems: list[Problem] = []
        self.updates = 0  # fine-tuning updates run
        self.demonstrations = 0  # demonstrations trained on so far
        self.problems_seen = 0  # distinct RL groups' problems observed (the denominator of relift_demo_frac)

    def collect(self, trajectories: list[Trajectory]) -> int:
        """Buffer this step's hardest problems (not already buffered); returns how many."""
        buffered = {p.id for p in self.problems}
        new = [p for p in hardest_problems(trajectories) if p.id not in buffered]
        self.problems += new
        self.problems_seen += len({t.group for t in trajectories})
        return len(new)

    def ready(self) -> bool:
        return len(self.problems) >= self.size

    def take(self, tokenizer: PreTrainedTokenizerBase, step: int) -> TokenBatch:
        """The buffered problems with a demonstration each, as a batch (prompt tokens masked
        out, the demonstration and its EOS trained); the buffer empties. Each demonstration is
        drawn from a seed of (run seed, problem id, step), so a resume draws the same."""
        problems, self.problems = self.problems, []
        texts = [self.task.laid_out(self.task.demonstration(
            p, random.Random(derive_seed(self.config.seed, "relift-demo", p.id, step)))) for p in problems]
        self.updates += 1
        self.demonstrations += len(problems)
        return demonstration_batch(problems, texts, tokenizer, self.config)  # as the SFT stage renders them

    def metrics(self) -> dict[str, float]:
        return {"relift_buffered": float(len(self.problems)), "relift_updates": float(self.updates),
                "relift_demonstrations": float(self.demonstrations),
                "relift_demo_frac": self.demonstrations / max(self.problems_seen, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"problems": list(self.problems), "updates": self.updates, "demonstrations": self.demonstrations,
                "problems_seen": self.problems_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.problems = list(state["problems"])
        self.updates, self.demonstrations = state["updates"], state["demonstrations"]
        self.problems_seen = state["problems_seen"]
