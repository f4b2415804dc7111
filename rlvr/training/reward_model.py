"""``rlvr rm``: train an outcome reward model, so that the learned-reward loop runs locally.

The data is either a run's logged samples (``--from-run RUN``: every record of its
``samples.jsonl`` has the prompt, the response and the verifier's verdict) or a JSONL file in
TRL's formats: preference pairs ``{"prompt", "chosen", "rejected"}`` or labelled responses
``{"prompt", "completion", "label"}`` (label 1 right, 0 wrong). The model is the starting
checkpoint (by default the run's final one) with a one-logit sequence-classification head
(``AutoModelForSequenceClassification``, the head freshly initialised), trained with

- ``classify``: binary cross-entropy of sigmoid(r(x, y)) against the verdict (an outcome
  verifier's imitation, "ORM" in the PRM literature); or
- ``bradley_terry``: -log sigmoid(r(x, y_w) - r(x, y_l)) over pairs (Bradley & Terry 1952;
  InstructGPT's reward model), a run's pairs being every (right, wrong) pair of one group.

A tenth of the prompts (by problem id) is held out: the held-out accuracy (classify: the
verdict at probability 0.5; pairs: the right response scored higher) is printed and saved in
``rm_metrics.json``. The result is a Hugging Face checkpoint that ``transformers`` loads
directly and ``reward.components: {reward_model: ...}`` scores with.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from rlvr.rewards.learned import render
from rlvr.seeding import derive_seed


@dataclass
class Example:
    """One training item: a labelled response, or a (right, wrong) pair of one prompt."""

    prompt: Any
    group: str  # held-out split unit: the prompt's problem id
    completion: str | None = None
    label: float | None = None
    chosen: str | None = None
    rejected: str | None = None


def examples_from_run(run_dir: Path, objective: Literal["classify", "bradley_terry"]) -> list[Example]:
    """A run's logged samples as labelled responses, or as the (right, wrong) pairs of each
    logged group (same step, same problem)."""
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        raise ValueError(f"--from-run {run_dir}: no samples.jsonl (is it a run directory with an RL stage?)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("completion") is not None and r.get("correct") is not None]
    if objective == "classify":
        return [Example(r["prompt"], str(r["problem_id"]), completion=r["completion"], label=float(r["correct"]))
                for r in records]
    groups: dict[tuple[Any, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("step"), str(r["problem_id"])), []).append(r)
    out = []
    for (_, problem), members in groups.items():
        right = [r for r in members if r["correct"]]
        wrong = [r for r in members if not r["correct"]]
        out += [Example(members[0]["prompt"], problem, chosen=a["completion"], rejected=b["completion"])
                for a in right for b in wrong]
    return out


def examples_from_file(path: Path) -> tuple[list[Example], Literal["classify", "bradley_terry"]]:
    """A JSONL file of preference pairs or of labelled responses (TRL's column names); the
    objective follows the columns. A malformed line is a ValueError naming it."""
    from rlvr.tasks._records import _jsonl  # the task files' reader: UTF-8, JSON objects, lines named

    examples, kinds = [], set()
    for where, record in _jsonl(path):
        if "prompt" not in record:
            raise ValueError(f"{where}: a record needs a prompt and either chosen + rejected or completion + label")
        if "chosen" in record and "rejected" in record:
            kinds.add("bradley_terry")
            examples.append(Example(record["prompt"], json.dumps(record["prompt"]), chosen=str(record["chosen"]),
                                    rejected=str(record["rejected"])))
        elif "completion" in record and "label" in record:
            label = record["label"]
            if label not in (0, 1, True, False):
                raise ValueError(f"{where}: label must be 0 or 1, got {label!r}")
            kinds.add("classify")
            examples.append(Example(record["prompt"], json.dumps(record["prompt"]),
                                    completion=str(record["completion"]), label=float(label)))
        else:
            raise ValueError(f"{where}: a record needs chosen + rejected (pairs) or completion + label")
    if len(kinds) != 1:
        raise ValueError(f"{path}: " + ("no records" if not kinds else "mixes pairs and labelled responses"))
    return examples, kinds.pop()


def split(examples: list[Example], seed: int, heldout_frac: float = 0.1) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples, held out by prompt (a tenth of the groups)."""
    groups = sorted({e.group for e in examples})
    random.Random(derive_seed(seed, "rm-split")).shuffle(groups)
    held = set(groups[:max(1, round(heldout_frac * len(groups)))]) if len(groups) > 1 else set()
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


def _scores(model: Any, tokenizer: Any, texts: list[str], device: torch.device) -> torch.Tensor:
    limit = getattr(model.config, "max_position_embeddings", None)
    encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=limit is not None, max_length=limit,
                        add_special_tokens=False).to(device)
    return model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits[:, 0].float()


