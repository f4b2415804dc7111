"""Randomly initialised Hugging Face checkpoints with real layouts, written to disk.

A checkpoint directory here is what a hub download leaves: config.json, model.safetensors,
generation_config.json and the tokenizer files. The shapes are the real families' (Qwen2's
q/k/v biases and grouped KV heads, Llama 3's header template), the tokenizer is a byte-level
BPE trained in code (``rlvr.models.bpe``), and generation_config.json lists several EOS ids
the way Qwen2.5-Instruct (``[<|im_end|>, <|endoftext|>]``) and Llama 3 Instruct
(``[<|end_of_text|>, <|eot_id|>]``) do. So loading, sampling and training a "real"
checkpoint can be exercised without a download, at any size up to Qwen2.5-0.5B's.

    python -m rlvr.models.random_checkpoint OUT_DIR --shape qwen2-50m [--template llama3] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
)

from rlvr.models.bpe import TEMPLATES, Template, build_bpe_tokenizer

_CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CheckpointShape:
    """The architecture and sizes of a named checkpoint shape (``SHAPES``)."""

    architecture: str  # "qwen2" or "llama" (a transformers model_type)
    template: Template  # the tokenizer layout and chat template (rlvr.models.bpe.TEMPLATES)
    vocab_size: int  # tokens, the specials included
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # fewer than num_heads: grouped-query attention
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    about: str  # one line for --help


# The tiny shapes use head dimension 32: vLLM's CPU attention supports 32, 64, 80, ... only.
SHAPES: dict[str, CheckpointShape] = {
    "qwen2-tiny": CheckpointShape(
        "qwen2", "chatml", vocab_size=4096, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
        intermediate_size=176, max_position_embeddings=2048, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, about="Qwen2 layout, 0.36M parameters: fast on a CPU, for tests"),
    "qwen2-50m": CheckpointShape(
        "qwen2", "chatml", vocab_size=32768, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2,
        intermediate_size=2560, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, about="Qwen2 layout, 53.5M parameters (36.7M without the embedding), for benchmarks"),
    # Qwen2.5-0.5B's dimensions; the real vocabulary has 151936 rows (151665 tokens), this
    # one the 32768 of the BPE trained in code, so 387M parameters instead of 494M (the
    # 358M outside the embedding are the real model's).
    "qwen2.5-0.5b": CheckpointShape(
        "qwen2", "chatml", vocab_size=32768, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
        intermediate_size=4864, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, about="Qwen2.5-0.5B's dimensions with a 32768-token vocabulary, 387M parameters"),
    "llama3-tiny": CheckpointShape(
        "llama", "llama3", vocab_size=4096, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
        intermediate_size=192, max_position_embeddings=2048, rope_theta=5e5, rms_norm_eps=1e-5,
        tie_word_embeddings=True, about="Llama 3 layout and chat template, 0.37M parameters, for tests"),
}


def _shape(name: str) -> CheckpointShape:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; one of {', '.join(SHAPES)}")
    return SHAPES[name]


def special_token_ids(template: Template, vocab_size: int) -> dict[str, int]:
    """The ids of ``template``'s special tokens in a ``vocab_size`` BPE tokenizer: they are
    the last ids, in ``TEMPLATES[template].specials`` order (as ``build_bpe_tokenizer``
    adds them)."""
    specials = TEMPLATES[template].specials
    return {token: vocab_size - len(specials) + i for i, token in enumerate(specials)}


def model_config(shape: str, *, template: Template | None = None, vocab_size: int | None = None,
                 dtype: str = "float32") -> PretrainedConfig:
    """The transformers config of a named shape (no weights, no tokenizer training), with
    the special-token ids its tokenizer will have; ``template`` and ``vocab_size`` default
    to the shape's."""
    spec = _shape(shape)
    template = template or spec.template
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {', '.join(_DTYPES)}")
    vocab_size = vocab_size or spec.vocab_size
    layout, ids = TEMPLATES[template], special_token_ids(template, vocab_size)
    return _CONFIGS[spec.architecture](
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings,
        hidden_act="silu",
        initializer_range=0.02,
        attention_dropout=0.0,
        # Qwen2.5's config.json names <|endoftext|> its BOS though the tokenizer adds none
        bos_token_id=ids[layout.bos or layout.pad],
        eos_token_id=ids[layout.eos],
        pad_token_id=ids[layout.pad],
        dtype=dtype,
    )


def parameter_counts(config: PretrainedConfig) -> tuple[int, int]:
    """(all parameters, parameters outside the input embedding) of the model ``config``
    describes, counted on the meta device (no memory, no initialisation). Tied output
    weights are the embedding and count once."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def write_random_checkpoint(out_dir: str | Path, *, shape: str = "qwen2-tiny", template: Template | None = None,
                            vocab_size: int | None = None, seed: int = 0, dtype: str = "float32") -> Path:
    """Write a randomly initialised checkpoint of a named shape (``SHAPES``) to ``out_dir``
    (created; it must not hold files yet) and return its path.

    ``template`` ("chatml" or "llama3") and ``vocab_size`` default to the shape's; ``seed``
    fixes the weights (the tokenizer is the same for every seed, as a family's checkpoints
    share theirs); ``dtype`` ("float32", "bfloat16", "float16") is the stored weights'.
    generation_config.json lists the family's EOS ids (the chat EOS first for Qwen2.5,
    ``<|end_of_text|>`` first for Llama 3) and the pad id."""
    out = Path(out_dir)
    config = model_config(shape, template=template, vocab_size=vocab_size, dtype=dtype)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} exists and is not an empty directory; choose a new OUT_DIR")
    template = template or SHAPES[shape].template
    tokenizer = build_bpe_tokenizer(template, config.vocab_size)
    layout = TEMPLATES[template]
    ids = special_token_ids(template, config.vocab_size)
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in ids} == ids, "BPE special ids moved"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(_DTYPES[dtype])
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[ids[token] for token in layout.generation_eos],
        pad_token_id=config.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlvr.models.random_checkpoint",
        description="Write a randomly initialised Hugging Face checkpoint (weights, config, BPE tokenizer, "
                    "generation config with several EOS ids) of a named shape.",
        epilog="shapes: " + "; ".join(f"{name}: {spec.about}" for name, spec in SHAPES.items()))
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create (must be new or empty)")
    parser.add_argument("--shape", default="qwen2-tiny", help=f"one of {', '.join(SHAPES)} (default qwen2-tiny)")
    parser.add_argument("--template", default=None, help="chatml or llama3 (default: the shape's)")
    parser.add_argument("--vocab-size", type=int, default=None, help="tokens, specials included (default: the shape's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default 0)")
    parser.add_argument("--dtype", default="float32", help=f"stored weights: {', '.join(_DTYPES)} (default float32)")
    args = parser.parse_args(argv)
    try:
        config = model_config(args.shape, template=args.template, vocab_size=args.vocab_size, dtype=args.dtype)
        path = write_random_checkpoint(args.out_dir, shape=args.shape, template=args.template,
                                       vocab_size=args.vocab_size, seed=args.seed, dtype=args.dtype)
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    total, body = parameter_counts(config)
    print(f"wrote {path}: {args.shape}, {config.model_type}, {total / 1e6:.1f}M parameters "
          f"({body / 1e6:.1f}M outside the embedding), {config.vocab_size}-token "
          f"{args.template or SHAPES[args.shape].template} tokenizer, {args.dtype}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
