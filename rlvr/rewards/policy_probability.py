"""Verifier-free rewards from the policy's own probabilities.

Both components below read the policy that sampled the batch (the trainer's current weights,
one forward pass without gradient, in micro-batches on the policy's device); the framework
hands it to a batch reward function that names ``policy`` (a ``PolicyView``). The verifier
still runs beside them, so every step logs ``proxy_gold_gap`` and ``proxy_gold_corr`` against
its verdicts; their forward passes count in ``time_scoring``.

``rlpr`` (Yu et al. 2025, "RLPR: Extrapolating RLVR to General Domains without Verifiers"):
the reward is the policy's own probability of the *reference* answer y* after its reasoning
z, the generated final answer replaced by the reference, averaged over the reference's tokens
(the mean is far less noisy than the product):

    r = (1/|y*|) sum_i pi(y*_i | x, z, y*_<i)

``debias: true`` subtracts the same probability without the reasoning, r0 = (1/|y*|) sum_i
pi(y*_i | x, y*_<i), and clips: r = clip(r - r0, 0, 1), so a reasoning earns only what it adds
over guessing. The reasoning z is the response up to where its final answer is written (the
last place the task writes the extracted answer; the whole response when it has none), and
y* is the reference written the task's way, its format marker (``=> ``, ``\\boxed{``) part of
the context and only the answer's own tokens scored. A reference answer is needed (the
``answer`` column); no verifier is.

``self_certainty`` (INTUITOR, Zhao et al. 2025, "Learning to Reason without External
Rewards"; self-certainty from Kang et al. 2025): the mean KL divergence from the uniform
distribution over the vocabulary V to the policy's next-token distribution over the response
tokens y (the policy's own tokens; tool output excluded):

    SC = (1/|y|) sum_i KL(U || pi(. | x, y_<i)) = -(1/(|y| |V|)) sum_i sum_j log(|V| pi(j | x, y_<i))

0 for a uniform policy, larger the more peaked; no reference answer and no verifier are read.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rlvr.rewards import REWARDS


class PolicyView:
    """The policy that sampled a batch, for rewards computed from its own probabilities:
    each sample's prompt and response token ids, the model and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: Sequence[list[int]],
                 response_ids: Sequence[list[int]], response_masks: Sequence[list[int]] | None = None,
                 micro_batch: int = 16) -> None:
        self.model, self.tokenizer, self.micro_batch = model, tokenizer, micro_batch
        self.prompt_ids, self.response_ids = list(prompt_ids), list(response_ids)
        self.response_masks = list(response_masks) if response_masks is not None else [[1] * len(r) for r in
                                                                                       self.response_ids]

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _logits(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """Each row's next-token logits (float32, [len(row), V]), without gradient, in micro-batches."""
        out: list[torch.Tensor] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(rows), self.micro_batch):
                    chunk = rows[start:start + self.micro_batch]
                    width = max(len(r) for r in chunk)
                    ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    for i, row in enumerate(chunk):
                        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
                        mask[i, :len(row)] = 1
                    logits = self.model(input_ids=ids.to(self._device()), attention_mask=mask.to(self._device())
                                        ).logits.float().cpu()
                    out += [logits[i, :len(row)] for i, row in enumerate(chunk)]
        finally:
            self.model.train(was_training)
        return out

    def continuation_probabilities(self, prefixes: Sequence[str | None], targets: Sequence[str]) -> list[list[float]]:
        """For each sample, pi(t_k | prompt, prefix, t_<k) of each token t_k of ``targets[i]``
        written after ``prefixes[i]`` (None: right after the prompt). The prefix and the
        target are tokenised together; the target's tokens are those past the prefix's own
        tokenisation (their common prefix, where a merge crosses the boundary)."""
        rows, spans = [], []
        for prompt, prefix, target in zip(self.prompt_ids, prefixes, targets):
            head = self.tokenizer((prefix or ""), add_special_tokens=False)["input_ids"] if prefix else []
            whole = self.tokenizer((prefix or "") + target, add_special_tokens=False)["input_ids"]
            shared = next((k for k, (a, b) in enumerate(zip(head, whole)) if a != b), min(len(head), len(whole)))
            rows.append(list(prompt) + whole)
            spans.append((len(prompt) + shared, len(prompt) + len(whole)))
        out = []
        for row, (start, end), logits in zip(rows, spans, self._logits(rows)):
            if end <= start:
                out.append([])
                continue
            probs = logits[start - 1:end - 1].softmax(-1)
            out.append(probs.gather(-1, torch.tensor(row[start:end]).unsqueeze(-1)).squeeze(-1).tolist())
        return out

    def self_certainty(self) -> list[float]:
        """Each response's self-certainty (module docstring) over its policy tokens; 0 for a
        response with none."""
        rows = [list(p) + list(r) for p, r in zip(self.prompt_ids, self.response_ids)]
        out = []
        for prompt, response, mask, logits in zip(self.prompt_ids, self.response_ids, self.response_masks,
                                                  self._logits(rows)):
            if not response:
                out.append(0.0)
                continue
            steps = logits[len(prompt) - 1:len(prompt) - 1 + len(response)].log_softmax(-1)
            vocab = steps.shape[-1]
            per_token = -(steps + torch.log(torch.tensor(float(vocab)))).mean(-1)  # KL(U || p) at each position
            keep = torch.tensor(mask[:len(response)], dtype=torch.bool)
            out.append(float(per_token[keep].mean()) if keep.any() else 0.0)
        return out


def reasoning_and_reference(task: Any, completion: str, extracted: str | None, answer: Any) -> tuple[str, str]:
    """RLPR's split: (the response's reasoning with the reference's format marker after it,
    the reference answer's own text)."""
    written = task.answer_text(str(answer))
    at = written.rfind(str(answer))
    marker, reference = (written[:at], written[at:]) if at >= 0 else ("", written)
    end = -1
    if extracted is not None:
        end = completion.rfind(task.answer_text(str(extracted)))
    reasoning = completion[:end] if end >= 0 else completion.rstrip() + (" " if completion.strip() else "")
    return reasoning + marker, reference


@REWARDS.register("rlpr")
def rlpr_reward(prompts: list[Any], completions: list[Any], *, policy: PolicyView, task: Any, answer: list[Any],
                extracted: list[str | None], debias: bool = False) -> list[float]:
    """RLPR: the mean per-token probability of the reference answer after the response's
    reasoning (module docstring); ``debias`` subtracts it without the reasoning, clipped to [0, 1]."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    split = [reasoning_and_reference(task, text, found, ref) for text, found, ref in zip(texts, extracted, answer)]
    probs = policy.continuation_probabilities([prefix for prefix, _ in split], [ref for _, ref in split])
    values = [sum(p) / len(p) if p else 0.0 for p in probs]
    if debias:
        markers = [reasoning_and_reference(task, "", None, ref)[0] for ref in answer]
        bare = policy.continuation_probabilities([m or None for m in markers], [ref for _, ref in split])
        values = [min(max(v - (sum(b) / len(b) if b else 0.0), 0.0), 1.0) for v, b in zip(values, bare)]
    return values


@REWARDS.register("self_certainty")
def self_certainty_reward(prompts: list[Any], completions: list[Any], *, policy: PolicyView) -> list[float]:
    """INTUITOR: the response's self-certainty, mean KL(uniform || pi) over its tokens."""
    return policy.self_certainty()