def _loss(model: Any, tokenizer: Any, batch: list[Example], objective: str, device: torch.device
          ) -> tuple[torch.Tensor, float]:
    """The batch's loss and how many of its items the model gets right."""
    if objective == "classify":
        scores = _scores(model, tokenizer, [render(tokenizer, e.prompt, e.completion) for e in batch], device)
        labels = torch.tensor([e.label for e in batch], device=device)
        return F.binary_cross_entropy_with_logits(scores, labels), float(((scores > 0).float() == labels).sum())
    scores = _scores(model, tokenizer, [render(tokenizer, e.prompt, text) for e in batch
                                        for text in (e.chosen, e.rejected)], device)
    margin = scores[0::2] - scores[1::2]
    return -F.logsigmoid(margin).mean(), float((margin > 0).sum())


def evaluate_rm(model: Any, tokenizer: Any, examples: list[Example], objective: str, device: torch.device,
                batch_size: int = 32) -> dict[str, float]:
    """Loss and accuracy of the reward model over ``examples``."""
    model.eval()
    total_loss = correct = 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            loss, right = _loss(model, tokenizer, batch, objective, device)
            total_loss += float(loss) * len(batch)
            correct += right
    n = max(1, len(examples))
    return {"loss": total_loss / n, "accuracy": correct / n, "examples": len(examples)}


