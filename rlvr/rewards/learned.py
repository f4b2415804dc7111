"""Learned rewards: an outcome reward model scores prompt + response.

``reward_model`` is a batch reward component (TRL's convention: called once per batch) over
any ``AutoModelForSequenceClassification`` checkpoint, a local directory or a hub id in the
Hugging Face cache: ``rlvr rm`` trains one from a run's samples (``rlvr.training.reward_model``),
and any other, e.g. a Skywork or ArmoRM checkpoint, loads the same way. The text scored is the
prompt rendered with the reward model's own chat template (plain text when it has none or the
prompt is a string) followed by the response. Its value (``output``):

- ``prob`` (default): sigmoid(logit) for a one-logit head, softmax(logits)[1] for a two-class
  one: the model's probability that the response is right, in [0, 1], on the scale of the
  verifier's correctness, so that ``proxy_gold_gap`` compares like with like;
- ``logit``: the head's raw score (one-logit heads; Bradley-Terry reward models).

Guards against reward hacking ("On Designing Effective RL Reward at Training Time"; Posterior-
GRPO gates learned rewards by the outcome):

- ``clip: [low, high]`` clips the value (a bounded reward caps what an exploit can earn);
- ``gate: true`` keeps the value only for responses the task's verifier accepts (0 for the
  rest): the learned reward then ranks right answers and cannot pay for wrong ones.

Every step with a learned reward logs ``reward_model_mean`` and, since the verifier still
runs beside it, ``proxy_gold_gap`` = mean(learned value) - mean(verifier correctness) and
``proxy_gold_corr`` (their correlation over the batch): a proxy that rises while the gold
falls is hacking, caught in the act. Scoring runs in batches of ``batch_size`` without
gradient; its seconds are ``time_reward_model`` (part of ``time_scoring``). A checkpoint that
does not load is a one-line config error before any work (``check``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from rlvr.rewards import REWARDS

SECONDS: dict[str, float] = {"reward_model": 0.0, "judge": 0.0}  # scoring seconds since the last step's metrics
LEARNED = ("reward_model", "judge", "majority_vote", "semantic_entropy", "rlpr", "self_certainty")  # rewards that stand in for the verifier: proxy_gold_gap compares them


@dataclass
class LoadedRewardModel:
    model: Any
    tokenizer: Any
    device: torch.device


_LOADED: dict[tuple[str, str], LoadedRewardModel] = {}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_reward_model(path: str, device: str = "auto") -> LoadedRewardModel:
    """The reward model at ``path`` (loaded once per process and device, float32, eval mode);
    ``ValueError`` saying why when it is not a sequence-classification checkpoint."""
    key = (str(path), device)
    if key in _LOADED:
        return _LOADED[key]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlvr.models.hub import resolve_model_path

    try:
        location = resolve_model_path(path)
    except (OSError, ValueError) as err:
        raise ValueError(str(err)) from None
    if not (Path(location) / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a Hugging Face checkpoint directory (no config.json)")
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            location, local_files_only=True, dtype=torch.float32, output_loading_info=True)
    except Exception as err:  # transformers' messages span lines
        raise ValueError(f"{str(path)!r} does not load as a sequence-classification reward model: "
                         f"{' '.join(str(err).split())[:300]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = list(info.get("missing_keys") or [])
    if missing:  # a causal LM loads too, with a random head: a reward of noise, never what was meant
        raise ValueError(f"{str(path)!r} has no trained reward head ({', '.join(sorted(missing)[:2])} missing from "
                         "the checkpoint: it is not a reward model); train one with `rlvr rm`")
    if model.config.num_labels not in (1, 2):
        raise ValueError(f"{str(path)!r} has {model.config.num_labels} labels; a reward model has one score "
                         "(or two classes: wrong, right)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    target = _device(device)
    loaded = LoadedRewardModel(model.to(target).eval(), tokenizer, target)
    _LOADED[key] = loaded
    return loaded


def render(tokenizer: Any, prompt: Any, completion: str) -> str:
    """The text a reward model scores: the prompt (chat messages through the tokenizer's chat
    template with the generation prompt, or joined when it has none) then the response."""
    if isinstance(prompt, str):
        return prompt + completion
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) + completion
    return "\n".join(str(m.get("content", "")) for m in prompt) + "\n" + completion


def score_texts(loaded: LoadedRewardModel, texts: Sequence[str], batch_size: int = 32,
                output: Literal["prob", "logit"] = "prob") -> list[float]:
    """The reward model's value for each text, in batches, without gradient."""
    model, tokenizer = loaded.model, loaded.tokenizer
    limit = getattr(model.config, "max_position_embeddings", None)
    values: list[float] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, truncation=limit is not None,
                                max_length=limit, add_special_tokens=False).to(loaded.device)
            logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits.float()
            if logits.shape[-1] == 2:
                scores = logits.softmax(-1)[:, 1] if output == "prob" else logits[:, 1] - logits[:, 0]
            else:
                scores = logits[:, 0].sigmoid() if output == "prob" else logits[:, 0]
            values += scores.tolist()
    return values


