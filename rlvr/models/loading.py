"""Building a tiny decoder-only model from a transformers config, or loading a local checkpoint.

Both paths return a standard `transformers` causal LM and tokenizer, so everything
downstream (rollouts, losses, checkpoints) treats a 1M-parameter toy and a 7B model alike.
Nothing here touches the network: checkpoints load with ``local_files_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from rlvr.models.hub import resolve_model_path
from rlvr.models.tokenizer import build_char_tokenizer
from rlvr.finite import NonFiniteError, describe_nonfinite, first_nonfinite

_ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config}


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    *,
    architecture: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A randomly initialised decoder-only transformer sized for CPU training.

    ``architecture`` is "llama" or "qwen2"; the vocabulary and special-token ids come from
    ``tokenizer``; ``seed`` fixes the initial weights.
    """
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"model.architecture must be one of {sorted(_ARCHITECTURES)}, got {architecture!r}")
    config = _ARCHITECTURES[architecture](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_model_and_tokenizer(path: str | Path, *, attn_implementation: str = "sdpa",
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local Hugging Face checkpoint directory or a
    hub id found in the Hugging Face cache (``rlvr.models.hub``); a NaN or inf in any weight
    is a ``NonFiniteError`` naming the directory, file and tensor."""
    path = resolve_model_path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path {str(path)!r} is not a Hugging Face checkpoint directory (no config.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        # Many base checkpoints ship without a pad token; EOS is the conventional stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    # float32 whatever the checkpoint's dtype: these are the master weights (rlvr.training.precision)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    bad = first_nonfinite(model.state_dict().items())
    if bad is not None:
        name, tensor = bad
        raise NonFiniteError(
            f"checkpoint {path}: tensor {name} in {_weights_file(path, name)} holds non-finite values "
            f"({describe_nonfinite(tensor)}); the checkpoint is damaged or was saved after training diverged: "
            "start from an earlier checkpoint")
    return model, tokenizer


def _weights_file(path: Path, tensor: str) -> str:
    """The file of a checkpoint that stores ``tensor`` (from a sharded checkpoint's index)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            return json.loads(index.read_text()).get("weight_map", {}).get(tensor, index_name)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return name
    return "the weights file"


def default_tokenizer() -> PreTrainedTokenizerBase:
    return build_char_tokenizer()


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a generation: the model's generation config's
    ``eos_token_id`` (an id or a list, as Qwen2.5-Instruct's ``[<|im_end|>, <|endoftext|>]`` and
    Llama 3's ``[<|end_of_text|>, <|eot_id|>]``), then the tokenizer's EOS; duplicates dropped,
    first occurrence kept. ValueError when neither names one."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model's generation_config.eos_token_id nor the tokenizer's eos_token names "
                         "an end-of-sequence token; set one so generation can stop")
    return list(dict.fromkeys(int(i) for i in ids))