def train_reward_model(examples: list[Example], objective: Literal["classify", "bradley_terry"], base: str | Path,
                       output: Path, steps: int = 200, lr: float = 1e-4, batch_size: int = 32, seed: int = 0,
                       device: str = "cpu", log: Any = print) -> dict[str, Any]:
    """Train and save the reward model (module docstring); returns its metrics."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rlvr.models.hub import resolve_model_path

    train, heldout = split(examples, seed)
    if not train:
        raise ValueError("no training examples (a run needs logged groups with both right and wrong samples "
                         "for bradley_terry)")
    location = resolve_model_path(base)
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialised": the score head, as intended
    try:
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=1, local_files_only=True,
                                                                   dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    target = torch.device(device)
    model.to(target)
    before = evaluate_rm(model, tokenizer, heldout, objective, target) if heldout else None
    started = time.perf_counter()
    _optimise(model, lambda rng: _loss(model, tokenizer, [train[rng.randrange(len(train))] for _ in range(batch_size)],
                                       objective, target)[0],
              steps, lr, random.Random(derive_seed(seed, "rm-batches")), "rm", log)
    after = evaluate_rm(model, tokenizer, heldout, objective, target) if heldout else None
    metrics = {"objective": objective, "base": str(base), "train_examples": len(train),
               "heldout_examples": len(heldout), "steps": steps, "lr": lr, "seconds": time.perf_counter() - started,
               "heldout_before": before, "heldout_after": after}
    _save(model, tokenizer, output, metrics)
    return metrics


def _optimise(model: Any, batch_loss: Any, steps: int, lr: float, rng: random.Random, label: str, log: Any) -> None:
    """``steps`` AdamW steps on ``batch_loss(rng)`` (a freshly drawn batch's loss), gradients
    clipped to norm 1, the loss logged ten times."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        model.train()
        loss = batch_loss(rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"{label} {step + 1}/{steps}  loss {float(loss):.4f}")


def _save(model: Any, tokenizer: Any, output: Path, metrics: dict[str, Any], extra: dict[str, Any] | None = None
          ) -> None:
    """The trained model as a Hugging Face checkpoint, with ``rm_metrics.json`` and any
    ``extra`` JSON files beside it."""
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    for name, content in {"rm_metrics.json": metrics, **(extra or {})}.items():
        (output / name).write_text(json.dumps(content, indent=2))


# --------------------------------------------------------------------------- generative judges
def as_labelled(examples: list[Example]) -> list[Example]:
    """Labelled responses for a generative judge: pairs become their right (1) and wrong (0)
    responses."""
    out = []
    for e in examples:
        if e.completion is not None:
            out.append(e)
        else:
            out += [Example(e.prompt, e.group, completion=e.chosen, label=1.0),
                    Example(e.prompt, e.group, completion=e.rejected, label=0.0)]
    return out


def _judge_rows(tokenizer: Any, examples: list[Example], rubric: str, limit: int | None
                ) -> list[tuple[list[int], list[int]]]:
    """(judge input ids, verdict ids + EOS) per example; ``ValueError`` when one does not fit
    the model's context."""
    from rlvr.rewards.judge import judge_input, render_judge_input

    rows = []
    for e in examples:
        prompt = render_judge_input(tokenizer, judge_input(rubric, e.prompt, e.completion))
        verdict = tokenizer(" " + VERDICTS[bool(e.label)], add_special_tokens=False)["input_ids"]
        verdict = verdict + [tokenizer.eos_token_id]
        if limit is not None and len(prompt) + len(verdict) > limit:
            raise ValueError(f"a judge input is {len(prompt)} tokens with its {len(verdict)}-token verdict, more than "
                             f"the model's context of {limit}: give a shorter --rubric")
        rows.append((prompt, verdict))
    return rows


VERDICTS = {True: "correct", False: "incorrect"}


def evaluate_judge(model: Any, tokenizer: Any, rows: list[tuple[list[int], list[int]]], labels: list[float],
                   device: torch.device, batch_size: int = 32) -> dict[str, float]:
    """The judge's held-out accuracy, decoding greedily as the ``judge`` reward does: a text
    with no verdict counts as wrong (and in ``parse_failures``)."""
    from rlvr.models.loading import eos_token_ids
    from rlvr.rewards.judge import parse_verdict
    from rlvr.rollout.kv_cache import KVCacheEngine

    model.eval()
    engine, right, failures = KVCacheEngine(), 0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = [prompt for prompt, _ in rows[start:start + batch_size]]
            generations = engine.generate(model, chunk, max_new_tokens=max(len(v) for _, v in rows), temperature=0.0,
                                          top_p=1.0, eos_token_id=eos_token_ids(model, tokenizer),
                                          pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode([g.response_ids for g in generations], skip_special_tokens=True)
            for text, label in zip(texts, labels[start:start + batch_size]):
                verdict = parse_verdict(text)
                failures += verdict is None
                right += verdict is not None and verdict == label
    n = max(1, len(rows))
    return {"accuracy": right / n, "parse_failures": failures / n, "examples": len(rows)}


def train_judge(examples: list[Example], base: str | Path, output: Path, rubric: str, steps: int = 200,
                lr: float = 1e-4, batch_size: int = 32, seed: int = 0, device: str = "cpu", log: Any = print
                ) -> dict[str, Any]:
    """Fine-tune a causal LM into a generative judge: the rubric filled in with each labelled
    response, then the verdict word (``correct`` / ``incorrect``) and EOS, the loss on the
    verdict only. Saved with ``judge.json`` (rubric, verdict form), which the ``judge`` reward
    reads; returns the metrics (held-out accuracy by greedy decoding, before and after)."""
    from rlvr.models.loading import load_model_and_tokenizer
    from rlvr.rewards.judge import VERDICT_FILE, rubric_fields

    names = rubric_fields(rubric)
    if "response" not in names or names - {"prompt", "response"}:
        raise ValueError("--rubric must contain {response}, and may contain {prompt} (the reference answer is not "
                         "shown to a judge trained here)")
    train, heldout = split(as_labelled(examples), seed)
    if not train:
        raise ValueError("no training examples")
    model, tokenizer = load_model_and_tokenizer(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(model.config, "max_position_embeddings", None)
    train_rows = _judge_rows(tokenizer, train, rubric, limit)
    held_rows = _judge_rows(tokenizer, heldout, rubric, limit)
    held_labels = [e.label for e in heldout]
    target = torch.device(device)
    model.to(target)
    torch.manual_seed(seed)
    before = evaluate_judge(model, tokenizer, held_rows, held_labels, target) if held_rows else None
    started = time.perf_counter()
    _optimise(model, lambda rng: _verdict_loss(model, tokenizer, [train_rows[rng.randrange(len(train_rows))]
                                                                  for _ in range(batch_size)], target),
              steps, lr, random.Random(derive_seed(seed, "judge-batches")), "judge", log)
    after = evaluate_judge(model, tokenizer, held_rows, held_labels, target) if held_rows else None
    metrics = {"objective": "judge", "base": str(base), "rubric": rubric, "train_examples": len(train),
               "heldout_examples": len(heldout), "steps": steps, "lr": lr, "seconds": time.perf_counter() - started,
               "heldout_before": before, "heldout_after": after}
    _save(model, tokenizer, output, metrics, {VERDICT_FILE: {"rubric": rubric, "verdict": "binary"}})
    return metrics


def _verdict_loss(model: Any, tokenizer: Any, batch: list[tuple[list[int], list[int]]], device: torch.device
                  ) -> torch.Tensor:
    """Cross-entropy of the verdict tokens (and EOS) after each judge input; the input is context only."""
    width = max(len(p) + len(v) for p, v in batch)
    ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (prompt, verdict) in enumerate(batch):
        row = prompt + verdict
        ids[i, :len(row)] = torch.tensor(row)
        labels[i, len(prompt):len(row)] = torch.tensor(verdict)
        mask[i, :len(row)] = 1
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