@REWARDS.register("reward_model")
def reward_model_reward(prompts: list[Any], completions: list[Any], *, path: str, verified: list[bool],
                        batch_size: int = 32, output: Literal["prob", "logit"] = "prob",
                        clip: list[float] | None = None, gate: bool = False, device: str = "auto") -> list[float]:
    """An outcome reward model's score of each response (module docstring): ``prob`` =
    sigmoid(logit) (P(right)), or the raw ``logit``; ``clip: [low, high]`` bounds it;
    ``gate: true`` multiplies it by the verifier's verdict (1 right, 0 wrong)."""
    started = time.perf_counter()
    loaded = load_reward_model(path, device)
    texts = [render(loaded.tokenizer, prompt, c if isinstance(c, str) else c[-1]["content"])
             for prompt, c in zip(prompts, completions)]
    values = guarded(score_texts(loaded, texts, batch_size, output), clip, gate, verified)
    SECONDS["reward_model"] += time.perf_counter() - started
    return values


def guarded(values: list[float], clip: list[float] | None, gate: bool, verified: list[bool]) -> list[float]:
    """The hacking guards of a learned reward: ``clip`` to [low, high], then ``gate`` (0 for
    every response the verifier rejects)."""
    if clip is not None:
        values = [min(max(v, clip[0]), clip[1]) for v in values]
    if gate:
        values = [v if ok else 0.0 for v, ok in zip(values, verified)]
    return values


def check_reward_model(params: dict[str, Any]) -> None:
    """The start-up check of a ``reward_model`` component's params: the checkpoint loads, the
    options are known; ``ValueError`` saying what is wrong."""
    if "path" not in params:
        raise ValueError("reward_model.path is required: a sequence-classification checkpoint "
                         "(a directory, e.g. from `rlvr rm`, or a hub id)")
    if params.get("output", "prob") not in ("prob", "logit"):
        raise ValueError(f"reward_model.output must be prob or logit, got {params['output']!r}")
    check_clip("reward_model", params.get("clip"))
    try:
        load_reward_model(str(params["path"]), str(params.get("device", "auto")))
    except ValueError as err:
        raise ValueError(f"reward_model.path: {err}") from None


reward_model_reward.check = check_reward_model  # type: ignore[attr-defined]


def check_clip(component: str, clip: Any) -> None:
    """``clip`` is None or [low, high] with low < high; ``ValueError`` naming the component otherwise."""
    if clip is not None and not (isinstance(clip, (list, tuple)) and len(clip) == 2
                                 and all(isinstance(v, (int, float)) for v in clip) and clip[0] < clip[1]):
        raise ValueError(f"{component}.clip must be [low, high] with low < high, got {clip!r}")


def reset_learned_timing() -> None:
    for key in SECONDS:
        SECONDS[key] = 0.0


def learned_metrics(values: list[float], correct: list[bool], name: str = "reward_model") -> dict[str, float]:
    """``<name>_mean``, ``proxy_gold_gap`` (mean learned value - mean verifier correctness)
    and ``proxy_gold_corr`` (their Pearson correlation; 0 when either is constant) over a
    batch, and for the reward model ``time_reward_model`` since the last call."""
    proxy = torch.tensor(values, dtype=torch.float64)
    gold = torch.tensor([float(c) for c in correct], dtype=torch.float64)
    corr = 0.0
    if len(proxy) > 1 and float(proxy.std()) > 0 and float(gold.std()) > 0:
        corr = float(torch.corrcoef(torch.stack([proxy, gold]))[0, 1])
    out = {f"{name}_mean": float(proxy.mean()), "proxy_gold_gap": float(proxy.mean() - gold.mean()),
           "proxy_gold_corr": corr}
    if name == "reward_model":
        out["time_reward_model"], SECONDS["reward_model"] = SECONDS["reward_model"], 0.0
    return out
